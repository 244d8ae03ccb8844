//! A cached appraisal: its claims kept once, as the regorus values every decision's policy
//! input is made of, plus the few facts the service itself needs (for the log, the cache
//! and `/attestation` reports). Each decision only adds its own small parts (purpose,
//! time, connection); the claims JSON of the answer is written from the same values.

use std::collections::BTreeMap;

use serde::Serialize;

#[cfg(test)]
use crate::claims::Claims;
use crate::claims::{AppraisedEvidence, CLAIMS_VERSION, ConnectionClaims};
use crate::manifest::ManifestClaims;
use crate::report::{IdentityHex, Measured, Registers, ReportClaims};

/// Per-purpose additions to the claims.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    pub manifest: Option<ManifestClaims>,
    pub report: Option<ReportClaims>,
}

/// What the service needs of an appraisal besides the policy input.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    /// `evidence.kind` as the claims name it.
    pub kind: String,
    /// `tee`: `tdx`, `sev-snp`, or none.
    pub tee: Option<&'static str>,
    pub subject: Option<String>,
    pub mrtd: Option<String>,
    /// The SEV-SNP launch measurement (hex); `None` for other evidence.
    pub snp_measurement: Option<String>,
    pub app_id: Option<String>,
    pub tcb_status: Option<String>,
    /// The quote backend that decided, and the root it verified against.
    pub backend: Option<String>,
    pub root: Option<String>,
    /// Until when the facts hold (unix seconds; 0 = no limit of their own).
    pub valid_until: u64,
    /// A quote that verified up to a trust root.
    pub verified: bool,
    /// The failure may be cured by trying again (collateral unavailable or expired).
    pub transient: bool,
    /// The registers and identity a sidecar report is compared with.
    pub measured: Measured,
    /// A quote was presented.
    pub has_quote: bool,
    /// The TD runs in debug mode.
    pub debug: Option<bool>,
    /// The event log replayed to RTMR3; `None` without an event log.
    pub rtmr3_replayed: Option<bool>,
    /// The platform's TCB standing, for the TCB metrics and the decision log (`dcap`,
    /// verified quotes).
    pub tcb: Option<TcbRecord>,
}

impl Facts {
    /// Heap bytes its strings hold, as the allocator lays them out.
    fn heap(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, |s| chunk(s.capacity()));
        let measured = self.measured.registers.iter().flat_map(Registers::values);
        let identity = self.measured.identity.iter().flat_map(IdentityHex::values);
        chunk(self.kind.capacity())
            + [
                &self.subject,
                &self.mrtd,
                &self.snp_measurement,
                &self.app_id,
                &self.tcb_status,
                &self.backend,
                &self.root,
            ]
            .into_iter()
            .map(text)
            .sum::<usize>()
            + measured.chain(identity).map(text).sum::<usize>()
            + self.tcb.as_ref().map_or(0, TcbRecord::heap)
    }
}

/// An appraisal ready to be turned into the input of any number of decisions.
#[derive(Debug)]
pub(crate) struct Prepared {
    evidence: regorus::Value,
    tdx: regorus::Value,
    app: regorus::Value,
    binding: regorus::Value,
    /// `snp`: only for SEV-SNP evidence (the claims leave it out otherwise).
    snp: Option<regorus::Value>,
    /// The JSON of the parts above, serialised once: every decision on this appraisal
    /// writes them into its claims document as they are ([`Self::input`]).
    json: PartsJson,
    pub facts: Facts,
    /// Approximate heap bytes held, for the cache's byte budget.
    weight: usize,
}

/// The JSON of a prepared appraisal's parts.
#[derive(Debug)]
struct PartsJson {
    app: String,
    binding: String,
    evidence: String,
    snp: Option<String>,
    tdx: String,
}

impl PartsJson {
    fn heap(&self) -> usize {
        [&self.app, &self.binding, &self.evidence, &self.tdx]
            .into_iter()
            .chain(self.snp.as_ref())
            .map(|s| chunk(s.capacity()))
            .sum()
    }
}

/// A regorus value as JSON, exactly as serialising a document holding it writes it.
fn json_of(v: &regorus::Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn value_of(v: &impl Serialize) -> regorus::Value {
    regorus::Value::from(serde_json::to_value(v).unwrap_or(serde_json::Value::Null))
}

/// Bytes the C allocator gives a request of `n`: glibc's chunks carry an 8-byte header,
/// are 16-byte aligned and at least 32 bytes. What RSS pays, not what was asked for.
const fn chunk(n: usize) -> usize {
    let c = (n + 8 + 15) & !15;
    if c < 32 { 32 } else { c }
}

/// Heap bytes a regorus value holds beyond its own slot, as the allocator lays them out:
/// each `Rc` (two counters) around its contents; an array's buffer as regorus grows it
/// (pushing, so to the next power of two); an object's or set's B-tree nodes as ascending
/// inserts fill them (leaves of 6 of their 11 entries, the last one up to 11; an internal
/// level of one node per 6 below). A walk bounded by the value's own size (the decoders
/// bound its depth).
pub(crate) fn weight(v: &regorus::Value) -> usize {
    use regorus::Value;
    const SLOT: usize = std::mem::size_of::<Value>();
    const RC: usize = 16;
    // A collection's header: `Vec` is 3 words, `BTreeMap` root, height and length.
    const HEADER: usize = 24;
    fn tree(n: usize, entry: usize) -> usize {
        // A node: parent pointer, index and length, 11 entries; internal nodes 12 edges.
        let leaf = chunk(8 + 4 + 11 * entry);
        let internal = chunk(8 + 4 + 11 * entry + 12 * 8);
        let mut nodes = if n <= 11 {
            usize::from(n > 0)
        } else {
            n.div_ceil(6)
        };
        let mut bytes = nodes * leaf;
        while nodes > 1 {
            nodes = nodes.div_ceil(6);
            bytes += nodes * internal;
        }
        bytes
    }
    match v {
        Value::String(s) => chunk(RC + s.len()),
        Value::Array(a) => {
            let cap = if a.is_empty() {
                0
            } else {
                a.len().next_power_of_two().max(4)
            };
            chunk(RC + HEADER)
                + if cap > 0 { chunk(cap * SLOT) } else { 0 }
                + a.iter().map(weight).sum::<usize>()
        }
        Value::Set(s) => {
            chunk(RC + HEADER) + tree(s.len(), SLOT) + s.iter().map(weight).sum::<usize>()
        }
        Value::Object(o) => {
            chunk(RC + HEADER)
                + tree(o.len(), 2 * SLOT)
                + o.iter().map(|(k, x)| weight(k) + weight(x)).sum::<usize>()
        }
        _ => 0,
    }
}

impl Prepared {
    pub fn new(appraised: AppraisedEvidence, valid_until: u64) -> Self {
        let tdx = appraised.tdx.as_ref();
        let snp_claims = appraised.snp.as_ref();
        let facts = Facts {
            kind: serde_json::to_value(appraised.evidence.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            tee: appraised.evidence.tee.map(|t| t.as_str()),
            subject: appraised.evidence.cert.as_ref().map(|c| c.subject.clone()),
            mrtd: tdx.and_then(|t| t.mrtd.clone()),
            snp_measurement: snp_claims.map(|s| s.measurement.clone()),
            app_id: appraised.app.as_ref().and_then(|a| a.app_id.clone()),
            tcb_status: tdx
                .and_then(|t| t.tcb_status.clone())
                .or_else(|| snp_claims.and_then(|s| s.tcb_status.clone())),
            backend: tdx
                .map(|t| t.backend.clone())
                .or_else(|| snp_claims.map(|_| "snp".to_string())),
            root: tdx
                .map(|t| t.root.as_str().to_string())
                .or_else(|| snp_claims.map(|s| s.root.to_string())),
            valid_until,
            verified: tdx.is_some_and(|t| t.verified) || snp_claims.is_some_and(|s| s.verified),
            transient: tdx.is_some_and(|t| t.error_code.is_some_and(|c| c.is_transient())),
            measured: appraised.measured(),
            has_quote: tdx.is_some() || snp_claims.is_some(),
            debug: tdx
                .and_then(|t| t.debug)
                .or_else(|| snp_claims.map(|s| s.debug)),
            rtmr3_replayed: appraised.app.as_ref().map(|a| a.rtmr3_replayed),
            tcb: tdx.and_then(|t| {
                Some(TcbRecord {
                    status: t.tcb_status.clone()?,
                    claims: t.tcb.clone()?,
                })
            }),
        };
        let (evidence, tdx, app, binding) = (
            value_of(&appraised.evidence),
            value_of(&appraised.tdx),
            value_of(&appraised.app),
            value_of(&appraised.binding),
        );
        let snp = appraised.snp.as_ref().map(value_of);
        let json = PartsJson {
            app: json_of(&app),
            binding: json_of(&binding),
            evidence: json_of(&evidence),
            snp: snp.as_ref().map(json_of),
            tdx: json_of(&tdx),
        };
        let weight = chunk(16 + std::mem::size_of::<Self>())
            + facts.heap()
            + json.heap()
            + [&evidence, &tdx, &app, &binding]
                .into_iter()
                .chain(snp.as_ref())
                .map(weight)
                .sum::<usize>();
        Self {
            evidence,
            tdx,
            app,
            binding,
            snp,
            json,
            facts,
            weight,
        }
    }

    /// Approximate bytes held.
    pub fn weight(&self) -> usize {
        self.weight
    }

    /// The policy input and the claims JSON for one decision.
    pub fn input(
        &self,
        purpose: &str,
        now: u64,
        connection: Option<&ConnectionClaims>,
        extra: &Extra,
    ) -> (regorus::Value, String) {
        let mut map = BTreeMap::new();
        let mut put = |k: &str, v: regorus::Value| {
            map.insert(regorus::Value::from(k), v);
        };
        put(
            "claims_version",
            regorus::Value::from(u64::from(CLAIMS_VERSION)),
        );
        put("purpose", regorus::Value::from(purpose));
        put("now", regorus::Value::from(now));
        let tee = self
            .facts
            .tee
            .map_or(regorus::Value::Null, regorus::Value::from);
        put("evidence", self.evidence.clone());
        put("tdx", self.tdx.clone());
        put("app", self.app.clone());
        put("binding", self.binding.clone());
        if let Some(snp) = &self.snp {
            put("snp", snp.clone());
        }
        let (connection, manifest, report) = (
            value_of(&connection),
            value_of(&extra.manifest),
            value_of(&extra.report),
        );
        // The claims document: the appraisal's parts as serialised once, the decision's
        // own parts serialised now, keys in the order a serialised regorus object has
        // them (sorted), so the text is what serialising the whole input would give.
        let j = &self.json;
        let mut json = String::with_capacity(
            j.app.len()
                + j.binding.len()
                + j.evidence.len()
                + j.tdx.len()
                + j.snp.as_ref().map_or(0, String::len)
                + 512,
        );
        let mut field = |name: &str, value: &str| {
            json.push(if json.is_empty() { '{' } else { ',' });
            json.push('"');
            json.push_str(name);
            json.push_str("\":");
            json.push_str(value);
        };
        field("app", &j.app);
        field("binding", &j.binding);
        field("claims_version", &CLAIMS_VERSION.to_string());
        field("connection", &json_of(&connection));
        field("evidence", &j.evidence);
        field("manifest", &json_of(&manifest));
        field("now", &now.to_string());
        field("purpose", &json_of(&regorus::Value::from(purpose)));
        field("report", &json_of(&report));
        if let Some(snp) = &j.snp {
            field("snp", snp);
        }
        field("tdx", &j.tdx);
        field("tee", &json_of(&tee));
        json.push('}');
        put("tee", tee);
        put("connection", connection);
        put("manifest", manifest);
        put("report", report);
        let input = regorus::Value::from(map);
        debug_assert_eq!(json, json_of(&input));
        (input, json)
    }

    /// The claims as a struct: what [`Self::input`] must agree with.
    #[cfg(test)]
    pub fn claims(
        appraised: AppraisedEvidence,
        purpose: &str,
        now: u64,
        connection: Option<ConnectionClaims>,
        extra: Extra,
    ) -> Claims {
        let mut c = appraised.into_claims(purpose, now, connection);
        c.manifest = extra.manifest;
        c.report = extra.report;
        c
    }
}

/// A platform's TCB standing in a decision log line: its status under the standard set
/// and the lifecycle claims (`tdx.tcb`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcbRecord {
    /// The status under Intel's standard set (`tdx.tcb_status`).
    pub status: String,
    /// `tdx.tcb`.
    #[serde(flatten)]
    pub claims: crate::tcb::TcbClaims,
}

impl TcbRecord {
    /// What the TCB metrics count of it.
    pub fn seen(&self) -> super::metrics::TcbSeen {
        let p = &self.claims.platform;
        super::metrics::TcbSeen {
            platform: format!("{}:{}:{}:{}", p.fmspc, p.cpu_svn, p.pce_svn, p.tee_tcb_svn),
            standard: self.status.clone(),
            early: self.claims.early.as_ref().map(|e| e.status.clone()),
            days_until: self.claims.early.as_ref().and_then(|e| e.days_until),
        }
    }

    /// Approximate heap bytes, for the appraisal cache's budget.
    pub fn heap(&self) -> usize {
        512 + 96 * self.claims.fix.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prepared forms must equal a plain serialization of the claims.
    #[test]
    fn prepared_input_equals_serialized_claims() {
        let quote = crate::evidence::decode_quote_text(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../testdata/dcap/tdx_quote"
            ))
            .unwrap(),
        )
        .unwrap();
        let ev = crate::evidence::Evidence::from_quote(quote);
        let appraised = AppraisedEvidence::build(&ev, None, Some(b"abc"));
        let prepared = Prepared::new(appraised.clone(), 0);
        let connection = ConnectionClaims {
            user: "u\"ser".into(),
            database: "db".into(),
            sni: String::new(),
            client_addr: "127.0.0.1:1".into(),
            alpn: "postgresql".into(),
            expected_mrtds: vec!["aa".into()],
            expected_compose_hashes: vec!["cc".into()],
            expected_app_ids: vec![],
        };
        let mut manifest = crate::manifest::Manifest::claims("v=1");
        manifest.valid_until = u64::MAX;
        let extra = Extra {
            manifest: Some(manifest.clone()),
            report: None,
        };
        let (value, json) = prepared.input("sid\u{e9}car", 42, Some(&connection), &extra);
        let claims = Prepared::claims(
            appraised,
            "sid\u{e9}car",
            42,
            Some(connection),
            Extra {
                manifest: Some(manifest),
                report: None,
            },
        );
        let expected = serde_json::to_value(&claims).unwrap();
        let got: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(got, expected);
        assert_eq!(got["manifest"]["valid_until"], u64::MAX);
        assert_eq!(value, regorus::Value::from(expected));
    }

    #[test]
    fn weight_grows_with_what_is_held() {
        let small = regorus::Value::from(serde_json::json!({"a": "b"}));
        let big = regorus::Value::from(serde_json::json!({"a": "b".repeat(10_000)}));
        assert!(weight(&big) >= weight(&small) + 9_999);
        let many =
            regorus::Value::from(serde_json::Value::Array(vec![serde_json::json!([]); 1000]));
        assert!(weight(&many) >= 1000 * std::mem::size_of::<regorus::Value>());
    }
}

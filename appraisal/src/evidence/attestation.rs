//! dstack `VersionedAttestation`: V0 (SCALE) and V1 (msgpack).
//!
//! V0 = `0x00`, quote kind (`0` = DstackTdx `{quote, event_log}`, `3` = DstackAmdSevSnp
//! `{report, cert_chain, mr_config}`), `runtime_events`, `report_data: [u8; 64]`,
//! `config: String`, and nothing after. V1 = a msgpack map
//! `{version: 1, platform: {kind, data}, stack: {kind, data}}` (platform `tdx` or
//! `sev-snp`), produced when runtime events of version 2 are present. Other platforms
//! are reported as unsupported.

use rmpv::ValueRef;
use serde::Serialize;

use super::reader::Reader;
use super::{
    EventLog, Evidence, EvidenceError, EvidenceKind, MAX_EVENTS, MAX_EVIDENCE_LEN, check_len,
    decode_hex, decode_quote_bytes,
};
use crate::eventlog::{RuntimeEvent, TdxEvent};
use crate::snp::{SnpEvidence, snp_evidence};

/// Which attestation form a certificate or blob carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttestationFormat {
    /// No attestation at all.
    None,
    /// `.1` raw quote (+ `.2` JSON event log), dstack ≤ v0.5.8.
    LegacyQuote,
    /// `.8` / blob, V0 SCALE.
    VersionedV0,
    /// `.8` / blob, V1 msgpack.
    VersionedV1,
}

/// A decoded dstack attestation.
#[derive(Debug, Clone)]
pub struct DstackAttestation {
    /// The encoding it was decoded from: `VersionedV0` (SCALE) or `VersionedV1` (msgpack).
    pub format: AttestationFormat,
    /// The raw DCAP quote bytes, not yet decoded (see [`Self::into_evidence`]); empty
    /// for SEV-SNP.
    pub quote: Vec<u8>,
    /// SEV-SNP (quote kind 3, V1 platform `sev-snp`): the report, its certificates and
    /// the MrConfigV3 document; `None` for TDX.
    pub snp: Option<SnpEvidence>,
    /// The TDX event log (V1: `platform.data.event_log`); empty when absent.
    pub event_log: Vec<TdxEvent>,
    /// dstack's RTMR3 runtime events (V1: `stack.data.runtime_events`); empty when absent.
    /// On SEV-SNP nothing measures them, so they never reach the evidence.
    pub runtime_events: Vec<RuntimeEvent>,
    /// The report data the attestation states, to be compared with the quote's own.
    pub report_data: [u8; 64],
    /// VmConfig JSON, or sys-config JSON with a nested `vm_config` string.
    pub config: Option<String>,
}

impl DstackAttestation {
    /// Turn the attestation into evidence of the given kind.
    pub fn into_evidence(self, kind: EvidenceKind) -> Result<Evidence, EvidenceError> {
        if let Some(snp) = self.snp {
            return Ok(Evidence {
                kind,
                quote: None,
                event_log: None,
                claimed_report_data: Some(self.report_data.to_vec()),
                vm_config: self.config,
                certificate: None,
                snp: Some(snp),
                gpu_evidence: None,
            });
        }
        let quote = decode_quote_bytes(&self.quote)?;
        Ok(Evidence {
            kind,
            quote: Some(quote),
            event_log: Some(EventLog {
                tdx_events: self.event_log,
                runtime_events: self.runtime_events,
            }),
            claimed_report_data: Some(self.report_data.to_vec()),
            vm_config: self.config,
            certificate: None,
            snp: None,
            gpu_evidence: None,
        })
    }
}

/// Decode an attestation given as text or bytes: a binary blob, hex (with or without
/// `0x`), or the guest agent's `Attest` response `{"attestation": "<hex>"}`.
pub fn decode_attestation_text(input: &[u8]) -> Result<Evidence, EvidenceError> {
    check_len(
        "dstack attestation input",
        input.len(),
        2 * MAX_EVIDENCE_LEN + 64,
    )?;
    let trimmed = input.trim_ascii();
    let blob = if trimmed.first() == Some(&b'{') {
        #[derive(serde::Deserialize)]
        struct Wrapped {
            attestation: String,
        }
        let w: Wrapped = serde_json::from_slice(trimmed).map_err(|e| {
            EvidenceError::invalid(format!("expected JSON {{\"attestation\": hex}}: {e}"))
        })?;
        decode_hex("attestation", &w.attestation, MAX_EVIDENCE_LEN)?
    } else if let Some(text) = std::str::from_utf8(trimmed).ok().filter(|t| {
        t.len() >= 2 && (t.starts_with("0x") || t.bytes().all(|b| b.is_ascii_hexdigit()))
    }) {
        decode_hex("attestation", text, MAX_EVIDENCE_LEN)?
    } else {
        input.to_vec()
    };
    decode_attestation(&blob)?.into_evidence(EvidenceKind::DstackAttestation)
}

/// Decode a `VersionedAttestation` blob.
pub fn decode_attestation(bytes: &[u8]) -> Result<DstackAttestation, EvidenceError> {
    check_len("dstack attestation", bytes.len(), MAX_EVIDENCE_LEN)?;
    match bytes.first() {
        None => Err(EvidenceError::invalid("dstack attestation is empty")),
        Some(0x00) => decode_v0(bytes),
        Some(0x80..=0x8f | 0xde | 0xdf) => decode_v1(bytes),
        Some(b) => Err(EvidenceError::invalid(format!(
            "unknown dstack attestation format (first byte {b:#04x}; expected 0x00 for V0 or a msgpack map for V1)"
        ))),
    }
}

fn decode_v0(bytes: &[u8]) -> Result<DstackAttestation, EvidenceError> {
    let mut r = Reader::new("dstack attestation V0", bytes);
    r.u8()?; // version 0
    let kind = r.u8()?;
    let (quote, snp, n) = match kind {
        0 => {
            let quote = r.bytes()?;
            // Each TdxEvent takes at least 8 + 1 + 1 + 1 bytes.
            let n = r.length(11)?;
            check_len("event log (events)", n, MAX_EVENTS)?;
            (quote, None, n)
        }
        3 => {
            let report = r.bytes()?;
            let n = r.length(1)?;
            check_len(
                "SEV-SNP cert_chain (entries)",
                n,
                crate::snp::MAX_SNP_CHAIN_ENTRIES,
            )?;
            let mut chain = Vec::with_capacity(n);
            for _ in 0..n {
                chain.push(r.bytes()?);
            }
            let mr_config = r.string()?;
            (
                Vec::new(),
                Some(snp_evidence(&report, chain, mr_config)?),
                0,
            )
        }
        _ => {
            return Err(EvidenceError::invalid(format!(
                "dstack attestation quote kind {kind} ({}) is not supported; only DstackTdx (0) and DstackAmdSevSnp (3) are",
                platform_name(kind)
            )));
        }
    };
    let mut event_log = Vec::with_capacity(n);
    for _ in 0..n {
        event_log.push(TdxEvent {
            imr: r.u32_le()?,
            event_type: r.u32_le()?,
            digest: r.bytes()?,
            event: r.string()?,
            event_payload: r.bytes()?,
            // SCALE skips the version: a V0 attestation carries version 1 events only.
            version: 1,
            preimage: None,
        });
    }
    let n = r.length(2)?;
    check_len("runtime events", n, MAX_EVENTS)?;
    let mut runtime_events = Vec::with_capacity(n);
    for _ in 0..n {
        runtime_events.push(RuntimeEvent::new(r.string()?, r.bytes()?));
    }
    let report_data = r.array::<64>()?;
    let config = r.string()?;
    if !r.is_empty() {
        return Err(EvidenceError::invalid(format!(
            "dstack attestation V0 has {} bytes after its end (offset {})",
            r.remaining(),
            r.offset()
        )));
    }
    Ok(DstackAttestation {
        format: AttestationFormat::VersionedV0,
        quote,
        snp,
        event_log,
        runtime_events,
        report_data,
        config: (!config.is_empty()).then_some(config),
    })
}

fn platform_name(kind: u8) -> &'static str {
    match kind {
        1 => "DstackGcpTdx",
        2 => "DstackNitroEnclave",
        3 => "DstackAmdSevSnp",
        4 => "DstackAwsNitroTpm",
        _ => "unknown",
    }
}

/// Nesting deeper than this is not a dstack attestation.
const MAX_MSGPACK_DEPTH: usize = 16;

fn decode_v1(bytes: &[u8]) -> Result<DstackAttestation, EvidenceError> {
    let bad = |m: String| EvidenceError::invalid(format!("dstack attestation V1: {m}"));
    let mut input = bytes;
    let root = rmpv::decode::read_value_ref_with_max_depth(&mut input, MAX_MSGPACK_DEPTH)
        .map_err(|e| bad(format!("not msgpack: {e}")))?;
    if !input.is_empty() {
        return Err(bad(format!(
            "{} bytes after the msgpack value",
            input.len()
        )));
    }
    let version = field(&root, "version")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("no version".into()))?;
    if version != 1 {
        return Err(bad(format!("version {version} is not supported")));
    }
    let platform = field(&root, "platform").ok_or_else(|| bad("no platform".into()))?;
    let pkind = field(platform, "kind")
        .and_then(str_of)
        .ok_or_else(|| bad("platform has no kind".into()))?;
    if pkind != "tdx" && pkind != "sev-snp" {
        return Err(bad(format!(
            "platform {pkind:?} is not supported; only \"tdx\" and \"sev-snp\" are"
        )));
    }
    let pdata = field(platform, "data").ok_or_else(|| bad("platform has no data".into()))?;
    let snp = if pkind == "sev-snp" {
        Some(snp_v1(pdata).map_err(|e| match e {
            EvidenceError::Invalid(m) => bad(m),
            other => other,
        })?)
    } else {
        None
    };
    let quote = match &snp {
        Some(_) => Vec::new(),
        None => field(pdata, "quote")
            .and_then(bytes_of)
            .ok_or_else(|| bad("platform.data.quote missing or not bytes".into()))?,
    };
    let event_log = match field(pdata, "event_log").filter(|_| snp.is_none()) {
        None | Some(ValueRef::Nil) => Vec::new(),
        Some(ValueRef::Array(items)) => {
            check_len("event log (events)", items.len(), MAX_EVENTS)?;
            items
                .iter()
                .map(|e| tdx_event(e).map_err(|m| bad(format!("event_log entry: {m}"))))
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(bad("platform.data.event_log is not an array".into())),
    };

    let stack = field(&root, "stack").ok_or_else(|| bad("no stack".into()))?;
    let skind = field(stack, "kind")
        .and_then(str_of)
        .ok_or_else(|| bad("stack has no kind".into()))?;
    if skind != "dstack" && skind != "dstack-pod" {
        return Err(bad(format!("stack {skind:?} is not supported")));
    }
    let sdata = field(stack, "data").ok_or_else(|| bad("stack has no data".into()))?;
    let rd = field(sdata, "report_data")
        .and_then(bytes_of)
        .ok_or_else(|| bad("stack.data.report_data missing".into()))?;
    let report_data: [u8; 64] = rd
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("report_data is {} bytes, not 64", rd.len())))?;
    let runtime_events = match field(sdata, "runtime_events") {
        None | Some(ValueRef::Nil) => Vec::new(),
        Some(ValueRef::Array(items)) => {
            check_len("runtime events", items.len(), MAX_EVENTS)?;
            items
                .iter()
                .map(|e| runtime_event(e).map_err(|m| bad(format!("runtime event: {m}"))))
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err(bad("stack.data.runtime_events is not an array".into())),
    };
    let config = field(sdata, "config").and_then(str_of).map(str::to_string);
    Ok(DstackAttestation {
        format: AttestationFormat::VersionedV1,
        quote,
        snp,
        event_log,
        runtime_events,
        report_data,
        config: config.filter(|c| !c.is_empty()),
    })
}

/// V1 `platform.data` of `sev-snp`: serde's `SnpQuote {report, cert_chain, mr_config}`.
fn snp_v1(pdata: &ValueRef<'_>) -> Result<SnpEvidence, EvidenceError> {
    let report = field(pdata, "report")
        .and_then(bytes_of)
        .ok_or_else(|| EvidenceError::invalid("platform.data.report missing or not bytes"))?;
    let chain = match field(pdata, "cert_chain") {
        None | Some(ValueRef::Nil) => Vec::new(),
        Some(ValueRef::Array(items)) => {
            check_len(
                "SEV-SNP cert_chain (entries)",
                items.len(),
                crate::snp::MAX_SNP_CHAIN_ENTRIES,
            )?;
            items
                .iter()
                .map(|c| {
                    bytes_of(c).ok_or_else(|| {
                        EvidenceError::invalid("platform.data.cert_chain entry is not bytes")
                    })
                })
                .collect::<Result<_, _>>()?
        }
        Some(_) => {
            return Err(EvidenceError::invalid(
                "platform.data.cert_chain is not an array",
            ));
        }
    };
    let mr_config = field(pdata, "mr_config")
        .and_then(str_of)
        .ok_or_else(|| EvidenceError::invalid("platform.data.mr_config missing or not a string"))?;
    snp_evidence(&report, chain, mr_config.to_string())
}

fn field<'a, 'b>(map: &'b ValueRef<'a>, name: &str) -> Option<&'b ValueRef<'a>> {
    match map {
        ValueRef::Map(entries) => entries
            .iter()
            .find(|(k, _)| str_of(k) == Some(name))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn str_of<'a>(v: &'a ValueRef<'a>) -> Option<&'a str> {
    match v {
        ValueRef::String(s) => s.as_str(),
        _ => None,
    }
}

/// Bytes as msgpack `bin`, or as an array of small integers (serde's default for `Vec<u8>`).
fn bytes_of(v: &ValueRef<'_>) -> Option<Vec<u8>> {
    match v {
        ValueRef::Binary(b) => Some(b.to_vec()),
        ValueRef::Array(items) => items
            .iter()
            .map(|i| i.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect(),
        ValueRef::String(s) => s.as_str().and_then(|s| hex::decode(s).ok()),
        _ => None,
    }
}

fn tdx_event(v: &ValueRef<'_>) -> Result<TdxEvent, String> {
    let number = |name: &str| {
        field(v, name)
            .and_then(ValueRef::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{name} missing or not a 32-bit number"))
    };
    Ok(TdxEvent {
        imr: number("imr")?,
        event_type: number("event_type")?,
        digest: field(v, "digest").and_then(bytes_of).unwrap_or_default(),
        event: field(v, "event")
            .and_then(str_of)
            .unwrap_or_default()
            .to_string(),
        event_payload: field(v, "event_payload")
            .and_then(bytes_of)
            .unwrap_or_default(),
        version: event_version(v)?,
        preimage: match field(v, "preimage") {
            None | Some(ValueRef::Nil) => None,
            Some(p) => Some(bytes_of(p).ok_or("preimage is not bytes")?),
        },
    })
}

fn runtime_event(v: &ValueRef<'_>) -> Result<RuntimeEvent, String> {
    let mut e = RuntimeEvent::new(
        field(v, "event")
            .and_then(str_of)
            .ok_or("event name missing or not a string")?,
        field(v, "payload")
            .and_then(bytes_of)
            .ok_or("payload missing or not bytes")?,
    );
    e.version = event_version(v)?;
    Ok(e)
}

/// An event's `version`: absent means 1; anything but 1 or 2 is refused.
fn event_version(v: &ValueRef<'_>) -> Result<u8, String> {
    match field(v, "version") {
        None | Some(ValueRef::Nil) => Ok(1),
        Some(x) => x
            .as_u64()
            .ok_or_else(|| "version is not a number".to_string())
            .and_then(|v| crate::eventlog::check_event_version(v).map_err(|e| e.to_string())),
    }
}

/// msgpack to JSON for display in claims: byte strings become hex.
pub(crate) fn msgpack_to_json(v: &ValueRef<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        ValueRef::Nil => J::Null,
        ValueRef::Boolean(b) => J::Bool(*b),
        ValueRef::Integer(i) => i
            .as_u64()
            .map(J::from)
            .or_else(|| i.as_i64().map(J::from))
            .unwrap_or(J::Null),
        ValueRef::F32(f) => J::from(f64::from(*f)),
        ValueRef::F64(f) => J::from(*f),
        ValueRef::String(s) => J::String(s.as_str().unwrap_or_default().to_string()),
        ValueRef::Binary(b) => J::String(hex::encode(b)),
        ValueRef::Array(items) => J::Array(items.iter().map(msgpack_to_json).collect()),
        ValueRef::Map(entries) => J::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        ValueRef::String(s) => s.as_str().unwrap_or_default().to_string(),
                        other => msgpack_to_json(other).to_string(),
                    };
                    (key, msgpack_to_json(v))
                })
                .collect(),
        ),
        ValueRef::Ext(t, b) => serde_json::json!({ "ext": t, "data": hex::encode(b) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::replay_rtmr3;

    fn blob() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/dstack/simulator-attestation.bin"
        ))
        .unwrap()
    }

    #[test]
    fn simulator_blob_decodes_and_replays() {
        let att = decode_attestation(&blob()).unwrap();
        assert_eq!(att.format, AttestationFormat::VersionedV0);
        assert_eq!(att.quote.len(), 5010);
        assert_eq!(att.event_log.len(), 33);
        assert_eq!(att.runtime_events.len(), 9);
        let quote = crate::evidence::decode_quote_bytes(&att.quote).unwrap();
        let td = quote.td_report().unwrap();
        assert_eq!(replay_rtmr3(&att.runtime_events), td.rtmr[3]);
        assert_eq!(att.report_data, td.report_data);
        assert!(att.config.unwrap().contains("vm_config"));
    }

    #[test]
    fn scale_test_vector_from_dstack() {
        // dstack ra-tls: Attestation{DstackTdx{quote:[9], event_log:[]}, [], 0x00*64, ""}.
        let mut v = vec![0x00, 0x00, 0x04, 0x09, 0x00, 0x00];
        v.extend([0u8; 64]);
        v.push(0x00);
        let att = decode_attestation(&v).unwrap();
        assert_eq!(att.quote, vec![9]);
        assert!(att.event_log.is_empty() && att.runtime_events.is_empty());
        assert_eq!(att.config, None);
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_an_error() {
        let b = blob();
        for len in 0..b.len() {
            assert!(decode_attestation(&b[..len]).is_err(), "len {len}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode_attestation(&longer).is_err());
    }

    #[test]
    fn other_platforms_are_named() {
        let err = decode_attestation(&[0x00, 0x02, 0x00]).unwrap_err();
        assert!(err.to_string().contains("DstackNitroEnclave"), "{err}");
        let err = decode_attestation(&[0x42]).unwrap_err();
        assert!(err.to_string().contains("0x42"), "{err}");
    }

    #[test]
    fn v1_msgpack_round_trip() {
        use rmpv::Value;
        let att = decode_attestation(&blob()).unwrap();
        let bin = |b: &[u8]| Value::Binary(b.to_vec());
        let s = |t: &str| Value::String(t.into());
        let events: Vec<Value> = att
            .runtime_events
            .iter()
            .map(|e| {
                Value::Map(vec![
                    (s("event"), s(&e.event)),
                    (s("payload"), bin(&e.payload)),
                    (s("version"), Value::from(1)),
                ])
            })
            .collect();
        let doc = Value::Map(vec![
            (s("version"), Value::from(1)),
            (
                s("platform"),
                Value::Map(vec![
                    (s("kind"), s("tdx")),
                    (
                        s("data"),
                        Value::Map(vec![
                            (
                                s("quote"),
                                Value::Array(att.quote.iter().map(|b| Value::from(*b)).collect()),
                            ),
                            (s("event_log"), Value::Array(vec![])),
                        ]),
                    ),
                ]),
            ),
            (
                s("stack"),
                Value::Map(vec![
                    (s("kind"), s("dstack")),
                    (
                        s("data"),
                        Value::Map(vec![
                            (s("report_data"), bin(&att.report_data)),
                            (s("runtime_events"), Value::Array(events)),
                            (s("config"), s("{}")),
                        ]),
                    ),
                ]),
            ),
        ]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &doc).unwrap();
        let v1 = decode_attestation(&buf).unwrap();
        assert_eq!(v1.format, AttestationFormat::VersionedV1);
        assert_eq!(v1.quote, att.quote);
        assert_eq!(v1.runtime_events, att.runtime_events);
        assert_eq!(v1.report_data, att.report_data);
    }

    fn snp_blob() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/dstack/sev-snp-attestation.bin"
        ))
        .unwrap()
    }

    #[test]
    fn sev_snp_v0_decodes_with_every_length_checked() {
        let b = snp_blob();
        let att = decode_attestation(&b).unwrap();
        let snp = att.snp.as_ref().unwrap();
        assert_eq!(snp.report.version(), 3);
        assert!(snp.cert_chain.is_empty());
        assert!(snp.mr_config.starts_with("{\"app_id\":\"86e59625"));
        assert!(att.quote.is_empty() && att.event_log.is_empty());
        assert_eq!(att.runtime_events.len(), 9);
        for len in 0..b.len() {
            assert!(decode_attestation(&b[..len]).is_err(), "len {len}");
        }
        // The runtime events are not measured on SEV-SNP: they stay out of the evidence.
        let ev = att.into_evidence(EvidenceKind::DstackAttestation).unwrap();
        assert!(ev.quote.is_none() && ev.event_log.is_none() && ev.snp.is_some());
        // A report of another length is refused when decoded.
        let mut short = vec![0x00, 0x03, 0x7d, 0x12]; // compact 1183
        short.extend(&b[4..4 + 1183]);
        short.extend(&b[4 + 1184..]);
        let err = decode_attestation(&short).unwrap_err();
        assert!(err.to_string().contains("1183 bytes"), "{err}");
        // More than MAX_SNP_CHAIN_ENTRIES certificates.
        let mut many = b[..4 + 1184].to_vec();
        many.extend([9 << 2]);
        many.extend([0u8; 9]);
        many.extend(&b[4 + 1184 + 1..]);
        let err = decode_attestation(&many).unwrap_err();
        assert!(err.to_string().contains("cert_chain"), "{err}");
    }

    #[test]
    fn sev_snp_v1_msgpack() {
        use rmpv::Value;
        let att = decode_attestation(&snp_blob()).unwrap();
        let snp = att.snp.clone().unwrap();
        let s = |t: &str| Value::String(t.into());
        let doc = |chain: Vec<Value>| {
            Value::Map(vec![
                (s("version"), Value::from(1)),
                (
                    s("platform"),
                    Value::Map(vec![
                        (s("kind"), s("sev-snp")),
                        (
                            s("data"),
                            Value::Map(vec![
                                (s("report"), Value::Binary(snp.report.raw().to_vec())),
                                (s("cert_chain"), Value::Array(chain)),
                                (s("mr_config"), s(&snp.mr_config)),
                            ]),
                        ),
                    ]),
                ),
                (
                    s("stack"),
                    Value::Map(vec![
                        (s("kind"), s("dstack")),
                        (
                            s("data"),
                            Value::Map(vec![
                                (s("report_data"), Value::Binary(att.report_data.to_vec())),
                                (s("runtime_events"), Value::Array(vec![])),
                                (s("config"), s("")),
                            ]),
                        ),
                    ]),
                ),
            ])
        };
        let encode = |v: &Value| {
            let mut buf = Vec::new();
            rmpv::encode::write_value(&mut buf, v).unwrap();
            buf
        };
        let two = vec![Value::Binary(vec![1, 2]), Value::Binary(vec![3])];
        let v1 = decode_attestation(&encode(&doc(two))).unwrap();
        assert_eq!(v1.format, AttestationFormat::VersionedV1);
        let got = v1.snp.unwrap();
        assert_eq!(got.report, snp.report);
        assert_eq!(got.cert_chain, vec![vec![1, 2], vec![3]]);
        assert_eq!(got.mr_config, snp.mr_config);
        let nine = vec![Value::Binary(vec![1]); 9];
        let err = decode_attestation(&encode(&doc(nine))).unwrap_err();
        assert!(err.to_string().contains("cert_chain"), "{err}");
    }
}

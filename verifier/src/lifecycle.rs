//! The TCB report (`teesql-verifier tcb report`): for each platform seen (FMSPC and TCB
//! SVNs), its status under Intel's standard set now, under the early set, the day that
//! changes and what fixes it, with every identity (app id, compose hash, tenant) seen on
//! it. Read from a decision log (`serve --decision-log`, the `peer.tcb` of each line) or
//! from appraised evidence.

use std::collections::BTreeMap;
use std::io::BufRead;

use serde::Serialize;
use serde_json::Value;

/// Longest decision log line read; longer ones are skipped (counted).
const MAX_LINE: usize = 1 << 20;
/// Most platforms and identities per platform kept (the rest are counted, not listed).
const MAX_PLATFORMS: usize = 4096;
const MAX_IDENTITIES: usize = 256;

/// One identity seen on a platform.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Identity {
    /// The attested app id (hex).
    pub app_id: Option<String>,
    /// The attested compose hash (hex).
    pub compose_hash: Option<String>,
    /// The tenant a decision granted (`grants.attributes.tenant`).
    pub tenant: Option<String>,
}

/// One platform's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlatformReport {
    /// `tdx.tcb.platform`: FMSPC, CPUSVN, PCESVN, TEE_TCB_SVN.
    pub platform: Value,
    /// Status under the standard set, as last seen.
    pub status: String,
    /// The standard set's number.
    pub eval_data_number: Value,
    /// `tdx.tcb.early` as last seen (`null`: no newer set).
    pub early: Value,
    /// `tdx.tcb.fix`: what must rise.
    pub fix: Value,
    /// Unix seconds it was last seen (decision log), 0 from evidence.
    pub last_seen: u64,
    /// The identities seen on it.
    pub identities: Vec<Identity>,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Platforms, by FMSPC and SVNs.
    pub platforms: Vec<PlatformReport>,
    /// Decision log lines read.
    pub lines: u64,
    /// Lines that are not decision log lines, or too long (skipped).
    pub skipped: u64,
}

/// Collects the report from observations.
#[derive(Debug, Default)]
pub struct Builder {
    platforms: BTreeMap<String, PlatformReport>,
    lines: u64,
    skipped: u64,
}

impl Builder {
    /// Note one observation: `tcb` is `{status, …tdx.tcb}` (a log line's `peer.tcb`).
    pub fn observe(&mut self, tcb: &Value, identity: Identity, time: u64) {
        let p = &tcb["platform"];
        let key = format!(
            "{}:{}:{}:{}",
            p["fmspc"].as_str().unwrap_or("?"),
            p["cpu_svn"].as_str().unwrap_or("?"),
            p["pce_svn"],
            p["tee_tcb_svn"].as_str().unwrap_or("?")
        );
        if !self.platforms.contains_key(&key) && self.platforms.len() >= MAX_PLATFORMS {
            self.skipped += 1;
            return;
        }
        let entry = self.platforms.entry(key).or_insert_with(|| PlatformReport {
            platform: p.clone(),
            status: String::new(),
            eval_data_number: Value::Null,
            early: Value::Null,
            fix: Value::Null,
            last_seen: 0,
            identities: Vec::new(),
        });
        if time >= entry.last_seen {
            entry.status = tcb["status"].as_str().unwrap_or("?").to_string();
            entry.eval_data_number = tcb["eval_data_number"].clone();
            entry.early = tcb["early"].clone();
            entry.fix = tcb["fix"].clone();
            entry.last_seen = time;
        }
        let known = identity.app_id.is_some() || identity.compose_hash.is_some();
        if known && !entry.identities.contains(&identity) && entry.identities.len() < MAX_IDENTITIES
        {
            entry.identities.push(identity);
            entry.identities.sort();
        }
    }

    /// Read a decision log: every line with a `peer.tcb`.
    pub fn read_log(&mut self, log: impl BufRead) -> std::io::Result<()> {
        let mut lines = log.split(b'\n');
        while let Some(line) = lines.next().transpose()? {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.lines += 1;
            if line.len() > MAX_LINE {
                self.skipped += 1;
                continue;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                self.skipped += 1;
                continue;
            };
            let peer = &v["peer"];
            if peer["tcb"].is_object() {
                let text = |v: &Value| v.as_str().map(str::to_string);
                self.observe(
                    &peer["tcb"],
                    Identity {
                        app_id: text(&peer["app_id"]),
                        compose_hash: text(&peer["compose_hash"]),
                        tenant: text(&v["grants"]["attributes"]["tenant"]),
                    },
                    v["time"].as_u64().unwrap_or(0),
                );
            }
        }
        Ok(())
    }

    /// The report, most urgent first: demoted now, then by days until the early set
    /// demotes, then the rest.
    pub fn finish(self) -> Report {
        let mut platforms: Vec<PlatformReport> = self.platforms.into_values().collect();
        platforms.sort_by_key(|p| {
            let now_bad = p.status.starts_with("OutOfDate") || p.status == "Revoked";
            let early_bad = p.early["status"]
                .as_str()
                .is_some_and(|s| s.starts_with("OutOfDate") || s == "Revoked");
            let days = p.early["days_until"].as_i64().unwrap_or(i64::MAX);
            (!now_bad, !early_bad, days)
        });
        Report {
            platforms,
            lines: self.lines,
            skipped: self.skipped,
        }
    }
}

impl Report {
    /// The report as an operator reads it: one block per platform.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.platforms.is_empty() {
            out.push_str("no platform with TCB facts (only dcap-verified TDX quotes have them)\n");
        }
        for p in &self.platforms {
            let early = match p.early["status"].as_str() {
                Some(status) => format!(
                    "{status} under early set {} from {} ({} days)",
                    p.early["eval_data_number"],
                    p.early["standard_from"]
                        .as_str()
                        .unwrap_or("an unknown date"),
                    p.early["days_until"]
                        .as_i64()
                        .map_or("?".to_string(), |d| d.to_string()),
                ),
                None => "no newer set".to_string(),
            };
            let fix: Vec<String> = p
                .fix
                .as_array()
                .map(|f| {
                    f.iter()
                        .map(|f| {
                            format!(
                                "{} ({}) {} -> {}",
                                f["component"].as_str().unwrap_or("?"),
                                f["kind"].as_str().unwrap_or("unlabelled"),
                                f["have"],
                                f["needs"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "platform FMSPC {} TEE_TCB_SVN {} PCESVN {}\n  now:   {} under standard set {}\n  next:  {early}\n  fix:   {}\n",
                p.platform["fmspc"].as_str().unwrap_or("?"),
                p.platform["tee_tcb_svn"].as_str().unwrap_or("?"),
                p.platform["pce_svn"],
                p.status,
                p.eval_data_number,
                if fix.is_empty() {
                    "nothing to raise".to_string()
                } else {
                    fix.join(", ")
                },
            ));
            for i in &p.identities {
                out.push_str(&format!(
                    "  seen:  app_id {} compose_hash {} tenant {}\n",
                    i.app_id.as_deref().unwrap_or("-"),
                    i.compose_hash.as_deref().unwrap_or("-"),
                    i.tenant.as_deref().unwrap_or("-"),
                ));
            }
        }
        if self.skipped > 0 {
            out.push_str(&format!(
                "({} of {} lines skipped: not decision log lines, or too long)\n",
                self.skipped, self.lines
            ));
        }
        out
    }
}

/// The claims as they will be on the day Intel's early set becomes the standard one:
/// the early status decides, the set has been standard for 0 days, no newer set is
/// known, and what must rise stays what it is. `None` when the claims have no early set
/// (nothing would change). The advisories stay the standard set's (the early set's are
/// not in the claims).
pub fn as_if_promoted(claims: &Value) -> Option<Value> {
    let early = claims["tdx"]["tcb"]["early"].as_object()?.clone();
    let mut c = claims.clone();
    let tdx = c.get_mut("tdx")?.as_object_mut()?;
    tdx.insert("tcb_status".into(), early.get("status")?.clone());
    let tcb = tdx.get_mut("tcb")?.as_object_mut()?;
    tcb.insert(
        "eval_data_number".into(),
        early.get("eval_data_number")?.clone(),
    );
    tcb.insert(
        "standard_since".into(),
        early.get("standard_from").cloned().unwrap_or(Value::Null),
    );
    // As if promoted today: 0 days since (a grace counts from today).
    tcb.insert("days_since_standard".into(), Value::from(0));
    tcb.insert("early".into(), Value::Null);
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(time: u64, status: &str, early: Value, tenant: &str) -> String {
        json!({
            "time": time, "purpose": "sidecar", "allow": true,
            "peer": {"evidence": "ra_tls_cert", "app_id": "aa", "compose_hash": format!("c-{tenant}"),
                     "tcb": {"status": status, "platform": {"fmspc": "00806F050000", "cpu_svn": "0303", "pce_svn": 11, "tee_tcb_svn": "0501"},
                             "eval_data_number": 17, "standard_since": null, "days_since_standard": null,
                             "early": early, "fix": [{"component": "tdx_module", "kind": "TDX Module", "have": 5, "needs": 6}]}},
            "grants": {"roles": ["tenant_acme"], "attributes": {"tenant": tenant}},
        })
        .to_string()
    }

    #[test]
    fn promotion_makes_the_early_status_the_deciding_one() {
        let claims = json!({"tdx": {"tcb_status": "UpToDate", "tcb": {
            "eval_data_number": 19, "standard_since": null, "days_since_standard": null,
            "early": {"status": "OutOfDate", "eval_data_number": 20, "tcb_recovery_date": "2025-08-12T00:00:00Z", "standard_from": "2026-08-12T00:00:00Z", "days_until": 3},
            "fix": []}}});
        let p = as_if_promoted(&claims).unwrap();
        assert_eq!(p["tdx"]["tcb_status"], "OutOfDate");
        assert_eq!(p["tdx"]["tcb"]["eval_data_number"], 20);
        assert_eq!(p["tdx"]["tcb"]["days_since_standard"], 0);
        assert_eq!(p["tdx"]["tcb"]["early"], Value::Null);
        let mut none = claims.clone();
        none["tdx"]["tcb"]["early"] = Value::Null;
        assert!(as_if_promoted(&none).is_none());
    }

    #[test]
    fn a_log_becomes_one_block_per_platform_with_its_identities() {
        let early = json!({"status": "OutOfDate", "eval_data_number": 18, "tcb_recovery_date": "2025-09-01T00:00:00Z", "standard_from": "2026-09-01T00:00:00Z", "days_until": 29});
        let log = [
            line(10, "UpToDate", early.clone(), "acme"),
            "not json".to_string(),
            line(20, "UpToDate", early, "globex"),
            line(5, "UpToDate", Value::Null, "acme"),
        ]
        .join("\n");
        let mut b = Builder::default();
        b.read_log(log.as_bytes()).unwrap();
        let r = b.finish();
        assert_eq!((r.lines, r.skipped), (4, 1));
        assert_eq!(r.platforms.len(), 1);
        let p = &r.platforms[0];
        // The latest line wins; the older one without an early set does not.
        assert_eq!(p.early["days_until"], 29);
        assert_eq!(p.identities.len(), 2);
        let t = r.table();
        assert!(
            t.contains("OutOfDate under early set 18 from 2026-09-01T00:00:00Z (29 days)"),
            "{t}"
        );
        assert!(t.contains("fix:   tdx_module (TDX Module) 5 -> 6"), "{t}");
        assert!(t.contains("tenant globex"), "{t}");
    }
}

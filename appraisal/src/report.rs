//! Checking the sidecar's `/attestation` report: its type and binding are defined once
//! in [`teesql_proto::report`]; here it is parsed, its evidence taken out, and what it
//! states compared with what its quote attests.
//!
//!
//! ```json
//! { "app_id", "compose_hash", "instance_id", "quote": "<hex>",
//!   "tcb_info": {"mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"},
//!   "postgres_state": {"wal_lsn", "controldata_hash", "pg_version"},
//!   "timestamp": <unix seconds>, "event_log": "<GetQuote event log JSON>", "vm_config": "…" }
//! ```
//!
//! Binding: the quote's report data is `SHA-256(binding_text)` followed by 32 zero bytes,
//! where `binding_text` is the UTF-8 text `wal_lsn "|" controldata_hash "|" timestamp`
//! (the LSN as Postgres prints it, e.g. `0/16B3740`; the control data hash as 64 lowercase
//! hex digits; the timestamp in decimal), e.g. `0/16B3740|9f86…08|1760000000`.

use serde::Serialize;
pub use teesql_proto::report::{
    AttestationReport, PostgresState, ReportTcbInfo, binding_text, report_data,
};

use crate::evidence::{
    EventLog, Evidence, EvidenceError, EvidenceKind, MAX_EVIDENCE_LEN, MAX_QUOTE_LEN, check_len,
    decode_hex, decode_quote_bytes,
};

/// The part of the claims about the report itself (`report.*`).
#[derive(Debug, Clone, Serialize)]
pub struct ReportClaims {
    /// The app id the report states, as written (hex); checked against the event log
    /// when there is one.
    pub app_id: String,
    /// The compose hash the report states, as written (hex); checked like `app_id`.
    pub compose_hash: String,
    /// The instance id the report states, as written (hex); checked like `app_id`.
    pub instance_id: String,
    /// The Postgres state the report states (`wal_lsn`, `controldata_hash`,
    /// `pg_version`); the first two are bound into the quote's report data.
    pub postgres_state: PostgresState,
    /// When the sidecar made the report, unix seconds; bound into the report data.
    pub timestamp: u64,
    /// Every register and identity field the report states equals what the quote and
    /// the replayed event log attest.
    pub consistent: bool,
    /// Which stated fields differ from the attested ones.
    pub inconsistencies: Vec<String>,
}

/// Parse the report JSON.
pub fn parse(json: &str) -> Result<AttestationReport, EvidenceError> {
    check_len("attestation report", json.len(), MAX_EVIDENCE_LEN)?;
    serde_json::from_str(json)
        .map_err(|e| EvidenceError::Invalid(format!("not a sidecar /attestation report: {e}")))
}

/// The evidence in a report: its quote and event log.
pub fn evidence(report: &AttestationReport) -> Result<Evidence, EvidenceError> {
    let quote = decode_quote_bytes(&decode_hex("report quote", &report.quote, MAX_QUOTE_LEN)?)?;
    let event_log = if report.event_log.trim().is_empty() {
        None
    } else {
        Some(EventLog {
            tdx_events: serde_json::from_str(&report.event_log).map_err(|e| {
                EvidenceError::Invalid(format!("report event_log is not a dstack event log: {e}"))
            })?,
            runtime_events: Vec::new(),
        })
    };
    Ok(Evidence {
        kind: EvidenceKind::Quote,
        quote: Some(quote),
        event_log,
        claimed_report_data: None,
        vm_config: (!report.vm_config.is_empty()).then(|| report.vm_config.clone()),
        certificate: None,
        snp: None,
        gpu_evidence: None,
    })
}

/// The five measurement registers of a TD (lower-case hex), as a quote attests them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registers {
    /// MRTD: the initial TD image (firmware).
    pub mrtd: Option<String>,
    /// RTMR0: firmware configuration.
    pub rtmr0: Option<String>,
    /// RTMR1: the kernel.
    pub rtmr1: Option<String>,
    /// RTMR2: kernel command line and initrd.
    pub rtmr2: Option<String>,
    /// RTMR3: the application (dstack's runtime events).
    pub rtmr3: Option<String>,
}

impl Registers {
    /// Every register, MRTD first.
    pub fn values(&self) -> [&Option<String>; 5] {
        [
            &self.mrtd,
            &self.rtmr0,
            &self.rtmr1,
            &self.rtmr2,
            &self.rtmr3,
        ]
    }
}

/// The application identity a replayed event log attests (lower-case hex).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityHex {
    /// The app id measured into RTMR3.
    pub app_id: Option<String>,
    /// The hash of the app's compose file.
    pub compose_hash: Option<String>,
    /// The instance id.
    pub instance_id: Option<String>,
}

impl IdentityHex {
    /// App id, compose hash, instance id.
    pub fn values(&self) -> [&Option<String>; 3] {
        [&self.app_id, &self.compose_hash, &self.instance_id]
    }
}

/// What a sidecar report's statements are compared with: the quote's registers (when
/// there is a quote) and the attested app identity (when there is an event log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measured {
    /// The quote's registers; `None` without a quote.
    pub registers: Option<Registers>,
    /// The replayed app identity; `None` without an event log.
    pub identity: Option<IdentityHex>,
}

/// Compare what a report states with what its quote (and replayed log) attest:
/// `measured` is taken from the appraisal of [`evidence`].
pub fn claims(report: &AttestationReport, measured: &Measured) -> ReportClaims {
    let mut bad = Vec::new();
    if let Some(r) = &measured.registers {
        let t = &report.tcb_info;
        compare("tcb_info.mrtd", &t.mrtd, &r.mrtd, &mut bad);
        compare("tcb_info.rtmr0", &t.rtmr0, &r.rtmr0, &mut bad);
        compare("tcb_info.rtmr1", &t.rtmr1, &r.rtmr1, &mut bad);
        compare("tcb_info.rtmr2", &t.rtmr2, &r.rtmr2, &mut bad);
        compare("tcb_info.rtmr3", &t.rtmr3, &r.rtmr3, &mut bad);
    }
    if let Some(i) = &measured.identity {
        compare("app_id", &report.app_id, &i.app_id, &mut bad);
        compare(
            "compose_hash",
            &report.compose_hash,
            &i.compose_hash,
            &mut bad,
        );
        compare("instance_id", &report.instance_id, &i.instance_id, &mut bad);
    }
    ReportClaims {
        app_id: report.app_id.clone(),
        compose_hash: report.compose_hash.clone(),
        instance_id: report.instance_id.clone(),
        postgres_state: report.postgres_state.clone(),
        timestamp: report.timestamp,
        consistent: measured.registers.is_some() && bad.is_empty(),
        inconsistencies: bad,
    }
}

/// Note `name` as inconsistent unless the stated hex (any case, `0x` or not) is what was
/// attested.
fn compare(name: &str, stated: &str, attested: &Option<String>, bad: &mut Vec<String>) {
    let stated = stated.trim_start_matches("0x").to_ascii_lowercase();
    if attested.as_deref() != Some(stated.as_str()) {
        bad.push(name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_report_is_an_error() {
        assert!(parse("{}").is_err());
        assert!(parse("nope").is_err());
    }
}

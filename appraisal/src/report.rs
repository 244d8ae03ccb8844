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
    pub app_id: String,
    pub compose_hash: String,
    pub instance_id: String,
    pub postgres_state: PostgresState,
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
    })
}

/// Compare what a report states with what its quote (and replayed log) attest:
/// `measured` is taken from the appraisal of [`evidence`].
pub fn claims(report: &AttestationReport, measured: &crate::claims::Measured) -> ReportClaims {
    let norm = |s: &str| s.trim_start_matches("0x").to_ascii_lowercase();
    let mut bad = Vec::new();
    if let Some(registers) = &measured.registers {
        let stated = [
            &report.tcb_info.mrtd,
            &report.tcb_info.rtmr0,
            &report.tcb_info.rtmr1,
            &report.tcb_info.rtmr2,
            &report.tcb_info.rtmr3,
        ];
        let names = [
            "tcb_info.mrtd",
            "tcb_info.rtmr0",
            "tcb_info.rtmr1",
            "tcb_info.rtmr2",
            "tcb_info.rtmr3",
        ];
        for ((name, stated), attested) in names.into_iter().zip(stated).zip(registers) {
            if attested.as_deref() != Some(norm(stated).as_str()) {
                bad.push(name.to_string());
            }
        }
    }
    if let Some(identity) = &measured.identity {
        let stated = [&report.app_id, &report.compose_hash, &report.instance_id];
        let names = ["app_id", "compose_hash", "instance_id"];
        for ((name, stated), attested) in names.into_iter().zip(stated).zip(identity) {
            if attested.as_deref() != Some(norm(stated).as_str()) {
                bad.push(name.to_string());
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_report_is_an_error() {
        assert!(parse("{}").is_err());
        assert!(parse("nope").is_err());
    }
}

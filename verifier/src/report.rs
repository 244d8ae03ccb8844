//! The sidecar's `/attestation` report: a fresh quote bound to the state of Postgres.
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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::evidence::{
    EventLog, Evidence, EvidenceError, EvidenceKind, MAX_EVIDENCE_LEN, MAX_QUOTE_LEN, check_len,
    decode_hex, decode_quote_bytes,
};

/// The report as the sidecar serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationReport {
    pub app_id: String,
    pub compose_hash: String,
    pub instance_id: String,
    /// Hex.
    pub quote: String,
    pub tcb_info: ReportTcbInfo,
    pub postgres_state: PostgresState,
    pub timestamp: u64,
    /// The guest agent's event log (JSON text), so a verifier can replay RTMR3.
    #[serde(default)]
    pub event_log: String,
    #[serde(default)]
    pub vm_config: String,
}

/// The registers the report states (checked against the quote).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportTcbInfo {
    pub mrtd: String,
    pub rtmr0: String,
    pub rtmr1: String,
    pub rtmr2: String,
    pub rtmr3: String,
}

/// The Postgres state the quote is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresState {
    /// `pg_current_wal_lsn()` (or `pg_last_wal_replay_lsn()` on a replica).
    pub wal_lsn: String,
    /// SHA-256 (hex) of `pg_control_system()` and `pg_control_checkpoint()` output.
    pub controldata_hash: String,
    /// `server_version`.
    pub pg_version: String,
}

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

/// The text whose SHA-256 the report's quote must carry.
pub fn binding_text(state: &PostgresState, timestamp: u64) -> String {
    format!(
        "{}|{}|{}",
        state.wal_lsn,
        state.controldata_hash.to_ascii_lowercase(),
        timestamp
    )
}

/// The 64 bytes of report data binding a Postgres state and time.
pub fn report_data(state: &PostgresState, timestamp: u64) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&Sha256::digest(binding_text(state, timestamp).as_bytes()));
    out
}

impl AttestationReport {
    /// Parse the report JSON.
    pub fn parse(json: &str) -> Result<Self, EvidenceError> {
        check_len("attestation report", json.len(), MAX_EVIDENCE_LEN)?;
        serde_json::from_str(json)
            .map_err(|e| EvidenceError::Invalid(format!("not a sidecar /attestation report: {e}")))
    }

    /// The evidence in the report: its quote and event log.
    pub fn evidence(&self) -> Result<Evidence, EvidenceError> {
        let quote = decode_quote_bytes(&decode_hex("report quote", &self.quote, MAX_QUOTE_LEN)?)?;
        let event_log = if self.event_log.trim().is_empty() {
            None
        } else {
            Some(EventLog {
                tdx_events: serde_json::from_str(&self.event_log).map_err(|e| {
                    EvidenceError::Invalid(format!(
                        "report event_log is not a dstack event log: {e}"
                    ))
                })?,
                runtime_events: Vec::new(),
            })
        };
        Ok(Evidence {
            kind: EvidenceKind::Quote,
            quote: Some(quote),
            event_log,
            claimed_report_data: None,
            vm_config: (!self.vm_config.is_empty()).then(|| self.vm_config.clone()),
            certificate: None,
        })
    }

    /// Compare what the report states with what its quote (and replayed log) attest:
    /// `measured` is taken from the appraisal of [`Self::evidence`].
    pub fn claims(&self, measured: &crate::claims::Measured) -> ReportClaims {
        let norm = |s: &str| s.trim_start_matches("0x").to_ascii_lowercase();
        let mut bad = Vec::new();
        if let Some(registers) = &measured.registers {
            let stated = [
                &self.tcb_info.mrtd,
                &self.tcb_info.rtmr0,
                &self.tcb_info.rtmr1,
                &self.tcb_info.rtmr2,
                &self.tcb_info.rtmr3,
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
            let stated = [&self.app_id, &self.compose_hash, &self.instance_id];
            let names = ["app_id", "compose_hash", "instance_id"];
            for ((name, stated), attested) in names.into_iter().zip(stated).zip(identity) {
                if attested.as_deref() != Some(norm(stated).as_str()) {
                    bad.push(name.to_string());
                }
            }
        }
        ReportClaims {
            app_id: self.app_id.clone(),
            compose_hash: self.compose_hash.clone(),
            instance_id: self.instance_id.clone(),
            postgres_state: self.postgres_state.clone(),
            timestamp: self.timestamp,
            consistent: measured.registers.is_some() && bad.is_empty(),
            inconsistencies: bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_is_the_documented_text() {
        let state = PostgresState {
            wal_lsn: "0/16B3740".into(),
            controldata_hash: "AB".repeat(32),
            pg_version: "17.2".into(),
        };
        let text = binding_text(&state, 1_760_000_000);
        assert_eq!(text, format!("0/16B3740|{}|1760000000", "ab".repeat(32)));
        let rd = report_data(&state, 1_760_000_000);
        assert_eq!(&rd[..32], Sha256::digest(text.as_bytes()).as_slice());
        assert_eq!(&rd[32..], &[0u8; 32]);
    }

    #[test]
    fn garbage_report_is_an_error() {
        assert!(AttestationReport::parse("{}").is_err());
        assert!(AttestationReport::parse("nope").is_err());
    }
}

//! The sidecar's `/attestation` report: a fresh quote bound to the state of Postgres.
//! The sidecar makes it, the verifier (`VerifyReport`) and clients check it; this is
//! the one definition both sides use.
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

/// The report as the sidecar serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationReport {
    /// The app id (hex) from the guest agent's `Info`; checked against the replayed RTMR3.
    pub app_id: String,
    /// The hash (hex) of the app's compose file, from `Info`; checked like `app_id`.
    pub compose_hash: String,
    /// The CVM instance id (hex), from `Info`; checked like `app_id`.
    pub instance_id: String,
    /// Hex.
    pub quote: String,
    /// The registers `Info` states; a verifier compares them with the quote's.
    pub tcb_info: ReportTcbInfo,
    /// The Postgres state the quote's report data binds ([`report_data`]).
    pub postgres_state: PostgresState,
    /// When the report was made, in Unix seconds; part of the binding text.
    pub timestamp: u64,
    /// The guest agent's event log (JSON text), so a verifier can replay RTMR3.
    #[serde(default)]
    pub event_log: String,
    /// `GetQuote`'s `vm_config` (JSON text, carrying `mr_config`); empty or absent = none.
    #[serde(default)]
    pub vm_config: String,
}

/// The registers the report states (checked against the quote).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportTcbInfo {
    /// MRTD (initial TD image), hex as the guest agent's `Info` gives it.
    pub mrtd: String,
    /// RTMR0 (firmware configuration), hex.
    pub rtmr0: String,
    /// RTMR1 (the kernel), hex.
    pub rtmr1: String,
    /// RTMR2 (kernel command line and initrd), hex.
    pub rtmr2: String,
    /// RTMR3 (dstack's runtime events: the app), hex.
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
}

//! dstack guest agent `GetQuote` responses: `{quote, event_log, report_data, vm_config}`.

use serde::Deserialize;

use super::{
    EventLog, Evidence, EvidenceError, EvidenceKind, MAX_EVENTS, MAX_EVIDENCE_LEN, MAX_QUOTE_LEN,
    check_len, decode_hex, decode_quote_bytes,
};
use crate::eventlog::TdxEvent;

#[derive(Deserialize)]
struct GetQuoteResponse {
    quote: String,
    #[serde(default)]
    event_log: String,
    #[serde(default)]
    report_data: String,
    #[serde(default)]
    vm_config: String,
}

/// Decode a `GetQuote` response as JSON text.
pub fn decode_getquote_json(input: &[u8]) -> Result<Evidence, EvidenceError> {
    check_len("GetQuote response", input.len(), MAX_EVIDENCE_LEN)?;
    let resp: GetQuoteResponse = serde_json::from_slice(input).map_err(|e| {
        EvidenceError::invalid(format!(
            "not a dstack GetQuote response (expected JSON with quote, event_log, report_data, vm_config): {e}"
        ))
    })?;
    let quote = decode_quote_bytes(&decode_hex("GetQuote quote", &resp.quote, MAX_QUOTE_LEN)?)?;
    let event_log = if resp.event_log.trim().is_empty() {
        None
    } else {
        let tdx_events: Vec<TdxEvent> = serde_json::from_str(&resp.event_log).map_err(|e| {
            EvidenceError::invalid(format!("GetQuote event_log is not a dstack event log: {e}"))
        })?;
        check_len("GetQuote event_log (events)", tdx_events.len(), MAX_EVENTS)?;
        Some(EventLog {
            tdx_events,
            runtime_events: Vec::new(),
        })
    };
    let claimed_report_data = if resp.report_data.trim().is_empty() {
        None
    } else {
        Some(decode_hex("GetQuote report_data", &resp.report_data, 64)?)
    };
    Ok(Evidence {
        kind: EvidenceKind::Getquote,
        quote: Some(quote),
        event_log,
        claimed_report_data,
        vm_config: (!resp.vm_config.is_empty()).then_some(resp.vm_config),
        certificate: None,
    })
}

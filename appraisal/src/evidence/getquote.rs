//! dstack guest agent `GetQuote` responses: `{quote, event_log, report_data, vm_config}`,
//! and from dstack 0.6 `attestation` (hex of a versioned attestation), which is the only
//! evidence on platforms without a TDX quote (the 0.6 agent leaves `quote` and
//! `event_log` empty there; its simulator fills `attestation` on TDX too).

use serde::Deserialize;

use super::attestation::decode_attestation;
use super::{
    EventLog, Evidence, EvidenceError, EvidenceKind, MAX_EVENTS, MAX_EVIDENCE_LEN, MAX_QUOTE_LEN,
    check_len, decode_hex, decode_quote_bytes,
};
use crate::eventlog::TdxEvent;

#[derive(Deserialize)]
struct GetQuoteResponse {
    #[serde(default)]
    quote: String,
    #[serde(default)]
    event_log: String,
    #[serde(default)]
    report_data: String,
    #[serde(default)]
    vm_config: String,
    #[serde(default)]
    attestation: String,
}

/// Decode a `GetQuote` response as JSON text.
pub fn decode_getquote_json(input: &[u8]) -> Result<Evidence, EvidenceError> {
    check_len("GetQuote response", input.len(), MAX_EVIDENCE_LEN)?;
    let resp: GetQuoteResponse = serde_json::from_slice(input).map_err(|e| {
        EvidenceError::invalid(format!(
            "not a dstack GetQuote response (expected JSON with quote, event_log, report_data, vm_config or attestation): {e}"
        ))
    })?;
    let claimed_report_data = if resp.report_data.trim().is_empty() {
        None
    } else {
        Some(decode_hex("GetQuote report_data", &resp.report_data, 64)?)
    };
    if !resp.attestation.trim().is_empty() {
        return from_attestation(resp, claimed_report_data);
    }
    if resp.quote.trim().is_empty() {
        return Err(EvidenceError::invalid(
            "GetQuote response carries neither a quote nor an attestation",
        ));
    }
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
    Ok(Evidence {
        kind: EvidenceKind::Getquote,
        quote: Some(quote),
        event_log,
        claimed_report_data,
        vm_config: (!resp.vm_config.is_empty()).then_some(resp.vm_config),
        certificate: None,
        snp: None,
        gpu_evidence: None,
    })
}

/// The evidence is the versioned attestation; a quote or report data stated beside it
/// must be the attestation's own.
fn from_attestation(
    resp: GetQuoteResponse,
    claimed_report_data: Option<Vec<u8>>,
) -> Result<Evidence, EvidenceError> {
    let blob = decode_hex("GetQuote attestation", &resp.attestation, MAX_EVIDENCE_LEN)?;
    let att = decode_attestation(&blob)?;
    if !resp.quote.trim().is_empty()
        && decode_hex("GetQuote quote", &resp.quote, MAX_QUOTE_LEN)? != att.quote
    {
        return Err(EvidenceError::invalid(
            "GetQuote quote differs from the quote in its attestation",
        ));
    }
    let stated = claimed_report_data.map(|rd| {
        let mut padded = [0u8; 64];
        padded[..rd.len()].copy_from_slice(&rd);
        padded
    });
    if stated.is_some_and(|rd| rd != att.report_data) {
        return Err(EvidenceError::invalid(
            "GetQuote report_data differs from the report data in its attestation",
        ));
    }
    let mut evidence = att.into_evidence(EvidenceKind::Getquote)?;
    if evidence.vm_config.is_none() && !resp.vm_config.is_empty() {
        evidence.vm_config = Some(resp.vm_config);
    }
    Ok(evidence)
}

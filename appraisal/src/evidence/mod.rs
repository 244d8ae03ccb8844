//! Decoding of attestation evidence: parse, don't validate.
//!
//! Everything here turns untrusted bytes into typed values with bounded lengths and typed
//! errors. Nothing here decides whether evidence is trustworthy: signatures are checked by
//! a quote backend (`backend::QuoteBackend`) and acceptance is the policy's job.

mod attestation;
mod cert;
mod getquote;
mod quote;
pub(crate) mod reader;

use serde::Serialize;

pub use attestation::{
    AttestationFormat, DstackAttestation, decode_attestation, decode_attestation_text,
};
pub use cert::{CertInfo, decode_cert_chain, decode_certificate_der, oid};
pub use getquote::decode_getquote_json;
pub use quote::{
    Quote, TdReport, TeeType, decode_quote_bytes, decode_quote_text, earliest_not_after,
    pem_certificates,
};

use crate::eventlog::{RuntimeEvent, TdxEvent};

/// Upper bound for any single piece of evidence read from a file or the network
/// (dstack caps attestations at 10 MiB; a TDX quote is about 5 KiB).
pub const MAX_EVIDENCE_LEN: usize = 10 * 1024 * 1024;
/// Upper bound for a raw DCAP quote.
pub const MAX_QUOTE_LEN: usize = 256 * 1024;
/// Upper bound for the number of events in an event log.
pub const MAX_EVENTS: usize = 16 * 1024;
/// Upper bound for one dstack extension in a certificate (a stripped attestation is
/// about 10 KiB; a full event log a few tens of KiB).
pub const MAX_EXTENSION_LEN: usize = 1024 * 1024;
/// Upper bound for the number of certificates in a presented chain.
pub const MAX_CHAIN_LEN: usize = 8;

/// What kind of evidence was presented. Serialized in claims as `evidence.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    /// Nothing was presented (e.g. a TLS client without a certificate).
    None,
    /// A raw DCAP quote.
    Quote,
    /// A dstack RA-TLS certificate (chain).
    RaTlsCert,
    /// A dstack `VersionedAttestation` blob.
    DstackAttestation,
    /// A dstack guest agent `GetQuote` response.
    Getquote,
}

/// Decoded evidence, ready for appraisal.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The form it was presented in; becomes `evidence.kind` in the claims.
    pub kind: EvidenceKind,
    /// The quote, when the evidence carries one.
    pub quote: Option<Quote>,
    /// The boot and runtime event log, when the evidence carries one.
    pub event_log: Option<EventLog>,
    /// The report data the evidence claims (attestation blobs and GetQuote carry it
    /// beside the quote); compared with the quote's own report data.
    pub claimed_report_data: Option<Vec<u8>>,
    /// The VM configuration JSON, when the evidence carries one.
    pub vm_config: Option<String>,
    /// The presented certificate, for certificate evidence.
    pub certificate: Option<CertInfo>,
    /// SEV-SNP evidence (dstack attestation kind 3) in place of a quote.
    pub snp: Option<crate::snp::SnpEvidence>,
    /// GPU evidence given beside the attestation (nvattest's output, the guest agent's
    /// `GpuInfo`), compared with the `gpu-attestation` event's `evidence_sha256`. Unsigned:
    /// nothing here verifies it.
    pub gpu_evidence: Option<Vec<u8>>,
}

/// An event log as carried by evidence: TDX events (boot and, in older forms, runtime)
/// and/or dstack runtime events (RTMR3).
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    /// The TDX event log as dstack ships it: boot events (MRTD, RTMR0–2) and, in older
    /// forms, the runtime events on RTMR3 too. Empty when the evidence has none.
    pub tdx_events: Vec<TdxEvent>,
    /// dstack's explicit RTMR3 runtime events; when non-empty they take precedence over
    /// the RTMR3 entries of `tdx_events` (see [`Self::rtmr3_events`]).
    pub runtime_events: Vec<RuntimeEvent>,
}

impl EventLog {
    /// The RTMR3 runtime events: the explicit runtime list when present, otherwise the
    /// RTMR3 entries of the TDX log. Entries on RTMR3 that are not dstack runtime events
    /// cannot be replayed from name and payload, so they are reported as an error; so is
    /// a shipped preimage (dstack 0.6) that is not the one of the event's own name and
    /// payload.
    pub fn rtmr3_events(&self) -> Result<Vec<RuntimeEvent>, EvidenceError> {
        if !self.runtime_events.is_empty() {
            return Ok(self.runtime_events.clone());
        }
        self.tdx_events
            .iter()
            .filter(|e| e.imr == 3)
            .map(|e| {
                if e.event_type != crate::eventlog::DSTACK_RUNTIME_EVENT_TYPE {
                    return Err(EvidenceError::Invalid(format!(
                        "RTMR3 event {:?} has type {:#x}, not a dstack runtime event",
                        e.event, e.event_type
                    )));
                }
                let event = RuntimeEvent {
                    event: e.event.clone(),
                    payload: e.event_payload.clone(),
                    version: e.version,
                };
                if e.preimage.as_ref().is_some_and(|p| *p != event.preimage()) {
                    return Err(EvidenceError::Invalid(format!(
                        "RTMR3 event {:?} (version {}) ships a preimage that is not the one of its name and payload",
                        e.event, e.version
                    )));
                }
                Ok(event)
            })
            .collect()
    }
}

impl Evidence {
    /// Evidence for a peer that presented nothing.
    pub fn none() -> Self {
        Self {
            kind: EvidenceKind::None,
            quote: None,
            event_log: None,
            claimed_report_data: None,
            vm_config: None,
            certificate: None,
            snp: None,
            gpu_evidence: None,
        }
    }

    /// Evidence that is a bare quote.
    pub fn from_quote(quote: Quote) -> Self {
        Self {
            kind: EvidenceKind::Quote,
            quote: Some(quote),
            ..Self::none()
        }
    }
}

/// Why evidence could not be decoded. The message names the part that is wrong, so an
/// operator can act on it; peers only ever see a generic refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// The input is larger than the bound for its kind.
    #[error("{what} is {len} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The input, e.g. `quote` or `certificate chain (certificates)`.
        what: &'static str,
        /// Its size, in the unit of `limit` (bytes, unless `what` names another).
        len: usize,
        /// The bound, e.g. [`MAX_QUOTE_LEN`].
        limit: usize,
    },
    /// The input ended before a complete structure was read.
    #[error("truncated {what}: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// The structure being read, e.g. `quote header`.
        what: &'static str,
        /// Byte offset in the input where the read ran out.
        offset: usize,
        /// Bytes missing to complete the read.
        needed: usize,
    },
    /// Text that should be hexadecimal is not.
    #[error("invalid hex in {what}: {detail}")]
    Hex {
        /// The field the text was for, e.g. `quote` or `attestation`.
        what: &'static str,
        /// The hex decoder's error (bad digit and its position, odd length).
        detail: String,
    },
    /// A structure is malformed.
    #[error("{0}")]
    Invalid(String),
}

impl EvidenceError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
}

/// Check an input length against a bound before doing anything else with it.
pub(crate) fn check_len(what: &'static str, len: usize, limit: usize) -> Result<(), EvidenceError> {
    if len > limit {
        return Err(EvidenceError::TooLarge { what, len, limit });
    }
    Ok(())
}

/// Decode hex text, with or without a `0x` prefix, ignoring surrounding whitespace.
pub fn decode_hex(what: &'static str, text: &str, limit: usize) -> Result<Vec<u8>, EvidenceError> {
    let text = text.trim();
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    check_len(what, text.len() / 2, limit)?;
    let joined;
    let text = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        joined = text.split_ascii_whitespace().collect::<String>();
        joined.as_str()
    } else {
        text
    };
    hex::decode(text).map_err(|e| EvidenceError::Hex {
        what,
        detail: e.to_string(),
    })
}

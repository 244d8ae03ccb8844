//! What callers ask of the service: the request types, their bounds, and each verify
//! call turned into one [`Pending`] decision. Everything a caller sends is checked here,
//! named by field, before any evidence is decoded.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::prepared::{self, Extra};
use super::token;
use super::{DecisionService, ServiceDecision};
use crate::claims::ConnectionClaims;
use crate::evidence::{self, Evidence, EvidenceError, MAX_CHAIN_LEN, MAX_EVIDENCE_LEN};
use crate::manifest::{MAX_MANIFEST_LEN, Manifest};

/// A request the service cannot act on: the caller's mistake, named by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A field is missing, too large or out of range; gRPC `INVALID_ARGUMENT`.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field at fault, as the `.proto` names it (`purpose`, `chain`, …).
        field: &'static str,
        /// What is wrong with it, e.g. `"70 bytes, at most 64"`.
        message: String,
    },
}

/// Bounds on the request's text fields: they end up in claims, answers and the decision
/// log, so no caller may make those arbitrarily large.
const MAX_PURPOSE: usize = 64;
const MAX_REPORT_JSON: usize = 1 << 20;
const MAX_CONNECTION_FIELDS: [(&str, usize); 5] = [
    ("user", 256),
    ("database", 256),
    ("sni", 255),
    ("client_addr", 128),
    ("alpn", 255),
];
const MAX_EXPECTED_PINS: usize = 32;
const MAX_PIN_HEX: usize = 100;

pub(super) fn check_connection(c: &ConnectionClaims) -> Result<(), RequestError> {
    let values = [&c.user, &c.database, &c.sni, &c.client_addr, &c.alpn];
    for ((field, max), value) in MAX_CONNECTION_FIELDS.into_iter().zip(values) {
        if value.len() > max {
            return Err(invalid(
                field,
                format!("{} bytes, at most {max}", value.len()),
            ));
        }
    }
    for (field, list) in [
        ("expected_mrtds", &c.expected_mrtds),
        ("expected_compose_hashes", &c.expected_compose_hashes),
        ("expected_app_ids", &c.expected_app_ids),
    ] {
        if list.len() > MAX_EXPECTED_PINS {
            return Err(invalid(
                field,
                format!("{} entries, at most {MAX_EXPECTED_PINS}", list.len()),
            ));
        }
        if let Some((i, m)) = list.iter().enumerate().find(|(_, m)| m.len() > MAX_PIN_HEX) {
            return Err(invalid(
                field,
                format!(
                    "entry {i} is {} characters; a measurement is at most 96 hex digits",
                    m.len()
                ),
            ));
        }
    }
    Ok(())
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError::InvalidArgument {
        field,
        message: message.into(),
    }
}

/// A TLS peer to judge.
#[derive(Debug, Clone, Default)]
pub struct PeerRequest {
    /// The policy purpose to decide for (e.g. `sidecar`, `client`); must be one the
    /// loaded policies decide, at most 64 bytes.
    pub purpose: String,
    /// The peer's certificate chain, DER, leaf first (at most `MAX_CHAIN_LEN`); empty =
    /// no certificate presented (evidence kind `none`).
    pub chain: Vec<Vec<u8>>,
    /// What the connection asked for (user, database, SNI, address, ALPN, expected
    /// measurements), each bounded in length.
    pub connection: ConnectionClaims,
}

/// Evidence given to `VerifyQuote`.
#[derive(Debug, Clone)]
pub enum QuoteInput {
    /// A raw TDX quote, with the event log to replay when there is one.
    Quote {
        /// The quote bytes; not empty, at most `MAX_QUOTE_LEN`.
        quote: Vec<u8>,
        /// The guest agent's event log (JSON); empty or blank = none, so RTMR3 is not replayed.
        event_log: String,
    },
    /// A dstack `VersionedAttestation` blob, not empty, at most `MAX_EVIDENCE_LEN` bytes.
    Attestation(Vec<u8>),
}

/// What a caller asks of a decision's signed token.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// Echoed as the token's `eat_nonce` (8 to 64 bytes), so the caller can tell the token
    /// was made for its request.
    pub nonce: Option<Vec<u8>>,
    /// The caller's id for the decision (logged with it and echoed); `None` = the
    /// service makes one.
    pub decision_id: Option<String>,
    /// Sign the decision (when the service signs decisions); a nonce implies it.
    pub sign: bool,
}

impl TokenRequest {
    /// A request for `nonce` (empty = none), checked against EAR's bounds.
    pub fn with_nonce(nonce: Vec<u8>) -> Result<Self, RequestError> {
        if nonce.is_empty() {
            return Ok(Self::default());
        }
        if !token::NONCE_LEN.contains(&nonce.len()) {
            return Err(invalid(
                "nonce",
                format!(
                    "{} bytes; a nonce is {} to {} bytes",
                    nonce.len(),
                    token::NONCE_LEN.start(),
                    token::NONCE_LEN.end()
                ),
            ));
        }
        Ok(Self {
            nonce: Some(nonce),
            decision_id: None,
            sign: true,
        })
    }

    /// A request for a signed decision.
    pub fn signed() -> Self {
        Self {
            sign: true,
            ..Self::default()
        }
    }

    /// The same request, signed when `sign` (a nonce already asks for it).
    pub fn with_sign(mut self, sign: bool) -> Self {
        self.sign |= sign;
        self
    }

    /// The same request with the caller's decision id (empty = none): at most 64
    /// characters of `A-Z a-z 0-9 . _ : -`, so it is safe in any log line.
    pub fn with_decision_id(mut self, id: String) -> Result<Self, RequestError> {
        if id.is_empty() {
            return Ok(self);
        }
        let fits = id.len() <= MAX_DECISION_ID
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !fits {
            return Err(invalid(
                "decision_id",
                format!(
                    "at most {MAX_DECISION_ID} characters of A-Z a-z 0-9 . _ : - ({} bytes given)",
                    id.len()
                ),
            ));
        }
        self.decision_id = Some(id);
        Ok(self)
    }
}

/// Longest caller-given decision id.
pub const MAX_DECISION_ID: usize = 64;

/// A fresh decision id: 16 hex digits from the system's random source.
pub fn new_decision_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // The system random source failing leaves a zero id: logs lose correlation, nothing
    // else depends on it.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    hex::encode(bytes)
}

/// What the decision log and metrics need to know about the peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerSummary {
    /// The peer's address as the caller reported it (`client_addr`); empty = not given
    /// (or not a `VerifyPeer` call), left out of the log line.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub addr: String,
    /// The Postgres user the peer asked for; empty = not given.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// The database the peer asked for; empty = not given.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub database: String,
    /// The TLS server name the peer sent; empty = none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sni: String,
    /// The evidence kind (`ra_tls_cert`, `quote`, `none`, …), or `malformed` when it
    /// did not decode.
    pub evidence: String,
    /// The TEE the evidence comes from (`tdx`, `sev-snp`); `None` without any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tee: Option<&'static str>,
    /// The presented certificate's subject; `None` without a certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The quote's MRTD (hex); `None` without a quote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mrtd: Option<String>,
    /// The attested app id (hex); `None` when not attested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    /// The attested compose hash (hex); `None` when not attested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose_hash: Option<String>,
    /// The platform's TCB standing (`dcap`, verified quotes): what `teesql-verifier tcb
    /// report --decision-log` reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcb: Option<super::prepared::TcbRecord>,
}

/// One decision for the service to make.
pub(super) struct Pending<D, X> {
    pub(super) purpose: String,
    /// The appraisal cache key: a hash of everything the appraisal depends on.
    pub(super) key: [u8; 32],
    /// Decodes the evidence; runs only when the appraisal is neither cached nor under way.
    pub(super) decode: D,
    pub(super) expected_report_data: Option<Vec<u8>>,
    pub(super) connection: Option<ConnectionClaims>,
    /// Claims beside the appraisal (manifest, report), made from its facts.
    pub(super) extra: X,
    pub(super) summary: PeerSummary,
    /// What the caller asked of the decision's token.
    pub(super) token: TokenRequest,
}

impl DecisionService {
    /// Judge a TLS peer.
    pub async fn verify_peer(&self, req: PeerRequest) -> Result<ServiceDecision, RequestError> {
        self.verify_peer_with(req, TokenRequest::default()).await
    }

    /// [`Self::verify_peer`], with what the caller asks of the token.
    pub async fn verify_peer_with(
        &self,
        req: PeerRequest,
        token: TokenRequest,
    ) -> Result<ServiceDecision, RequestError> {
        let purpose = self.check_purpose(&req.purpose)?;
        check_connection(&req.connection)?;
        if req.chain.len() > MAX_CHAIN_LEN {
            return Err(invalid(
                "chain",
                format!("{} certificates, at most {MAX_CHAIN_LEN}", req.chain.len()),
            ));
        }
        if let Some((i, c)) = req
            .chain
            .iter()
            .enumerate()
            .find(|(_, c)| c.len() > evidence::MAX_EXTENSION_LEN * 2)
        {
            return Err(invalid(
                "chain",
                format!("certificate {i} is {} bytes, too large", c.len()),
            ));
        }
        let key = cache_key("peer", &req.chain, None);
        let chain = req.chain;
        let connection = req.connection;
        let summary = PeerSummary {
            addr: connection.client_addr.clone(),
            user: connection.user.clone(),
            database: connection.database.clone(),
            sni: connection.sni.clone(),
            ..PeerSummary::default()
        };
        self.decide(Pending {
            purpose,
            key,
            decode: move || evidence::decode_certificate_der(&chain),
            expected_report_data: None,
            connection: Some(connection),
            extra: |_: &prepared::Facts| Extra::default(),
            summary,
            token,
        })
        .await
    }

    /// Judge a quote or attestation.
    pub async fn verify_quote(
        &self,
        purpose: &str,
        input: QuoteInput,
        expected_report_data: Option<Vec<u8>>,
    ) -> Result<ServiceDecision, RequestError> {
        self.verify_quote_with(
            purpose,
            input,
            expected_report_data,
            TokenRequest::default(),
        )
        .await
    }

    /// [`Self::verify_quote`], with what the caller asks of the token.
    pub async fn verify_quote_with(
        &self,
        purpose: &str,
        input: QuoteInput,
        expected_report_data: Option<Vec<u8>>,
        token: TokenRequest,
    ) -> Result<ServiceDecision, RequestError> {
        let purpose = self.check_purpose(if purpose.is_empty() { "quote" } else { purpose })?;
        if let Some(rd) = &expected_report_data
            && rd.len() > 64
        {
            return Err(invalid(
                "expected_report_data",
                format!("{} bytes, at most 64", rd.len()),
            ));
        }
        let (key, decode): (
            _,
            Box<dyn FnOnce() -> Result<Evidence, EvidenceError> + Send>,
        ) = match input {
            QuoteInput::Quote { quote, event_log } => {
                if quote.is_empty() {
                    return Err(invalid("quote", "empty"));
                }
                if quote.len() > evidence::MAX_QUOTE_LEN {
                    return Err(invalid(
                        "quote",
                        format!("{} bytes, too large", quote.len()),
                    ));
                }
                if event_log.len() > MAX_EVIDENCE_LEN {
                    return Err(invalid("event_log", "too large"));
                }
                let key = cache_key(
                    "quote",
                    &[quote.clone(), event_log.as_bytes().to_vec()],
                    expected_report_data.as_deref(),
                );
                (key, Box::new(move || quote_evidence(&quote, &event_log)))
            }
            QuoteInput::Attestation(blob) => {
                if blob.is_empty() {
                    return Err(invalid("attestation", "empty"));
                }
                if blob.len() > MAX_EVIDENCE_LEN {
                    return Err(invalid(
                        "attestation",
                        format!("{} bytes, too large", blob.len()),
                    ));
                }
                let key = cache_key(
                    "attestation",
                    std::slice::from_ref(&blob),
                    expected_report_data.as_deref(),
                );
                (
                    key,
                    Box::new(move || {
                        evidence::decode_attestation(&blob)?
                            .into_evidence(evidence::EvidenceKind::DstackAttestation)
                    }),
                )
            }
        };
        self.decide(Pending {
            purpose,
            key,
            decode,
            expected_report_data,
            connection: None,
            extra: |_: &prepared::Facts| Extra::default(),
            summary: PeerSummary::default(),
            token,
        })
        .await
    }

    /// Judge a signed leader manifest, with the leader's certificate when given.
    pub async fn verify_manifest(
        &self,
        txt: &str,
        leader_chain: Vec<Vec<u8>>,
        expected_signers: Vec<String>,
    ) -> Result<ServiceDecision, RequestError> {
        self.verify_manifest_with(txt, leader_chain, expected_signers, TokenRequest::default())
            .await
    }

    /// [`Self::verify_manifest`], with what the caller asks of the token.
    pub async fn verify_manifest_with(
        &self,
        txt: &str,
        leader_chain: Vec<Vec<u8>>,
        expected_signers: Vec<String>,
        token: TokenRequest,
    ) -> Result<ServiceDecision, RequestError> {
        let purpose = self.check_purpose("manifest")?;
        if txt.trim().is_empty() {
            return Err(invalid("manifest", "required"));
        }
        if txt.len() > MAX_MANIFEST_LEN {
            return Err(invalid(
                "manifest",
                format!("{} bytes, at most {MAX_MANIFEST_LEN}", txt.len()),
            ));
        }
        if leader_chain.len() > MAX_CHAIN_LEN {
            return Err(invalid(
                "leader_chain",
                format!("at most {MAX_CHAIN_LEN} certificates"),
            ));
        }
        if expected_signers.len() > 64 {
            return Err(invalid("expected_signers", "at most 64"));
        }
        let mut manifest = Manifest::claims(txt);
        manifest.expected_signers = expected_signers
            .iter()
            .map(|s| s.trim().to_ascii_lowercase())
            .collect();
        // Rollback protection per (cluster, signer): the epoch this signer's manifests of
        // the cluster have reached.
        let signed = manifest
            .signer
            .clone()
            .filter(|_| manifest.error.is_none())
            .map(|signer| (manifest.cluster.clone(), signer));
        manifest.highest_epoch_seen = signed
            .as_ref()
            .and_then(|(cluster, signer)| self.epochs.highest(cluster, signer));
        let epoch = manifest.epoch;
        let key = cache_key("peer", &leader_chain, None);
        let decision = self
            .decide(Pending {
                purpose,
                key,
                decode: move || evidence::decode_certificate_der(&leader_chain),
                expected_report_data: None,
                connection: None,
                extra: move |_: &prepared::Facts| Extra {
                    manifest: Some(manifest),
                    report: None,
                },
                summary: PeerSummary::default(),
                token,
            })
            .await?;
        // Only an accepted manifest of a signer the policy data pins moves the epoch
        // forward: one accepted on a caller's own signer cannot block genuine ones.
        if let (true, Some((cluster, signer))) = (decision.allow, signed)
            && self.policies().pins_manifest_signer(&signer)
        {
            self.epochs.saw(&cluster, &signer, epoch, self.clock.now());
        }
        Ok(decision)
    }

    /// Judge a sidecar `/attestation` report.
    pub async fn verify_report(&self, json: &str) -> Result<ServiceDecision, RequestError> {
        self.verify_report_with(json, TokenRequest::default()).await
    }

    /// [`Self::verify_report`], with what the caller asks of the token.
    pub async fn verify_report_with(
        &self,
        json: &str,
        token: TokenRequest,
    ) -> Result<ServiceDecision, RequestError> {
        let purpose = self.check_purpose("report")?;
        if json.trim().is_empty() {
            return Err(invalid("report_json", "required"));
        }
        if json.len() > MAX_REPORT_JSON {
            return Err(invalid(
                "report_json",
                format!("{} bytes, at most {MAX_REPORT_JSON}", json.len()),
            ));
        }
        let report =
            crate::report::parse(json).map_err(|e| invalid("report_json", e.to_string()))?;
        let expected =
            crate::report::report_data(&report.postgres_state, report.timestamp).to_vec();
        // Every input of `report.evidence()` is in the key: a later report with the same
        // quote but another event log or VM configuration is appraised on its own.
        let key = cache_key(
            "report",
            &[
                report.quote.as_bytes().to_vec(),
                report.event_log.as_bytes().to_vec(),
                report.vm_config.as_bytes().to_vec(),
            ],
            Some(&expected),
        );
        let for_decode = report.clone();
        self.decide(Pending {
            purpose,
            key,
            decode: move || crate::report::evidence(&for_decode),
            expected_report_data: Some(expected),
            connection: None,
            extra: move |facts: &prepared::Facts| Extra {
                manifest: None,
                report: Some(crate::report::claims(&report, &facts.measured)),
            },
            summary: PeerSummary::default(),
            token,
        })
        .await
    }

    /// Evaluate a purpose on caller-supplied claims (dry run: nothing verified or logged).
    pub fn evaluate(
        &self,
        purpose: &str,
        claims_json: &str,
    ) -> Result<ServiceDecision, RequestError> {
        let purpose = self.check_purpose(purpose)?;
        let input: serde_json::Value = serde_json::from_str(claims_json)
            .map_err(|e| invalid("claims_json", format!("not JSON: {e}")))?;
        if !input.is_object() {
            return Err(invalid("claims_json", "must be a JSON object"));
        }
        let policies = self.policies.load_full();
        let verdict = policies.decide_value(&purpose, regorus::Value::from(input));
        Ok(ServiceDecision::from_verdict(
            verdict,
            claims_json.to_string(),
            false,
            0,
        ))
    }

    fn check_purpose(&self, purpose: &str) -> Result<String, RequestError> {
        if purpose.is_empty() {
            return Err(invalid(
                "purpose",
                "required (e.g. \"sidecar\" or \"client\")",
            ));
        }
        if purpose.len() > MAX_PURPOSE {
            return Err(invalid(
                "purpose",
                format!("{} bytes, at most {MAX_PURPOSE}", purpose.len()),
            ));
        }
        let policies = self.policies.load_full();
        let known = policies.purposes();
        if !known.iter().any(|p| p == purpose) {
            return Err(invalid(
                "purpose",
                format!(
                    "no policy for {purpose:?}; the loaded policies decide: {}",
                    known.join(", ")
                ),
            ));
        }
        Ok(purpose.to_string())
    }
}

/// A quote with an optional GetQuote-style JSON event log.
fn quote_evidence(quote: &[u8], event_log: &str) -> Result<Evidence, EvidenceError> {
    let mut ev = Evidence::from_quote(evidence::decode_quote_bytes(quote)?);
    if !event_log.trim().is_empty() {
        ev.event_log = Some(evidence::EventLog {
            tdx_events: serde_json::from_str(event_log).map_err(|e| {
                EvidenceError::Invalid(format!("event_log is not a dstack event log: {e}"))
            })?,
            runtime_events: Vec::new(),
        });
    }
    Ok(ev)
}

/// SHA-256 over a tag, each part length-prefixed, and the expected report data.
pub(super) fn cache_key(tag: &str, parts: &[Vec<u8>], expected: Option<&[u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tag.as_bytes());
    h.update((parts.len() as u64).to_le_bytes());
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    match expected {
        Some(rd) => {
            h.update([1]);
            h.update((rd.len() as u64).to_le_bytes());
            h.update(rd);
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

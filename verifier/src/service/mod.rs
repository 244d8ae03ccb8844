//! The verifier service: decisions with an appraisal cache, hot-swappable policies, a
//! decision log and metrics. Transport-independent; `grpc` puts it on the wire.
//!
//! Every decision runs the current policy on claims. The expensive part, verifying the
//! evidence, is cached by the hash of the evidence and never outlives the collateral or
//! certificate it rests on, so a reloaded policy applies to the very next decision.

mod cache;
pub mod config;
pub mod ear;
pub mod epochs;
pub mod grpc;
pub mod identity;
pub mod log;
pub mod metrics;
mod prepared;
pub mod reload;
pub mod server;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::Serialize;
use sha2::{Digest, Sha256};

use cache::AppraisalCache;
pub use log::{DecisionLog, LogTarget};
pub use metrics::Metrics;

use crate::Clock;
use crate::appraise::Appraiser;
use crate::claims::{AppraisedEvidence, ConnectionClaims};
use crate::evidence::{self, Evidence, EvidenceError, MAX_CHAIN_LEN, MAX_EVIDENCE_LEN};
use crate::manifest::{MAX_MANIFEST_LEN, Manifest};
use crate::policy::{Grants, PolicyError, PolicySet, Reason, reason_codes};
use prepared::{Extra, Prepared};

/// A decision as the service returns it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceDecision {
    pub allow: bool,
    pub reasons: Vec<Reason>,
    pub policy_id: String,
    pub policy_hash: String,
    /// The claims the policy evaluated, JSON.
    pub claims_json: String,
    /// The evidence's appraisal came from the cache.
    pub cached: bool,
    /// Unix seconds until which the facts hold; 0 = unknown.
    pub valid_until: u64,
    /// The decision signed by the verifier (compact JWS), when it signs decisions.
    pub token: String,
    /// What the policy grants (allowed decisions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
}

/// A request the service cannot act on: the caller's mistake, named by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{field}: {message}")]
    InvalidArgument {
        field: &'static str,
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

fn check_connection(c: &ConnectionClaims) -> Result<(), RequestError> {
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

fn invalid(field: &'static str, message: impl Into<String>) -> RequestError {
    RequestError::InvalidArgument {
        field,
        message: message.into(),
    }
}

/// A TLS peer to judge.
#[derive(Debug, Clone, Default)]
pub struct PeerRequest {
    pub purpose: String,
    pub chain: Vec<Vec<u8>>,
    pub connection: ConnectionClaims,
}

/// Evidence given to `VerifyQuote`.
#[derive(Debug, Clone)]
pub enum QuoteInput {
    Quote { quote: Vec<u8>, event_log: String },
    Attestation(Vec<u8>),
}

/// How the service is tuned.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Bytes for cached appraisals of verified quotes; other evidence gets a sixteenth of
    /// it (at least 1 MiB).
    pub cache_max_bytes: u64,
    /// Longest an appraisal is kept, whatever its collateral says.
    pub cache_max_ttl: Duration,
    pub clock: Clock,
    /// Where accepted manifest epochs are kept across restarts; `None` = in memory.
    pub manifest_epochs_file: Option<std::path::PathBuf>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            cache_max_bytes: 64 << 20,
            cache_max_ttl: Duration::from_secs(3600),
            clock: Clock::System,
            manifest_epochs_file: None,
        }
    }
}

/// The decision engine behind the gRPC API.
#[derive(Debug)]
pub struct DecisionService {
    appraiser: Appraiser,
    policies: ArcSwap<PolicySet>,
    cache: AppraisalCache,
    clock: Clock,
    log: DecisionLog,
    metrics: Arc<Metrics>,
    /// One reload at a time (file watcher, SIGHUP and the RPC may fire together), so an
    /// older load can never be stored over a newer one.
    reloading: tokio::sync::Mutex<()>,
    /// The highest manifest epoch accepted per cluster, against rollback.
    epochs: epochs::Epochs,
    /// Appraisals under way, by cache key: a burst of handshakes with the same fresh
    /// certificate verifies its quote once.
    appraising: cache::SingleFlight<Appraisal>,
    /// Signs every decision answered, when set.
    signer: Option<Arc<token::DecisionSigner>>,
}

/// An appraisal as the single-flight shares it: prepared claims, or why the evidence
/// cannot be decoded.
type Appraisal = Result<Arc<Prepared>, String>;

/// One decision for the service to make.
struct Pending<D, X> {
    purpose: String,
    /// The appraisal cache key: a hash of everything the appraisal depends on.
    key: [u8; 32],
    /// Decodes the evidence; runs only when the appraisal is neither cached nor under way.
    decode: D,
    expected_report_data: Option<Vec<u8>>,
    connection: Option<ConnectionClaims>,
    /// Claims beside the appraisal (manifest, report), made from its facts.
    extra: X,
    summary: PeerSummary,
    /// What the caller asked of the decision's token.
    token: TokenRequest,
}

/// What a caller asks of a decision's signed token.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// Echoed as the token's `eat_nonce` (8 to 64 bytes), so the caller can tell the token
    /// was made for its request.
    pub nonce: Option<Vec<u8>>,
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
        Ok(Self { nonce: Some(nonce) })
    }
}

/// What the decision log and metrics need to know about the peer.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerSummary {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub addr: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub database: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sni: String,
    pub evidence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mrtd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
}

impl DecisionService {
    pub fn new(
        appraiser: Appraiser,
        policies: PolicySet,
        options: &ServiceOptions,
        log: DecisionLog,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.policy_loaded(policies.hash());
        Self {
            appraiser,
            policies: ArcSwap::from_pointee(policies),
            cache: AppraisalCache::new(
                cache::Budget {
                    verified_bytes: options.cache_max_bytes,
                    unverified_bytes: (options.cache_max_bytes / 16).max(1 << 20),
                    max_ttl: options.cache_max_ttl,
                },
                options.clock,
            ),
            clock: options.clock,
            log,
            metrics,
            reloading: tokio::sync::Mutex::new(()),
            appraising: cache::SingleFlight::default(),
            // The file was read once when the settings were checked: a failure here is a
            // race with whoever changed it since, and rollback protection then starts
            // from memory.
            epochs: epochs::Epochs::open(options.manifest_epochs_file.clone()).unwrap_or_else(
                |e| {
                    tracing::error!(error = %e, "cannot read the manifest epochs; starting without them");
                    epochs::Epochs::default()
                },
            ),
            signer: None,
        }
    }

    /// Sign every decision with `signer`.
    pub fn with_signer(mut self, signer: Arc<token::DecisionSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The decision signer, for `/.well-known/jwks.json`.
    pub fn signer(&self) -> Option<&Arc<token::DecisionSigner>> {
        self.signer.as_ref()
    }

    /// The token for `d`, made from `facts` (empty when decisions are not signed).
    fn sign(
        &self,
        purpose: &str,
        d: &ServiceDecision,
        key: &[u8; 32],
        facts: &prepared::Facts,
        token: &TokenRequest,
        now: u64,
    ) -> String {
        let Some(signer) = &self.signer else {
            return String::new();
        };
        let identity = facts.measured.identity.as_ref();
        let facts = token::TokenFacts {
            purpose,
            allow: d.allow,
            reasons: d.reasons.iter().map(|r| r.code.as_str()).collect(),
            policy_id: &d.policy_id,
            policy_hash: &d.policy_hash,
            evidence_sha256: *key,
            valid_until: d.valid_until,
            mrtd: facts.mrtd.as_deref(),
            tcb_status: facts.tcb_status.as_deref(),
            backend: facts.backend.as_deref(),
            root: facts.root.as_deref(),
            verified: facts.verified,
            app_id: facts.app_id.as_deref(),
            compose_hash: identity.and_then(|i| i[1].as_deref()),
            grants: d.grants.as_ref(),
            nonce: token.nonce.as_deref(),
            has_quote: facts.has_quote,
            debug: facts.debug,
            rtmr3_replayed: facts.rtmr3_replayed,
        };
        match signer.sign(&facts, now) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a decision; answering it unsigned");
                String::new()
            }
        }
    }

    /// The policy set serving now.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Bytes the appraisal cache holds now: (verified quotes, everything else).
    pub fn cache_bytes(&self) -> (u64, u64) {
        self.cache.weighted_bytes()
    }

    /// Load the policy set again from its directories and swap it in atomically. A set
    /// that fails to load or compile is rejected and the current one keeps serving.
    pub async fn reload(&self) -> Result<(String, bool), PolicyError> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.policies.load_full();
        let dirs = current.dirs().to_vec();
        let limit = current.eval_limit();
        let loaded = tokio::task::spawn_blocking(move || PolicySet::load(&dirs, limit))
            .await
            .map_err(|e| PolicyError::Load {
                path: "(reload)".into(),
                detail: e.to_string(),
            })?;
        // A set that no longer decides a purpose the serving set decides would turn every
        // such request into an error: refuse it like a set that does not compile.
        let loaded = loaded.and_then(|set| {
            let keeps = set.purposes();
            let dropped: Vec<String> = current
                .purposes()
                .into_iter()
                .filter(|p| !keeps.contains(p))
                .collect();
            if dropped.is_empty() {
                Ok(set)
            } else {
                Err(PolicyError::Load {
                    path: current
                        .dirs()
                        .first()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                    detail: format!(
                        "the new set no longer decides {} (package teesql.<purpose> missing); restart to remove a purpose",
                        dropped.join(", ")
                    ),
                })
            }
        });
        match loaded {
            Ok(set) => {
                let hash = set.hash().to_string();
                let changed = hash != current.hash();
                if changed {
                    self.policies.store(Arc::new(set));
                    tracing::info!(policy.hash = %hash, previous = %current.hash(), "policies reloaded");
                } else {
                    tracing::debug!(policy.hash = %hash, "policies unchanged");
                }
                self.metrics.policy_reload(true);
                self.metrics.policy_loaded(&hash);
                Ok((hash, changed))
            }
            Err(e) => {
                tracing::error!(error = %e, serving = %current.hash(), "policy reload rejected; the current policies keep serving");
                self.metrics.policy_reload(false);
                Err(e)
            }
        }
    }

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
        let (allow, reasons, policy_id, grants) = match policies.evaluate(&purpose, &input) {
            Ok(v) => (v.allow, v.reasons, v.policy_id, v.grants),
            Err(e) => (
                false,
                vec![policy_error(&e)],
                format!("teesql.{purpose}"),
                None,
            ),
        };
        Ok(ServiceDecision {
            allow,
            reasons,
            policy_id,
            policy_hash: policies.hash().to_string(),
            claims_json: claims_json.to_string(),
            cached: false,
            valid_until: 0,
            token: String::new(),
            grants,
        })
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

    async fn decide<D, X>(&self, req: Pending<D, X>) -> Result<ServiceDecision, RequestError>
    where
        D: FnOnce() -> Result<Evidence, EvidenceError>,
        X: FnOnce(&prepared::Facts) -> Extra,
    {
        let Pending {
            purpose,
            key,
            decode,
            expected_report_data,
            connection,
            extra,
            mut summary,
            token,
        } = req;
        let purpose = purpose.as_str();
        let started = Instant::now();
        let now = self.clock.now();
        let cached = self.cache.get(&key);
        self.metrics.appraisal_cache(cached.is_some());
        let (prepared, cached) = match cached {
            Some(hit) => (hit, true),
            None => {
                let appraise = async {
                    let evidence = decode().map_err(|e| e.to_string())?;
                    let appraised = self
                        .appraiser
                        .appraise(&evidence, now, expected_report_data.as_deref())
                        .await;
                    let until = valid_until(&appraised);
                    let prepared = Arc::new(Prepared::new(appraised, until));
                    // Failures that a later attempt could cure are not cached.
                    if !prepared.facts.transient {
                        self.cache.insert(key, prepared.clone(), until);
                        let (verified, unverified) = self.cache.weighted_bytes_estimate();
                        self.metrics.appraisal_cache_bytes(verified, unverified);
                    }
                    Ok(prepared)
                };
                match self.appraising.run(key, appraise).await.0 {
                    Ok(prepared) => (prepared, false),
                    Err(e) => {
                        summary.evidence = "malformed".into();
                        let reason = Reason {
                            code: reason_codes::EVIDENCE_MALFORMED.into(),
                            message: format!("the evidence cannot be decoded: {e}"),
                        };
                        let policies = self.policies.load_full();
                        let mut decision = ServiceDecision {
                            allow: false,
                            reasons: vec![reason],
                            policy_id: format!("teesql.{purpose}"),
                            policy_hash: policies.hash().to_string(),
                            claims_json: "null".into(),
                            cached: false,
                            valid_until: 0,
                            token: String::new(),
                            grants: None,
                        };
                        decision.token = self.sign(
                            purpose,
                            &decision,
                            &key,
                            &prepared::Facts::default(),
                            &token,
                            now,
                        );
                        self.finish(purpose, &decision, &summary, started);
                        return Ok(decision);
                    }
                }
            }
        };
        let facts = &prepared.facts;
        summary.evidence = facts.kind.clone();
        summary.subject = facts.subject.clone();
        summary.mrtd = facts.mrtd.clone();
        summary.app_id = facts.app_id.clone();
        let valid_until = facts.valid_until;
        let extra = extra(facts);
        let (input, claims_json) = prepared.input(purpose, now, connection.as_ref(), &extra);
        let policies = self.policies.load_full();
        let (allow, reasons, policy_id, grants) = match policies.evaluate_value(purpose, input) {
            Ok(v) => (v.allow, v.reasons, v.policy_id, v.grants),
            Err(e) => {
                tracing::error!(purpose, error = %e, "policy evaluation failed; denying");
                (
                    false,
                    vec![policy_error(&e)],
                    format!("teesql.{purpose}"),
                    None,
                )
            }
        };
        let mut decision = ServiceDecision {
            allow,
            reasons,
            policy_id,
            policy_hash: policies.hash().to_string(),
            claims_json,
            cached,
            valid_until,
            token: String::new(),
            grants,
        };
        decision.token = self.sign(purpose, &decision, &key, facts, &token, now);
        self.finish(purpose, &decision, &summary, started);
        Ok(decision)
    }

    fn finish(&self, purpose: &str, d: &ServiceDecision, peer: &PeerSummary, started: Instant) {
        let latency = started.elapsed();
        self.metrics.decision(purpose, d.allow, latency);
        let logged = self.log.record(log::DecisionRecord {
            time: self.clock.now(),
            purpose: purpose.to_string(),
            peer: peer.clone(),
            allow: d.allow,
            reasons: d.reasons.clone(),
            grants: d.grants.clone(),
            policy_hash: d.policy_hash.clone(),
            cached: d.cached,
            latency_us: latency.as_micros() as u64,
        });
        if !logged {
            self.metrics.decision_log_dropped();
        }
    }

    /// Write out every decision log line queued so far (at shutdown, after the last
    /// request). Blocks until the writer is done.
    pub fn close_log(&self) {
        self.log.close();
    }
}

fn policy_error(e: &PolicyError) -> Reason {
    Reason {
        code: reason_codes::POLICY_ERROR.into(),
        message: format!("the policy could not decide: {e}"),
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
fn cache_key(tag: &str, parts: &[Vec<u8>], expected: Option<&[u8]>) -> [u8; 32] {
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

/// Until when the facts of an appraisal hold: the earliest of its collateral's next
/// update and its certificate's expiry; 0 when neither applies.
fn valid_until(a: &AppraisedEvidence) -> u64 {
    let collateral = a
        .tdx
        .as_ref()
        .and_then(|t| t.collateral)
        .map(|c| c.not_after);
    let cert = a.evidence.cert.as_ref().map(|c| c.not_after.max(0) as u64);
    match (collateral, cert) {
        (Some(a), Some(b)) => a.min(b),
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => 0,
    }
}

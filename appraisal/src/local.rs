//! Appraisal in the caller's own process, with no verifier service to ask: the `verify`
//! command, and a client checking the verifier itself (whose answers it cannot use to
//! judge the verifier). [`VerifierIdentity`] is that check: the sidecar and `forward`
//! appraise the verifier's RA-TLS certificate under the policy purpose `verifier` before
//! they send it a request, and `token verify --attested` appraises the quote that binds a
//! decision-signing key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use crate::backend::dcap::TrustRoot;
use crate::backend::{BackendConfig, BackendKind};
use crate::collateral::{CollateralConfig, INTEL_PCS_URL};
use crate::evidence::{self, Evidence};
use crate::policy::{DEFAULT_EVAL_LIMIT, PolicySet};
use crate::{Appraiser, Clock, Decision, DecisionRequest};

/// The policy purpose that judges a verifier's own identity.
pub const VERIFIER_PURPOSE: &str = "verifier";

/// What a local appraisal is built from.
#[derive(Debug, Clone, Default)]
pub struct LocalSettings {
    /// Policy profiles (repeat to merge).
    pub policy_dirs: Vec<PathBuf>,
    /// A root CA (DER or PEM) instead of Intel's.
    pub trust_root: Option<PathBuf>,
    /// The development root (teesql-dev's seeded PKI; `tdx.root = "dev"`).
    pub dev_trust_root: Option<PathBuf>,
    /// PCCS or Intel PCS [default: Intel PCS]; `None` with `offline`.
    pub pccs_url: Option<String>,
    /// Collateral JSON files, used before the PCCS.
    pub collateral_dir: Option<PathBuf>,
    /// Never fetch collateral.
    pub offline: bool,
    /// Time limit of one collateral fetch [default: 10 s].
    pub fetch_timeout: Option<Duration>,
}

/// Why an appraisal in process could not be set up, or did not accept what it judged.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The policy profile does not load.
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The trust root or the backend cannot be built from the settings.
    #[error(transparent)]
    Setting(#[from] crate::backend::BackendError),
    /// The profile has no `verifier` purpose to judge a verifier by.
    #[error(
        "policy {dirs}: no purpose \"verifier\" (policies/teesql/verifier.rego) to judge the verifier by"
    )]
    NoVerifierPurpose {
        /// The profile directories, comma-separated.
        dirs: String,
    },
    /// The evidence does not decode.
    #[error("evidence_malformed: {0}")]
    Evidence(#[from] crate::evidence::EvidenceError),
    /// The appraisal could not run.
    #[error("{0}")]
    Appraisal(String),
    /// The token or its JWKS.
    #[error(transparent)]
    Token(#[from] crate::token::TokenError),
    /// The token's key carries no quote.
    #[error("key {kid:?} carries no quote (its verifier does not serve with --ra-tls)")]
    NoKeyQuote {
        /// The key's id.
        kid: String,
    },
    /// The policy refused: `code: message; …` of its reasons.
    #[error("{0}")]
    Refused(String),
}

/// Policies and a DCAP backend, ready to decide.
#[derive(Debug, Clone)]
pub struct LocalAppraiser {
    policies: Arc<PolicySet>,
    appraiser: Appraiser,
}

impl LocalAppraiser {
    /// Load the policies and build a DCAP-only backend (platform cache on, at most 16
    /// collateral sets cached); a bad policy, root or collateral setting is an error now.
    pub fn new(s: &LocalSettings) -> Result<Self, LocalError> {
        let policies = PolicySet::load(&s.policy_dirs, DEFAULT_EVAL_LIMIT)?;
        let pccs_url = s
            .pccs_url
            .clone()
            .unwrap_or_else(|| INTEL_PCS_URL.to_string());
        let backend = BackendConfig {
            chain: vec![BackendKind::Dcap],
            ita: None,
            platform_cache_bytes: crate::backend::platform::DEFAULT_PLATFORM_CACHE_BYTES,
            trust_root: TrustRoot::choose(s.trust_root.as_deref(), s.dev_trust_root.as_deref())
                .map_err(LocalError::Setting)?,
            collateral: CollateralConfig {
                dir: s.collateral_dir.clone(),
                pccs_url: (!s.offline).then_some(pccs_url),
                fetch_timeout: s.fetch_timeout.unwrap_or(Duration::from_secs(10)),
                cache_capacity: 16,
                clock: Clock::System,
                ..CollateralConfig::default()
            },
        }
        .build()
        .map_err(LocalError::Setting)?;
        Ok(Self {
            policies: Arc::new(policies),
            appraiser: backend.appraiser,
        })
    }

    /// The policy set (its hash goes into what a caller logs).
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// Appraise `evidence` and decide with `purpose`, as of now.
    pub async fn decide(
        &self,
        evidence: &Evidence,
        purpose: &str,
        expected_report_data: Option<&[u8]>,
    ) -> Result<Decision, LocalError> {
        let request = DecisionRequest {
            expected_report_data,
            ..DecisionRequest::new(evidence, purpose, Clock::System.now())
        };
        self.appraiser
            .decide(&self.policies, request)
            .await
            .map_err(|e| LocalError::Appraisal(e.to_string()))
    }
}

/// `code: message; …`, or `not_allowed` when a denial gives no reason.
pub fn refusal(decision: &Decision) -> String {
    if decision.reasons.is_empty() {
        return "not_allowed: the policy did not allow it".into();
    }
    let parts: Vec<String> = decision
        .reasons
        .iter()
        .map(|r| format!("{}: {}", r.code, r.message))
        .collect();
    parts.join("; ")
}

/// Log the warnings an allowed decision carries (a TCB grace, Intel's next TCB set).
fn warn_of(decision: &Decision) {
    for r in &decision.reasons {
        tracing::warn!(code = %r.code, message = %r.message, "the verifier's evidence was allowed with a warning");
    }
}

/// The compose hash and app id a decision's claims attest, for logs.
pub fn identity_summary(decision: &Decision) -> String {
    let app = &decision.claims["app"];
    let field = |k: &str| app[k].as_str().unwrap_or("?").to_string();
    format!(
        "compose_hash {} app_id {} (policy {})",
        field("compose_hash"),
        field("app_id"),
        decision.policy_hash
    )
}

/// A client's check of the verifier it talks to: the verifier's RA-TLS certificate,
/// appraised here under the purpose `verifier` (pins in `data.teesql.verifier_pins`).
#[derive(Debug, Clone)]
pub struct VerifierIdentity {
    local: LocalAppraiser,
}

impl VerifierIdentity {
    /// Refuses a policy set without the `verifier` purpose: with nothing to judge the
    /// verifier by, no verifier could be trusted.
    pub fn new(s: &LocalSettings) -> Result<Self, LocalError> {
        let local = LocalAppraiser::new(s)?;
        if !local
            .policies()
            .purposes()
            .iter()
            .any(|p| p == VERIFIER_PURPOSE)
        {
            return Err(LocalError::NoVerifierPurpose {
                dirs: s
                    .policy_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(Self { local })
    }

    /// Appraise a certificate chain (leaf first); `Ok` with what was attested.
    pub async fn appraise(&self, chain: &[CertificateDer<'static>]) -> Result<String, LocalError> {
        let der: Vec<Vec<u8>> = chain.iter().map(|c| c.as_ref().to_vec()).collect();
        let evidence = evidence::decode_certificate_der(&der)?;
        let decision = self.local.decide(&evidence, VERIFIER_PURPOSE, None).await?;
        if decision.allow {
            warn_of(&decision);
            Ok(identity_summary(&decision))
        } else {
            Err(LocalError::Refused(refusal(&decision)))
        }
    }
}

impl VerifierIdentity {
    /// Who signed a decision token: the quote its JWK carries (a verifier serving with
    /// `--ra-tls` publishes one), which must bind that key, appraised under the purpose
    /// `verifier`. Checks only the signer; [`crate::token::verify`] checks the
    /// token.
    pub async fn appraise_token_signer(
        &self,
        token: &str,
        jwks: &str,
    ) -> Result<String, LocalError> {
        let kid = jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .ok_or(crate::token::TokenError::NoKid)?;
        let q = crate::token::key_quote(jwks, &kid)?
            .ok_or_else(|| LocalError::NoKeyQuote { kid: kid.clone() })?;
        let evidence = evidence::decode_getquote_json(&q.getquote)?;
        let decision = self
            .local
            .decide(&evidence, VERIFIER_PURPOSE, Some(&q.expected_report_data))
            .await?;
        if decision.allow {
            warn_of(&decision);
            Ok(identity_summary(&decision))
        } else {
            Err(LocalError::Refused(refusal(&decision)))
        }
    }
}

impl teesql_proto::transport::PeerCheck for VerifierIdentity {
    fn check<'a>(
        &'a self,
        chain: &'a [CertificateDer<'static>],
    ) -> teesql_proto::transport::CheckFuture<'a> {
        Box::pin(async move { self.appraise(chain).await.map_err(Into::into) })
    }
}

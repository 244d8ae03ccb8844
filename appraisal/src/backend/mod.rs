//! Quote backends: they verify a quote and report facts. They never decide.
//!
//! A backend answers "is this quote genuine, and what does its platform look like":
//! signature chain, TCB status, advisories, which trust root, collateral window. Whether
//! those facts are good enough is the policy's decision.

pub mod chain;
pub mod dcap;
pub mod ita;
pub mod platform;
pub mod signatures;
pub mod simulator;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

pub use crate::collateral::CollateralWindow;
use crate::evidence::Quote;

/// A boxed future, so backends can sit behind `Arc<dyn QuoteBackend>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Verifies quotes. Implementations must not panic on any input and must bound the time
/// they spend on the network.
pub trait QuoteBackend: Send + Sync + std::fmt::Debug {
    /// Short name, for logs (`dcap`, `ita`, `simulator`, `dcap,ita`). The claims name
    /// the backend that decided, from [`QuoteFacts::backend`].
    fn name(&self) -> &str;
    /// Verify `quote` at unix time `now`.
    fn appraise<'a>(&'a self, quote: &'a Quote, now: u64) -> BoxFuture<'a, QuoteFacts>;
}

/// A quote backend, by the name `--backend` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Local DCAP verification (dcap-qvl) with collateral from a PCCS or files.
    Dcap,
    /// Intel Trust Authority.
    Ita,
    /// dstack simulator quotes, reported unverified (development only; alone).
    Simulator,
}

impl BackendKind {
    /// The name `--backend` takes and logs use: `dcap`, `ita` or `simulator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dcap => "dcap",
            Self::Ita => "ita",
            Self::Simulator => "simulator",
        }
    }
}

/// Why a backend chain, a trust root or a backend cannot be set up from its settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The chain is empty.
    #[error("backend: name at least one of dcap, ita, simulator")]
    NoBackend,
    /// A backend named twice in the chain.
    #[error("backend: {} is named twice", .0.as_str())]
    NamedTwice(BackendKind),
    /// The simulator in a chain with other backends.
    #[error("backend: simulator only on its own")]
    SimulatorNotAlone,
    /// `ita` in the chain without its settings (the API key).
    #[error("backend ita: needs an API key (INTEL_TRUST_AUTHORITY_API_KEY or --ita-api-key-file)")]
    ItaWithoutKey,
    /// Both a trust root and a development trust root given.
    #[error("trust_root and dev_trust_root: give one, not both")]
    TwoTrustRoots,
    /// The trust root file cannot be used.
    #[error(transparent)]
    TrustRoot(#[from] dcap::TrustRootError),
    /// The collateral settings cannot be used.
    #[error(transparent)]
    Collateral(#[from] crate::collateral::CollateralError),
    /// The Intel Trust Authority client cannot be built.
    #[error(transparent)]
    Ita(#[from] ita::ItaClientError),
}

/// What the quote backend is built from. `serve`, `verify`, the test harness, the tests
/// and the benchmarks all build theirs here.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The backends in the order they are asked; the next only when one could not decide.
    pub chain: Vec<BackendKind>,
    /// The root DCAP verifies quotes against (Intel's, a custom or a development root).
    pub trust_root: dcap::TrustRoot,
    /// Where DCAP collateral comes from: file, offline directory, PCCS.
    pub collateral: crate::collateral::CollateralConfig,
    /// Needed when the chain has `ita`.
    pub ita: Option<ita::ItaConfig>,
    /// Memory for the DCAP backend's platform cache, bytes; 0: every quote gets the full
    /// verification.
    pub platform_cache_bytes: u64,
}

/// A built backend: the appraiser over it, and its collateral source (for metrics).
#[derive(Debug, Clone)]
pub struct Backend {
    /// Appraises evidence with the built backend (one, or a [`chain::ChainBackend`]).
    pub appraiser: crate::Appraiser,
    /// The collateral source the DCAP backend uses; built even when the chain has no
    /// `dcap`.
    pub collateral: Arc<crate::collateral::CollateralProvider>,
    /// The ITA backend, when the chain has one (tests read its counters).
    pub ita: Option<Arc<ita::ItaBackend>>,
    /// The DCAP backend's platform cache, when it has one (for metrics).
    pub platforms: Option<Arc<platform::PlatformCache>>,
}

impl BackendConfig {
    /// Local DCAP with `trust_root` and `collateral`.
    pub fn dcap(
        trust_root: dcap::TrustRoot,
        collateral: crate::collateral::CollateralConfig,
    ) -> Self {
        Self {
            chain: vec![BackendKind::Dcap],
            trust_root,
            collateral,
            ita: None,
            platform_cache_bytes: platform::DEFAULT_PLATFORM_CACHE_BYTES,
        }
    }

    /// Recorded evidence: Intel's root, collateral from one file or a directory (or none),
    /// appraised as of `now`, nothing fetched.
    pub fn recorded(collateral: Option<PathBuf>, now: u64) -> Self {
        let (file, dir) = match collateral {
            Some(dir) if dir.is_dir() => (None, Some(dir)),
            file => (file, None),
        };
        Self::dcap(
            dcap::TrustRoot::intel(),
            crate::collateral::CollateralConfig {
                file,
                dir,
                pccs_url: None,
                clock: crate::Clock::Fixed(now),
                ..Default::default()
            },
        )
    }

    /// Check a chain: not empty, no backend twice, the simulator only on its own (its
    /// quotes verify under no root; behind another backend it would hide real failures).
    pub fn check_chain(chain: &[BackendKind]) -> Result<(), BackendError> {
        if chain.is_empty() {
            return Err(BackendError::NoBackend);
        }
        for (i, k) in chain.iter().enumerate() {
            if chain[..i].contains(k) {
                return Err(BackendError::NamedTwice(*k));
            }
        }
        if chain.len() > 1 && chain.contains(&BackendKind::Simulator) {
            return Err(BackendError::SimulatorNotAlone);
        }
        Ok(())
    }

    /// The chain as `--backend` writes it: `dcap`, `dcap,ita`.
    pub fn chain_name(&self) -> String {
        let names: Vec<&str> = self.chain.iter().map(|k| k.as_str()).collect();
        names.join(",")
    }

    /// The backend these settings describe.
    pub fn build(&self) -> Result<Backend, BackendError> {
        Self::check_chain(&self.chain)?;
        let collateral = Arc::new(crate::collateral::CollateralProvider::new(
            &self.collateral,
        )?);
        let mut ita_backend = None;
        let platforms = (self.platform_cache_bytes > 0)
            .then(|| Arc::new(platform::PlatformCache::new(self.platform_cache_bytes)));
        let mut built: Vec<Arc<dyn QuoteBackend>> = Vec::new();
        for kind in &self.chain {
            built.push(match kind {
                BackendKind::Dcap => {
                    let dcap = dcap::DcapBackend::new(self.trust_root.clone(), collateral.clone());
                    Arc::new(match &platforms {
                        Some(cache) => dcap.with_platform_cache(cache.clone()),
                        None => dcap,
                    })
                }
                BackendKind::Simulator => Arc::new(simulator::SimulatorBackend),
                BackendKind::Ita => {
                    let config = self.ita.clone().ok_or(BackendError::ItaWithoutKey)?;
                    let b = Arc::new(ita::ItaBackend::new(config)?);
                    ita_backend = Some(b.clone());
                    b
                }
            });
        }
        let backend: Arc<dyn QuoteBackend> = if built.len() == 1 {
            built.remove(0)
        } else {
            Arc::new(chain::ChainBackend::new(built))
        };
        Ok(Backend {
            appraiser: crate::Appraiser::new(backend),
            collateral,
            ita: ita_backend,
            platforms,
        })
    }
}

/// The backend settings as written (flags, environment, file), for `serve` and `verify`.
#[derive(Debug, Clone, Default)]
pub struct BackendSettings {
    /// `dcap`, `ita`, `simulator`, or a comma-separated chain such as `dcap,ita`.
    pub backend: Option<String>,
    /// ITA API base URL (http or https); `None`: the US region, [`ita::US_API_URL`].
    pub ita_url: Option<String>,
    /// Where ITA's token-signing keys are read; `None`: the API region's portal JWKS.
    pub ita_jwks_url: Option<String>,
    /// Accepted `iss` values, comma-separated.
    pub ita_issuer: Option<String>,
    /// File holding the ITA API key; `None`: `INTEL_TRUST_AUTHORITY_API_KEY` instead.
    pub ita_api_key_file: Option<PathBuf>,
    /// ITA policy ids (UUIDs), comma-separated.
    pub ita_policy_ids: Option<String>,
    /// Ask ITA to issue no token unless every policy in `ita_policy_ids` matches (which
    /// must then name some); `None`: false.
    pub ita_policy_must_match: Option<bool>,
}

/// The chain and the ITA settings, every problem recorded in `p`. The API key comes from
/// `ita_api_key_file`, else `INTEL_TRUST_AUTHORITY_API_KEY` in `env`; it is asked for
/// only when the chain has `ita`, and never appears in a problem.
pub fn resolve_backends(
    s: &BackendSettings,
    env: &dyn teesql_proto::settings::Env,
    p: &mut teesql_proto::settings::Problems,
) -> (Option<Vec<BackendKind>>, Option<ita::ItaConfig>) {
    let text = s.backend.as_deref().unwrap_or("dcap");
    let mut chain = Vec::new();
    let mut ok = true;
    for part in text.split(',').map(str::trim) {
        match p.choice::<BackendKind>("backend", part) {
            Some(k) => chain.push(k),
            None => ok = false,
        }
    }
    if ok && let Err(e) = BackendConfig::check_chain(&chain) {
        p.push(e);
        ok = false;
    }
    for (name, url) in [("ita_url", &s.ita_url), ("ita_jwks_url", &s.ita_jwks_url)] {
        if let Some(u) = url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            p.push(format!("{name} {u:?}: must be an http(s) URL"));
        }
    }
    let policy_ids: Vec<String> = s
        .ita_policy_ids
        .iter()
        .flat_map(|ids| ids.split(','))
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    for id in &policy_ids {
        if !ita::is_policy_id(id) {
            p.push(format!(
                "ita_policy_ids {id:?}: an Intel Trust Authority policy id is a UUID (8-4-4-4-12 hex digits)"
            ));
        }
    }
    if policy_ids.len() > ita::MAX_POLICY_IDS {
        p.push(format!(
            "ita_policy_ids: {} ids, at most {} (Intel Trust Authority's limit)",
            policy_ids.len(),
            ita::MAX_POLICY_IDS
        ));
    }
    if s.ita_policy_must_match == Some(true) && policy_ids.is_empty() {
        p.push("ita_policy_must_match: name the policies with ita_policy_ids");
    }
    let ita = if chain.contains(&BackendKind::Ita) {
        let key = match &s.ita_api_key_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(k) => Some(k),
                Err(e) => {
                    p.push(format!("ita_api_key_file {}: {e}", path.display()));
                    None
                }
            },
            None => {
                let k = env.var("INTEL_TRUST_AUTHORITY_API_KEY");
                if k.is_none() {
                    p.push(
                        "backend ita: needs an API key: set INTEL_TRUST_AUTHORITY_API_KEY or ita_api_key_file",
                    );
                }
                k
            }
        };
        key.and_then(|k| {
            ita::ApiKey::new(&k)
                .map_err(|e| p.push(format!("backend ita: {e}")))
                .ok()
        })
        .map(|key| {
            let mut c = ita::ItaConfig::new(s.ita_url.as_deref().unwrap_or(ita::US_API_URL), key);
            if let Some(u) = &s.ita_jwks_url {
                c.jwks_url = u.clone();
            }
            if let Some(i) = &s.ita_issuer {
                c.issuers = i
                    .split(',')
                    .map(str::trim)
                    .filter(|i| !i.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            c.policy_ids = policy_ids;
            c.policy_must_match = s.ita_policy_must_match.unwrap_or(false);
            c
        })
    } else {
        None
    };
    (ok.then_some(chain), ita)
}

impl dcap::TrustRoot {
    /// The root named by the settings: a root file, a development root file (never
    /// both), or Intel's.
    pub fn choose(root: Option<&Path>, development: Option<&Path>) -> Result<Self, BackendError> {
        match (root, development) {
            (Some(_), Some(_)) => Err(BackendError::TwoTrustRoots),
            (Some(p), None) => Ok(Self::from_file(p)?),
            (None, Some(p)) => Ok(Self::development_from_file(p)?),
            (None, None) => Ok(Self::intel()),
        }
    }
}

/// What a backend found out about a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteFacts {
    /// The backend that reached these facts (`tdx.backend`).
    pub backend: &'static str,
    /// The quote's signature chain verified up to the trust root, with valid collateral.
    pub verified: bool,
    /// Why verification failed, for operators.
    pub error: Option<VerifyError>,
    /// Which trust root the quote was checked against.
    pub root: TrustRootKind,
    /// Converged TCB status (e.g. `UpToDate`), when verified.
    pub tcb_status: Option<String>,
    /// Intel security advisories (`INTEL-SA-…`) that apply to the platform's TCB level;
    /// empty when none apply or the quote did not verify.
    pub advisory_ids: Vec<String>,
    /// The window in which the facts hold: the collateral's (DCAP) or the attestation
    /// token's (`iat`/`nbf` to `exp`, ITA).
    pub collateral: Option<CollateralWindow>,
    /// SHA-256 (hex) of the signed attestation result the facts come from (ITA's JWT),
    /// so a decision can be audited against the token.
    pub token_sha256: Option<String>,
    /// What an Intel Trust Authority token said beyond the quote (`ita` only).
    pub ita: Option<ItaFacts>,
    /// The TCB lifecycle (`tdx.tcb`): the standard set's number, the early set's verdict,
    /// what must rise (`dcap` only, verified quotes only).
    pub tcb: Option<crate::tcb::TcbClaims>,
}

/// What an Intel Trust Authority token says besides the quote's facts (claims `tdx.ita`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ItaFacts {
    /// The token's `iss`.
    pub issuer: String,
    /// `ver` (`1.0.0` flat, `2.0.0` nested).
    pub ver: Option<String>,
    /// The token's `jti` (JWT ID, unique per token); `None` when the token has none.
    pub jti: Option<String>,
    /// `attester_tcb_date`: the TCB level's date.
    pub attester_tcb_date: Option<String>,
    /// `verifier_instance_ids`: the ITA verifier instances that appraised (at most 64
    /// kept); empty when the token lists none.
    pub verifier_instance_ids: Vec<String>,
    /// The ITA policy ids the operator configured (`--ita-policy-ids`).
    pub policy_ids_required: Vec<String>,
    /// `policy_ids_matched` (ids, lowercase).
    pub policy_ids_matched: Vec<String>,
    /// `policy_ids_unmatched`, with every required id the token did not list as matched.
    pub policy_ids_unmatched: Vec<String>,
}

impl QuoteFacts {
    /// Facts that say nothing yet: not verified, no error.
    pub fn new(backend: &'static str, root: TrustRootKind) -> Self {
        Self {
            backend,
            verified: false,
            error: None,
            root,
            tcb_status: None,
            advisory_ids: Vec::new(),
            collateral: None,
            token_sha256: None,
            ita: None,
            tcb: None,
        }
    }

    /// These facts with `error`.
    pub fn failed(mut self, code: VerifyErrorCode, message: impl Into<String>) -> Self {
        self.verified = false;
        self.error = Some(VerifyError {
            code,
            message: message.into(),
        });
        self
    }

    /// The backend could not reach a verdict on the quote (its collateral or service
    /// was unavailable): another backend may try, and nothing is cached.
    pub fn undecided(&self) -> bool {
        self.error.as_ref().is_some_and(|e| e.code.is_transient())
    }
}

/// Which root of trust verified (or was tried on) a quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustRootKind {
    /// Intel's SGX/TDX root CA.
    Intel,
    /// The seeded development PKI (`teesql-dev agent`). Never production.
    Dev,
    /// Another root given by configuration.
    Custom,
    /// Intel Trust Authority appraised the quote; its signed token is the evidence.
    #[serde(rename = "intel-trust-authority")]
    IntelTrustAuthority,
    /// dstack's simulator: the quote is signed by no root at all.
    Simulator,
}

impl TrustRootKind {
    /// The name it has in claims (`tdx.root`) and serializes as, e.g.
    /// `intel-trust-authority`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Intel => "intel",
            Self::Dev => "dev",
            Self::Custom => "custom",
            Self::IntelTrustAuthority => "intel-trust-authority",
            Self::Simulator => "simulator",
        }
    }
}

/// A verification failure, classified so that policies can give a specific reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// The class of failure, for policies (`tdx.error_code`).
    pub code: VerifyErrorCode,
    /// What failed, in the backend's or dcap-qvl's words, for operators (`tdx.error`);
    /// not stable, match on `code`.
    pub message: String,
}

/// Classes of verification failure. Serialized in claims as `tdx.error_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyErrorCode {
    /// No collateral could be obtained (source down, not found, offline).
    CollateralUnavailable,
    /// The collateral is outside its validity window at the appraisal time.
    CollateralExpired,
    /// A signature in the chain (quote, QE report, collateral, certificates) is invalid,
    /// or a certificate does not chain to the trust root.
    SignatureInvalid,
    /// The platform matches no TCB level of the TCB Info.
    TcbLevelUnknown,
    /// The platform's TCB is revoked.
    Revoked,
    /// The quote is not a TDX quote.
    NotTdx,
    /// The attestation service (Intel Trust Authority) could not be asked: unreachable,
    /// timed out, rate-limited, failing, or it refused the API key.
    ServiceUnavailable,
    /// The attestation service answered with a token that does not verify (signature,
    /// key, algorithm, issuer, validity) or does not describe the quote sent.
    TokenInvalid,
    /// A dstack simulator quote: signed by no root, so it cannot verify.
    Simulated,
    /// Any other failure.
    #[serde(rename = "verification_failed")]
    Other,
}

impl VerifyErrorCode {
    /// No verdict on the quote was reached (its collateral or the attestation service
    /// was unavailable, or the service's answer could not be trusted); a later attempt,
    /// or another backend, could succeed. Such an appraisal is never cached.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::CollateralUnavailable
                | Self::CollateralExpired
                | Self::ServiceUnavailable
                | Self::TokenInvalid
        )
    }

    /// The name it has in claims (`tdx.error_code`) and serializes as; `Other` is
    /// `verification_failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CollateralUnavailable => "collateral_unavailable",
            Self::CollateralExpired => "collateral_expired",
            Self::SignatureInvalid => "signature_invalid",
            Self::TcbLevelUnknown => "tcb_level_unknown",
            Self::Revoked => "revoked",
            Self::NotTdx => "not_tdx",
            Self::ServiceUnavailable => "service_unavailable",
            Self::TokenInvalid => "token_invalid",
            Self::Simulated => "simulated",
            Self::Other => "verification_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claims carry the typed codes; policies read them as these strings.
    #[test]
    fn codes_serialize_as_their_names_and_only_undecided_ones_are_transient() {
        use VerifyErrorCode::*;
        for code in [
            CollateralUnavailable,
            CollateralExpired,
            SignatureInvalid,
            TcbLevelUnknown,
            Revoked,
            NotTdx,
            ServiceUnavailable,
            TokenInvalid,
            Simulated,
            Other,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
            assert_eq!(
                code.is_transient(),
                matches!(
                    code,
                    CollateralUnavailable | CollateralExpired | ServiceUnavailable | TokenInvalid
                )
            );
        }
        for root in [
            TrustRootKind::Intel,
            TrustRootKind::Dev,
            TrustRootKind::Custom,
            TrustRootKind::IntelTrustAuthority,
            TrustRootKind::Simulator,
        ] {
            assert_eq!(
                serde_json::to_value(root).unwrap(),
                serde_json::json!(root.as_str())
            );
        }
    }
}

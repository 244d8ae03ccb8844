//! Quote backends: they verify a quote and report facts. They never decide.
//!
//! A backend answers "is this quote genuine, and what does its platform look like":
//! signature chain, TCB status, advisories, which trust root, collateral window. Whether
//! those facts are good enough is the policy's decision.

pub mod dcap;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;

use crate::evidence::Quote;

/// A boxed future, so backends can sit behind `Arc<dyn QuoteBackend>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Verifies quotes. Implementations must not panic on any input and must bound the time
/// they spend on the network.
pub trait QuoteBackend: Send + Sync + std::fmt::Debug {
    /// Short name reported in claims (`tdx.backend`).
    fn name(&self) -> &'static str;
    /// Verify `quote` at unix time `now`.
    fn appraise<'a>(&'a self, quote: &'a Quote, now: u64) -> BoxFuture<'a, QuoteFacts>;
}

/// What the quote backend is built from. `serve`, `verify`, the test harness, the tests
/// and the benchmarks all build theirs here.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub trust_root: dcap::TrustRoot,
    pub collateral: crate::collateral::CollateralConfig,
}

/// A built backend: the appraiser over it, and its collateral source (for metrics).
#[derive(Debug, Clone)]
pub struct Backend {
    pub appraiser: crate::Appraiser,
    pub collateral: Arc<crate::collateral::CollateralProvider>,
}

impl BackendConfig {
    /// Recorded evidence: Intel's root, collateral from one file (or none), appraised as
    /// of `now`, nothing fetched.
    pub fn recorded(collateral_file: Option<PathBuf>, now: u64) -> Self {
        Self {
            trust_root: dcap::TrustRoot::intel(),
            collateral: crate::collateral::CollateralConfig {
                file: collateral_file,
                pccs_url: None,
                clock: crate::Clock::Fixed(now),
                ..Default::default()
            },
        }
    }

    /// The backend these settings describe.
    pub fn build(&self) -> Result<Backend, String> {
        let collateral = Arc::new(
            crate::collateral::CollateralProvider::new(&self.collateral)
                .map_err(|e| e.to_string())?,
        );
        let backend = dcap::DcapBackend::new(self.trust_root.clone(), collateral.clone());
        Ok(Backend {
            appraiser: crate::Appraiser::new(Arc::new(backend)),
            collateral,
        })
    }
}

impl dcap::TrustRoot {
    /// The root named by the settings: a root file, a development root file (never
    /// both), or Intel's.
    pub fn choose(root: Option<&Path>, development: Option<&Path>) -> Result<Self, String> {
        match (root, development) {
            (Some(_), Some(_)) => Err("trust_root and dev_trust_root: give one, not both".into()),
            (Some(p), None) => Self::from_file(p).map_err(|e| e.to_string()),
            (None, Some(p)) => Self::development_from_file(p).map_err(|e| e.to_string()),
            (None, None) => Ok(Self::intel()),
        }
    }
}

/// What a backend found out about a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteFacts {
    /// The quote's signature chain verified up to the trust root, with valid collateral.
    pub verified: bool,
    /// Why verification failed, for operators.
    pub error: Option<VerifyError>,
    /// Which trust root the quote was checked against.
    pub root: TrustRootKind,
    /// Converged TCB status (e.g. `UpToDate`), when verified.
    pub tcb_status: Option<String>,
    pub advisory_ids: Vec<String>,
    /// The window in which the collateral used is valid, when collateral was found.
    pub collateral: Option<CollateralWindow>,
}

/// Validity window of a collateral set, unix seconds: from the latest issue date to the
/// earliest next update of TCB Info, QE Identity and both CRLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CollateralWindow {
    pub not_before: u64,
    pub not_after: u64,
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
}

impl TrustRootKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Intel => "intel",
            Self::Dev => "dev",
            Self::Custom => "custom",
        }
    }
}

/// A verification failure, classified so that policies can give a specific reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    pub code: VerifyErrorCode,
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
    /// Any other failure.
    #[serde(rename = "verification_failed")]
    Other,
}

impl VerifyErrorCode {
    /// A later attempt could succeed (the collateral source was down, or its collateral
    /// stale): such an appraisal is never cached.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::CollateralUnavailable | Self::CollateralExpired)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CollateralUnavailable => "collateral_unavailable",
            Self::CollateralExpired => "collateral_expired",
            Self::SignatureInvalid => "signature_invalid",
            Self::TcbLevelUnknown => "tcb_level_unknown",
            Self::Revoked => "revoked",
            Self::NotTdx => "not_tdx",
            Self::Other => "verification_failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claims carry the typed codes; policies read them as these strings.
    #[test]
    fn codes_serialize_as_their_names_and_only_collateral_is_transient() {
        use VerifyErrorCode::*;
        for code in [
            CollateralUnavailable,
            CollateralExpired,
            SignatureInvalid,
            TcbLevelUnknown,
            Revoked,
            NotTdx,
            Other,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
            assert_eq!(
                code.is_transient(),
                matches!(code, CollateralUnavailable | CollateralExpired)
            );
        }
        for root in [
            TrustRootKind::Intel,
            TrustRootKind::Dev,
            TrustRootKind::Custom,
        ] {
            assert_eq!(
                serde_json::to_value(root).unwrap(),
                serde_json::json!(root.as_str())
            );
        }
    }
}

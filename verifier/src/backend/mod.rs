//! Quote backends: they verify a quote and report facts. They never decide.
//!
//! A backend answers "is this quote genuine, and what does its platform look like":
//! signature chain, TCB status, advisories, which trust root, collateral window. Whether
//! those facts are good enough is the policy's decision.

pub mod dcap;

use std::future::Future;
use std::pin::Pin;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustRootKind {
    /// Intel's SGX/TDX root CA.
    Intel,
    /// The seeded development PKI (`teesql-verifier agent`). Never production.
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
    Other,
}

impl VerifyErrorCode {
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

//! Development attestation: a seeded DCAP PKI and a dstack-compatible guest agent.
//!
//! There is no TDX hardware on development machines, yet every part of the system
//! (RA-TLS with key binding, client attestation, RTMR3 replay, collateral fetching) must
//! be exercised for real. The real dstack simulator patches report data into a recorded
//! quote, so its quotes never verify. Here quotes are signed for real by a PKI derived
//! from a seed; dcap-qvl verifies them against that PKI's root, which the verifier trusts
//! only when given it with `--dev-trust-root` (claims then say `tdx.root = "dev"`, and the
//! production policy refuses them). This crate is never a dependency of a production
//! binary: `teesql-dev` (and `teesql-dev agent`) and the tests use it.

pub mod agent;
pub mod cli;
pub mod encode;
pub mod kms;
pub mod pccs;
pub mod pki;
mod ratls;
pub mod server_pki;
pub mod snp;

pub use agent::{AgentConfig, DevAgent, DstackVersion, KeyProviderKind};
pub use kms::DevKms;
pub use pki::{DevPki, DevTdReport, PlatformTcb};
pub use ratls::{AppCa, RaTlsIssued, RaTlsRequest};

/// Why a seed is refused ([`parse_seed`]).
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Not hex, or too long.
    #[error(transparent)]
    Hex(#[from] teesql_appraisal::evidence::EvidenceError),
    /// Hex, but not 32 bytes of it.
    #[error("the seed must be 32 bytes (64 hex digits), got {0}")]
    Length(usize),
}

/// Parse a 32-byte seed from hex (with or without `0x`).
pub fn parse_seed(text: &str) -> Result<[u8; 32], SeedError> {
    let bytes = teesql_appraisal::evidence::decode_hex("seed", text, 32)?;
    bytes
        .try_into()
        .map_err(|v: Vec<u8>| SeedError::Length(v.len()))
}

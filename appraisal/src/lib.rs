//! TeeSQL appraisal: decodes TDX, AMD SEV-SNP and dstack attestation evidence, verifies
//! quotes and reports, replays event logs and decides with Rego policies — everything a
//! relying party needs to judge a peer in its own process, without the verifier service.
//!
//! Evidence is decoded ([`evidence`]), its quote verified by a [`backend`] (collateral
//! from [`collateral`]) or its SEV-SNP report by [`snp`] (offline, AMD's pinned roots),
//! the event log replayed ([`eventlog`]), and everything condensed
//! into [`claims::Claims`], the one document [`policy`] evaluates. Backends report facts;
//! only policies decide. [`local`] runs it all in-process (the sidecar appraises the
//! verifier's own RA-TLS certificate this way); [`token`] checks decision tokens.
//! `teesql-verifier` serves the same appraisal over gRPC.

#![warn(missing_docs)]

pub mod appraise;
pub mod backend;
pub mod claims;
pub mod clock;
pub mod collateral;
pub mod eventlog;
pub mod evidence;
pub mod http;
pub mod local;
pub mod manifest;
pub mod mr_config;
pub mod policy;
pub mod report;
pub mod snp;
pub mod tcb;
pub mod token;

pub use appraise::{Appraiser, Decision, DecisionRequest, decide};
pub use clock::Clock;

#[cfg(test)]
pub(crate) mod recorded {
    //! The recorded Intel evidence of `testdata/dcap` (testdata/README.md), for unit tests.

    use std::path::PathBuf;

    use crate::collateral::Collateral;
    use crate::evidence::Quote;

    /// Inside the recorded collateral's window (testdata/README.md).
    pub(crate) const NOW: u64 = 1_751_000_000;

    /// A file of `testdata/dcap`.
    pub(crate) fn dcap(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata/dcap")
            .join(name)
    }

    /// The recorded Intel TDX quote (`tdx_quote`).
    pub(crate) fn intel_quote() -> Quote {
        crate::evidence::decode_quote_text(&std::fs::read(dcap("tdx_quote")).unwrap()).unwrap()
    }

    /// The recorded Intel TDX quote and its collateral (`tdx_quote_collateral.json`).
    pub(crate) fn intel() -> (Quote, Collateral) {
        let collateral = Collateral::from_file(&dcap("tdx_quote_collateral.json")).unwrap();
        (intel_quote(), collateral)
    }
}

//! Quotes from dstack's simulator (development mode D): they carry real TD report
//! fields but are signed by no root, so nothing can verify them. This backend reports
//! them as what they are — `verified = false`, `root = "simulator"` — for the
//! development profile, which alone accepts that root. Only enabled by choosing it.

use super::{BoxFuture, QuoteBackend, QuoteFacts, TrustRootKind, VerifyErrorCode};
use crate::evidence::Quote;

/// Reports every quote as `simulated`, unverified, under the `simulator` root; checks
/// nothing and never touches the network.
#[derive(Debug, Default)]
pub struct SimulatorBackend;

impl QuoteBackend for SimulatorBackend {
    fn name(&self) -> &str {
        "simulator"
    }

    fn appraise<'a>(&'a self, _quote: &'a Quote, _now: u64) -> BoxFuture<'a, QuoteFacts> {
        Box::pin(async move {
            QuoteFacts::new("simulator", TrustRootKind::Simulator).failed(
                VerifyErrorCode::Simulated,
                "a dstack simulator quote: signed by no root, so it cannot verify (development only)",
            )
        })
    }
}

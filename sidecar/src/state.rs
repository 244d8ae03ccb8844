//! What every session of a running sidecar shares: its settings, TLS acceptor and
//! certificate, verifier client, cancel keys, limits, metrics, pool and identity
//! recorder. Built once by [`crate::Sidecar::start`].

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::SidecarConfig;
use crate::frontend::cancel::CancelMap;
use crate::frontend::ratelimit::FailureLimiter;
use crate::frontend::tls::RotatingCert;
use crate::metrics::Metrics;
use crate::postgres::identity_rows::IdentityRecorder;
use crate::postgres::pool::BackendPool;
use crate::verifier::VerifierClient;

/// Everything sessions share.
pub struct Shared {
    pub config: SidecarConfig,
    pub tls: TlsAcceptor,
    pub cert: Arc<RotatingCert>,
    pub verifier: VerifierClient,
    pub cancels: Arc<CancelMap>,
    pub limiter: FailureLimiter,
    pub metrics: Metrics,
    pub pool: BackendPool,
    /// Records each session's attested identity (`backend.record_identity`).
    pub identities: Option<IdentityRecorder>,
    /// SCRAM verifiers of passthrough roles, read from Postgres.
    pub passthrough: crate::postgres::passthrough::PassthroughVerifiers,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("listen", &self.config.listen)
            .field("verifier", &self.verifier.url())
            .finish_non_exhaustive()
    }
}

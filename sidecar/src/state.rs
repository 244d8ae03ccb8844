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
    /// The checked configuration the sidecar started with (not reloaded).
    pub config: SidecarConfig,
    /// TLS acceptor for the Postgres port, serving [`Self::cert`].
    pub tls: TlsAcceptor,
    /// The serving certificate, swapped in place every `identity.renew_secs`.
    pub cert: Arc<RotatingCert>,
    /// Client of the verifier that decides every handshake.
    pub verifier: VerifierClient,
    /// Sidecar-issued cancel keys of the live sessions, mapped to Postgres' own.
    pub cancels: Arc<CancelMap>,
    /// Per-address failed-login, abandoned-handshake and in-progress limits (`limits.*`).
    pub limiter: FailureLimiter,
    /// Prometheus metrics served at `/metrics`.
    pub metrics: Metrics,
    /// Logged-in Postgres connections kept for reuse; empty when `backend.pool_max_idle_per_key` is 0.
    pub pool: BackendPool,
    /// Records each session's attested identity (`backend.record_identity`).
    pub identities: Option<IdentityRecorder>,
    /// SCRAM verifiers of passthrough roles, read from Postgres.
    pub passthrough: crate::postgres::passthrough::PassthroughVerifiers,
    /// The live sessions, re-judged when the verifier's policy changes.
    pub sessions: Arc<crate::frontend::live::LiveSessions>,
}

impl Shared {
    /// What a re-judging of live sessions needs.
    pub fn judge(&self) -> crate::frontend::live::Judge<'_> {
        crate::frontend::live::Judge {
            verifier: &self.verifier,
            metrics: &self.metrics,
            on_unavailable: self.config.limits.revalidate_on_unavailable,
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("listen", &self.config.listen)
            .field("verifier", &self.verifier.url())
            .finish_non_exhaustive()
    }
}

//! TeeSQL sidecar: the Postgres front door in each database CVM.
//!
//! Port 5433 speaks the Postgres wire protocol over TLS (RA-TLS certificate from the
//! dstack guest agent), asks the verifier about every handshake, checks the cluster
//! secret, logs in to Postgres and relays bytes. Port 8080 serves `/health`,
//! `/attestation` and `/metrics`. No policy logic and no quote parsing live here: every
//! decision is the verifier's.

#![warn(missing_docs)]

pub mod accept;
pub mod auth;
pub mod config;
pub mod forward;
pub mod frontend;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod params;
pub mod pgwire;
pub mod postgres;
pub mod state;
pub mod verifier;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::SidecarConfig;
use crate::frontend::cancel::CancelMap;
use crate::frontend::ratelimit::FailureLimiter;
use crate::frontend::tls::RotatingCert;
use crate::identity::GuestAgent;
use crate::metrics::Metrics;
use crate::state::Shared;
use crate::verifier::VerifierClient;

/// Why a sidecar could not start ([`Sidecar::start`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The guest agent gave no server certificate.
    #[error("cannot get the server certificate: {0}")]
    Identity(#[source] identity::AgentError),
    /// rustls refused the server configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// The verifier client cannot be made from the settings.
    #[error(transparent)]
    Verifier(#[from] verifier::VerifierClientError),
}

/// A sidecar with its identity fetched, ready to serve.
#[derive(Debug)]
pub struct Sidecar {
    /// What every session and the HTTP endpoints share (config, TLS, verifier, metrics, …).
    pub shared: Arc<Shared>,
    /// The dstack guest agent: certificate renewals and `/attestation`'s quotes.
    pub agent: Arc<GuestAgent>,
}

impl Sidecar {
    /// Fetch the server certificate from the guest agent and build the TLS and verifier
    /// clients. Fails with a clear message when the agent cannot be reached.
    pub async fn start(config: SidecarConfig) -> Result<Self, StartError> {
        let agent = Arc::new(GuestAgent::new(config.identity.endpoint.as_deref()));
        let identity =
            identity::server_identity(&agent, &config.identity.subject, &config.identity.alt_names)
                .await
                .map_err(StartError::Identity)?;
        let cert = RotatingCert::new(identity);
        let tls = frontend::tls::server_config(cert.clone()).map_err(StartError::Tls)?;
        let metrics = Metrics::new();
        let verifier = VerifierClient::new(
            &config.verifier_url,
            config.verifier_trust.as_ref(),
            config.verifier_timeout,
        )?
        .with_policy_hashes(
            config.verifier_policy_hashes.clone(),
            metrics.verifier_policy_mismatches(),
        );
        let identities = config
            .backend
            .record_identity
            .then(|| postgres::identity_rows::IdentityRecorder::new(config.backend.clone()));
        let shared = Arc::new(Shared {
            identities,
            limiter: FailureLimiter::new(config.limits.address),
            pool: postgres::pool::BackendPool::new(
                config.backend.pool_max_idle_per_key,
                config.backend.pool_max_idle_total,
                config.backend.pool_idle_timeout,
            )
            .with_metrics(metrics.pool()),
            config,
            tls: tokio_rustls::TlsAcceptor::from(tls),
            cert,
            verifier,
            cancels: Arc::new(CancelMap::default()),
            metrics,
            passthrough: Default::default(),
            sessions: Default::default(),
        });
        Ok(Self { shared, agent })
    }

    /// Serve Postgres and HTTP on `listeners` until `shutdown`, renewing the certificate
    /// on schedule; then drain sessions. An error: the Postgres port's serving threads
    /// could not all start, and nothing was served.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let shared = self.shared.clone();
        let renewal = {
            let s = shared.clone();
            let id = &shared.config.identity;
            tokio::spawn(identity::renew_server_certificate(
                self.agent.clone(),
                shared.cert.clone(),
                id.subject.clone(),
                id.alt_names.clone(),
                id.renew_every,
                move |ok| s.metrics.renewal(ok),
            ))
        };
        // Open sessions follow the verifier's policy.
        let follower = tokio::spawn(frontend::server::follow_policies(shared.clone()));
        let admin = http::routes::Admin::new(shared.clone(), self.agent.clone());
        for (listener, app, which) in [
            (
                listeners.admin,
                http::routes::router(admin.clone()),
                "admin",
            ),
            (
                listeners.public,
                http::routes::public_router(admin),
                "public",
            ),
        ] {
            let Some(listener) = listener else { continue };
            let mut rx = stop_rx.clone();
            let s = shared.clone();
            tokio::spawn(http::serve(
                listener,
                app,
                shared.config.limits.http,
                move || s.metrics.http_refused(which),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            ));
        }
        let served = frontend::server::serve(shared, listeners.postgres, shutdown).await;
        let _ = stop_tx.send(true);
        renewal.abort();
        follower.abort();
        served
    }
}

/// What a sidecar listens on.
#[derive(Debug)]
pub struct Listeners {
    /// Postgres over TLS (5433).
    pub postgres: TcpListener,
    /// `/health`, `/metrics`, `/attestation`, for the operator (loopback by default).
    pub admin: Option<TcpListener>,
    /// `/attestation` only, for anyone.
    pub public: Option<TcpListener>,
}

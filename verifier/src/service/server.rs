//! The verifier as a running service: gRPC on one listener, `/metrics` and `/healthz` on
//! another (optional), policies reloaded on change, the decision log written out at the
//! end. `teesql-verifier serve` and the test harness both run it from here:
//! [`Verifier::start`] builds it from a [`ServeConfig`], [`Verifier::run`] serves
//! [`Listeners`] until a shutdown future completes.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::routing::get;
use tokio::net::TcpListener;

use super::config::{Listen, ServeConfig};
use super::{DecisionService, grpc, reload};

/// Why the verifier cannot listen, attest or serve. The messages name the setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The unix socket path holds something else.
    #[error("listen unix://{}: exists and is not a socket", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// Another process serves on the unix socket.
    #[error("listen unix://{}: another process is serving on it", path.display())]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The unix socket cannot be bound.
    #[error("listen unix://{}: {source}", path.display())]
    BindUnix {
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC TCP address cannot be bound.
    #[error("listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The metrics address cannot be bound.
    #[error("metrics_listen {addr}: {source}")]
    BindMetrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The RA-TLS identity could not be set up.
    #[error(transparent)]
    Identity(#[from] super::identity::IdentityError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[source] tonic::transport::Error),
}

/// Where the verifier serves.
#[derive(Debug)]
pub struct Listeners {
    /// Where the gRPC API is served (`listen`).
    pub grpc: GrpcListener,
    /// Where `/metrics`, `/healthz` and `/.well-known/jwks.json` are served
    /// (`metrics_listen`); `None` = not served.
    pub metrics: Option<TcpListener>,
}

/// The gRPC listener: TCP (plaintext or TLS, per the configuration) or a unix socket.
#[derive(Debug)]
pub enum GrpcListener {
    /// A bound TCP listener (`--listen HOST:PORT`).
    Tcp(TcpListener),
    /// A bound unix socket and its path; the socket file is removed when this is dropped.
    Unix(tokio::net::UnixListener, PathBuf),
}

impl From<TcpListener> for GrpcListener {
    fn from(l: TcpListener) -> Self {
        Self::Tcp(l)
    }
}

impl GrpcListener {
    /// The TCP address (an error for a unix socket).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr(),
            Self::Unix(..) => Err(std::io::Error::other("a unix socket has no TCP address")),
        }
    }

    /// What a client puts in its verifier URL.
    pub fn url(&self, tls: bool) -> String {
        match self {
            Self::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("{}://{a}", if tls { "https" } else { "http" }),
                Err(_) => "?".into(),
            },
            Self::Unix(_, path) => format!("unix://{}", path.display()),
        }
    }

    /// Bind a unix socket, replacing a stale socket file nobody listens on.
    pub fn bind_unix(path: &Path) -> Result<Self, ServeError> {
        use std::os::unix::fs::FileTypeExt;
        let path_ = || path.to_path_buf();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ServeError::NotASocket { path: path_() });
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::SocketInUse { path: path_() });
            }
            let _ = std::fs::remove_file(path);
        }
        tokio::net::UnixListener::bind(path)
            .map(|l| Self::Unix(l, path_()))
            .map_err(|source| ServeError::BindUnix {
                path: path_(),
                source,
            })
    }
}

impl Drop for GrpcListener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Listeners {
    /// Bind the addresses the configuration names.
    pub async fn bind(config: &ServeConfig) -> Result<Self, ServeError> {
        let grpc = match &config.listen {
            Listen::Tcp(addr) => {
                GrpcListener::Tcp(TcpListener::bind(addr).await.map_err(|source| {
                    ServeError::Bind {
                        addr: *addr,
                        source,
                    }
                })?)
            }
            Listen::Unix(path) => GrpcListener::bind_unix(path)?,
        };
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::BindMetrics { addr, source })?,
            ),
            None => None,
        };
        Ok(Self { grpc, metrics })
    }
}

/// A verifier ready to serve.
#[derive(Debug, Clone)]
pub struct Verifier {
    service: Arc<DecisionService>,
    grpc: grpc::GrpcOptions,
    /// Its RA-TLS identity, with `ra_tls` (after [`Self::attest`]).
    identity: Option<super::identity::AgentIdentity>,
}

impl Verifier {
    /// Load the policies, build the backend and the decision log. Needs a tokio runtime.
    pub fn start(config: &ServeConfig) -> Result<Self, Vec<String>> {
        Ok(Self {
            service: config.build()?,
            grpc: grpc::GrpcOptions::from_config(config),
            identity: None,
        })
    }

    /// With `ra_tls`: get the first RA-TLS certificate from the guest agent and serve
    /// gRPC over TLS with it (renewed while serving), and bind the decision-signing key
    /// to a quote. Fails, naming the agent, when the agent cannot give them. Without
    /// `ra_tls`, nothing changes.
    pub async fn attest(mut self, config: &ServeConfig) -> Result<Self, ServeError> {
        let Some(ra) = &config.ra_tls else {
            return Ok(self);
        };
        let identity = super::identity::AgentIdentity::start(ra).await?;
        self.grpc.tls = Some(identity.server_config()?);
        if let Some(signer) = self.service.signer() {
            identity.bind_signing_key(signer).await?;
        }
        self.identity = Some(identity);
        Ok(self)
    }

    /// The RA-TLS certificate served (leaf first), with `ra_tls`.
    pub fn ra_tls_chain(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        self.identity.as_ref().map(|i| i.chain())
    }

    /// Whether gRPC is served over TLS.
    pub fn tls(&self) -> bool {
        self.grpc.tls.is_some()
    }

    /// The decision engine (tests ask it directly; the CLI reports its policy).
    pub fn service(&self) -> &Arc<DecisionService> {
        &self.service
    }

    /// Serve until `shutdown` completes: gRPC drains the requests in flight, the
    /// metrics endpoint and the policy watcher stop, and every decision made is in the
    /// decision log before this returns.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        if let Some(listener) = listeners.metrics {
            let app = metrics_router(self.service.clone());
            let stop = stopped();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await;
            });
        }
        tokio::spawn(reload::run(self.service.clone(), stopped()));
        let renewal = self
            .identity
            .clone()
            .map(|identity| tokio::spawn(identity.renew()));
        let served = grpc::serve(
            self.service.clone(),
            listeners.grpc,
            self.grpc,
            async move {
                shutdown.await;
                tracing::info!("shutting down: finishing requests in flight");
                let _ = stop_tx.send(true);
            },
        )
        .await;
        if let Some(task) = renewal {
            task.abort();
        }
        let service = self.service;
        let _ = tokio::task::spawn_blocking(move || service.close_log()).await;
        served.map_err(ServeError::Grpc)
    }
}

/// `/metrics` (Prometheus text), `/healthz`, `/health/live` (the process answers),
/// `/health/ready` (policies loaded and the service not draining: 200 with the policy
/// hash, else 503), and the decision-signing keys at `/.well-known/jwks.json` (404 when
/// decisions are not signed).
pub fn metrics_router(service: Arc<DecisionService>) -> axum::Router {
    let ready_service = service.clone();
    let jwks = service.signer().map(|s| s.jwks_json().to_string());
    axum::Router::new()
        .route(
            "/.well-known/jwks.json",
            get(move || {
                let jwks = jwks.clone();
                async move {
                    match jwks {
                        Some(j) => (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/jwk-set+json")],
                            j,
                        ),
                        None => (
                            axum::http::StatusCode::NOT_FOUND,
                            [("content-type", "text/plain")],
                            "this verifier does not sign decisions\n".to_string(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let service = service.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        service.metrics().encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/health/live", get(|| async { "ok\n" }))
        .route(
            "/health/ready",
            get(move || {
                let service = ready_service.clone();
                async move { readiness(&service) }
            }),
        )
}

/// Ready to take decisions: policies loaded (a service never runs without them, but a
/// reload may leave no purpose) and not draining.
fn readiness(service: &DecisionService) -> axum::response::Response {
    use axum::response::IntoResponse;
    let policies = service.policies();
    let draining = *service.draining().borrow();
    let loaded = !policies.purposes().is_empty();
    let ready = loaded && !draining;
    let body = serde_json::json!({
        "status": if ready { "ok" } else { "unavailable" },
        "policies": if loaded { "ok" } else { "no purpose loaded" },
        "draining": draining,
        "policy_hash": policies.hash(),
        "policy_revision": policies.revision(),
    });
    let status = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

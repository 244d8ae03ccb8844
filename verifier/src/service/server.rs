//! The verifier as a running service: gRPC on one listener, `/metrics` and `/healthz` on
//! another (optional), policies reloaded on change, the decision log written out at the
//! end. `teesql-verifier serve` and the test harness both run it from here:
//! [`Verifier::start`] builds it from a [`ServeConfig`], [`Verifier::run`] serves
//! [`Listeners`] until a shutdown future completes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use tokio::net::TcpListener;

use super::config::ServeConfig;
use super::{DecisionService, grpc, reload};

/// Where the verifier serves.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Bind the addresses the configuration names.
    pub async fn bind(config: &ServeConfig) -> Result<Self, String> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("listen {}: {e}", config.listen))?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("metrics_listen {addr}: {e}"))?,
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
    request_timeout: Duration,
}

impl Verifier {
    /// Load the policies, build the backend and the decision log. Needs a tokio runtime.
    pub fn start(config: &ServeConfig) -> Result<Self, Vec<String>> {
        Ok(Self {
            service: config.build()?,
            request_timeout: config.request_timeout,
        })
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
    ) -> Result<(), String> {
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
        let served = grpc::serve(
            self.service.clone(),
            listeners.grpc,
            self.request_timeout,
            async move {
                shutdown.await;
                tracing::info!("shutting down: finishing requests in flight");
                let _ = stop_tx.send(true);
            },
        )
        .await;
        let service = self.service;
        let _ = tokio::task::spawn_blocking(move || service.close_log()).await;
        served.map_err(|e| format!("gRPC server: {e}"))
    }
}

/// `/metrics` (Prometheus text) and `/healthz`.
pub fn metrics_router(service: Arc<DecisionService>) -> axum::Router {
    axum::Router::new()
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
}

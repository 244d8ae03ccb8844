//! `teesql-verifier serve`: the gRPC verifier service.

use std::path::PathBuf;
use std::process::ExitCode;

use axum::routing::get;
use clap::Args;
use teesql_verifier::service::config::{ServeConfig, ServeSettings};
use teesql_verifier::service::{grpc, reload};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; environment variables and flags override it.
    #[arg(long, env = "TEESQL_VERIFIER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServeSettings,
}

pub async fn run(args: ServeArgs) -> ExitCode {
    let file = match &args.config {
        Some(path) => match ServeSettings::from_file(path) {
            Ok(s) => s,
            Err(e) => return super::usage_error(format!("--config {e}")),
        },
        None => ServeSettings::default(),
    };
    let config = match ServeConfig::resolve(args.settings.over(file)) {
        Ok(c) => c,
        Err(errors) => return report(errors),
    };
    let service = match config.build() {
        Ok(s) => s,
        Err(errors) => return report(errors),
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => return super::usage_error(format!("listen {}: {e}", config.listen)),
    };
    let grpc_addr = listener.local_addr().ok();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    if let Some(addr) = config.metrics_listen {
        let metrics_listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => return super::usage_error(format!("metrics_listen {addr}: {e}")),
        };
        let metrics_addr = metrics_listener.local_addr().unwrap_or(addr);
        let svc = service.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let svc = svc.clone();
                    async move {
                        (
                            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                            svc.metrics().encode(),
                        )
                    }
                }),
            )
            .route("/healthz", get(|| async { "ok\n" }));
        let stop = stopped();
        tokio::spawn(async move {
            let _ = axum::serve(metrics_listener, app)
                .with_graceful_shutdown(stop)
                .await;
        });
        tracing::info!(addr = %metrics_addr, "metrics on /metrics");
        super::out(&format!(
            "teesql-verifier metrics on http://{metrics_addr}/metrics\n"
        ));
    }

    tokio::spawn(reload::run(service.clone(), stopped()));
    let policies = service.policies();
    tracing::info!(
        listen = ?grpc_addr,
        policy.hash = %policies.hash(),
        purposes = ?policies.purposes(),
        vm = policies.uses_vm(),
        "teesql-verifier serving"
    );
    if let Some(addr) = grpc_addr {
        super::out(&format!(
            "teesql-verifier listening on {addr} (policy {})\n",
            policies.hash()
        ));
    }

    let shutdown = async move {
        super::shutdown_signal().await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = stop_tx.send(true);
    };
    let served = grpc::serve(service.clone(), listener, config.request_timeout, shutdown).await;
    // Every decision made before the stop is in the log before the process exits.
    let _ = tokio::task::spawn_blocking(move || service.close_log()).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::usage_error(format!("gRPC server: {e}")),
    }
}

fn report(errors: Vec<String>) -> ExitCode {
    for e in &errors {
        eprintln!("teesql-verifier: {e}");
    }
    eprintln!(
        "teesql-verifier: {} configuration error(s); see teesql-verifier serve --help",
        errors.len()
    );
    ExitCode::from(2)
}

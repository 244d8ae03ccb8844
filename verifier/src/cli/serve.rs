//! `teesql-verifier serve`: the gRPC verifier service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use teesql_proto::settings::{Env, ProcessEnv};
use teesql_verifier::backend::BackendKind;
use teesql_verifier::service::config::{ServeConfig, ServeSettings};
use teesql_verifier::service::server::{Listeners, Verifier};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; environment variables and flags override it.
    /// [env: TEESQL_VERIFIER_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServeSettings,
}

pub async fn run(args: ServeArgs) -> ExitCode {
    let config_path = args
        .config
        .or_else(|| ProcessEnv.var("TEESQL_VERIFIER_CONFIG").map(PathBuf::from));
    let file = match &config_path {
        Some(path) => match ServeSettings::from_file(path) {
            Ok(s) => s,
            Err(e) => return super::usage_error(format!("--config {e}")),
        },
        None => ServeSettings::default(),
    };
    let config = match ServeConfig::load(args.settings, &ProcessEnv, file) {
        Ok(c) => c,
        Err(errors) => return report(errors),
    };
    let verifier = match Verifier::start(&config) {
        Ok(v) => v,
        Err(errors) => return report(errors),
    };
    let verifier = match verifier.attest(&config).await {
        Ok(v) => v,
        Err(e) => return super::usage_error(e),
    };
    if let Some(chain) = verifier.ra_tls_chain()
        && let Some(leaf) = chain.first()
    {
        tracing::info!(
            cert_sha256 = %teesql_proto::transport::cert_sha256_hex(leaf),
            "serving gRPC with an RA-TLS certificate from the guest agent"
        );
    }
    let listeners = match Listeners::bind(&config).await {
        Ok(l) => l,
        Err(e) => return super::usage_error(e),
    };
    if let Some(addr) = listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()) {
        tracing::info!(%addr, "metrics on /metrics");
        super::out(&format!(
            "teesql-verifier metrics on http://{addr}/metrics\n"
        ));
    }
    let grpc_addr = listeners.grpc.local_addr().ok();
    // HOST:PORT for TCP (plaintext or TLS), unix:///PATH for a socket.
    let shown = match grpc_addr {
        Some(a) => a.to_string(),
        None => listeners.grpc.url(false),
    };
    let policies = verifier.service().policies();
    let backends = config.backend.chain_name();
    if config.backend.chain.contains(&BackendKind::Simulator) {
        tracing::warn!(
            "backend simulator: quotes are reported unverified (root \"simulator\"); \
             only a development profile may accept them"
        );
    }
    tracing::info!(
        listen = %shown,
        tls = verifier.tls(),
        ra_tls = config.ra_tls.is_some(),
        backend = %backends,
        policy.hash = %policies.hash(),
        purposes = ?policies.purposes(),
        vm = policies.uses_vm(),
        "teesql-verifier serving"
    );
    super::out(&format!(
        "teesql-verifier listening on {shown} (backend {backends}, policy {})\n",
        policies.hash()
    ));
    match verifier
        .run(listeners, teesql_proto::runtime::shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::usage_error(e),
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

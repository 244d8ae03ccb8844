//! `teesql-verifier serve`: the gRPC verifier service.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use teesql_proto::settings::{Env, Problems, ProcessEnv, UnknownKeyHint, read_toml};
use teesql_verifier::backend::BackendKind;
use teesql_verifier::service::config::{ServeConfig, ServeSettings};
use teesql_verifier::service::server::{Listeners, Verifier};

/// `serve`'s arguments; `config check` takes the same.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; environment variables and flags override it.
    /// [env: TEESQL_VERIFIER_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServeSettings,
}

/// The configuration `serve` runs with, as [`resolve`] finds it.
#[derive(Debug)]
pub struct Resolved {
    /// The file read: `--config`, else `TEESQL_VERIFIER_CONFIG`; `None` = no file.
    pub file: Option<PathBuf>,
    /// Flags over the environment over the file, unchecked: the checked configuration
    /// keeps some settings only processed (a key file as the key), `config check` shows
    /// them as given.
    pub settings: ServeSettings,
    /// The checked configuration, or every problem: the file's, the environment's, the
    /// flags'.
    pub config: Result<ServeConfig, Vec<String>>,
}

/// Resolve the file, the environment and the flags, and check them: what `serve` starts
/// from, and what `config check` shows. A key the file cannot have (unknown, or a value of
/// the wrong type) is a problem and is left out, so the other layers are checked too.
pub fn resolve(args: ServeArgs) -> Resolved {
    let path = args
        .config
        .or_else(|| ProcessEnv.var("TEESQL_VERIFIER_CONFIG").map(PathBuf::from));
    let (file, mut problems) = match &path {
        Some(path) => read_toml::<ServeSettings>(
            path,
            UnknownKeyHint::Text("the keys are --help's long flags, `-` as `_`"),
        ),
        None => (ServeSettings::default(), Vec::new()),
    };
    let problems_in_file: Vec<String> = problems
        .drain(..)
        .map(|p| format!("--config {p}"))
        .collect();
    // ServeConfig::load's layering (flags over environment over file), done here once so
    // that what is checked and what `config check` shows are one value. Loading it over
    // the environment again changes nothing (every variable set is in it already); the
    // environment's problems and notices are reported by that load.
    let settings = args
        .settings
        .over(ServeSettings::from_env(&ProcessEnv, &mut Problems::new()))
        .over(file);
    let config = ServeConfig::load(settings.clone(), &ProcessEnv, ServeSettings::default());
    let config = match (config, problems_in_file.is_empty()) {
        (config, true) => config,
        (Ok(_), false) => Err(problems_in_file),
        (Err(errors), false) => Err(problems_in_file.into_iter().chain(errors).collect()),
    };
    Resolved {
        file: path,
        settings,
        config,
    }
}

pub async fn run(args: ServeArgs) -> ExitCode {
    let config = match resolve(args).config {
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
        policy.revision = policies.revision().unwrap_or_default(),
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

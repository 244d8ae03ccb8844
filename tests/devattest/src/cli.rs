//! `teesql-dev agent`: the development guest agent (dstack API) and PCCS, with a seeded
//! DCAP PKI, on its own. Not part of any production build: the verifier has no agent.

use std::path::PathBuf;

use clap::{ArgGroup, Args};

use crate::agent::{AgentConfig, AgentListener, DevAgent, DstackVersion, KeyProviderKind};
use crate::parse_seed;

/// Run the development guest agent (dstack API) and PCCS, with a seeded DCAP PKI.
///
/// Quotes it issues verify only against its own development root: give that root to the
/// verifier with --dev-trust-root and use the policies/dev profile. Never production.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("seed_source").required(true).args(["seed", "seed_file"])))]
#[command(group(ArgGroup::new("listen_on").required(true).multiple(true).args(["socket", "listen"])))]
pub struct AgentArgs {
    /// 32-byte seed (64 hex digits) every key, certificate and measurement derives from.
    /// The same seed gives the same development root, so verifiers keep trusting it.
    #[arg(
        long,
        env = "TEESQL_DEV_SEED",
        value_name = "HEX",
        hide_env_values = true
    )]
    seed: Option<String>,
    /// File holding the seed as hex.
    #[arg(long, value_name = "FILE")]
    seed_file: Option<PathBuf>,
    /// Serve the guest agent API on this unix socket (what dstack-sdk clients use:
    /// export DSTACK_SIMULATOR_ENDPOINT=PATH).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also serve the guest agent API and the PCCS collateral endpoints over HTTP
    /// (e.g. 127.0.0.1:8090; port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The app-compose.json whose SHA-256 is the compose hash. Default: a built-in one.
    #[arg(long, value_name = "FILE")]
    app_compose: Option<PathBuf>,
    /// Write dev-root.der/.pem (the trust root for --dev-trust-root), dev-collateral.json,
    /// dev-app-ca.pem (sslrootcert for clients) and example-ra-tls-cert.pem here.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Also emit the legacy .1 (quote) and .2 (event log) certificate extensions.
    #[arg(long)]
    legacy_cert_ext: bool,
    /// Start of the collateral validity window (unix seconds). Default: today 00:00 UTC.
    #[arg(long, value_name = "UNIX")]
    collateral_issued_at: Option<u64>,
    /// Which dstack to speak: 0.5 (V0 attestations, version 1 events, EmitEvent) or 0.6
    /// (V1 msgpack attestations, version 2 events, gpu-policy-hash, no EmitEvent).
    #[arg(long, value_enum, default_value = "0.5", value_name = "VERSION")]
    dstack: DstackVersion,
    /// The CVM's key provider: kms (the development KMS of the seed; pin its root CA,
    /// printed at start, in data.teesql.kms_roots to trust the app ids it issues) or none
    /// (no KMS: with --dstack 0.6 the app id is whatever --app-id says, which is why an
    /// app id alone proves nothing without a pinned KMS).
    #[arg(long, value_enum, default_value = "kms", value_name = "KIND")]
    key_provider: KeyProviderKind,
    /// The app id the CVM measures (40 hex digits). Default: the compose hash's first
    /// 20 bytes, dstack's derivation for a self-deployed app.
    #[arg(long, value_name = "HEX")]
    app_id: Option<String>,
    /// Rehearse a TCB recovery (README, "TCB recoveries"): Intel's next TCB evaluation
    /// data set (18), which rates this platform OutOfDate (its TDX module, SVN 5, must
    /// rise to 6), is served as `update=early` now and becomes the standard set in DAYS
    /// days; negative: it became standard that many days ago.
    #[arg(long, value_name = "DAYS", allow_negative_numbers = true)]
    tcb_recovery_in_days: Option<i64>,
}

/// Why `teesql-dev agent` could not start or stopped serving; each message names the
/// flag concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Neither `--seed` nor `--seed-file`.
    #[error("give --seed or --seed-file")]
    NoSeed,
    /// The seed file cannot be read.
    #[error("--seed-file {}: {source}", path.display())]
    SeedFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The seed is not 32 bytes of hex.
    #[error(transparent)]
    Seed(#[from] crate::SeedError),
    /// The app-compose file cannot be read.
    #[error("--app-compose {}: {source}", path.display())]
    AppCompose {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `--app-id` is not hex.
    #[error(transparent)]
    AppIdHex(teesql_appraisal::evidence::EvidenceError),
    /// `--app-id` is not 20 bytes.
    #[error("--app-id must be 20 bytes (40 hex digits)")]
    AppIdLength,
    /// The agent could not be made, or failed while serving.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// The `--listen` address cannot be bound.
    #[error("--listen {addr}: {source}")]
    Listen {
        /// The address as given.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bound listener has no address.
    #[error("{0}")]
    LocalAddr(#[source] std::io::Error),
    /// The out directory could not be written.
    #[error("--out-dir: {0}")]
    OutDir(#[source] crate::agent::AgentError),
}

/// Serve until SIGINT or SIGTERM.
pub async fn serve(args: AgentArgs) -> Result<(), ServeError> {
    let seed_text = match (&args.seed, &args.seed_file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|source| ServeError::SeedFile {
            path: f.clone(),
            source,
        })?,
        (None, None) => return Err(ServeError::NoSeed),
    };
    let mut config = AgentConfig::new(parse_seed(&seed_text)?);
    if let Some(path) = &args.app_compose {
        config.app_compose = std::fs::read(path).map_err(|source| ServeError::AppCompose {
            path: path.clone(),
            source,
        })?;
    }
    config.legacy_cert_extensions = args.legacy_cert_ext;
    config.collateral_issued_at = args.collateral_issued_at;
    config.dstack = args.dstack;
    config.key_provider = args.key_provider;
    config.tcb_recovery = args
        .tcb_recovery_in_days
        .map(crate::pki::TcbRecovery::in_days);
    if let Some(text) = &args.app_id {
        let bytes = teesql_appraisal::evidence::decode_hex("--app-id", text, 20)
            .map_err(ServeError::AppIdHex)?;
        config.app_id = Some(bytes.try_into().map_err(|_| ServeError::AppIdLength)?);
    }
    let agent = DevAgent::new(config)?;

    let mut listeners = Vec::new();
    let mut lines = vec!["teesql development guest agent (NOT FOR PRODUCTION) ready".to_string()];
    if let Some(path) = &args.socket {
        listeners.push(AgentListener::Unix(path.clone()));
        lines.push(format!(
            "  guest agent socket: {}   (export DSTACK_SIMULATOR_ENDPOINT={})",
            path.display(),
            path.display()
        ));
    }
    let mut http_url = None;
    if let Some(addr) = &args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen {
                addr: addr.clone(),
                source,
            })?;
        let local = listener.local_addr().map_err(ServeError::LocalAddr)?;
        let url = format!("http://{local}");
        lines.push(format!("  HTTP guest agent + PCCS: {url}"));
        http_url = Some(url);
        listeners.push(AgentListener::Tcp(listener));
    }
    lines.push(format!("  MRTD: {}", agent.mrtd_hex()));
    lines.push(format!(
        "  app id: {}   compose hash: {}",
        agent.app_id_hex(),
        agent.compose_hash_hex()
    ));
    if args.key_provider == KeyProviderKind::Kms {
        lines.push(format!(
            "  KMS root (data.teesql.kms_roots): {}",
            agent.kms_root_hex()
        ));
    }
    if let Some(dir) = &args.out_dir {
        agent.write_out_dir(dir).await.map_err(ServeError::OutDir)?;
        lines.push(format!("  wrote dev-root.der, dev-collateral.json, dev-app-ca.pem, example-ra-tls-cert.pem to {}", dir.display()));
        lines.push(format!(
            "  try: teesql-verifier verify --cert {} --dev-trust-root {} {} --policy-dir policies/dev",
            dir.join("example-ra-tls-cert.pem").display(),
            dir.join("dev-root.der").display(),
            match &http_url {
                Some(url) => format!("--pccs-url {url}"),
                None => format!("--collateral-dir {}", dir.display()),
            }
        ));
    }
    // Shutdown first, so a signal during start-up is not lost; then report readiness.
    let shutdown = teesql_proto::runtime::shutdown_signal();
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout
            .write_all((lines.join("\n") + "\n").as_bytes())
            .and_then(|()| stdout.flush());
    }
    Ok(agent.serve(listeners, shutdown).await?)
}

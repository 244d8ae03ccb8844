//! `teesql-sidecar`: the Postgres front door of a TeeSQL database CVM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use teesql_sidecar::Sidecar;
use teesql_sidecar::config::{Overrides, ProcessEnv, SidecarConfig, SidecarFile};

/// TeeSQL sidecar: Postgres over mutual RA-TLS on 5433 (every handshake judged by the
/// verifier, the cluster secret checked in constant time), /health, /attestation and
/// /metrics on 8080.
#[derive(Debug, Parser)]
#[command(name = "teesql-sidecar", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (e.g. info, teesql_sidecar=debug); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Postgres clients (port 5433) and the admin HTTP endpoints (port 8080).
    ///
    /// Secrets come from TEESQL_READ_SECRET / TEESQL_READWRITE_SECRET (64 hex digits) or
    /// files named in the config. The server certificate comes from the dstack guest
    /// agent (DSTACK_SIMULATOR_ENDPOINT, else /var/run/dstack.sock). SIGTERM/SIGINT stop
    /// accepting and let sessions drain.
    Serve(Box<ServeArgs>),
    /// Mode A: a localhost forwarder for applications. Any Postgres client connects in
    /// plaintext (sslmode=disable) to --listen; each connection goes over mutual RA-TLS
    /// to the sidecar at --to, and the verifier judges the server's attestation before a
    /// single byte is relayed. A rejected server gives the client one FATAL with the
    /// reasons.
    Forward(Box<ForwardArgs>),
    /// Create the roles of the auth map in Postgres (idempotent), with SEED.md's
    /// privileges, connecting as the backend admin user; and in each database the schema
    /// `teesql` behind `teesql.identity()` (each session's attested identity).
    Provision {
        #[command(flatten)]
        common: Common,
        /// Database(s) to grant CONNECT and schema privileges in [default: postgres].
        #[arg(long = "database", value_name = "NAME")]
        databases: Vec<String>,
        /// A policy data file (data.json) whose `teesql.tenants` names tenant roles and
        /// their privileges (`{"acme": {"role": "tenant_acme", "privileges":
        /// "readwrite"}}`): those roles are created too.
        #[arg(long, value_name = "FILE")]
        tenants: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// TOML configuration file; environment variables and flags override it.
    #[arg(long, env = "TEESQL_SIDECAR_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Postgres host (or unix socket directory) [default: 127.0.0.1].
    #[arg(long, value_name = "HOST")]
    backend_host: Option<String>,
    /// Postgres port [default: 5432].
    #[arg(long, value_name = "PORT")]
    backend_port: Option<u16>,
    /// How the sidecar logs in to Postgres: trust, password, md5 or scram-sha-256
    /// [default: trust; env TEESQL_BACKEND_METHOD].
    #[arg(long, value_name = "METHOD")]
    backend_method: Option<String>,
}

#[derive(Debug, Args)]
struct ForwardArgs {
    /// The sidecar to reach, host:port (e.g. your-cluster.teesql.com:5433). Without it,
    /// the leader the signed manifest names (--manifest-domain or --manifest-txt).
    #[arg(long, value_name = "HOST:PORT")]
    to: Option<String>,
    /// Local address applications connect to (plaintext; keep it on loopback)
    /// [default: 127.0.0.1:6432].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    #[command(flatten)]
    verifier: teesql_sidecar::config::VerifierSettings,
    /// Which verifier policy judges the server [default: client].
    #[arg(long, value_name = "PURPOSE")]
    policy: Option<String>,
    /// MRTD the server must have (96 hex digits, optional 0x); repeat for several
    /// [default: env EXPECTED_MRTD, comma-separated].
    #[arg(long = "expected-mrtd", value_name = "HEX", value_delimiter = ',')]
    expected_mrtds: Vec<String>,
    /// Compose hash the server must run (64 hex digits, the SHA-256 of its app-compose,
    /// attested through RTMR3); repeat for several.
    #[arg(long = "expected-compose-hash", value_name = "HEX")]
    expected_compose_hashes: Vec<String>,
    /// dstack app id the server must have (40 hex digits); repeat for several. An app id
    /// identifies a server only when a KMS the verifier's policy pins (data.teesql.kms_roots)
    /// issued it, or when it is the compose hash's first 20 bytes: a dstack 0.6 CVM without a
    /// KMS measures whatever app id its operator chooses. Give --expected-compose-hash beside
    /// it, or such a server is refused (app_id_not_attested).
    #[arg(long = "expected-app-id", value_name = "HEX")]
    expected_app_ids: Vec<String>,
    /// Start even though no compose hash, app id or manifest signer identifies the
    /// server: only when the verifier's own policy pins it (an MRTD alone is shared by
    /// every CVM on the same dstack image).
    #[arg(long)]
    allow_unpinned_server: bool,
    /// Relay a server's request for a cleartext or MD5 password (the cluster secret, or a
    /// replayable hash of it). A TeeSQL sidecar never asks; off by default.
    #[arg(long)]
    allow_cleartext_upstream: bool,
    /// TLS server name (SNI) to send [default: the host dialled].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// The signed leader manifest at _teesql-leader.DOMAIN (DNS TXT): every record is
    /// tried until one verifies; the server must be the leader it names. Without --to,
    /// the forwarder dials that leader's leader_url.
    #[arg(long, value_name = "DOMAIN", conflicts_with = "manifest_txt")]
    manifest_domain: Option<String>,
    /// The manifest as text, instead of DNS.
    #[arg(long, value_name = "TXT")]
    manifest_txt: Option<String>,
    /// A manifest signer this application trusts (0x + 40 hex); repeat for several.
    #[arg(long = "manifest-signer", value_name = "ADDR")]
    manifest_signers: Vec<String>,
    /// DNS server for the manifest lookup, IP or IP:PORT [default: the system's resolver].
    #[arg(long, value_name = "ADDR")]
    dns_server: Option<String>,
    /// Guest agent for the client certificate [default: DSTACK_SIMULATOR_ENDPOINT, else the dstack socket].
    #[arg(long, value_name = "ENDPOINT")]
    agent: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// Postgres listen address [default: 0.0.0.0:5433].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Admin HTTP listen address, or "off" [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Where the verifier is and how it is trusted (over `[verifier]` in the file).
    #[command(flatten)]
    verifier: teesql_sidecar::config::VerifierSettings,
    /// Client authentication: scram-sha-256 or cleartext [default: scram-sha-256; env
    /// TEESQL_AUTH_METHOD].
    #[arg(long, value_name = "METHOD")]
    auth_method: Option<String>,
    /// Server certificate names (comma-separated) [default: localhost,127.0.0.1].
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    alt_names: Option<Vec<String>>,
    /// Most concurrent client connections [default: 1000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = cli
        .log
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    teesql_proto::runtime::init_tracing(&filter, "info");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("teesql-sidecar: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Forward(args) => forward(*args).await,
            Command::Provision {
                common,
                databases,
                tenants,
            } => provision(common, databases, tenants).await,
        }
    })
}

fn load(common: &Common, mut overrides: Overrides) -> Result<SidecarConfig, ExitCode> {
    let file = match &common.config {
        Some(p) => SidecarConfig::read_file(p).map_err(|e| fail(&[e]))?,
        None => SidecarFile::default(),
    };
    overrides.backend_host = common.backend_host.clone();
    overrides.backend_port = common.backend_port;
    overrides.backend_method = common.backend_method.clone();
    SidecarConfig::resolve(file, &ProcessEnv, overrides).map_err(|errors| fail(&errors))
}

fn fail(errors: &[String]) -> ExitCode {
    for e in errors {
        eprintln!("teesql-sidecar: {e}");
    }
    if errors.len() > 1 {
        eprintln!(
            "teesql-sidecar: {} configuration errors; see --help",
            errors.len()
        );
    }
    ExitCode::from(2)
}

async fn serve(args: ServeArgs) -> ExitCode {
    let config = match load(
        &args.common,
        Overrides {
            listen: args.listen,
            admin_listen: args.admin_listen,
            verifier: args.verifier,
            auth_method: args.auth_method,
            alt_names: args.alt_names,
            max_connections: args.max_connections,
            ..Overrides::default()
        },
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => return fail(&[format!("listen {}: {e}", config.listen)]),
    };
    let admin = match config.admin_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => return fail(&[format!("admin listen {addr}: {e}")]),
        },
        None => None,
    };
    let public = match config.public_listen {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => return fail(&[format!("public listen {addr}: {e}")]),
        },
        None => None,
    };
    let sidecar = match Sidecar::start(config.clone()).await {
        Ok(s) => s,
        Err(e) => return fail(&[e]),
    };
    tracing::info!(
        listen = %config.listen,
        admin = ?config.admin_listen,
        public = ?config.public_listen,
        verifier = %config.verifier_url,
        backend = %config.backend.addr.describe(),
        "teesql-sidecar serving"
    );
    let listeners = teesql_sidecar::Listeners {
        postgres: listener,
        admin,
        public,
    };
    sidecar.run(listeners, shutdown_signal()).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn forward(args: ForwardArgs) -> ExitCode {
    let settings = teesql_sidecar::forward::ForwardSettings {
        listen: args.listen,
        to: args.to,
        server_name: args.server_name,
        verifier: args.verifier,
        purpose: args.policy,
        expected_mrtds: args.expected_mrtds,
        expected_compose_hashes: args.expected_compose_hashes,
        expected_app_ids: args.expected_app_ids,
        allow_cleartext_upstream: args.allow_cleartext_upstream,
        allow_unpinned_server: args.allow_unpinned_server,
        manifest_domain: args.manifest_domain,
        manifest_txt: args.manifest_txt,
        manifest_signers: args.manifest_signers,
        dns_server: args.dns_server,
    };
    let config = match settings.resolve(&ProcessEnv) {
        Ok(c) => c,
        Err(errors) => return fail(&errors),
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => return fail(&[format!("--listen {}: {e}", config.listen)]),
    };
    if config.manifest.is_some() && config.manifest_signers.is_empty() {
        tracing::warn!(
            "a manifest is checked but no --manifest-signer is given: the verifier's policy must pin the signer"
        );
    }
    let server = match (&config.to, &config.manifest) {
        (Some(to), _) => to.clone(),
        (None, Some(teesql_sidecar::forward::ManifestSource::Dns(d))) => {
            format!("the leader named at _teesql-leader.{d}")
        }
        (None, _) => "the leader the manifest names".to_string(),
    };
    let verifier = config.verifier_url.clone();
    let config_listen = config.listen;
    let forwarder =
        match teesql_sidecar::forward::Forwarder::start(config, args.agent.as_deref()).await {
            Ok(f) => f,
            Err(e) => return fail(&[e]),
        };
    let local = listener.local_addr().unwrap_or(config_listen);
    println!(
        "teesql forwarder: postgresql://USER:SECRET@{local}/DB?sslmode=disable -> mutual RA-TLS -> {server} (judged by {verifier})"
    );
    forwarder.run(listener, shutdown_signal()).await;
    ExitCode::SUCCESS
}

async fn provision(
    common: Common,
    mut databases: Vec<String>,
    tenants: Option<std::path::PathBuf>,
) -> ExitCode {
    let config = match load(&common, Overrides::default()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if databases.is_empty() {
        databases.push("postgres".into());
    }
    let tenants = match tenants.map(|p| teesql_sidecar::postgres::provision::read_tenants(&p)) {
        None => Vec::new(),
        Some(Ok(t)) => t,
        Some(Err(e)) => return fail(&[e]),
    };
    match teesql_sidecar::postgres::provision::provision_with(&config, &databases, &tenants).await {
        Ok(done) => {
            println!(
                "provisioned roles in {}: created [{}], updated [{}]",
                databases.join(", "),
                done.created.join(", "),
                done.updated.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&[e]),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    teesql_proto::runtime::shutdown_signal().await;
    tracing::info!("shutting down: no new connections; draining sessions");
}

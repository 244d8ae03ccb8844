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
    /// Log lines as `text` or `json` (one object per line, for log shippers; a session's
    /// lines carry its `session_id`, the id the verifier logs its admission decision
    /// under) [default: text] [env: TEESQL_LOG_FORMAT]
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<teesql_proto::runtime::LogFormat>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Postgres clients (port 5433) and the admin HTTP endpoints (port 8080).
    ///
    /// Secrets come from TEESQL_READ_SECRET / TEESQL_READWRITE_SECRET (64 hex digits) or
    /// files named in the config. The server certificate comes from the dstack guest
    /// agent (DSTACK_SIMULATOR_ENDPOINT, else /var/run/dstack.sock). SIGTERM/SIGINT stop
    /// accepting and let sessions drain. `config check` takes the same arguments and
    /// checks them without serving.
    Serve(Box<ServeArgs>),
    /// Check the configuration `serve` would run with, without serving.
    #[command(subcommand)]
    Config(ConfigCommand),
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

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Resolve --config FILE, the environment and the flags exactly as `serve` would:
    /// the secret files and variables read, the verifier's identity policy loaded, the
    /// verifier URLs and their trust checked. Nothing is bound, and neither the guest
    /// agent, the verifier nor Postgres is asked anything.
    ///
    /// Prints the resolved settings (every secret as <set> or <unset>, with where it
    /// comes from, never its value), then `configuration OK`. Exit status: 0 the
    /// configuration is good, 2 it is not: every problem on stderr, one per line.
    Check(Box<ServeArgs>),
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
    let format = match teesql_proto::runtime::LogFormat::resolve(cli.log_format) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("teesql-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    teesql_proto::runtime::init_tracing(&filter, "info", format);
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
            Command::Config(ConfigCommand::Check(args)) => config_check(*args).await,
            Command::Forward(args) => forward(*args).await,
            Command::Provision {
                common,
                databases,
                tenants,
            } => provision(common, databases, tenants).await,
        }
    })
}

/// The configuration: --config FILE, then the environment, then flags; every problem,
/// the file's included (a key the file cannot have is left out, so the rest is checked).
fn resolve(common: &Common, mut overrides: Overrides) -> Result<SidecarConfig, Vec<String>> {
    let (file, mut problems) = match &common.config {
        Some(p) => SidecarConfig::read_file_checked(p),
        None => (SidecarFile::default(), Vec::new()),
    };
    overrides.backend_host = common.backend_host.clone();
    overrides.backend_port = common.backend_port;
    overrides.backend_method = common.backend_method.clone();
    match SidecarConfig::resolve(file, &ProcessEnv, overrides) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(problems),
        Err(errors) => {
            problems.extend(errors);
            Err(problems)
        }
    }
}

fn load(common: &Common, overrides: Overrides) -> Result<SidecarConfig, ExitCode> {
    resolve(common, overrides).map_err(|errors| fail(&errors))
}

/// What `serve` runs with (and `config check` shows).
fn resolve_serve(args: ServeArgs) -> Result<SidecarConfig, Vec<String>> {
    resolve(
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
    )
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
    let config = match resolve_serve(args) {
        Ok(c) => c,
        Err(errors) => return fail(&errors),
    };
    let listener =
        match teesql_sidecar::frontend::server::bind(config.listen, config.postgres_threads > 0) {
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
        Err(e) => return fail(&[e.to_string()]),
    };
    // The addresses bound, so a port 0 in the configuration shows the one chosen.
    let bound = |l: &tokio::net::TcpListener| {
        l.local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into())
    };
    tracing::info!(
        listen = %bound(&listener),
        admin = %admin.as_ref().map(bound).unwrap_or_else(|| "off".into()),
        public = %public.as_ref().map(bound).unwrap_or_else(|| "off".into()),
        postgres_threads = config.postgres_threads,
        verifier = %config.verifier_url,
        backend = %config.backend.addr.describe(),
        "teesql-sidecar serving"
    );
    let listeners = teesql_sidecar::Listeners {
        postgres: listener,
        admin,
        public,
    };
    if let Err(e) = sidecar.run(listeners, shutdown_signal()).await {
        return fail(&[format!("listen {}: {e}", config.listen)]);
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// `config check`: [`resolve_serve`], then what `Sidecar::start` checks before it asks
/// the guest agent for a certificate (the verifier client: its URLs and trust, nothing
/// dialled). The settings on stdout, or every problem on stderr and exit status 2.
async fn config_check(args: ServeArgs) -> ExitCode {
    let file = args.common.config.clone();
    let problems = match resolve_serve(args) {
        Ok(config) => match teesql_sidecar::verifier::VerifierClient::new(
            &config.verifier_url,
            config.verifier_trust.as_ref(),
            config.verifier_timeout,
        ) {
            Ok(_) => {
                let from = match &file {
                    Some(f) => format!("--config {}, then the environment", f.display()),
                    None => "no --config file; the environment".into(),
                };
                println!(
                    "# teesql-sidecar serve: {from}, then flags\n\
                     # secrets are shown as <set> or <unset>, never their values\n\n{}\n\
                     configuration OK",
                    config.render()
                );
                return ExitCode::SUCCESS;
            }
            Err(e) => vec![e.to_string()],
        },
        Err(errors) => errors,
    };
    // One line each; a policy's compiler diagnostic keeps its lines, indented.
    for p in &problems {
        eprintln!("teesql-sidecar: {}", p.trim_end().replace('\n', "\n    "));
    }
    eprintln!("teesql-sidecar: {} problem(s)", problems.len());
    ExitCode::from(2)
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
            Err(e) => return fail(&[e.to_string()]),
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
        Some(Err(e)) => return fail(&[e.to_string()]),
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
        Err(e) => fail(&[e.to_string()]),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    teesql_proto::runtime::shutdown_signal().await;
    tracing::info!("shutting down: no new connections; draining sessions");
}

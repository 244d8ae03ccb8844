//! `teesql-dev`: a whole TeeSQL cluster on this machine, in one command.
//!
//! Starts a temporary Postgres (roles provisioned), the development guest agent (seeded
//! DCAP PKI, dstack API, PCCS), the verifier (development trust root, development policy
//! profile), the sidecar (5433 and 8080) and a mode A forwarder (6432), then prints
//! working connection strings. Ctrl-C stops everything and removes temporary state.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use teesql_devattest::agent::{AgentConfig, derived_key};
use teesql_tests::cluster::{Cluster, ClusterOptions, VerifierTransport};
use teesql_tests::postgres::{PgOptions, pg_bin_dir};

/// Run a local TeeSQL cluster: Postgres + dev guest agent + verifier + sidecar (+ a mode A
/// forwarder), and print connection strings. Development only: the attestation is
/// signed by a development PKI that production policies refuse.
#[derive(Debug, Parser)]
#[command(name = "teesql-dev", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Sidecar Postgres port (mode B/D clients connect here); 0 = any free port.
    #[arg(long, default_value_t = 5433)]
    port: u16,
    /// Sidecar HTTP port: /health, /attestation, /metrics.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// How the verifier serves gRPC: unix (a socket in the state directory, as in the
    /// deployment example), tcp (127.0.0.1:--verifier-port) or tls (TCP with a certificate
    /// from a CA teesql-dev makes; its path is TEESQL_VERIFIER_CA_FILE in the env file) or
    /// ra-tls (TCP with the verifier's own RA-TLS certificate from the development agent,
    /// trusted by its quote: TEESQL_VERIFIER_IDENTITY_* in the env file).
    #[arg(long, value_enum, default_value = "unix")]
    verifier: DevVerifier,
    /// Verifier gRPC port, with --verifier tcp or tls.
    #[arg(long, default_value_t = 50051)]
    verifier_port: u16,
    /// Verifier HTTP port on 127.0.0.1: /metrics, /healthz; 0 = any free port.
    #[arg(long, default_value_t = 0)]
    verifier_metrics_port: u16,
    /// Development guest agent HTTP port (dstack API and PCCS).
    #[arg(long, default_value_t = 8090)]
    agent_port: u16,
    /// Mode A forwarder port (plaintext, localhost only).
    #[arg(long, default_value_t = 6432)]
    forward_port: u16,
    /// Keep Postgres data and dev state here between runs (default: a temporary directory,
    /// removed on exit).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Also write the connection settings as KEY=value lines here, once everything answers.
    #[arg(long, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// 32-byte seed (64 hex digits) of the development PKI, secrets and keys. Not a secret:
    /// the default is fixed so that runs are reproducible.
    #[arg(long, value_name = "HEX")]
    seed: Option<String>,
    /// Policy profile: a directory name under policies/ or a path [default: dev].
    #[arg(long, default_value = "dev")]
    profile: String,
    /// The verifier's quote backend(s): dcap (the dev PKI's PCCS), ita (a mock Intel
    /// Trust Authority on loopback, appraising the dev PKI's quotes), or a chain such
    /// as dcap,ita.
    #[arg(long, default_value = "dcap", value_name = "NAMES")]
    backend: String,
    /// Log filter for the services (e.g. info, teesql_sidecar=debug).
    #[arg(long, default_value = "warn")]
    log: String,
    /// Rehearse a TCB recovery (README, "TCB recoveries"): the dev PCCS publishes a TCB
    /// set that rates this platform OutOfDate (TDX module 5 -> 6) as Intel's early set
    /// now, and as the standard one in DAYS days (negative: DAYS ago). Watch the
    /// decisions' warnings, the verifier's tcb metrics and `teesql-verifier tcb report`.
    #[arg(long, value_name = "DAYS", allow_negative_numbers = true)]
    tcb_recovery_in_days: Option<i64>,
}

/// How teesql-dev's verifier serves gRPC.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DevVerifier {
    Unix,
    Tcp,
    Tls,
    RaTls,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Only the development guest agent (dstack API) and PCCS, with a seeded DCAP PKI.
    Agent(Box<teesql_devattest::cli::AgentArgs>),
}

const DEFAULT_SEED: [u8; 32] = *b"teesql-dev-seed-not-a-secret-0x1";

fn main() -> ExitCode {
    let args = Args::parse();
    teesql_proto::runtime::init_tracing(&args.log, "warn", teesql_proto::runtime::LogFormat::Text);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("teesql-dev: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command {
        Some(Command::Agent(agent)) => rt
            .block_on(teesql_devattest::cli::serve(*agent))
            .map_err(|e| anyhow::anyhow!("{e}")),
        None => rt.block_on(run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("teesql-dev: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The flags that tell a forwarder how to trust this cluster's verifier: its CA with
/// `--verifier tls`, its attestation with `ra-tls`, nothing on a unix socket or plain TCP.
fn verifier_trust_flags(cluster: &Cluster) -> String {
    let mut flags = String::new();
    if let Some(ca) = &cluster.verifier_ca {
        flags += &format!(" --verifier-ca-file {}", ca.display());
    }
    if let Some(t) = &cluster.verifier_identity {
        let paths = [
            ("policy-dir", &t.identity_policy_dir),
            ("trust-root", &t.identity_trust_root),
            ("dev-trust-root", &t.identity_dev_trust_root),
        ];
        for (flag, path) in paths {
            if let Some(p) = path {
                flags += &format!(" \\\n      --verifier-identity-{flag} {}", p.display());
            }
        }
        if let Some(url) = &t.identity_pccs_url {
            flags += &format!(" \\\n      --verifier-identity-pccs-url {url}");
        }
    }
    flags
}

/// The port itself if free, else any free port (with a notice).
fn port_or_free(what: &str, port: u16) -> anyhow::Result<u16> {
    if port == 0 {
        return Ok(0);
    }
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(port),
        Err(_) => {
            let free = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            eprintln!("teesql-dev: port {port} ({what}) is taken; using {free} instead");
            Ok(free)
        }
    }
}

fn step(what: &str) -> Instant {
    eprint!("teesql-dev: {what} … ");
    let _ = std::io::stderr().flush();
    Instant::now()
}

fn done(t: Instant) {
    eprintln!("ok ({:.1} s)", t.elapsed().as_secs_f64());
}

async fn run(args: Args) -> anyhow::Result<()> {
    // A missing Postgres installation is the commonest first-run problem: say how to fix it.
    pg_bin_dir().map_err(|e| anyhow::anyhow!("{e}"))?;
    let seed: [u8; 32] = match &args.seed {
        Some(s) => teesql_devattest::parse_seed(s).map_err(|e| anyhow::anyhow!("--seed: {e}"))?,
        None => DEFAULT_SEED,
    };
    let sidecar_port = port_or_free("sidecar", args.port)?;
    let http_port = port_or_free("sidecar HTTP", args.http_port)?;
    let verifier_port = match args.verifier {
        DevVerifier::Unix => 0,
        _ => port_or_free("verifier", args.verifier_port)?,
    };
    let verifier_metrics_port = port_or_free("verifier metrics", args.verifier_metrics_port)?;
    let agent_port = port_or_free("dev agent", args.agent_port)?;
    let forward_port = port_or_free("forwarder", args.forward_port)?;
    // The port of the "run your own" forwarder teesql-dev prints (it does not start it):
    // the next one after its own forwarder's, or any free one when that is 0.
    let own_forward_port = match forward_port {
        0 => TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
        p => port_or_free("the example forwarder", p.saturating_add(1))?,
    };

    let (state_dir, data_dir) = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            let d = d.canonicalize()?;
            (Some(d.join("state")), Some(d.join("pgdata")))
        }
        None => (None, None),
    };
    // Mode B's superuser password comes from the agent's GetKey("pg/superuser"), as in a
    // dstack CVM.
    let superuser_password = hex::encode(
        derived_key(&AgentConfig::new(seed), "pg/superuser").map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    let pg = PgOptions {
        hba: vec![
            "local all all trust".into(),
            "host all postgres 127.0.0.1/32 scram-sha-256".into(),
            "host all all 127.0.0.1/32 trust".into(),
        ],
        superuser_password: Some(superuser_password.clone()),
        data_dir,
        ..PgOptions::default()
    };
    let t = step("starting Postgres, the dev agent, the verifier and the sidecar");
    let cluster = Cluster::start(ClusterOptions {
        profile: args.profile.clone(),
        sidecar_toml: "[auth]\npassthrough_roles = [\"postgres\"]\n".into(),
        pg,
        sidecar_port: Some(sidecar_port),
        admin_port: Some(http_port),
        verifier_port: Some(verifier_port),
        verifier_metrics_port: Some(verifier_metrics_port),
        agent_port: Some(agent_port),
        seed,
        agent: args.tcb_recovery_in_days.map(|days| AgentConfig {
            tcb_recovery: Some(teesql_devattest::pki::TcbRecovery::in_days(days)),
            ..AgentConfig::new(seed)
        }),
        state_dir,
        decision_log: "off".into(),
        backend: args.backend.clone(),
        verifier_transport: match args.verifier {
            DevVerifier::Unix => VerifierTransport::Unix,
            DevVerifier::Tcp => VerifierTransport::Loopback,
            DevVerifier::Tls => VerifierTransport::Tls,
            DevVerifier::RaTls => VerifierTransport::RaTls,
        },
        ..ClusterOptions::default()
    })
    .await?;
    done(t);

    let t = step("checking that everything answers");
    let health = format!(
        "http://{}/health",
        cluster
            .admin_addr
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = reqwest::get(&health)
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ok {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("the sidecar's {health} did not report healthy within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client_dir = cluster.state_dir.join("client");
    std::fs::create_dir_all(&client_dir)?;
    let (client_cert, client_key) = cluster.client_certificate(&client_dir).await?;
    let forward_addr = cluster
        .forward(teesql_sidecar::forward::ForwardSettings {
            listen: Some(format!("127.0.0.1:{forward_port}")),
            expected_mrtds: vec![cluster.agent.agent.mrtd_hex()],
            ..cluster.forward_settings()
        })
        .await?;
    // One real round trip through the sidecar before saying it works.
    let probe = teesql_tests::clients::psql(
        &cluster.dsn("teesql_read", &cluster.read_secret, "postgres", "require"),
        &["-c", "SELECT 1"],
    )
    .await;
    if !probe.status.success() {
        anyhow::bail!(
            "a test connection through the sidecar failed: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
    }
    done(t);

    let host = "127.0.0.1";
    let port = cluster.sidecar_addr.port();
    let ca = cluster.agent.app_ca_path();
    let rw = &cluster.readwrite_secret;
    let ro = &cluster.read_secret;
    let mode_d = cluster.dsn("teesql_readwrite", rw, "postgres", "require");
    let mode_b = format!(
        "postgresql://postgres:{superuser_password}@{host}:{port}/postgres?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        ca.display(),
        client_cert.display(),
        client_key.display()
    );
    let mode_a =
        format!("postgresql://teesql_readwrite:{rw}@{forward_addr}/postgres?sslmode=disable");
    let mode_a_own = format!(
        "postgresql://teesql_readwrite:{rw}@127.0.0.1:{own_forward_port}/postgres?sslmode=disable"
    );
    let verifier_url = cluster.verifier_url.clone();
    let verifier_metrics_url = cluster
        .verifier_metrics_addr
        .map(|a| format!("http://{a}/metrics"))
        .unwrap_or_default();
    let backend_dsn = format!(
        "postgresql://postgres:{superuser_password}@127.0.0.1:{}/postgres?sslmode=disable",
        cluster.pg.port
    );
    println!(
        "
TeeSQL local cluster is up (development attestation: NOT FOR PRODUCTION)

  sidecar (Postgres over TLS)  {host}:{port}
  sidecar HTTP                 http://{host}:{http}/health  /attestation  /metrics
  verifier (gRPC)              {verifier_url}   profile: {profile}   backend: {backend}{ita}
  verifier metrics             {verifier_metrics_url}
  dev guest agent              {agent}   socket: {socket}
  mode A forwarder             {forward_addr}

Cluster secrets (the password is the secret):
  teesql_readwrite  {rw}
  teesql_read       {ro}   (also accepts the read-write secret)

Mode D (sslmode=require, no client certificate):
  psql \"{mode_d}\"

Mode B (verify-full, dev CA, agent client certificate; superuser password from GetKey(pg/superuser)):
  psql \"{mode_b}\"

Mode A (any driver, plaintext to the local forwarder, which does mutual RA-TLS):
  psql \"{mode_a}\"
  run your own: DSTACK_SIMULATOR_ENDPOINT={socket} cargo run -q -p teesql-sidecar -- forward \\
      --to {host}:{port} --server-name localhost --expected-compose-hash {compose_hash} \\
      --verifier {verifier_url}{verifier_ca} --listen 127.0.0.1:{own_forward_port}
  then, in another shell:
  psql \"{mode_a_own}\"

For dstack SDK clients:  export DSTACK_SIMULATOR_ENDPOINT={socket}
Dev CA (sslrootcert):    {ca}

Ctrl-C stops everything{keep}.",
        http = cluster.admin_addr.map(|a| a.port()).unwrap_or(0),
        verifier_ca = verifier_trust_flags(&cluster),
        compose_hash = cluster.agent.agent.compose_hash_hex(),
        profile = args.profile,
        backend = args.backend,
        ita = cluster
            .ita
            .as_ref()
            .map(|m| format!("\n  mock Intel Trust Authority   {}  (JWKS {})", m.url, m.jwks_url))
            .unwrap_or_default(),
        agent = cluster.agent.url,
        socket = cluster.agent.socket.display(),
        ca = ca.display(),
        keep = if args.data_dir.is_some() { " (the data directory is kept)" } else { " and removes its temporary files" },
    );
    if let Some(path) = &args.env_file {
        let identity_setting =
            |get: fn(&teesql_sidecar::verifier::TrustSettings) -> Option<String>| {
                cluster
                    .verifier_identity
                    .as_ref()
                    .and_then(get)
                    .unwrap_or_default()
            };
        let lines = [
            ("DATABASE_URL", mode_d.clone()),
            ("TEESQL_HOST", host.to_string()),
            ("TEESQL_PORT", port.to_string()),
            (
                "TEESQL_HTTP_PORT",
                cluster
                    .admin_addr
                    .map(|a| a.port())
                    .unwrap_or(0)
                    .to_string(),
            ),
            ("TEESQL_READ_SECRET", ro.clone()),
            ("TEESQL_READWRITE_SECRET", rw.clone()),
            ("TEESQL_CA_PEM", ca.display().to_string()),
            ("TEESQL_VERIFIER_URL", verifier_url.clone()),
            ("TEESQL_VERIFIER_METRICS_URL", verifier_metrics_url.clone()),
            (
                "TEESQL_VERIFIER_CA_FILE",
                cluster
                    .verifier_ca
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            (
                "TEESQL_VERIFIER_IDENTITY_POLICY_DIR",
                identity_setting(|t| {
                    t.identity_policy_dir
                        .as_ref()
                        .map(|p| p.display().to_string())
                }),
            ),
            (
                "TEESQL_VERIFIER_IDENTITY_DEV_TRUST_ROOT",
                identity_setting(|t| {
                    t.identity_dev_trust_root
                        .as_ref()
                        .map(|p| p.display().to_string())
                }),
            ),
            (
                "TEESQL_VERIFIER_IDENTITY_PCCS_URL",
                identity_setting(|t| t.identity_pccs_url.clone()),
            ),
            (
                "TEESQL_COMPOSE_HASH",
                cluster.agent.agent.compose_hash_hex(),
            ),
            ("TEESQL_FORWARD_URL", mode_a.clone()),
            ("TEESQL_CLIENT_CERT", client_cert.display().to_string()),
            ("TEESQL_CLIENT_KEY", client_key.display().to_string()),
            (
                "DSTACK_SIMULATOR_ENDPOINT",
                cluster.agent.socket.display().to_string(),
            ),
            ("TEESQL_BACKEND_DSN", backend_dsn.clone()),
            ("TEESQL_SUPERUSER_PASSWORD", superuser_password.clone()),
        ];
        // A setting that does not apply (the verifier CA without TLS) is left out.
        let text: String = lines
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        // Written whole, then renamed: a reader never sees half a file. It holds the
        // cluster secrets, so only its owner may read it.
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
        }
        std::fs::rename(&tmp, path)?;
    }

    teesql_proto::runtime::shutdown_signal().await;
    eprintln!("\nteesql-dev: stopping …");
    if let Some(path) = &args.env_file {
        let _ = std::fs::remove_file(path);
    }
    drop(cluster);
    eprintln!("teesql-dev: stopped");
    Ok(())
}

//! Sidecar benchmark: pgbench through each front door, measured in one run.
//!
//! - Postgres itself over TLS (`ssl=on`, the baseline);
//! - PgBouncer (Debian's package, client TLS, session pool);
//! - the TeeSQL sidecar with full verification (pgbench presents an RA-TLS client
//!   certificate; every connection is judged by the verifier, whose profile requires it);
//! - Postgres over TLS again, with pgbench given the same certificate files as for the
//!   sidecar (libpq reads them for every connection even though Postgres asks for none):
//!   the client's own share of a mutual-TLS connection, beside the plain baseline.
//!
//! All authenticate clients with SCRAM-SHA-256; PgBouncer and the sidecar reach
//! Postgres over its unix socket. For each: select-only TPS with 8 clients, and the
//! connect-per-transaction rate (`pgbench -C`). Then the sidecar's memory per idle session (RSS with 1,000 idle
//! sessions). First of all, in this process: a DCAP verification of a platform never seen
//! against dcap-qvl's own, and a warm decision against a Trustee-style one
//! (`teesql_verifier::measure`). At the end, one table of the performance goals (issue
//! 29), each against its baseline of the same run. Build first: `cargo build --release -p teesql-verifier -p teesql-sidecar -p teesql-tests`,
//! then run `target/release/teesql-bench [--seconds N] [--rounds N] [--idle N]`.
//! Everything is on loopback on this machine; absolute numbers vary, ratios hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use teesql_tests::agent::TestAgent;
use teesql_tests::clients::{connect, tls_config};
use teesql_tests::cluster::repo_root;
use teesql_tests::postgres::{PgOptions, TempPostgres, pg_bin_dir};

struct Args {
    seconds: u64,
    rounds: usize,
    idle: usize,
    /// The sidecar's backend.pool_max_idle_per_key (0 = no reuse of Postgres connections).
    pool: u64,
    /// Give the sidecar a second verifier process, and at the end kill one halfway
    /// through a connect-per-transaction run (no handshake may fail).
    failover: bool,
    /// Print the results as one JSON object instead of the table.
    json: bool,
    /// Also measure a sidecar serving its port on each of these many threads of its own
    /// (`listen.postgres_threads`); empty = only the default sidecar.
    threads: Vec<usize>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        seconds: 15,
        rounds: 2,
        idle: 1000,
        pool: 0,
        failover: false,
        json: false,
        threads: vec![
            1,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        ],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<u64> {
            it.next()
                .ok_or_else(|| anyhow!("{flag} needs a value"))?
                .parse()
                .map_err(|e| anyhow!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--seconds" => a.seconds = value()?,
            "--rounds" => a.rounds = value()? as usize,
            "--idle" => a.idle = value()? as usize,
            "--pool" => a.pool = value()?,
            "--failover" => a.failover = true,
            "--json" => a.json = true,
            "--threads" => {
                let list = it
                    .next()
                    .ok_or_else(|| anyhow!("--threads needs a value"))?;
                a.threads = list
                    .split(',')
                    .map(|n| n.trim().parse::<usize>())
                    .filter(|n| n != &Ok(0))
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow!("--threads {list}: {e}"))?;
                a.threads.dedup();
            }
            "--help" | "-h" => {
                println!(
                    "teesql-bench [--seconds N (15)] [--rounds N (2)] [--idle N (1000)] [--pool N (0): the sidecar's backend.pool_max_idle_per_key, 0 = off, the default] [--failover: two verifier processes, one killed during a connect-per-transaction run] [--json: the results as one JSON object] [--threads N,M (1,cores): also a sidecar serving its port on N threads of its own, listen.postgres_threads, for each N; 0 = none]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    Ok(a)
}

/// Children are killed when the benchmark ends, however it ends.
struct Kids(Vec<(String, Child)>);

impl Drop for Kids {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for (_, c) in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn sibling(name: &str) -> Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("no directory for the current executable"))?;
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p teesql-verifier -p teesql-sidecar -p teesql-tests)",
            p.display()
        );
    }
    Ok(p)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The unprivileged user servers run as when we are root.
fn server_user() -> Option<nix::unistd::User> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    nix::unistd::User::from_name("postgres").ok().flatten()
}

fn give_to_server_user(path: &Path) -> Result<()> {
    if let Some(u) = server_user() {
        std::os::unix::fs::chown(path, Some(u.uid.as_raw()), Some(u.gid.as_raw()))?;
    }
    Ok(())
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not start listening on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))
}

/// CPU time a process has used so far, user and system, in clock ticks
/// (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> Result<u64> {
    Ok(stat_ticks(pid)?.own)
}

/// [`cpu_ticks`] with the children it has reaped (fields 16 and 17): for Postgres'
/// postmaster, the backends that ended, one per connection under `pgbench -C`.
fn cpu_ticks_with_children(pid: u32) -> Result<u64> {
    let t = stat_ticks(pid)?;
    Ok(t.own + t.reaped)
}

/// A process' CPU ticks, user and system, from one read of `/proc/PID/stat`.
struct Ticks {
    /// Its own (fields 14 and 15).
    own: u64,
    /// Those of the children it has reaped (fields 16 and 17).
    reaped: u64,
}

fn stat_ticks(pid: u32) -> Result<Ticks> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count from the ')' that ends it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: field {} missing", i + 3))
    };
    Ok(Ticks {
        own: tick(11)? + tick(12)?,
        reaped: tick(13)? + tick(14)?,
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 where it cannot be asked).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Context switches of a process so far, summed over its threads: (voluntary,
/// involuntary), from `/proc/PID/task/*/status`. A thread that exits between the listing
/// and the read is skipped.
fn ctxt_switches(pid: u32) -> Result<(u64, u64)> {
    let mut total = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.0 += field("voluntary_ctxt_switches:");
        total.1 += field("nonvoluntary_ctxt_switches:");
    }
    Ok(total)
}

/// Run pgbench and return its TPS (excluding initial connection time unless -C).
fn pgbench(
    bin: &Path,
    conninfo: &str,
    connect_each: bool,
    secs: u64,
    env: &[(&str, String)],
) -> Result<f64> {
    let mut cmd = Command::new(bin.join("pgbench"));
    cmd.args(["-n", "-S", "-c", "8", "-j", "2", "-T", &secs.to_string()]);
    if connect_each {
        cmd.arg("-C");
    }
    cmd.arg(conninfo);
    for v in ["PGPASSWORD", "PGSSLCERT", "PGSSLKEY", "PGSSLMODE"] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let failed = text
        .lines()
        .any(|l| l.contains("number of failed transactions: ") && !l.contains(": 0 "));
    if failed {
        bail!("pgbench reported failed transactions:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no tps in pgbench output:\n{text}"))
}

fn main() -> Result<()> {
    let args = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let verifier_bin = sibling("teesql-verifier")?;
    let sidecar_bin = sibling("teesql-sidecar")?;
    let pg_bin = pg_bin_dir().map_err(|e| anyhow!("{e}"))?;
    let pgbouncer = which("pgbouncer").ok_or_else(|| {
        anyhow!("pgbouncer not found: apt-get install pgbouncer (the Debian package is the baseline to beat)")
    })?;
    let tmp = tempfile::Builder::new().prefix("teesql-bench-").tempdir()?;
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let mut kids = Kids(Vec::new());

    // TLS material for Postgres and PgBouncer.
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?
        .self_signed(&key)?;
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    give_to_server_user(&cert_path)?;
    give_to_server_user(&key_path)?;

    // Goals 5 and 6 in this process, before anything else runs on the machine.
    eprintln!("in process: DCAP for a platform never seen, and a warm decision …");
    let in_process = in_process_goals(&repo_root()).await?;

    eprintln!("starting Postgres (ssl=on) …");
    // Every front door authenticates with SCRAM-SHA-256 (Postgres and PgBouncer with a
    // password, the sidecar with the cluster secret), as any real deployment would.
    let pg = TempPostgres::start(PgOptions {
        hba: vec![
            "local all all trust".into(),
            "host all bench 127.0.0.1/32 scram-sha-256".into(),
            "host all all 127.0.0.1/32 trust".into(),
        ],
        settings: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), cert_path.display().to_string()),
            ("ssl_key_file".into(), key_path.display().to_string()),
            ("max_connections".into(), (args.idle + 200).to_string()),
            ("shared_buffers".into(), "256MB".into()),
        ],
        ..PgOptions::default()
    })
    .map_err(|e| anyhow!("{e}"))?;
    pg.psql("postgres", "postgres", "SELECT 1")
        .map_err(|e| anyhow!("{e}"))?;
    let init = Command::new(pg_bin.join("pgbench"))
        .args(["-i", "-q", "-s", "10", &pg.conninfo("postgres", "postgres")])
        .output()?;
    if !init.status.success() {
        bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    }
    const BENCH_PASSWORD: &str = "bench-password-not-secret";
    pg.psql(
        "postgres",
        "postgres",
        &format!("CREATE ROLE bench LOGIN PASSWORD '{BENCH_PASSWORD}'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO bench"),
    )
    .map_err(|e| anyhow!("{e}"))?;

    eprintln!("starting the dev agent, verifier and sidecar …");
    let agent = TestAgent::start([0x42; 32], dir).await?;
    let profile = dir.join("profile");
    std::fs::create_dir_all(&profile)?;
    std::fs::write(
        profile.join("profile.toml"),
        format!(
            "extends = [{:?}]\n",
            repo_root()
                .join("policies/dev")
                .canonicalize()?
                .display()
                .to_string()
        ),
    )?;
    std::fs::write(
        profile.join("data.json"),
        r#"{"teesql": {"require_client_attestation": true}}"#,
    )?;
    let start_verifier = |port: u16| {
        Command::new(&verifier_bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--policy-dir")
            .arg(&profile)
            .arg("--dev-trust-root")
            .arg(agent.root_der_path())
            .args(["--pccs-url", &agent.url, "--decision-log", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let verifier_port = free_port()?;
    let verifier = start_verifier(verifier_port)?;
    let verifier_pid = verifier.id();
    kids.0.push(("verifier".into(), verifier));
    wait_port(verifier_port, "teesql-verifier")?;
    let mut verifier_urls = format!("http://127.0.0.1:{verifier_port}");
    // The second verifier is killed by the failover run (or stopped when this ends).
    let mut second_verifier = Kids(Vec::new());
    if args.failover {
        let port = free_port()?;
        second_verifier
            .0
            .push(("second verifier".into(), start_verifier(port)?));
        wait_port(port, "the second teesql-verifier")?;
        verifier_urls.push_str(&format!(",http://127.0.0.1:{port}"));
    }

    let read_secret = hex::encode([0x11u8; 32]);
    let sidecar_port = free_port()?;
    let config = dir.join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\npostgres = \"127.0.0.1:{sidecar_port}\"\nadmin = \"off\"\n\
             [identity]\nendpoint = \"{}\"\n[verifier]\nurl = \"{verifier_urls}\"\n\
             [backend]\nhost = \"{}\"\nport = {}\npool_max_idle_per_key = {}\n[limits]\nmax_connections = {}\nfailed_auth_per_minute = 100000\n",
            agent.socket.display(),
            pg.socket_dir.display(),
            pg.port,
            args.pool,
            args.idle + 100
        ),
    )?;
    let prov = Command::new(&sidecar_bin)
        .args(["provision", "--config"])
        .arg(&config)
        .env("TEESQL_READ_SECRET", &read_secret)
        .output()?;
    if !prov.status.success() {
        bail!("provision: {}", String::from_utf8_lossy(&prov.stderr));
    }
    // The sidecar on the shared scheduler (the default), and, with --threads N, a second
    // one serving its port on N threads of its own (listen.postgres_threads).
    let start_sidecar = |port: u16, threads: usize| -> Result<Child> {
        let child = Command::new(&sidecar_bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env("TEESQL_READ_SECRET", &read_secret)
            .env("TEESQL_SIDECAR_LISTEN", format!("127.0.0.1:{port}"))
            .env("TEESQL_SIDECAR_POSTGRES_THREADS", threads.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(child)
    };
    let sidecar = start_sidecar(sidecar_port, 0)?;
    let sidecar_pid = sidecar.id();
    kids.0.push(("sidecar".into(), sidecar));
    wait_port(sidecar_port, "teesql-sidecar")?;
    let mut threaded = Vec::new();
    for &n in &args.threads {
        let port = free_port()?;
        let child = start_sidecar(port, n)?;
        let pid = child.id();
        kids.0.push((format!("sidecar ({n} threads)"), child));
        wait_port(port, "teesql-sidecar (serving threads)")?;
        threaded.push((n, port, pid));
    }

    eprintln!("starting PgBouncer (client TLS, session pool) …");
    let bouncer_port = free_port()?;
    let bdir = dir.join("pgbouncer");
    std::fs::create_dir_all(&bdir)?;
    give_to_server_user(&bdir)?;
    let ini = bdir.join("pgbouncer.ini");
    let userlist = bdir.join("userlist.txt");
    std::fs::write(&userlist, format!("\"bench\" \"{BENCH_PASSWORD}\"\n"))?;
    std::fs::write(
        &ini,
        format!(
            "[databases]\npostgres = host={} port={} dbname=postgres\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {}\npool_mode = session\nmax_client_conn = 2000\n\
             default_pool_size = 100\nclient_tls_sslmode = require\nclient_tls_cert_file = {}\n\
             client_tls_key_file = {}\nlogfile = {}\npidfile = {}\n",
            pg.socket_dir.display(),
            pg.port,
            userlist.display(),
            cert_path.display(),
            key_path.display(),
            bdir.join("pgbouncer.log").display(),
            bdir.join("pgbouncer.pid").display()
        ),
    )?;
    for p in [&ini, &userlist] {
        give_to_server_user(p)?;
    }
    let mut cmd = Command::new(&pgbouncer);
    cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(u) = server_user() {
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    }
    let bouncer = cmd.spawn()?;
    let bouncer_pid = bouncer.id();
    kids.0.push(("pgbouncer".into(), bouncer));
    wait_port(bouncer_port, "pgbouncer").map_err(|e| {
        let log = std::fs::read_to_string(bdir.join("pgbouncer.log")).unwrap_or_default();
        anyhow!("{e}; its log:\n{log}")
    })?;

    // Clients.
    let client_dir = dir.join("client");
    std::fs::create_dir_all(&client_dir)?;
    let issued = agent
        .agent
        .issue_tls_key(&teesql_devattest::RaTlsRequest {
            subject: "bench".into(),
            alt_names: vec!["bench".into()],
            usage_ra_tls: true,
            usage_server_auth: false,
            usage_client_auth: true,
            ..Default::default()
        })
        .await?;
    let (ccert, ckey) = (client_dir.join("cert.pem"), client_dir.join("key.pem"));
    std::fs::write(&ccert, issued.chain_pem.concat())?;
    std::fs::write(&ckey, &issued.key_pem)?;
    std::fs::set_permissions(&ckey, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;

    let sidecar_env = vec![
        ("PGPASSWORD", read_secret.clone()),
        ("PGSSLCERT", ccert.display().to_string()),
        ("PGSSLKEY", ckey.display().to_string()),
    ];
    let mut targets: Vec<Target> = vec![
        (
            "Postgres over TLS (baseline)".into(),
            format!(
                "host=127.0.0.1 port={} user=bench dbname=postgres sslmode=require",
                pg.port
            ),
            vec![("PGPASSWORD", BENCH_PASSWORD.to_string())],
        ),
        (
            "PgBouncer (TLS, session pool)".into(),
            format!(
                "host=127.0.0.1 port={bouncer_port} user=bench dbname=postgres sslmode=require"
            ),
            vec![("PGPASSWORD", BENCH_PASSWORD.to_string())],
        ),
        (
            "TeeSQL sidecar (full verification)".into(),
            format!(
                "host=127.0.0.1 port={sidecar_port} user=teesql_read dbname=postgres sslmode=require"
            ),
            sidecar_env.clone(),
        ),
    ];
    let mut proxies = vec![None, Some(bouncer_pid), Some(sidecar_pid)];
    // Which rows the verifier judges (the sidecars').
    let mut judged = vec![false, false, true];
    for (n, port, pid) in threaded {
        targets.push((
            format!("TeeSQL sidecar, postgres_threads={n}"),
            format!("host=127.0.0.1 port={port} user=teesql_read dbname=postgres sslmode=require"),
            sidecar_env.clone(),
        ));
        proxies.push(Some(pid));
        judged.push(true);
    }
    // The baseline again, with pgbench given the sidecar rows' certificate files: libpq
    // reads a client certificate and key from disk for every connection, whether or not
    // the server asks for one (Postgres here asks for none). What that costs the client
    // is part of what a mutual-TLS connection costs, not the sidecar's doing.
    targets.push((
        "Postgres over TLS, client cert files".into(),
        format!(
            "host=127.0.0.1 port={} user=bench dbname=postgres sslmode=require",
            pg.port
        ),
        vec![
            ("PGPASSWORD", BENCH_PASSWORD.to_string()),
            ("PGSSLCERT", ccert.display().to_string()),
            ("PGSSLKEY", ckey.display().to_string()),
        ],
    ));
    proxies.push(None);
    judged.push(false);
    // Check every target answers before measuring.
    for (name, conn, env) in &targets {
        pgbench(&pg_bin, conn, false, 1, env).with_context(|| format!("warm-up of {name}"))?;
    }

    let mut results = vec![[Vec::new(), Vec::new()]; targets.len()];
    // Select-only: the proxy's context switches (voluntary, involuntary) and queries.
    // Postgres itself has a process per connection: not counted.
    // And its CPU time: what a proxy costs per query on a machine it shares with
    // Postgres and the clients.
    let mut switches = vec![(0u64, 0u64, 0f64); targets.len()];
    let mut cpu = vec![0u64; targets.len()];
    // Connect per transaction: CPU per connection of Postgres (its ended backends
    // included), the proxy and, behind the sidecar, the verifier.
    let postmaster = pg.pid();
    // And the client's: pgbench, reaped by this process.
    let mut connect_cpu = vec![(0u64, 0u64, 0u64, 0u64, 0f64); targets.len()];
    let me = std::process::id();
    let reaped = || stat_ticks(me).map(|t| t.reaped);
    // Every verifier the sidecars ask (two with --failover).
    let verifier_pids: Vec<u32> = std::iter::once(verifier_pid)
        .chain(second_verifier.0.iter().map(|(_, c)| c.id()))
        .collect();
    let verifiers_cpu = || -> Result<u64> { verifier_pids.iter().map(|&p| cpu_ticks(p)).sum() };
    for round in 0..args.rounds {
        for (mode, connect_each) in [(0usize, false), (1, true)] {
            for (i, (name, conn, env)) in targets.iter().enumerate() {
                let counted = proxies[i].filter(|_| !connect_each);
                let before = counted.map(ctxt_switches).transpose()?;
                let cpu_before = counted.map(cpu_ticks).transpose()?;
                if connect_each {
                    // Let the backends of the previous run end and be reaped first, or
                    // their CPU would be counted as this run's.
                    std::thread::sleep(Duration::from_secs(1));
                }
                let connect_before = (
                    postmaster.map(cpu_ticks_with_children).transpose()?,
                    proxies[i].map(cpu_ticks).transpose()?,
                    verifiers_cpu()?,
                    reaped()?,
                );
                let tps = pgbench(&pg_bin, conn, connect_each, args.seconds, env)
                    .with_context(|| name.to_string())?;
                if connect_each {
                    let c = &mut connect_cpu[i];
                    if let (Some(pid), Some(b)) = (postmaster, connect_before.0) {
                        c.0 += cpu_ticks_with_children(pid)?.saturating_sub(b);
                    }
                    if let (Some(pid), Some(b)) = (proxies[i], connect_before.1) {
                        c.1 += cpu_ticks(pid)?.saturating_sub(b);
                    }
                    if judged[i] {
                        c.2 += verifiers_cpu()?.saturating_sub(connect_before.2);
                    }
                    c.3 += reaped()?.saturating_sub(connect_before.3);
                    c.4 += tps * args.seconds as f64;
                }
                if let (Some(pid), Some(b)) = (counted, before) {
                    let a = ctxt_switches(pid)?;
                    cpu[i] += cpu_ticks(pid)?.saturating_sub(cpu_before.unwrap_or(0));
                    switches[i].0 += a.0.saturating_sub(b.0);
                    switches[i].1 += a.1.saturating_sub(b.1);
                    switches[i].2 += tps * args.seconds as f64;
                }
                eprintln!(
                    "round {} {:<36} {:<22} {:>10.0}",
                    round + 1,
                    name,
                    if connect_each {
                        "connect per tx (-C)"
                    } else {
                        "select-only"
                    },
                    tps
                );
                results[i][mode].push(tps);
            }
        }
    }

    // Failover: connect-per-transaction through the sidecar while one of its two
    // verifiers is killed halfway; pgbench fails the run if any connection fails.
    let mut failover = None;
    if let Some((_, mut second)) = second_verifier.0.pop() {
        let (name, conn, env) = &targets[2];
        eprintln!("failover: {name}, connect per tx, killing one of two verifiers halfway …");
        let half = Duration::from_secs(args.seconds.div_ceil(2));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(half);
            let _ = second.kill();
            let _ = second.wait();
        });
        let rate = pgbench(&pg_bin, conn, true, args.seconds, env)
            .context("connect per tx while a verifier is killed")?;
        let _ = killer.join();
        let after = pgbench(&pg_bin, conn, true, args.seconds, env)
            .context("connect per tx with one verifier left")?;
        failover = Some((rate, after));
    }

    // The verifier, asked what the sidecar asks on every handshake (VerifyPeer, purpose
    // "sidecar", this client's RA-TLS chain, no token), one caller, against a gRPC health
    // check on the same channel: the transport's floor.
    eprintln!("the sidecar's question to the verifier, over gRPC …");
    let chain: Vec<Vec<u8>> = issued
        .chain_pem
        .iter()
        .map(|pem| {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
                .map(|c| c.to_vec())
                .map_err(|e| anyhow!("the client chain: {e}"))
        })
        .collect::<Result<_>>()?;
    let verifier_rtt = verifier_round_trips(verifier_port, chain, 2000).await?;

    // Idle sessions: RSS of the sidecar before and after.
    eprintln!("opening {} idle sessions through the sidecar …", args.idle);
    let before = rss_kib(sidecar_pid)?;
    let tls = tls_config(&agent.app_ca_path(), Some((&ccert, &ckey)))?;
    let dsn = format!(
        "postgresql://teesql_read:{read_secret}@127.0.0.1:{sidecar_port}/postgres?sslmode=require"
    );
    let mut idle = Vec::with_capacity(args.idle);
    for chunk in 0..args.idle.div_ceil(50) {
        let mut batch = Vec::new();
        for _ in 0..50.min(args.idle - chunk * 50) {
            let (dsn, tls) = (dsn.clone(), tls.clone());
            batch.push(tokio::spawn(async move { connect(&dsn, tls).await }));
        }
        for b in batch {
            let client = b.await?.map_err(|e| anyhow!("idle session: {e}"))?;
            client.simple_query("SELECT 1").await?;
            idle.push(client);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(sidecar_pid)?;
    let per_session = (after.saturating_sub(before)) as f64 / args.idle as f64;
    drop(idle);

    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let base = (mean(&results[0][0]), mean(&results[0][1]));
    let per_query = |i: usize| {
        let (v, n, q) = switches[i];
        (q > 0.0).then(|| (v as f64 / q, n as f64 / q))
    };
    let ticks_per_second = clock_ticks_per_second();
    let cpu_us_per_query = |i: usize| {
        let q = switches[i].2;
        (q > 0.0).then(|| cpu[i] as f64 / ticks_per_second * 1e6 / q)
    };
    // (Postgres, proxy, verifier, client) CPU ms per connection.
    let cpu_ms_per_connection = |i: usize| {
        let (pg, proxy, verifier, client, n) = connect_cpu[i];
        let ms = |t: u64| t as f64 / ticks_per_second * 1e3 / n;
        (n > 0.0).then(|| (ms(pg), ms(proxy), ms(verifier), ms(client)))
    };
    // The goals of issue 29, each against its baseline of this run.
    let goals = {
        let (sidecar, bouncer) = (
            (mean(&results[2][0]), mean(&results[2][1])),
            (mean(&results[1][0]), mean(&results[1][1])),
        );
        let switches_of =
            |i: usize| per_query(i).map_or("n/a".to_string(), |(v, n)| format!("{v:.2} + {n:.2}"));
        let connections_target = if args.pool > 0 { 1.5 } else { 1.0 };
        let ip = &in_process;
        vec![
            Goal::on_ratio(
                "1 select-only TPS, sidecar / direct TLS",
                format!("{:.0}", sidecar.0),
                format!("{:.0} direct TLS", base.0),
                sidecar.0 / base.0,
                Limit::new(Cmp::AtLeast, 0.75, Unit::Ratio),
            ),
            Goal::on_ratio(
                "1 select-only TPS, sidecar / PgBouncer",
                format!("{:.0}", sidecar.0),
                format!("{:.0} PgBouncer", bouncer.0),
                sidecar.0 / bouncer.0,
                Limit::new(Cmp::AtLeast, 1.25, Unit::Ratio),
            ),
            Goal {
                name: "1 context switches / query (vol + invol)",
                measured: switches_of(2),
                baseline: format!("{} PgBouncer", switches_of(1)),
                ratio: None,
                target: "(printed)".into(),
                met: None,
            },
            Goal::on_ratio(
                "2 connections/s, sidecar / direct TLS",
                format!("{:.0}", sidecar.1),
                format!("{:.0} direct TLS", base.1),
                sidecar.1 / base.1,
                Limit {
                    note: format!(" (pool {})", args.pool),
                    ..Limit::new(Cmp::AtLeast, connections_target, Unit::Ratio)
                },
            ),
            Goal::on_ratio(
                "2 connections/s, sidecar / PgBouncer",
                format!("{:.0}", sidecar.1),
                format!("{:.0} PgBouncer", bouncer.1),
                sidecar.1 / bouncer.1,
                Limit::new(Cmp::Above, 1.0, Unit::Ratio),
            ),
            Goal::on_ratio(
                "3 VerifyPeer p50 over gRPC / health check",
                format!("{:.0} µs", verifier_rtt.decision_us),
                format!("{:.0} µs health check", verifier_rtt.health_us),
                verifier_rtt.decision_us / verifier_rtt.health_us,
                Limit::new(Cmp::AtMost, 1.25, Unit::Ratio),
            ),
            Goal::on(
                "4 sidecar RSS per idle session",
                format!("{per_session:.1} KiB"),
                format!("({} sessions)", args.idle),
                None,
                Limit::new(Cmp::AtMost, 16.0, Unit::Kib),
                per_session,
            ),
            Goal::on(
                "5 DCAP, platform never seen (median)",
                format!("{:.0} µs", ip.never_seen_us),
                format!("{:.0} µs dcap-qvl verify", ip.dcap_qvl_us),
                Some(ip.never_seen_us / ip.dcap_qvl_us),
                Limit::new(Cmp::AtMost, 250.0, Unit::Micros),
                ip.never_seen_us,
            ),
            Goal::on_ratio(
                "6 warm decision in process (median)",
                format!("{:.0} µs", ip.warm_us),
                format!("{:.0} µs Trustee-style", ip.trustee_us),
                ip.trustee_us / ip.warm_us,
                Limit::new(Cmp::AtLeast, 150.0, Unit::SpeedUp),
            ),
        ]
    };
    if args.json {
        let rows: Vec<serde_json::Value> = targets
            .iter()
            .enumerate()
            .map(|(i, (name, _, _))| {
                let (s, c) = (mean(&results[i][0]), mean(&results[i][1]));
                serde_json::json!({
                    "front_door": name,
                    "select_tps": s,
                    "select_vs_postgres": s / base.0,
                    "connections_per_s": c,
                    "connections_vs_postgres": c / base.1,
                    "context_switches_per_query": per_query(i).map(|(v, n)| {
                        serde_json::json!({"voluntary": v, "involuntary": n})
                    }),
                    "cpu_us_per_query": cpu_us_per_query(i),
                    "cpu_ms_per_connection": cpu_ms_per_connection(i).map(|(pg, proxy, verifier, client)| {
                        serde_json::json!({"postgres": pg, "proxy": proxy, "verifier": verifier, "client": client})
                    }),
                })
            })
            .collect();
        let out = serde_json::json!({
            "seconds": args.seconds,
            "rounds": args.rounds,
            "pool_max_idle_per_key": args.pool,
            "pgbench": "-S -c 8 -j 2",
            "front_doors": rows,
            // The sidecar's connection rate against direct TLS with the same client files.
            "connections_vs_postgres_same_client": mean(&results[2][1]) / mean(&results[targets.len() - 1][1]),
            "goals": goals.iter().map(|g| serde_json::json!({
                "goal": g.name,
                "measured": g.measured,
                "baseline": g.baseline,
                "ratio": g.ratio,
                "target": g.target,
                "met": g.met,
            })).collect::<Vec<_>>(),
            "in_process_us": serde_json::json!({
                "never_seen_platform": in_process.never_seen_us,
                "dcap_qvl_verify": in_process.dcap_qvl_us,
                "warm_decision": in_process.warm_us,
                "trustee_style_decision": in_process.trustee_us,
            }),
            "idle_sessions": args.idle,
            "idle_kib_per_session": per_session,
            "verifier_grpc": serde_json::json!({
                "requests": verifier_rtt.n,
                "sidecar_decision_p50_us": verifier_rtt.decision_us,
                "health_check_p50_us": verifier_rtt.health_us,
                "ratio": verifier_rtt.decision_us / verifier_rtt.health_us,
            }),
            "failover": failover.map(|(during, after)| serde_json::json!({
                "connections_per_s_both": mean(&results[2][1]),
                "during_kill": during,
                "one_left": after,
            })),
        });
        println!("{out:#}");
        drop(kids);
        drop(pg);
        return Ok(());
    }
    println!(
        "\nTeeSQL sidecar benchmark ({} s per run, {} rounds, pgbench -S -c 8 -j 2; 2 cores, loopback; sidecar pool_max_idle_per_key = {})\n",
        args.seconds, args.rounds, args.pool
    );
    println!(
        "{:<36} {:>12} {:>7} {:>14} {:>7} {:>22} {:>10}",
        "front door",
        "select TPS",
        "vs PG",
        "connections/s",
        "vs PG",
        "ctx switches/query",
        "CPU/query"
    );
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let (s, c) = (mean(&results[i][0]), mean(&results[i][1]));
        let ctx = per_query(i).map_or("n/a (per-connection)".to_string(), |(v, n)| {
            format!("{v:.2} vol + {n:.2} invol")
        });
        let cpu = cpu_us_per_query(i).map_or("n/a".to_string(), |us| format!("{us:.1} µs"));
        println!(
            "{name:<36} {s:>12.0} {:>6.2}x {c:>14.0} {:>6.2}x {ctx:>22} {cpu:>10}",
            s / base.0,
            c / base.1
        );
    }
    println!(
        "\nCPU per connection under pgbench -C (ms; Postgres counts its ended backends; cores busy = total x connections/s)\n{:<36} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "front door", "Postgres", "proxy", "verifier", "pgbench", "total", "cores busy"
    );
    for (i, (name, _, _)) in targets.iter().enumerate() {
        if let Some((pg, proxy, verifier, client)) = cpu_ms_per_connection(i) {
            let total = pg + proxy + verifier + client;
            println!(
                "{name:<36} {pg:>9.2} {proxy:>9.2} {verifier:>9.2} {client:>9.2} {total:>9.2} {:>11.2}",
                total / 1e3 * mean(&results[i][1])
            );
        }
    }
    // The same client on both sides: direct TLS with the certificate files against the
    // sidecar (which also makes the client sign for its certificate).
    let same_client = targets.len() - 1;
    if let (Some(plain), Some(with_files)) =
        (cpu_ms_per_connection(0), cpu_ms_per_connection(same_client))
    {
        println!(
            "\npgbench CPU per connection against Postgres: {:.2} ms with the client certificate files, \
             {:.2} ms without ({:+.2} ms); the sidecar's connection rate is {:.2}x direct TLS with \
             the same client files",
            with_files.3,
            plain.3,
            with_files.3 - plain.3,
            mean(&results[2][1]) / mean(&results[same_client][1])
        );
    }
    println!(
        "\nthe sidecar's question to the verifier over gRPC (VerifyPeer, purpose sidecar, warm, no token; 1 caller, {} requests): p50 {:.0} µs against {:.0} µs for a health check ({:.2}x the transport floor; target <= 1.25x)",
        verifier_rtt.n,
        verifier_rtt.decision_us,
        verifier_rtt.health_us,
        verifier_rtt.decision_us / verifier_rtt.health_us
    );
    println!(
        "\nsidecar memory per idle session: {per_session:.1} KiB (RSS {before} KiB -> {after} KiB with {} sessions; target <= 16 KiB)",
        args.idle
    );
    if let Some((during, after)) = failover {
        let two = mean(&results[2][1]);
        println!(
            "\nfailover (two verifier processes): connections/s {two:.0} with both, {during:.0} \
             while one was killed halfway ({:.2}x), {after:.0} with one left ({:.2}x); \
             failed connections: 0 (pgbench fails the run on any)",
            during / two,
            after / two
        );
    }
    println!(
        "\ngoals (issue 29), each against its baseline measured in this run:\n{:<44} {:>14} {:>30} {:>8}  {:<18} met",
        "goal", "this run", "baseline", "ratio", "target"
    );
    for g in &goals {
        println!(
            "{:<44} {:>14} {:>30} {:>8}  {:<18} {}",
            g.name,
            g.measured,
            g.baseline,
            g.ratio.map_or(String::new(), |r| format!("{r:.2}x")),
            g.target,
            g.met.map_or("-", |m| if m { "yes" } else { "no" })
        );
    }
    drop(kids);
    drop(pg);
    Ok(())
}

/// Goals 5 and 6, each with its same-run baseline: medians in µs.
struct InProcess {
    /// A full DCAP verification of a platform never seen (the recorded Intel quote).
    never_seen_us: f64,
    /// dcap-qvl's own `verify` of the same quote and collateral.
    dcap_qvl_us: f64,
    /// A warm decision in process (appraisal cached, signed token).
    warm_us: f64,
    /// A Trustee-style decision: nothing kept between requests.
    trustee_us: f64,
}

/// Measure goals 5 and 6 with the verifier's own measurements (`teesql_verifier::measure`,
/// which `cargo bench --bench platform` and `--bench service` print in detail).
async fn in_process_goals(repo: &Path) -> Result<InProcess> {
    use teesql_verifier::measure::{self, RECORDED_NOW};
    let us = |samples: &[Duration]| measure::median(samples).as_secs_f64() * 1e6;
    let (quote, collateral) = measure::recorded_intel(repo)?;
    let (ours, qvl) = measure::never_seen_platform(&quote, &collateral, RECORDED_NOW, 1000)?;
    let trustee = measure::TrusteeStyle::load(repo)?;
    // One untimed first, as the service bench does.
    trustee.decide(quote.raw(), &collateral.data, RECORDED_NOW)?;
    let baseline = measure::time(100, |_| {
        anyhow::ensure!(
            trustee.decide(quote.raw(), &collateral.data, RECORDED_NOW)?,
            "the Trustee-style baseline refused the recorded quote"
        );
        Ok(())
    })?;
    let config = measure::service_config(
        repo,
        teesql_verifier::service::config::ServeSettings {
            listen: Some("127.0.0.1:0".into()),
            ..Default::default()
        },
    )?;
    let verifier = teesql_verifier::service::server::Verifier::start(&config)
        .map_err(|e| anyhow!("the in-process verifier: {}", e.join("; ")))?;
    let (warm, _) = measure::warm_decisions(verifier.service(), quote.raw(), 2000, true).await?;
    let got = InProcess {
        never_seen_us: us(&ours),
        dcap_qvl_us: us(&qvl),
        warm_us: us(&warm),
        trustee_us: us(&baseline),
    };
    // A ratio of a zero median would read as a goal met.
    anyhow::ensure!(
        [
            got.never_seen_us,
            got.dcap_qvl_us,
            got.warm_us,
            got.trustee_us
        ]
        .iter()
        .all(|us| *us > 0.0),
        "an in-process measurement gave a zero median"
    );
    Ok(got)
}

/// One goal of issue 29 as this run measured it, against its same-run baseline.
struct Goal {
    name: &'static str,
    measured: String,
    baseline: String,
    /// measured / baseline (or baseline / measured where bigger is better for the
    /// baseline's side, as goal 6's speed-up).
    ratio: Option<f64>,
    target: String,
    /// `None` for a figure printed without a target of its own.
    met: Option<bool>,
}

impl Goal {
    /// A goal on `ratio`.
    fn on_ratio(
        name: &'static str,
        measured: String,
        baseline: String,
        ratio: f64,
        target: Limit,
    ) -> Self {
        Self::on(name, measured, baseline, Some(ratio), target, ratio)
    }

    /// A goal on `value`, which `target` is checked against and printed with.
    fn on(
        name: &'static str,
        measured: String,
        baseline: String,
        ratio: Option<f64>,
        target: Limit,
        value: f64,
    ) -> Self {
        Self {
            name,
            measured,
            baseline,
            ratio,
            target: target.text(),
            met: Some(target.holds(value)),
        }
    }
}

/// A goal's target: one limit, printed as it is checked.
struct Limit {
    cmp: Cmp,
    limit: f64,
    unit: Unit,
    /// Printed after the limit, e.g. the pool setting the limit depends on.
    note: String,
}

enum Cmp {
    AtLeast,
    Above,
    AtMost,
}

enum Unit {
    /// A ratio (`0.75x`).
    Ratio,
    /// A speed-up over the baseline (`150x faster`).
    SpeedUp,
    Kib,
    Micros,
}

impl Limit {
    fn new(cmp: Cmp, limit: f64, unit: Unit) -> Self {
        Self {
            cmp,
            limit,
            unit,
            note: String::new(),
        }
    }

    fn holds(&self, value: f64) -> bool {
        match self.cmp {
            Cmp::AtLeast => value >= self.limit,
            Cmp::Above => value > self.limit,
            Cmp::AtMost => value <= self.limit,
        }
    }

    fn text(&self) -> String {
        let op = match self.cmp {
            Cmp::AtLeast => ">=",
            Cmp::Above => ">",
            Cmp::AtMost => "<=",
        };
        let limit = self.limit;
        let limit = match self.unit {
            Unit::Ratio => format!("{limit:.2}x"),
            Unit::SpeedUp => format!("{limit:.0}x faster"),
            Unit::Kib => format!("{limit:.0} KiB"),
            Unit::Micros => format!("{limit:.0} µs"),
        };
        format!("{op} {limit}{}", self.note)
    }
}

/// Medians of the sidecar's question to the verifier and of a health check.
struct VerifierRtt {
    decision_us: f64,
    health_us: f64,
    n: usize,
}

/// `n` sequential VerifyPeer requests as the sidecar sends them, then `n` health checks,
/// one caller on one HTTP/2 connection each; medians in µs.
async fn verifier_round_trips(port: u16, chain: Vec<Vec<u8>>, n: usize) -> Result<VerifierRtt> {
    use teesql_proto::v1::VerifyPeerRequest;
    use teesql_proto::v1::verifier_client::VerifierClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e6
    };
    let mut verifier = VerifierClient::new(channel.clone());
    let request = VerifyPeerRequest {
        purpose: "sidecar".into(),
        chain,
        user: "teesql_read".into(),
        database: "postgres".into(),
        client_addr: "127.0.0.1:50000".into(),
        alpn: "postgresql".into(),
        ..VerifyPeerRequest::default()
    };
    let first = verifier.verify_peer(request.clone()).await?.into_inner();
    if !first.allow {
        bail!(
            "the verifier refused the bench's client chain: {:?}",
            first.reasons
        );
    }
    let mut decisions = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let d = verifier.verify_peer(request.clone()).await?.into_inner();
        decisions.push(t.elapsed());
        if !d.allow || !d.token.is_empty() {
            bail!(
                "a warm decision changed: allow {}, token {} bytes",
                d.allow,
                d.token.len()
            );
        }
    }
    let mut health = HealthClient::new(channel);
    let check = HealthCheckRequest {
        service: String::new(),
    };
    health.check(check.clone()).await?;
    let mut checks = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        health.check(check.clone()).await?;
        checks.push(t.elapsed());
    }
    Ok(VerifierRtt {
        decision_us: median(decisions),
        health_us: median(checks),
        n,
    })
}

/// A front door: its name, libpq connection string and extra environment.
type Target = (String, String, Vec<(&'static str, String)>);

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

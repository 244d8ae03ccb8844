//! Real clients for the end-to-end tests: the `psql` binary and `tokio-postgres` over
//! rustls (with the server certificate checked against the development app CA).

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::postgres::TempPostgres;

/// Run `psql` with a connection string and arguments (off the async runtime).
pub async fn psql(conn: &str, args: &[&str]) -> Output {
    psql_env(conn, args, &[]).await
}

/// Like [`psql`], with extra environment variables.
pub async fn psql_env(conn: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(TempPostgres::psql_path());
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conn]);
    cmd.args(args);
    for var in [
        "PGPASSWORD",
        "PGSSLMODE",
        "PGUSER",
        "PGHOST",
        "PGPORT",
        "PGDATABASE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
        "PGCHANNELBINDING",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PGPASSFILE", "/nonexistent");
    cmd.env("PGCONNECT_TIMEOUT", "20");
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
            stdout: Vec::new(),
            stderr: format!("could not run psql: {e}").into_bytes(),
        })
}

/// rustls client configuration trusting `ca_pem`, optionally presenting a client
/// certificate (chain PEM, key PEM).
pub fn tls_config(ca_pem: &Path, client: Option<(&Path, &Path)>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).context("CA file")? {
        roots.add(cert.context("CA certificate")?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
                .context("client chain")?
                .collect::<Result<_, _>>()?;
            let key = PrivateKeyDer::from_pem_file(key).context("client key")?;
            builder.with_client_auth_cert(chain, key)?
        }
    })
}

/// A tokio-postgres connection over rustls; the connection task is spawned.
pub async fn connect(
    conn: &str,
    tls: rustls::ClientConfig,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) =
        tokio_postgres::connect(conn, tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Start the `teesql-dev` binary at `bin` with every port chosen by the OS and
/// `--env-file env_file`, and wait until it has written that file (it does so once
/// everything answers). stderr is piped, so a start-up failure reports what it printed.
pub async fn start_teesql_dev(
    bin: &Path,
    env_file: &Path,
    stdout: std::process::Stdio,
) -> Result<std::process::Child> {
    start_teesql_dev_with(bin, env_file, stdout, &[]).await
}

/// [`start_teesql_dev`] with `extra` flags (e.g. `--tcb-recovery-in-days 30`).
pub async fn start_teesql_dev_with(
    bin: &Path,
    env_file: &Path,
    stdout: std::process::Stdio,
    extra: &[&str],
) -> Result<std::process::Child> {
    let mut child = std::process::Command::new(bin)
        .args(["--port", "0", "--http-port", "0", "--verifier-port", "0"])
        .args(["--agent-port", "0", "--forward-port", "0"])
        .args(extra)
        .arg("--env-file")
        .arg(env_file)
        .stdout(stdout)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !env_file.exists() {
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            anyhow::bail!(
                "teesql-dev exited ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("teesql-dev did not come up within 180 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(child)
}

/// A binary of the workspace that `cargo test --workspace` built beside the running test
/// (the test's own is in `deps/`, the workspace's one level up), for tests that run
/// another package's binary as a user would.
pub fn workspace_bin(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("no directory above the test executable")?;
    let bin = dir.join(name);
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run the workspace's tests (cargo test --workspace), which build it",
        bin.display()
    );
    Ok(bin)
}

/// Major version of the `psql` the tests run (e.g. 15), or 0 if it cannot be run.
pub fn psql_major() -> u32 {
    std::process::Command::new(TempPostgres::psql_path())
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            // "psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.split('.').next())
                .and_then(|m| m.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether the tests' `psql` (and the libpq it ships with) sends ALPN `postgresql` on
/// its TLS connections, as libpq does from version 17 on.
pub fn libpq_sends_alpn() -> bool {
    psql_major() >= 17
}

#[path = "../python/find.rs"]
mod find;

/// A Python interpreter that can import `modules`: `TEESQL_PYTHON` (which `.ci/run`
/// sets), `python3`, or a virtualenv the harness makes under `target/` from
/// `tests/python/requirements.txt` (see `tests/python/find.rs`). `None`, after a notice
/// shown on the terminal, only where none can be had; under CI that is a failure.
pub fn python_with(modules: &[&str]) -> Option<String> {
    find::python_with(modules)
}

/// Run a Python script with arguments, off the async runtime.
pub async fn python(python: &str, script: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-c").arg(script).args(args);
    for var in [
        "PGPASSWORD",
        "PGSSLMODE",
        "PGCHANNELBINDING",
        "PGCONNECT_TIMEOUT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("PGPASSFILE", "/nonexistent");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .unwrap_or_else(|e| Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(1 << 8),
            stdout: Vec::new(),
            stderr: format!("could not run python: {e}").into_bytes(),
        })
}

/// psycopg 3 (with the libpq its binary wheel bundles): connect, print
/// `{"user": current_user, "libpq": libpq version}` as JSON.
pub const PSYCOPG_CONNECT: &str = r#"
import json, sys
import psycopg
with psycopg.connect(sys.argv[1], connect_timeout=60) as conn:
    user = conn.execute("SELECT current_user").fetchone()[0]
print(json.dumps({"user": user, "libpq": psycopg.pq.version()}))
"#;

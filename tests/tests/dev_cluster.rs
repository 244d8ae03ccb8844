//! `teesql-dev` as a newcomer runs it: one command, working connection strings, Ctrl-C
//! stops everything and cleans up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use teesql_tests::clients::{psql, start_teesql_dev};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teesql_dev_starts_prints_working_dsns_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("teesql.env");
    let mut child = start_teesql_dev(
        Path::new(env!("CARGO_BIN_EXE_teesql-dev")),
        &env_file,
        Stdio::piped(),
    )
    .await
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the env file holds secrets");
    }
    let env: BTreeMap<String, String> = std::fs::read_to_string(&env_file)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for key in [
        "DATABASE_URL",
        "TEESQL_HOST",
        "TEESQL_PORT",
        "TEESQL_HTTP_PORT",
        "TEESQL_READ_SECRET",
        "TEESQL_READWRITE_SECRET",
        "TEESQL_CA_PEM",
        "TEESQL_VERIFIER_URL",
        "DSTACK_SIMULATOR_ENDPOINT",
        "TEESQL_BACKEND_DSN",
    ] {
        assert!(env.contains_key(key), "{key} missing from {env:?}");
    }

    // Mode D: the DATABASE_URL as written.
    let o = psql(&env["DATABASE_URL"], &["-c", "SELECT current_user"]).await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "teesql_readwrite",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Mode B: verify-full with the dev CA and the agent's client certificate, superuser.
    let super_pw = env["TEESQL_BACKEND_DSN"]
        .split_once("://postgres:")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(pw, _)| pw.to_string())
        .unwrap();
    let mode_b = format!(
        "host={} port={} user=postgres password={super_pw} dbname=postgres sslmode=verify-full sslrootcert={} sslcert={} sslkey={}",
        env["TEESQL_HOST"],
        env["TEESQL_PORT"],
        env["TEESQL_CA_PEM"],
        env["TEESQL_CLIENT_CERT"],
        env["TEESQL_CLIENT_KEY"]
    );
    let o = psql(&mode_b, &["-c", "SELECT current_user"]).await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "postgres",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Mode A: through the forwarder teesql-dev runs.
    let o = psql(&env["TEESQL_FORWARD_URL"], &["-c", "SELECT 1"]).await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let health = reqwest::get(format!(
        "http://127.0.0.1:{}/health",
        env["TEESQL_HTTP_PORT"]
    ))
    .await
    .unwrap();
    assert_eq!(health.status(), 200);

    // Ctrl-C: everything stops, temporary state goes away.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "teesql-dev did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("Mode D") && stdout.contains("psql \"postgresql://teesql_readwrite:"),
        "{stdout}"
    );
    assert!(!env_file.exists());
    assert!(!std::path::Path::new(&env["DSTACK_SIMULATOR_ENDPOINT"]).exists());
    let o = psql(&env["TEESQL_BACKEND_DSN"], &["-c", "SELECT 1"]).await;
    assert!(!o.status.success(), "Postgres still running after Ctrl-C");
}

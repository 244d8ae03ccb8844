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
    // What teesql-dev printed, read as it comes (it keeps running until Ctrl-C).
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let printed = printed.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut p = printed.lock().unwrap();
                p.push_str(&line);
                p.push('\n');
            }
        })
    };
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

    // Channel binding, as libpq 17+ (psycopg's) does it when required: the cluster role
    // and the passthrough superuser both get SCRAM-SHA-256-PLUS.
    if let Some(py) = teesql_tests::clients::python_with(&["psycopg"]) {
        for dsn in [
            env["DATABASE_URL"].clone(),
            format!(
                "postgresql://postgres:{super_pw}@{}:{}/postgres?sslmode=require",
                env["TEESQL_HOST"], env["TEESQL_PORT"]
            ),
        ] {
            let o = teesql_tests::clients::python(
                &py,
                teesql_tests::clients::PSYCOPG_CONNECT,
                &[&format!("{dsn}&channel_binding=require")],
            )
            .await;
            assert!(
                o.status.success(),
                "{dsn}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }

    // Every command it printed works when pasted.
    let text = loop {
        let text = printed.lock().unwrap().clone();
        if text.contains("Ctrl-C stops everything") {
            break text;
        }
        assert!(child.try_wait().unwrap().is_none(), "teesql-dev exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    run_printed_commands(&text).await;

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
    reader.join().unwrap();
    let stdout = printed.lock().unwrap().clone();
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

/// The commands teesql-dev printed, as a newcomer would paste them.
#[derive(Debug)]
struct Printed {
    /// `psql "…"` lines (modes D, B, A, and the one through your own forwarder).
    psql: Vec<String>,
    /// The "run your own" forwarder command, with its continuation lines.
    forwarder: String,
    /// `export DSTACK_SIMULATOR_ENDPOINT=…` for dstack SDK clients.
    sdk_export: String,
}

fn printed_commands(text: &str) -> Printed {
    let psql = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("psql \""))
        .map(str::to_string)
        .collect();
    let mut forwarder = String::new();
    let mut lines = text.lines();
    for line in lines.by_ref() {
        if let Some((_, cmd)) = line.split_once("run your own: ") {
            forwarder = cmd.to_string();
            break;
        }
    }
    while forwarder.ends_with('\\') {
        forwarder.push('\n');
        forwarder.push_str(lines.next().expect("a continuation line"));
    }
    let sdk_export = text
        .lines()
        .find_map(|l| {
            l.split_once("For dstack SDK clients:")
                .map(|(_, c)| c.trim())
        })
        .expect("the dstack SDK line")
        .to_string();
    Printed {
        psql,
        forwarder,
        sdk_export,
    }
}

async fn run_printed_commands(text: &str) {
    let printed = printed_commands(text);
    assert_eq!(printed.psql.len(), 4, "{printed:#?}");
    assert!(printed.sdk_export.starts_with("export "), "{printed:#?}");

    // The forwarder command as printed; the only edit is the binary cargo already built
    // for `cargo run -q -p teesql-sidecar --` (a nested cargo would wait on our build lock).
    let sidecar = teesql_tests::clients::workspace_bin("teesql-sidecar").unwrap();
    let script = printed.forwarder.replace(
        "cargo run -q -p teesql-sidecar --",
        &sidecar.display().to_string(),
    );
    assert_ne!(script, printed.forwarder, "{}", printed.forwarder);
    let listen = script
        .split("--listen ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("--listen in the forwarder command")
        .to_string();
    let mut forwarder = std::process::Command::new("bash")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&listen).await.is_err() {
        if let Some(status) = forwarder.try_wait().unwrap() {
            let out = forwarder.wait_with_output().unwrap();
            panic!(
                "the printed forwarder command exited ({status}):\n{}\n{}",
                printed.forwarder,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the forwarder did not listen on {listen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for line in &printed.psql {
        let out = tokio::task::spawn_blocking({
            let cmd = format!("{line} -X -At -c 'SELECT 1'");
            move || {
                std::process::Command::new("bash")
                    .args(["-c", &cmd])
                    .env("PGCONNECT_TIMEOUT", "20")
                    .env_remove("PGPASSWORD")
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "1",
            "{line}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = forwarder.kill();
    let _ = forwarder.wait();

    // The SDK export, used by dstack's own Python SDK.
    if let Some(python) = teesql_tests::clients::python_with(&["dstack_sdk"]) {
        let script = format!(
            "{}; exec {python} -c 'from dstack_sdk import DstackClient; print(DstackClient().info().app_id)'",
            printed.sdk_export
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .unwrap();
        let app_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            app_id.len() == 40 && app_id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{script}: {app_id:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

//! `teesql-verifier serve` as an operator runs it: a TOML config (keys as the long flags),
//! gRPC and /metrics on ports the OS picks, SIGHUP and file changes reloading the policies,
//! a broken policy rejected while the old one keeps serving, and SIGTERM draining to exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/python/find.rs"]
mod find;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use teesql_proto::v1::verifier_client::VerifierClient;
use teesql_proto::v1::{VerifyQuoteRequest, verify_quote_request};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Serve(Child);

impl Serve {
    /// `teesql-verifier serve ARGS` from the repository root, without PCCS_URL, logging
    /// warnings, its stdout piped.
    fn spawn(args: &[&std::ffi::OsStr]) -> Self {
        Self(
            Command::new(env!("CARGO_BIN_EXE_teesql-verifier"))
                .arg("serve")
                .args(args)
                .current_dir(root())
                .env_remove("PCCS_URL")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// Where it serves gRPC, from its "listening on" line: HOST:PORT or unix:///PATH.
    fn listening(&mut self) -> String {
        let line = BufReader::new(self.0.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("teesql-verifier listening on "))
            .expect("serve exited before listening");
        line["teesql-verifier listening on ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig}");
}

async fn metrics(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

/// Poll /metrics until `needle` shows up (the reload runs in the background).
async fn wait_for_metric(url: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(url).await;
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle} in\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_from_a_toml_config_reloads_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for entry in std::fs::read_dir(root().join("policies/teesql")).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, policies.join(p.file_name().unwrap())).unwrap();
        }
    }
    let config = dir.path().join("verifier.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             policy_dir = [\"{}\"]\ncollateral_file = \"{}\"\noffline = true\n\
             now = 1751000000\ndecision_log = \"{}\"\n",
            policies.display(),
            root()
                .join("testdata/dcap/tdx_quote_collateral.json")
                .display(),
            dir.path().join("decisions.jsonl").display(),
        ),
    )
    .unwrap();

    let mut serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_teesql-verifier"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .env_remove("PCCS_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut grpc = None;
    let mut metrics_url = None;
    for line in BufReader::new(serve.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("teesql-verifier metrics on ") {
            metrics_url = Some(rest.to_string());
        }
        if let Some(rest) = line.strip_prefix("teesql-verifier listening on ") {
            grpc = Some(format!("http://{}", rest.split(' ').next().unwrap()));
            break;
        }
    }
    let grpc = grpc.expect("serve exited before listening");
    let metrics_url = metrics_url.expect("no metrics line");

    let mut client = VerifierClient::connect(grpc.clone()).await.unwrap();
    let request = VerifyQuoteRequest {
        purpose: "quote".into(),
        evidence: Some(verify_quote_request::Evidence::Quote(
            std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap(),
        )),
        ..Default::default()
    };
    let first = client
        .verify_quote(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.allow, "{first:?}");
    wait_for_metric(
        &metrics_url,
        "teesql_verifier_decisions_total{purpose=\"quote\",outcome=\"allow\"} 1",
    )
    .await;

    // The README's generic client: Python grpcio with nothing but server reflection.
    // Where it cannot run (no grpcio outside CI), its decision is not in the log either.
    let python_ran = python_client_calls_verify_peer(grpc.trim_start_matches("http://")).await;

    // SIGHUP reloads (nothing changed, so the same hash keeps serving).
    signal(&serve.0, "-HUP");
    wait_for_metric(
        &metrics_url,
        "teesql_verifier_policy_reloads_total{result=\"ok\"} 1",
    )
    .await;

    // A policy that does not compile, written into the watched directory: rejected, and
    // the old set keeps answering.
    std::fs::write(
        policies.join("broken.rego"),
        "package teesql.quote\n\ndeny contains if {\n",
    )
    .unwrap();
    wait_for_metric(
        &metrics_url,
        "teesql_verifier_policy_reloads_total{result=\"rejected\"}",
    )
    .await;
    let after = client
        .verify_quote(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.policy_hash, first.policy_hash);

    // SIGTERM: health watchers hear NOT_SERVING, then the server drains and exits 0.
    let channel = tonic::transport::Endpoint::from_shared(grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert_eq!(watch.message().await.unwrap().unwrap().status, serving);
    signal(&serve.0, "-TERM");
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("no health update after SIGTERM");
    assert_eq!(next.unwrap().unwrap().status, not_serving);
    drop(watch);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = serve.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    // One line per decision: the two VerifyQuote calls, and the Python client's.
    let log = std::fs::read_to_string(dir.path().join("decisions.jsonl")).unwrap();
    let expected = 2 + usize::from(python_ran);
    assert_eq!(log.lines().count(), expected, "{log}");
    let purposes: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["purpose"].to_string())
        .collect();
    assert_eq!(
        purposes.iter().filter(|p| *p == "\"sidecar\"").count(),
        usize::from(python_ran),
        "{log}"
    );
}

/// `tools/verify_peer.py`, as the README runs it. It needs grpcio, grpcio-reflection and
/// protobuf: `.ci/run` provides them (TEESQL_PYTHON) and CI fails without them; elsewhere a
/// missing module skips this part with a notice. Returns whether the client ran.
async fn python_client_calls_verify_peer(target: &str) -> bool {
    python_verify_peer(&[target]).await
}

/// `tools/verify_peer.py ARGS... sidecar` (see above); whether it ran.
async fn python_verify_peer(args: &[&str]) -> bool {
    let Some(python) = find::python_with(&["grpc", "grpc_reflection", "google.protobuf"]) else {
        return false;
    };
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(root().join("tools/verify_peer.py"))
            .args(&args)
            .arg("sidecar")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    // No client certificate: the production policy denies (exit 1) with its reason.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["allow"], false, "{d}");
    assert_eq!(
        d["reasons"][0]["code"], "client_attestation_required",
        "{d}"
    );
    assert!(d["policy_hash"].as_str().unwrap().starts_with("sha256:"));
    true
}

/// Every decision answered before SIGTERM is in the decision log when the process exits,
/// even with the writer far behind: the log is a pipe nobody reads until after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_before_sigterm_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.fifo");
    assert!(Command::new("mkfifo").arg(&log).status().unwrap().success());
    // The reader: opens the pipe (serve opens it for writing at start-up), then reads
    // nothing until told to.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut pipe = std::fs::File::open(&log).unwrap();
            go_rx.recv().unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut pipe, &mut text).unwrap();
            text
        })
    };
    let policies = root().join("policies/teesql");
    let collateral = root().join("testdata/dcap/tdx_quote_collateral.json");
    let mut serve = Serve::spawn(&[
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--offline".as_ref(),
        "--now".as_ref(),
        "1751000000".as_ref(),
        "--policy-dir".as_ref(),
        policies.as_os_str(),
        "--collateral-file".as_ref(),
        collateral.as_os_str(),
        "--decision-log".as_ref(),
        log.as_os_str(),
    ]);
    let client = VerifierClient::connect(format!("http://{}", serve.listening()))
        .await
        .unwrap();
    let request = VerifyQuoteRequest {
        purpose: "quote".into(),
        evidence: Some(verify_quote_request::Evidence::Quote(
            std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap(),
        )),
        ..Default::default()
    };
    // About 0.5 MB of lines: far more than a pipe holds, fewer than the queue.
    const PER_TASK: usize = 250;
    const TASKS: usize = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (mut c, r) = (client.clone(), request.clone());
        tasks.spawn(async move {
            for _ in 0..PER_TASK {
                assert!(c.verify_quote(r.clone()).await.unwrap().into_inner().allow);
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    signal(&serve.0, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    go_tx.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = serve.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    let text = reader.join().unwrap();
    assert_eq!(text.lines().count(), PER_TASK * TASKS);
    assert!(text.lines().all(|l| l.ends_with('}')), "a torn line");
}

/// `serve --tls-cert --tls-key` on loopback, and the README's Python client reaching it
/// over TLS with `--ca`, as a client library on another machine would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_over_tls_answers_a_python_grpcio_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki =
        teesql_devattest::server_pki::ServerPki::write(dir.path(), "verifier", "test verifier CA")
            .unwrap();
    let mut serve = Serve::spawn(&[
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--decision-log".as_ref(),
        "off".as_ref(),
        "--tls-cert".as_ref(),
        pki.cert.as_os_str(),
        "--tls-key".as_ref(),
        pki.key.as_os_str(),
    ]);
    let addr = serve.listening();
    let ran = python_verify_peer(&["--ca", pki.ca.to_str().unwrap(), &addr]).await;
    if !ran {
        eprintln!("NOTICE: the Python TLS client was not run (no grpcio here)");
    }
    // A plaintext client gets no decision from the TLS listener.
    let plain = VerifierClient::connect(format!("http://{addr}")).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.verify_quote(VerifyQuoteRequest::default()).await.is_err(),
    };
    assert!(
        refused,
        "a plaintext client got an answer from the TLS listener"
    );
}

/// `serve --listen unix:///…` and the README's Python client over that socket (grpc-core
/// names the socket path as :authority unless told otherwise; the script says localhost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_a_unix_socket_answers_a_python_grpcio_client() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("unix://{}", dir.path().join("v.sock").display());
    let mut serve = Serve::spawn(&[
        "--listen".as_ref(),
        url.as_ref(),
        "--decision-log".as_ref(),
        "off".as_ref(),
    ]);
    assert_eq!(serve.listening(), url);
    if !python_verify_peer(&[&url]).await {
        eprintln!("NOTICE: the Python unix-socket client was not run (no grpcio here)");
    }
}

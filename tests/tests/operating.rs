//! What an operator sees of the two programs run as processes, as in production: JSON
//! log lines that follow one connection across the sidecar and the verifier by one id,
//! no secret in any log, and liveness apart from readiness.
//!
//! Real binaries (`teesql-verifier serve`, `teesql-sidecar provision` and `serve`), a real
//! Postgres, the development guest agent, a tokio-postgres client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use teesql_tests::agent::TestAgent;
use teesql_tests::clients::{connect, tls_config, workspace_bin};
use teesql_tests::cluster::repo_root;
use teesql_tests::postgres::{PgOptions, TempPostgres};

/// A child process whose stderr is collected line by line; killed when dropped.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            stderr,
            name,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The first JSON log line whose message is `message`, waiting up to 60 s.
    async fn wait_for(&mut self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for line in self.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["message"] == message
                {
                    return v;
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}):\n{}",
                    self.name,
                    self.lines().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {message:?} within 60 s:\n{}",
                self.name,
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn sidecar_toml(dir: &Path, agent: &TestAgent, verifier_sock: &Path, pg: &TempPostgres) -> PathBuf {
    let path = dir.join("sidecar.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\npostgres = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [identity]\nendpoint = {:?}\nalt_names = [\"localhost\", \"127.0.0.1\"]\n\
             [verifier]\nurl = \"unix://{}\"\n\
             [backend]\nhost = \"127.0.0.1\"\nport = {}\n",
            agent.socket.display().to_string(),
            verifier_sock.display(),
            pg.port,
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_follow_one_connection_across_both_programs_and_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let pg = tokio::task::spawn_blocking(|| TempPostgres::start(PgOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let agent = TestAgent::start([7u8; 32], dir.path()).await.unwrap();
    // Every secret the programs are given, to look for in their logs afterwards.
    let read_secret = "1a".repeat(32);
    let readwrite_secret = "2b".repeat(32);
    let ita_key = "ita-api-key-that-must-never-be-logged";
    let secrets = [read_secret.as_str(), readwrite_secret.as_str(), ita_key];

    let sock = dir.path().join("verifier.sock");
    let decision_log = dir.path().join("decisions.jsonl");
    let mut verifier = {
        let mut cmd = Command::new(workspace_bin("teesql-verifier").unwrap());
        cmd.args(["serve", "--log-format", "json", "--log", "info"])
            .arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--policy-dir")
            .arg(repo_root().join("policies/dev"))
            .arg("--dev-trust-root")
            .arg(agent.root_der_path())
            .args(["--pccs-url", &agent.url])
            .arg("--decision-log")
            .arg(&decision_log)
            .args(["--metrics-listen", "127.0.0.1:0"])
            .env("INTEL_TRUST_AUTHORITY_API_KEY", ita_key)
            .env_remove("RUST_LOG");
        Proc::spawn("teesql-verifier", cmd)
    };
    let serving = verifier.wait_for("teesql-verifier serving").await;
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert!(serving["timestamp"].is_string(), "{serving}");
    assert_eq!(
        serving["target"], "teesql_verifier::cli::serve",
        "{serving}"
    );

    let config = sidecar_toml(dir.path(), &agent, &sock, &pg);
    let sidecar_bin = workspace_bin("teesql-sidecar").unwrap();
    let sidecar_env = [
        ("TEESQL_READ_SECRET", read_secret.as_str()),
        ("TEESQL_READWRITE_SECRET", readwrite_secret.as_str()),
        ("TEESQL_LOG_FORMAT", "json"),
    ];
    let provisioned = Command::new(&sidecar_bin)
        .args(["provision", "--config"])
        .arg(&config)
        .envs(sidecar_env)
        .output()
        .unwrap();
    assert!(
        provisioned.status.success(),
        "{}",
        String::from_utf8_lossy(&provisioned.stderr)
    );
    let mut sidecar = {
        let mut cmd = Command::new(&sidecar_bin);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .envs(sidecar_env)
            .env("DSTACK_SIMULATOR_ENDPOINT", &agent.socket)
            .env_remove("RUST_LOG");
        Proc::spawn("teesql-sidecar", cmd)
    };
    let serving = sidecar.wait_for("teesql-sidecar serving").await;
    let listen = serving["listen"].as_str().unwrap().to_string();
    let admin = serving["admin"].as_str().unwrap().to_string();
    assert!(
        !listen.ends_with(":0"),
        "the bound port is logged: {serving}"
    );

    // Liveness and readiness, apart.
    let (status, body) = get(&format!("http://{admin}/health/live")).await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = get(&format!("http://{admin}/health/ready")).await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["verifier"], "ok", "{ready}");

    // One connection, logged in with the read-write secret.
    let dsn = format!(
        "postgresql://teesql_readwrite:{readwrite_secret}@{listen}/postgres?sslmode=require"
    );
    let tls = tls_config(&agent.app_ca_path(), None).unwrap();
    let client = connect(&dsn, tls).await.unwrap();
    let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    drop(client);
    let ended = sidecar.wait_for("session ended").await;
    let started = sidecar.wait_for("session started").await;
    let session_id = started["span"]["session_id"].as_str().unwrap().to_string();
    assert_eq!(session_id.len(), 16, "{started}");
    assert_eq!(ended["span"]["session_id"], session_id.as_str(), "{ended}");
    assert_eq!(started["user"], "teesql_readwrite", "{started}");
    assert!(started["handshake_ms"].is_u64(), "{started}");
    assert!(
        started["policy.hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{started}"
    );

    // The verifier's decision on that connection carries the same id.
    let decisions = std::fs::read_to_string(&decision_log).unwrap();
    let decision: serde_json::Value = decisions
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|d| d["decision_id"] == session_id.as_str())
        .unwrap_or_else(|| panic!("no decision {session_id} in:\n{decisions}"));
    assert_eq!(decision["purpose"], "sidecar", "{decision}");
    assert_eq!(decision["allow"], true, "{decision}");
    assert_eq!(
        decision["policy_hash"], started["policy.hash"],
        "{decision}"
    );
    println!("sidecar:  {started}\nsidecar:  {ended}\nverifier: {decision}");

    // Every line of both programs is one JSON object, and no secret is in any of them
    // (nor in the decision log).
    drop(sidecar.child.kill());
    let _ = sidecar.child.wait();
    drop(verifier.child.kill());
    let _ = verifier.child.wait();
    std::thread::sleep(Duration::from_millis(100));
    let mut all = decisions.clone();
    for proc in [&sidecar, &verifier] {
        for line in proc.lines() {
            serde_json::from_str::<serde_json::Value>(&line)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", proc.name));
            all.push_str(&line);
            all.push('\n');
        }
    }
    let mut pg_log = String::new();
    if let Ok(mut f) = std::fs::File::open(pg.log_path()) {
        let _ = f.read_to_string(&mut pg_log);
    }
    for secret in secrets {
        assert!(!all.contains(secret), "a secret is in the logs");
        assert!(!pg_log.contains(secret), "a secret is in the Postgres log");
    }
}

/// The verifier of a cluster that restarts: with `collateral_cache_dir` it asks the
/// PCCS nothing for platforms it knew, answers while the PCCS is down, and still checks
/// every kept file as it checks what it fetches.
#[tokio::test]
async fn a_restarted_verifier_takes_collateral_from_its_cache_directory() {
    use teesql_verifier::service::PeerRequest;
    use teesql_verifier::service::config::{ServeConfig, ServeSettings};

    let dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start([9u8; 32], dir.path()).await.unwrap();
    let cache_dir = dir.path().join("collateral-cache");
    let leaf = agent
        .agent
        .issue_tls_key(&teesql_devattest::RaTlsRequest {
            subject: "client".into(),
            alt_names: vec!["client".into()],
            usage_ra_tls: true,
            usage_client_auth: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .leaf_der;
    let start = |pccs_url: String, now: Option<u64>| {
        let settings = ServeSettings {
            policy_dirs: Some(vec![repo_root().join("policies/dev")]),
            dev_trust_root: Some(agent.root_der_path()),
            pccs_url: Some(pccs_url),
            collateral_cache_dir: Some(cache_dir.clone()),
            decision_log: Some("off".into()),
            sign_decisions: Some(false),
            now,
            ..ServeSettings::default()
        };
        ServeConfig::resolve(settings).unwrap().build().unwrap()
    };
    let judge = |service: Arc<teesql_verifier::service::DecisionService>| {
        let leaf = leaf.clone();
        async move {
            let d = service
                .verify_peer(PeerRequest {
                    purpose: "sidecar".into(),
                    chain: vec![leaf],
                    connection: Default::default(),
                })
                .await
                .unwrap();
            let claims: serde_json::Value = serde_json::from_str(&d.claims_json).unwrap();
            (
                claims["tdx"]["verified"].as_bool(),
                claims["tdx"]["error"].clone(),
            )
        }
    };

    // First start: everything comes from the PCCS and is kept.
    let before = agent.agent.pccs_requests();
    let (verified, error) = judge(start(agent.url.clone(), None)).await;
    assert_eq!(verified, Some(true), "{error}");
    let fetched = agent.agent.pccs_requests() - before;
    assert!(fetched > 0);
    // The files are written in the background: wait for them (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let names: Vec<String> = std::fs::read_dir(&cache_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        if names.iter().any(|n| n.starts_with("standard-")) || Instant::now() > deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        kept.iter().any(|n| n.starts_with("standard-tdx-")),
        "{kept:?}"
    );

    // A restart with the directory warm: not one request to the PCCS.
    let before = agent.agent.pccs_requests();
    let (verified, error) = judge(start(agent.url.clone(), None)).await;
    assert_eq!(verified, Some(true), "{error}");
    assert_eq!(
        agent.agent.pccs_requests() - before,
        0,
        "a warm restart asked the PCCS (first start: {fetched} requests; kept {kept:?})"
    );
    println!("PCCS requests: first start {fetched}, warm restart 0; kept {kept:?}");

    // The PCCS down (nothing listens there): the kept collateral still answers.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (verified, error) = judge(start(down.clone(), None)).await;
    assert_eq!(verified, Some(true), "PCCS down: {error}");

    // Kept collateral is used only within its validity: a year on, it is not, and with
    // the PCCS down there is nothing to verify with.
    let next_year = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 366 * 86400;
    let (verified, _) = judge(start(down.clone(), Some(next_year))).await;
    assert_ne!(verified, Some(true));

    // A kept file altered on disk is checked like anything fetched: its signature fails.
    let standard = kept.iter().find(|n| n.starts_with("standard-")).unwrap();
    let path = cache_dir.join(standard);
    let mut entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let tcb_info = entry["collateral"]["tcb_info"]
        .as_str()
        .unwrap()
        .to_string();
    let altered = tcb_info.replacen("\"tcbLevels\"", "\"tcbLevels\" ", 1);
    assert_ne!(altered, tcb_info);
    entry["collateral"]["tcb_info"] = serde_json::json!(altered);
    std::fs::write(&path, serde_json::to_vec(&entry).unwrap()).unwrap();
    let (verified, error) = judge(start(down, None)).await;
    assert_ne!(verified, Some(true), "an altered TCB info verified");
    println!("altered kept collateral: {error}");
}

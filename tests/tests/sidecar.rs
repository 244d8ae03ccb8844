//! The sidecar end to end: a real Postgres started by the harness, the real verifier over
//! gRPC with the development root, the development agent, and real clients (`psql`,
//! `tokio-postgres` over rustls, raw sockets). Every refusal must be the one generic
//! `FATAL 28000 authentication_failed`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::Digest;
use teesql_tests::clients::{connect, psql, psql_env, tls_config};
use teesql_tests::cluster::{Cluster, ClusterOptions, repo_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The refusal a client sees, and nothing that says why.
fn assert_generic_refusal(o: &std::process::Output, what: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "{what}: should have failed");
    assert!(
        err.contains("FATAL:  authentication_failed"),
        "{what}: {err}"
    );
    for leak in [
        "verifier",
        "secret",
        "role",
        "policy",
        "certificate",
        "quote",
        "denied",
    ] {
        assert!(
            !err.to_lowercase().contains(leak),
            "{what}: leaks {leak:?}: {err}"
        );
    }
}

/// A profile that trusts the development root but requires client attestation, as
/// production does.
fn attested_profile(dir: &Path) -> String {
    let base = repo_root().join("policies/dev").canonicalize().unwrap();
    std::fs::write(
        dir.join("profile.toml"),
        format!("extends = [{:?}]\n", base.display().to_string()),
    )
    .unwrap();
    std::fs::write(
        dir.join("data.json"),
        r#"{"teesql": {"require_client_attestation": true}}"#,
    )
    .unwrap();
    dir.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_d_roles_secrets_and_privileges() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let rw = c.dsn(
        "teesql_readwrite",
        &c.readwrite_secret,
        "postgres",
        "require",
    );
    let o = psql(
        &rw,
        &[
            "-c",
            "CREATE TABLE t (id int PRIMARY KEY, v text)",
            "-c",
            "INSERT INTO t VALUES (1, 'one')",
            "-c",
            "SELECT current_user, v FROM t",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().last(), Some("teesql_readwrite|one"));

    // Downgrade: the read role accepts the read-write secret, and can only read.
    let down = c.dsn("teesql_read", &c.readwrite_secret, "postgres", "require");
    let o = psql(&down, &["-c", "SELECT current_user, v FROM t"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "teesql_read|one");
    let o = psql(&down, &["-c", "INSERT INTO t VALUES (2, 'two')"]).await;
    assert!(stderr(&o).contains("permission denied"), "{}", stderr(&o));
    let o = psql(&down, &["-c", "CREATE TABLE u (x int)"]).await;
    assert!(stderr(&o).contains("permission denied"), "{}", stderr(&o));

    // The read secret works for read, not for read-write.
    let read = c.dsn("teesql_read", &c.read_secret, "postgres", "require");
    let o = psql(&read, &["-c", "SELECT count(*) FROM t"]).await;
    assert_eq!(stdout(&o), "1", "{}", stderr(&o));
    let o = psql(
        &c.dsn("teesql_readwrite", &c.read_secret, "postgres", "require"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert_generic_refusal(&o, "readwrite with the read secret");

    // Wrong secret, upper-case secret, unknown role.
    let wrong = "ab".repeat(32);
    let o = psql(
        &c.dsn("teesql_read", &wrong, "postgres", "require"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert_generic_refusal(&o, "wrong secret");
    let upper = c.read_secret.to_uppercase();
    let o = psql(
        &c.dsn("teesql_read", &upper, "postgres", "require"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(
        o.status.success(),
        "upper-case hex is the same secret: {}",
        stderr(&o)
    );
    let o = psql(
        &c.dsn("nobody", &c.read_secret, "postgres", "require"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert_generic_refusal(&o, "unknown role");

    // Plaintext is refused with a clear message.
    let o = psql(
        &c.dsn("teesql_read", &c.read_secret, "postgres", "disable"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(stderr(&o).contains("TLS is required"), "{}", stderr(&o));

    // Channel binding (SCRAM-SHA-256-PLUS) is offered by default only to a TLS peer that
    // negotiated ALPN `postgresql` (libpq 17+); an older psql that requires it refuses on
    // its own side. (tests/interop.rs covers libpq 18 and `channel_binding = "always"`.)
    let cb = format!(
        "{}&channel_binding=require",
        c.dsn("teesql_read", &c.read_secret, "postgres", "require")
    );
    let o = psql(&cb, &["-c", "SELECT 1"]).await;
    if teesql_tests::clients::libpq_sends_alpn() {
        assert!(o.status.success(), "channel binding: {}", stderr(&o));
    } else {
        assert!(!o.status.success());
        assert!(stderr(&o).contains("channel binding"), "{}", stderr(&o));
    }

    // Provisioning again changes nothing and fails nothing.
    teesql_sidecar::postgres::provision::provision(c.sidecar_config(), &["postgres".to_string()])
        .await
        .unwrap();
    let o = psql(&read, &["-c", "SELECT v FROM t"]).await;
    assert_eq!(stdout(&o), "one");

    let metrics = reqwest::get(format!("http://{}/metrics", c.admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("teesql_sidecar_connections_total{outcome=\"auth_failed\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("teesql_sidecar_connections_total{outcome=\"plaintext_refused\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("teesql_sidecar_relayed_bytes_total{direction=\"backend_to_client\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_b_and_client_certificates_under_required_attestation() {
    let dir = tempfile::tempdir().unwrap();
    let profile = attested_profile(dir.path());
    let log = dir.path().join("decisions.jsonl");
    let superuser_password = "s3cret-superuser".to_string();
    let mut pg = teesql_tests::postgres::PgOptions {
        superuser_password: Some(superuser_password.clone()),
        ..Default::default()
    };
    pg.hba = vec![
        "local all all trust".into(),
        "host all postgres 127.0.0.1/32 scram-sha-256".into(),
        "host all all 127.0.0.1/32 trust".into(),
    ];
    let c = Cluster::start(ClusterOptions {
        profile,
        pg,
        decision_log: log.display().to_string(),
        sidecar_toml: "[auth]\npassthrough_roles = [\"postgres\"]\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let (cert, key) = c.client_certificate(dir.path()).await.unwrap();
    let ca = c.agent.app_ca_path();
    let port = c.sidecar_addr.port();
    let mode_b = |user: &str, pw: &str, with_cert: bool| {
        let mut s = format!(
            "host=127.0.0.1 port={port} user={user} password={pw} dbname=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        );
        if with_cert {
            s.push_str(&format!(
                " sslcert={} sslkey={}",
                cert.display(),
                key.display()
            ));
        }
        s
    };
    // Mode B: psql verify-full with the agent's client certificate, as the superuser
    // (passthrough: Postgres checks the password).
    let o = psql(
        &mode_b("postgres", &superuser_password, true),
        &["-c", "SELECT current_user"],
    )
    .await;
    assert!(o.status.success(), "mode B: {}", stderr(&o));
    assert_eq!(stdout(&o), "postgres");
    let o = psql(&mode_b("postgres", "wrong", true), &["-c", "SELECT 1"]).await;
    assert_generic_refusal(&o, "mode B wrong superuser password");
    // The cluster secret with a client certificate.
    let o = psql(
        &mode_b("teesql_readwrite", &c.readwrite_secret, true),
        &["-c", "SELECT current_user"],
    )
    .await;
    assert_eq!(stdout(&o), "teesql_readwrite", "{}", stderr(&o));
    // No client certificate: attestation is required.
    let o = psql(
        &mode_b("teesql_readwrite", &c.readwrite_secret, false),
        &["-c", "SELECT 1"],
    )
    .await;
    assert_generic_refusal(&o, "no client certificate");

    // tokio-postgres over rustls with the agent's certificate (SCRAM-SHA-256-PLUS).
    let tls = tls_config(&ca, Some((&cert, &key))).unwrap();
    let client = connect(
        &c.dsn(
            "teesql_readwrite",
            &c.readwrite_secret,
            "postgres",
            "require",
        ),
        tls,
    )
    .await
    .unwrap();
    let row = client
        .query_one("SELECT $1::int * 2", &[&21])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);

    // A certificate carrying another key's (genuine) attestation is refused.
    let forged = forge_certificate(&cert, dir.path());
    let tls = tls_config(&ca, Some((&forged.0, &forged.1))).unwrap();
    let err = connect(
        &c.dsn(
            "teesql_readwrite",
            &c.readwrite_secret,
            "postgres",
            "require",
        ),
        tls,
    )
    .await
    .unwrap_err();
    let db = err.as_db_error().expect("a FATAL from the sidecar");
    assert_eq!(db.code().code(), "28000");
    assert_eq!(db.message(), "authentication_failed");

    // The causes are in the verifier's decision log, not in what clients saw.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let decisions = std::fs::read_to_string(&log).unwrap();
    assert!(decisions.contains("key_not_bound"), "{decisions}");
    assert!(
        decisions.contains("client_attestation_required"),
        "{decisions}"
    );
}

/// A certificate for a fresh key that carries the attestation extension of `genuine`.
fn forge_certificate(genuine: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let pem = std::fs::read(genuine).unwrap();
    let chain = teesql_verifier::evidence::decode_cert_chain(&pem).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let ext = leaf
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == teesql_verifier::evidence::oid::ATTESTATION)
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["teesql-client".into()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 62397, 1, 8],
            ext.value.to_vec(),
        ));
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("forged.pem"), dir.join("forged-key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

async fn read_error(s: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_protocol_edge_cases() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[limits]\ntls_handshake_timeout_secs = 2\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let addr = c.sidecar_addr;
    let ssl_request = teesql_sidecar::pgwire::ssl_request();

    // Plaintext bytes pipelined after the SSLRequest: fatal, never part of the session.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut bytes = ssl_request.to_vec();
    bytes.extend_from_slice(b"\0\0\0\x08garbage!");
    s.write_all(&bytes).await.unwrap();
    let e = read_error(&mut s).await;
    assert!(
        e.starts_with('E') && e.contains("received unencrypted data after SSL request"),
        "{e:?}"
    );

    // An oversize startup packet is refused from its length alone.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0])
        .await
        .unwrap();
    let e = read_error(&mut s).await;
    assert!(e.contains("invalid startup packet"), "{e:?}");

    // An unknown request code, and a length that lies.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x99])
        .await
        .unwrap();
    assert!(read_error(&mut s).await.contains("invalid startup packet"));

    // GSSENCRequest gets 'N', then an SSLRequest gets 'S'.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
        .await
        .unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"N");
    s.write_all(&ssl_request).await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"S");

    // A client that says nothing is closed at the handshake deadline.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not closed at the deadline"
    );

    // Direct TLS (PostgreSQL 17 sslnegotiation=direct), with and without ALPN: the first
    // byte is a ClientHello, and the sidecar answers the StartupMessage with SASL;
    // SCRAM-SHA-256-PLUS only to the client that negotiated ALPN `postgresql`.
    for alpn in [true, false] {
        let mut tls = c.tls_connect(alpn).await.unwrap();
        if alpn {
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
        }
        let startup = teesql_sidecar::pgwire::startup_message(&[
            ("user", "teesql_read"),
            ("database", "postgres"),
        ]);
        tls.write_all(&startup).await.unwrap();
        let (tag, body) = teesql_sidecar::pgwire::read_message(&mut tls, 1024)
            .await
            .unwrap();
        assert_eq!(tag, b'R');
        let offered = String::from_utf8_lossy(&body).into_owned();
        assert!(offered.contains("SCRAM-SHA-256\0"), "{offered:?}");
        assert_eq!(offered.contains("SCRAM-SHA-256-PLUS"), alpn, "{offered:?}");
    }

    // The sidecar is still fine after all that.
    let o = psql(
        &c.dsn("teesql_read", &c.read_secret, "postgres", "require"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert_eq!(stdout(&o), "1", "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_a_running_query_through_the_sidecar() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let tls = c.client_tls().unwrap();
    let client = connect(
        &c.dsn("teesql_read", &c.read_secret, "postgres", "require"),
        tls.clone(),
    )
    .await
    .unwrap();
    let token = client.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token
        .cancel_query(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await
        .unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_and_verifier_down() {
    let mut c = Cluster::start(ClusterOptions {
        sidecar_toml: "[verifier]\ntimeout_ms = 2000\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dsn = c.dsn("teesql_read", &c.read_secret, "postgres", "require");
    let health = format!("http://{}/health", c.admin_addr.unwrap());
    assert_eq!(reqwest::get(&health).await.unwrap().status(), 200);

    // Postgres stopped: a clear FATAL, and the sidecar stays up.
    tokio::task::block_in_place(|| c.pg.stop()).unwrap();
    let o = psql(&dsn, &["-c", "SELECT 1"]).await;
    assert!(
        stderr(&o).contains("the database is not available"),
        "{}",
        stderr(&o)
    );
    // /health reuses its last check for up to a second; the next one sees Postgres down.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = reqwest::get(&health).await.unwrap();
        if r.status() != 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_ne!(body["postgres"], "ok");
    assert_eq!(body["verifier"], "ok");
    // A burst of /attestation shares the failure instead of retrying Postgres per caller.
    let admin = c.admin_addr.unwrap();
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let url = format!("http://{admin}/attestation");
            tokio::spawn(async move { reqwest::get(url).await.unwrap().status() })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), 503);
    }
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failed: usize = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("teesql_sidecar_attestation_reports_total{source=\"failed\"} ")
        })
        .unwrap_or_else(|| panic!("no failed count in\n{metrics}"))
        .parse()
        .unwrap();
    // One attempt, or two when the burst straddles a second.
    assert!(
        (1..=2).contains(&failed),
        "{failed} attempts for 10 callers"
    );
    tokio::task::block_in_place(|| c.pg.restart()).unwrap();
    let o = psql(&dsn, &["-c", "SELECT 1"]).await;
    assert_eq!(stdout(&o), "1", "after Postgres came back: {}", stderr(&o));

    // Verifier stopped: fail closed, generically, within the verifier timeout.
    c.stop_verifier();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let o = psql(&dsn, &["-c", "SELECT 1"]).await;
    assert_generic_refusal(&o, "verifier down");
    assert!(started.elapsed() < Duration::from_secs(15));
    // Again, once the last check is a second old.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body: serde_json::Value = reqwest::get(&health).await.unwrap().json().await.unwrap();
        if body["verifier"] != "ok" || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(body["verifier"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_sessions() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let tls = c.client_tls().unwrap();
    let dsn = c.dsn("teesql_read", &c.read_secret, "postgres", "require");
    let mut tasks = Vec::new();
    for i in 0..100i32 {
        let (dsn, tls) = (dsn.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let client = connect(&dsn, tls).await.unwrap();
            let mut sum = 0i64;
            for j in 0..5i32 {
                let row = client
                    .query_one(
                        "SELECT $1::int * 1000 + $2::int, pg_backend_pid()",
                        &[&i, &j],
                    )
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), i * 1000 + j);
                sum += i64::from(row.get::<_, i32>(0));
            }
            sum
        }));
    }
    let mut total = 0i64;
    for t in tasks {
        total += t.await.unwrap();
    }
    let expected: i64 = (0..100i64)
        .map(|i| (0..5i64).map(|j| i * 1000 + j).sum::<i64>())
        .sum();
    assert_eq!(total, expected);
}

/// Names of this process' threads (the in-process sidecar's serving threads among them).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

/// `listen.postgres_threads`: the port is served by threads of its own, each with its own
/// listener; the connection cap is the whole port's, sessions work, and shutdown still
/// drains them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_share_one_cap_and_drain() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[listen]\npostgres_threads = 2\n[limits]\nmax_connections = 6\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The threads start when the sidecar starts serving (its listener is bound before),
    // each on its own: wait for both.
    let mut names = thread_names();
    for _ in 0..50 {
        if ["postgres-0", "postgres-1"]
            .iter()
            .all(|n| names.iter().any(|t| t == n))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        names = thread_names();
    }
    for n in ["postgres-0", "postgres-1"] {
        assert_eq!(
            names.iter().filter(|t| *t == n).count(),
            1,
            "one serving thread {n}: {names:?}"
        );
    }
    let tls = c.client_tls().unwrap();
    let dsn = c.dsn("teesql_read", &c.read_secret, "postgres", "require");
    let mut clients = Vec::new();
    for i in 0..6i32 {
        let client = connect(&dsn, tls.clone()).await.unwrap();
        let row = client.query_one("SELECT $1::int + 1", &[&i]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        clients.push(client);
    }
    // The seventh is over the port's cap, whichever thread's listener gets it.
    for _ in 0..4 {
        let mut extra = TcpStream::connect(c.sidecar_addr).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), extra.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.contains("53300") && text.contains("too many clients"),
            "{text:?}"
        );
    }
    // Shutdown: no new connections, the open sessions run until they end.
    let last = clients.pop().unwrap();
    drop(clients);
    let _c = stop_draining(c, last).await;
    let names = thread_names();
    assert!(
        !names.iter().any(|t| t.starts_with("postgres-")),
        "the serving threads ended: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_200_mib_in_and_out_with_matching_checksums() {
    use futures_util::{SinkExt, StreamExt};
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = c
        .connect("teesql_readwrite", &c.readwrite_secret, "postgres")
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE blob (line text)")
        .await
        .unwrap();
    const TARGET: usize = 200 * 1024 * 1024;
    let mut sent = sha2::Sha256::new();
    let mut sent_bytes = 0usize;
    {
        let sink = client.copy_in("COPY blob FROM STDIN").await.unwrap();
        futures_util::pin_mut!(sink);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut chunk = Vec::with_capacity(1 << 20);
        while sent_bytes < TARGET {
            chunk.clear();
            while chunk.len() < (1 << 20) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.extend_from_slice(format!("{x:016x}{:048x}\n", x.rotate_left(17)).as_bytes());
            }
            sent.update(&chunk);
            sent_bytes += chunk.len();
            sink.send(bytes::Bytes::copy_from_slice(&chunk))
                .await
                .unwrap();
        }
        assert!(sink.finish().await.unwrap() > 0);
    }
    let stream = client.copy_out("COPY blob TO STDOUT").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut got = sha2::Sha256::new();
    let mut got_bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        got_bytes += chunk.len();
        got.update(&chunk);
    }
    assert_eq!(got_bytes, sent_bytes);
    assert!(got_bytes >= TARGET);
    assert_eq!(got.finalize(), sent.finalize());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_report_verifies_and_health_answers() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let admin = c.admin_addr.unwrap();
    let health: serde_json::Value = reqwest::get(format!("http://{admin}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["identity"], "ok");
    let report = reqwest::get(format!("http://{admin}/attestation"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    for field in [
        "app_id",
        "compose_hash",
        "instance_id",
        "quote",
        "timestamp",
        "event_log",
        "vm_config",
    ] {
        assert!(!v[field].is_null(), "{field} missing: {v}");
    }
    assert!(
        v["postgres_state"]["wal_lsn"]
            .as_str()
            .unwrap()
            .contains('/')
    );
    assert_eq!(
        v["postgres_state"]["controldata_hash"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    let decision = c.verifier.verify_report(&report).await.unwrap();
    assert!(decision.allow, "{:?}", decision.reasons);
    let claims: serde_json::Value = serde_json::from_str(&decision.claims_json).unwrap();
    assert_eq!(claims["binding"]["kind"], "report_data");
    assert_eq!(claims["binding"]["ok"], true);
    assert_eq!(claims["report"]["consistent"], true);
    // Tampering with the stated Postgres state breaks the binding.
    let mut forged = v.clone();
    forged["postgres_state"]["wal_lsn"] = "0/0".into();
    let d = c.verifier.verify_report(&forged.to_string()).await.unwrap();
    assert!(!d.allow);
    assert!(
        d.reasons.iter().any(|r| r.code == "key_not_bound"),
        "{:?}",
        d.reasons
    );
    // The same quote with another VM configuration is appraised on its own: the cache
    // key covers every input of the report's evidence, not just the quote.
    let mut other_vm = v.clone();
    other_vm["vm_config"] = r#"{"os_image_hash":"00"}"#.into();
    let d = c
        .verifier
        .verify_report(&other_vm.to_string())
        .await
        .unwrap();
    assert!(!d.cached);
    let claims: serde_json::Value = serde_json::from_str(&d.claims_json).unwrap();
    assert_eq!(claims["evidence"]["vm_config"]["os_image_hash"], "00");

    // Unauthenticated callers cannot make the sidecar log in to Postgres and quote per
    // request: a burst gets at most one new report per second.
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let url = format!("http://{admin}/attestation");
            tokio::spawn(async move {
                let r = reqwest::get(url).await.unwrap();
                assert_eq!(r.status(), 200);
                r.json::<serde_json::Value>().await.unwrap()["timestamp"]
                    .as_u64()
                    .unwrap()
            })
        })
        .collect();
    let mut seconds = std::collections::BTreeSet::from([v["timestamp"].as_u64().unwrap()]);
    for b in burst {
        seconds.insert(b.await.unwrap());
    }
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let made = metrics
        .lines()
        .find_map(|l| l.strip_prefix("teesql_sidecar_attestation_reports_total{source=\"made\"} "))
        .unwrap_or_else(|| panic!("no made count in\n{metrics}"));
    assert_eq!(made.parse::<usize>().unwrap(), seconds.len(), "{metrics}");
    assert!(metrics.contains("teesql_sidecar_attestation_reports_total{source=\"reused\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_rate_limited_per_address() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[limits]\nfailed_auth_per_minute = 3\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let wrong = c.dsn("teesql_read", &"cd".repeat(32), "postgres", "require");
    for _ in 0..3 {
        assert_generic_refusal(&psql(&wrong, &["-c", "SELECT 1"]).await, "wrong secret");
    }
    // Now even the right secret is refused from this address, the same way.
    let right = c.dsn("teesql_read", &c.read_secret, "postgres", "require");
    let o = psql(&right, &["-c", "SELECT 1"]).await;
    assert!(!o.status.success(), "{} / {}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("authentication_failed"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_close_and_renewal_keeps_sessions() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[limits]\nidle_timeout_secs = 2\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let tls = c.client_tls().unwrap();
    let dsn = c.dsn("teesql_read", &c.read_secret, "postgres", "require");
    let old_leaf = c.sidecar.cert.current().certified.cert[0].clone();

    let client = connect(&dsn, tls.clone()).await.unwrap();
    // A new certificate is swapped in while the session is open.
    let agent = teesql_sidecar::identity::GuestAgent::new(Some(c.agent.socket.to_str().unwrap()));
    let renewed = teesql_sidecar::identity::server_identity(
        &agent,
        "localhost",
        &["localhost".into(), "127.0.0.1".into()],
    )
    .await
    .unwrap();
    c.sidecar.cert.replace(renewed);
    assert_eq!(
        client
            .query_one("SELECT 7", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
    // New connections get the new certificate.
    let cfg = tls.clone();
    let tcp = TcpStream::connect(c.sidecar_addr).await.unwrap();
    let mut s = tcp;
    s.write_all(&teesql_sidecar::pgwire::ssl_request())
        .await
        .unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    let tls_stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            s,
        )
        .await
        .unwrap();
    let new_leaf = tls_stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(new_leaf, old_leaf);

    // Idle for longer than the timeout: the sidecar closes the session.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(client.query_one("SELECT 1", &[]).await.is_err());
    assert!(client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_sessions_and_stops_accepting() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let tls = c.client_tls().unwrap();
    let dsn = c.dsn("teesql_read", &c.read_secret, "postgres", "require");
    let client = connect(&dsn, tls.clone()).await.unwrap();
    let _c = stop_draining(c, client).await;
}

/// Stop `c`'s sidecar while `session` is open: the session still answers and new
/// connections are refused; the stop waits for the session, and ends once it closes.
async fn stop_draining(mut c: Cluster, session: tokio_postgres::Client) -> Cluster {
    let addr = c.sidecar_addr;
    let stopping = tokio::spawn(async move {
        c.stop_sidecar().await;
        c
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = session.query_one("SELECT 5", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 5);
    assert!(TcpStream::connect(addr).await.is_err());
    assert!(!stopping.is_finished(), "drain waits for the session");
    drop(session);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("drained once the session closed")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_login_methods_and_cleartext_clients() {
    for (method, encryption) in [
        ("scram-sha-256", "scram-sha-256"),
        ("md5", "md5"),
        ("password", "scram-sha-256"),
    ] {
        let pg = teesql_tests::postgres::PgOptions {
            hba: vec![
                "local all all trust".into(),
                "host all postgres 127.0.0.1/32 trust".into(),
                format!("host all all 127.0.0.1/32 {method}"),
            ],
            settings: vec![("password_encryption".into(), encryption.into())],
            ..Default::default()
        };
        let c = Cluster::start(ClusterOptions {
            pg,
            sidecar_toml: format!(
                "[backend]\nmethod = \"{method}\"\npassword_file = \"{}\"\n[auth]\nmethod = \"cleartext\"\n",
                write_password_file(method).display()
            ),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{method}: {e:#}"));
        let o = psql(
            &c.dsn(
                "teesql_readwrite",
                &c.readwrite_secret,
                "postgres",
                "require",
            ),
            &["-c", "SELECT current_user"],
        )
        .await;
        assert_eq!(stdout(&o), "teesql_readwrite", "{method}: {}", stderr(&o));
        let o = psql_env(
            &c.dsn("teesql_readwrite", &"00".repeat(32), "postgres", "require"),
            &["-c", "SELECT 1"],
            &[],
        )
        .await;
        assert_generic_refusal(&o, "cleartext wrong secret");
        // Provisioning sent Postgres a verifier, not the password.
        let stored =
            c.pg.psql(
                "postgres",
                "postgres",
                "SELECT rolpassword FROM pg_authid WHERE rolname = 'teesql_readwrite'",
            )
            .unwrap();
        let prefix = if method == "md5" {
            "md5"
        } else {
            "SCRAM-SHA-256$"
        };
        assert!(stored.trim().starts_with(prefix), "{method}: {stored}");
        assert!(!stored.contains(&format!("backend-{method}-password")));
    }
}

fn write_password_file(method: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("teesql-backend-pw-{}-{method}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pw");
    std::fs::write(&path, format!("backend-{method}-password\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_are_reset_and_reused_between_clients() {
    // Reuse is opt-in: by default every client gets its own Postgres connection.
    let plain = Cluster::start(ClusterOptions::default()).await.unwrap();
    let tls = plain.client_tls().unwrap();
    let rw = plain.dsn(
        "teesql_readwrite",
        &plain.readwrite_secret,
        "postgres",
        "require",
    );
    let mut pids = Vec::new();
    for _ in 0..2 {
        let client = connect(&rw, tls.clone()).await.unwrap();
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        pids.push(pid);
        drop(client);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_ne!(pids[0], pids[1], "no reuse unless configured");
    assert_eq!(plain.sidecar.pool.idle_count(), 0);
    drop(plain);

    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[backend]\npool_max_idle_per_key = 16\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let tls = c.client_tls().unwrap();
    let rw = c.dsn(
        "teesql_readwrite",
        &c.readwrite_secret,
        "postgres",
        "require",
    );
    let setup = connect(&rw, tls.clone()).await.unwrap();
    setup
        .batch_execute("CREATE TABLE kept (v int)")
        .await
        .unwrap();
    drop(setup);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A session that leaves state behind: a temporary table, a setting, a prepared
    // statement, an advisory lock. (One that ends inside a transaction is not pooled:
    // below.)
    let first = connect(&rw, tls.clone()).await.unwrap();
    let pid: i32 = first
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    first
        .batch_execute(
            "CREATE TEMP TABLE scratch (x int); SET work_mem = '7MB'; PREPARE p AS SELECT 1; \
             SELECT pg_advisory_lock(42);",
        )
        .await
        .unwrap();
    drop(first); // tokio-postgres sends Terminate
    tokio::time::sleep(Duration::from_millis(300)).await;

    let second = connect(&rw, tls.clone()).await.unwrap();
    let pid2: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid2, pid, "the Postgres connection was reused");
    let temp: i64 = second
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(temp, 0, "temporary table discarded");
    let wm: String = second.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_ne!(wm, "7MB", "setting reset");
    assert!(
        second.batch_execute("EXECUTE p").await.is_err(),
        "prepared statement gone"
    );
    let locks: i64 = second
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(locks, 0, "advisory lock released");

    // Another role never gets this role's connection.
    let read = c
        .connect("teesql_read", &c.read_secret, "postgres")
        .await
        .unwrap();
    let pid3: i32 = read
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid3, pid);
    assert_eq!(
        read.query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "teesql_read"
    );

    // A session that ends inside a transaction is closed, not pooled: only a connection
    // the relay saw idle at Terminate is reset and kept (issue 23). Its row is gone.
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.sidecar.pool.idle_count(), 1);
    let open = connect(&rw, tls.clone()).await.unwrap();
    let open_pid: i32 = open
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open_pid, pid, "the kept connection is handed out");
    open.batch_execute("BEGIN; INSERT INTO kept VALUES (1);")
        .await
        .unwrap();
    drop(open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.sidecar.pool.idle_count(),
        0,
        "not kept: it ended in a transaction"
    );
    let second = connect(&rw, tls.clone()).await.unwrap();
    let rows: i64 = second
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the open transaction was rolled back");
    let pid: i32 = second
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid, open_pid, "a fresh Postgres connection");

    // A kept connection that Postgres ended while it waited is not handed out.
    drop(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.sidecar.pool.idle_count(), 1);
    let out =
        c.pg.psql(
            "postgres",
            "postgres",
            &format!("SELECT pg_terminate_backend({pid})"),
        )
        .unwrap();
    assert!(out.contains('t'), "terminated: {out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = connect(&rw, tls).await.unwrap();
    let pid4: i32 = third
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid4, pid, "a fresh Postgres connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_can_be_a_unix_socket() {
    let c = Cluster::start(ClusterOptions {
        backend_unix_socket: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = c
        .connect("teesql_read", &c.read_secret, "postgres")
        .await
        .unwrap();
    let row = client
        .query_one("SELECT current_user::text, inet_server_addr() IS NULL", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "teesql_read");
    assert!(
        row.get::<_, bool>(1),
        "Postgres sees a unix-socket connection"
    );
}

/// A client asking for protocol options (`_pq_.*`) is told none is supported with
/// NegotiateProtocolVersion, as Postgres answers, and the login goes on: the options are
/// neither refused nor passed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_options_get_negotiate_protocol_version() {
    use teesql_sidecar::pgwire::{self, decode};
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let mut tls = c.tls_connect(false).await.unwrap();
    tls.write_all(&pgwire::startup_message(&[
        ("user", "teesql_read"),
        ("database", "postgres"),
        ("_pq_.test_option", "1"),
    ]))
    .await
    .unwrap();
    let (tag, body) = pgwire::read_message(&mut tls, 8192).await.unwrap();
    assert_eq!(tag, b'v', "NegotiateProtocolVersion first");
    let (minor, options) = decode::negotiate_protocol_version(&body).unwrap();
    assert_eq!(minor, 0);
    assert_eq!(options, vec!["_pq_.test_option"]);
    // Then the authentication request, as for any login.
    let (tag, _) = pgwire::read_message(&mut tls, 8192).await.unwrap();
    assert_eq!(tag, b'R');
}

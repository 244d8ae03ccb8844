//! What a hostile peer can get out of the front door, end to end on loopback: a rogue
//! server in front of `forward` (mode A) must never receive the cluster secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teesql_devattest::{AgentConfig, RaTlsRequest};
use teesql_sidecar::forward::ForwardSettings;
use teesql_sidecar::pgwire::backend;
use teesql_tests::agent::TestAgent;
use teesql_tests::clients::psql;
use teesql_tests::cluster::{Cluster, ClusterOptions, RawSession};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A rogue Postgres server in another CVM on the same dstack image (the same MRTD, the
/// same development PKI) but running another application: it presents a genuine RA-TLS
/// certificate and asks the client for `auth` (AuthenticationCleartextPassword = 3,
/// AuthenticationMD5Password = 5). Everything it receives afterwards is recorded.
async fn rogue_server(agent: &TestAgent, auth: u32) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let issued = agent
        .agent
        .issue_tls_key(&RaTlsRequest {
            subject: "localhost".into(),
            alt_names: vec!["localhost".into()],
            usage_ra_tls: true,
            usage_server_auth: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let identity = teesql_sidecar::frontend::tls::ServerIdentity::from_pem(
        &issued.chain_pem.concat(),
        &issued.key_pem,
    )
    .unwrap();
    let config = teesql_sidecar::frontend::tls::server_config(
        teesql_sidecar::frontend::tls::RotatingCert::new(identity),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if teesql_sidecar::pgwire::read_startup_packet(&mut tls)
                    .await
                    .is_err()
                {
                    return;
                }
                let mut request = Vec::new();
                if auth == 5 {
                    backend::authentication_md5_password(&mut request, *b"salt");
                } else {
                    backend::authentication_cleartext_password(&mut request);
                }
                let _ = tls.write_all(&request).await;
                let mut buf = vec![0u8; 4096];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, received)
}

async fn forwarder(
    c: &Cluster,
    to: SocketAddr,
    tweak: impl FnOnce(&mut ForwardSettings),
) -> SocketAddr {
    let mut settings = ForwardSettings {
        to: Some(to.to_string()),
        expected_mrtds: vec![c.agent.agent.mrtd_hex()],
        expected_compose_hashes: vec![],
        ..c.forward_settings()
    };
    tweak(&mut settings);
    c.forward(settings).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_server_gets_no_secret_through_forward() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    // The rogue: same seed (same PKI, same MRTD), another application.
    let dir = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(ClusterOptions::default().seed);
    config.app_compose = br#"{"manifest_version":2,"name":"rogue","runner":"docker-compose","docker_compose_file":"services: {}\n"}"#.to_vec();
    let rogue_agent = TestAgent::start_with(config, dir.path()).await.unwrap();
    assert_eq!(rogue_agent.agent.mrtd_hex(), c.agent.agent.mrtd_hex());
    assert_ne!(
        rogue_agent.agent.compose_hash_hex(),
        c.agent.agent.compose_hash_hex()
    );

    // Pinned by MRTD only: the forwarder will not start.
    let errors = ForwardSettings {
        to: Some("127.0.0.1:1".into()),
        verifier: teesql_sidecar::verifier::TrustSettings {
            url: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        },
        expected_mrtds: vec![c.agent.agent.mrtd_hex()],
        ..Default::default()
    }
    .resolve(&teesql_proto::settings::NoEnv)
    .unwrap_err();
    assert!(
        errors
            .join("\n")
            .contains("nothing identifies the server beyond its OS image"),
        "{errors:?}"
    );

    let secret = c.readwrite_secret.clone();
    for (auth, what) in [(3u32, "cleartext"), (5, "MD5")] {
        let (rogue, received) = rogue_server(&rogue_agent, auth).await;
        // Told to trust the verifier's pins (which pin nothing here): the rogue passes
        // attestation, asks for a password, and the forwarder refuses to let it out.
        let fwd = forwarder(&c, rogue, |s| s.allow_unpinned_server = true).await;
        let dsn = format!("postgresql://teesql_readwrite:{secret}@{fwd}/postgres?sslmode=disable");
        let o = psql(&dsn, &["-c", "SELECT 1"]).await;
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains(&format!(
                "the server asked for {}",
                if auth == 3 { "a cleartext" } else { "an MD5" }
            )),
            "{what}: {}",
            stderr(&o)
        );
        // Pinned by compose hash: the rogue fails attestation before anything is relayed.
        let pinned = forwarder(&c, rogue, |s| {
            s.expected_compose_hashes = vec![c.agent.agent.compose_hash_hex()]
        })
        .await;
        let dsn =
            format!("postgresql://teesql_readwrite:{secret}@{pinned}/postgres?sslmode=disable");
        let o = psql(&dsn, &["-c", "SELECT 1"]).await;
        assert!(
            stderr(&o).contains("compose_hash_not_expected"),
            "{what}: {}",
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got = received.lock().unwrap().clone();
        let text = String::from_utf8_lossy(&got);
        assert!(
            !text.contains(&secret) && !got.contains(&b'p'),
            "the rogue ({what}) received {text:?}"
        );
    }

    // The genuine sidecar, pinned by its compose hash, still works.
    let fwd = forwarder(&c, c.sidecar_addr, |s| {
        s.expected_compose_hashes = vec![c.agent.agent.compose_hash_hex()]
    })
    .await;
    let o = psql(
        &format!("postgresql://teesql_readwrite:{secret}@{fwd}/postgres?sslmode=disable"),
        &["-c", "SELECT current_user"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
}

async fn metric(c: &Cluster, needle: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", c.admin_addr.unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(needle))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Port 8080 under slowloris: a connection cap, and a deadline for request headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_listeners_cap_connections_and_cut_off_slow_headers() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[limits]\nhttp_max_connections = 8\nhttp_header_timeout_secs = 2\n".into(),
        public_http: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let admin = c.admin_addr.unwrap();
    // 20 clients start a request and never finish its headers.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(s);
    }
    // Every one of them is closed: the 12 over the cap at once, the rest at the deadline.
    for mut s in slow {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a slow client was kept open");
    }
    let refused = metric(&c, "teesql_sidecar_http_refused_total{listener=\"admin\"} ").await;
    assert!(refused >= 12.0, "{refused}");
    // Then the listener serves again.
    let r = reqwest::get(format!("http://{admin}/health"))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // The public listener answers /attestation, and nothing else.
    let public = c.public_addr.unwrap();
    for (path, ok) in [
        ("/attestation", true),
        ("/health", false),
        ("/metrics", false),
    ] {
        let r = reqwest::get(format!("http://{public}{path}"))
            .await
            .unwrap();
        assert_eq!(r.status().is_success(), ok, "{path}: {}", r.status());
    }
}

/// `/health` checks Postgres and the verifier at most once a second, however many ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_checked_at_most_once_a_second() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let url = format!("http://{}/health", c.admin_addr.unwrap());
    let http = reqwest::Client::new();
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..30 {
        let (http, url) = (http.clone(), url.clone());
        tasks.spawn(async move {
            for _ in 0..10 {
                let r = http.get(&url).send().await.unwrap();
                assert!(r.status().is_success(), "worker {worker}: {}", r.status());
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst's client keeps up to 30 idle connections from this address, near the
    // listener's share for one address: close them before asking for the metrics.
    drop(http);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let checks = metric(&c, "teesql_sidecar_health_checks_total ").await;
    // 300 requests; one check per second of the burst (plus the one in progress when it
    // began and the one it ended in), where each used to cost a Postgres connection.
    assert!(
        checks <= elapsed.ceil() + 2.0,
        "{checks} checks in {elapsed:.1} s"
    );
}

/// Failed logins count per (address, user), only when the client caused them; handshakes
/// abandoned after the verifier was asked have their own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_limits_are_per_user_and_count_only_the_clients_faults() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[limits]\nfailed_auth_per_minute = 3\nabandoned_per_minute = 2\n[verifier]\ntimeout_ms = 1000\n"
            .into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let wrong = c.dsn("teesql_read", &"cd".repeat(32), "postgres", "require");
    for _ in 0..3 {
        let o = psql(&wrong, &["-c", "SELECT 1"]).await;
        assert!(
            stderr(&o).contains("authentication_failed"),
            "{}",
            stderr(&o)
        );
    }
    // teesql_read is locked out from this address, even with the right secret...
    let o = psql(
        &c.dsn("teesql_read", &c.read_secret, "postgres", "require"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(
        stderr(&o).contains("authentication_failed"),
        "{}",
        stderr(&o)
    );
    // Counted as the session's task ends, just after the client sees the close.
    assert_eq!(
        c.outcome_count(teesql_sidecar::frontend::session::Outcome::RateLimited, 1)
            .await,
        1
    );
    // ...but another role from the same address (a gateway, a NAT) is not.
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
    assert!(o.status.success(), "{}", stderr(&o));

    // Clients that go away after their StartupMessage (the verifier already asked).
    for _ in 0..2 {
        let mut tls = c.tls_connect(false).await.unwrap();
        tls.write_all(&teesql_sidecar::pgwire::startup_message(&[
            ("user", "teesql_readwrite"),
            ("database", "postgres"),
        ]))
        .await
        .unwrap();
        // Read the SASL offer, then leave.
        teesql_sidecar::pgwire::read_message(&mut tls, 1024)
            .await
            .unwrap();
        drop(tls);
    }
    // The sidecar records each abandon when it sees the client gone: wait for that (on
    // a loaded machine it can take longer than any fixed pause).
    let localhost: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    for _ in 0..100 {
        if c.sidecar.limiter.is_blocked(localhost, "teesql_readwrite") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c.sidecar.limiter.is_blocked(localhost, "teesql_readwrite"));
    let o = psql(
        &c.dsn(
            "teesql_readwrite",
            &c.readwrite_secret,
            "postgres",
            "require",
        ),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(
        stderr(&o).contains("authentication_failed"),
        "{}",
        stderr(&o)
    );
    // Counted as the session's task ends, just after the client sees the close.
    assert_eq!(
        c.outcome_count(teesql_sidecar::frontend::session::Outcome::RateLimited, 2)
            .await,
        2
    );

    // A verifier outage is not the client's fault: no lockout however often it refuses.
    drop(c);
    let mut c2 = Cluster::start(ClusterOptions {
        sidecar_toml: "[limits]\nfailed_auth_per_minute = 3\n[verifier]\ntimeout_ms = 1000\n"
            .into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c2.stop_verifier();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let right = c2.dsn("teesql_read", &c2.read_secret, "postgres", "require");
    for _ in 0..5 {
        let o = psql(&right, &["-c", "SELECT 1"]).await;
        assert!(
            stderr(&o).contains("authentication_failed"),
            "{}",
            stderr(&o)
        );
    }
    // Counted as the session's task ends, just after the client sees the close.
    assert_eq!(
        c2.outcome_count(teesql_sidecar::frontend::session::Outcome::AuthFailed, 5)
            .await,
        5
    );
    assert_eq!(
        c2.sidecar
            .metrics
            .connections(teesql_sidecar::frontend::session::Outcome::RateLimited),
        0
    );
}

/// Handshakes in progress are capped per address, and a connection that sends nothing is
/// closed at the first-packet deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_capped_per_address_and_cut_off_early() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml:
            "[limits]\nhandshakes_per_address = 2\nfirst_packet_timeout_secs = 1\ntls_handshake_timeout_secs = 30\n"
                .into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tokio::net::TcpStream::connect(c.sidecar_addr)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third from the same address is told at once.
    let mut third = tokio::net::TcpStream::connect(c.sidecar_addr)
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("53300") && text.contains("too many connections in progress"),
        "{text:?}"
    );
    // The silent two are closed at the first-packet deadline, long before the TLS one.
    for mut s in held {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
    }
    use teesql_sidecar::frontend::session::Outcome;
    assert_eq!(c.outcome_count(Outcome::FirstPacketTimeout, 2).await, 2);
    assert_eq!(
        c.sidecar.metrics.connections(Outcome::TooManyFromAddress),
        1
    );
    // Their slots are free again.
    let o = psql(
        &c.dsn("teesql_read", &c.read_secret, "postgres", "require"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A raw TLS client's StartupMessage, and the first message the sidecar answers with.
async fn first_answer(c: &Cluster, alpn: bool, params: &[(&str, &str)]) -> (u8, Vec<u8>) {
    let mut tls = c.tls_connect(alpn).await.unwrap();
    tls.write_all(&teesql_sidecar::pgwire::startup_message(params))
        .await
        .unwrap();
    teesql_sidecar::pgwire::read_message(&mut tls, 4096)
        .await
        .unwrap()
}

/// Startup parameters reach Postgres from an allowlist only; a read-only role gets no
/// temporary tables, large objects or advisory locks; the sidecar's own superuser
/// sessions resolve names in pg_catalog only; kept connections are capped overall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_may_ask_of_postgres() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[backend]\npool_max_idle_per_key = 4\npool_max_idle_total = 3\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let read = c.dsn("teesql_read", &c.read_secret, "postgres", "require");
    let write = c.dsn(
        "teesql_readwrite",
        &c.readwrite_secret,
        "postgres",
        "require",
    );

    // `options` (PGOPTIONS, -c settings) is refused, by name; allowlisted settings pass.
    let o = teesql_tests::clients::psql_env(
        &read,
        &["-c", "SELECT 1"],
        &[("PGOPTIONS", "-c work_mem=64")],
    )
    .await;
    assert!(!o.status.success());
    assert!(stderr(&o).contains("\"options\""), "{}", stderr(&o));
    let o = psql(
        &format!("{read}&application_name=teesql-test"),
        &["-c", "SHOW application_name"],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "teesql-test",
        "{}",
        stderr(&o)
    );
    // Control characters never reach a log line: refused before anything reads them.
    let (tag, body) = first_answer(
        &c,
        false,
        &[
            ("user", "teesql_read\nFORGED LOG LINE"),
            ("database", "postgres"),
        ],
    )
    .await;
    assert_eq!(tag, b'E');
    assert!(String::from_utf8_lossy(&body).contains("control characters"));

    // Privileges a read-only client does not get.
    for sql in [
        "CREATE TEMP TABLE t (i int)",
        "SELECT lo_create(0)",
        "SELECT pg_advisory_lock(1)",
        "SELECT pg_try_advisory_xact_lock(1, 2)",
    ] {
        let o = psql(&read, &["-c", sql]).await;
        assert!(
            stderr(&o).contains("permission denied"),
            "teesql_read: {sql}: {}",
            stderr(&o)
        );
        let o = psql(&write, &["-c", sql]).await;
        assert!(
            o.status.success(),
            "teesql_readwrite: {sql}: {}",
            stderr(&o)
        );
    }

    // The sidecar's superuser connections use search_path = pg_catalog.
    let admin = teesql_sidecar::postgres::admin::admin_client(&c.sidecar_config().backend)
        .await
        .unwrap();
    let path: String = admin
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "pg_catalog");

    // Connection reuse: five application names, each its own key, three kept at most.
    let tls = c.client_tls().unwrap();
    for i in 0..5 {
        let client =
            teesql_tests::clients::connect(&format!("{read}&application_name=app{i}"), tls.clone())
                .await
                .unwrap();
        client.simple_query("SELECT 1").await.unwrap();
        drop(client);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(c.sidecar.pool.idle_count(), 3);
}

/// Where passthrough roles exist, every role is offered the same mechanisms, -PLUS
/// included for a peer that negotiated ALPN `postgresql`: the sidecar runs a passthrough
/// role's exchange itself, against its verifier from Postgres, so which names are
/// passthrough roles does not show in the offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_is_offered_the_same_mechanisms() {
    // Postgres asks the superuser for SCRAM, as in a deployment.
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[auth]\npassthrough_roles = [\"postgres\"]\n".into(),
        pg: teesql_tests::postgres::PgOptions {
            hba: vec![
                "local all all trust".into(),
                "host all postgres 127.0.0.1/32 scram-sha-256".into(),
                "host all all 127.0.0.1/32 trust".into(),
            ],
            superuser_password: Some("superuser-password".into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let mut offers = Vec::new();
    for user in ["teesql_read", "postgres", "nobody"] {
        let (tag, body) = first_answer(&c, true, &[("user", user), ("database", "postgres")]).await;
        assert_eq!(tag, b'R', "{user}");
        offers.push(body);
    }
    assert!(offers.iter().all(|o| *o == offers[0]), "{offers:?}");
    assert!(String::from_utf8_lossy(&offers[0]).contains("SCRAM-SHA-256-PLUS"));
}

/// Pooling on, and one kept backend of `teesql_readwrite` to hand on.
async fn pooling_cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        sidecar_toml: "[backend]\npool_max_idle_per_key = 4\n".into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

const RW: [(&str, &str); 3] = [
    ("user", "teesql_readwrite"),
    ("database", "postgres"),
    ("client_encoding", "UTF8"),
];

/// The next client of the role asks one query: it must get exactly its own answer.
async fn victim_answer(c: &Cluster, sql: &str) -> Vec<(u8, Vec<u8>)> {
    let mut v = c.raw_session(&RW, &c.readwrite_secret).await.unwrap();
    v.send(&RawSession::query(sql)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), v.until_ready())
        .await
        .expect("the victim's answer within 10 s")
        .unwrap();
    v.terminate().await.unwrap();
    got
}

/// A client that pipelines its own `DISCARD ALL` and a slow query before Terminate must
/// not get its backend pooled with that query still queued: the next client of the role
/// would read the attacker's rows as the answer to its own first query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_backend_is_not_handed_on_with_a_pipelined_query() {
    let c = pooling_cluster().await;
    for round in 0..3 {
        let mut a = c.raw_session(&RW, &c.readwrite_secret).await.unwrap();
        let mut attack = RawSession::query("SELECT pg_sleep(0.3)");
        attack.extend(RawSession::query("DISCARD ALL"));
        attack.extend(RawSession::query("SELECT 'attacker-row', pg_sleep(0.5)"));
        attack.extend(b"X\0\0\0\x04");
        a.send(&attack).await.unwrap();
        drop(a);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let got = victim_answer(&c, "SELECT 'victim-row'").await;
        assert!(
            got.iter().all(|(t, _)| *t != b'E'),
            "round {round}: {got:?}"
        );
        assert_eq!(RawSession::rows(&got), ["victim-row"], "round {round}");
    }
}

/// Session state left behind an extended-protocol error without Sync (Postgres then
/// skips everything until a Sync) must not reach the next client: temporary tables that
/// shadow real ones, search_path, LISTEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_backend_is_not_handed_on_with_state_behind_an_unsynced_error() {
    let c = pooling_cluster().await;
    let clean = "SELECT current_setting('search_path') || '|' || \
                 (SELECT count(*) FROM pg_catalog.pg_class WHERE relpersistence = 't')::text || '|' || \
                 (SELECT count(*) FROM pg_catalog.pg_listening_channels())::text";
    let expected = victim_answer(&c, clean).await;
    let expected = RawSession::rows(&expected);
    assert_eq!(expected.len(), 1);
    for round in 0..3 {
        let mut a = c.raw_session(&RW, &c.readwrite_secret).await.unwrap();
        for sql in [
            "CREATE TEMP TABLE pg_temp.notes (body text)",
            "SET search_path = pg_temp, public",
            "LISTEN attacker_channel",
        ] {
            a.send(&RawSession::query(sql)).await.unwrap();
            a.until_ready().await.unwrap();
        }
        // Parse of bad SQL, no Sync: Postgres now discards everything until a Sync.
        let mut bad = vec![b'P'];
        let body = b"\0SELEC broken\0\0\0";
        bad.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        bad.extend_from_slice(body);
        bad.extend(b"X\0\0\0\x04");
        a.send(&bad).await.unwrap();
        drop(a);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = victim_answer(&c, clean).await;
        assert!(
            got.iter().all(|(t, _)| *t != b'E'),
            "round {round}: {got:?}"
        );
        assert_eq!(RawSession::rows(&got), expected, "round {round}");
    }
}

/// Whatever a client sends before its Terminate, the next client of the role gets its own
/// answers and nothing else: random sequences of queries, pipelines, transactions, errors,
/// unsynced extended-protocol messages, LISTEN/NOTIFY, COPY and session state, answered in
/// part or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_sequence_before_terminate_leaks_into_the_next_session() {
    fn ext(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }
    let vocabulary: Vec<Vec<u8>> = vec![
        RawSession::query("SELECT 'attacker-row'"),
        RawSession::query("SELECT 'attacker-slow', pg_sleep(0.05)"),
        RawSession::query("BEGIN"),
        RawSession::query("COMMIT"),
        RawSession::query("DISCARD ALL"),
        RawSession::query("SELECT 1/0"),
        RawSession::query("CREATE TEMP TABLE IF NOT EXISTS leftover (x int)"),
        RawSession::query("SET search_path = pg_temp, public"),
        RawSession::query("LISTEN leak; NOTIFY leak, 'attacker-note'"),
        RawSession::query("COPY (SELECT 'attacker-copy') TO STDOUT"),
        ext(b'P', b"\0SELECT 'attacker-ext'\0\0\0"),
        ext(b'B', b"\0\0\0\0\0\0\0\0"),
        ext(b'E', b"\0\0\0\0\0"),
        ext(b'P', b"\0SELEC broken\0\0\0"),
        ext(b'H', b""),
        ext(b'S', b""),
    ];
    let c = pooling_cluster().await;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for round in 0..24 {
        let mut a = c.raw_session(&RW, &c.readwrite_secret).await.unwrap();
        for _ in 0..1 + rand(8) {
            let item = &vocabulary[rand(vocabulary.len())];
            a.send(item).await.unwrap();
            if rand(2) == 0 && item[0] == b'Q' {
                let _ = tokio::time::timeout(Duration::from_millis(500), a.until_ready()).await;
            }
        }
        a.send(b"X\0\0\0\x04").await.unwrap();
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = victim_answer(&c, "SELECT 'victim-row'").await;
        assert!(
            got.iter().all(|(t, _)| *t != b'E'),
            "round {round}: {got:?}"
        );
        assert!(
            got.iter().all(|(t, _)| *t != b'A'),
            "round {round}: {got:?}"
        );
        assert_eq!(
            RawSession::rows(&got),
            ["victim-row"],
            "round {round}: {got:?}"
        );
    }
    // Quiet sessions are still kept and handed on (the last victim's, once reset).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.sidecar.pool.idle_count() == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was pooled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The pool's metrics saw it: connections kept and handed on, the idle gauge current.
    let metrics = c.sidecar.metrics.encode();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert!(value("teesql_sidecar_pool_returns_total{result=\"kept\"} ") >= 1.0);
    assert!(value("teesql_sidecar_pool_checkouts_total{result=\"hit\"} ") >= 1.0);
    assert!(value("teesql_sidecar_pool_idle ") >= 1.0);
    assert_eq!(value("teesql_sidecar_pool_max_idle "), 64.0);
}

/// One address trickling requests holds at most its share of an HTTP listener: another
/// address's health probe still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_hold_every_http_slot() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[limits]\nhttp_max_connections = 64\nhttp_connections_per_address = 4\nhttp_header_timeout_secs = 20\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let admin = c.admin_addr.unwrap();
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(std::net::SocketAddr::new(ip, 0)).unwrap();
            socket.connect(admin).await.unwrap()
        }
    };
    // 127.0.0.1 opens 10 connections and trickles: 4 are kept, 6 closed at once.
    let mut trickling = Vec::new();
    for _ in 0..10 {
        let mut s = from("127.0.0.1").await;
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        trickling.push(s);
    }
    let mut closed = 0;
    for s in &mut trickling {
        let mut b = [0u8; 1];
        // Closed: end of stream, or a reset (closed with the request unread).
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 6, "the address holds its 4 slots, no more");
    // Another address is served meanwhile.
    let mut probe = from("127.0.0.2").await;
    probe
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), probe.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

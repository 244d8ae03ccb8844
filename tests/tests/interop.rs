//! The front door with clients shaped like the ones that exist out there: TeeSQL's own
//! client libraries (a localhost forwarder doing direct TLS without ALPN, or an
//! SSLRequest first, that verifies the server's quote before relaying a byte; the driver
//! behind it on `sslmode=disable`), psql 15, psycopg with the libpq its wheel bundles
//! (18), and tokio-postgres. The forwarders are the doubles in `teesql_tests::forwarders`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use teesql_sidecar::frontend::session::Outcome;
use teesql_tests::clients::{PSYCOPG_CONNECT, psql, psql_env, python, python_with};
use teesql_tests::cluster::{Cluster, ClusterOptions};
use teesql_tests::forwarders::{ForwarderDouble, RunningForwarder, Shape};
use tokio::io::AsyncReadExt;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

async fn teesql_forwarder(c: &Cluster, shape: Shape, verify_delay: Duration) -> RunningForwarder {
    ForwarderDouble {
        shape,
        target: c.sidecar_addr,
        host: Some("localhost".into()),
        agent: c.agent.socket.display().to_string(),
        root_der: c.agent.agent.root_der().to_vec(),
        collateral: c.agent.agent.collateral().unwrap(),
        allowed_mrtds: vec![c.agent.agent.mrtd_hex()],
        verify_delay,
    }
    .start()
    .await
    .unwrap()
}

/// psql, tokio-postgres and psycopg, each on `sslmode=disable` behind the forwarder,
/// log in as teesql_readwrite.
async fn every_driver_logs_in(c: &Cluster, f: &RunningForwarder, what: &str) {
    let dsn = f.dsn("teesql_readwrite", &c.readwrite_secret, "postgres");
    let o = psql(&dsn, &["-c", "SELECT current_user"]).await;
    assert!(o.status.success(), "psql {what}: {}", stderr(&o));
    assert_eq!(stdout(&o), "teesql_readwrite", "psql {what}");

    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("tokio-postgres {what}: {e}"));
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT current_user, $1::int + 1", &[&41])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "teesql_readwrite");
    assert_eq!(row.get::<_, i32>(1), 42);

    if let Some(py) = python_with(&["psycopg"]) {
        let o = python(&py, PSYCOPG_CONNECT, &[&dsn]).await;
        assert!(o.status.success(), "psycopg {what}: {}", stderr(&o));
        let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(out["user"], "teesql_readwrite", "psycopg {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_log_in_behind_teesql_shaped_forwarders() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    for shape in [Shape::DirectTls, Shape::SslRequest] {
        let f = teesql_forwarder(&c, shape, Duration::ZERO).await;
        every_driver_logs_in(&c, &f, &format!("behind {shape:?}")).await;
        assert_eq!(f.rejected.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
    // Nothing here was refused: no libpq aborted on a -PLUS offer.
    assert_eq!(c.sidecar.metrics.connections(Outcome::AuthFailed), 0);

    // libpq 17+ connecting directly (it sends ALPN `postgresql`) still gets, and uses,
    // SCRAM-SHA-256-PLUS when it requires channel binding.
    if let Some(py) = python_with(&["psycopg"]) {
        let dsn = format!(
            "{}&channel_binding=require",
            c.dsn("teesql_read", &c.read_secret, "postgres", "require")
        );
        let o = python(&py, PSYCOPG_CONNECT, &[&dsn]).await;
        assert!(
            o.status.success(),
            "psycopg, channel_binding=require: {}",
            stderr(&o)
        );
        let out: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(out["user"], "teesql_read");
        assert!(out["libpq"].as_u64().unwrap() >= 170000, "{out}");
    }
}

/// The failure the default prevents: with -PLUS offered on every TLS connection, libpq
/// behind a forwarder refuses to log in, while a direct libpq that requires channel
/// binding gets it even without ALPN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_always_breaks_libpq_behind_a_forwarder() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[auth]\nchannel_binding = \"always\"\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let f = teesql_forwarder(&c, Shape::DirectTls, Duration::ZERO).await;
    let o = psql(
        &f.dsn("teesql_read", &c.read_secret, "postgres"),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("SCRAM-SHA-256-PLUS authentication over a non-SSL connection"),
        "{}",
        stderr(&o)
    );
    let direct = format!(
        "{}&channel_binding=require",
        c.dsn("teesql_read", &c.read_secret, "postgres", "require")
    );
    let o = psql(&direct, &["-c", "SELECT current_user"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
}

/// TeeSQL's libraries verify the server's quote between TLS and their StartupMessage
/// (a PCCS fetch or an Intel Trust Authority round trip). One that takes 20 s logs in
/// under the default deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_verifies_for_20_seconds_logs_in() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let f = teesql_forwarder(&c, Shape::DirectTls, Duration::from_secs(20)).await;
    let started = Instant::now();
    let o = psql_env(
        &f.dsn("teesql_readwrite", &c.readwrite_secret, "postgres"),
        &["-c", "SELECT current_user"],
        &[("PGCONNECT_TIMEOUT", "90")],
    )
    .await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "teesql_readwrite");
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert_eq!(c.sidecar.metrics.connections(Outcome::StartupTimeout), 0);
    assert_eq!(c.sidecar.metrics.connections(Outcome::TlsTimeout), 0);
}

/// A TLS peer that never sends its StartupMessage is closed at the StartupMessage
/// deadline, not at the (shorter) TLS deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_after_tls_is_closed_at_the_startup_deadline() {
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[limits]\ntls_handshake_timeout_secs = 1\nstartup_timeout_secs = 4\n".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut tls = c.tls_connect(false).await.unwrap();
    let established = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), tls.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "not closed within 60 s");
    // Closed no earlier than its deadline: the 1 s TLS deadline no longer applied.
    assert!(established.elapsed() >= Duration::from_secs(4));
    assert!(buf.is_empty(), "{buf:?}");
    assert_eq!(c.outcome_count(Outcome::StartupTimeout, 1).await, 1);
    assert_eq!(c.sidecar.metrics.connections(Outcome::TlsTimeout), 0);
}

/// A manifest signed by `key`, naming `leader_url` and `instance`, valid for an hour.
fn manifest(key: &k256::ecdsa::SigningKey, instance: &str, leader_url: &str, epoch: u64) -> String {
    let mut m = teesql_verifier::manifest::Manifest {
        cluster: "0xbd32b609057a1a4569558a571d535c8f1212b097".into(),
        leader_instance: instance.into(),
        leader_url: leader_url.into(),
        epoch,
        valid_until: teesql_verifier::Clock::System.now() + 3600,
        signature: [0; 65],
        unknown_keys: Vec::new(),
    };
    m.signature = teesql_verifier::manifest::sign(key, &m).unwrap();
    // As TeeSQL's fixtures write it: cluster first, the body's own order otherwise not kept.
    format!(
        "cluster={};leader_instance={};leader_url={};epoch={};valid_until={};v=1;sig=0x{}",
        m.cluster,
        m.leader_instance,
        m.leader_url,
        m.epoch,
        m.valid_until,
        hex::encode(m.signature)
    )
}

async fn forward_by_manifest(
    c: &Cluster,
    domain: &str,
    dns: std::net::SocketAddr,
) -> std::net::SocketAddr {
    c.forward(teesql_sidecar::forward::ForwardSettings {
        to: None,
        expected_compose_hashes: vec![],
        manifest_domain: Some(domain.into()),
        manifest_signers: vec!["0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A".into()],
        dns_server: Some(dns.to_string()),
        ..c.forward_settings()
    })
    .await
    .unwrap()
}

/// `forward` with no `--to`: the leader is the one the signed manifest in DNS names. Every
/// TXT record is tried until one verifies; a leader that cannot be reached is looked up
/// again once; a leader that fails verification is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_reaches_the_leader_a_manifest_names() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let dns = teesql_tests::dns::TxtServer::start().await.unwrap();
    let fixture = k256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
    let stranger = k256::ecdsa::SigningKey::from_slice(&[0x22; 32]).unwrap();
    let instance = c.agent.agent.instance_id_hex();
    let leader = format!("https://localhost:{}", c.sidecar_addr.port());
    let name = "_teesql-leader.db.example.test";
    // A record from a signer nobody pinned comes first; the forwarder moves on to the next.
    dns.set(
        name,
        &[
            manifest(&stranger, &instance, "https://127.0.0.1:1", 9),
            manifest(&fixture, &instance, &leader, 7),
        ],
    );
    let fwd = forward_by_manifest(&c, "db.example.test", dns.addr).await;
    let dsn =
        |secret: &str| format!("postgresql://teesql_read:{secret}@{fwd}/postgres?sslmode=disable");
    let o = psql(&dsn(&c.read_secret), &["-c", "SELECT current_user"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "teesql_read");

    // Two valid records: the stale one (a former leader, an older epoch) comes first; the
    // highest epoch wins.
    dns.set(
        name,
        &[
            manifest(&fixture, &instance, "https://127.0.0.1:1", 7),
            manifest(&fixture, &instance, &leader, 8),
        ],
    );
    let o = psql(&dsn(&c.read_secret), &["-c", "SELECT 1"]).await;
    assert!(o.status.success(), "the stale record won: {}", stderr(&o));

    // The leader moved: the old address accepts and drops the connection; meanwhile DNS
    // names the new one. One more lookup, one retry, in.
    let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old_url = format!("https://localhost:{}", old.local_addr().unwrap().port());
    dns.set(name, &[manifest(&fixture, &instance, &old_url, 8)]);
    let (moved_tx, moved_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let (dns, good) = (dns.clone(), manifest(&fixture, &instance, &leader, 9));
        tokio::spawn(async move {
            let (s, _) = old.accept().await.unwrap();
            dns.set(name, &[good]);
            drop(s);
            let _ = moved_tx.send(());
        });
    }
    let before = dns.queries();
    let o = psql(&dsn(&c.read_secret), &["-c", "SELECT 1"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    moved_rx.await.unwrap();
    assert!(
        dns.queries() >= before + 2,
        "the manifest was not looked up again"
    );

    // A leader that fails verification (another instance than the one named) is refused,
    // and not retried: one lookup.
    dns.set(name, &[manifest(&fixture, &"ab".repeat(20), &leader, 10)]);
    let before = dns.queries();
    let o = psql(&dsn(&c.read_secret), &["-c", "SELECT 1"]).await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("leader_instance_mismatch"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        dns.queries(),
        before + 1,
        "a verification failure is not retried"
    );

    // No record verifies: every record's reason is reported.
    dns.set(
        name,
        &[
            manifest(&stranger, &instance, &leader, 11),
            "v=1;cluster=0x00;garbage".to_string(),
        ],
    );
    let o = psql(&dsn(&c.read_secret), &["-c", "SELECT 1"]).await;
    let err = stderr(&o);
    assert!(
        err.contains("none of the 2 manifest records verifies")
            && err.contains("record 1 of 2: manifest_signer_not_pinned")
            && err.contains("record 2 of 2: manifest_invalid"),
        "{err}"
    );
}

/// Channel binding in a deployment shaped like `teesql-dev`'s: a passthrough superuser
/// whose password Postgres checks, a tenant role and the cluster roles. libpq 18
/// (psycopg) with `channel_binding=require` logs in as each; psql 15 and both TeeSQL
/// forwarder doubles (no ALPN: plain SCRAM) log in as the superuser too; a wrong password
/// gets the generic refusal; a changed password is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_for_every_role_and_passthrough_roles_too() {
    use teesql_tests::postgres::PgOptions;
    let dir = tempfile::tempdir().unwrap();
    let acme = teesql_tests::tenants::app("acme-cb", dir.path())
        .await
        .unwrap();
    let profile = dir.path().join("profile");
    std::fs::create_dir(&profile).unwrap();
    std::fs::write(
        profile.join("profile.toml"),
        format!(
            "extends = [{:?}]\n",
            teesql_tests::cluster::repo_root()
                .join("policies/dev")
                .display()
                .to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        profile.join("data.json"),
        serde_json::json!({"teesql": {"tenants": {"acme": {"role": "tenant_acme",
            "privileges": "readwrite", "compose_hashes": [acme.agent.compose_hash_hex()]}}}})
        .to_string(),
    )
    .unwrap();
    let acme_secret = hex::encode([0xa1; 32]);
    let acme_file = dir.path().join("acme.secret");
    std::fs::write(&acme_file, &acme_secret).unwrap();
    let superuser = hex::encode([0x33; 32]);
    let c = Cluster::start(ClusterOptions {
        seed: teesql_tests::tenants::SEED,
        profile: profile.display().to_string(),
        pg: PgOptions {
            hba: vec![
                "local all all trust".into(),
                "host all postgres,operator 127.0.0.1/32 scram-sha-256".into(),
                "host all all 127.0.0.1/32 trust".into(),
            ],
            superuser_password: Some(superuser.clone()),
            ..PgOptions::default()
        },
        sidecar_toml: format!(
            "[auth]\npassthrough_roles = [\"postgres\", \"operator\"]\n\
             [[auth.roles]]\nname = \"tenant_acme\"\nprivileges = \"readwrite\"\ngranted = true\nsecret_file = {:?}\n",
            acme_file.display().to_string()
        ),
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let direct = |user: &str, password: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=postgres sslmode=require",
            c.sidecar_addr.port()
        )
    };
    let Some(py) = python_with(&["psycopg"]) else {
        return;
    };
    let psycopg = |conn: String| {
        let py = py.clone();
        async move { python(&py, PSYCOPG_CONNECT, &[&conn]).await }
    };
    let user_of = |o: &std::process::Output| -> String {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_str::<serde_json::Value>(&stdout(o)).unwrap()["user"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // libpq 18 sends ALPN `postgresql`, so `auto` offers -PLUS to every role, and
    // `channel_binding=require` is met as the cluster role, the superuser (its exchange run
    // by the sidecar against Postgres' own verifier) and the tenant (its certificate).
    let require = " channel_binding=require";
    let o = psycopg(direct("teesql_readwrite", &c.readwrite_secret) + require).await;
    assert_eq!(user_of(&o), "teesql_readwrite");
    let o = psycopg(direct("postgres", &superuser) + require).await;
    assert_eq!(user_of(&o), "postgres");
    let tenant = format!(
        "{} sslcert={} sslkey={}{require}",
        direct("teesql_app", &acme_secret),
        acme.cert.display(),
        acme.key.display()
    );
    let o = psycopg(tenant).await;
    assert_eq!(user_of(&o), "tenant_acme");

    // A wrong superuser password: the generic refusal.
    let o = psycopg(direct("postgres", &hex::encode([0x44; 32])) + require).await;
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("authentication_failed"),
        "{}",
        stderr(&o)
    );

    // psql 15 sends no ALPN: plain SCRAM, through the same exchange.
    let o = psql(
        &direct("postgres", &superuser),
        &["-c", "SELECT current_user"],
    )
    .await;
    assert!(o.status.success(), "psql: {}", stderr(&o));
    assert_eq!(stdout(&o), "postgres");
    if !teesql_tests::clients::libpq_sends_alpn() {
        let o = psql(
            &(direct("postgres", &superuser) + require),
            &["-c", "SELECT 1"],
        )
        .await;
        assert!(
            stderr(&o).contains("channel binding is required"),
            "{}",
            stderr(&o)
        );
    }

    // Both TeeSQL-shaped forwarders (no ALPN, the driver on sslmode=disable).
    for shape in [Shape::DirectTls, Shape::SslRequest] {
        let f = teesql_forwarder(&c, shape, Duration::ZERO).await;
        let dsn = f.dsn("postgres", &superuser, "postgres");
        let o = psql(&dsn, &["-c", "SELECT current_user"]).await;
        assert!(o.status.success(), "psql behind {shape:?}: {}", stderr(&o));
        let o = psycopg(dsn.clone()).await;
        assert_eq!(user_of(&o), "postgres", "psycopg behind {shape:?}");
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("tokio-postgres behind {shape:?}: {e}"));
        tokio::spawn(conn);
        client.query_one("SELECT 1", &[]).await.unwrap();
    }

    // Another passthrough role whose password changes: the new one logs in (the verifier
    // is read again after a refusal at the latest), the old one no longer does.
    let (old, new) = (hex::encode([0x55; 32]), hex::encode([0x66; 32]));
    c.pg.psql(
        "postgres",
        "postgres",
        &format!("CREATE ROLE operator LOGIN PASSWORD '{old}'"),
    )
    .unwrap();
    let o = psycopg(direct("operator", &old) + require).await;
    assert_eq!(user_of(&o), "operator");
    c.pg.psql(
        "postgres",
        "postgres",
        &format!("ALTER ROLE operator PASSWORD '{new}'"),
    )
    .unwrap();
    let first = psycopg(direct("operator", &new) + require).await;
    if !first.status.success() {
        let o = psycopg(direct("operator", &new) + require).await;
        assert_eq!(user_of(&o), "operator");
    }
    let o = psycopg(direct("operator", &old) + require).await;
    assert!(!o.status.success(), "the old password still logs in");
}

//! Open sessions follow the policy: removing a tenant's compose hash from the profile's
//! data and reloading ends that tenant's open session (FATAL 57P01, its Postgres backend
//! gone), while the other tenant's session keeps answering; a reload that changes
//! nothing for a session leaves it alone. Real Postgres, real tokio-postgres clients,
//! the real verifier's `WatchPolicies` stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;

use teesql_tests::tenants::{App, Setup, setup};

/// A session whose connection task's end we can watch.
struct Open {
    client: tokio_postgres::Client,
    ended: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

async fn open(s: &Setup, app: &App, user: &str, secret: &str) -> Open {
    let (client, connection) = tokio_postgres::connect(
        &s.cluster.dsn(user, secret, "postgres", "require"),
        tokio_postgres_rustls::MakeRustlsConnect::new(s.tls(app).unwrap()),
    )
    .await
    .unwrap();
    Open {
        client,
        ended: tokio::spawn(connection),
    }
}

async fn backend_pid(o: &Open) -> i32 {
    o.client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Rewrite the tenants in the profile's data and reload the verifier's policies.
async fn set_tenants(s: &Setup, tenants: Value) {
    let mut data: Value =
        serde_json::from_str(&std::fs::read_to_string(&s.data_file).unwrap()).unwrap();
    data["teesql"]["tenants"] = tenants;
    std::fs::write(&s.data_file, data.to_string()).unwrap();
    let (_, changed) = s.cluster.verifier.reload().await.unwrap();
    assert!(changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_tenant_ends_its_open_sessions_and_only_those() {
    let s = setup(true, false).await.unwrap();
    let acme = open(&s, &s.acme, "tenant_acme", &s.acme_secret).await;
    let globex = open(&s, &s.globex, "tenant_globex", &s.globex_secret).await;
    let acme_pid = backend_pid(&acme).await;
    backend_pid(&globex).await;
    // What SQL sees of the session's admission: when and under which policy.
    let row = globex
        .client
        .query_one("SELECT teesql.identity()::text", &[])
        .await
        .unwrap();
    let id: Value = serde_json::from_str(row.get::<_, Option<&str>>(0).unwrap()).unwrap();
    assert!(id["decided_at"].as_u64().unwrap() > 1_700_000_000, "{id}");
    assert!(
        id["policy_hash"].as_str().unwrap().starts_with("sha256:"),
        "{id}"
    );
    let live = || s.cluster.sidecar.sessions.len();
    // The follower subscribes to WatchPolicies at start; both sessions are registered,
    // and the operator sees them on the admin listener.
    assert_eq!(live(), 2);
    let url = format!("http://{}/sessions", s.cluster.admin_addr.unwrap());
    let listed: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{listed}");
    let mut tenants_seen: Vec<&str> = sessions
        .iter()
        .map(|v| v["tenant"].as_str().unwrap())
        .collect();
    tenants_seen.sort();
    assert_eq!(tenants_seen, ["acme", "globex"], "{listed}");
    for v in sessions {
        assert!(
            v["policy_hash"].as_str().unwrap().starts_with("sha256:"),
            "{v}"
        );
        assert_eq!(v["compose_hash"].as_str().unwrap().len(), 64, "{v}");
        // Each ran queries: bytes moved both ways, counted while the session runs.
        assert!(v["bytes_up"].as_u64().unwrap() > 0, "{v}");
        assert!(v["bytes_down"].as_u64().unwrap() > 0, "{v}");
    }

    // A reload that changes nothing for either session (a tenant added) ends nothing.
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(&s.data_file).unwrap()).unwrap();
    let mut tenants = data["teesql"]["tenants"].clone();
    tenants["initech"] = serde_json::json!({"role": "tenant_initech", "privileges": "read",
        "compose_hashes": ["00".repeat(32)]});
    set_tenants(&s, tenants.clone()).await;
    let rounds = |s: &Setup| {
        s.cluster
            .sidecar
            .sessions
            .rounds
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for _ in 0..100 {
        if rounds(&s) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rounds(&s) >= 1, "no re-judging after a policy change");
    backend_pid(&acme).await;
    backend_pid(&globex).await;
    assert_eq!(live(), 2);

    // Acme removed: its session ends within 2 s with 57P01; globex keeps answering.
    tenants.as_object_mut().unwrap().remove("acme");
    let started = std::time::Instant::now();
    set_tenants(&s, tenants).await;
    let ended = tokio::time::timeout(Duration::from_secs(2), acme.ended)
        .await
        .expect("acme's session still open 2 s after the reload")
        .unwrap();
    let e = ended.expect_err("ended with an error");
    let db = e.as_db_error().expect("a FATAL from the server");
    assert_eq!(db.code().code(), "57P01", "{db:?}");
    assert!(db.message().contains("no longer accepted"), "{db:?}");
    assert!(
        !db.message().contains("compose"),
        "no policy detail: {db:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(acme.client.query_one("SELECT 1", &[]).await.is_err());
    backend_pid(&globex).await;
    let listed: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");

    // Its Postgres backend is gone, not kept for another client.
    let gone = || {
        s.cluster
            .pg
            .psql(
                "postgres",
                "postgres",
                &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {acme_pid}"),
            )
            .unwrap()
    };
    let mut count = gone();
    for _ in 0..50 {
        if count.trim() == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        count = gone();
    }
    assert_eq!(count.trim(), "0", "acme's backend {acme_pid} still exists");
    let metrics = s.cluster.sidecar.metrics.encode();
    assert!(
        metrics.contains("teesql_sidecar_sessions_revoked_total{reason=\"role_not_granted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("teesql_sidecar_sessions_rejudged_total{result=\"revoked\"} 1"),
        "{metrics}"
    );
    // A new acme connection is refused like any unmapped application.
    assert!(
        s.connect(&s.acme, "tenant_acme", &s.acme_secret)
            .await
            .unwrap()
            .is_err()
    );
}

/// A development certificate issued for a few seconds: the session it opened is judged
/// again at its `notAfter` and ended (the verifier now says `certificate_expired`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_certificate_expires() {
    let s = setup(false, false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let brief = teesql_tests::tenants::app_with("brief", dir.path(), |c| {
        c.cert_validity = Duration::from_secs(3);
    })
    .await
    .unwrap();
    let o = open(&s, &brief, "teesql_read", &s.cluster.read_secret).await;
    backend_pid(&o).await;
    let ended = tokio::time::timeout(Duration::from_secs(8), o.ended)
        .await
        .expect("the session outlived its certificate by seconds")
        .unwrap();
    let e = ended.expect_err("ended with an error");
    assert_eq!(e.as_db_error().expect("a FATAL").code().code(), "57P01");
    let metrics = s.cluster.sidecar.metrics.encode();
    assert!(
        metrics.contains("teesql_sidecar_sessions_revoked_total{reason=\"certificate_expired\"} 1"),
        "{metrics}"
    );
}

/// `limits.session_max_age_secs` ends a session of that age, busy or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_their_maximum_age() {
    use teesql_tests::cluster::{Cluster, ClusterOptions};
    let c = Cluster::start(ClusterOptions {
        sidecar_toml: "[limits]\nsession_max_age_secs = 2\n".into(),
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let tls = teesql_tests::clients::tls_config(&c.agent.app_ca_path(), None).unwrap();
    let (client, connection) = tokio_postgres::connect(
        &c.dsn("teesql_read", &c.read_secret, "postgres", "require"),
        tokio_postgres_rustls::MakeRustlsConnect::new(tls),
    )
    .await
    .unwrap();
    let ended = tokio::spawn(connection);
    let started = std::time::Instant::now();
    client.query_one("SELECT 1", &[]).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(6), ended)
        .await
        .expect("still open")
        .unwrap()
        .expect_err("ended with an error");
    assert_eq!(e.as_db_error().expect("a FATAL").code().code(), "57P01");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        c.sidecar
            .metrics
            .encode()
            .contains("teesql_sidecar_sessions_revoked_total{reason=\"session_max_age\"} 1")
    );
}

/// A short-lived certificate's session is due a re-judging while the verifier is down:
/// `keep` (the default) lets it run on, `close` ends it (`verifier_unavailable`).
async fn due_while_the_verifier_is_down(policy: &str) -> (bool, String) {
    use teesql_tests::cluster::{Cluster, ClusterOptions};
    let mut c = Cluster::start(ClusterOptions {
        seed: teesql_tests::tenants::SEED,
        sidecar_toml: format!("[limits]\nrevalidate_on_unavailable = {policy:?}\n"),
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let brief = teesql_tests::tenants::app_with("brief", dir.path(), |cfg| {
        cfg.cert_validity = Duration::from_secs(3);
    })
    .await
    .unwrap();
    let tls =
        teesql_tests::clients::tls_config(&c.agent.app_ca_path(), Some((&brief.cert, &brief.key)))
            .unwrap();
    let (client, connection) = tokio_postgres::connect(
        &c.dsn("teesql_read", &c.read_secret, "postgres", "require"),
        tokio_postgres_rustls::MakeRustlsConnect::new(tls),
    )
    .await
    .unwrap();
    let ended = tokio::spawn(connection);
    client.query_one("SELECT 1", &[]).await.unwrap();
    c.stop_verifier();
    // Past the certificate's notAfter and its re-judging (the verifier's timeout).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let alive = client.query_one("SELECT 1", &[]).await.is_ok();
    if alive {
        assert!(!ended.is_finished());
    }
    (alive, c.sidecar.metrics.encode())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_verifier_keep_runs_on_and_close_ends() {
    let (alive, _) = due_while_the_verifier_is_down("keep").await;
    assert!(alive, "keep ended the session");
    let (alive, metrics) = due_while_the_verifier_is_down("close").await;
    assert!(!alive, "close kept the session");
    assert!(
        metrics
            .contains("teesql_sidecar_sessions_revoked_total{reason=\"verifier_unavailable\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("teesql_sidecar_sessions_rejudged_total{result=\"unavailable\"} 1"),
        "{metrics}"
    );
}

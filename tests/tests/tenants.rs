//! Attested identity decides the Postgres role (README, "Tenants"): two applications with
//! different compose hashes (development agents of the cluster's platform with their own
//! app-compose.json), one table with row-level security keyed on `teesql.tenant()`. Each
//! sees only its rows; presenting the other's secret does not help; an unmapped
//! application is refused with the generic error while the decision log says why; and no
//! session can make `teesql.identity()` say anything but its own attested identity — not
//! with SET, RESET, SET ROLE, a startup parameter, or a kept Postgres backend handed on.
//! Run without pooling and with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use teesql_tests::tenants::{App, Setup, setup};

async fn identity(c: &tokio_postgres::Client) -> Value {
    let row = c
        .query_one("SELECT teesql.identity()::text", &[])
        .await
        .unwrap();
    serde_json::from_str(row.get::<_, Option<&str>>(0).expect("an identity")).unwrap()
}

async fn bodies(c: &tokio_postgres::Client) -> Vec<String> {
    c.query("SELECT body FROM notes ORDER BY body", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

fn refused(r: Result<tokio_postgres::Client, tokio_postgres::Error>) -> String {
    let e = r.expect_err("refused");
    let db = e.as_db_error().expect("a Postgres error");
    assert_eq!(db.code().code(), "28000", "{db:?}");
    assert_eq!(db.message(), "authentication_failed");
    db.message().to_string()
}

async fn isolation(pooling: bool) {
    let s = setup(pooling, false).await.unwrap();

    // `provision --tenants` from the same data file: the roles exist already (from
    // auth.roles), so this run only updates them, idempotently.
    let tenants = teesql_sidecar::postgres::provision::read_tenants(&s.data_file).unwrap();
    assert_eq!(tenants.len(), 2);
    let done = teesql_sidecar::postgres::provision::provision_with(
        s.cluster.sidecar_config(),
        &["postgres".to_string()],
        &tenants,
    )
    .await
    .unwrap();
    assert!(done.created.is_empty(), "{:?}", done.created);
    assert!(done.updated.contains(&"tenant_acme".to_string()));
    // A tenant the sidecar's config does not name yet is created from the data file, with
    // its privileges, and a second run only updates it.
    let initech = vec![(
        "tenant_initech".to_string(),
        teesql_sidecar::auth::Privileges::Read,
    )];
    for (run, created) in [(1, true), (2, false)] {
        let done = teesql_sidecar::postgres::provision::provision_with(
            s.cluster.sidecar_config(),
            &["postgres".to_string()],
            &initech,
        )
        .await
        .unwrap();
        assert_eq!(
            done.created.contains(&"tenant_initech".to_string()),
            created,
            "run {run}: {done:?}"
        );
    }
    // A data file that names a role meaning something else is refused.
    let e = teesql_sidecar::postgres::provision::provision_with(
        s.cluster.sidecar_config(),
        &["postgres".to_string()],
        &[(
            "postgres".to_string(),
            teesql_sidecar::auth::Privileges::ReadWrite,
        )],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("give the tenant a role of its own"), "{e}");
    // An object in schema teesql that another role owns (and so could redefine) stops
    // provisioning, naming it.
    s.cluster
        .pg
        .psql(
            "postgres",
            "postgres",
            "CREATE TABLE teesql.planted (x int); ALTER TABLE teesql.planted OWNER TO tenant_acme;",
        )
        .unwrap();
    let e = teesql_sidecar::postgres::provision::provision(
        s.cluster.sidecar_config(),
        &["postgres".to_string()],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("another role owns or was granted (relation planted)"),
        "{e}"
    );
    s.cluster
        .pg
        .psql("postgres", "postgres", "DROP TABLE teesql.planted")
        .unwrap();
    // So does a grant on the identity table (whoever holds it could forge identities).
    s.cluster
        .pg
        .psql(
            "postgres",
            "postgres",
            "GRANT UPDATE ON teesql.session_identity TO tenant_acme",
        )
        .unwrap();
    let e = teesql_sidecar::postgres::provision::provision(
        s.cluster.sidecar_config(),
        &["postgres".to_string()],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("a grant of UPDATE on session_identity"), "{e}");
    s.cluster
        .pg
        .psql(
            "postgres",
            "postgres",
            "REVOKE UPDATE ON teesql.session_identity FROM tenant_acme",
        )
        .unwrap();
    // A tenant role that is more than an ordinary role is refused.
    s.cluster
        .pg
        .psql("postgres", "postgres", "CREATE ROLE tenant_root SUPERUSER")
        .unwrap();
    let e = teesql_sidecar::postgres::provision::provision_with(
        s.cluster.sidecar_config(),
        &["postgres".to_string()],
        &[(
            "tenant_root".to_string(),
            teesql_sidecar::auth::Privileges::Read,
        )],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("tenant_root is a superuser"), "{e}");
    s.cluster
        .pg
        .psql(
            "postgres",
            "postgres",
            "DROP OWNED BY tenant_root; DROP ROLE tenant_root",
        )
        .unwrap();
    let can_read = s
        .cluster
        .pg
        .psql(
            "postgres",
            "postgres",
            "SELECT has_schema_privilege('tenant_initech', 'public', 'USAGE')",
        )
        .unwrap();
    assert_eq!(can_read.trim(), "t");

    // Each application, as the generic user with its tenant's secret, gets its tenant's
    // role and writes and reads only its own rows.
    let acme = s
        .connect(&s.acme, "teesql_app", &s.acme_secret)
        .await
        .unwrap()
        .unwrap();
    acme.execute("INSERT INTO notes (body) VALUES ('acme 1')", &[])
        .await
        .unwrap();
    let globex = s
        .connect(&s.globex, "teesql_app", &s.globex_secret)
        .await
        .unwrap()
        .unwrap();
    globex
        .execute("INSERT INTO notes (body) VALUES ('globex 1')", &[])
        .await
        .unwrap();
    assert_eq!(bodies(&acme).await, ["acme 1"]);
    assert_eq!(bodies(&globex).await, ["globex 1"]);
    let role: String = acme
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(role, "tenant_acme");

    // teesql.identity() is the attested identity the verifier decided on.
    let id = identity(&acme).await;
    assert_eq!(id["compose_hash"], s.acme.agent.compose_hash_hex());
    assert_eq!(id["app_id"], s.acme.agent.app_id_hex());
    assert_eq!(id["instance_id"], s.acme.agent.instance_id_hex());
    assert_eq!(id["attributes"], json!({"tenant": "acme"}));
    assert_eq!(id["role"], "tenant_acme");
    assert_eq!(id["user"], "teesql_app");
    assert!(id["policy_hash"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        identity(&globex).await["compose_hash"],
        s.globex.agent.compose_hash_hex()
    );

    // Writing a row for another tenant is refused by the table's policy.
    let e = acme
        .execute(
            "INSERT INTO notes (tenant, body) VALUES ('globex', 'planted')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");

    // Nothing a session does changes its identity.
    for sql in [
        "SET ROLE tenant_globex",
        "SET SESSION AUTHORIZATION tenant_globex",
        "INSERT INTO teesql.session_identity VALUES (pg_backend_pid(), now(), '{}')",
        "UPDATE teesql.session_identity SET identity = '{\"attributes\": {\"tenant\": \"globex\"}}'",
        "DELETE FROM teesql.session_identity",
        "CREATE OR REPLACE FUNCTION teesql.tenant() RETURNS text LANGUAGE sql AS $$ SELECT 'globex' $$",
    ] {
        let e = acme.batch_execute(sql).await;
        assert!(e.is_err(), "{sql} should fail");
    }
    acme.batch_execute(
        "SET teesql.tenant = 'globex'; SET search_path = public; RESET ALL; SET application_name = 'globex'",
    )
    .await
    .unwrap();
    // Tenants share schema public and cannot create in it (nothing to plant for another
    // tenant's queries); a function of the same name in the session's own temporary
    // schema does not shadow teesql's either.
    let e = acme
        .batch_execute(
            "CREATE FUNCTION public.tenant() RETURNS text LANGUAGE sql AS $$ SELECT 'globex' $$",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
    acme.batch_execute(
        "CREATE FUNCTION pg_temp.tenant() RETURNS text LANGUAGE sql AS $$ SELECT 'globex' $$; \
         SET search_path = pg_temp, teesql, public",
    )
    .await
    .unwrap();
    assert_eq!(identity(&acme).await["attributes"]["tenant"], "acme");
    assert_eq!(bodies(&acme).await, ["acme 1"]);
    acme.batch_execute("DROP FUNCTION pg_temp.tenant(); RESET search_path")
        .await
        .unwrap();

    // A client-sent startup parameter cannot carry an identity either: `options` is
    // refused by the sidecar, and what it forwards is only settings.
    let tls = s.tls(&s.acme).unwrap();
    let with_options = format!(
        "{}&options=-c%20teesql.tenant%3Dglobex",
        s.cluster
            .dsn("teesql_app", &s.acme_secret, "postgres", "require")
    );
    assert!(
        teesql_tests::clients::connect(&with_options, tls.clone())
            .await
            .is_err()
    );
    let named = format!(
        "{}&application_name=tenant_globex",
        s.cluster
            .dsn("teesql_app", &s.acme_secret, "postgres", "require")
    );
    let c = teesql_tests::clients::connect(&named, tls).await.unwrap();
    assert_eq!(identity(&c).await["attributes"]["tenant"], "acme");
    drop(c);

    // The other tenant's secret does not help: not as the generic user (its grant is
    // acme, whose secret this is not), not as the other tenant's role (not granted).
    refused(
        s.connect(&s.acme, "teesql_app", &s.globex_secret)
            .await
            .unwrap(),
    );
    refused(
        s.connect(&s.acme, "tenant_globex", &s.globex_secret)
            .await
            .unwrap(),
    );
    // A tenant's application never gets a cluster-wide role, which the table's
    // row-level security would not confine, even with the read-write secret.
    refused(
        s.connect(&s.acme, "teesql_readwrite", &s.cluster.readwrite_secret)
            .await
            .unwrap(),
    );
    // Its own role by name, with its own secret, works.
    let named = s
        .connect(&s.acme, "tenant_acme", &s.acme_secret)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bodies(&named).await, ["acme 1"]);
    drop(named);

    // An application no tenant maps is refused with the generic error, even with the
    // cluster's read-write secret; the decision log says why.
    refused(
        s.connect(&s.stranger, "teesql_app", &s.cluster.readwrite_secret)
            .await
            .unwrap(),
    );
    // Refused before any secret? No: the refusal waits for a password exchange, as a
    // wrong secret does, so an unauthenticated peer cannot probe its grant.
    assert_eq!(first_auth_request(&s, &s.stranger, "teesql_app").await, 10);
    assert_eq!(first_auth_request(&s, &s.acme, "tenant_globex").await, 10);
    // And the exchange looks the same granted or not: the salt a peer is shown.
    assert_eq!(
        server_salt(&s, &s.stranger, "teesql_app").await,
        server_salt(&s, &s.acme, "teesql_app").await
    );
    assert_eq!(
        server_salt(&s, &s.acme, "teesql_app").await,
        server_salt(&s, &s.globex, "teesql_app").await
    );
    assert_eq!(
        server_salt(&s, &s.globex, "tenant_acme").await,
        server_salt(&s, &s.acme, "tenant_acme").await
    );
    let lines = s.decisions(1).await.unwrap();
    let codes: Vec<String> = lines
        .iter()
        .flat_map(|l| l["reasons"].as_array().cloned().unwrap_or_default())
        .map(|r| r["code"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        codes.contains(&"tenant_not_mapped".to_string()),
        "{codes:?}"
    );
    assert!(codes.contains(&"role_not_granted".to_string()), "{codes:?}");
    let granted: Vec<&Value> = lines.iter().filter(|l| l["grants"].is_object()).collect();
    assert!(
        granted
            .iter()
            .any(|l| l["grants"]
                == json!({"roles": ["tenant_acme"], "attributes": {"tenant": "acme"}})),
        "{granted:?}"
    );

    // psql through the same door sees the same rows.
    let conn = format!(
        "{} sslcert={} sslkey={}",
        s.cluster
            .dsn("teesql_app", &s.globex_secret, "postgres", "require"),
        s.globex.cert.display(),
        s.globex.key.display()
    );
    let conn = dsn_to_keywords(&conn);
    let out = teesql_tests::clients::psql(&conn, &["-c", "SELECT body FROM notes"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "globex 1");

    // A Postgres backend handed on: acme-web ends its session; acme-batch (the same
    // tenant, the same role, another application) logs in next. With pooling it gets the
    // same backend, and must see its own identity, never acme-web's.
    let first_pid = pid(&acme).await;
    drop(acme);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // Another tenant never gets that backend: kept backends are per role.
    let other = s
        .connect(&s.globex, "teesql_app", &s.globex_secret)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(pid(&other).await, first_pid);
    assert_eq!(identity(&other).await["attributes"]["tenant"], "globex");
    drop(other);
    let batch = s
        .connect(&s.acme_batch, "teesql_app", &s.acme_secret)
        .await
        .unwrap()
        .unwrap();
    let batch_pid = pid(&batch).await;
    if pooling {
        assert_eq!(batch_pid, first_pid, "the kept backend was not reused");
    }
    assert_eq!(
        identity(&batch).await["compose_hash"],
        s.acme_batch.agent.compose_hash_hex()
    );
    assert_eq!(bodies(&batch).await, ["acme 1"]);
    drop(batch);
    drop(globex);
}

/// The sidecar's first answer to `app`'s StartupMessage as `user`: the authentication
/// request code (10: SASL), or 0 for an ErrorResponse.
async fn first_auth_request(s: &Setup, app: &App, user: &str) -> i32 {
    let mut tls = started(s, app, user).await;
    let (tag, body) = message(&mut tls).await;
    match tag {
        b'R' => i32::from_be_bytes(body[..4].try_into().unwrap()),
        b'E' => 0,
        other => panic!("unexpected message {:?}", other as char),
    }
}

/// The salt in the sidecar's SCRAM server-first message to `app` logging in as `user`.
async fn server_salt(s: &Setup, app: &App, user: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut tls = started(s, app, user).await;
    let (tag, body) = message(&mut tls).await;
    assert_eq!((tag, &body[..4]), (b'R', &10i32.to_be_bytes()[..]));
    let first = b"n,,n=,r=abcdefghijklmnopqrstuvwx";
    let mut msg = b"SCRAM-SHA-256\0".to_vec();
    msg.extend_from_slice(&(first.len() as i32).to_be_bytes());
    msg.extend_from_slice(first);
    let mut out = vec![b'p'];
    out.extend_from_slice(&((msg.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(&msg);
    tls.write_all(&out).await.unwrap();
    let (tag, body) = message(&mut tls).await;
    assert_eq!((tag, &body[..4]), (b'R', &11i32.to_be_bytes()[..]));
    let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
    server_first
        .split(',')
        .find_map(|f| f.strip_prefix("s="))
        .unwrap()
        .to_string()
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One backend message: tag and body.
async fn message(tls: &mut Tls) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let tag = tls.read_u8().await.unwrap();
    let len = tls.read_i32().await.unwrap();
    let mut body = vec![0u8; usize::try_from(len - 4).unwrap()];
    tls.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// A TLS connection as `app` that has sent its StartupMessage as `user`.
async fn started(s: &Setup, app: &App, user: &str) -> Tls {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(s.cluster.sidecar_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(s.tls(app).unwrap()))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&196608i32.to_be_bytes());
    for (k, v) in [("user", user), ("database", "postgres")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    tls.write_all(&msg).await.unwrap();
    tls
}

/// `postgresql://u:p@h:port/db?sslmode=require sslcert=… sslkey=…` as keyword/value pairs
/// (psql takes either form, not a mix).
fn dsn_to_keywords(conn: &str) -> String {
    let (url, rest) = conn.split_once(' ').unwrap();
    let url = url.trim_start_matches("postgresql://");
    let (userinfo, hostpart) = url.split_once('@').unwrap();
    let (user, password) = userinfo.split_once(':').unwrap();
    let (hostport, dbq) = hostpart.split_once('/').unwrap();
    let (host, port) = hostport.split_once(':').unwrap();
    let (db, query) = dbq.split_once('?').unwrap();
    format!(
        "host={host} port={port} user={user} password={password} dbname={db} {} {rest}",
        query.replace('&', " ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_by_attested_identity() {
    isolation(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_by_attested_identity_with_pooling() {
    isolation(true).await;
}

/// `attestation_only`: the grant alone logs in, whatever password the client sends; an
/// application without the grant still gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attestation_only_role_needs_the_grant_and_no_secret() {
    let s = setup(false, true).await.unwrap();
    let c = s
        .connect(&s.acme, "tenant_acme", "not-a-secret")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(identity(&c).await["attributes"]["tenant"], "acme");
    let c = s
        .connect(&s.acme_batch, "teesql_app", &s.globex_secret)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(identity(&c).await["role"], "tenant_acme");
    refused(
        s.connect(&s.globex, "tenant_acme", "not-a-secret")
            .await
            .unwrap(),
    );
    refused(
        s.connect(&s.stranger, "tenant_acme", "not-a-secret")
            .await
            .unwrap(),
    );
    refused(
        s.connect(&s.stranger, "teesql_app", "not-a-secret")
            .await
            .unwrap(),
    );
}

/// Rows of ended sessions do not pile up: every `PRUNE_EVERY` identities recorded, the
/// rows of backends that have ended are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_leave_no_rows_behind() {
    let s = setup(false, false).await.unwrap();
    let n = teesql_sidecar::postgres::identity_rows::PRUNE_EVERY + 44;
    for _ in 0..n {
        let c = s
            .connect(&s.acme, "teesql_app", &s.acme_secret)
            .await
            .unwrap()
            .unwrap();
        c.simple_query("SELECT 1").await.unwrap();
    }
    let mut rows = u64::MAX;
    for _ in 0..50 {
        rows = s
            .cluster
            .pg
            .psql(
                "postgres",
                "postgres",
                "SELECT count(*) FROM teesql.session_identity",
            )
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        if rows <= 100 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(rows <= 100, "{rows} rows after {n} sessions");
}

/// Without the schema `provision` creates, a session is refused (never relayed without
/// its identity), and the error for the operator says what to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_without_the_identity_schema_refuses_sessions_and_says_why() {
    let s = setup(false, false).await.unwrap();
    s.cluster
        .pg
        .psql("postgres", "postgres", "DROP SCHEMA teesql CASCADE")
        .unwrap();
    let e = s
        .connect(&s.acme, "teesql_app", &s.acme_secret)
        .await
        .unwrap()
        .expect_err("a session without its identity recorded");
    let db = e.as_db_error().expect("a Postgres error");
    assert_eq!(db.code().code(), "08006", "{db:?}");
    let recorder = teesql_sidecar::postgres::identity_rows::IdentityRecorder::new(
        s.cluster.sidecar_config().backend.clone(),
    );
    let why = recorder
        .record(
            "postgres",
            std::process::id() as i32,
            &teesql_sidecar::postgres::identity_rows::SessionIdentity::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(why.contains("run `teesql-sidecar provision`"), "{why}");
}

/// A tenant role sees nothing of another tenant's activity: not its query text in
/// `pg_stat_activity` (that needs pg_read_all_stats or the same role) and it cannot
/// cancel the other's backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_and_stops_nothing_of_another_tenants_activity() {
    let s = setup(false, false).await.unwrap();
    let globex = s
        .connect(&s.globex, "teesql_app", &s.globex_secret)
        .await
        .unwrap()
        .unwrap();
    let globex_pid = pid(&globex).await;
    let busy = tokio::spawn(async move {
        globex
            .simple_query("SELECT pg_sleep(3), 'globex-secret-marker'")
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let acme = s
        .connect(&s.acme, "teesql_app", &s.acme_secret)
        .await
        .unwrap()
        .unwrap();
    let rows = acme
        .query(
            "SELECT coalesce(query, ''), client_addr IS NULL, state IS NULL \
             FROM pg_stat_activity WHERE pid = $1",
            &[&globex_pid],
        )
        .await
        .unwrap();
    let seen: Vec<(String, bool, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        seen,
        [("<insufficient privilege>".to_string(), true, true)],
        "{seen:?}"
    );
    for signal in ["pg_cancel_backend", "pg_terminate_backend"] {
        let e = acme
            .query_one(&format!("SELECT {signal}($1)"), &[&globex_pid])
            .await
            .unwrap_err();
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().contains("permission denied")
                    || d.message().contains("must be a member")),
            "{signal}: {e:?}"
        );
    }
    busy.await.unwrap().unwrap();
}

/// Two tenants that share a role on purpose (`shared_role`) and a pool: whatever one
/// pipelines before its Terminate, the other's session on a handed-over backend answers
/// only its own query, as its own tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_role_pool_hands_nothing_from_one_tenant_to_another() {
    use teesql_tests::cluster::{Cluster, ClusterOptions, RawSession, dev_profile};
    let dir = tempfile::tempdir().unwrap();
    let acme = teesql_tests::tenants::app("acme-shared", dir.path())
        .await
        .unwrap();
    let globex = teesql_tests::tenants::app("globex-shared", dir.path())
        .await
        .unwrap();
    let profile = dev_profile(
        &dir.path().join("profile"),
        &json!({"teesql": {"tenants": {
            "acme": {"role": "tenant_shared", "privileges": "readwrite", "shared_role": true,
                     "compose_hashes": [acme.agent.compose_hash_hex()]},
            "globex": {"role": "tenant_shared", "privileges": "readwrite", "shared_role": true,
                       "compose_hashes": [globex.agent.compose_hash_hex()]},
        }}}),
    )
    .unwrap();
    let cluster = Cluster::start(ClusterOptions {
        seed: teesql_tests::tenants::SEED,
        profile: profile.display().to_string(),
        sidecar_toml: "[backend]\npool_max_idle_per_key = 4\n\
             [[auth.roles]]\nname = \"tenant_shared\"\nprivileges = \"readwrite\"\ngranted = true\nattestation_only = true\n"
            .into(),
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let tls = |app: &App| {
        teesql_tests::clients::tls_config(&cluster.agent.app_ca_path(), Some((&app.cert, &app.key)))
            .unwrap()
    };
    let params = [
        ("user", "tenant_shared"),
        ("database", "postgres"),
        ("client_encoding", "UTF8"),
    ];
    for round in 0..3 {
        let mut a = cluster
            .raw_session_with(tls(&acme), &params, "x")
            .await
            .unwrap();
        let mut attack = RawSession::query("SELECT pg_sleep(0.3)");
        attack.extend(RawSession::query("DISCARD ALL"));
        attack.extend(RawSession::query("SELECT teesql.tenant(), pg_sleep(0.5)"));
        attack.extend(b"X\0\0\0\x04");
        a.send(&attack).await.unwrap();
        drop(a);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let mut v = cluster
            .raw_session_with(tls(&globex), &params, "x")
            .await
            .unwrap();
        v.send(&RawSession::query("SELECT teesql.tenant()"))
            .await
            .unwrap();
        let got = v.until_ready().await.unwrap();
        assert!(
            got.iter().all(|(t, _)| *t != b'E'),
            "round {round}: {got:?}"
        );
        assert_eq!(RawSession::rows(&got), ["globex"], "round {round}");
        v.terminate().await.unwrap();
    }
}

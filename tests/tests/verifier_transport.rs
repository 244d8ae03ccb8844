//! The sidecar and `forward` reaching the verifier over TLS (trusted by the CA that
//! issued its certificate, by the certificate's hash, or by the quote in its own RA-TLS
//! certificate) and over a unix socket, and refusing a verifier that is not the one they
//! trust: no decision, no login.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use teesql_proto::transport::ServerTrust;
use teesql_tests::clients;
use teesql_tests::cluster::{
    Cluster, ClusterOptions, VerifierTransport, identity_trust, write_identity_profile,
};

async fn cluster(transport: VerifierTransport) -> Cluster {
    Cluster::start(ClusterOptions {
        verifier_transport: transport,
        ..ClusterOptions::default()
    })
    .await
    .unwrap()
}

/// `SELECT 6*7` through a forwarder, which asks the verifier about the server while the
/// sidecar asks it about the forwarder.
async fn through_forward(
    c: &Cluster,
    settings: teesql_sidecar::forward::ForwardSettings,
) -> std::process::Output {
    let fwd = c.forward(settings).await.unwrap();
    clients::psql(
        &format!(
            "postgresql://teesql_read:{}@{fwd}/postgres?sslmode=disable",
            c.read_secret
        ),
        &["-c", "SELECT 6 * 7"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_and_forward_ask_a_tls_verifier_and_refuse_an_impostor() {
    let c = cluster(VerifierTransport::Tls).await;
    assert!(c.verifier_url.starts_with("https://"), "{}", c.verifier_url);
    assert!(c.sidecar_config().verifier_trust.is_some());

    let o = through_forward(&c, c.forward_settings()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");

    // The same verifier under a pin that is not its certificate: the forwarder gets no
    // decision, so it lets no one through.
    let mut pinned_wrong = c.forward_settings();
    pinned_wrong.verifier.ca_file = None;
    pinned_wrong.verifier.cert_sha256 = Some("ab".repeat(32));
    let o = through_forward(&c, pinned_wrong).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("verifier unavailable"), "{err}");

    // A sidecar trusting another verifier certificate: every login is refused.
    let mut config = c.sidecar_config().clone();
    config.verifier_trust = Some(ServerTrust::CertSha256([7; 32]));
    let (addr, _stop) = start_sidecar(config).await;
    let dsn = format!(
        "postgresql://teesql_read:{}@{addr}/postgres?sslmode=require",
        c.read_secret
    );
    let refused = clients::connect(&dsn, c.client_tls().unwrap()).await;
    assert!(
        refused.is_err(),
        "a sidecar logged a client in without its verifier"
    );
    // The genuine pin works for the same sidecar shape.
    let ok = c
        .connect("teesql_read", &c.read_secret, "postgres")
        .await
        .unwrap();
    let row = ok.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

/// A sidecar with `config` on a free loopback port; it stops when the sender is dropped.
async fn start_sidecar(
    config: teesql_sidecar::config::SidecarConfig,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sidecar = teesql_sidecar::Sidecar::start(config).await.unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sidecar.run(
        teesql_sidecar::Listeners {
            postgres: listener,
            admin: None,
            public: None,
        },
        async {
            let _ = rx.await;
        },
    ));
    (addr, stop)
}

/// The sidecar's client of `c`'s verifier under `trust`: its health check says whether
/// the verifier was accepted, and why not.
async fn health_under(
    c: &Cluster,
    trust: &teesql_sidecar::verifier::TrustSettings,
) -> Result<(), String> {
    let trust = trust
        .resolve(&teesql_proto::settings::NoEnv)
        .map_err(|e| format!("config: {e}"))?;
    let client = teesql_sidecar::verifier::VerifierClient::new(
        &c.verifier_url,
        trust.as_ref(),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    client.check_health().await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_and_forward_trust_a_verifier_by_its_quote_and_refuse_another_identity() {
    let c = cluster(VerifierTransport::RaTls).await;
    assert!(c.verifier_url.starts_with("https://"), "{}", c.verifier_url);
    let trust = c.verifier_identity.clone().unwrap();

    // The sidecar (whose every login goes through this verifier) and the forwarder both
    // appraised the verifier's RA-TLS certificate: 42 comes back.
    let o = through_forward(&c, c.forward_settings()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
    health_under(&c, &trust).await.unwrap();

    // Pinned to another compose hash: refused, and the reason names the pin.
    let other =
        write_identity_profile(&c.state_dir.join("other-verifier"), &["ab".repeat(32)]).unwrap();
    let wrong = identity_trust(&c.agent, other);
    let e = health_under(&c, &wrong).await.unwrap_err();
    assert!(e.contains("verifier_compose_hash_not_pinned"), "{e}");
    assert!(e.contains(&c.agent.agent.compose_hash_hex()), "{e}");
    let mut settings = c.forward_settings();
    settings.verifier = teesql_sidecar::verifier::TrustSettings {
        url: settings.verifier.url.clone(),
        ..wrong.clone()
    };
    let o = through_forward(&c, settings).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("verifier unavailable"), "{err}");

    // A profile without pins trusts no verifier (fail closed).
    let unpinned = write_identity_profile(&c.state_dir.join("unpinned-verifier"), &[]).unwrap();
    let e = health_under(&c, &identity_trust(&c.agent, unpinned))
        .await
        .unwrap_err();
    assert!(e.contains("verifier_not_pinned"), "{e}");

    // The same pins, but the production roots: a development quote is not accepted.
    let prod = c.state_dir.join("prod-verifier");
    std::fs::create_dir_all(&prod).unwrap();
    std::fs::write(
        prod.join("profile.toml"),
        format!(
            "extends = [{:?}]\n",
            teesql_tests::cluster::repo_root()
                .join("policies/teesql")
                .canonicalize()
                .unwrap()
                .display()
                .to_string()
        ),
    )
    .unwrap();
    std::fs::copy(
        trust
            .identity_policy_dir
            .as_ref()
            .unwrap()
            .join("data.json"),
        prod.join("data.json"),
    )
    .unwrap();
    let e = health_under(&c, &identity_trust(&c.agent, prod))
        .await
        .unwrap_err();
    assert!(e.contains("dev_root"), "{e}");

    // A sidecar configured with the wrong pin logs no one in.
    let mut config = c.sidecar_config().clone();
    config.verifier_trust = wrong.resolve(&teesql_proto::settings::NoEnv).unwrap();
    let (addr, _stop) = start_sidecar(config).await;
    let dsn = format!(
        "postgresql://teesql_read:{}@{addr}/postgres?sslmode=require",
        c.read_secret
    );
    assert!(
        clients::connect(&dsn, c.client_tls().unwrap())
            .await
            .is_err(),
        "a sidecar logged a client in through a verifier it does not trust"
    );

    // Decision tokens: the signing key is bound to the verifier's quote, and a relying
    // party appraises who signed from the JWKS alone.
    let jwks = c.verifier.signer().unwrap().jwks_json().to_string();
    assert!(jwks.contains("teesql_getquote"), "{jwks}");
    let agent = teesql_proto::agent::GuestAgent::new(Some(&c.agent.socket.display().to_string()));
    let (chain_pem, _key) = agent.tls_identity("app", &[], false).await.unwrap();
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<Vec<u8>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .map(|c| c.unwrap().as_ref().to_vec())
            .collect();
    let client = teesql_sidecar::verifier::VerifierClient::new(
        &c.verifier_url,
        c.sidecar_config().verifier_trust.as_ref(),
        std::time::Duration::from_secs(10),
    )
    .unwrap();
    let decision = client
        .verify_peer(teesql_proto::v1::VerifyPeerRequest {
            purpose: "sidecar".into(),
            chain,
            sign: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(decision.allow, "{decision:?}");
    let token = decision.token.clone();
    assert!(!token.is_empty());
    let identity =
        teesql_verifier::local::VerifierIdentity::new(&teesql_verifier::local::LocalSettings {
            policy_dirs: vec![trust.identity_policy_dir.clone().unwrap()],
            dev_trust_root: trust.identity_dev_trust_root.clone(),
            pccs_url: trust.identity_pccs_url.clone(),
            ..Default::default()
        })
        .unwrap();
    let who = identity.appraise_token_signer(&token, &jwks).await.unwrap();
    assert!(who.contains(&c.agent.agent.compose_hash_hex()), "{who}");
    // The same key published without its quote, or with another key's quote: refused.
    let set: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    let mut bare = set.clone();
    bare["keys"][0]
        .as_object_mut()
        .unwrap()
        .remove("teesql_getquote");
    let e = identity
        .appraise_token_signer(&token, &bare.to_string())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("carries no quote"), "{e}");
    let other_signer =
        teesql_verifier::service::token::DecisionSigner::generate("teesql-verifier").unwrap();
    let mut swapped: serde_json::Value = serde_json::from_str(other_signer.jwks_json()).unwrap();
    let kid = set["keys"][0]["kid"].clone();
    swapped["keys"][0]["kid"] = kid;
    swapped["keys"][0]["teesql_getquote"] = set["keys"][0]["teesql_getquote"].clone();
    let e = identity
        .appraise_token_signer(&token, &swapped.to_string())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("key_not_bound"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_and_forward_ask_a_verifier_on_a_unix_socket() {
    let c = cluster(VerifierTransport::Unix).await;
    assert!(c.verifier_url.starts_with("unix:///"), "{}", c.verifier_url);
    let o = through_forward(&c, c.forward_settings()).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
}

#[test]
fn forward_refuses_plaintext_to_a_remote_verifier() {
    let e = teesql_sidecar::forward::ForwardSettings {
        to: Some("127.0.0.1:5433".into()),
        verifier: teesql_sidecar::verifier::TrustSettings {
            url: Some("http://192.0.2.10:50051".into()),
            ..Default::default()
        },
        allow_unpinned_server: true,
        ..Default::default()
    }
    .resolve(&teesql_proto::settings::NoEnv)
    .unwrap_err()
    .join("\n");
    assert!(e.contains("plaintext only to a loopback address"), "{e}");
}

/// `teesql_verifier_decisions_total` for purpose `sidecar`, allowed, from its metrics.
fn sidecar_allows(service: &teesql_verifier::service::DecisionService) -> u64 {
    service
        .metrics()
        .encode()
        .lines()
        .find(|l| {
            l.starts_with("teesql_verifier_decisions_total{")
                && l.contains("purpose=\"sidecar\"")
                && l.contains("outcome=\"allow\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A second verifier like the cluster's (same policies, trust root, collateral) on its
/// own port: its URL, its decision engine, and the sender that stops it.
async fn second_verifier(
    c: &Cluster,
) -> (
    String,
    std::sync::Arc<teesql_verifier::service::DecisionService>,
    tokio::sync::oneshot::Sender<()>,
) {
    verifier_with_profile(c, teesql_tests::cluster::repo_root().join("policies/dev")).await
}

/// A verifier like the cluster's under the policy profile `profile`.
async fn verifier_with_profile(
    c: &Cluster,
    profile: std::path::PathBuf,
) -> (
    String,
    std::sync::Arc<teesql_verifier::service::DecisionService>,
    tokio::sync::oneshot::Sender<()>,
) {
    use teesql_verifier::service::config::{ServeConfig, ServeSettings};
    use teesql_verifier::service::server::{Listeners, Verifier};
    let config = ServeConfig::resolve(ServeSettings {
        listen: Some("127.0.0.1:0".into()),
        policy_dirs: Some(vec![profile]),
        dev_trust_root: Some(c.agent.root_der_path()),
        pccs_url: Some(c.agent.url.clone()),
        decision_log: Some("off".into()),
        ..ServeSettings::default()
    })
    .unwrap();
    let verifier = Verifier::start(&config).unwrap();
    let service = verifier.service().clone();
    let listeners = Listeners::bind(&config).await.unwrap();
    let url = listeners.grpc.url(false);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(verifier.run(listeners, async {
        let _ = rx.await;
    }));
    (url, service, stop)
}

/// Issue 15, goal 6: a sidecar given two verifiers asks both, and keeps logging clients
/// in when one stops, or hangs; only with none left does a login fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_verifiers_share_the_load_and_one_failing_fails_no_login() {
    let c = cluster(VerifierTransport::Loopback).await;
    let (second_url, second, stop_second) = second_verifier(&c).await;
    let mut config = c.sidecar_config().clone();
    config.verifier_url = format!("{}, {second_url}", c.verifier_url);
    let (addr, _stop) = start_sidecar(config.clone()).await;
    let dsn = format!(
        "postgresql://teesql_read:{}@{addr}/postgres?sslmode=require",
        c.read_secret
    );
    let tls = c.client_tls().unwrap();
    let login = || async {
        let client = clients::connect(&dsn, tls.clone()).await?;
        client.query_one("SELECT 1", &[]).await?;
        Ok::<_, anyhow::Error>(())
    };

    let (first_before, second_before) = (sidecar_allows(&c.verifier), sidecar_allows(&second));
    const LOGINS: u64 = 12;
    for i in 0..LOGINS {
        login().await.unwrap_or_else(|e| panic!("login {i}: {e:#}"));
    }
    let first_n = sidecar_allows(&c.verifier) - first_before;
    let second_n = sidecar_allows(&second) - second_before;
    println!("{LOGINS} logins over two verifiers: {first_n} + {second_n} decisions");
    assert_eq!(first_n + second_n, LOGINS);
    assert!(first_n > 0 && second_n > 0, "{first_n} / {second_n}");

    // One verifier stops: every login still gets its decision from the other.
    drop(stop_second);
    let mut failed = 0;
    for _ in 0..LOGINS {
        if login().await.is_err() {
            failed += 1;
        }
    }
    println!("{LOGINS} logins with one of two verifiers stopped: {failed} failed");
    assert_eq!(failed, 0);

    // A verifier that accepts connections and never answers costs its share of the
    // time limit, not the login.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_url = format!("http://{}", hung.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hung.accept().await {
            held.push(s);
        }
    });
    let mut hung_config = c.sidecar_config().clone();
    hung_config.verifier_url = format!("{hung_url},{}", c.verifier_url);
    hung_config.verifier_timeout = std::time::Duration::from_secs(4);
    let (hung_addr, _stop_hung) = start_sidecar(hung_config).await;
    let hung_dsn = format!(
        "postgresql://teesql_read:{}@{hung_addr}/postgres?sslmode=require",
        c.read_secret
    );
    for i in 0..4 {
        let client = clients::connect(&hung_dsn, tls.clone())
            .await
            .unwrap_or_else(|e| panic!("login {i} beside a hung verifier: {e:#}"));
        client.query_one("SELECT 1", &[]).await.unwrap();
    }

    // None left: the login is refused (fail closed), and health says why for each.
    let mut dead = c.sidecar_config().clone();
    dead.verifier_url = format!("{second_url},{hung_url}");
    dead.verifier_timeout = std::time::Duration::from_secs(2);
    let client = teesql_sidecar::verifier::VerifierClient::new(
        &dead.verifier_url,
        None,
        dead.verifier_timeout,
    )
    .unwrap();
    let e = client.check_health().await.unwrap_err().to_string();
    assert!(e.contains(&second_url) && e.contains(&hung_url), "{e}");
    let (dead_addr, _stop_dead) = start_sidecar(dead).await;
    let dead_dsn = format!(
        "postgresql://teesql_read:{}@{dead_addr}/postgres?sslmode=require",
        c.read_secret
    );
    assert!(clients::connect(&dead_dsn, tls.clone()).await.is_err());
}

/// Issue 23: endpoints loaded with different policies must not answer alternately. The
/// first decision's policy hash is expected; one under another is not used but asked
/// again of the next endpoint, and counted. A list of hashes (a rollout) admits exactly
/// those. A new hash every answering endpoint agrees on is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifiers_under_different_policies_never_answer_alternately() {
    let c = cluster(VerifierTransport::Loopback).await;
    // The same rules and data under another hash: a profile of its own extending dev.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("profile.toml"),
        format!(
            "# the next policy version\nextends = [{:?}]\n",
            teesql_tests::cluster::repo_root()
                .join("policies/dev")
                .display()
                .to_string()
        ),
    )
    .unwrap();
    let (new_url, new_service, _stop_new) = verifier_with_profile(&c, dir.path().into()).await;
    let (old_hash, new_hash) = (
        c.verifier.policies().hash().to_string(),
        new_service.policies().hash().to_string(),
    );
    assert_ne!(old_hash, new_hash);

    let ask = |client: teesql_sidecar::verifier::VerifierClient| async move {
        client
            .verify_peer(teesql_proto::v1::VerifyPeerRequest {
                purpose: "sidecar".into(),
                user: "teesql_read".into(),
                ..Default::default()
            })
            .await
    };
    let client = |urls: &str, hashes: Vec<String>| {
        let mismatches = prometheus_client::metrics::counter::Counter::<u64>::default();
        let client = teesql_sidecar::verifier::VerifierClient::new(
            urls,
            None,
            std::time::Duration::from_secs(5),
        )
        .unwrap()
        .with_policy_hashes(hashes, mismatches.clone());
        (client, mismatches)
    };

    // Reproduced before the fix: round-robin gave old, new, old, new… Now the first
    // answer (the old endpoint, first in the list) sets the hash and every decision is
    // under it; each turn that started at the new endpoint was counted and asked again.
    let both = format!("{},{new_url}", c.verifier_url);
    let (mixed, mismatches) = client(&both, Vec::new());
    for i in 0..8 {
        let d = ask(mixed.clone()).await.unwrap();
        assert_eq!(d.policy_hash, old_hash, "decision {i}");
    }
    assert_eq!(
        mismatches.get(),
        4,
        "every other call began at the new endpoint"
    );

    // A rollout names both: both are believed, nothing is counted.
    let (rollout, mismatches) = client(&both, vec![old_hash.clone(), new_hash.clone()]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(ask(rollout.clone()).await.unwrap().policy_hash);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(mismatches.get(), 0);

    // Only the new one named: the old endpoint's answers are not used.
    let (pinned, mismatches) = client(&both, vec![new_hash.clone()]);
    for _ in 0..4 {
        assert_eq!(ask(pinned.clone()).await.unwrap().policy_hash, new_hash);
    }
    assert_eq!(mismatches.get(), 2);
    // Named, a hash no endpoint has: no decision at all (refused), naming why.
    let (nowhere, _) = client(&both, vec![format!("sha256:{}", "0".repeat(64))]);
    let e = ask(nowhere).await.unwrap_err().to_string();
    assert!(
        e.contains("decided under policy") && e.contains(&new_hash),
        "{e}"
    );

    // The old endpoint goes away (its reload or upgrade): the new hash is the only one
    // answering, so it is followed — with one endpoint after a reload the same happens.
    let (old_url, _, stop_old) =
        verifier_with_profile(&c, teesql_tests::cluster::repo_root().join("policies/dev")).await;
    let (moving, mismatches) = client(&format!("{old_url},{new_url}"), Vec::new());
    assert_eq!(ask(moving.clone()).await.unwrap().policy_hash, old_hash);
    drop(stop_old);
    // Until the old endpoint's connections are closed, it still answers.
    let (old_only, _) = client(&old_url, Vec::new());
    for _ in 0..100 {
        if old_only.check_health().await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for _ in 0..4 {
        assert_eq!(ask(moving.clone()).await.unwrap().policy_hash, new_hash);
    }
    assert_eq!(mismatches.get(), 1, "counted once, then followed");

    // End to end: a sidecar over both keeps logging clients in, every decision from one
    // policy.
    let mut config = c.sidecar_config().clone();
    config.verifier_url = both;
    let (addr, _stop) = start_sidecar(config).await;
    let dsn = format!(
        "postgresql://teesql_read:{}@{addr}/postgres?sslmode=require",
        c.read_secret
    );
    let tls = c.client_tls().unwrap();
    let (old_before, new_before) = (sidecar_allows(&c.verifier), sidecar_allows(&new_service));
    for i in 0..6 {
        let client = clients::connect(&dsn, tls.clone())
            .await
            .unwrap_or_else(|e| panic!("login {i}: {e:#}"));
        client.query_one("SELECT 1", &[]).await.unwrap();
    }
    let used_old = sidecar_allows(&c.verifier) - old_before;
    let asked_new = sidecar_allows(&new_service) - new_before;
    println!(
        "6 logins over two policies: {used_old} decisions under the first, {asked_new} asked of the other and not used"
    );
    assert_eq!(used_old, 6);
}

/// Issue 26 with several verifier endpoints: a sidecar over two verifiers follows the
/// first one's policy stream; that one stops; the policy changes on the other, which
/// now denies the session's client: the follower's stream moves to the other endpoint,
/// sees the new policy, and the open session is ended (57P01).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sessions_follow_the_policy_across_verifier_endpoints() {
    let c = cluster(VerifierTransport::Loopback).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("profile.toml"),
        format!(
            "extends = [{:?}]\n",
            teesql_tests::cluster::repo_root()
                .join("policies/dev")
                .display()
                .to_string()
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("data.json"), r#"{"teesql": {}}"#).unwrap();
    let (first_url, _first, stop_first) = verifier_with_profile(&c, dir.path().into()).await;
    let (second_url, second, _stop_second) = verifier_with_profile(&c, dir.path().into()).await;
    let mut config = c.sidecar_config().clone();
    config.verifier_url = format!("{first_url},{second_url}");
    let (addr, _stop) = start_sidecar(config).await;
    let dsn = format!(
        "postgresql://teesql_read:{}@{addr}/postgres?sslmode=require",
        c.read_secret
    );
    let (client, connection) = tokio_postgres::connect(
        &dsn,
        tokio_postgres_rustls::MakeRustlsConnect::new(c.client_tls().unwrap()),
    )
    .await
    .unwrap();
    let ended = tokio::spawn(connection);
    client.query_one("SELECT 1", &[]).await.unwrap();
    // Give the follower time to take the first endpoint's stream, then stop that one.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = stop_first.send(());
    // The follower moves to the second endpoint, under the same policy: that ends
    // nothing (as a verifier restart that keeps its policy ends nothing).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    client.query_one("SELECT 1", &[]).await.unwrap();
    assert!(!ended.is_finished());
    // The second now requires client attestation and pins an MRTD no client has.
    std::fs::write(
        dir.path().join("data.json"),
        format!(
            r#"{{"teesql": {{"require_client_attestation": true, "pins": {{"mrtd": ["{}"]}}}}}}"#,
            "00".repeat(48)
        ),
    )
    .unwrap();
    let (_, changed) = second.reload().await.unwrap();
    assert!(changed);
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), ended)
        .await
        .expect("the session outlived the policy change")
        .unwrap()
        .expect_err("ended with an error");
    assert_eq!(e.as_db_error().expect("a FATAL").code().code(), "57P01");
}

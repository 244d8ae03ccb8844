//! The sidecar and `forward` reaching the verifier over TLS (trusted by the CA that
//! issued its certificate, or by the certificate's hash) and over a unix socket, and
//! refusing a verifier that is not the one they trust: no decision, no login.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use teesql_proto::transport::ServerTrust;
use teesql_tests::clients;
use teesql_tests::cluster::{Cluster, ClusterOptions, VerifierTransport};

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
    pinned_wrong.verifier_ca_file = None;
    pinned_wrong.verifier_cert_sha256 = Some("ab".repeat(32));
    let o = through_forward(&c, pinned_wrong).await;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("verifier unavailable"), "{err}");

    // A sidecar trusting another verifier certificate: every login is refused.
    let mut config = c.sidecar_config().clone();
    config.verifier_trust = Some(ServerTrust::CertSha256([7; 32]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sidecar = teesql_sidecar::Sidecar::start(config).await.unwrap();
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
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
        verifier_url: Some("http://192.0.2.10:50051".into()),
        allow_unpinned_server: true,
        ..Default::default()
    }
    .resolve(&teesql_proto::settings::NoEnv)
    .unwrap_err()
    .join("\n");
    assert!(e.contains("plaintext only to a loopback address"), "{e}");
}

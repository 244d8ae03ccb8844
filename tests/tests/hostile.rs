//! What a hostile peer can get out of the front door, end to end on loopback: a rogue
//! server in front of `forward` (mode A) must never receive the cluster secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teesql_sidecar::forward::{ForwardSettings, Forwarder};
use teesql_tests::agent::TestAgent;
use teesql_tests::clients::psql;
use teesql_tests::cluster::{Cluster, ClusterOptions};
use teesql_verifier::dev::{AgentConfig, RaTlsRequest};
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
    let identity =
        teesql_sidecar::tls::ServerIdentity::from_pem(&issued.chain_pem.concat(), &issued.key_pem)
            .unwrap();
    let config =
        teesql_sidecar::tls::server_config(teesql_sidecar::tls::RotatingCert::new(identity))
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
                let mut request = vec![b'R'];
                let body_len: u32 = if auth == 5 { 12 } else { 8 };
                request.extend_from_slice(&body_len.to_be_bytes());
                request.extend_from_slice(&auth.to_be_bytes());
                if auth == 5 {
                    request.extend_from_slice(b"salt");
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
        server_name: Some("localhost".into()),
        verifier_url: format!("http://{}", c.verifier_addr),
        purpose: "client".into(),
        expected_mrtds: vec![c.agent.agent.mrtd_hex()],
        ..Default::default()
    };
    tweak(&mut settings);
    let config = settings.resolve().unwrap();
    let f = Forwarder::start(config, Some(c.agent.socket.to_str().unwrap()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(f.run(listener, std::future::pending()));
    addr
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
        verifier_url: "http://127.0.0.1:1".into(),
        expected_mrtds: vec![c.agent.agent.mrtd_hex()],
        ..Default::default()
    }
    .resolve()
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

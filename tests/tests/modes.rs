//! Connection mode A (an application's plaintext driver through `teesql-sidecar
//! forward`), with the server judged by the verifier: MRTD expectations and signed
//! leader manifests. Modes B and D are in `sidecar.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use teesql_sidecar::forward::ForwardSettings;
use teesql_tests::clients::psql;
use teesql_tests::cluster::{Cluster, ClusterOptions, repo_root};
use teesql_verifier::manifest::{Manifest, address_of, sign};

/// Trusts the dev root, requires client attestation, pins a manifest signer.
fn profile(dir: &Path, signer: &str) -> String {
    let base = repo_root().join("policies/dev").canonicalize().unwrap();
    std::fs::write(
        dir.join("profile.toml"),
        format!("extends = [{:?}]\n", base.display().to_string()),
    )
    .unwrap();
    std::fs::write(
        dir.join("data.json"),
        format!(r#"{{"teesql": {{"require_client_attestation": true, "manifest_signers": ["{signer}"]}}}}"#),
    )
    .unwrap();
    dir.display().to_string()
}

async fn forwarder(c: &Cluster, tweak: impl FnOnce(&mut ForwardSettings)) -> SocketAddr {
    let mut settings = c.forward_settings();
    tweak(&mut settings);
    c.forward(settings).await.unwrap()
}

fn local_dsn(addr: SocketAddr, user: &str, secret: &str) -> String {
    format!("postgresql://{user}:{secret}@{addr}/postgres?sslmode=disable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_a_through_the_forwarder() {
    let dir = tempfile::tempdir().unwrap();
    let key = k256::ecdsa::SigningKey::from_slice(&[0x31; 32]).unwrap();
    let signer = format!("0x{}", hex::encode(address_of(key.verifying_key())));
    let c = Cluster::start(ClusterOptions {
        profile: profile(dir.path(), &signer),
        ..Default::default()
    })
    .await
    .unwrap();

    // Any driver, plaintext to localhost: tokio-postgres without TLS, and psql.
    let plain = forwarder(&c, |_| {}).await;
    let dsn = local_dsn(plain, "teesql_readwrite", &c.readwrite_secret);
    let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT current_user, $1::text", &[&"mode A"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "teesql_readwrite");
    assert_eq!(row.get::<_, String>(1), "mode A");
    let o = psql(&dsn, &["-c", "SELECT 40 + 2"]).await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "42",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Cancel through the forwarder and the sidecar.
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeper.await.unwrap().unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");

    // EXPECTED_MRTD: the right one passes, another is refused with the reason.
    let mrtd = c.agent.agent.mrtd_hex();
    let pinned = forwarder(&c, |f| f.expected_mrtds = vec![mrtd.to_uppercase()]).await;
    let o = psql(
        &local_dsn(pinned, "teesql_read", &c.read_secret),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let wrong = forwarder(&c, |f| f.expected_mrtds = vec!["ab".repeat(48)]).await;
    let o = psql(
        &local_dsn(wrong, "teesql_read", &c.read_secret),
        &["-c", "SELECT 1"],
    )
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("failed attestation") && err.contains("mrtd_not_expected"),
        "{err}"
    );

    // A signed leader manifest naming this server allows; naming another instance refuses.
    let manifest = |instance: &str| {
        let mut m = Manifest::parse(&format!(
            "v=1;cluster=0x{};leader_instance={instance};leader_url=https://leader.example:5433;epoch=7;valid_until={};sig=0x{}",
            c.agent.agent.app_id_hex(),
            teesql_verifier::Clock::System.now() + 3600,
            "00".repeat(65)
        ))
        .unwrap();
        m.signature = sign(&key, &m).unwrap();
        m.to_txt()
    };
    let good = forwarder(&c, |f| {
        f.manifest_txt = Some(manifest(&c.agent.agent.instance_id_hex()));
        f.manifest_signers = vec![signer.clone()];
    })
    .await;
    let o = psql(
        &local_dsn(good, "teesql_read", &c.read_secret),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let other = forwarder(&c, |f| f.manifest_txt = Some(manifest(&"11".repeat(20)))).await;
    let o = psql(
        &local_dsn(other, "teesql_read", &c.read_secret),
        &["-c", "SELECT 1"],
    )
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("leader_instance_mismatch"), "{err}");

    // A wrong secret through the forwarder is still the sidecar's generic refusal.
    let o = psql(
        &local_dsn(plain, "teesql_read", &"00".repeat(32)),
        &["-c", "SELECT 1"],
    )
    .await;
    assert!(String::from_utf8_lossy(&o.stderr).contains("authentication_failed"));
}

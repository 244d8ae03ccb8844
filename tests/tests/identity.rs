//! What an app id proves under dstack 0.6, end to end: a CVM without a KMS measures the
//! app id its operator chooses (dstack commit c8ed2a21), so neither the sidecar (tenants
//! mapped by app id) nor `forward --expected-app-id` may take it as an identity, while the
//! same app id under a KMS whose root the policy pins, and dstack 0.5's derivation (the
//! compose hash's first 20 bytes), still are. Real Postgres, real TLS, real clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use teesql_devattest::{AgentConfig, DstackVersion, KeyProviderKind};
use teesql_tests::cluster::{Cluster, ClusterOptions, dev_profile};
use teesql_tests::tenants::{SEED, app, app_with};

const CHOSEN: [u8; 20] = [0x5a; 20];

/// A KMS-less dstack 0.6 CVM whose operator chose the app id `CHOSEN`.
fn kms_less(c: &mut AgentConfig) {
    c.dstack = DstackVersion::V06;
    c.key_provider = KeyProviderKind::None;
    c.app_id = Some(CHOSEN);
}

/// A dstack 0.6 CVM whose KMS (the development KMS of the seed) issued it app id `CHOSEN`.
fn under_kms(c: &mut AgentConfig) {
    c.dstack = DstackVersion::V06;
    c.app_id = Some(CHOSEN);
}

/// A profile over the development one with `data` merged over its data.
fn profile(dir: &Path, data: Value) -> PathBuf {
    dev_profile(&dir.join("profile"), &data).unwrap()
}

fn decision_codes(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .flat_map(|l| l["reasons"].as_array().cloned().unwrap_or_default())
        .map(|r| r["code"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_mapped_by_app_id_admits_only_an_attested_app_id() {
    let dir = tempfile::tempdir().unwrap();
    let chosen = app_with("kms-less", dir.path(), kms_less).await.unwrap();
    let issued = app_with("under-kms", dir.path(), under_kms).await.unwrap();
    let derived = app("derived", dir.path()).await.unwrap();
    assert_eq!(chosen.agent.app_id_hex(), issued.agent.app_id_hex());

    let secret = hex::encode([0x6b; 32]);
    let secret_file = dir.path().join("globex.secret");
    std::fs::write(&secret_file, &secret).unwrap();
    let log = dir.path().join("decisions.jsonl");
    let data = json!({"teesql": {
        "tenants": {"globex": {"role": "tenant_globex", "privileges": "readwrite",
                               "app_ids": [hex::encode(CHOSEN), derived.agent.app_id_hex()]}},
        "kms_roots": [issued.agent.kms_root_hex()],
    }});
    let cluster = Cluster::start(ClusterOptions {
        seed: SEED,
        profile: profile(dir.path(), data).display().to_string(),
        decision_log: log.display().to_string(),
        sidecar_toml: format!(
            "[[auth.roles]]\nname = \"tenant_globex\"\nprivileges = \"readwrite\"\ngranted = true\nsecret_file = {:?}\n",
            secret_file.display().to_string()
        ),
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let connect = |a: &teesql_tests::tenants::App| {
        let tls = teesql_tests::clients::tls_config(
            &cluster.agent.app_ca_path(),
            Some((&a.cert, &a.key)),
        )
        .unwrap();
        let dsn = cluster.dsn("teesql_app", &secret, "postgres", "require");
        async move { teesql_tests::clients::connect(&dsn, tls).await }
    };

    // The operator's choice of app id maps no tenant: refused, and the log says why.
    let e = connect(&chosen).await.expect_err("refused");
    let db = e.as_db_error().expect("a Postgres error");
    assert_eq!(
        (db.code().code(), db.message()),
        ("28000", "authentication_failed")
    );
    let mut codes = Vec::new();
    for _ in 0..100 {
        codes = decision_codes(&log);
        if !codes.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(codes, ["app_id_not_attested"]);

    // The same app id issued by the pinned KMS, and the derived one, are the tenant.
    for (name, a) in [("under the pinned KMS", &issued), ("derived", &derived)] {
        let c = connect(a)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?} {:?}", decision_codes(&log)));
        let row = c.query_one("SELECT teesql.tenant()", &[]).await.unwrap();
        assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("globex"));
    }
}

/// `forward --expected-app-id` judging a database CVM: refused when the server's app id is
/// its operator's choice, accepted when a KMS the verifier pins issued it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_expecting_an_app_id_refuses_a_chosen_one() {
    for (name, agent, admitted) in [
        ("KMS-less", kms_less as fn(&mut AgentConfig), false),
        ("under the pinned KMS", under_kms, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = AgentConfig::new(SEED);
        agent(&mut config);
        let kms_root = teesql_devattest::DevAgent::new(config.clone())
            .unwrap()
            .kms_root_hex();
        let cluster = Cluster::start(ClusterOptions {
            seed: SEED,
            agent: Some(config),
            profile: profile(dir.path(), json!({"teesql": {"kms_roots": [kms_root]}}))
                .display()
                .to_string(),
            ..ClusterOptions::default()
        })
        .await
        .unwrap();
        let addr = cluster
            .forward(teesql_sidecar::forward::ForwardSettings {
                expected_compose_hashes: vec![],
                expected_app_ids: vec![hex::encode(CHOSEN)],
                ..cluster.forward_settings()
            })
            .await
            .unwrap();
        let out = teesql_tests::clients::psql(
            &format!(
                "postgresql://teesql_read:{}@{addr}/postgres?sslmode=disable",
                cluster.read_secret
            ),
            &["-c", "SELECT 1"],
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if admitted {
            assert!(out.status.success(), "{name}: {stderr}");
        } else {
            assert!(!out.status.success(), "{name}: admitted");
            assert!(
                stderr.contains("app_id_not_attested") && stderr.contains("compose hash"),
                "{name}: {stderr}"
            );
        }
    }
}

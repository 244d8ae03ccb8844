//! An application on AMD SEV-SNP (dstack 0.6, attestation kind 3) connecting to the
//! sidecar with an RA-TLS client certificate: its report is signed by a development AMD
//! chain (ARK → ASK → VCEK, RSASSA-PSS and ECDSA P-384 for real), which the verifier
//! trusts only as `snp.root = "dev"`. A profile that pins its launch measurement admits
//! it; the default (development) profile, which pins no SEV-SNP measurement, refuses it;
//! and so does the pinning profile once AMD's CRL (from a development KDS) lists the ASK.
//! Real Postgres, real TLS, tokio-postgres, the verifier judging over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::{Value, json};
use teesql_devattest::DstackVersion;
use teesql_tests::cluster::{Cluster, ClusterOptions, dev_profile};
use teesql_tests::tenants::{SEED, app_with};
use teesql_verifier::service::config::ServeSettings;
use teesql_verifier::snp::Product;

/// Every decision line of the log with its claims about the client's evidence.
async fn decisions(log: &Path) -> Vec<Value> {
    for _ in 0..100 {
        let lines: Vec<Value> = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if !lines.is_empty() {
            return lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_development_snp_client_is_admitted_only_where_its_measurement_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let client = app_with("snp-client", dir.path(), |c| {
        c.snp = Some(Product::Milan);
        c.dstack = DstackVersion::V06;
    })
    .await
    .unwrap();
    let ark = dir.path().join("snp-ark.der");
    std::fs::write(&ark, client.agent.snp_ark_der().unwrap()).unwrap();
    let kds = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kds_url = format!("http://{}", kds.local_addr().unwrap());
    let kds_task = tokio::spawn(
        axum::serve(kds, client.agent.snp_kds_router(Vec::new()).unwrap()).into_future(),
    );
    let measurement = client.agent.snp_measurement_hex();

    // A KDS whose CRL revokes the chain's ASK (serial 0x10001).
    let revoking = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let revoking_url = format!("http://{}", revoking.local_addr().unwrap());
    let revoking_task = tokio::spawn(
        axum::serve(
            revoking,
            client.agent.snp_kds_router(vec![0x10001]).unwrap(),
        )
        .into_future(),
    );
    let pinned = json!({"teesql": {"pins": {"snp_measurement": [measurement]}}});

    for (name, data, kds, refused_with) in [
        ("pinned", pinned.clone(), &kds_url, None),
        (
            "default",
            json!({"teesql": {}}),
            &kds_url,
            Some("snp_measurement_not_pinned"),
        ),
        ("revoked", pinned, &revoking_url, Some("snp_revoked")),
    ] {
        let admitted = refused_with.is_none();
        let log = dir.path().join(format!("{name}-decisions.jsonl"));
        let cluster = Cluster::start(ClusterOptions {
            seed: SEED,
            profile: dev_profile(&dir.path().join(name), &data)
                .unwrap()
                .display()
                .to_string(),
            decision_log: log.display().to_string(),
            verifier_settings: ServeSettings {
                snp_dev_ark: Some(ark.clone()),
                kds_url: Some(kds.clone()),
                ..ServeSettings::default()
            },
            ..ClusterOptions::default()
        })
        .await
        .unwrap();
        let tls = teesql_tests::clients::tls_config(
            &cluster.agent.app_ca_path(),
            Some((&client.cert, &client.key)),
        )
        .unwrap();
        let dsn = cluster.dsn(
            "teesql_readwrite",
            &cluster.readwrite_secret,
            "postgres",
            "require",
        );
        let result = teesql_tests::clients::connect(&dsn, tls).await;
        let lines = decisions(&log).await;
        let client_line = lines
            .iter()
            .find(|l| l["peer"]["evidence"] != "none")
            .unwrap_or_else(|| panic!("{name}: no decision on the SNP client: {lines:?}"));
        if admitted {
            let c = result.unwrap_or_else(|e| panic!("{name}: {e:?} {lines:?}"));
            let row = c.query_one("SELECT 6 * 7", &[]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 42);
            assert_eq!(client_line["allow"], true, "{client_line}");
        } else {
            let e = result.expect_err("refused");
            let db = e.as_db_error().expect("a Postgres error");
            assert_eq!(
                (db.code().code(), db.message()),
                ("28000", "authentication_failed")
            );
            let codes: Vec<&str> = client_line["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| r["code"].as_str())
                .collect();
            assert_eq!(codes, [refused_with.unwrap()], "{client_line}");
        }
    }
    kds_task.abort();
    revoking_task.abort();
}

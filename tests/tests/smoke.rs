#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use teesql_tests::cluster::{Cluster, ClusterOptions};
use teesql_tests::postgres::TempPostgres;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_mode_d_smoke() {
    let c = Cluster::start(ClusterOptions::default()).await.unwrap();
    let dsn = c.dsn(
        "teesql_readwrite",
        &c.readwrite_secret,
        "postgres",
        "require",
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(TempPostgres::psql_path())
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                &dsn,
                "-c",
                "SELECT current_user",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "teesql_readwrite"
    );
}

//! The cost of tenant roles: connections per second through the sidecar, each a new
//! mutual RA-TLS connection, SCRAM login, the verifier's decision, one `SELECT 1`, close.
//!
//! - baseline: a cluster without tenant roles (no grant, no identity recorded),
//!   `teesql_readwrite`;
//! - a cluster with tenant roles, `teesql_readwrite` (the session's identity recorded);
//! - the same cluster, `teesql_app` (the decision awaited before the password exchange,
//!   the granted role chosen, the identity recorded).
//!
//! All three measured in one run, interleaved in rounds (these machines are shared and
//! noisy; the ratios hold, absolute rates do not).
//!
//! Run: `cargo bench -p teesql-tests --bench tenants`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use teesql_tests::cluster::{Cluster, ClusterOptions};
use teesql_tests::tenants::{App, SEED, setup};

const ROUNDS: usize = 4;
const PER_ROUND: usize = 40;

async fn connections(cluster: &Cluster, app: &App, user: &str, secret: &str, n: usize) -> Duration {
    let tls = teesql_tests::clients::tls_config(
        &cluster.agent.app_ca_path(),
        Some((&app.cert, &app.key)),
    )
    .unwrap();
    let dsn = cluster.dsn(user, secret, "postgres", "require");
    let started = Instant::now();
    for _ in 0..n {
        let c = teesql_tests::clients::connect(&dsn, tls.clone())
            .await
            .unwrap();
        c.simple_query("SELECT 1").await.unwrap();
    }
    started.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tenants = setup(false, false).await.unwrap();
        let plain = Cluster::start(ClusterOptions {
            seed: SEED,
            ..ClusterOptions::default()
        })
        .await
        .unwrap();
        let app = &tenants.acme;
        let mut totals = [Duration::ZERO; 3];
        for _ in 0..ROUNDS {
            totals[0] += connections(
                &plain,
                app,
                "teesql_readwrite",
                &plain.readwrite_secret,
                PER_ROUND,
            )
            .await;
            // A tenant's application gets only its tenant's role: the cluster role is
            // measured with an application no tenant maps.
            totals[1] += connections(
                &tenants.cluster,
                &tenants.stranger,
                "teesql_readwrite",
                &tenants.cluster.readwrite_secret,
                PER_ROUND,
            )
            .await;
            totals[2] += connections(
                &tenants.cluster,
                app,
                "teesql_app",
                &tenants.acme_secret,
                PER_ROUND,
            )
            .await;
        }
        let n = (ROUNDS * PER_ROUND) as f64;
        let rate = |d: Duration| n / d.as_secs_f64();
        println!(
            "{} connections each (connect, SELECT 1, close), {ROUNDS} interleaved rounds\n",
            ROUNDS * PER_ROUND
        );
        for (name, d) in [
            ("without tenant roles (teesql_readwrite)", totals[0]),
            (
                "tenant roles on, teesql_readwrite (identity recorded)",
                totals[1],
            ),
            ("tenant roles on, teesql_app -> tenant_acme", totals[2]),
        ] {
            println!(
                "{name:<56} {:>7.1} connections/s  {:>6.2} ms each  {:.2}x baseline rate",
                rate(d),
                d.as_secs_f64() * 1e3 / n,
                rate(d) / rate(totals[0])
            );
        }
    });
}

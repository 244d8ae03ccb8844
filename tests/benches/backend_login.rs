//! The sidecar's own login to Postgres (SCRAM-SHA-256, over TCP on loopback), against the
//! same login made by tokio-postgres (a fresh PBKDF2 each time, as every client library
//! pays it) and against a login that needs no authentication at all (the floor: TCP,
//! startup, the backend's own start-up). Measured in one run; ratios hold, absolute times
//! do not.
//!
//! The sidecar keeps the SCRAM keys of its backend password per salt and iteration count
//! (`auth::scram_client::KeyCache`), so after the first login of a role its SCRAM costs
//! two HMACs and a hash instead of 4096 PBKDF2 rounds.
//!
//! Run: `cargo bench -p teesql-tests --bench backend_login`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use teesql_sidecar::auth::Secret;
use teesql_sidecar::config::{BackendAddr, BackendMethod};
use teesql_tests::postgres::{PgOptions, TempPostgres};

const LOGINS: usize = 300;
const PASSWORD: &str = "bench-password-not-a-secret";

fn report(name: &str, mut times: Vec<Duration>, baseline: Option<Duration>) -> Duration {
    times.sort();
    let p50 = times[times.len() / 2];
    let p90 = times[times.len() * 9 / 10];
    let ratio = baseline
        .map(|b| format!("{:.2}x", p50.as_secs_f64() / b.as_secs_f64()))
        .unwrap_or_else(|| "baseline".into());
    println!(
        "{name:<44} p50 {:>7.0} µs  p90 {:>7.0} µs  {ratio}",
        p50.as_secs_f64() * 1e6,
        p90.as_secs_f64() * 1e6
    );
    p50
}

async fn time_logins<F, Fut>(mut login: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..LOGINS / 10 {
        login().await;
    }
    let mut times = Vec::with_capacity(LOGINS);
    for _ in 0..LOGINS {
        let t = Instant::now();
        login().await;
        times.push(t.elapsed());
    }
    times
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let pg = TempPostgres::start(PgOptions {
        hba: vec![
            "host all trusted 127.0.0.1/32 trust".into(),
            "host all all 127.0.0.1/32 scram-sha-256".into(),
            "local all all trust".into(),
        ],
        superuser_password: Some(PASSWORD.into()),
        ..PgOptions::default()
    })
    .unwrap();
    pg.psql("postgres", "postgres", "CREATE ROLE trusted LOGIN")
        .unwrap();
    let addr = BackendAddr::Tcp("127.0.0.1".into(), pg.port);
    let secret = Secret::from_text(PASSWORD);
    println!("{LOGINS} logins each, Postgres on 127.0.0.1:{}", pg.port);

    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres password={PASSWORD} dbname=postgres",
        pg.port
    );
    let baseline = report(
        "tokio-postgres, SCRAM (PBKDF2 every login)",
        time_logins(|| async {
            let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .unwrap();
            drop(client);
            let _ = conn.await;
        })
        .await,
        None,
    );
    let sidecar_login = |method, secret: Option<&Secret>, user: &'static str| {
        let (addr, secret) = (addr.clone(), secret.cloned());
        move || {
            let (addr, secret) = (addr.clone(), secret.clone());
            async move {
                let logged_in = teesql_sidecar::postgres::login::login(
                    &addr,
                    method,
                    secret.as_ref(),
                    &[("user", user), ("database", "postgres")],
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
                drop(logged_in);
            }
        }
    };
    report(
        "sidecar backend::login, SCRAM (cached keys)",
        time_logins(sidecar_login(
            BackendMethod::ScramSha256,
            Some(&secret),
            "postgres",
        ))
        .await,
        Some(baseline),
    );
    report(
        "sidecar backend::login, trust (no auth)",
        time_logins(sidecar_login(BackendMethod::Trust, None, "trusted")).await,
        Some(baseline),
    );
}

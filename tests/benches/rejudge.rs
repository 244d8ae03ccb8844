//! Continuous attestation under load: 1,000 open sessions through the sidecar, then a
//! policy reload that makes the sidecar re-judge every one of them (through the
//! verifier's appraisal cache, eight at a time). Measured in one run:
//!
//! - how long until every session is re-judged;
//! - the CPU this process (clients, sidecar, verifier; not Postgres) spends, per second,
//!   while it happens and while nothing is re-judged;
//! - `SELECT 1` throughput of four other sessions while it happens and while it does not
//!   (the baseline), in alternating windows.
//!
//! These machines are shared and noisy: the ratios hold, absolute figures do not.
//! Run: `cargo bench -p teesql-tests --bench rejudge` (needs about 1,100 file
//! descriptors per 1,000 sessions on each side, and Postgres' max_connections is raised).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use teesql_tests::cluster::{Cluster, ClusterOptions, dev_profile};
use teesql_tests::postgres::PgOptions;
use teesql_tests::tenants::{SEED, app_with};

const SESSIONS: usize = 1000;
const WORKERS: usize = 4;
const ROUNDS: usize = 3;
const BASELINE: Duration = Duration::from_secs(2);

/// CPU seconds this process has used (user + system), from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of the whole line (utime, stime), in clock ticks (100 Hz).
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let profile = dev_profile(
            &dir.path().join("profile"),
            &serde_json::json!({"teesql": {"report_max_age_secs": 300}}),
        )
        .unwrap();
        let data = profile.join("data.json");
        let c = Cluster::start(ClusterOptions {
            seed: SEED,
            profile: profile.display().to_string(),
            pg: PgOptions {
                settings: vec![("max_connections".into(), format!("{}", SESSIONS + 100))],
                ..PgOptions::default()
            },
            sidecar_toml: format!(
                "[limits]\nmax_connections = {}\nhandshakes_per_address = 1024\n",
                SESSIONS + 100
            ),
            ..ClusterOptions::default()
        })
        .await
        .unwrap();
        let app = app_with("bench", dir.path(), |_| {}).await.unwrap();
        let tls = teesql_tests::clients::tls_config(
            &c.agent.app_ca_path(),
            Some((&app.cert, &app.key)),
        )
        .unwrap();
        let dsn = c.dsn("teesql_read", &c.read_secret, "postgres", "require");

        let opened = Instant::now();
        let mut clients = Vec::with_capacity(SESSIONS + WORKERS);
        for _ in 0..(SESSIONS + WORKERS) / 50 {
            let batch = (0..50).map(|_| teesql_tests::clients::connect(&dsn, tls.clone()));
            for c in futures_util::future::join_all(batch).await {
                clients.push(Arc::new(c.unwrap()));
            }
        }
        let live = c.sidecar.sessions.len();
        println!(
            "opened {live} sessions in {:.1} s",
            opened.elapsed().as_secs_f64()
        );
        assert!(live >= SESSIONS, "{live}");

        // Four sessions run SELECT 1 in a loop throughout.
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for client in clients.iter().take(WORKERS) {
            let (client, count, stop) = (client.clone(), count.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    client.simple_query("SELECT 1").await.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        let sessions = &c.sidecar.sessions;
        let (mut base_q, mut base_t, mut base_cpu) = (0u64, 0f64, 0f64);
        let (mut re_q, mut re_t, mut re_cpu) = (0u64, 0f64, 0f64);
        let mut round_ms = Vec::new();
        for round in 0..ROUNDS {
            // Baseline window: nothing re-judged.
            let (q0, t0, cpu0) = (count.load(Ordering::Relaxed), Instant::now(), cpu_secs());
            tokio::time::sleep(BASELINE).await;
            base_q += count.load(Ordering::Relaxed) - q0;
            base_t += t0.elapsed().as_secs_f64();
            base_cpu += cpu_secs() - cpu0;

            // A policy reload: every session is judged again.
            let done = sessions.rounds_done.load(Ordering::Relaxed);
            std::fs::write(
                &data,
                format!(r#"{{"teesql": {{"report_max_age_secs": {}}}}}"#, 301 + round),
            )
            .unwrap();
            let (q0, t0, cpu0) = (count.load(Ordering::Relaxed), Instant::now(), cpu_secs());
            let (_, changed) = c.verifier.reload().await.unwrap();
            assert!(changed);
            while sessions.rounds_done.load(Ordering::Relaxed) == done {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            re_q += count.load(Ordering::Relaxed) - q0;
            re_t += t0.elapsed().as_secs_f64();
            re_cpu += cpu_secs() - cpu0;
            round_ms.push(sessions.last_round_micros.load(Ordering::Relaxed) as f64 / 1000.0);
            assert_eq!(c.sidecar.sessions.len(), live, "a re-judging ended sessions");
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        let median = {
            let mut v = round_ms.clone();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "re-judging {live} sessions: {round_ms:.0?} ms per reload (median {median:.0} ms, {:.0} sessions/s)",
            live as f64 / (median / 1000.0)
        );
        println!(
            "SELECT 1 by {WORKERS} other sessions: baseline {:.0}/s, during re-judging {:.0}/s ({:.0}%)",
            base_q as f64 / base_t,
            re_q as f64 / re_t,
            100.0 * (re_q as f64 / re_t) / (base_q as f64 / base_t)
        );
        println!(
            "CPU of this process (clients, sidecar, verifier): baseline {:.2} s/s, during re-judging {:.2} s/s; extra {:.2} CPU-s per reload",
            base_cpu / base_t,
            re_cpu / re_t,
            (re_cpu / re_t - base_cpu / base_t) * re_t / ROUNDS as f64
        );
    });
}

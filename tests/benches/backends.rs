//! One decision through each quote backend, in process: `dcap` (dcap-qvl, collateral
//! already cached, platform cache off), `ita` (a round trip to the mock Intel Trust
//! Authority on loopback, which itself appraises with dcap-qvl and signs a PS384 token,
//! then the token's verification here), and `simulator` (decode and policy only). DCAP is
//! the baseline, measured in the same run; ratios hold across machines, absolute times do
//! not.
//!
//! Run: `cargo bench -p teesql-tests --bench backends`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use teesql_tests::agent::TestAgent;
use teesql_tests::cluster::repo_root;
use teesql_tests::ita::MockIta;
use teesql_verifier::backend::dcap::TrustRoot;
use teesql_verifier::backend::{Backend, BackendConfig, BackendKind};
use teesql_verifier::collateral::CollateralConfig;
use teesql_verifier::evidence::{self, Evidence};
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet};
use teesql_verifier::{Clock, DecisionRequest};

const ITERATIONS: usize = 400;

/// Time `ITERATIONS` decisions (after a tenth as many to warm up); every one must allow.
async fn measure(name: &str, backend: &Backend, policies: &PolicySet, ev: &Evidence) -> Duration {
    let once = || async {
        let d = backend
            .appraiser
            .decide(
                policies,
                DecisionRequest::new(ev, "quote", Clock::System.now()),
            )
            .await
            .unwrap();
        assert!(d.allow, "{name}: {:?}", d.reasons);
    };
    for _ in 0..ITERATIONS / 10 {
        once().await;
    }
    let mut samples = Vec::with_capacity(ITERATIONS);
    for _ in 0..ITERATIONS {
        let t = Instant::now();
        once().await;
        samples.push(t.elapsed());
    }
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    let median = at(0.5);
    println!(
        "{name:<12} median {:>8.1} µs   p99 {:>8.1} µs   {:>7.0} decisions/s",
        median.as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        1.0 / median.as_secs_f64()
    );
    median
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start([0x42; 32], dir.path()).await.unwrap();
    let mock = MockIta::start(&agent).await.unwrap();
    let dev = PolicySet::load(&[repo_root().join("policies/dev")], DEFAULT_EVAL_LIMIT).unwrap();
    let quote = agent.agent.quote([7; 64]).await.unwrap().0;
    let quote = Evidence::from_quote(evidence::decode_quote_bytes(&quote).unwrap());
    let config = |chain: &[BackendKind]| {
        BackendConfig {
            chain: chain.to_vec(),
            ita: Some(mock.config(&mock.api_key).unwrap()),
            // The same quote every time: with the platform cache DCAP would measure its
            // hit, not a verification (the `platform` bench compares the two).
            platform_cache_bytes: 0,
            ..BackendConfig::dcap(
                TrustRoot::development_from_file(&agent.root_der_path()).unwrap(),
                CollateralConfig {
                    pccs_url: Some(agent.url.clone()),
                    ..CollateralConfig::default()
                },
            )
        }
        .build()
        .unwrap()
    };
    let simulated = evidence::decode_attestation_text(
        &std::fs::read(repo_root().join("testdata/dstack/simulator-attestation.bin")).unwrap(),
    )
    .unwrap();

    println!(
        "one decision (appraisal + claims + dev policy, no decision cache), {ITERATIONS} iterations each\n"
    );
    let dcap = measure("dcap", &config(&[BackendKind::Dcap]), &dev, &quote).await;
    let ita = measure("ita (mock)", &config(&[BackendKind::Ita]), &dev, &quote).await;
    let sim = measure(
        "simulator",
        &config(&[BackendKind::Simulator]),
        &dev,
        &simulated,
    )
    .await;
    let requests = mock.attest_requests();
    println!(
        "\nratio to dcap (baseline, same run): ita {:.2}x, simulator {:.2}x; the mock served {requests} attestations",
        ita.as_secs_f64() / dcap.as_secs_f64(),
        sim.as_secs_f64() / dcap.as_secs_f64(),
    );
    assert!(
        requests as usize >= ITERATIONS,
        "ITA decisions did not reach the mock"
    );
}

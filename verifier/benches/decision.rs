//! One decision on a recorded quote, cold and warm, with the time spent in dcap-qvl and in
//! policy evaluation reported separately.
//!
//! Run: `cargo bench -p teesql-verifier --bench decision`. Prints medians and p99 of each
//! stage, measured in the same run; absolute times vary with the machine, ratios hold.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use teesql_verifier::backend::BackendConfig;
use teesql_verifier::backend::dcap::DcapBackend;
use teesql_verifier::claims::AppraisedEvidence;
use teesql_verifier::collateral::Collateral;
use teesql_verifier::decide;
use teesql_verifier::evidence::{self, Evidence};
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet};

const NOW: u64 = 1_751_000_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn measure(iterations: usize, mut f: impl FnMut()) -> Self {
        for _ in 0..iterations / 10 + 1 {
            f(); // warm-up
        }
        let samples = (0..iterations)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        Self { samples }
    }

    fn pct(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        s[((s.len() - 1) as f64 * p).round() as usize]
    }

    fn line(&self, name: &str) -> Duration {
        let med = self.pct(0.5);
        println!(
            "{name:<46} median {:>9.1} µs   p99 {:>9.1} µs   {:>9.0} /s",
            med.as_secs_f64() * 1e6,
            self.pct(0.99).as_secs_f64() * 1e6,
            1.0 / med.as_secs_f64()
        );
        med
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let quote_bytes = std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap();
    let collateral_path = root().join("testdata/dcap/tdx_quote_collateral.json");
    let policies = PolicySet::load(&[root().join("policies/teesql")], DEFAULT_EVAL_LIMIT).unwrap();
    // The platform cache off: every decision here verifies the quote in full (the
    // `platform` bench measures the cache).
    let config = BackendConfig {
        platform_cache_bytes: 0,
        ..BackendConfig::recorded(Some(collateral_path.clone()), NOW)
    };
    let n = 2000;
    println!("one decision on testdata/dcap/tdx_quote (TDX v4, 5006 bytes), {n} iterations each\n");

    // Cold: nothing cached — read and parse the collateral, decode the quote, verify,
    // build claims, evaluate the policy.
    let cold = Stats::measure(n / 4, || {
        rt.block_on(async {
            let appraiser = config.build().unwrap().appraiser;
            let ev = Evidence::from_quote(evidence::decode_quote_bytes(&quote_bytes).unwrap());
            let claims = appraiser
                .appraise(&ev, NOW, None)
                .await
                .into_claims("quote", NOW, None);
            assert!(decide(&policies, &claims).unwrap().allow);
        })
    });

    // Warm: the collateral is in memory (as after the first request for this FMSPC).
    let built = config.build().unwrap();
    let appraiser = built.appraiser.clone();
    // The DCAP backend itself, for the phases measured inside it.
    let backend = Arc::new(DcapBackend::new(
        config.trust_root.clone(),
        built.collateral.clone(),
    ));
    let warm = Stats::measure(n, || {
        rt.block_on(async {
            let ev = Evidence::from_quote(evidence::decode_quote_bytes(&quote_bytes).unwrap());
            let claims = appraiser
                .appraise(&ev, NOW, None)
                .await
                .into_claims("quote", NOW, None);
            assert!(decide(&policies, &claims).unwrap().allow);
        })
    });

    // Stages of the warm decision.
    let collateral = Collateral::from_file(&collateral_path).unwrap();
    let quote = evidence::decode_quote_bytes(&quote_bytes).unwrap();
    let decode = Stats::measure(n, || {
        evidence::decode_quote_bytes(&quote_bytes).unwrap();
    });
    let dcap = Stats::measure(n, || {
        assert!(backend.verify_with(&quote, &collateral, NOW).verified);
    });
    let facts = backend.verify_with(&quote, &collateral, NOW);
    let ev = Evidence::from_quote(quote.clone());
    let claims = AppraisedEvidence::build(&ev, Some(&facts), None).into_claims("quote", NOW, None);
    let build = Stats::measure(n, || {
        AppraisedEvidence::build(&ev, Some(&facts), None).into_claims("quote", NOW, None);
    });
    let input = serde_json::to_value(&claims).unwrap();
    let policy = Stats::measure(n, || {
        assert!(policies.evaluate("quote", &input).unwrap().allow);
    });
    let collateral_parse = Stats::measure(n / 4, || {
        Collateral::from_file(&collateral_path).unwrap();
    });

    let cold_med = cold.line("cold decision (collateral read + verify + policy)");
    let warm_med = warm.line("warm decision (collateral cached)");
    println!();
    collateral_parse.line("  collateral read + parse (cold only)");
    decode.line("  quote decode");
    let dcap_med = dcap.line("  dcap-qvl verify (ring)");
    build.line("  claims build");
    let policy_med = policy.line("  policy evaluation (regorus, teesql.quote)");
    println!();
    println!(
        "warm/cold speed-up {:.2}x; of the warm decision, dcap-qvl is {:.0}% and policy {:.0}%",
        cold_med.as_secs_f64() / warm_med.as_secs_f64(),
        100.0 * dcap_med.as_secs_f64() / warm_med.as_secs_f64(),
        100.0 * policy_med.as_secs_f64() / warm_med.as_secs_f64(),
    );
}

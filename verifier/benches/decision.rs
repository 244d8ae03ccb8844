//! One decision on a recorded quote, cold and warm, with the time spent in dcap-qvl and in
//! policy evaluation reported separately; then one on dstack's recorded SEV-SNP report
//! (chain ARK → ASK → VCEK and report signature, offline), against the TDX one.
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

    sev_snp(&rt, n, warm_med, dcap_med);
}

/// dstack's SEV-SNP fixture, under a profile that pins its measurement and takes its
/// OutOfDate TCB: decode, appraisal (three RSA-PSS and one ECDSA P-384 verification, no
/// cache: there is no collateral), the whole decision; ratios against the TDX numbers of
/// the same run.
fn sev_snp(rt: &tokio::runtime::Runtime, n: usize, tdx_warm: Duration, tdx_dcap: Duration) {
    const SNP_NOW: u64 = 1_781_658_304;
    let text = std::fs::read(root().join("testdata/dstack/sev-snp-attestation.json")).unwrap();
    let ev = evidence::decode_attestation_text(&text).unwrap();
    let snp = ev.snp.clone().unwrap();
    let profile = tempfile::tempdir().unwrap();
    std::fs::write(
        profile.path().join("data.json"),
        serde_json::json!({"teesql": {
            "pins": {"snp_measurement": [snp.report.measurement().iter().map(|b| format!("{b:02x}")).collect::<String>()]},
            "accepted_tcb_statuses": ["UpToDate", "OutOfDate"],
        }})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        profile.path().join("profile.toml"),
        format!(
            "extends = [{:?}]\n",
            root().join("policies/teesql").display().to_string()
        ),
    )
    .unwrap();
    let policies = PolicySet::load(&[profile.path().to_path_buf()], DEFAULT_EVAL_LIMIT).unwrap();
    let appraiser = BackendConfig::recorded(None, SNP_NOW)
        .build()
        .unwrap()
        .appraiser;
    let verifier = teesql_verifier::snp::SnpVerifier::default();

    let decision = Stats::measure(n, || {
        rt.block_on(async {
            let ev = evidence::decode_attestation_text(&text).unwrap();
            let claims = appraiser
                .appraise(&ev, SNP_NOW, None)
                .await
                .into_claims("quote", SNP_NOW, None);
            assert!(decide(&policies, &claims).unwrap().allow);
        })
    });
    let decode = Stats::measure(n, || {
        evidence::decode_attestation_text(&text).unwrap();
    });
    let verify = Stats::measure(n, || {
        assert!(verifier.appraise(&snp, SNP_NOW).verified);
    });

    println!(
        "\none decision on testdata/dstack/sev-snp-attestation.json (SEV-SNP, Milan), {n} iterations each\n"
    );
    let decision_med = decision.line("SEV-SNP decision (decode + verify + policy)");
    decode.line("  attestation decode (JSON, hex, SCALE, report)");
    let verify_med = verify.line("  SEV-SNP verify (3 RSA-PSS + ECDSA P-384, ring)");
    println!();
    println!(
        "SEV-SNP/TDX: decision {:.2}x the warm TDX decision; verification {:.2}x dcap-qvl's",
        decision_med.as_secs_f64() / tdx_warm.as_secs_f64(),
        verify_med.as_secs_f64() / tdx_dcap.as_secs_f64(),
    );
}

//! The platform cache against the full DCAP verification, in the same run.
//!
//! 1. The recorded Intel quote (`testdata/dcap/tdx_quote`, a real TDX machine): dcap-qvl's
//!    own `verify`, the baseline; our full verification with the platform cache off (a
//!    platform never seen: the quote's own three signature checks, the collateral's
//!    checked once per collateral set); the same with the platform cache on, as the
//!    verifier runs by default (the never-seen platform's entry is made too; each
//!    verification has a fresh cache, whose first write it also pays); and a verification
//!    from the platform cache (the quote's platform known: one ECDSA check of the quote's
//!    own signature).
//! 2. Fresh quotes from one development platform (each with its own TD fields and report
//!    data, signed for real), through the whole appraisal (collateral lookup, PCK chain
//!    pre-check, verification): platform cache off against on.
//!
//! Run: `cargo bench -p teesql-verifier --bench platform`. Ratios hold across machines,
//! absolute times do not. Goals: known platform ≤ 0.3x the full verification (issue 15);
//! a never-seen platform ≤ 250 µs (issue 29).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use teesql_devattest::pki::{DevPki, DevTdReport};
use teesql_verifier::backend::dcap::{DcapBackend, TrustRoot};
use teesql_verifier::backend::platform::{DEFAULT_PLATFORM_CACHE_BYTES, PlatformCache};
use teesql_verifier::backend::{BackendConfig, QuoteBackend};
use teesql_verifier::collateral::{Collateral, CollateralConfig, CollateralProvider};
use teesql_verifier::evidence::{self, Quote};
use teesql_verifier::measure;

const RECORDED_NOW: u64 = measure::RECORDED_NOW;
const ISSUED: u64 = 1_780_000_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn median(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

fn line(name: &str, (med, p99): (Duration, Duration)) -> Duration {
    println!(
        "{name:<52} median {:>8.1} µs   p99 {:>8.1} µs   {:>7.0} /s",
        med.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        1.0 / med.as_secs_f64()
    );
    med
}

fn time(n: usize, mut f: impl FnMut(usize)) -> (Duration, Duration) {
    for i in 0..n / 10 + 1 {
        f(i); // warm-up
    }
    median(
        (0..n)
            .map(|i| {
                let t = Instant::now();
                f(i);
                t.elapsed()
            })
            .collect(),
    )
}

fn provider(config: &CollateralConfig) -> Arc<CollateralProvider> {
    Arc::new(CollateralProvider::new(config).unwrap())
}

fn main() {
    let n = 2000;
    let offline = CollateralConfig {
        pccs_url: None,
        ..CollateralConfig::default()
    };

    // 1. The recorded Intel quote.
    let bytes = std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap();
    let quote = evidence::decode_quote_bytes(&bytes).unwrap();
    let collateral =
        Collateral::from_file(&root().join("testdata/dcap/tdx_quote_collateral.json")).unwrap();
    // The collateral provider of the never-seen backends with the cache on (below).
    let shared = provider(&offline);
    let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
    let cached =
        DcapBackend::new(TrustRoot::intel(), provider(&offline)).with_platform_cache(cache.clone());
    println!("recorded Intel TDX quote (testdata/dcap/tdx_quote), {n} iterations each\n");
    // The baseline, dcap-qvl's own one-shot verification (its audited ring configuration,
    // which checks every signature of quote and collateral each time), against a platform
    // never seen: a backend of its own for every verification, so that nothing of the
    // platform is known (its TCB standings are kept per backend). Only the collateral set,
    // shared by all, has its signatures checked already.
    let hits_before = collateral.signatures().hits();
    let (never_seen, qvl) =
        measure::never_seen_platform(&quote, &collateral, RECORDED_NOW, n).unwrap();
    let remembered = collateral.signatures().hits() - hits_before;
    let qvl_med = line("dcap-qvl's own verify (baseline)", median(qvl));
    let full_med = line(
        "full verification, platform never seen (cache off)",
        median(never_seen),
    );
    // The same, with the platform cache on, as the verifier runs by default: a platform
    // never seen also gets its cache entry made (its key, and the expiry of every
    // certificate the verification relied on).
    let caches: Vec<Arc<PlatformCache>> = (0..n + n / 10 + 1)
        .map(|_| Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES)))
        .collect();
    let fresh_cached: Vec<DcapBackend> = caches
        .iter()
        .map(|c| {
            DcapBackend::new(TrustRoot::intel(), shared.clone()).with_platform_cache(c.clone())
        })
        .collect();
    let next = std::cell::Cell::new(0);
    let full_cached_med = line(
        "platform never seen, platform cache on",
        time(n, |_| {
            let backend = &fresh_cached[next.get()];
            next.set(next.get() + 1);
            assert!(
                backend
                    .verify_with(&quote, &collateral, RECORDED_NOW)
                    .verified
            )
        }),
    );
    drop(fresh_cached);
    // Each verification made its platform's entry.
    let used = next.get();
    assert!(caches[..used].iter().all(|c| c.len() == 1));
    drop(caches);
    let known_med = line(
        "known platform (platform cache)",
        time(n, |_| {
            assert!(
                cached
                    .verify_with(&quote, &collateral, RECORDED_NOW)
                    .verified
            )
        }),
    );
    let hits = cache.stats.hits.load(Ordering::Relaxed);
    assert!(hits as usize >= n, "the cache was not used: {hits} hits");
    println!(
        "\nnever-seen platform / dcap-qvl's verify: {:.3}x ({:.0} µs; goal ≤ 250 µs); \
         collateral signature checks answered from the record: {:.1} per verification",
        full_med.as_secs_f64() / qvl_med.as_secs_f64(),
        full_med.as_secs_f64() * 1e6,
        remembered as f64 / (n + n / 10 + 1) as f64,
    );
    println!(
        "never-seen platform with the cache on / off: {:.3}x (making its entry, in a fresh cache)",
        full_cached_med.as_secs_f64() / full_med.as_secs_f64()
    );
    println!(
        "known platform / full verification: {:.3}x (goal ≤ 0.3x); {} hits, {} misses\n",
        known_med.as_secs_f64() / full_med.as_secs_f64(),
        hits,
        cache.stats.misses.load(Ordering::Relaxed)
    );

    // 2. Fresh quotes from one development platform, through the whole appraisal.
    let pki = DevPki::from_seed([0x42; 32]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let collateral_file = dir.path().join("collateral.json");
    std::fs::write(
        &collateral_file,
        serde_json::to_vec(&pki.collateral(ISSUED, 30 * 86_400).unwrap()).unwrap(),
    )
    .unwrap();
    let quotes: Vec<Quote> = (0..n + n / 10 + 1)
        .map(|i| {
            let mut td = DevTdReport::default();
            td.report_data[..8].copy_from_slice(&(i as u64).to_le_bytes());
            td.rtmr[3][..8].copy_from_slice(&(i as u64).to_le_bytes());
            evidence::decode_quote_bytes(&pki.quote(&td).unwrap()).unwrap()
        })
        .collect();
    let build = |bytes: u64| {
        let config = BackendConfig {
            platform_cache_bytes: bytes,
            ..BackendConfig::dcap(
                TrustRoot::development("dev", pki.root_der()).unwrap(),
                CollateralConfig {
                    file: Some(collateral_file.clone()),
                    ..offline.clone()
                },
            )
        };
        config.build().unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let now = ISSUED + 60;
    println!(
        "fresh quotes from one development platform, whole appraisal, {n} distinct quotes each\n"
    );
    let mut results = Vec::new();
    for (name, bytes) in [
        ("platform cache off (full verification each)", 0),
        (
            "platform cache on (platform known)",
            DEFAULT_PLATFORM_CACHE_BYTES,
        ),
    ] {
        let built = build(bytes);
        let backend = dcap_of(&built);
        let stats = time(n, |i| {
            let facts = rt.block_on(backend.appraise(&quotes[i % quotes.len()], now));
            assert!(facts.verified, "{:?}", facts.error);
        });
        results.push(line(name, stats));
        if let Some(p) = &built.platforms {
            println!(
                "{:<52} {} hits, {} misses",
                "",
                p.stats.hits.load(Ordering::Relaxed),
                p.stats.misses.load(Ordering::Relaxed)
            );
        }
    }
    println!(
        "\nfresh quote, known platform / full: {:.3}x (goal ≤ 0.3x)",
        results[1].as_secs_f64() / results[0].as_secs_f64()
    );
}

/// The DCAP backend of a built single-backend chain, as a `QuoteBackend`.
fn dcap_of(built: &teesql_verifier::backend::Backend) -> Arc<dyn QuoteBackend> {
    built.appraiser.backend().clone()
}

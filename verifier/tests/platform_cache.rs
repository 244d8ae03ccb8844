//! The platform cache serves a fresh quote from a known platform with one signature check,
//! and never serves a quote whose platform facts differ: another PCK chain, QE report,
//! TCB level, collateral, root or time gets dcap-qvl's full verification. Every result
//! from the cache is compared with what the full verification says of the same quote.
//!
//! Quotes come from the development PKI (signed for real) and from the recorded Intel
//! samples in `testdata/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use teesql_devattest::pki::{DevPki, DevTdReport, PlatformTcb};
use teesql_verifier::backend::dcap::{DcapBackend, TrustRoot};
use teesql_verifier::backend::platform::{DEFAULT_PLATFORM_CACHE_BYTES, PlatformCache};
use teesql_verifier::backend::{QuoteFacts, VerifyErrorCode};
use teesql_verifier::collateral::{Collateral, CollateralConfig, CollateralProvider};
use teesql_verifier::evidence::{self, Quote};

const ISSUED: u64 = 1_780_000_000;
const NOW: u64 = ISSUED + 600;
const DAY: u64 = 86_400;

fn pki(seed: u8) -> DevPki {
    DevPki::from_seed([seed; 32]).unwrap()
}

fn root_of(pki: &DevPki) -> TrustRoot {
    TrustRoot::development("dev root", pki.root_der()).unwrap()
}

fn provider() -> Arc<CollateralProvider> {
    Arc::new(
        CollateralProvider::new(&CollateralConfig {
            pccs_url: None,
            ..CollateralConfig::default()
        })
        .unwrap(),
    )
}

fn backend(root: TrustRoot, cache: &Arc<PlatformCache>) -> DcapBackend {
    DcapBackend::new(root, provider()).with_platform_cache(cache.clone())
}

/// A quote whose TD fields (the part unique to a quote) all derive from `n`.
fn td(n: u8) -> DevTdReport {
    DevTdReport {
        mrtd: [n; 48],
        rtmr: [[n.wrapping_add(1); 48]; 4],
        report_data: [n.wrapping_add(2); 64],
        mr_config_id: [n.wrapping_add(3); 48],
        ..DevTdReport::default()
    }
}

fn quote(pki: &DevPki, n: u8) -> Quote {
    evidence::decode_quote_bytes(&pki.quote(&td(n)).unwrap()).unwrap()
}

fn collateral(pki: &DevPki, issued: u64) -> Collateral {
    Collateral::new(pki.collateral(issued, 30 * DAY).unwrap()).unwrap()
}

/// (hits, misses) so far.
fn counts(cache: &PlatformCache) -> (u64, u64) {
    (
        cache.stats.hits.load(Ordering::Relaxed),
        cache.stats.misses.load(Ordering::Relaxed),
    )
}

/// What a backend without a cache says of the same quote.
fn full(root: TrustRoot, q: &Quote, c: &Collateral, now: u64) -> QuoteFacts {
    DcapBackend::new(root, provider()).verify_with(q, c, now)
}

fn same(a: &QuoteFacts, b: &QuoteFacts) {
    assert_eq!(a.verified, b.verified);
    assert_eq!(a.tcb_status, b.tcb_status);
    assert_eq!(a.advisory_ids, b.advisory_ids);
    assert_eq!(
        a.error.as_ref().map(|e| e.code),
        b.error.as_ref().map(|e| e.code)
    );
}

#[test]
fn a_fresh_quote_from_a_known_platform_is_served_with_one_signature_check() {
    let pki = pki(1);
    let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
    let b = backend(root_of(&pki), &cache);
    let c = collateral(&pki, ISSUED);

    let first = b.verify_with(&quote(&pki, 1), &c, NOW);
    assert!(first.verified, "{:?}", first.error);
    assert_eq!(counts(&cache), (0, 1));
    assert_eq!(cache.len(), 1);

    for n in 2..6 {
        let q = quote(&pki, n);
        let served = b.verify_with(&q, &c, NOW + u64::from(n));
        assert_eq!(counts(&cache), (u64::from(n) - 1, 1), "quote {n}");
        assert!(served.verified);
        same(&served, &full(root_of(&pki), &q, &c, NOW + u64::from(n)));
    }
}

#[test]
fn a_quote_whose_signature_does_not_verify_fails_from_the_cache_too() {
    let pki = pki(2);
    let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
    let b = backend(root_of(&pki), &cache);
    let c = collateral(&pki, ISSUED);
    assert!(b.verify_with(&quote(&pki, 1), &c, NOW).verified);

    // REPORTDATA changed after signing: the platform part is untouched, so this is a
    // cache hit, and the one check the hit gets must catch it.
    let mut raw = pki.quote(&td(7)).unwrap();
    raw[48 + 520] ^= 0x01;
    let forged = evidence::decode_quote_bytes(&raw).unwrap();
    let facts = b.verify_with(&forged, &c, NOW);
    assert_eq!(counts(&cache), (1, 1));
    assert!(!facts.verified);
    assert_eq!(
        facts.error.as_ref().map(|e| e.code),
        Some(VerifyErrorCode::SignatureInvalid)
    );
    same(&facts, &full(root_of(&pki), &forged, &c, NOW));
}

/// Offset of the certification data (QE report first) in a v4 quote: header and TD
/// report, auth data length, signature, attestation key, certification type and size.
const QE_REPORT_AT: usize = 48 + 584 + 4 + 64 + 64 + 2 + 4;

#[test]
fn a_changed_qe_report_or_pck_chain_gets_the_full_verification() {
    let pki = pki(3);
    let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
    let b = backend(root_of(&pki), &cache);
    let c = collateral(&pki, ISSUED);
    assert!(b.verify_with(&quote(&pki, 1), &c, NOW).verified);

    // The QE report (its ISV SVN) altered: no longer what the PCK key signed.
    let mut raw = pki.quote(&td(2)).unwrap();
    raw[QE_REPORT_AT + 258] ^= 0x01;
    let qe = evidence::decode_quote_bytes(&raw).unwrap();
    let facts = b.verify_with(&qe, &c, NOW);
    assert_eq!(
        counts(&cache),
        (0, 2),
        "a changed QE report must not be a hit"
    );
    assert!(!facts.verified);
    same(&facts, &full(root_of(&pki), &qe, &c, NOW));

    // The PCK certificate altered inside the PEM chain (one base64 character of its
    // signature): the quote's signature and QE report are the known platform's.
    let mut raw = pki.quote(&td(3)).unwrap();
    let pem = find(&raw, b"-----END CERTIFICATE-----").expect("PEM chain in the quote");
    let at = pem - 10;
    raw[at] = if raw[at] == b'A' { b'B' } else { b'A' };
    let chain = evidence::decode_quote_bytes(&raw).unwrap();
    let facts = b.verify_with(&chain, &c, NOW);
    assert_eq!(
        counts(&cache),
        (0, 3),
        "a changed PCK chain must not be a hit"
    );
    assert!(!facts.verified);
    same(&facts, &full(root_of(&pki), &chain, &c, NOW));

    // A quote from another platform entirely (another PKI) under this root.
    let other = quote(&self::pki(4), 1);
    let facts = b.verify_with(&other, &c, NOW);
    assert_eq!(counts(&cache), (0, 4));
    assert!(!facts.verified);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn a_changed_tee_tcb_svn_or_td_attributes_is_another_platform_key() {
    let pki = pki(5);
    let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
    let b = backend(root_of(&pki), &cache);
    let c = collateral(&pki, ISSUED);
    assert!(b.verify_with(&quote(&pki, 1), &c, NOW).verified);

    // TD attributes are signed by the attestation key, so a quote with DEBUG set is a
    // genuine quote of another TD on the same platform: the attribute rules run again.
    let debug = DevTdReport {
        td_attributes: [0x01, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00],
        ..td(2)
    };
    let q = evidence::decode_quote_bytes(&pki.quote(&debug).unwrap()).unwrap();
    let facts = b.verify_with(&q, &c, NOW);
    assert_eq!(
        counts(&cache),
        (0, 2),
        "other TD attributes must not be a hit"
    );
    same(&facts, &full(root_of(&pki), &q, &c, NOW));

    // TEE_TCB_SVN (the TDX module's TCB, matched against the TCB Info) altered.
    let mut raw = pki.quote(&td(3)).unwrap();
    raw[48] ^= 0x01;
    let q = evidence::decode_quote_bytes(&raw).unwrap();
    let facts = b.verify_with(&q, &c, NOW);
    assert_eq!(
        counts(&cache),
        (0, 3),
        "another TEE_TCB_SVN must not be a hit"
    );
    assert!(!facts.verified);
}

#[test]
fn new_collateral_with_another_tcb_level_is_seen_at_once() {
    let up_to_date = pki(6);
    let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
    let b = backend(root_of(&up_to_date), &cache);
    let c = collateral(&up_to_date, ISSUED);
    let first = b.verify_with(&quote(&up_to_date, 1), &c, NOW);
    assert_eq!(first.tcb_status.as_deref(), Some("UpToDate"));

    // The same platform (same keys, same quotes); Intel's TCB Info now says OutOfDate.
    let outdated = pki(6).with_platform_tcb(PlatformTcb {
        status: "OutOfDate".into(),
        advisory_ids: vec!["INTEL-SA-00837".into()],
    });
    let newer = collateral(&outdated, ISSUED);
    let q = quote(&outdated, 2);
    let facts = b.verify_with(&q, &newer, NOW);
    assert_eq!(counts(&cache), (0, 2), "new collateral must not be a hit");
    assert_eq!(facts.tcb_status.as_deref(), Some("OutOfDate"));
    assert_eq!(facts.advisory_ids, vec!["INTEL-SA-00837".to_string()]);
    same(&facts, &full(root_of(&outdated), &q, &newer, NOW));

    // From then on, quotes under the new collateral are hits with the new level.
    let again = b.verify_with(&quote(&outdated, 3), &newer, NOW);
    assert_eq!(counts(&cache), (1, 2));
    assert_eq!(again.tcb_status.as_deref(), Some("OutOfDate"));
    assert_eq!(again.advisory_ids, vec!["INTEL-SA-00837".to_string()]);

    // Collateral of the same content but reissued (new dates, new CRLs) is other
    // collateral too.
    let reissued = collateral(&up_to_date, ISSUED + DAY);
    let facts = b.verify_with(&quote(&up_to_date, 4), &reissued, ISSUED + DAY + 1);
    assert_eq!(counts(&cache), (1, 3));
    assert_eq!(facts.tcb_status.as_deref(), Some("UpToDate"));
}

#[test]
fn another_root_is_never_served_from_the_cache() {
    let pki = pki(7);
    let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
    let c = collateral(&pki, ISSUED);
    assert!(
        backend(root_of(&pki), &cache)
            .verify_with(&quote(&pki, 1), &c, NOW)
            .verified
    );

    // The same cache behind a backend that trusts another root.
    let stranger = backend(root_of(&self::pki(8)), &cache);
    let facts = stranger.verify_with(&quote(&pki, 2), &c, NOW);
    assert_eq!(counts(&cache), (0, 2), "another root must not be a hit");
    assert!(!facts.verified);
    assert_eq!(
        facts.error.as_ref().map(|e| e.code),
        Some(VerifyErrorCode::SignatureInvalid)
    );
}

#[test]
fn an_earlier_time_than_the_verification_is_not_served() {
    let pki = pki(9);
    let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
    let b = backend(root_of(&pki), &cache);
    let c = collateral(&pki, ISSUED);
    assert!(b.verify_with(&quote(&pki, 1), &c, NOW).verified);
    assert!(b.verify_with(&quote(&pki, 2), &c, NOW - 60).verified);
    assert_eq!(
        counts(&cache),
        (0, 2),
        "a time before the entry's must not be a hit"
    );
    // Past the collateral's window nothing verifies, cache or not.
    let late = b.verify_with(&quote(&pki, 3), &c, ISSUED + 31 * DAY);
    assert_eq!(
        late.error.as_ref().map(|e| e.code),
        Some(VerifyErrorCode::CollateralExpired)
    );
}

#[test]
fn the_cache_is_bounded_in_bytes() {
    let cache = Arc::new(PlatformCache::new(1024));
    for seed in 10..30 {
        let pki = pki(seed);
        let c = collateral(&pki, ISSUED);
        assert!(
            backend(root_of(&pki), &cache)
                .verify_with(&quote(&pki, 1), &c, NOW)
                .verified
        );
    }
    let entries = cache.len();
    assert!(
        (1..=6).contains(&entries),
        "{entries} entries in 1 KiB (about 200 bytes each)"
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Intel-signed quotes from real TDX machines: the second look is a hit and says exactly
/// what the full verification said.
#[test]
fn recorded_intel_quotes_are_served_as_the_full_verification_says() {
    let load = |quote_file: &str, collateral_file: &str| {
        let bytes = std::fs::read(repo().join("testdata").join(quote_file)).unwrap();
        let q = evidence::decode_quote_text(&bytes)
            .or_else(|_| evidence::decode_quote_bytes(&bytes))
            .unwrap();
        let c = Collateral::from_file(&repo().join("testdata").join(collateral_file)).unwrap();
        (q, c)
    };
    for (quote_file, collateral_file, now) in [
        (
            "dcap/tdx_quote",
            "dcap/tdx_quote_collateral.json",
            1_751_000_000,
        ),
        (
            "dstack-near/quote.hex",
            "dstack-near/quote_collateral.json",
            1_757_000_000,
        ),
    ] {
        let (q, c) = load(quote_file, collateral_file);
        let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
        let b = backend(TrustRoot::intel(), &cache);
        let first = b.verify_with(&q, &c, now);
        let second = b.verify_with(&q, &c, now + 1);
        assert_eq!(counts(&cache), (1, 1), "{quote_file}");
        assert!(first.verified, "{quote_file}: {:?}", first.error);
        same(&first, &second);

        // The recorded quote with one bit of REPORTDATA changed: a hit that fails.
        let mut raw = q.raw().to_vec();
        let body = if q.version() == 5 { 54 } else { 48 };
        raw[body + 520] ^= 0x80;
        let forged = evidence::decode_quote_bytes(&raw).unwrap();
        let facts = b.verify_with(&forged, &c, now + 2);
        assert_eq!(counts(&cache), (2, 1), "{quote_file}");
        same(&facts, &full(TrustRoot::intel(), &forged, &c, now + 2));
        assert!(!facts.verified);
    }

    // A genuine quote whose platform matches no TCB level fails the full verification;
    // failures are never cached, so every look at it is the full verification again.
    let (q, c) = load(
        "dcap/tdx_quote_outdated",
        "dcap/tdx_quote_outdated_collateral.json",
    );
    let now = 1_772_000_000;
    let cache = Arc::new(PlatformCache::new(DEFAULT_PLATFORM_CACHE_BYTES));
    let b = backend(TrustRoot::intel(), &cache);
    let first = b.verify_with(&q, &c, now);
    let second = b.verify_with(&q, &c, now + 1);
    assert!(!first.verified);
    same(&first, &second);
    assert_eq!(counts(&cache), (0, 2));
    assert!(cache.is_empty());
}

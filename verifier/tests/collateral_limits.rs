//! What a quote from an unknown platform can make the verifier fetch: nothing until its
//! PCK certificate chains to the trust root, a failed fetch at most once per key and
//! failure window, and only a few fetches at a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use teesql_devattest::agent::AgentListener;
use teesql_devattest::{AgentConfig, DevAgent, DevPki, DevTdReport};
use teesql_verifier::backend::QuoteBackend;
use teesql_verifier::backend::dcap::{DcapBackend, TrustRoot};
use teesql_verifier::collateral::{CollateralConfig, CollateralProvider, MAX_CONCURRENT_FETCHES};
use teesql_verifier::evidence::{Quote, decode_quote_bytes};

fn quote_of(seed: [u8; 32]) -> Quote {
    let pki = DevPki::from_seed(seed).unwrap();
    decode_quote_bytes(&pki.quote(&DevTdReport::default()).unwrap()).unwrap()
}

/// A forged platform (a development PKI nobody trusts) asks the verifier for collateral
/// through the PCK certificate its quote carries. Before any fetch, that certificate
/// must chain to the trust root: the PCCS is never asked.
#[tokio::test]
async fn a_quote_whose_pck_chain_misses_the_root_fetches_nothing() {
    let agent = DevAgent::new(AgentConfig::new([7; 32])).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
    {
        let a = agent.clone();
        tokio::spawn(async move {
            a.serve(vec![AgentListener::Tcp(listener)], async {
                let _ = rx.await;
            })
            .await
        });
    }
    let provider = Arc::new(
        CollateralProvider::new(&CollateralConfig {
            pccs_url: Some(url),
            ..CollateralConfig::default()
        })
        .unwrap(),
    );
    let now = teesql_verifier::Clock::System.now();
    // The agent's own root: its quotes verify, with collateral from its PCCS.
    let own = TrustRoot::development("dev", agent.root_der()).unwrap();
    let facts = DcapBackend::new(own, provider.clone())
        .appraise(&quote_of([7; 32]), now)
        .await;
    assert!(facts.verified, "{:?}", facts.error);
    let fetched = agent.pccs_requests();
    assert!(fetched > 0);
    // Intel's root, and another development root: refused as a broken signature chain,
    // with not one more request to the PCCS.
    provider.clear_cache();
    let other = DevPki::from_seed([8; 32]).unwrap();
    for root in [
        TrustRoot::intel(),
        TrustRoot::from_bytes("other", other.root_der()).unwrap(),
    ] {
        let facts = DcapBackend::new(root, provider.clone())
            .appraise(&quote_of([7; 32]), now)
            .await;
        assert!(!facts.verified);
        let e = facts.error.unwrap();
        assert_eq!(e.code.as_str(), "signature_invalid", "{}", e.message);
        assert!(e.message.contains("PCK certificate chain"), "{}", e.message);
    }
    assert_eq!(
        agent.pccs_requests(),
        fetched,
        "a forged chain cost PCCS requests"
    );
}

/// A fake PCCS that answers every request after a pause with 503, counting requests and
/// the most it had in flight.
async fn slow_failing_pccs() -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let (requests, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (r, p) = (requests.clone(), peak.clone());
    let app = axum::Router::new().fallback(move || {
        let (r, p, f) = (r.clone(), p.clone(), in_flight.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            let now = f.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            f.fetch_sub(1, Ordering::SeqCst);
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "busy")
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, requests, peak)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_is_remembered_for_its_key() {
    let (url, requests, _) = slow_failing_pccs().await;
    let provider = CollateralProvider::new(&CollateralConfig {
        pccs_url: Some(url),
        failure_ttl: Duration::from_secs(2),
        ..CollateralConfig::default()
    })
    .unwrap();
    let quote = quote_of([9; 32]);
    assert!(provider.collateral_for(&quote).await.is_err());
    let after_first = requests.load(Ordering::SeqCst);
    assert!(after_first >= 1);
    // Asked again while the failure is fresh: the same error, no request.
    for _ in 0..5 {
        let e = provider.collateral_for(&quote).await.unwrap_err();
        assert!(e.to_string().contains("503"), "{e}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), after_first);
    assert_eq!(
        provider
            .stats
            .failures_reused
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    // Once the failure window has passed, the next request tries again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(provider.collateral_for(&quote).await.is_err());
    assert!(requests.load(Ordering::SeqCst) > after_first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_few_fetches_run_at_once() {
    let (url, requests, peak) = slow_failing_pccs().await;
    let provider = Arc::new(
        CollateralProvider::new(&CollateralConfig {
            pccs_url: Some(url),
            ..CollateralConfig::default()
        })
        .unwrap(),
    );
    // Twelve platforms (twelve FMSPCs) at once.
    let mut tasks = tokio::task::JoinSet::new();
    for seed in 0..12u8 {
        let (p, q) = (provider.clone(), quote_of([seed.wrapping_add(100); 32]));
        tasks.spawn(async move { p.collateral_for(&q).await.is_err() });
    }
    while let Some(failed) = tasks.join_next().await {
        assert!(failed.unwrap());
    }
    assert!(requests.load(Ordering::SeqCst) >= 12);
    // Each fetch makes its requests one after another, so the PCCS sees at most one
    // request per running fetch.
    assert!(
        peak.load(Ordering::SeqCst) <= MAX_CONCURRENT_FETCHES,
        "{} requests in flight",
        peak.load(Ordering::SeqCst)
    );
}

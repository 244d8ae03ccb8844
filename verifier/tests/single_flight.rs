//! Concurrent decisions on the same evidence verify its quote once; a failure that a
//! later attempt could cure is shared by those waiting but not cached.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use teesql_verifier::backend::{
    BoxFuture, QuoteBackend, QuoteFacts, TrustRootKind, VerifyErrorCode,
};
use teesql_verifier::evidence::Quote;
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet};
use teesql_verifier::service::{DecisionLog, DecisionService, Metrics, QuoteInput, ServiceOptions};
use teesql_verifier::{Appraiser, Clock};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A backend that takes its time and counts its appraisals.
#[derive(Debug)]
struct Slow {
    calls: AtomicUsize,
    code: VerifyErrorCode,
}

impl QuoteBackend for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    fn appraise<'a>(&'a self, _quote: &'a Quote, _now: u64) -> BoxFuture<'a, QuoteFacts> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(300)).await;
            QuoteFacts::new("slow", TrustRootKind::Intel).failed(self.code, "test backend")
        })
    }
}

fn service(code: VerifyErrorCode) -> (Arc<DecisionService>, Arc<Slow>) {
    let backend = Arc::new(Slow {
        calls: AtomicUsize::new(0),
        code,
    });
    let policies = PolicySet::load(&[root().join("policies/teesql")], DEFAULT_EVAL_LIMIT).unwrap();
    let service = DecisionService::new(
        Appraiser::new(backend.clone()),
        policies,
        &ServiceOptions {
            clock: Clock::Fixed(1_760_000_000),
            ..ServiceOptions::default()
        },
        DecisionLog::off(),
        Arc::new(Metrics::new()),
    );
    (Arc::new(service), backend)
}

async fn wave(service: &Arc<DecisionService>, quote: &[u8], n: usize) {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (service, quote) = (service.clone(), quote.to_vec());
        tasks.push(tokio::spawn(async move {
            service
                .verify_quote(
                    "quote",
                    QuoteInput::Quote {
                        quote,
                        event_log: String::new(),
                    },
                    None,
                )
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        let d = t.await.unwrap();
        assert!(!d.allow, "the test backend verifies nothing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_the_same_quote_appraises_it_once() {
    let quote = std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap();
    let (service, backend) = service(VerifyErrorCode::SignatureInvalid);
    wave(&service, &quote, 16).await;
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
    // Cached now: no further appraisal.
    wave(&service, &quote, 4).await;
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_shared_by_a_burst_but_not_kept() {
    let quote = std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap();
    let (service, backend) = service(VerifyErrorCode::CollateralUnavailable);
    wave(&service, &quote, 16).await;
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
    // Not cached: the next burst asks again (once).
    wave(&service, &quote, 16).await;
    assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
}

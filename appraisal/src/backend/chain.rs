//! An ordered chain of backends: the next one is asked only when the previous one
//! could not reach a verdict (its collateral or its service was unavailable), never when
//! it judged the quote. The facts name the backend that decided.

use std::sync::Arc;

use super::{BoxFuture, QuoteBackend, QuoteFacts, VerifyErrorCode};
use crate::evidence::Quote;

/// Backends asked in order until one decides; named by its members, e.g. `dcap,ita`.
#[derive(Debug)]
pub struct ChainBackend {
    backends: Vec<Arc<dyn QuoteBackend>>,
    name: String,
}

impl ChainBackend {
    /// `backends` in the order they are asked; at least one.
    pub fn new(backends: Vec<Arc<dyn QuoteBackend>>) -> Self {
        let name = backends
            .iter()
            .map(|b| b.name().to_string())
            .collect::<Vec<_>>()
            .join(",");
        Self { backends, name }
    }
}

impl QuoteBackend for ChainBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn appraise<'a>(&'a self, quote: &'a Quote, now: u64) -> BoxFuture<'a, QuoteFacts> {
        Box::pin(async move {
            let mut undecided: Vec<String> = Vec::new();
            let mut last = None;
            for backend in &self.backends {
                let facts = backend.appraise(quote, now).await;
                if !facts.undecided() {
                    if !undecided.is_empty() {
                        tracing::info!(
                            decided_by = facts.backend,
                            undecided = %undecided.join("; "),
                            "an earlier backend could not decide"
                        );
                    }
                    return facts;
                }
                if let Some(e) = &facts.error {
                    undecided.push(format!("{}: {}", facts.backend, e.message));
                }
                last = Some(facts);
            }
            match last {
                // Every backend was undecided: the last one's facts, with every reason.
                Some(mut facts) => {
                    if let Some(e) = facts.error.as_mut() {
                        e.message = format!("no backend could decide: {}", undecided.join("; "));
                    }
                    facts
                }
                None => QuoteFacts::new("none", super::TrustRootKind::Intel)
                    .failed(VerifyErrorCode::Other, "no quote backend is configured"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::backend::TrustRootKind;

    #[derive(Debug)]
    struct Fixed {
        name: &'static str,
        code: Option<VerifyErrorCode>,
        calls: AtomicUsize,
    }

    impl QuoteBackend for Fixed {
        fn name(&self) -> &str {
            self.name
        }

        fn appraise<'a>(&'a self, _: &'a Quote, _: u64) -> BoxFuture<'a, QuoteFacts> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let facts = QuoteFacts::new(self.name, TrustRootKind::Intel);
            Box::pin(async move {
                match self.code {
                    Some(code) => facts.failed(code, format!("{} says no", self.name)),
                    None => QuoteFacts {
                        verified: true,
                        ..facts
                    },
                }
            })
        }
    }

    fn fixed(name: &'static str, code: Option<VerifyErrorCode>) -> Arc<Fixed> {
        Arc::new(Fixed {
            name,
            code,
            calls: AtomicUsize::new(0),
        })
    }

    fn quote() -> Quote {
        let raw = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/dcap/tdx_quote"),
        )
        .unwrap_or_default();
        crate::evidence::decode_quote_bytes(&raw).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn falls_back_only_when_the_first_could_not_decide() {
        let q = quote();
        let (first, second) = (
            fixed("dcap", Some(VerifyErrorCode::CollateralUnavailable)),
            fixed("ita", None),
        );
        let chain = ChainBackend::new(vec![first.clone(), second.clone()]);
        assert_eq!(chain.name(), "dcap,ita");
        let facts = chain.appraise(&q, 0).await;
        assert!(facts.verified);
        assert_eq!(
            facts.backend, "ita",
            "the claims name the backend that decided"
        );

        // A quote judged bad is not taken elsewhere.
        let (first, second) = (
            fixed("dcap", Some(VerifyErrorCode::SignatureInvalid)),
            fixed("ita", None),
        );
        let chain = ChainBackend::new(vec![first.clone(), second.clone()]);
        let facts = chain.appraise(&q, 0).await;
        assert!(!facts.verified);
        assert_eq!(facts.backend, "dcap");
        assert_eq!(second.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn every_backend_undecided_says_why_for_each() {
        let q = quote();
        let chain = ChainBackend::new(vec![
            fixed("dcap", Some(VerifyErrorCode::CollateralUnavailable)),
            fixed("ita", Some(VerifyErrorCode::ServiceUnavailable)),
        ]);
        let facts = chain.appraise(&q, 0).await;
        assert!(facts.undecided());
        let msg = &facts
            .error
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        assert!(
            msg.contains("dcap: dcap says no") && msg.contains("ita: ita says no"),
            "{msg}"
        );
    }
}

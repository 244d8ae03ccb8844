//! The appraisal cache: appraised claims of a piece of evidence, by evidence hash.
//!
//! Bounded in bytes, not entries: an entry weighs what its claims hold. Evidence anyone
//! can make for free (no quote, or a quote that did not verify) goes to a second, small
//! cache with a short life, so a peer presenting fresh junk on every connection can
//! neither grow memory past its budget nor push out the appraisals of genuine quotes.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::prepared::Prepared;
use crate::clock::Clock;

/// An appraisal and the unix time its facts stop holding (0 = no limit of its own).
#[derive(Debug, Clone)]
struct Entry {
    appraisal: Arc<Prepared>,
    until: u64,
}

/// What moka keeps per entry besides the value, as allocations: the key in an `Arc`, the
/// value entry and its info, a node in each of its access, write and timer queues, a
/// hash-table bucket. About seven small chunks.
const ENTRY_OVERHEAD: usize = 512;

/// How long appraisals of unverified evidence are kept at most.
const UNVERIFIED_TTL: Duration = Duration::from_secs(60);

/// Two byte-bounded tiers; every entry expires at the earlier of its own `until` and the
/// tier's maximum TTL.
#[derive(Debug)]
pub(crate) struct AppraisalCache {
    verified: moka::sync::Cache<[u8; 32], Entry>,
    unverified: moka::sync::Cache<[u8; 32], Entry>,
    clock: Clock,
}

/// The cache's budgets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Bytes for appraisals of verified quotes.
    pub verified_bytes: u64,
    /// Bytes for everything else.
    pub unverified_bytes: u64,
    pub max_ttl: Duration,
}

struct Expiry {
    max_ttl: Duration,
    clock: Clock,
}

impl moka::Expiry<[u8; 32], Entry> for Expiry {
    fn expire_after_create(&self, _: &[u8; 32], e: &Entry, _: Instant) -> Option<Duration> {
        let ttl = if e.until == 0 {
            self.max_ttl
        } else {
            Duration::from_secs(e.until.saturating_sub(self.clock.now())).min(self.max_ttl)
        };
        Some(ttl)
    }
}

fn tier(bytes: u64, max_ttl: Duration, clock: Clock) -> moka::sync::Cache<[u8; 32], Entry> {
    moka::sync::Cache::builder()
        .max_capacity(bytes)
        .weigher(|_, e: &Entry| {
            u32::try_from(e.appraisal.weight() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
        })
        .expire_after(Expiry { max_ttl, clock })
        .build()
}

impl AppraisalCache {
    pub fn new(budget: Budget, clock: Clock) -> Self {
        Self {
            verified: tier(budget.verified_bytes, budget.max_ttl, clock),
            unverified: tier(
                budget.unverified_bytes,
                budget.max_ttl.min(UNVERIFIED_TTL),
                clock,
            ),
            clock,
        }
    }

    /// A cached appraisal still valid now.
    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<Arc<Prepared>> {
        for tier in [&self.verified, &self.unverified] {
            if let Some(e) = tier.get(key) {
                // moka's expiry is checked lazily; never hand out an entry past its facts.
                if e.until != 0 && self.clock.now() >= e.until {
                    tier.invalidate(key);
                    return None;
                }
                return Some(e.appraisal);
            }
        }
        None
    }

    pub(crate) fn insert(&self, key: [u8; 32], appraisal: Arc<Prepared>, until: u64) {
        if until != 0 && self.clock.now() >= until {
            return;
        }
        let tier = if appraisal.facts.verified {
            &self.verified
        } else {
            &self.unverified
        };
        tier.insert(key, Entry { appraisal, until });
        // moka settles its books every 64 writes; with appraisals of a few hundred KiB
        // that lets the cache run tens of MiB past its budget, and the allocator keeps
        // the high-water mark. An insert follows a whole appraisal, so settling now costs
        // nothing in comparison, and keeps the tier within its budget by one entry.
        tier.run_pending_tasks();
    }

    /// Bytes held (as weighed), verified and unverified tiers, as moka last counted them
    /// (it settles its bookkeeping in batches).
    pub(crate) fn weighted_bytes_estimate(&self) -> (u64, u64) {
        (
            self.verified.weighted_size(),
            self.unverified.weighted_size(),
        )
    }

    /// Bytes held now (as weighed), verified and unverified tiers. Settles moka's
    /// pending bookkeeping first, so the figure is current.
    pub(crate) fn weighted_bytes(&self) -> (u64, u64) {
        self.verified.run_pending_tasks();
        self.unverified.run_pending_tasks();
        (
            self.verified.weighted_size(),
            self.unverified.weighted_size(),
        )
    }
}

/// Concurrent requests for the same key share one computation: the first caller runs
/// it, the others wait for its result. If the first caller goes away (its client hung
/// up), a waiting one takes over. Nothing is kept once the last caller has its answer.
#[derive(Debug)]
pub(crate) struct SingleFlight<V> {
    calls: std::sync::Mutex<std::collections::HashMap<[u8; 32], Call<V>>>,
}

/// The shared result of one call, and how many callers are in it.
type Call<V> = (Arc<OnceCell<V>>, usize);

impl<V> Default for SingleFlight<V> {
    fn default() -> Self {
        Self {
            calls: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

/// A caller's share of a call; the last one out (done or gone) removes the call.
struct Participant<'a, V> {
    flight: &'a SingleFlight<V>,
    key: [u8; 32],
}

impl<V> Drop for Participant<'_, V> {
    fn drop(&mut self) {
        let mut calls = self.flight.calls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, callers)) = calls.get_mut(&self.key) {
            *callers -= 1;
            if *callers == 0 {
                calls.remove(&self.key);
            }
        }
    }
}

impl<V: Clone> SingleFlight<V> {
    /// The result of `compute` for `key`, computed once for every caller that asks while
    /// it runs. Returns whether this caller's `compute` ran.
    pub(crate) async fn run<F>(&self, key: [u8; 32], compute: F) -> (V, bool)
    where
        F: Future<Output = V>,
    {
        let cell = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            let (cell, callers) = calls.entry(key).or_default();
            *callers += 1;
            cell.clone()
        };
        let _me = Participant { flight: self, key };
        let mut ran = false;
        let value = cell
            .get_or_init(|| {
                ran = true;
                compute
            })
            .await
            .clone();
        (value, ran)
    }

    /// Calls in progress (tests).
    #[cfg(test)]
    pub(crate) fn in_progress(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_computation() {
        let flight = Arc::new(SingleFlight::<u64>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (flight, runs) = (flight.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run([7; 32], async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        42
                    })
                    .await
            }));
        }
        let mut leaders = 0;
        for t in tasks {
            let (v, ran) = t.await.unwrap();
            assert_eq!(v, 42);
            leaders += usize::from(ran);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert_eq!(flight.in_progress(), 0, "nothing kept after the call");
        // A later call computes again (results are the cache's business, not this one's).
        let (v, ran) = flight.run([7; 32], async { 43 }).await;
        assert_eq!((v, ran), (43, true));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_takes_over_when_the_first_caller_goes_away() {
        let flight = Arc::new(SingleFlight::<u64>::default());
        let first = {
            let flight = flight.clone();
            tokio::spawn(async move {
                flight
                    .run([1; 32], async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        1
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run([1; 32], async { 2 }).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        first.abort();
        let (v, ran) = second.await.unwrap();
        assert_eq!((v, ran), (2, true));
        assert_eq!(flight.in_progress(), 0);
        // Every caller gone mid-call leaves nothing behind either.
        let lone = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run([3; 32], std::future::pending::<u64>()).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(flight.in_progress(), 1);
        lone.abort();
        let _ = lone.await;
        assert_eq!(flight.in_progress(), 0);
    }
}

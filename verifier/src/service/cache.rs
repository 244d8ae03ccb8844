//! The appraisal cache: appraised claims of a piece of evidence, by evidence hash.
//!
//! Bounded in bytes, not entries: an entry weighs what its claims hold. Evidence anyone
//! can make for free (no quote, or a quote that did not verify) goes to a second, small
//! cache with a short life, so a peer presenting fresh junk on every connection can
//! neither grow memory past its budget nor push out the appraisals of genuine quotes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::prepared::Prepared;
use crate::clock::Clock;

/// An appraisal and the unix time its facts stop holding (0 = no limit of its own).
#[derive(Debug, Clone)]
struct Entry {
    appraisal: Arc<Prepared>,
    until: u64,
}

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
        // Key, entry and moka's own bookkeeping, on top of what the claims hold.
        .weigher(|_, e: &Entry| u32::try_from(e.appraisal.weight() + 128).unwrap_or(u32::MAX))
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

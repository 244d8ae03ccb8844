//! The appraisal cache: verified claims of a piece of evidence, by evidence hash.

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

/// Bounded in size; every entry expires at the earlier of its own `until` and the
/// configured maximum TTL.
#[derive(Debug)]
pub(crate) struct AppraisalCache {
    inner: moka::sync::Cache<[u8; 32], Entry>,
    clock: Clock,
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

impl AppraisalCache {
    pub fn new(capacity: u64, max_ttl: Duration, clock: Clock) -> Self {
        Self {
            inner: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(Expiry { max_ttl, clock })
                .build(),
            clock,
        }
    }

    /// A cached appraisal still valid now.
    pub(crate) fn get(&self, key: &[u8; 32]) -> Option<Arc<Prepared>> {
        let e = self.inner.get(key)?;
        // moka's expiry is checked lazily; never hand out an entry past its facts.
        if e.until != 0 && self.clock.now() >= e.until {
            self.inner.invalidate(key);
            return None;
        }
        Some(e.appraisal)
    }

    pub(crate) fn insert(&self, key: [u8; 32], appraisal: Arc<Prepared>, until: u64) {
        if until != 0 && self.clock.now() >= until {
            return;
        }
        self.inner.insert(key, Entry { appraisal, until });
    }
}

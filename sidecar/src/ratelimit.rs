//! Failed logins are limited per client address: past the limit, a client gets the same
//! generic refusal without the sidecar doing any work for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; older windows are pruned first.
const MAX_TRACKED: usize = 100_000;

/// Counts failures per address in a one-minute window.
#[derive(Debug)]
pub struct FailureLimiter {
    per_window: u32,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_window: per_minute,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// True when `ip` has used up its failures in the current window.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        matches!(seen.get(&ip), Some((start, n)) if start.elapsed() < WINDOW && *n >= self.per_window)
    }

    pub fn record_failure(&self, ip: IpAddr) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_TRACKED {
            seen.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let entry = seen.entry(ip).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_per_address() {
        let l = FailureLimiter::new(3);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!l.is_blocked(a));
            l.record_failure(a);
        }
        assert!(l.is_blocked(a));
        assert!(!l.is_blocked(b));
    }
}

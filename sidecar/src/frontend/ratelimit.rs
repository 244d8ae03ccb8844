//! Limits per client address, so that one peer cannot take the front door from others:
//!
//! - failed logins, counted per (address, user) in a one-minute window: past the limit
//!   that user from that address gets the generic refusal without any work done for it.
//!   Only failures the client caused count; a verifier outage is not the client's fault.
//! - abandoned handshakes (the client went away or stalled after its StartupMessage,
//!   when the verifier had already been asked), counted per address in a window of their
//!   own: they cost an appraisal each, without ever failing a login.
//! - handshakes in progress per address, capped.
//!
//! Behind a gateway or NAT every client shares one address: the per-user keying keeps
//! one role's failures from locking out the others, but the abandoned budget and the
//! handshake cap are shared, so size them for the gateway's traffic.
//!
//! An "address" is an IPv4 address, or an IPv6 /64 (one host usually holds a whole /64,
//! and could otherwise take a fresh address per connection); IPv4-mapped IPv6 addresses
//! count as their IPv4 address.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at most per window counter; expired windows are pruned first.
const MAX_TRACKED: usize = 100_000;
/// Longest user name kept in a key (Postgres' own limit is 63 bytes).
const MAX_USER_KEY: usize = 64;

/// Events per key in a one-minute window.
#[derive(Debug)]
struct Window<K> {
    per_window: u32,
    seen: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: Hash + Eq> Window<K> {
    fn new(per_window: u32) -> Self {
        Self {
            per_window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn is_over(&self, key: &K) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        matches!(seen.get(key), Some((start, n)) if start.elapsed() < WINDOW && *n >= self.per_window)
    }

    fn record(&self, key: K) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= MAX_TRACKED {
            seen.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if seen.len() >= MAX_TRACKED {
                // Every entry is live: forget the oldest half rather than grow.
                let mut starts: Vec<Instant> = seen.values().map(|(s, _)| *s).collect();
                starts.sort();
                let cut = starts[starts.len() / 2];
                seen.retain(|_, (start, _)| *start > cut);
            }
        }
        let entry = seen.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

pub use crate::config::AddressLimits;

/// The address limits are keyed by: an IPv4 address (IPv4-mapped IPv6 included), or the
/// /64 an IPv6 address is in.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Things in progress per address (handshakes, HTTP connections), capped.
#[derive(Debug, Clone)]
pub struct AddressSlots {
    max: usize,
    taken: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One slot of an address; the address's count drops when this does.
#[derive(Debug)]
pub struct AddressSlot {
    key: IpAddr,
    taken: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// A handshake in progress.
pub type HandshakeSlot = AddressSlot;

impl AddressSlots {
    /// At most `max` slots held at once per address (IPv4, or IPv6 /64); none taken yet.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            taken: Arc::default(),
        }
    }

    /// A slot for `ip`, or `None` when its address has `max` already.
    pub fn take(&self, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut map = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            key,
            taken: self.taken.clone(),
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Per-address limits of the sidecar's Postgres port.
#[derive(Debug)]
pub struct FailureLimiter {
    failures: Window<(IpAddr, String)>,
    abandoned: Window<IpAddr>,
    in_progress: AddressSlots,
}

fn user_key(user: &str) -> String {
    user.chars().take(MAX_USER_KEY).collect()
}

impl FailureLimiter {
    /// Empty counters with the `limits.*` per-address budgets (per minute; the handshake
    /// cap is concurrent).
    pub fn new(limits: AddressLimits) -> Self {
        Self {
            failures: Window::new(limits.failed_auth_per_minute),
            abandoned: Window::new(limits.abandoned_per_minute),
            in_progress: AddressSlots::new(limits.handshakes_per_address),
        }
    }

    /// A slot for one more handshake from `ip`, or `None` when it has its cap in progress.
    pub fn begin_handshake(&self, ip: IpAddr) -> Option<HandshakeSlot> {
        self.in_progress.take(ip)
    }

    /// Whether `user` from `ip` has used up its failed logins, or `ip` its abandoned
    /// handshakes, in the current window.
    pub fn is_blocked(&self, ip: IpAddr, user: &str) -> bool {
        let ip = address_key(ip);
        self.failures.is_over(&(ip, user_key(user))) || self.abandoned.is_over(&ip)
    }

    /// A login `user` from `ip` failed through the client's fault.
    pub fn record_failure(&self, ip: IpAddr, user: &str) {
        self.failures.record((address_key(ip), user_key(user)));
    }

    /// A handshake from `ip` was abandoned after the verifier had been asked.
    pub fn record_abandoned(&self, ip: IpAddr) {
        self.abandoned.record(address_key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> FailureLimiter {
        FailureLimiter::new(AddressLimits {
            failed_auth_per_minute: 3,
            abandoned_per_minute: 2,
            handshakes_per_address: 2,
        })
    }

    #[test]
    fn failures_block_one_user_at_one_address() {
        let l = limiter();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!l.is_blocked(a, "teesql_read"));
            l.record_failure(a, "teesql_read");
        }
        assert!(l.is_blocked(a, "teesql_read"));
        assert!(
            !l.is_blocked(a, "teesql_readwrite"),
            "other users are not locked out"
        );
        assert!(!l.is_blocked(b, "teesql_read"));
    }

    #[test]
    fn abandoned_handshakes_block_the_address() {
        let l = limiter();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        l.record_abandoned(a);
        assert!(!l.is_blocked(a, "x"));
        l.record_abandoned(a);
        assert!(l.is_blocked(a, "x") && l.is_blocked(a, "y"));
    }

    #[test]
    fn handshakes_in_progress_are_capped_per_address() {
        let l = limiter();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = l.begin_handshake(a).unwrap();
        let _s2 = l.begin_handshake(a).unwrap();
        assert!(l.begin_handshake(a).is_none());
        assert!(l.begin_handshake(b).is_some());
        drop(s1);
        assert!(l.begin_handshake(a).is_some());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let l = limiter();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..3 {
            l.record_failure(a, "teesql_read");
        }
        assert!(l.is_blocked(same_64, "teesql_read"));
        assert!(!l.is_blocked(other_64, "teesql_read"));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "127.0.0.1".parse::<IpAddr>().unwrap());
        let slots = AddressSlots::new(1);
        let held = slots.take(a).unwrap();
        assert!(slots.take(same_64).is_none());
        assert!(slots.take(other_64).is_some());
        drop(held);
        assert!(slots.take(same_64).is_some());
    }

    #[test]
    fn long_user_names_share_a_bounded_key() {
        let l = limiter();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let long = "u".repeat(10_000);
        for _ in 0..3 {
            l.record_failure(a, &long);
        }
        assert!(l.is_blocked(a, &"u".repeat(MAX_USER_KEY)));
    }
}

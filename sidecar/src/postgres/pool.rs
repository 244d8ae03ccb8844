//! Reuse of Postgres connections between client sessions (session pooling, as PgBouncer
//! does): when a client ends its session with Terminate, its Postgres connection is reset
//! (`ROLLBACK`, `DISCARD ALL`) and kept for the next client that logs in as the same role,
//! to the same database, with the same startup parameters. Connecting a client then costs
//! TLS, authentication and the verifier's decision, but no new Postgres backend.
//!
//! Only roles the sidecar authenticates itself are pooled: a passthrough role's password
//! is Postgres' to check, on every connection. A connection whose reset shows anything
//! unexpected (an error, an open transaction, a COPY in progress) is closed instead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::metrics::PoolMetrics;
use crate::pgwire::{self, decode};
use crate::postgres::login::LoggedIn;

/// What a pooled connection is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The Postgres role the connection is logged in as (never a passthrough role).
    pub user: String,
    /// The database the connection is logged in to.
    pub database: String,
    /// The other startup parameters, as sent to Postgres.
    pub params: Vec<(String, String)>,
}

/// Idle, reset Postgres connections by key.
#[derive(Debug)]
pub struct BackendPool {
    max_idle_per_key: usize,
    /// Connections kept across all keys at most.
    max_idle_total: usize,
    idle_timeout: Duration,
    idle: Mutex<HashMap<PoolKey, Vec<(Instant, LoggedIn)>>>,
    /// Checkouts, returns and the idle gauge (unregistered ones unless given).
    metrics: PoolMetrics,
}

/// How long a reset may take before the connection is closed instead.
const RESET_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes read while resetting (left-over results of an abandoned query).
const RESET_BUDGET: usize = 4 * 1024 * 1024;

impl BackendPool {
    /// `max_idle_per_key == 0` turns pooling off; `max_idle_total` bounds the kept
    /// connections over all keys (each is a Postgres backend).
    pub fn new(max_idle_per_key: usize, max_idle_total: usize, idle_timeout: Duration) -> Self {
        Self {
            max_idle_per_key,
            max_idle_total,
            idle_timeout,
            idle: Mutex::new(HashMap::new()),
            metrics: PoolMetrics::default(),
        }
    }

    /// Count checkouts and returns in `metrics`, and keep its idle and cap gauges.
    pub fn with_metrics(mut self, metrics: PoolMetrics) -> Self {
        metrics.set_max_idle(if self.enabled() {
            self.max_idle_total
        } else {
            0
        });
        metrics.set_idle(0);
        self.metrics = metrics;
        self
    }

    /// Whether connections are kept at all (`backend.pool_max_idle_per_key` above 0).
    pub fn enabled(&self) -> bool {
        self.max_idle_per_key > 0
    }

    /// An idle connection for `key`, if one is kept and not too old. Counted as a
    /// checkout `hit` or `miss` while pooling is on.
    pub fn take(&self, key: &PoolKey) -> Option<LoggedIn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let found = Self::pop_usable(&mut idle, key, self.idle_timeout);
        if self.enabled() {
            self.metrics.checkout(found.is_some());
            self.metrics.set_idle(idle.values().map(Vec::len).sum());
        }
        found
    }

    /// The newest usable connection kept for `key`; older unusable ones on the way are
    /// closed.
    fn pop_usable(
        idle: &mut HashMap<PoolKey, Vec<(Instant, LoggedIn)>>,
        key: &PoolKey,
        idle_timeout: Duration,
    ) -> Option<LoggedIn> {
        let list = idle.get_mut(key)?;
        while let Some((since, mut conn)) = list.pop() {
            if since.elapsed() < idle_timeout && conn.stream.is_quiet() {
                // Its login notices went to the first client.
                conn.notices.clear();
                return Some(conn);
            }
        }
        None
    }

    /// Reset `conn` and keep it for the next client, or close it. Counted in
    /// `pool_returns_total` by what happened (while pooling is on).
    pub async fn give_back(&self, key: PoolKey, mut conn: LoggedIn) -> bool {
        if !self.enabled() {
            return false;
        }
        match tokio::time::timeout(RESET_TIMEOUT, reset(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                tracing::debug!(user = %key.user, why = %why, "not pooling a Postgres connection");
                self.metrics.returned("reset_failed");
                return false;
            }
            Err(_) => {
                tracing::debug!(user = %key.user, "not pooling a Postgres connection: its reset timed out");
                self.metrics.returned("reset_failed");
                return false;
            }
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Drop connections that waited too long, everywhere, while we are here.
        for list in idle.values_mut() {
            list.retain(|(since, _)| since.elapsed() < self.idle_timeout);
        }
        idle.retain(|_, list| !list.is_empty());
        let kept: usize = idle.values().map(Vec::len).sum();
        let result = if kept >= self.max_idle_total {
            "full_total"
        } else {
            let list = idle.entry(key).or_default();
            if list.len() >= self.max_idle_per_key {
                "full_key"
            } else {
                list.push((Instant::now(), conn));
                "kept"
            }
        };
        self.metrics.returned(result);
        self.metrics.set_idle(kept + usize::from(result == "kept"));
        result == "kept"
    }

    /// Connections kept now.
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.values().map(Vec::len).sum()
    }
}

/// Return a connection to the state of a fresh login: `Sync` (ends an extended-protocol
/// exchange the client left, which would make Postgres skip everything after it), roll
/// back whatever the client left open, `DISCARD ALL` (temporary tables, prepared
/// statements, settings, listeners, advisory locks, cursors), then a query of a random
/// nonce. The answer must be exactly what those four produce, the nonce row included and
/// an idle ReadyForQuery last: anything else (left-over output of the client's, an
/// error, a transaction still open) closes the connection.
async fn reset(conn: &mut LoggedIn) -> Result<(), String> {
    let nonce = hex::encode(crate::auth::random::<16>());
    let mut out = Vec::new();
    pgwire::frontend::sync(&mut out);
    for sql in ["ROLLBACK", "DISCARD ALL"] {
        pgwire::frontend::query(&mut out, sql);
    }
    pgwire::frontend::query(&mut out, &format!("SELECT '{nonce}'"));
    conn.stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut check = ResetAnswer::new(&nonce);
    let mut read = 0usize;
    loop {
        let (tag, body) = pgwire::read_message(&mut conn.stream, RESET_BUDGET)
            .await
            .map_err(|e| format!("read: {e}"))?;
        read += body.len() + 5;
        if read > RESET_BUDGET {
            return Err("too much output".into());
        }
        if tag == b'S' {
            // DISCARD ALL (RESET ALL) reports the parameters it changed back.
            let (k, v) = decode::parameter_status(&body).map_err(|e| e.to_string())?;
            match conn.params.iter_mut().find(|(n, _)| n == k) {
                Some(slot) => slot.1 = v.to_string(),
                None => conn.params.push((k.to_string(), v.to_string())),
            }
        }
        if check.next(tag, &body).map_err(|e| e.to_string())? {
            return Ok(());
        }
    }
}

/// A message that does not belong in the answer to a reset ([`ResetAnswer::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unexpected {:?} at step {step} of the reset", char::from(*tag))]
pub struct UnexpectedReset {
    /// The message's type byte.
    pub tag: u8,
    /// How many messages of the answer had come as expected.
    pub step: usize,
}

/// The answer to a reset, message by message: `Z` (the Sync), `C ROLLBACK` `Z`,
/// `C DISCARD ALL` `Z`, `T` `D <nonce>` `C SELECT 1` `Z I`. Notices, parameter statuses
/// and notifications may come between; nothing else may.
#[derive(Debug)]
pub struct ResetAnswer<'a> {
    nonce: &'a str,
    step: usize,
}

impl<'a> ResetAnswer<'a> {
    /// Expect the reset's answer, with `nonce` (hex) as the one value the final SELECT returns.
    pub fn new(nonce: &'a str) -> Self {
        Self { nonce, step: 0 }
    }

    /// Take one message: `Ok(true)` when the answer is complete and as expected, `Ok(false)`
    /// to read on, `Err` at the first message that does not belong.
    pub fn next(&mut self, tag: u8, body: &[u8]) -> Result<bool, UnexpectedReset> {
        if matches!(tag, b'N' | b'S' | b'A') {
            return Ok(false);
        }
        let expected: bool = match (self.step, tag) {
            // The Sync's: whatever the client left (idle, in a transaction, failed).
            (0, b'Z') => matches!(body, b"I" | b"T" | b"E"),
            // ROLLBACK's and DISCARD ALL's: idle.
            (2 | 4, b'Z') => body == b"I",
            (1, b'C') => body == b"ROLLBACK\0",
            (3, b'C') => body == b"DISCARD ALL\0",
            (5, b'T') => true,
            (6, b'D') => self.is_nonce_row(body),
            (7, b'C') => body == b"SELECT 1\0",
            (8, b'Z') => body == b"I",
            _ => false,
        };
        if !expected {
            return Err(UnexpectedReset {
                tag,
                step: self.step,
            });
        }
        self.step += 1;
        Ok(self.step == 9)
    }

    /// A DataRow of one column holding exactly the nonce.
    fn is_nonce_row(&self, body: &[u8]) -> bool {
        let mut want = vec![0, 1];
        want.extend_from_slice(&(self.nonce.len() as u32).to_be_bytes());
        want.extend_from_slice(self.nonce.as_bytes());
        body == want.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(nonce: &str) -> Vec<(u8, Vec<u8>)> {
        let mut row = vec![0, 1];
        row.extend_from_slice(&(nonce.len() as u32).to_be_bytes());
        row.extend_from_slice(nonce.as_bytes());
        vec![
            (b'Z', b"I".to_vec()),
            (b'N', b"Swarning\0\0".to_vec()),
            (b'C', b"ROLLBACK\0".to_vec()),
            (b'Z', b"I".to_vec()),
            (b'C', b"DISCARD ALL\0".to_vec()),
            (b'S', b"search_path\0public\0".to_vec()),
            (b'Z', b"I".to_vec()),
            (
                b'T',
                b"\0\x01?column?\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0".to_vec(),
            ),
            (b'D', row),
            (b'C', b"SELECT 1\0".to_vec()),
            (b'Z', b"I".to_vec()),
        ]
    }

    fn check(nonce: &str, messages: &[(u8, Vec<u8>)]) -> Result<bool, String> {
        let mut a = ResetAnswer::new(nonce);
        let mut done = false;
        for (tag, body) in messages {
            if done {
                return Err("more after the end".into());
            }
            done = a.next(*tag, body).map_err(|e| e.to_string())?;
        }
        Ok(done)
    }

    #[test]
    fn checkouts_are_counted_only_while_pooling_is_on() {
        let key = PoolKey {
            user: "teesql_read".into(),
            database: "postgres".into(),
            params: Vec::new(),
        };
        let metrics = crate::metrics::Metrics::new();
        let pool = BackendPool::new(2, 8, Duration::from_secs(60)).with_metrics(metrics.pool());
        assert!(pool.take(&key).is_none());
        let text = metrics.encode();
        for line in [
            "teesql_sidecar_pool_checkouts_total{result=\"miss\"} 1",
            "teesql_sidecar_pool_checkouts_total{result=\"hit\"} 0",
            "teesql_sidecar_pool_returns_total{result=\"full_total\"} 0",
            "teesql_sidecar_pool_idle 0",
            "teesql_sidecar_pool_max_idle 8",
            "# TYPE teesql_sidecar_pool_checkouts counter",
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
        }
        // Off: no cap to reach, nothing counted.
        let metrics = crate::metrics::Metrics::new();
        let off = BackendPool::new(0, 8, Duration::from_secs(60)).with_metrics(metrics.pool());
        assert!(off.take(&key).is_none());
        let text = metrics.encode();
        assert!(
            text.contains("teesql_sidecar_pool_checkouts_total{result=\"miss\"} 0"),
            "{text}"
        );
        assert!(text.contains("teesql_sidecar_pool_max_idle 0"), "{text}");
    }

    #[test]
    fn only_the_exact_answer_to_a_reset_passes() {
        let nonce = "0123456789abcdef0123456789abcdef";
        assert_eq!(check(nonce, &answer(nonce)), Ok(true));
        // A client's left-over output anywhere, another nonce, an open transaction, an
        // error, a missing step: refused.
        let mut left_over = answer(nonce);
        left_over.insert(0, (b'D', b"\0\x01\0\0\0\x08attacker".to_vec()));
        assert!(check(nonce, &left_over).is_err());
        assert!(check("ffff", &answer(nonce)).is_err());
        let mut in_tx = answer(nonce);
        in_tx[10] = (b'Z', b"T".to_vec());
        assert!(check(nonce, &in_tx).is_err());
        let mut error = answer(nonce);
        error[4] = (b'E', b"SERROR\0\0".to_vec());
        assert!(check(nonce, &error).is_err());
        let mut extra_ready = answer(nonce);
        extra_ready.insert(1, (b'Z', b"I".to_vec()));
        assert!(check(nonce, &extra_ready).is_err());
        // The Sync may find a transaction the client left open or failed: ROLLBACK ends
        // it. A ReadyForQuery that is not one status byte, or not idle after ROLLBACK or
        // DISCARD ALL, is refused (found by fuzz target pool_handover).
        for status in [b"T", b"E"] {
            let mut left_open = answer(nonce);
            left_open[0] = (b'Z', status.to_vec());
            assert_eq!(check(nonce, &left_open), Ok(true));
        }
        for (at, body) in [
            (0, b"I\0junk".to_vec()),
            (0, Vec::new()),
            (3, b"T".to_vec()),
            (6, b"E".to_vec()),
        ] {
            let mut odd = answer(nonce);
            odd[at] = (b'Z', body);
            assert!(check(nonce, &odd).is_err(), "{at}");
        }
        // Every strict prefix is incomplete, never accepted.
        let full = answer(nonce);
        for n in 0..full.len() {
            assert_eq!(check(nonce, &full[..n]), Ok(false), "prefix {n}");
        }
    }
}

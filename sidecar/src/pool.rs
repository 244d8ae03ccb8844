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

use crate::backend::LoggedIn;
use crate::pgwire::{self, decode};

/// What a pooled connection is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub user: String,
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
        }
    }

    pub fn enabled(&self) -> bool {
        self.max_idle_per_key > 0
    }

    /// An idle connection for `key`, if one is kept and not too old.
    pub fn take(&self, key: &PoolKey) -> Option<LoggedIn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((since, mut conn)) = list.pop() {
            if since.elapsed() < self.idle_timeout && conn.stream.is_quiet() {
                // Its login notices went to the first client.
                conn.notices.clear();
                return Some(conn);
            }
        }
        None
    }

    /// Reset `conn` and keep it for the next client, or close it.
    pub async fn give_back(&self, key: PoolKey, mut conn: LoggedIn) -> bool {
        if !self.enabled() {
            return false;
        }
        match tokio::time::timeout(RESET_TIMEOUT, reset(&mut conn)).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                tracing::debug!(user = %key.user, why = %why, "not pooling a Postgres connection");
                return false;
            }
            Err(_) => return false,
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Drop connections that waited too long, everywhere, while we are here.
        for list in idle.values_mut() {
            list.retain(|(since, _)| since.elapsed() < self.idle_timeout);
        }
        idle.retain(|_, list| !list.is_empty());
        if idle.values().map(Vec::len).sum::<usize>() >= self.max_idle_total {
            return false;
        }
        let list = idle.entry(key).or_default();
        if list.len() >= self.max_idle_per_key {
            return false;
        }
        list.push((Instant::now(), conn));
        true
    }

    /// Connections kept now.
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.values().map(Vec::len).sum()
    }
}

/// Return a connection to the state of a fresh login: roll back whatever the client left
/// open and `DISCARD ALL` (temporary tables, prepared statements, settings, listeners,
/// advisory locks, cursors). Anything unexpected is an error: the connection is closed.
async fn reset(conn: &mut LoggedIn) -> Result<(), String> {
    let mut out = Vec::new();
    for sql in ["ROLLBACK", "DISCARD ALL"] {
        pgwire::frontend::query(&mut out, sql);
    }
    conn.stream
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut read = 0usize;
    let mut discarded = false;
    loop {
        let (tag, body) = pgwire::read_message(&mut conn.stream, RESET_BUDGET)
            .await
            .map_err(|e| format!("read: {e}"))?;
        read += body.len() + 5;
        if read > RESET_BUDGET {
            return Err("too much left-over output".into());
        }
        match tag {
            b'E' => return Err("error during reset".into()),
            b'C' => discarded = body.starts_with(b"DISCARD ALL\0"),
            b'S' => {
                // RESET ALL reports the parameters it changed back.
                let (k, v) = decode::parameter_status(&body).map_err(|e| e.to_string())?;
                match conn.params.iter_mut().find(|(n, _)| n == k) {
                    Some(slot) => slot.1 = v.to_string(),
                    None => conn.params.push((k.to_string(), v.to_string())),
                }
            }
            b'Z' if discarded => {
                return if body.first() == Some(&b'I') {
                    Ok(())
                } else {
                    Err("not idle after DISCARD ALL".into())
                };
            }
            // Left-over results, notices (ROLLBACK outside a transaction warns), other
            // ReadyForQuery messages: passed over.
            _ => {}
        }
    }
}

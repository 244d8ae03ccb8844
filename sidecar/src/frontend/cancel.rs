//! Cancel keys. Clients get a key issued by the sidecar (BackendKeyData is rewritten),
//! so a CancelRequest names a sidecar session; the sidecar forwards it to Postgres with
//! the real key. Keys are compared in constant time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;

use crate::auth::random;
use crate::config::BackendAddr;

#[derive(Debug)]
struct Target {
    key: [u8; 4],
    backend_pid: i32,
    backend_key: Vec<u8>,
}

/// Sidecar-issued cancel keys of the live sessions.
#[derive(Debug, Default)]
pub struct CancelMap {
    inner: Mutex<HashMap<i32, Target>>,
}

/// Removes its session's key when the session ends.
#[derive(Debug)]
pub struct CancelGuard {
    map: Arc<CancelMap>,
    /// The process id the client is told in BackendKeyData: random, positive, not
    /// Postgres' own pid.
    pub pid: i32,
    /// The 4-byte secret key the client is told in BackendKeyData (random).
    pub key: [u8; 4],
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.map.inner.lock() {
            m.remove(&self.pid);
        }
    }
}

impl CancelMap {
    /// Forward a client's CancelRequest for sidecar session `pid` to Postgres with the
    /// real key; a request naming no live session, or the wrong key, is ignored.
    pub async fn forward(
        &self,
        postgres: &BackendAddr,
        pid: i32,
        key: &[u8],
        peer: std::net::SocketAddr,
    ) {
        match self.lookup(pid, key) {
            Some((backend_pid, backend_key)) => {
                if let Err(e) =
                    crate::postgres::login::cancel(postgres, backend_pid, &backend_key).await
                {
                    tracing::warn!(client.addr = %peer, error = %e, "could not forward a cancel request");
                } else {
                    tracing::info!(client.addr = %peer, "cancel request forwarded");
                }
            }
            None => {
                tracing::info!(client.addr = %peer, "cancel request for no live session; ignored")
            }
        }
    }

    /// Issue a key for a session whose Postgres backend is `(backend_pid, backend_key)`.
    pub fn register(self: &Arc<Self>, backend_pid: i32, backend_key: Vec<u8>) -> CancelGuard {
        let key = random::<4>();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let pid = loop {
            // Positive, like real backend pids; unique among live sessions.
            let pid = i32::from_be_bytes(random::<4>()) & 0x7fff_ffff;
            if pid != 0 && !map.contains_key(&pid) {
                break pid;
            }
        };
        map.insert(
            pid,
            Target {
                key,
                backend_pid,
                backend_key,
            },
        );
        CancelGuard {
            map: self.clone(),
            pid,
            key,
        }
    }

    /// The Postgres backend to cancel, if `(pid, key)` names a live session.
    pub fn lookup(&self, pid: i32, key: &[u8]) -> Option<(i32, Vec<u8>)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = map.get(&pid)?;
        let ok: bool = key.len() == 4 && bool::from(t.key.ct_eq(key));
        ok.then(|| (t.backend_pid, t.backend_key.clone()))
    }

    /// Live sessions holding a cancel key (`sessions_cancellable` in /health); 0 if the
    /// lock is poisoned.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Whether no live session holds a cancel key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_backends_and_vanish_with_the_session() {
        let map = Arc::new(CancelMap::default());
        let g = map.register(1234, vec![9, 9, 9, 9]);
        assert_eq!(map.lookup(g.pid, &g.key), Some((1234, vec![9, 9, 9, 9])));
        let mut wrong = g.key;
        wrong[0] ^= 1;
        assert_eq!(map.lookup(g.pid, &wrong), None);
        assert_eq!(map.lookup(g.pid, &g.key[..3]), None);
        let (pid, key) = (g.pid, g.key);
        drop(g);
        assert_eq!(map.lookup(pid, &key), None);
        assert!(map.is_empty());
    }
}

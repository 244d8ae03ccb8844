//! Passthrough roles with channel binding: their SCRAM verifiers, read from Postgres.
//!
//! A passthrough role (`postgres`, mode B) is authenticated by Postgres, whose own SCRAM
//! offer cannot bind the client's TLS channel to the sidecar. So, as PgBouncer does for
//! users whose passwords it does not hold, the sidecar reads the role's SCRAM verifier
//! (`pg_authid.rolpassword`) over its admin connection, runs the exchange with the client
//! itself (SCRAM-SHA-256-PLUS where the client can bind the channel), and from the
//! client's proof recovers the ClientKey that logs in to Postgres as the role. Postgres
//! still decides; the sidecar never learns a password.
//!
//! Verifiers are cached per role for a short while (bounded in entries), and forgotten
//! when Postgres refuses a login made with them (the password changed). A role without a
//! SCRAM verifier (none, MD5), or a verifier the admin user may not read, falls back to
//! relaying Postgres' own exchange.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::scram::ScramVerifier;
use crate::config::BackendConfig;

/// How long a verifier (or its absence) is trusted before it is read again.
pub const VERIFIER_TTL: Duration = Duration::from_secs(60);
/// Most roles whose verifiers are kept.
pub const MAX_ROLES: usize = 256;

/// What the sidecar knows of a passthrough role's verifier.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// A SCRAM-SHA-256 verifier: the sidecar runs the exchange.
    Scram(Arc<ScramVerifier>),
    /// No SCRAM verifier (no password, MD5, no such login role): Postgres' own exchange.
    NotScram,
    /// Postgres could not be asked (or the admin user may not read `pg_authid`): Postgres'
    /// own exchange; the reason is for the log.
    Unavailable(String),
}

#[derive(Debug)]
struct Entry {
    lookup: Lookup,
    fetched: Instant,
}

/// Verifiers of passthrough roles, read on demand.
#[derive(Debug, Default)]
pub struct PassthroughVerifiers {
    entries: Mutex<HashMap<String, Entry>>,
    /// One read of Postgres at a time.
    reading: tokio::sync::Mutex<()>,
}

impl PassthroughVerifiers {
    /// The verifier of `role`, from the cache or from Postgres.
    pub async fn get(&self, backend: &BackendConfig, role: &str) -> Lookup {
        if let Some(hit) = self.cached(role) {
            return hit;
        }
        let _one = self.reading.lock().await;
        // Another login may have read it meanwhile.
        if let Some(hit) = self.cached(role) {
            return hit;
        }
        let lookup = read(backend, role).await;
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ROLES && !entries.contains_key(role) {
                // The oldest read goes first.
                if let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.fetched)
                    .map(|(k, _)| k.clone())
                {
                    entries.remove(&oldest);
                }
            }
            // An outage is not remembered: the next login asks again.
            if !matches!(lookup, Lookup::Unavailable(_)) {
                entries.insert(
                    role.to_string(),
                    Entry {
                        lookup: lookup.clone(),
                        fetched: Instant::now(),
                    },
                );
            }
        }
        lookup
    }

    /// Forget `role`'s verifier (Postgres refused a login made with it).
    pub fn forget(&self, role: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(role);
        }
    }

    fn cached(&self, role: &str) -> Option<Lookup> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(role)
            .filter(|e| e.fetched.elapsed() < VERIFIER_TTL)
            .map(|e| e.lookup.clone())
    }
}

/// Read `role`'s verifier as the admin user.
async fn read(backend: &BackendConfig, role: &str) -> Lookup {
    let client = match crate::postgres::admin::admin_client(backend).await {
        Ok(c) => c,
        Err(e) => return Lookup::Unavailable(e.to_string()),
    };
    let row = client
        .query_opt(
            "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin",
            &[&role],
        )
        .await;
    match row {
        Err(e) => Lookup::Unavailable(format!(
            "reading the SCRAM verifier of {role} from pg_authid (the admin user must be a superuser): {}",
            teesql_proto::runtime::error_chain(&e)
        )),
        Ok(None) => Lookup::NotScram,
        Ok(Some(row)) => match row.get::<_, Option<String>>(0) {
            Some(text) => match ScramVerifier::from_postgres(&text) {
                Ok(v) => Lookup::Scram(Arc::new(v)),
                Err(_) => Lookup::NotScram,
            },
            None => Lookup::NotScram,
        },
    }
}

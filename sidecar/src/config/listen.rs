//! `[listen]`: the Postgres port and the two HTTP listeners.

use std::net::SocketAddr;

use serde::Deserialize;
use teesql_proto::settings::{Env, Problems, first};

use super::{Overrides, defaults, env};

/// The `[listen]` table as written; every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Postgres over TLS [default: 0.0.0.0:5433].
    pub postgres: Option<String>,
    /// HTTP /health, /attestation, /metrics for the operator [default: 127.0.0.1:8080];
    /// "off" disables.
    pub admin: Option<String>,
    /// HTTP with /attestation only, for anyone [default: off], e.g. "0.0.0.0:8080" with
    /// the admin listener moved to another loopback port.
    pub public: Option<String>,
    /// Threads serving the Postgres port, each with a listener of its own on the same
    /// address (SO_REUSEPORT) and a single-threaded scheduler, so a connection never
    /// moves between threads; 0 = one scheduler shared by every connection and the rest of
    /// the sidecar [default: 0].
    pub postgres_threads: Option<usize>,
}

/// Where the sidecar listens, checked: Postgres, and the admin and public HTTP listeners
/// (`None` = off), and the Postgres port's serving threads.
pub(super) type Listeners = (
    Option<SocketAddr>,
    Option<SocketAddr>,
    Option<SocketAddr>,
    usize,
);

/// `listen.postgres_threads` above this is a mistake (a thread per connection was meant).
pub const MAX_POSTGRES_THREADS: usize = 256;

impl ListenFile {
    pub(super) fn resolve(self, e: &dyn Env, flags: &mut Overrides, p: &mut Problems) -> Listeners {
        let listen_s = first([
            flags.listen.take(),
            e.var(env::SIDECAR_LISTEN),
            self.postgres,
        ])
        .unwrap_or_else(|| defaults::LISTEN.into());
        let listen = p.socket_addr("listen", &listen_s);
        let admin_s = first([
            flags.admin_listen.take(),
            e.var(env::SIDECAR_ADMIN_LISTEN),
            self.admin,
        ])
        .unwrap_or_else(|| defaults::ADMIN_LISTEN.into());
        let admin = optional_listener(p, "admin listen", &admin_s);
        let public_s =
            first([e.var(env::SIDECAR_PUBLIC_LISTEN), self.public]).unwrap_or_else(|| "off".into());
        let public = optional_listener(p, "public listen", &public_s);
        let threads = first([
            p.env(e, env::SIDECAR_POSTGRES_THREADS),
            self.postgres_threads,
        ])
        .unwrap_or(defaults::POSTGRES_THREADS);
        if threads > MAX_POSTGRES_THREADS {
            p.report(
                "listen.postgres_threads",
                format!("{threads} is above {MAX_POSTGRES_THREADS} (about one per core is meant)"),
            );
        }
        (listen, admin, public, threads)
    }
}

/// A listener address, or `off` (also the empty string).
fn optional_listener(p: &mut Problems, key: &str, text: &str) -> Option<SocketAddr> {
    if text == "off" || text.is_empty() {
        None
    } else {
        p.socket_addr(key, text)
    }
}

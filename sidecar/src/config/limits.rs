//! `[limits]`: what one peer can make the sidecar spend — connections, deadlines and
//! rates on the Postgres port, and the HTTP listeners' bounds.

use std::time::Duration;

use serde::Deserialize;
use teesql_proto::settings::{Problems, first};

use super::{Overrides, defaults, positive};

/// The `[limits]` table as written; every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Concurrent client connections [default: 1000].
    pub max_connections: Option<usize>,
    /// Deadline from accept to an established TLS session (SSLRequest or direct TLS,
    /// then the TLS handshake), seconds [default: 10].
    pub tls_handshake_timeout_secs: Option<u64>,
    /// Deadline after TLS for the StartupMessage, seconds [default: 60]. TeeSQL's client
    /// libraries verify the server's quote (a PCCS fetch or an Intel Trust Authority round
    /// trip, 15 to 40 s) before they send it.
    pub startup_timeout_secs: Option<u64>,
    /// Deadline from the StartupMessage to a logged-in session (authentication, the
    /// verifier's decision, the login to Postgres), seconds [default: 10].
    pub login_timeout_secs: Option<u64>,
    /// Replaced by the three deadlines above; kept only to name them in the error.
    pub handshake_timeout_secs: Option<u64>,
    /// Close sessions idle this long, seconds; 0 = never [default: 0].
    pub idle_timeout_secs: Option<u64>,
    /// End sessions this old, whatever their traffic and decision, seconds; 0 = never
    /// [default: 0]. Their client gets FATAL 57P01 and reconnects under today's policy.
    pub session_max_age_secs: Option<u64>,
    /// What an open session does when it must be judged again and no verifier answers:
    /// `keep` (it runs on; an outage ends no work, but a revocation waits for the
    /// verifier) or `close` (it ends with 57P01; nothing runs unjudged, but an outage
    /// ends every session due a re-judging) [default: keep].
    pub revalidate_on_unavailable: Option<String>,
    /// On shutdown, wait this long for sessions to end, seconds [default: 30].
    pub shutdown_grace_secs: Option<u64>,
    /// Failed logins allowed per (client address, user) per minute [default: 30].
    pub failed_auth_per_minute: Option<u32>,
    /// Handshakes a client address may abandon (close or stall after its
    /// StartupMessage) per minute [default: 60].
    pub abandoned_per_minute: Option<u32>,
    /// Handshakes in progress per client address [default: 256].
    pub handshakes_per_address: Option<usize>,
    /// Time from accept to the client's first packet, seconds [default: 5].
    pub first_packet_timeout_secs: Option<u64>,
    /// Open connections per HTTP listener [default: 64].
    pub http_max_connections: Option<usize>,
    /// Open connections per HTTP listener from one client address (IPv6: a /64)
    /// [default: 32, half of a listener's connections].
    pub http_connections_per_address: Option<usize>,
    /// Time for an HTTP client to send its request headers, seconds [default: 5].
    pub http_header_timeout_secs: Option<u64>,
    /// Longest an HTTP connection may live, seconds [default: 30].
    pub http_connection_timeout_secs: Option<u64>,
}

/// What an open session due a re-judging does when no verifier answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnUnavailable {
    /// It keeps running (a verifier outage ends no work).
    #[default]
    Keep,
    /// It ends with 57P01 (nothing runs unjudged).
    Close,
}

/// The `[limits]` settings, checked, with the defaults filled in.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent client connections on the Postgres port (default 1000; `--max-connections`).
    pub max_connections: usize,
    /// Accept to an established TLS session, SSLRequest included (default 10 s).
    pub tls_handshake_timeout: Duration,
    /// TLS established to the StartupMessage received (default 60 s).
    pub startup_timeout: Duration,
    /// StartupMessage to a logged-in session: authentication, verifier, Postgres login (default 10 s).
    pub login_timeout: Duration,
    /// Sessions idle this long are closed; `None` = never (`idle_timeout_secs = 0`, the default).
    pub idle_timeout: Option<Duration>,
    /// Sessions this old are ended (57P01); `None` = never (`session_max_age_secs = 0`,
    /// the default).
    pub session_max_age: Option<Duration>,
    /// What a session due a re-judging does when no verifier answers.
    pub revalidate_on_unavailable: OnUnavailable,
    /// After shutdown stops accepting, how long open sessions may run before they are
    /// closed (default 30 s).
    pub shutdown_grace: Duration,
    /// Per client address rates and counts on the Postgres port.
    pub address: AddressLimits,
    /// Accept to the client's first packet (default 5 s).
    pub first_packet_timeout: Duration,
    /// Bounds of each HTTP listener (admin and public alike).
    pub http: HttpLimits,
}

/// Limits per client address on the Postgres port (`limits.*`).
#[derive(Debug, Clone, Copy)]
pub struct AddressLimits {
    /// Failed logins per (address, user) per minute.
    pub failed_auth_per_minute: u32,
    /// Abandoned handshakes per address per minute.
    pub abandoned_per_minute: u32,
    /// Handshakes in progress per address.
    pub handshakes_per_address: usize,
}

/// Bounds of one HTTP listener (`limits.http_*`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64).
    pub max_per_address: usize,
    /// Time to receive a request's headers (slow clients are closed).
    pub header_timeout: Duration,
    /// Longest a connection may live, keep-alive included.
    pub connection_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: defaults::HTTP_MAX_CONNECTIONS,
            max_per_address: defaults::HTTP_CONNECTIONS_PER_ADDRESS,
            header_timeout: Duration::from_secs(defaults::HTTP_HEADER_TIMEOUT_SECS),
            connection_timeout: Duration::from_secs(defaults::HTTP_CONNECTION_TIMEOUT_SECS),
        }
    }
}

impl LimitsFile {
    pub(super) fn resolve(self, flags: &mut Overrides, p: &mut Problems) -> Limits {
        if self.handshake_timeout_secs.is_some() {
            p.report(
                "limits.handshake_timeout_secs",
                "replaced by tls_handshake_timeout_secs (accept to TLS), startup_timeout_secs (TLS to StartupMessage) and login_timeout_secs (StartupMessage to logged in)",
            );
        }
        let secs = |p: &mut Problems, key: &str, v: Option<u64>, default: u64| {
            Duration::from_secs(positive(p, key, v, default))
        };
        let max_connections = first([flags.max_connections.take(), self.max_connections])
            .unwrap_or(defaults::MAX_CONNECTIONS);
        Limits {
            max_connections: p.at_least("limits.max_connections", max_connections, 1),
            tls_handshake_timeout: secs(
                p,
                "limits.tls_handshake_timeout_secs",
                self.tls_handshake_timeout_secs,
                defaults::TLS_HANDSHAKE_TIMEOUT_SECS,
            ),
            startup_timeout: secs(
                p,
                "limits.startup_timeout_secs",
                self.startup_timeout_secs,
                defaults::STARTUP_TIMEOUT_SECS,
            ),
            login_timeout: secs(
                p,
                "limits.login_timeout_secs",
                self.login_timeout_secs,
                defaults::LOGIN_TIMEOUT_SECS,
            ),
            idle_timeout: match self
                .idle_timeout_secs
                .unwrap_or(defaults::IDLE_TIMEOUT_SECS)
            {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            revalidate_on_unavailable: self
                .revalidate_on_unavailable
                .as_deref()
                .and_then(|v| p.choice("limits.revalidate_on_unavailable", v))
                .unwrap_or_default(),
            session_max_age: match self.session_max_age_secs.unwrap_or(0) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            shutdown_grace: Duration::from_secs(
                self.shutdown_grace_secs
                    .unwrap_or(defaults::SHUTDOWN_GRACE_SECS),
            ),
            address: self.address(p),
            first_packet_timeout: secs(
                p,
                "limits.first_packet_timeout_secs",
                self.first_packet_timeout_secs,
                defaults::FIRST_PACKET_TIMEOUT_SECS,
            ),
            http: self.http(p),
        }
    }

    fn address(&self, p: &mut Problems) -> AddressLimits {
        AddressLimits {
            failed_auth_per_minute: p.at_least(
                "limits.failed_auth_per_minute",
                self.failed_auth_per_minute
                    .unwrap_or(defaults::FAILED_AUTH_PER_MINUTE),
                1,
            ),
            abandoned_per_minute: p.at_least(
                "limits.abandoned_per_minute",
                self.abandoned_per_minute
                    .unwrap_or(defaults::ABANDONED_PER_MINUTE),
                1,
            ),
            handshakes_per_address: p.at_least(
                "limits.handshakes_per_address",
                self.handshakes_per_address
                    .unwrap_or(defaults::HANDSHAKES_PER_ADDRESS),
                1,
            ),
        }
    }

    fn http(&self, p: &mut Problems) -> HttpLimits {
        HttpLimits {
            max_connections: p.at_least(
                "limits.http_max_connections",
                self.http_max_connections
                    .unwrap_or(defaults::HTTP_MAX_CONNECTIONS),
                1,
            ),
            max_per_address: p.at_least(
                "limits.http_connections_per_address",
                self.http_connections_per_address
                    .unwrap_or(defaults::HTTP_CONNECTIONS_PER_ADDRESS),
                1,
            ),
            header_timeout: Duration::from_secs(positive(
                p,
                "limits.http_header_timeout_secs",
                self.http_header_timeout_secs,
                defaults::HTTP_HEADER_TIMEOUT_SECS,
            )),
            connection_timeout: Duration::from_secs(positive(
                p,
                "limits.http_connection_timeout_secs",
                self.http_connection_timeout_secs,
                defaults::HTTP_CONNECTION_TIMEOUT_SECS,
            )),
        }
    }
}

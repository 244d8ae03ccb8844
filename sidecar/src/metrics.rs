//! Prometheus metrics of the sidecar.

use std::time::Duration;
use teesql_proto::runtime::Described;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

type Labels = Vec<(&'static str, String)>;

/// Every metric the sidecar exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Family<OutcomeLabels, Counter>,
    handshake: Histogram,
    relayed: Family<Labels, Counter>,
    verifier: Histogram,
    verifier_errors: Counter,
    verifier_policy_mismatches: Counter,
    active: Gauge,
    renewals: Family<Labels, Counter>,
    reports: Family<Labels, Counter>,
    health_checks: Counter,
    http_refused: Family<Labels, Counter>,
    revoked: Family<Labels, Counter>,
    rejudged: Family<Labels, Counter>,
    pool: PoolMetrics,
}

/// The backend pool's metrics, handed to [`crate::postgres::pool::BackendPool`].
///
/// The pool never makes a client wait: it only keeps idle, reset Postgres connections.
/// "Exhausted" therefore means at its cap: `pool_idle` has reached `pool_max_idle`, a
/// connection given back is closed instead of kept (`pool_returns_total{result="full_total"}`),
/// and every checkout that misses is a new Postgres login, while the kept connections hold
/// backends too; what runs out is Postgres' own `max_connections`.
#[derive(Debug, Clone, Default)]
pub struct PoolMetrics {
    checkouts: Family<Labels, Counter>,
    returns: Family<Labels, Counter>,
    idle: Gauge,
    max_idle: Gauge,
}

impl PoolMetrics {
    /// Results of `pool_checkouts_total`.
    pub const CHECKOUTS: [&'static str; 2] = ["hit", "miss"];
    /// Results of `pool_returns_total`.
    pub const RETURNS: [&'static str; 4] = ["kept", "reset_failed", "full_total", "full_key"];

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "pool_checkouts",
            "Logins of pooled roles by whether a kept Postgres connection was reused (hit) or a new one logged in (miss); counted only while pooling is on",
            self.checkouts.clone(),
        );
        registry.register(
            "pool_returns",
            "Postgres connections of sessions that ended with Terminate, by what the pool did: kept, reset_failed (the reset errored or timed out: closed), full_total (pool_max_idle reached: closed), full_key (backend.pool_max_idle_per_key reached for its role, database and parameters: closed)",
            self.returns.clone(),
        );
        registry.register(
            "pool_idle",
            "Idle Postgres connections the pool keeps now (each holds a Postgres backend); clients never wait for the pool: at pool_max_idle it is exhausted, returned connections are closed and misses log in anew",
            self.idle.clone(),
        );
        registry.register(
            "pool_max_idle",
            "The most idle Postgres connections the pool keeps (backend.pool_max_idle_total; 0 when pooling is off)",
            self.max_idle.clone(),
        );
        for r in Self::CHECKOUTS {
            let _ = self.checkouts.get_or_create(&vec![("result", r.into())]);
        }
        for r in Self::RETURNS {
            let _ = self.returns.get_or_create(&vec![("result", r.into())]);
        }
    }

    /// A login of a pooled role: `hit` when a kept connection was reused.
    pub fn checkout(&self, hit: bool) {
        let r = if hit { "hit" } else { "miss" };
        self.checkouts
            .get_or_create(&vec![("result", r.into())])
            .inc();
    }

    /// A connection given back, by `result` (one of [`Self::RETURNS`]).
    pub fn returned(&self, result: &'static str) {
        self.returns
            .get_or_create(&vec![("result", result.into())])
            .inc();
    }

    /// Idle connections kept now.
    pub fn set_idle(&self, n: usize) {
        self.idle.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The pool's cap on idle connections (0 when it keeps none).
    pub fn set_max_idle(&self, n: usize) {
        self.max_idle.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics registered at zero, named with the prefix `teesql_sidecar_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("teesql_sidecar");
        let connections = Family::<OutcomeLabels, Counter>::default();
        let help = format!(
            "Client connections by outcome ({})",
            Outcome::ALL.map(Outcome::as_str).join(", ")
        );
        registry.register("connections", help, connections.clone());
        let handshake = Histogram::new(exponential_buckets(0.000_1, 2.0, 18));
        registry.register(
            "handshake_duration_seconds",
            "From accept to a logged-in session (TLS, authentication, verifier, Postgres login)",
            handshake.clone(),
        );
        let relayed = Family::<Labels, Counter>::default();
        registry.register(
            "relayed_bytes",
            "Bytes relayed, by direction (client_to_backend, backend_to_client)",
            relayed.clone(),
        );
        let verifier = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "verifier_duration_seconds",
            "Time for the verifier's decision on a client",
            verifier.clone(),
        );
        let verifier_errors = Counter::default();
        registry.register(
            "verifier_errors",
            "Verifier calls that failed or timed out (the client was refused)",
            verifier_errors.clone(),
        );
        let verifier_policy_mismatches = Counter::default();
        registry.register(
            "verifier_policy_mismatches",
            "Decisions not used because the verifier endpoint decided under another policy than expected (asked again of the next endpoint)",
            verifier_policy_mismatches.clone(),
        );
        let active = Gauge::default();
        registry.register("sessions", "Sessions relaying now", active.clone());
        let renewals = Family::<Labels, Counter>::default();
        registry.register(
            "certificate_renewals",
            "Server certificate renewals, by result (ok, failed)",
            Described(renewals.clone()),
        );
        let reports = Family::<Labels, Counter>::default();
        registry.register(
            "attestation_reports",
            "/attestation answers, by source (made: a new report; reused: one shared with other callers; failed: making one failed)",
            Described(reports.clone()),
        );
        let health_checks = Counter::default();
        registry.register(
            "health_checks",
            "Checks of Postgres, the verifier and the certificate made for /health (at most one a second; other callers share the last)",
            health_checks.clone(),
        );
        let http_refused = Family::<Labels, Counter>::default();
        registry.register(
            "http_refused",
            "HTTP connections closed at accept because the listener's connection limit was reached, by listener (admin, public)",
            Described(http_refused.clone()),
        );
        let revoked = Family::<Labels, Counter>::default();
        registry.register(
            "sessions_revoked",
            "Open sessions ended because a re-judging no longer admitted them, by reason code",
            Described(revoked.clone()),
        );
        let rejudged = Family::<Labels, Counter>::default();
        registry.register(
            "sessions_rejudged",
            "Open sessions judged again by the verifier, by result (kept: still admitted; revoked: ended; unavailable: no decision from the verifier, then kept or ended per revalidate_on_unavailable)",
            rejudged.clone(),
        );
        for r in ["kept", "revoked", "unavailable"] {
            let _ = rejudged.get_or_create(&vec![("result", r.into())]);
        }
        let pool = PoolMetrics::default();
        pool.register(&mut registry);
        Self {
            registry,
            rejudged,
            pool,
            revoked,
            health_checks,
            http_refused,
            connections,
            handshake,
            relayed,
            verifier,
            verifier_errors,
            verifier_policy_mismatches,
            active,
            renewals,
            reports,
        }
    }

    /// An open session ended by a re-judging, for reason `code` (a reason code of the new
    /// decision, or `role_not_granted`).
    pub fn session_revoked(&self, code: &str) {
        self.revoked
            .get_or_create(&vec![("reason", code.to_string())])
            .inc();
    }

    /// An open session judged again: `kept` (still admitted), `revoked` (ended) or
    /// `unavailable` (no decision).
    pub fn session_rejudged(&self, result: &'static str) {
        self.rejudged
            .get_or_create(&vec![("result", result.into())])
            .inc();
    }

    /// The backend pool's metrics, for [`crate::postgres::pool::BackendPool::with_metrics`].
    pub fn pool(&self) -> PoolMetrics {
        self.pool.clone()
    }

    /// An `/attestation` answer: `made` (a new report), `reused` (shared with a caller
    /// that made it), or `failed` (making one failed; callers sharing the failure are not
    /// counted again).
    pub fn attestation_report(&self, r: &'static str) {
        self.reports
            .get_or_create(&vec![("source", r.into())])
            .inc();
    }

    /// A /health check actually run (not a shared cached answer): `health_checks_total`.
    pub fn health_check(&self) {
        self.health_checks.inc();
    }

    /// An HTTP connection closed at accept, over `limits.http_max_connections`;
    /// `listener` is `admin` or `public`.
    pub fn http_refused(&self, listener: &'static str) {
        self.http_refused
            .get_or_create(&vec![("listener", listener.into())])
            .inc();
    }

    /// Count one client connection's end under `outcome` (`connections_total`).
    pub fn connection(&self, outcome: Outcome) {
        self.connections
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Connections counted under `outcome` so far.
    pub fn connections(&self, outcome: Outcome) -> u64 {
        self.connections
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    /// A successful handshake's time from accept to logged in, observed in seconds.
    pub fn handshake(&self, d: Duration) {
        self.handshake.observe(d.as_secs_f64());
    }

    /// Add a finished session's byte counts to `relayed_bytes_total`, by direction.
    pub fn relayed(&self, client_to_backend: u64, backend_to_client: u64) {
        self.relayed
            .get_or_create(&vec![("direction", "client_to_backend".into())])
            .inc_by(client_to_backend);
        self.relayed
            .get_or_create(&vec![("direction", "backend_to_client".into())])
            .inc_by(backend_to_client);
    }

    /// A verifier call's duration (seconds); `ok = false` (no decision: the call failed
    /// or timed out; a denial is ok) also counts a verifier error.
    pub fn verifier_call(&self, d: Duration, ok: bool) {
        self.verifier.observe(d.as_secs_f64());
        if !ok {
            self.verifier_errors.inc();
        }
    }

    /// The counter the verifier client counts policy mismatches on.
    pub fn verifier_policy_mismatches(&self) -> Counter {
        self.verifier_policy_mismatches.clone()
    }

    /// One more session relaying (the `sessions` gauge).
    pub fn session_started(&self) {
        self.active.inc();
    }

    /// One session fewer relaying (the `sessions` gauge).
    pub fn session_ended(&self) {
        self.active.dec();
    }

    /// A server certificate renewal, counted by `result` `ok` or `failed`.
    pub fn renewal(&self, ok: bool) {
        let r = if ok { "ok" } else { "failed" };
        self.renewals
            .get_or_create(&vec![("result", r.into())])
            .inc();
    }

    /// Every metric in the Prometheus text format, as `/metrics` serves it; empty if
    /// encoding fails.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// How a connection ended: the `outcome` label of `teesql_sidecar_connections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The handshake succeeded and a session started relaying.
    Session,
    /// Refused with `FATAL 28000 authentication_failed`: wrong secret, unknown role,
    /// verifier denial or outage, or a role not granted.
    AuthFailed,
    /// The TLS handshake failed.
    TlsFailed,
    /// A malformed or refused startup: bad packet, no user, replication, a refused
    /// parameter, data after SSLRequest, a request out of place inside TLS.
    ProtocolError,
    /// A plaintext StartupMessage, refused because TLS is required.
    PlaintextRefused,
    /// Authenticated, but the login to Postgres failed.
    BackendFailed,
    /// The (address, user) used up `limits.failed_auth_per_minute`, or the address its
    /// abandoned handshakes.
    RateLimited,
    /// The connection carried a CancelRequest (forwarded or ignored); not a failure.
    Cancel,
    /// No first packet within `limits.first_packet_timeout_secs`.
    FirstPacketTimeout,
    /// No TLS session within `limits.tls_handshake_timeout_secs`.
    TlsTimeout,
    /// No StartupMessage within `limits.startup_timeout_secs` after TLS.
    StartupTimeout,
    /// Not logged in within `limits.login_timeout_secs` of the StartupMessage.
    LoginTimeout,
    /// Refused at accept with 53300: `limits.max_connections` reached.
    TooMany,
    /// Refused with 53300: `limits.handshakes_per_address` in progress from the address.
    TooManyFromAddress,
    /// The client closed the connection during the handshake.
    Closed,
}

impl Outcome {
    /// Every outcome, in the order the metric's help text lists them.
    pub const ALL: [Outcome; 15] = [
        Self::Session,
        Self::AuthFailed,
        Self::TlsFailed,
        Self::ProtocolError,
        Self::PlaintextRefused,
        Self::BackendFailed,
        Self::RateLimited,
        Self::Cancel,
        Self::FirstPacketTimeout,
        Self::TlsTimeout,
        Self::StartupTimeout,
        Self::LoginTimeout,
        Self::TooMany,
        Self::TooManyFromAddress,
        Self::Closed,
    ];

    /// The label value: snake_case, e.g. `auth_failed`, `first_packet_timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::AuthFailed => "auth_failed",
            Self::TlsFailed => "tls_failed",
            Self::ProtocolError => "protocol_error",
            Self::PlaintextRefused => "plaintext_refused",
            Self::BackendFailed => "backend_failed",
            Self::RateLimited => "rate_limited",
            Self::Cancel => "cancel",
            Self::FirstPacketTimeout => "first_packet_timeout",
            Self::TlsTimeout => "tls_timeout",
            Self::StartupTimeout => "startup_timeout",
            Self::LoginTimeout => "login_timeout",
            Self::TooMany => "too_many",
            Self::TooManyFromAddress => "too_many_from_address",
            Self::Closed => "closed",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Labels of `teesql_sidecar_connections_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The `outcome` label, spelled by [`Outcome::as_str`].
    pub outcome: Outcome,
}

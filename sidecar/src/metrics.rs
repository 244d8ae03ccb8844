//! Prometheus metrics of the sidecar.

use std::time::Duration;

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
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
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
            renewals.clone(),
        );
        let reports = Family::<Labels, Counter>::default();
        registry.register(
            "attestation_reports",
            "/attestation answers, by source (made: a new report; reused: one shared with other callers; failed: making one failed)",
            reports.clone(),
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
            http_refused.clone(),
        );
        Self {
            registry,
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

    /// An `/attestation` answer: `made` (a new report), `reused` (shared with a caller
    /// that made it), or `failed` (making one failed; callers sharing the failure are not
    /// counted again).
    pub fn attestation_report(&self, r: &'static str) {
        self.reports
            .get_or_create(&vec![("source", r.into())])
            .inc();
    }

    pub fn health_check(&self) {
        self.health_checks.inc();
    }

    pub fn http_refused(&self, listener: &'static str) {
        self.http_refused
            .get_or_create(&vec![("listener", listener.into())])
            .inc();
    }

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

    pub fn handshake(&self, d: Duration) {
        self.handshake.observe(d.as_secs_f64());
    }

    pub fn relayed(&self, client_to_backend: u64, backend_to_client: u64) {
        self.relayed
            .get_or_create(&vec![("direction", "client_to_backend".into())])
            .inc_by(client_to_backend);
        self.relayed
            .get_or_create(&vec![("direction", "backend_to_client".into())])
            .inc_by(backend_to_client);
    }

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

    pub fn session_started(&self) {
        self.active.inc();
    }

    pub fn session_ended(&self) {
        self.active.dec();
    }

    pub fn renewal(&self, ok: bool) {
        let r = if ok { "ok" } else { "failed" };
        self.renewals
            .get_or_create(&vec![("result", r.into())])
            .inc();
    }

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
    Session,
    AuthFailed,
    TlsFailed,
    ProtocolError,
    PlaintextRefused,
    BackendFailed,
    RateLimited,
    Cancel,
    FirstPacketTimeout,
    TlsTimeout,
    StartupTimeout,
    LoginTimeout,
    TooMany,
    TooManyFromAddress,
    Closed,
}

impl Outcome {
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
    pub outcome: Outcome,
}

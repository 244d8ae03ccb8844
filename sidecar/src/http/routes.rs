//! HTTP on 8080: `/health`, `/attestation`, `/metrics`.
//!
//! `/attestation` answers with a fresh quote whose report data binds the state of
//! Postgres: `SHA-256(wal_lsn "|" controldata_hash "|" timestamp)` followed by 32 zero
//! bytes, where `controldata_hash` is the SHA-256 (hex) of
//! `row_to_json(pg_control_system())::text || "\n" || row_to_json(pg_control_checkpoint())::text`.
//! The JSON also carries the event log and VM configuration, so a verifier can replay
//! RTMR3 (`teesql-verifier`'s `VerifyReport`).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
pub use teesql_proto::report::PostgresState;
use teesql_proto::report::{AttestationReport, ReportTcbInfo, report_data};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::BackendAddr;
use crate::identity::GuestAgent;
use crate::pgwire;
use crate::postgres::login::BackendStream;
use crate::state::Shared;

/// What the admin endpoints need.
#[derive(Clone, Debug)]
pub struct Admin {
    /// The running sidecar's state: Postgres address, verifier client, metrics.
    pub shared: Arc<Shared>,
    /// The dstack guest agent `/attestation` gets its quotes from.
    pub agent: Arc<GuestAgent>,
    /// The last `/attestation` outcome and the second it was finished. Anyone can ask for
    /// one without logging in, and each costs a Postgres login and a quote, so reports are
    /// made one at a time and callers that arrive while one is made share it.
    pub last_report: Arc<tokio::sync::Mutex<Option<(u64, ReportOutcome)>>>,
    /// The last `/health` answer and when it was made: checks run at most once a second
    /// (each opens a connection to Postgres and asks the verifier), one at a time.
    last_health:
        Arc<tokio::sync::Mutex<Option<(std::time::Instant, StatusCode, serde_json::Value)>>>,
}

/// A report, or why none could be made (shared by the callers that waited for it).
type ReportOutcome = Result<AttestationReport, Arc<ReportError>>;

/// Why `/attestation` could not make a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The Postgres state could not be read.
    #[error(transparent)]
    Postgres(#[from] crate::postgres::admin::AdminError),
    /// The guest agent gave no quote or no `Info`.
    #[error(transparent)]
    Agent(#[from] crate::identity::AgentError),
}

/// Why Postgres is not taken to be alive (`/health`).
#[derive(Debug, thiserror::Error)]
enum PostgresDown {
    /// Connecting failed, or it answered the SSLRequest with something else.
    #[error("unreachable at {addr}: {source}")]
    Unreachable {
        /// The address, as [`BackendAddr::describe`] spells it.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No answer within the probe's time.
    #[error("no answer from {addr} within 2 s")]
    Silent {
        /// The address, as [`BackendAddr::describe`] spells it.
        addr: String,
    },
}

impl Admin {
    /// With no `/attestation` report or `/health` answer cached yet.
    pub fn new(shared: Arc<Shared>, agent: Arc<GuestAgent>) -> Self {
        Self {
            shared,
            agent,
            last_report: Arc::default(),
            last_health: Arc::default(),
        }
    }
}

/// The operator's endpoints: `/health` (= `/health/ready`: Postgres and the verifier
/// reachable, the server certificate valid; 503 otherwise), `/health/live` (the process
/// answers, for a liveness probe that must not restart the sidecar because the verifier
/// is down), `/attestation`, `/metrics`, `/sessions`.
pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(health))
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/attestation", get(attestation))
        .route("/metrics", get(metrics))
        .route("/sessions", get(sessions))
        .with_state(admin)
}

/// What anyone may ask: `/attestation` only. `/health` names internal addresses and
/// errors, `/metrics` the traffic; they stay on the (loopback) admin listener.
pub fn public_router(admin: Admin) -> Router {
    Router::new()
        .route("/attestation", get(attestation))
        .with_state(admin)
}

/// How long a `/health` answer is reused.
const HEALTH_REFRESH: Duration = Duration::from_secs(1);

async fn health(State(a): State<Admin>) -> Response {
    let mut last = a.last_health.lock().await;
    let (status, body) = match last.as_ref() {
        Some((at, status, body)) if at.elapsed() < HEALTH_REFRESH => (*status, body.clone()),
        _ => {
            let (status, body) = check_health(&a).await;
            a.shared.metrics.health_check();
            *last = Some((std::time::Instant::now(), status, body.clone()));
            (status, body)
        }
    };
    drop(last);
    (status, axum::Json(body)).into_response()
}

async fn check_health(a: &Admin) -> (StatusCode, serde_json::Value) {
    let (pg, verifier) = tokio::join!(
        postgres_alive(&a.shared.config.backend.addr),
        a.shared.verifier.check_health()
    );
    let pg = pg.map_err(|e| e.to_string());
    let now = teesql_appraisal::Clock::System.now();
    let cert = a.shared.cert.current();
    let identity = if cert.not_after > now {
        Ok(())
    } else {
        Err(format!("server certificate expired at {}", cert.not_after))
    };
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    let verifier = verifier.map_err(|e| e.to_string());
    let healthy = pg.is_ok() && verifier.is_ok() && identity.is_ok();
    let body = json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "postgres": show(&pg),
        "verifier": show(&verifier),
        "identity": show(&identity),
        "sessions_cancellable": a.shared.cancels.len(),
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// Postgres accepts connections: it answers an SSLRequest.
async fn postgres_alive(addr: &BackendAddr) -> Result<(), PostgresDown> {
    let probe = async {
        let mut s = BackendStream::connect(addr).await?;
        s.write_all(&pgwire::ssl_request()).await?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await?;
        match b[0] {
            b'S' | b'N' => Ok(()),
            other => Err(std::io::Error::other(format!(
                "unexpected answer {:?}",
                other as char
            ))),
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(PostgresDown::Unreachable {
            addr: addr.describe(),
            source,
        }),
        Err(_) => Err(PostgresDown::Silent {
            addr: addr.describe(),
        }),
    }
}

/// Every live session: who, which role and tenant, what attested it, under which policy.
async fn sessions(State(a): State<Admin>) -> Response {
    axum::Json(json!({"sessions": a.shared.sessions.list()})).into_response()
}

async fn metrics(State(a): State<Admin>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        a.shared.metrics.encode(),
    )
}

async fn attestation(State(a): State<Admin>) -> Response {
    let asked = teesql_appraisal::Clock::System.now();
    let mut last = a.last_report.lock().await;
    // A report finished in the second this caller asked, or later (while it waited for the
    // lock), answers it too. Failures are shared the same way, so a queue of callers does
    // not retry a Postgres that is down one connect timeout after another.
    let (reused, outcome) = match last.as_ref() {
        Some((done, outcome)) if *done >= asked => (true, outcome.clone()),
        _ => {
            let outcome = build_report(&a, teesql_appraisal::Clock::System.now())
                .await
                .map_err(Arc::new);
            *last = Some((teesql_appraisal::Clock::System.now(), outcome.clone()));
            (false, outcome)
        }
    };
    drop(last);
    match outcome {
        Ok(body) => {
            let source = if reused { "reused" } else { "made" };
            a.shared.metrics.attestation_report(source);
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        Err(e) => {
            if !reused {
                a.shared.metrics.attestation_report("failed");
                tracing::warn!(error = %e, "/attestation failed");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({ "error": e.to_string() })),
            )
                .into_response()
        }
    }
}

async fn build_report(a: &Admin, timestamp: u64) -> Result<AttestationReport, ReportError> {
    let state = crate::postgres::admin::postgres_state(&a.shared.config.backend).await?;
    let quote = a.agent.quote(report_data(&state, timestamp)).await?;
    let info = a.agent.info().await?;
    Ok(AttestationReport {
        app_id: info.app_id,
        compose_hash: info.compose_hash,
        instance_id: info.instance_id,
        quote: quote.quote,
        tcb_info: ReportTcbInfo {
            mrtd: info.tcb_info.mrtd,
            rtmr0: info.tcb_info.rtmr0,
            rtmr1: info.tcb_info.rtmr1,
            rtmr2: info.tcb_info.rtmr2,
            rtmr3: info.tcb_info.rtmr3,
        },
        postgres_state: state,
        timestamp,
        event_log: quote.event_log,
        vm_config: quote.vm_config,
    })
}

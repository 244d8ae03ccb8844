//! The Postgres port's accept loop: the shared one ([`crate::accept`]) with the
//! connection limit of `limits.max_connections` (a client over it gets `53300` at once)
//! and the shutdown grace of `limits.shutdown_grace_secs`; and the follower of the
//! verifier's policy, which has open sessions judged again when it changes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::accept::{self, AcceptLimits};
use crate::frontend::session::{self, HandshakeError, Outcome, Shared};

/// Accept and serve until `shutdown` completes; then drain for up to the grace period.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let limits = AcceptLimits {
        max_connections: shared.config.limits.max_connections,
        // Handshakes per address are capped in the session (`limits.handshakes_per_address`).
        max_per_address: None,
        grace: shared.config.limits.shutdown_grace,
    };
    let refusing = shared.clone();
    accept::serve(
        listener,
        limits,
        shutdown,
        |stream, peer| session::handle(shared.clone(), stream, peer),
        move |stream, peer, _| {
            refusing.metrics.connection(Outcome::TooMany);
            tracing::warn!(client.addr = %peer, limit = limits.max_connections, "connection limit reached; refusing");
            session::refuse_plain(stream, HandshakeError::TooManyConnections)
        },
    )
    .await;
}

/// Re-judge every live session when the verifier's policy changes or new collateral
/// changed a platform's TCB status (its `WatchPolicies` stream, from the first endpoint
/// that gives one; a verifier restart or another endpoint is compared afresh), and every
/// [`super::live::POLL_EVERY`] when no stream can be had. Runs until the task is aborted.
pub async fn follow_policies(shared: Arc<Shared>) {
    let mut known: Option<(String, u64)> = None;
    let mut backoff = Duration::from_millis(500);
    loop {
        match shared.verifier.watch_policies().await {
            Ok(mut stream) => {
                backoff = Duration::from_millis(500);
                while let Ok(Some(change)) = stream.message().await {
                    let now = (change.policy_hash.clone(), change.tcb_generation);
                    let changed = known.as_ref().is_some_and(|k| *k != now);
                    known = Some(now);
                    if changed {
                        tracing::info!(policy.hash = %change.policy_hash, tcb.generation = change.tcb_generation, sessions = shared.sessions.len(), "the verifier's policy or TCB facts changed; re-judging open sessions");
                        shared.sessions.rejudge(&shared.judge()).await;
                    }
                }
                // The stream ended (a verifier restart, a failover): a change may have
                // been missed meanwhile, so the next first message is compared.
            }
            Err(e) => {
                tracing::debug!(error = %e, "no policy stream; re-judging on a timer");
                tokio::time::sleep(super::live::POLL_EVERY.min(backoff * 60)).await;
                if !shared.sessions.is_empty() {
                    shared.sessions.rejudge(&shared.judge()).await;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

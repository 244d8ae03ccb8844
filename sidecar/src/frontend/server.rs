//! The accept loop: a connection limit (a permit per connection, held for its life),
//! graceful shutdown (stop accepting, let sessions drain up to a grace period).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::frontend::session::{self, HandshakeError, Outcome, Shared};

/// Accept and serve until `shutdown` completes; then drain for up to `grace`.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let max = shared.config.limits.max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished sessions so the set does not grow.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    shared.metrics.connection(Outcome::TooMany);
                    tracing::warn!(client.addr = %peer, limit = max, "connection limit reached; refusing");
                    tokio::spawn(session::refuse_plain(stream, HandshakeError::TooManyConnections));
                    continue;
                };
                let shared = shared.clone();
                sessions.spawn(async move {
                    session::handle(shared, stream, peer).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    let grace = shared.config.limits.shutdown_grace;
    let live = sessions.len();
    if live > 0 {
        tracing::info!(sessions = live, grace = ?grace, "stopped accepting; draining sessions");
    }
    let drained = tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "grace period over; closing remaining sessions"
        );
        sessions.shutdown().await;
    }
}

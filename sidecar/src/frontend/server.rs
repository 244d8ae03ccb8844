//! The Postgres port's accept loop: the shared one ([`crate::accept`]) with the
//! connection limit of `limits.max_connections` (a client over it gets `53300` at once)
//! and the shutdown grace of `limits.shutdown_grace_secs`.

use std::future::Future;
use std::sync::Arc;

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

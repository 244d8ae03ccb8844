//! The sidecar's HTTP listeners, hardened for unauthenticated callers: a connection cap
//! (a permit per connection) and a smaller one per client address (so one address
//! trickling requests cannot hold every slot), a deadline to read request headers, a cap
//! on a connection's whole life, and a drained shutdown. HTTP/1.1 only.

pub mod routes;

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::accept::{self, AcceptLimits, Gate, Refused};

pub use crate::config::HttpLimits;

/// Serve `app` on `listener` until `shutdown`; then let open requests finish for a
/// moment and close the rest. `on_refused` is told of each connection refused at a cap.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    on_refused: impl Fn() + Send + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let accept_limits = AcceptLimits {
        max_connections: limits.max_connections,
        max_per_address: Some(limits.max_per_address),
        grace: Duration::from_secs(2),
    };
    accept::serve(
        listener,
        Gate::new(accept_limits),
        shutdown,
        |stream, peer| {
            let service = TowerToHyperService::new(app.clone());
            async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .serve_connection(TokioIo::new(stream), service);
                if tokio::time::timeout(limits.connection_timeout, conn)
                    .await
                    .is_err()
                {
                    tracing::debug!(client.addr = %peer, "HTTP connection lived past its limit; closed");
                }
            }
        },
        |stream, peer, why| {
            on_refused();
            let limit = match why {
                Refused::Full => limits.max_connections,
                Refused::AddressFull => limits.max_per_address,
            };
            tracing::debug!(client.addr = %peer, limit, reason = ?why, "HTTP connection limit reached; closed");
            drop(stream);
            std::future::ready(())
        },
    )
    .await;
}

//! The sidecar's HTTP listeners, hardened for unauthenticated callers: a connection cap
//! (a permit per connection) and a smaller one per client address (so one address
//! trickling requests cannot hold every slot), a deadline to read request headers, a cap
//! on a connection's whole life, and a drained shutdown. HTTP/1.1 only.

pub mod routes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use crate::config::HttpLimits;

/// Serve `app` on `listener` until `shutdown`; then let open requests finish for a
/// moment and close the rest. `on_refused` is told of each connection refused at the cap.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    on_refused: impl Fn() + Send + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = crate::frontend::ratelimit::AddressSlots::new(limits.max_per_address);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = per_address.take(peer.ip()) else {
                    on_refused();
                    tracing::debug!(client.addr = %peer, limit = limits.max_per_address, "HTTP connection limit of the address reached; closed");
                    drop(stream);
                    continue;
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    on_refused();
                    tracing::debug!(client.addr = %peer, limit = limits.max_connections, "HTTP connection limit reached; closed");
                    drop(stream);
                    continue;
                };
                let service = TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let _permit = (permit, slot);
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
                });
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.shutdown().await;
}

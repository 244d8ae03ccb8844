//! The one accept loop of every listener (the Postgres port, the HTTP listeners, the
//! forwarder): a cap on connections open at once (a permit held for the connection's
//! life), optionally a smaller one per client address, and a drained shutdown (stop
//! accepting, let connections finish for a grace period, then close them).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::frontend::ratelimit::AddressSlots;

/// A listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct AcceptLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64); `None`: no cap of
    /// its own.
    pub max_per_address: Option<usize>,
    /// After shutdown, how long open connections may take to finish.
    pub grace: Duration,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener's cap.
    Full,
    /// The client address's share.
    AddressFull,
}

/// A listener's caps, shareable by several accept loops on one port (one per serving
/// thread): the connections open at once and each address's share count across all of them.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    per_address: Option<AddressSlots>,
    grace: Duration,
}

impl Gate {
    /// Caps of `limits`, none taken yet.
    pub fn new(limits: AcceptLimits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_address: limits.max_per_address.map(AddressSlots::new),
            grace: limits.grace,
        }
    }
}

/// Accept on `listener` until `shutdown` completes, serving each connection with
/// `serve` in a task of its own; a connection over one of `gate`'s caps (which other
/// accept loops may share) goes to `refuse` instead (which may answer it; it holds no
/// permit). Then drain for up to the gate's grace period.
pub async fn serve<S, SF, R, RF>(
    listener: TcpListener,
    gate: Gate,
    shutdown: impl Future<Output = ()>,
    serve: S,
    refuse: R,
) where
    S: Fn(TcpStream, SocketAddr) -> SF,
    SF: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream, SocketAddr, Refused) -> RF,
    RF: Future<Output = ()> + Send + 'static,
{
    let Gate {
        permits,
        per_address,
        grace,
    } = gate;
    let mut open = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connections so the set does not grow.
            Some(_) = open.join_next(), if !open.is_empty() => {}
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
                let slot = match &per_address {
                    None => None,
                    Some(slots) => match slots.take(peer.ip()) {
                        Some(slot) => Some(slot),
                        None => {
                            tokio::spawn(refuse(stream, peer, Refused::AddressFull));
                            continue;
                        }
                    },
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tokio::spawn(refuse(stream, peer, Refused::Full));
                    continue;
                };
                // Boxed: awaiting a future captured by an async block keeps two copies
                // of it in the task (the capture and the awaited one) for the
                // connection's life.
                let connection = Box::pin(serve(stream, peer));
                open.spawn(async move {
                    connection.await;
                    drop((permit, slot));
                });
            }
        }
    }
    drop(listener);
    let live = open.len();
    if live > 0 {
        tracing::info!(connections = live, grace = ?grace, "stopped accepting; draining");
    }
    let drained =
        tokio::time::timeout(grace, async { while open.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = open.len(),
            "grace period over; closing the remaining connections"
        );
        open.shutdown().await;
    }
}

//! The Postgres port's accept loop: the shared one ([`crate::accept`]) with the
//! connection limit of `limits.max_connections` (a client over it gets `53300` at once)
//! and the shutdown grace of `limits.shutdown_grace_secs`; and the follower of the
//! verifier's policy, which has open sessions judged again when it changes.
//!
//! With `listen.postgres_threads` set, the port is served by that many threads, each with
//! a listener of its own on the same address (`SO_REUSEPORT`: the kernel spreads new
//! connections over them) and a single-threaded scheduler: a connection is accepted,
//! verified and relayed on one thread and never moves, so a relayed query wakes one
//! thread, not a stealing worker pool. The caps stay those of the whole port.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

use crate::accept::{self, AcceptLimits, Gate};
use crate::frontend::session::{self, HandshakeError, Outcome, Shared};

/// Bind the Postgres port; with `reuse_port` (serving threads), so that each thread can
/// bind a listener of its own beside it.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accept and serve until `shutdown` completes; then drain for up to the grace period.
/// With `listen.postgres_threads` above 0, `listener` must have been bound by [`bind`]
/// with `reuse_port`; an error means the serving threads could not all start (none
/// serves then).
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let limits = AcceptLimits {
        max_connections: shared.config.limits.max_connections,
        // Handshakes per address are capped in the session (`limits.handshakes_per_address`).
        max_per_address: None,
        grace: shared.config.limits.shutdown_grace,
    };
    let gate = Gate::new(limits);
    let threads = shared.config.postgres_threads;
    if threads == 0 {
        accept_loop(shared, listener, gate, shutdown).await;
        return Ok(());
    }
    let more = more_listeners(&listener, threads).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "a listener per serving thread: {e} (the port must be bound with SO_REUSEPORT)"
            ),
        )
    })?;
    let mut listeners = vec![listener.into_std()?];
    listeners.extend(more);
    // Two signals: `stop` (stop accepting, drain) and `exit`, sent once every thread has
    // drained. A Postgres connection kept for reuse, or the identity recorder's client,
    // belongs to the thread that opened it and may be in use by a session on another: no
    // scheduler may go while any thread still drains.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (exit_tx, exit_rx) = tokio::sync::watch::channel(false);
    let mut started = Vec::with_capacity(threads);
    let mut drained = Vec::with_capacity(threads);
    let mut joins = Vec::with_capacity(threads);
    let mut failure = None;
    for (i, listener) in listeners.into_iter().enumerate() {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let (shared, gate) = (shared.clone(), gate.clone());
        let (mut stop, mut exit) = (stop_rx.clone(), exit_rx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("postgres-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    accept_loop(shared, listener, gate, stopped).await;
                    let _ = drained_tx.send(());
                    let _ = exit.wait_for(|e| *e).await;
                });
                // Tasks a session left behind end with the scheduler.
                drop(runtime);
            });
        match spawned {
            Ok(join) => {
                started.push(ready_rx);
                drained.push(drained_rx);
                joins.push(join);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // The port is served only when every thread serves.
    for (i, ready) in started.into_iter().enumerate() {
        let why = match ready.await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::other("it ended while starting"),
        };
        failure.get_or_insert(std::io::Error::new(
            why.kind(),
            format!("serving thread {i}: {why}"),
        ));
    }
    if failure.is_none() {
        shutdown.await;
    }
    let _ = stop_tx.send(true);
    for rx in drained {
        let _ = rx.await;
    }
    let _ = exit_tx.send(true);
    // Joined, so that none outlives the sidecar's `run`.
    let _ = tokio::task::spawn_blocking(move || {
        for join in joins {
            let _ = join.join();
        }
    })
    .await;
    failure.map_or(Ok(()), Err)
}

/// `threads - 1` more listeners on `listener`'s address, as std listeners to be
/// registered with each thread's scheduler.
fn more_listeners(
    listener: &TcpListener,
    threads: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let addr = listener.local_addr()?;
    (1..threads).map(|_| bind(addr, true)?.into_std()).collect()
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    gate: Gate,
    shutdown: impl Future<Output = ()>,
) {
    let refusing = shared.clone();
    let limit = shared.config.limits.max_connections;
    accept::serve(
        listener,
        gate,
        shutdown,
        |stream, peer| session::handle(shared.clone(), stream, peer),
        move |stream, peer, _| {
            refusing.metrics.connection(Outcome::TooMany);
            tracing::warn!(client.addr = %peer, limit, "connection limit reached; refusing");
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

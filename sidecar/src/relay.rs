//! After login the sidecar only moves bytes: both directions, large buffers, no
//! per-message parsing, half-close passed on, an optional idle timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffer per direction.
pub const BUFFER: usize = 64 * 1024;

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    pub client_to_backend: u64,
    pub backend_to_client: u64,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed (or one closed and the other followed).
    Closed(Relayed),
    /// Nothing moved for the idle timeout.
    Idle(Relayed),
    /// A read or write failed (e.g. a reset).
    Error(std::io::Error, Relayed),
}

/// Relay until both sides are done, or the idle timeout passes with no traffic.
pub async fn relay<C, B>(client: C, backend: B, idle: Option<Duration>) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let up = Arc::new(AtomicU64::new(0));
    let down = Arc::new(AtomicU64::new(0));
    let mut client = Metered::new(client, up.clone(), activity.clone(), started);
    let mut backend = Metered::new(backend, down.clone(), activity.clone(), started);
    let counts = |up: &AtomicU64, down: &AtomicU64| Relayed {
        client_to_backend: up.load(Ordering::Relaxed),
        backend_to_client: down.load(Ordering::Relaxed),
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, BUFFER, BUFFER);
    let Some(idle) = idle else {
        return match copy.await {
            Ok(_) => RelayEnd::Closed(counts(&up, &down)),
            Err(e) => RelayEnd::Error(e, counts(&up, &down)),
        };
    };
    tokio::pin!(copy);
    loop {
        let last = Duration::from_millis(activity.load(Ordering::Relaxed));
        let quiet = started.elapsed().saturating_sub(last);
        let wait = idle.saturating_sub(quiet);
        if wait.is_zero() {
            return RelayEnd::Idle(counts(&up, &down));
        }
        tokio::select! {
            res = &mut copy => {
                return match res {
                    Ok(_) => RelayEnd::Closed(counts(&up, &down)),
                    Err(e) => RelayEnd::Error(e, counts(&up, &down)),
                };
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Counts bytes read from a stream and notes when anything moved.
struct Metered<S> {
    inner: S,
    count: Arc<AtomicU64>,
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl<S> Metered<S> {
    fn new(inner: S, count: Arc<AtomicU64>, activity: Arc<AtomicU64>, started: Instant) -> Self {
        Self {
            inner,
            count,
            activity,
            started,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.count.fetch_add(n as u64, Ordering::Relaxed);
            let now = self.started.elapsed().as_millis() as u64;
            self.activity.store(now, Ordering::Relaxed);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_passes_half_close() {
        let (client_app, client_side) = tokio::io::duplex(1024);
        let (backend_side, backend_app) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(client_side, backend_side, None));
        let (mut c, mut b) = (client_app, backend_app);
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // The client is done sending; the backend still answers.
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(b.read_to_end(&mut rest).await.unwrap(), 0);
        b.write_all(b"pong!").await.unwrap();
        b.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong!");
        match task.await.unwrap() {
            RelayEnd::Closed(r) => assert_eq!(
                r,
                Relayed {
                    client_to_backend: 4,
                    backend_to_client: 5
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_end() {
        let (_client_app, client_side) = tokio::io::duplex(64);
        let (backend_side, _backend_app) = tokio::io::duplex(64);
        let end = relay(client_side, backend_side, Some(Duration::from_secs(5))).await;
        assert!(matches!(end, RelayEnd::Idle(_)), "{end:?}");
    }
}

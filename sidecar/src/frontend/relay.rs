//! After login the sidecar only moves bytes, both ways, until either side closes; half
//! close is passed on, and an optional idle timeout ends quiet sessions.
//!
//! Messages are not parsed. When Postgres connections are reused (see `pool`), the relay
//! follows message boundaries (5-byte headers, nothing inside but ReadyForQuery's status
//! byte), to catch the client's Terminate, and to tell whether the connection is quiet at
//! that moment: every query, Sync and function call the client sent has had its
//! ReadyForQuery, no extended-protocol message waits for a Sync, and the last status was
//! idle. Only a connection that is quiet then may be reset and kept for another client.
//! Everything else is copied as it comes, through one buffer per direction.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// Buffer per direction while data moves. It is taken when a read is attempted and given
/// back as soon as a read finds nothing and nothing is held: an idle session holds no
/// relay buffer at all, and the allocation is not zeroed (reads fill it as they go).
pub const BUFFER: usize = 32 * 1024;

/// Bytes moved so far each way, readable while the relay runs (`GET /sessions`).
#[derive(Debug, Default)]
pub struct Meter {
    /// Bytes read from the client for Postgres.
    pub up: AtomicU64,
    /// Bytes read from Postgres for the client.
    pub down: AtomicU64,
}

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes read from the client for Postgres (for `forward`: from the local driver
    /// for the sidecar).
    pub client_to_backend: u64,
    /// Bytes read from Postgres (for `forward`: the sidecar) for the client.
    pub backend_to_client: u64,
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both sides closed (or one closed and the other followed).
    Closed(Relayed),
    /// The client sent Terminate at a message boundary; it was not passed on, so the
    /// Postgres connection is still logged in and, when `quiet`, may be reset and reused.
    Terminated {
        /// Bytes read each way, the caught Terminate's 5 bytes included.
        relayed: Relayed,
        /// Whether every request had its answer passed on and Postgres' last
        /// ReadyForQuery status was idle (`I`): only then may the connection be reused.
        quiet: bool,
    },
    /// Nothing moved for the idle timeout.
    Idle(Relayed),
    /// A read or write failed (e.g. a reset).
    Error(std::io::Error, Relayed),
}

/// Relay until both sides are done, the client terminates (when `catch_terminate`), or
/// the idle timeout passes with no traffic.
pub async fn relay<C, B>(
    client: &mut C,
    backend: &mut B,
    idle: Option<Duration>,
    catch_terminate: bool,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_metered(client, backend, idle, catch_terminate, None).await
}

/// [`relay`], counting the bytes moved on `meter` as they move.
pub async fn relay_metered<C, B>(
    client: &mut C,
    backend: &mut B,
    idle: Option<Duration>,
    catch_terminate: bool,
    meter: Option<Arc<Meter>>,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let mut up = Direction::new(catch_terminate.then(|| Framing::new(Side::Client)));
    let mut down = Direction::new(catch_terminate.then(|| Framing::new(Side::Server)));
    up.meter = meter.clone().map(|m| (m, true));
    down.meter = meter.map(|m| (m, false));
    let copy = Bidirectional {
        client,
        backend,
        up,
        down,
        up_phase: Phase::Copying,
        down_phase: Phase::Copying,
        activity: activity.clone(),
        started,
    };
    let Some(idle) = idle else {
        return copy.await;
    };
    let mut fut = std::pin::pin!(copy);
    loop {
        let last = Duration::from_millis(activity.load(Ordering::Relaxed));
        let quiet = started.elapsed().saturating_sub(last);
        let wait = idle.saturating_sub(quiet);
        if wait.is_zero() {
            return RelayEnd::Idle(Relayed::default());
        }
        tokio::select! {
            end = &mut fut => return end,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Whose messages a direction carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The client's: Terminate is caught; queries, Syncs and function calls counted.
    Client,
    /// Postgres': ReadyForQuery counted, with its last status.
    Server,
}

/// Message boundaries of a stream: enough to see a Terminate ('X', length 4) and to count
/// what asks for, and what is, a ReadyForQuery.
#[derive(Debug)]
struct Framing {
    side: Side,
    /// Body bytes of the current message still to pass.
    remaining: u64,
    /// The stream stopped looking like the protocol: stop following it.
    lost: bool,
    /// Client: Query, Sync and FunctionCall messages sent (each gets one ReadyForQuery).
    asked: u64,
    /// Client: an extended-protocol message since the last Sync.
    unsynced: bool,
    /// Server: ReadyForQuery messages sent.
    answered: u64,
    /// Server: the last ReadyForQuery's status (`I`, `T`, `E`).
    status: u8,
}

impl Framing {
    fn new(side: Side) -> Self {
        Self {
            side,
            remaining: 0,
            lost: false,
            asked: 0,
            unsynced: false,
            answered: 0,
            status: b'I',
        }
    }
}

/// One direction's buffer and state.
#[derive(Debug)]
struct Direction {
    buf: BytesMut,
    /// Bytes `[pos, scanned)` are ready to write; `[scanned, cap)` are held back (a
    /// message header that may be a Terminate, not yet complete).
    pos: usize,
    scanned: usize,
    cap: usize,
    read_done: bool,
    terminated: bool,
    need_flush: bool,
    amount: u64,
    framing: Option<Framing>,
    /// Where the bytes read are counted live, and whether this is the client's way.
    meter: Option<(Arc<Meter>, bool)>,
}

impl Direction {
    fn new(framing: Option<Framing>) -> Self {
        Self {
            buf: BytesMut::new(),
            pos: 0,
            scanned: 0,
            cap: 0,
            read_done: false,
            terminated: false,
            need_flush: false,
            amount: 0,
            framing,
            meter: None,
        }
    }

    /// Advance `scanned` over the bytes read so far, stopping at a Terminate.
    fn scan(&mut self) {
        let Some(f) = self.framing.as_mut().filter(|f| !f.lost) else {
            self.scanned = self.cap;
            return;
        };
        while self.scanned < self.cap {
            if f.remaining > 0 {
                let take = f.remaining.min((self.cap - self.scanned) as u64);
                f.remaining -= take;
                self.scanned += take as usize;
                continue;
            }
            if self.cap - self.scanned < 5 {
                return; // a header not yet whole: hold it back
            }
            let h = &self.buf[self.scanned..self.scanned + 5];
            let (tag, len) = (
                h[0],
                u64::from(u32::from_be_bytes([h[1], h[2], h[3], h[4]])),
            );
            if f.side == Side::Client && tag == b'X' && len == 4 {
                self.terminated = true;
                return;
            }
            if len < 4 {
                f.lost = true;
                self.scanned = self.cap;
                return;
            }
            match (f.side, tag) {
                (Side::Client, b'Q' | b'F') => f.asked += 1,
                (Side::Client, b'S') => {
                    f.asked += 1;
                    f.unsynced = false;
                }
                (Side::Client, b'P' | b'B' | b'E' | b'D' | b'C' | b'H') => f.unsynced = true,
                (Side::Server, b'Z') if len == 5 => {
                    // The status byte: hold the header back until it is here too.
                    let Some(&status) = self.buf.get(self.scanned + 5) else {
                        return;
                    };
                    f.answered += 1;
                    f.status = status;
                }
                _ => {}
            }
            f.remaining = len - 4;
            self.scanned += 5;
        }
    }

    /// Copy from `r` to `w` until reading is over (EOF or Terminate) and all is written.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        activity: &AtomicU64,
        started: Instant,
    ) -> Poll<std::io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.scanned && !self.read_done && !self.terminated {
                // Keep held-back header bytes at the front; read after them.
                if self.pos > 0 {
                    let _written = self.buf.split_to(self.pos);
                    self.cap -= self.pos;
                    self.scanned -= self.pos;
                    self.pos = 0;
                }
                if self.buf.capacity() < BUFFER {
                    self.buf.reserve(BUFFER - self.buf.len());
                }
                match tokio_util::io::poll_read_buf(r.as_mut(), cx, &mut self.buf) {
                    Poll::Ready(Ok(n)) => {
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.cap += n;
                            self.amount += n as u64;
                            if let Some((m, up)) = &self.meter {
                                let way = if *up { &m.up } else { &m.down };
                                way.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                            self.scan();
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        if self.buf.is_empty() {
                            // Nothing held: give the buffer back while the peer is quiet.
                            self.buf = BytesMut::new();
                        }
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.scanned {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.scanned]))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            if self.read_done || self.terminated {
                ready!(w.as_mut().poll_flush(cx))?;
                self.need_flush = false;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Copying,
    ShuttingDown,
    Done,
}

struct Bidirectional<'a, C, B> {
    client: &'a mut C,
    backend: &'a mut B,
    up: Direction,
    down: Direction,
    up_phase: Phase,
    down_phase: Phase,
    activity: Arc<AtomicU64>,
    started: Instant,
}

impl<C, B> Bidirectional<'_, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// At the client's Terminate: every request of the client has been answered, the
    /// answers are all passed on, and Postgres was idle (not in a transaction) after them.
    fn quiet(&self) -> bool {
        let (Some(up), Some(down)) = (&self.up.framing, &self.down.framing) else {
            return false;
        };
        !up.lost
            && !down.lost
            && !up.unsynced
            && up.asked == down.answered
            && down.status == b'I'
            && down.remaining == 0
            && self.down.pos == self.down.cap
    }

    fn counts(&self) -> Relayed {
        Relayed {
            client_to_backend: self.up.amount,
            backend_to_client: self.down.amount,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        loop {
            let mut progressed = false;
            if self.up_phase == Phase::Copying {
                match self.up.poll_copy(
                    cx,
                    Pin::new(&mut *self.client),
                    Pin::new(&mut *self.backend),
                    &self.activity,
                    self.started,
                ) {
                    // The client's Terminate is kept: the Postgres connection lives on.
                    Poll::Ready(Ok(())) if self.up.terminated => {
                        return Poll::Ready(RelayEnd::Terminated {
                            relayed: self.counts(),
                            quiet: self.quiet(),
                        });
                    }
                    Poll::Ready(Ok(())) => {
                        self.up_phase = Phase::ShuttingDown;
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(RelayEnd::Error(e, self.counts())),
                    Poll::Pending => {}
                }
            }
            if self.up_phase == Phase::ShuttingDown
                && Pin::new(&mut *self.backend).poll_shutdown(cx).is_ready()
            {
                self.up_phase = Phase::Done;
                progressed = true;
            }
            if self.down_phase == Phase::Copying {
                match self.down.poll_copy(
                    cx,
                    Pin::new(&mut *self.backend),
                    Pin::new(&mut *self.client),
                    &self.activity,
                    self.started,
                ) {
                    Poll::Ready(Ok(())) => {
                        self.down_phase = Phase::ShuttingDown;
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(RelayEnd::Error(e, self.counts())),
                    Poll::Pending => {}
                }
            }
            if self.down_phase == Phase::ShuttingDown
                && Pin::new(&mut *self.client).poll_shutdown(cx).is_ready()
            {
                self.down_phase = Phase::Done;
                progressed = true;
            }
            if self.up_phase == Phase::Done && self.down_phase == Phase::Done {
                return Poll::Ready(RelayEnd::Closed(self.counts()));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

impl<C, B> Future for Bidirectional<'_, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = RelayEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        self.get_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A direction that has passed on everything and finds nothing more to read gives its
    /// buffer back; one holding back part of a header keeps it.
    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (mut peer, mut r) = tokio::io::duplex(64 * 1024);
        let (mut w, mut sink) = tokio::io::duplex(64 * 1024);
        let activity = AtomicU64::new(0);
        let mut cx = Context::from_waker(std::task::Waker::noop());

        peer.write_all(b"Q\0\0\0\x05;").await.unwrap();
        let mut d = Direction::new(Some(Framing::new(Side::Client)));
        let polled = d.poll_copy(
            &mut cx,
            Pin::new(&mut r),
            Pin::new(&mut w),
            &activity,
            Instant::now(),
        );
        assert!(polled.is_pending());
        assert_eq!(d.buf.capacity(), 0, "an idle direction kept its buffer");
        let mut got = [0u8; 6];
        sink.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"Q\0\0\0\x05;");

        // Three bytes of the next header: held back, so the buffer stays.
        peer.write_all(b"X\0\0").await.unwrap();
        let polled = d.poll_copy(
            &mut cx,
            Pin::new(&mut r),
            Pin::new(&mut w),
            &activity,
            Instant::now(),
        );
        assert!(polled.is_pending());
        assert!(d.buf.capacity() >= 3);
        // The rest of a Terminate: caught, not passed on.
        peer.write_all(b"\0\x04").await.unwrap();
        let polled = d.poll_copy(
            &mut cx,
            Pin::new(&mut r),
            Pin::new(&mut w),
            &activity,
            Instant::now(),
        );
        assert!(matches!(polled, Poll::Ready(Ok(()))));
        assert!(d.terminated);
    }

    /// At Terminate, a session is quiet only when each query, Sync and function call has
    /// had its ReadyForQuery, nothing waits for a Sync, and Postgres is idle.
    #[tokio::test]
    async fn terminate_reports_whether_every_request_was_answered() {
        let case = |up: Vec<u8>, down: Vec<u8>| async move {
            let (mut c, mut client_side) = tokio::io::duplex(64 * 1024);
            let (mut backend_side, mut b) = tokio::io::duplex(64 * 1024);
            b.write_all(&down).await.unwrap();
            let task = tokio::spawn(async move {
                relay(&mut client_side, &mut backend_side, None, true).await
            });
            // The answers reach the client before it terminates.
            let mut got = vec![0u8; down.len()];
            c.write_all(&up[..up.len() - 5]).await.unwrap();
            c.read_exact(&mut got).await.unwrap();
            c.write_all(&up[up.len() - 5..]).await.unwrap();
            match task.await.unwrap() {
                RelayEnd::Terminated { quiet, .. } => quiet,
                other => panic!("{other:?}"),
            }
        };
        let x = msg(b'X', b"");
        let q = msg(b'Q', b"SELECT 1\0");
        let z = |s: u8| msg(b'Z', &[s]);
        let rows = [msg(b'C', b"SELECT 1\0"), z(b'I')].concat();
        assert!(case([q.clone(), x.clone()].concat(), rows.clone()).await);
        // Two queries, one answer: one is in flight.
        assert!(!case([q.clone(), q.clone(), x.clone()].concat(), rows.clone()).await);
        // Answered, but inside a transaction.
        let in_tx = [msg(b'C', b"BEGIN\0"), z(b'T')].concat();
        assert!(!case([q.clone(), x.clone()].concat(), in_tx).await);
        // A Parse with no Sync: Postgres would skip what follows.
        let parse = msg(b'P', b"\0SELECT 1\0\0\0");
        assert!(!case([parse.clone(), x.clone()].concat(), Vec::new()).await);
        // Parse, Sync and its ReadyForQuery: quiet.
        let parsed = [msg(b'1', b""), z(b'I')].concat();
        let synced = [parse, msg(b'S', b""), x].concat();
        assert!(case(synced, parsed).await);
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[tokio::test]
    async fn relays_both_ways_and_passes_half_close() {
        let (mut c, mut client_side) = tokio::io::duplex(1024);
        let (mut backend_side, mut b) = tokio::io::duplex(1024);
        let task =
            tokio::spawn(
                async move { relay(&mut client_side, &mut backend_side, None, false).await },
            );
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

    #[tokio::test]
    async fn terminate_is_caught_at_a_boundary_and_not_passed_on() {
        let (mut c, mut client_side) = tokio::io::duplex(64 * 1024);
        let (mut backend_side, mut b) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let end = relay(&mut client_side, &mut backend_side, None, true).await;
            (end, backend_side)
        });
        // A query whose body holds an 'X' and a fake Terminate, then a real Terminate
        // split over two writes.
        let mut stream = msg(b'Q', b"SELECT 'X\0\0\0\x04'\0");
        stream.extend(msg(b'Q', &[b'X', 0, 0, 0, 4, 0]));
        let n = stream.len();
        c.write_all(&stream).await.unwrap();
        let mut got = vec![0u8; n];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, stream);
        c.write_all(&[b'X', 0, 0]).await.unwrap();
        c.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.write_all(&[0, 4]).await.unwrap();
        let (end, backend_side) = task.await.unwrap();
        assert!(
            matches!(end, RelayEnd::Terminated { relayed: r, .. } if r.client_to_backend == n as u64 + 5),
            "{end:?}"
        );
        // Nothing of the Terminate reached Postgres, whose side stays open.
        drop(backend_side);
        let mut tail = Vec::new();
        b.read_to_end(&mut tail).await.unwrap();
        assert!(tail.is_empty(), "{tail:?}");
    }

    #[tokio::test]
    async fn without_catching_terminate_is_passed_on() {
        let (mut c, mut client_side) = tokio::io::duplex(1024);
        let (mut backend_side, mut b) = tokio::io::duplex(1024);
        let task =
            tokio::spawn(
                async move { relay(&mut client_side, &mut backend_side, None, false).await },
            );
        c.write_all(&msg(b'X', &[])).await.unwrap();
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [b'X', 0, 0, 0, 4]);
        drop(c);
        drop(b);
        let _ = task.await.unwrap();
    }

    #[tokio::test]
    async fn large_transfers_are_intact() {
        let (mut c, mut client_side) = tokio::io::duplex(8 * 1024);
        let (mut backend_side, mut b) = tokio::io::duplex(8 * 1024);
        let task =
            tokio::spawn(
                async move { relay(&mut client_side, &mut backend_side, None, true).await },
            );
        // Many CopyData messages of odd sizes.
        let mut data = Vec::new();
        for i in 0..2000u32 {
            let body: Vec<u8> = (0..(i % 700)).map(|j| (i + j) as u8).collect();
            data.extend(msg(b'd', &body));
        }
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            c.write_all(&data).await.unwrap();
            c.shutdown().await.unwrap();
            c
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expected);
        drop(b);
        let _c = writer.await.unwrap();
        assert!(matches!(
            task.await.unwrap(),
            RelayEnd::Closed(_) | RelayEnd::Error(..)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_end() {
        let (_c, mut client_side) = tokio::io::duplex(64);
        let (mut backend_side, _b) = tokio::io::duplex(64);
        let end = relay(
            &mut client_side,
            &mut backend_side,
            Some(Duration::from_secs(5)),
            false,
        )
        .await;
        assert!(matches!(end, RelayEnd::Idle(_)), "{end:?}");
    }
}

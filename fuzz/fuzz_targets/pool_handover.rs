//! The pool hand-over: what a client may send before Terminate, and what Postgres may
//! answer, must never let a connection be pooled that still owes anyone an answer.
//!
//! Input layout: byte 0 is the read/write chunk size of the client side, byte 1 of the
//! server side (1..=256, so headers arrive split); then operations, each a byte whose low
//! two bits choose: a client message, a server message, raw client bytes, raw server bytes
//! (tag tables below; bodies of up to 63 bytes), in the order they happen: each side's
//! bytes become readable only after the relay read what the other side said before them.
//! A Terminate ends the client's bytes
//! unless the last operation byte says not to. After the relay, the rest of the input is
//! read as Postgres' answer to the pool's reset and fed to `pool::ResetAnswer`.
//!
//! Checks, against a parser of the two streams written here (not the relay's):
//! - `relay::relay` reports `quiet` only when, in the bytes it consumed, every Query,
//!   Sync and FunctionCall of the client had its ReadyForQuery, no extended-protocol
//!   message waits for a Sync, the last status was idle, no server message was cut short,
//!   and every server byte consumed was passed on to the client; the client's bytes
//!   before Terminate reached the server and the Terminate did not.
//! - `ResetAnswer` completes only on exactly the reset's answer (Sync's `Z`, `ROLLBACK`,
//!   `DISCARD ALL`, the nonce row, an idle `Z` last) with only notices, parameter statuses
//!   and notifications between.
#![no_main]

use std::cell::Cell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use teesql_sidecar::postgres::pool::ResetAnswer;
use teesql_sidecar::frontend::relay::{RelayEnd, relay};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const NONCE: &str = "00112233445566778899aabbccddeeff";

struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = start + n;
        &self.data[start..end]
    }
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

fn message(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

/// One side of the relay: reads come from a script, `chunk` bytes at a time, then EOF;
/// writes are kept, `chunk` bytes at a time. Bytes the script got after something the
/// other side said are only readable once the relay has read that (`gates`): the input's
/// operations are a timeline, so an answer can come before, or after, the Terminate.
struct Script {
    data: Vec<u8>,
    consumed: Rc<Cell<usize>>,
    chunk: usize,
    written: Vec<u8>,
    /// (offset in `data`, bytes of the other side that must have been read first).
    gates: Vec<(usize, usize)>,
    other: Rc<Cell<usize>>,
}

impl AsyncRead for Script {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let at = self.consumed.get();
        // The first gate not yet passed bounds what may be read now.
        let mut limit = self.data.len();
        for &(offset, needed) in &self.gates {
            if self.other.get() < needed {
                limit = offset;
                break;
            }
        }
        if at >= limit && at < self.data.len() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.chunk.min(limit - at).min(buf.remaining());
        buf.put_slice(&self.data[at..at + n]);
        self.consumed.set(at + n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = self.chunk.min(buf.len());
        self.written.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The client's messages up to the first Terminate at a message boundary.
#[derive(Debug, Default)]
struct ClientView {
    asked: u64,
    unsynced: bool,
    lost: bool,
    /// Where the Terminate starts.
    terminate_at: Option<usize>,
}

fn client_view(bytes: &[u8]) -> ClientView {
    let mut v = ClientView::default();
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let tag = bytes[i];
        let len = u32::from_be_bytes([bytes[i + 1], bytes[i + 2], bytes[i + 3], bytes[i + 4]]);
        if tag == b'X' && len == 4 {
            v.terminate_at = Some(i);
            return v;
        }
        if len < 4 {
            v.lost = true;
            return v;
        }
        match tag {
            b'Q' | b'F' => v.asked += 1,
            b'S' => {
                v.asked += 1;
                v.unsynced = false;
            }
            b'P' | b'B' | b'E' | b'D' | b'C' | b'H' => v.unsynced = true,
            _ => {}
        }
        i += 1 + len as usize;
    }
    v
}

/// Postgres' messages as far as they were consumed.
#[derive(Debug, Default)]
struct ServerView {
    answered: u64,
    status: Option<u8>,
    lost: bool,
    /// The bytes end inside a message (or its header).
    cut: bool,
}

fn server_view(bytes: &[u8]) -> ServerView {
    let mut v = ServerView::default();
    let mut i = 0;
    while i < bytes.len() {
        if i + 5 > bytes.len() {
            v.cut = true;
            return v;
        }
        let tag = bytes[i];
        let len = u32::from_be_bytes([bytes[i + 1], bytes[i + 2], bytes[i + 3], bytes[i + 4]]);
        if len < 4 {
            v.lost = true;
            return v;
        }
        let end = i + 1 + len as usize;
        if end > bytes.len() {
            v.cut = true;
            return v;
        }
        if tag == b'Z' && len == 5 {
            v.answered += 1;
            v.status = Some(bytes[i + 5]);
        }
        i = end;
    }
    v
}

const CLIENT_TAGS: &[u8] = b"QPBEDCHSFdcfp";
const SERVER_TAGS: &[u8] = b"ZZZCTDENSAIG12nst";
const STATUSES: &[u8] = b"IIITE";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// The expected reset answer, step by step.
fn reset_step(step: u8, out: &mut Vec<(u8, Vec<u8>)>) {
    let mut row = vec![0, 1];
    row.extend_from_slice(&(NONCE.len() as u32).to_be_bytes());
    row.extend_from_slice(NONCE.as_bytes());
    let m: (u8, Vec<u8>) = match step % 9 {
        0 | 2 | 4 => (b'Z', b"I".to_vec()),
        1 => (b'C', b"ROLLBACK\0".to_vec()),
        3 => (b'C', b"DISCARD ALL\0".to_vec()),
        5 => (b'T', b"\0\x01?column?\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0".to_vec()),
        6 => (b'D', row),
        7 => (b'C', b"SELECT 1\0".to_vec()),
        _ => (b'Z', b"I".to_vec()),
    };
    out.push(m);
}

fn expected_reset() -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    for step in 0..9 {
        reset_step(step, &mut out);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data, pos: 0 };
    let client_chunk = usize::from(input.byte()) + 1;
    let server_chunk = usize::from(input.byte()) + 1;
    let ops = usize::from(input.byte() % 32);
    let (mut c, mut s) = (Vec::new(), Vec::new());
    // Each side's bytes wait for what the other side said before them.
    let (mut c_gates, mut s_gates) = (Vec::new(), Vec::new());
    let mut terminate = true;
    for k in 0..ops {
        let op = input.byte();
        let pick = usize::from(input.byte());
        let len = usize::from(op >> 2);
        if op & 1 == 0 {
            c_gates.push((c.len(), s.len()));
        } else {
            s_gates.push((s.len(), c.len()));
        }
        match op & 3 {
            0 => {
                let tag = CLIENT_TAGS[pick % CLIENT_TAGS.len()];
                let body = input.bytes(len).to_vec();
                message(&mut c, tag, &body);
            }
            1 => {
                let tag = SERVER_TAGS[pick % SERVER_TAGS.len()];
                if tag == b'Z' {
                    message(&mut s, b'Z', &[STATUSES[(pick >> 4) % STATUSES.len()]]);
                } else {
                    let body = input.bytes(len).to_vec();
                    message(&mut s, tag, &body);
                }
            }
            2 => c.extend_from_slice(input.bytes(len)),
            _ => s.extend_from_slice(input.bytes(len)),
        }
        if k + 1 == ops && op == 0xff {
            terminate = false;
        }
    }
    if terminate {
        c_gates.push((c.len(), s.len()));
        message(&mut c, b'X', &[]);
    }
    let client_bytes = c.clone();
    let server_bytes = s.clone();
    let (client_read, server_read) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let mut client = Script {
        data: c,
        consumed: client_read.clone(),
        chunk: client_chunk,
        written: Vec::new(),
        gates: c_gates,
        other: server_read.clone(),
    };
    let mut server = Script {
        data: s,
        consumed: server_read.clone(),
        chunk: server_chunk,
        written: Vec::new(),
        gates: s_gates,
        other: client_read.clone(),
    };
    let end = runtime().block_on(relay(&mut client, &mut server, None, true));
    let trace = std::env::var_os("TEESQL_FUZZ_TRACE").is_some();
    if trace {
        eprintln!("relay: {end:?}");
    }
    if let RelayEnd::Terminated { quiet, .. } = end {
        let cv = client_view(&client_bytes[..client_read.get()]);
        let at = cv
            .terminate_at
            .expect("Terminated without a Terminate at a message boundary");
        // What came before the Terminate went to Postgres; the Terminate did not.
        assert_eq!(server.written, client_bytes[..at], "client bytes passed on");
        if quiet {
            let sv = server_view(&server_bytes[..server_read.get()]);
            assert!(!cv.lost && !sv.lost, "quiet on a stream that lost its framing");
            assert!(!cv.unsynced, "quiet with an extended-protocol exchange unsynced");
            assert_eq!(cv.asked, sv.answered, "quiet with requests unanswered: {cv:?} {sv:?}");
            assert!(!sv.cut, "quiet inside a server message");
            assert!(
                sv.status.unwrap_or(b'I') == b'I',
                "quiet in a transaction: {sv:?}"
            );
            assert_eq!(
                client.written,
                server_bytes[..server_read.get()],
                "quiet with server bytes not passed on"
            );
        }
    }

    // Postgres' answer to the reset: messages, or the expected ones step by step.
    let mut answer: Vec<(u8, Vec<u8>)> = Vec::new();
    while !input.done() && answer.len() < 64 {
        let op = input.byte();
        match op & 3 {
            0 | 1 => reset_step(op >> 2, &mut answer),
            2 => {
                let tag = b"NSAZCTDE"[usize::from(op >> 2) % 8];
                let len = usize::from(input.byte() % 32);
                answer.push((tag, input.bytes(len).to_vec()));
            }
            _ => {
                let tag = input.byte();
                let len = usize::from(op >> 2);
                answer.push((tag, input.bytes(len).to_vec()));
            }
        }
    }
    let mut check = ResetAnswer::new(NONCE);
    for (i, (tag, body)) in answer.iter().enumerate() {
        match check.next(*tag, body) {
            Ok(false) => {}
            Ok(true) => {
                // Any RowDescription will do; everything else must be exactly the reset's.
                let shape = |m: &[(u8, Vec<u8>)]| -> Vec<(u8, Vec<u8>)> {
                    m.iter()
                        .filter(|(t, _)| !matches!(t, b'N' | b'S' | b'A'))
                        .map(|(t, b)| (*t, if *t == b'T' { Vec::new() } else { b.clone() }))
                        .collect()
                };
                // The Sync's ReadyForQuery may report any state the client left.
                let mut got = shape(&answer[..=i]);
                if let Some((b'Z', status)) = got.first_mut()
                    && matches!(status.as_slice(), b"T" | b"E")
                {
                    *status = b"I".to_vec();
                }
                assert_eq!(
                    got,
                    shape(&expected_reset()),
                    "a reset accepted on another answer"
                );
                if trace {
                    eprintln!("reset: accepted after {} messages", i + 1);
                }
                break;
            }
            Err(e) => {
                if trace {
                    eprintln!("reset: {e}");
                }
                break;
            }
        }
    }
});

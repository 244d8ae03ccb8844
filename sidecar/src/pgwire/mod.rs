//! Bounded codec for the PostgreSQL wire protocol's startup and authentication phase.
//!
//! The sidecar uses it on both sides: as a server terminating client connections,
//! and as a client logging in to Postgres itself. Everything read is untrusted:
//!
//! * every length is checked against a fixed bound *before* a buffer is sized
//!   from it, so a hostile 4-byte header can never make us allocate much;
//! * nothing here panics on any input;
//! * "need more bytes" (`Ok(None)` from the `parse_*` functions, or
//!   [`WireError::Closed`] when a stream ends early) is distinct from "invalid"
//!   (every other error).
//!
//! Layouts follow the protocol documentation ("Message Formats") and the server's
//! `ProcessStartupPacket` for protocol 3.0 and 3.2.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod backend;
pub mod decode;
pub mod frontend;
mod reader;
pub mod sqlstate;
mod startup;
#[cfg(test)]
mod tests;

use reader::Reader;
pub use startup::{
    StartupPacket, cancel_request, param, parse_startup_packet, read_startup_packet, ssl_request,
    startup_message, startup_message_version,
};

/// Protocol version 3.0 as sent in a StartupMessage (`3 << 16`).
pub const PROTOCOL_3_0: u32 = 196608;
/// Request code of an SSLRequest (`1234 << 16 | 5679`).
pub const SSL_REQUEST_CODE: u32 = 80877103;
/// Request code of a GSSENCRequest (`1234 << 16 | 5680`).
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
/// Request code of a CancelRequest (`1234 << 16 | 5678`).
pub const CANCEL_REQUEST_CODE: u32 = 80877102;
/// Postgres' own MAX_STARTUP_PACKET_LENGTH. Applied here to the length field
/// (which counts itself), so this is 4 bytes stricter than the server, which
/// applies it to the bytes after the length field.
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Largest authentication-phase message accepted from a client (SASL, password).
pub const MAX_AUTH_MESSAGE_LEN: usize = 16 * 1024;
/// Most parameters accepted in one StartupMessage.
pub const MAX_STARTUP_PARAMS: usize = 64;
/// Shortest cancel key accepted: protocol 3.0 keys are 4 bytes, and nothing
/// shorter can match a key we (or Postgres) handed out.
pub const MIN_CANCEL_KEY_LEN: usize = 4;
/// Longest cancel key protocol 3.2 allows.
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// Why a packet could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The underlying stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// EOF before a complete packet.
    #[error("connection closed")]
    Closed,
    /// A length field outside what the packet type allows (checked before allocating).
    #[error("packet length {len} out of range ({min}..={max})")]
    BadLength {
        /// The length as sent.
        len: usize,
        /// Smallest acceptable value.
        min: usize,
        /// Largest acceptable value.
        max: usize,
    },
    /// An 8-byte request in the `1234.567x` family that we do not know.
    #[error("unknown request code {0}")]
    UnknownCode(u32),
    /// A StartupMessage whose major version is not 3.
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion {
        /// Major version as sent.
        major: u16,
        /// Minor version as sent.
        minor: u16,
    },
    /// A correctly framed packet whose contents break the message layout.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A message with the wrong tag for this point of the conversation.
    #[error("unexpected message type {got:?}, expected {expected}")]
    Unexpected {
        /// The tag received.
        got: char,
        /// What we wanted, for the log.
        expected: &'static str,
    },
}

/// Write `bytes` (a final message), flush, and close the write side; errors are
/// ignored: the peer is being turned away and may already be gone.
pub async fn send_and_close<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    let _ = s.write_all(bytes).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

/// Send one FATAL ErrorResponse and close.
pub async fn send_fatal<S: AsyncWrite + Unpin>(s: &mut S, code: &str, message: &str) {
    let mut out = Vec::new();
    backend::error_response(&mut out, "FATAL", code, message, None, None);
    send_and_close(s, &out).await;
}

/// `Ok` if the message tag `got` is `want`, else [`WireError::Unexpected`] naming
/// `expected` (e.g. "PasswordMessage") for the log.
pub fn expect_tag(got: u8, want: u8, expected: &'static str) -> Result<(), WireError> {
    if got == want {
        Ok(())
    } else {
        Err(WireError::Unexpected {
            got: char::from(got),
            expected,
        })
    }
}

/// Tag byte plus length field of a typed message.
const MESSAGE_HEADER_LEN: usize = 5;

/// How many bytes of `buf` a typed message needs before we can make progress:
/// first the header, then the whole frame. Fails as soon as the header shows
/// a length out of range, so callers never size a buffer from a bad length.
fn message_need(buf: &[u8], max_len: usize) -> Result<usize, WireError> {
    let Some(&[_tag, a, b, c, d]) = buf.first_chunk::<MESSAGE_HEADER_LEN>() else {
        return Ok(MESSAGE_HEADER_LEN);
    };
    // Saturate rather than truncate on (theoretical) 16-bit targets: still rejected below.
    let len = usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX);
    let max = max_len.saturating_add(4);
    let bad = || WireError::BadLength { len, min: 4, max };
    if !(4..=max).contains(&len) {
        return Err(bad());
    }
    len.checked_add(1).ok_or_else(bad)
}

/// Splits a frame sized by [`message_need`] into tag and body.
fn split_message(frame: &[u8]) -> Option<(u8, &[u8])> {
    match frame {
        [tag, _, _, _, _, body @ ..] => Some((*tag, body)),
        _ => None,
    }
}

/// Parses a typed message: 1-byte tag, 4-byte length (including itself), body.
///
/// `Ok(None)` means incomplete (need more bytes); `Ok(Some((tag, body, consumed)))`
/// otherwise. Fails with [`WireError::BadLength`] if the length is below 4 or the
/// body exceeds `max_len`, which is decided from the 5 header bytes alone.
// The signature is the documented API; an alias would only hide the tuple's meaning.
#[allow(clippy::type_complexity)]
pub fn parse_message(buf: &[u8], max_len: usize) -> Result<Option<(u8, &[u8], usize)>, WireError> {
    let need = message_need(buf, max_len)?;
    Ok(buf
        .get(..need)
        .and_then(split_message)
        .map(|(tag, body)| (tag, body, need)))
}

/// Reads one typed message (exactly its bytes, never more) with the body bounded by `max_len`.
///
/// Returns [`WireError::Closed`] if the stream ends before the message is complete.
/// Callers should bound the wait with a timeout: a peer may trickle bytes.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max_len: usize,
) -> Result<(u8, Vec<u8>), WireError> {
    let frame = read_frame(r, |buf| message_need(buf, max_len)).await?;
    // `read_frame` only returns frames that satisfy `message_need`, so the header
    // is there; a shorter frame could only mean truncation, hence `Closed`.
    let (tag, body) = split_message(&frame).ok_or(WireError::Closed)?;
    Ok((tag, body.to_vec()))
}

/// Reads from `r` until `need(buf) <= buf.len()`, growing the buffer to exactly
/// `need(buf)` bytes each round. `need` validates lengths before returning them,
/// so allocations are bounded, and since it never asks past the end of the
/// current packet, no byte of the next one is consumed.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    need: impl Fn(&[u8]) -> Result<usize, WireError>,
) -> Result<Vec<u8>, WireError> {
    let mut buf = Vec::new();
    loop {
        let want = need(&buf)?;
        let have = buf.len();
        if want <= have {
            return Ok(buf);
        }
        buf.resize(want, 0);
        let dest = buf.get_mut(have..).unwrap_or_default();
        if let Err(e) = r.read_exact(dest).await {
            return Err(match e.kind() {
                std::io::ErrorKind::UnexpectedEof => WireError::Closed,
                _ => WireError::Io(e),
            });
        }
    }
}

/// Parses a PasswordMessage body: one NUL-terminated password and nothing after
/// it, as the server's `recv_password_packet` requires. The password is returned
/// as raw bytes (the client encoding is not known yet). An empty password parses;
/// Postgres rejects it as an authentication failure (28P01), so should the caller.
pub fn parse_password_message(body: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut r = Reader::new(body, "password message");
    let password = r.cstr()?;
    r.finish()?;
    Ok(password.to_vec())
}

/// Parses a SASLInitialResponse body: mechanism name, then a 4-byte data length
/// (`-1` means no initial response, returned as empty data) and exactly that many bytes.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(String, Vec<u8>), WireError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mechanism = r.str("mechanism")?.to_owned();
    let data = match r.i32()? {
        -1 => &[][..],
        n => {
            let n = usize::try_from(n).map_err(|_| r.error(format!("data length {n}")))?;
            r.take(n)?
        }
    };
    r.finish()?;
    Ok((mechanism, data.to_vec()))
}

/// Appends a frame: optional tag, 4-byte length counting itself, then the body
/// written by `body`. Lengths beyond `i32::MAX` (never produced by this module's
/// callers) are clamped so the peer rejects the frame instead of misreading it.
fn put_frame(out: &mut Vec<u8>, tag: Option<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    out.extend(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = i32::try_from(out.len().saturating_sub(at)).unwrap_or(i32::MAX);
    if let Some(slot) = out.get_mut(at..at.saturating_add(4)) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

/// Appends a NUL-terminated string. An embedded NUL would end the string early
/// and shift every later field, so it is replaced by U+FFFD instead.
fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        match b {
            0 => out.extend_from_slice("\u{FFFD}".as_bytes()),
            b => out.push(b),
        }
    }
    out.push(0);
}

#[cfg(test)]
mod fixtures {
    //! Malformed inputs for the parsers in this file.

    use super::*;

    /// Typed-message headers that must be rejected from the header alone.
    const BAD_HEADERS: &[&[u8]] = &[
        b"p\x7f\xff\xff\xff", // ~2 GiB
        b"p\xff\xff\xff\xff", // "-1"
        b"p\x80\x00\x00\x00", // i32::MIN
        b"p\x00\x00\x00\x00", // below 4
        b"p\x00\x00\x00\x03", // below 4
        b"p\x00\x00\x40\x05", // body MAX_AUTH_MESSAGE_LEN + 1
    ];

    /// PasswordMessage bodies.
    const BAD_PASSWORDS: &[&[u8]] = &[
        b"",                // nothing
        b"secret",          // missing NUL
        b"secret\0\0",      // trailing byte
        b"sec\0ret\0",      // NUL inside: only "sec" would count
        b"secret\0garbage", // trailing bytes
    ];

    /// SASLInitialResponse bodies.
    const BAD_SASL_INITIAL: &[&[u8]] = &[
        b"",                                    // nothing
        b"SCRAM-SHA-256",                       // missing NUL
        b"SCRAM-SHA-256\0",                     // missing length
        b"SCRAM-SHA-256\0\x00\x00",             // truncated length
        b"SCRAM-SHA-256\0\xff\xff\xff\xfe",     // length -2
        b"SCRAM-SHA-256\0\x80\x00\x00\x00",     // length i32::MIN
        b"SCRAM-SHA-256\0\x00\x00\x00\x05abcd", // length past the end
        b"SCRAM-SHA-256\0\x7f\xff\xff\xffabcd", // huge length
        b"SCRAM-SHA-256\0\x00\x00\x00\x03abcd", // trailing byte
        b"SCRAM-SHA-256\0\xff\xff\xff\xffx",    // -1 then data
        b"SCRAM-\xff\0\x00\x00\x00\x00",        // non-UTF-8 mechanism
    ];

    #[test]
    fn bad_headers_rejected_from_header_alone() {
        for h in BAD_HEADERS {
            let err = parse_message(h, MAX_AUTH_MESSAGE_LEN);
            assert!(
                matches!(err, Err(WireError::BadLength { .. })),
                "{h:?}: {err:?}"
            );
        }
    }

    #[test]
    fn bad_passwords_rejected() {
        for b in BAD_PASSWORDS {
            let err = parse_password_message(b);
            assert!(
                matches!(err, Err(WireError::Malformed { .. })),
                "{b:?}: {err:?}"
            );
        }
    }

    #[test]
    fn bad_sasl_initial_responses_rejected() {
        for b in BAD_SASL_INITIAL {
            let err = parse_sasl_initial_response(b);
            assert!(
                matches!(err, Err(WireError::Malformed { .. })),
                "{b:?}: {err:?}"
            );
        }
    }

    #[test]
    fn good_auth_bodies() {
        assert_eq!(parse_password_message(b"pw\0").unwrap(), b"pw");
        assert_eq!(parse_password_message(b"\0").unwrap(), b"");
        let (m, d) = parse_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff").unwrap();
        assert_eq!((m.as_str(), d.as_slice()), ("SCRAM-SHA-256", &b""[..]));
        let (m, d) = parse_sasl_initial_response(b"X\0\x00\x00\x00\x02hi").unwrap();
        assert_eq!((m.as_str(), d.as_slice()), ("X", &b"hi"[..]));
    }

    #[test]
    fn message_body_bound_is_inclusive() {
        let mut ok = vec![b'p', 0, 0, 0, 4 + 3];
        ok.extend_from_slice(b"abc");
        assert_eq!(parse_message(&ok, 3).unwrap(), Some((b'p', &b"abc"[..], 8)));
        assert!(matches!(
            parse_message(&ok, 2),
            Err(WireError::BadLength {
                len: 7,
                min: 4,
                max: 6
            })
        ));
        // Empty body is fine (length 4).
        assert_eq!(
            parse_message(b"Z\0\0\0\x04", 0).unwrap(),
            Some((b'Z', &b""[..], 5))
        );
    }

    #[test]
    fn expect_tag_reports_unexpected() {
        assert!(expect_tag(b'p', b'p', "password").is_ok());
        let err = expect_tag(b'Q', b'p', "password message").unwrap_err();
        assert!(matches!(
            err,
            WireError::Unexpected {
                got: 'Q',
                expected: "password message"
            }
        ));
    }
}

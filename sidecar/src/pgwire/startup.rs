//! Untagged startup-phase packets: SSLRequest, GSSENCRequest, CancelRequest, StartupMessage.

use tokio::io::AsyncRead;

use super::reader::Reader;
use super::{
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_CANCEL_KEY_LEN, MAX_STARTUP_LEN,
    MAX_STARTUP_PARAMS, MIN_CANCEL_KEY_LEN, PROTOCOL_3_0, SSL_REQUEST_CODE, WireError, put_cstr,
    put_frame, read_frame,
};

/// The first packet a client sends, and what it sends again after TLS/GSS negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// Client asks to switch to TLS.
    SslRequest,
    /// Client asks to switch to GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running on backend `pid`.
    /// Protocol 3.0 keys are 4 bytes; 3.2 allows up to 256.
    Cancel {
        /// Backend process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData (4..=256 bytes).
        key: Vec<u8>,
    },
    /// A StartupMessage. `major` is always 3; `minor` is returned as sent so the
    /// caller can answer a newer one with NegotiateProtocolVersion.
    Startup {
        /// Protocol major version (3).
        major: u16,
        /// Protocol minor version as requested.
        minor: u16,
        /// Parameters in wire order; names are non-empty and unique.
        params: Vec<(String, String)>,
    },
}

impl StartupPacket {
    /// The value of StartupMessage parameter `name`, if present.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            StartupPacket::Startup { params, .. } => param(params, name),
            _ => None,
        }
    }
}

/// The value of parameter `name` in StartupMessage parameters.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// SSLRequest: length 8, the request code.
pub fn ssl_request() -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&8u32.to_be_bytes());
    b[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    b
}

/// Smallest startup packet: length word plus request code / version.
const MIN_STARTUP_LEN: usize = 8;
/// CancelRequest: length, code, pid, key.
const CANCEL_FIXED_LEN: usize = 12;
/// `1234` in the high half marks a request code rather than a protocol version.
const REQUEST_CODE_MAJOR: u32 = 1234;

/// How many bytes of `buf` a startup packet needs before we can make progress:
/// 4 for the length, 8 for the code, then the whole packet. Every check that
/// the length and code allow is made as soon as they are available, so bad
/// packets fail without waiting for (or buffering) the rest of them.
fn startup_need(buf: &[u8]) -> Result<usize, WireError> {
    let Some(&len) = buf.first_chunk::<4>() else {
        return Ok(4);
    };
    let len = usize::try_from(u32::from_be_bytes(len)).unwrap_or(usize::MAX);
    check_len(len, MIN_STARTUP_LEN, MAX_STARTUP_LEN)?;
    let Some(&[_, _, _, _, a, b, c, d]) = buf.first_chunk::<8>() else {
        return Ok(MIN_STARTUP_LEN);
    };
    let code = u32::from_be_bytes([a, b, c, d]);
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => check_len(len, 8, 8)?,
        CANCEL_REQUEST_CODE => check_len(
            len,
            CANCEL_FIXED_LEN + MIN_CANCEL_KEY_LEN,
            CANCEL_FIXED_LEN + MAX_CANCEL_KEY_LEN,
        )?,
        _ if code >> 16 == REQUEST_CODE_MAJOR => return Err(WireError::UnknownCode(code)),
        _ if code >> 16 != PROTOCOL_3_0 >> 16 => {
            let (major, minor) = version(code);
            return Err(WireError::UnsupportedVersion { major, minor });
        }
        _ => {}
    }
    Ok(len)
}

fn check_len(len: usize, min: usize, max: usize) -> Result<(), WireError> {
    if (min..=max).contains(&len) {
        Ok(())
    } else {
        Err(WireError::BadLength { len, min, max })
    }
}

/// Splits a protocol version word into major and minor halves.
fn version(code: u32) -> (u16, u16) {
    let [a, b, c, d] = code.to_be_bytes();
    (u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]))
}

/// Decodes a whole packet whose length and code `startup_need` has accepted.
fn decode_startup(frame: &[u8]) -> Result<StartupPacket, WireError> {
    let mut r = Reader::new(frame, "startup packet");
    r.u32()?; // length, already checked
    match r.u32()? {
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let pid = r.i32()?;
            let key = r.rest().to_vec();
            Ok(StartupPacket::Cancel { pid, key })
        }
        code => {
            let (major, minor) = version(code);
            let params = decode_params(r)?;
            Ok(StartupPacket::Startup {
                major,
                minor,
                params,
            })
        }
    }
}

/// Decodes `name\0value\0 ... \0`: the terminator must be the last byte, as in
/// the server ("expected terminator as last byte").
fn decode_params(mut r: Reader<'_>) -> Result<Vec<(String, String)>, WireError> {
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        let name = r.str("parameter name")?;
        if name.is_empty() {
            // An empty name is the terminator; anything after it (including what
            // would have been an empty-named parameter) is malformed.
            r.finish()?;
            return Ok(params);
        }
        if params.len() == MAX_STARTUP_PARAMS {
            return Err(r.error(format!("more than {MAX_STARTUP_PARAMS} parameters")));
        }
        let value = r.str("parameter value")?;
        // Postgres lets a repeated name silently override the earlier one, so a
        // proxy that checks the first `user` could pass a different one through.
        // Refuse the ambiguity instead.
        if params.iter().any(|(n, _)| n == name) {
            return Err(r.error(format!("duplicate parameter {name:?}")));
        }
        params.push((name.to_owned(), value.to_owned()));
    }
}

/// Parses a complete startup-phase packet (length prefix included) from `buf`.
///
/// `Ok(None)` = incomplete (need more bytes); `Ok(Some((packet, consumed)))` otherwise.
/// A bad length, request code or version is reported from the first 4 or 8
/// bytes, without waiting for the rest.
pub fn parse_startup_packet(buf: &[u8]) -> Result<Option<(StartupPacket, usize)>, WireError> {
    let need = startup_need(buf)?;
    match buf.get(..need) {
        Some(frame) => decode_startup(frame).map(|p| Some((p, need))),
        None => Ok(None),
    }
}

/// Reads exactly one startup-phase packet from `r` (exactly the packet's bytes, never more).
///
/// Returns [`WireError::Closed`] if the stream ends before the packet is complete.
/// Callers should bound the wait with a timeout: a peer may trickle bytes.
pub async fn read_startup_packet<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<StartupPacket, WireError> {
    let frame = read_frame(r, startup_need).await?;
    decode_startup(&frame)
}

/// Encodes a protocol 3.0 StartupMessage (for the proxy's own connection to Postgres).
/// NULs inside names or values are replaced by U+FFFD.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    startup_message_version(3, 0, params)
}

/// A StartupMessage asking for protocol `major.minor` (a forwarder passes on the
/// version its client asked for; the server negotiates).
pub fn startup_message_version(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let version = (u32::from(major) << 16) | u32::from(minor);
    let mut out = Vec::new();
    put_frame(&mut out, None, |out| {
        out.extend_from_slice(&version.to_be_bytes());
        for (name, value) in params {
            put_cstr(out, name.as_bytes());
            put_cstr(out, value.as_bytes());
        }
        out.push(0);
    });
    out
}

/// Encodes a CancelRequest. A 4-byte key gives the classic 16-byte packet.
pub fn cancel_request(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_frame(&mut out, None, |out| {
        out.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        out.extend_from_slice(&pid.to_be_bytes());
        out.extend_from_slice(key);
    });
    out
}

#[cfg(test)]
pub(super) mod fixtures {
    //! Malformed startup packets, each with the error kind it must produce.

    use super::*;

    /// Which `WireError` variant a fixture must produce.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Kind {
        BadLength,
        UnknownCode,
        Unsupported,
        Malformed,
    }

    pub(crate) fn kind(e: &WireError) -> Option<Kind> {
        match e {
            WireError::BadLength { .. } => Some(Kind::BadLength),
            WireError::UnknownCode(_) => Some(Kind::UnknownCode),
            WireError::UnsupportedVersion { .. } => Some(Kind::Unsupported),
            WireError::Malformed { .. } => Some(Kind::Malformed),
            _ => None,
        }
    }

    /// Rejected from the header alone (the rest of the packet is never needed).
    pub(crate) const BAD_HEADERS: &[(&str, &[u8], Kind)] = &[
        ("huge length", b"\x7f\xff\xff\xff", Kind::BadLength),
        ("negative length", b"\xff\xff\xff\xf0", Kind::BadLength),
        ("i32::MIN length", b"\x80\x00\x00\x00", Kind::BadLength),
        ("zero length", b"\x00\x00\x00\x00", Kind::BadLength),
        ("length 7", b"\x00\x00\x00\x07", Kind::BadLength),
        ("MAX_STARTUP_LEN + 1", b"\x00\x00\x27\x11", Kind::BadLength),
        (
            "9-byte SSLRequest",
            b"\x00\x00\x00\x09\x04\xd2\x16\x2f",
            Kind::BadLength,
        ),
        (
            "12-byte GSSENCRequest",
            b"\x00\x00\x00\x0c\x04\xd2\x16\x30",
            Kind::BadLength,
        ),
        (
            "CancelRequest, no key",
            b"\x00\x00\x00\x0c\x04\xd2\x16\x2e",
            Kind::BadLength,
        ),
        (
            "CancelRequest, 3-byte key",
            b"\x00\x00\x00\x0f\x04\xd2\x16\x2e",
            Kind::BadLength,
        ),
        (
            "CancelRequest, 257-byte key",
            b"\x00\x00\x01\x0d\x04\xd2\x16\x2e",
            Kind::BadLength,
        ),
        (
            "request code 1234.5681",
            b"\x00\x00\x00\x08\x04\xd2\x16\x31",
            Kind::UnknownCode,
        ),
        (
            "request code 1234.0",
            b"\x00\x00\x00\x08\x04\xd2\x00\x00",
            Kind::UnknownCode,
        ),
        (
            "protocol 2.0",
            b"\x00\x00\x00\x09\x00\x02\x00\x00",
            Kind::Unsupported,
        ),
        (
            "protocol 1.0",
            b"\x00\x00\x00\x09\x00\x01\x00\x00",
            Kind::Unsupported,
        ),
        (
            "protocol 0.0",
            b"\x00\x00\x00\x09\x00\x00\x00\x00",
            Kind::Unsupported,
        ),
        (
            "protocol 4.0",
            b"\x00\x00\x00\x09\x00\x04\x00\x00",
            Kind::Unsupported,
        ),
    ];

    /// Correctly framed StartupMessages (length field == byte count) with bad bodies.
    pub(crate) const BAD_BODIES: &[(&str, &[u8])] = &[
        ("no terminator at all", b"\x00\x00\x00\x08\x00\x03\x00\x00"),
        (
            "missing final NUL",
            b"\x00\x00\x00\x13\x00\x03\x00\x00user\0alice\0",
        ),
        (
            "value missing its NUL",
            b"\x00\x00\x00\x12\x00\x03\x00\x00user\0alice",
        ),
        (
            "name without value",
            b"\x00\x00\x00\x0d\x00\x03\x00\x00user\0",
        ),
        (
            "duplicate user",
            b"\x00\x00\x00\x17\x00\x03\x00\x00user\0a\0user\0b\0\0",
        ),
        (
            "non-UTF-8 name",
            b"\x00\x00\x00\x0d\x00\x03\x00\x00\xff\0a\0\0",
        ),
        (
            "non-UTF-8 value",
            b"\x00\x00\x00\x10\x00\x03\x00\x00user\0\xff\0\0",
        ),
        ("empty name", b"\x00\x00\x00\x0c\x00\x03\x00\x00\0a\0\0"),
        (
            "bytes after terminator",
            b"\x00\x00\x00\x14\x00\x03\x00\x00user\0a\0\0junk",
        ),
    ];

    #[test]
    fn bad_headers_rejected_without_the_rest() {
        for (name, bytes, want) in BAD_HEADERS {
            let got = parse_startup_packet(bytes);
            let got = got.as_ref().err().and_then(kind);
            assert_eq!(got, Some(*want), "{name}");
        }
    }

    #[test]
    fn bad_bodies_rejected() {
        for (name, bytes) in BAD_BODIES {
            assert_eq!(
                bytes.get(..4),
                Some(&(bytes.len() as u32).to_be_bytes()[..]),
                "{name}"
            );
            let got = parse_startup_packet(bytes);
            assert_eq!(
                got.as_ref().err().and_then(kind),
                Some(Kind::Malformed),
                "{name}: {got:?}"
            );
        }
    }

    #[test]
    fn too_many_parameters() {
        let names: Vec<String> = (0..=MAX_STARTUP_PARAMS).map(|i| format!("p{i}")).collect();
        let params: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let ok = startup_message(&params[..MAX_STARTUP_PARAMS]);
        assert!(matches!(parse_startup_packet(&ok), Ok(Some(_))));
        let bad = startup_message(&params);
        let got = parse_startup_packet(&bad);
        assert_eq!(
            got.as_ref().err().and_then(kind),
            Some(Kind::Malformed),
            "{got:?}"
        );
    }

    #[test]
    fn good_packets() {
        let cases: &[(&[u8], StartupPacket)] = &[
            (
                b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
                StartupPacket::SslRequest,
            ),
            (
                b"\x00\x00\x00\x08\x04\xd2\x16\x30",
                StartupPacket::GssEncRequest,
            ),
            (
                b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef",
                StartupPacket::Cancel {
                    pid: 12345,
                    key: vec![0xde, 0xad, 0xbe, 0xef],
                },
            ),
            (
                b"\x00\x00\x00\x09\x00\x03\x00\x00\0",
                StartupPacket::Startup {
                    major: 3,
                    minor: 0,
                    params: vec![],
                },
            ),
            (
                b"\x00\x00\x00\x1d\x00\x03\x00\x02user\0alice\0options\0\0\0",
                StartupPacket::Startup {
                    major: 3,
                    minor: 2,
                    params: vec![
                        ("user".into(), "alice".into()),
                        ("options".into(), "".into()),
                    ],
                },
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                bytes.get(..4),
                Some(&(bytes.len() as u32).to_be_bytes()[..])
            );
            let mut buf = bytes.to_vec();
            buf.extend_from_slice(b"next packet");
            assert_eq!(
                parse_startup_packet(&buf).unwrap(),
                Some((want.clone(), bytes.len()))
            );
        }
    }

    #[test]
    fn cancel_key_lengths() {
        for len in [4, 5, 32, 256] {
            let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let pkt = cancel_request(-7, &key);
            assert_eq!(pkt.len(), 12 + len);
            let want = StartupPacket::Cancel { pid: -7, key };
            assert_eq!(parse_startup_packet(&pkt).unwrap(), Some((want, 12 + len)));
        }
    }

    #[test]
    fn param_lookup() {
        let (p, _) = parse_startup_packet(&startup_message(&[("user", "u"), ("database", "d")]))
            .unwrap()
            .unwrap();
        assert_eq!(p.param("database"), Some("d"));
        assert_eq!(p.param("nope"), None);
        assert_eq!(StartupPacket::SslRequest.param("user"), None);
    }
}

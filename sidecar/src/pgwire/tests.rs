//! Cross-cutting tests: interop with `postgres-protocol`, incomplete-vs-invalid,
//! exact reads from streams, and a deterministic fuzz run over every parser.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend as pg;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use super::decode::Authentication;
use super::startup::fixtures as startup_fixtures;
use super::*;

// ---------------------------------------------------------------- helpers

fn enc(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(&mut out);
    out
}

fn pg_enc(f: impl FnOnce(&mut BytesMut) -> std::io::Result<()>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    f(&mut buf).unwrap();
    buf.to_vec()
}

/// Parses one backend message with `postgres-protocol`, requiring it to use all of `bytes`.
fn pg_parse(bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    let msg = Message::parse(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "postgres-protocol left {} bytes", buf.len());
    msg
}

fn parse_one(bytes: &[u8]) -> (u8, &[u8]) {
    let (tag, body, n) = parse_message(bytes, MAX_AUTH_MESSAGE_LEN).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    (tag, body)
}

fn startup(bytes: &[u8]) -> StartupPacket {
    let (p, n) = parse_startup_packet(bytes).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    p
}

/// Valid startup-phase packets from our encoders, `postgres-protocol`'s and by hand.
fn valid_startup_packets() -> Vec<Vec<u8>> {
    let key256: Vec<u8> = (0..=255).collect();
    vec![
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f".to_vec(),
        b"\x00\x00\x00\x08\x04\xd2\x16\x30".to_vec(),
        b"\x00\x00\x00\x0d\x00\x03\x00\x02a\0b\0\0".to_vec(),
        cancel_request(1, b"abcd"),
        cancel_request(-1, &[7; 32]),
        cancel_request(i32::MAX, &key256),
        startup_message(&[]),
        startup_message(&[("user", "alice"), ("database", "db"), ("options", "")]),
        pg_enc(|b| {
            pg::ssl_request(b);
            Ok(())
        }),
        pg_enc(|b| {
            pg::cancel_request(42, 0x0102_0304, b);
            Ok(())
        }),
        pg_enc(|b| pg::startup_message([("user", "bob"), ("client_encoding", "UTF8")], b)),
    ]
}

/// Valid typed messages, both directions.
fn valid_messages() -> Vec<Vec<u8>> {
    vec![
        enc(backend::authentication_ok),
        enc(backend::authentication_cleartext_password),
        enc(|o| backend::authentication_sasl(o, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])),
        enc(|o| backend::authentication_sasl_continue(o, b"r=abc,s=c2FsdA==,i=4096")),
        enc(|o| backend::authentication_sasl_final(o, b"v=c2lnbmF0dXJl")),
        enc(|o| backend::parameter_status(o, "server_version", "17.2")),
        enc(|o| backend::backend_key_data(o, 99, b"wxyz")),
        enc(|o| backend::backend_key_data(o, 99, &[5; 32])),
        enc(|o| backend::ready_for_query(o, b'I')),
        enc(|o| backend::error_response(o, "FATAL", "28000", "no", Some("d"), Some("h"))),
        enc(|o| backend::notice_response(o, "00000", "hello")),
        enc(|o| backend::negotiate_protocol_version(o, 2, &["_pq_.x", "_pq_.y"])),
        enc(|o| frontend::password_message(o, b"hunter2")),
        enc(|o| frontend::sasl_initial_response(o, "SCRAM-SHA-256", b"n,,n=,r=abc")),
        enc(|o| frontend::sasl_response(o, b"c=biws,r=abc,p=cHJvb2Y=")),
        enc(|o| frontend::sasl_response(o, b"")),
    ]
}

// ---------------------------------------------------------------- round trips

#[test]
fn startup_message_round_trip() {
    let params = [
        ("user", "alice"),
        ("database", "ünïcødé"),
        ("options", ""),
        ("_pq_.opt", "on"),
    ];
    let p = startup(&startup_message(&params));
    let want: Vec<(String, String)> = params
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        p,
        StartupPacket::Startup {
            major: 3,
            minor: 0,
            params: want
        }
    );
}

#[test]
fn postgres_protocol_startup_packets_parse() {
    let params = [
        ("user", "alice"),
        ("database", "db"),
        ("application_name", "psql"),
    ];
    let theirs = pg_enc(|b| pg::startup_message(params, b));
    assert_eq!(theirs, startup_message(&params), "byte-identical encoders");
    assert_eq!(startup(&theirs).param("application_name"), Some("psql"));

    let ssl = pg_enc(|b| {
        pg::ssl_request(b);
        Ok(())
    });
    assert_eq!(startup(&ssl), StartupPacket::SslRequest);

    let cancel = pg_enc(|b| {
        pg::cancel_request(123, 0x0102_0304, b);
        Ok(())
    });
    assert_eq!(cancel, cancel_request(123, &[1, 2, 3, 4]));
    assert_eq!(
        startup(&cancel),
        StartupPacket::Cancel {
            pid: 123,
            key: vec![1, 2, 3, 4]
        }
    );
}

#[test]
fn frontend_encoders_match_postgres_protocol() {
    assert_eq!(
        enc(|o| frontend::password_message(o, b"secret")),
        pg_enc(|b| pg::password_message(b"secret", b))
    );
    assert_eq!(
        enc(|o| frontend::sasl_initial_response(o, SCRAM_SHA_256, b"n,,n=,r=x")),
        pg_enc(|b| pg::sasl_initial_response(SCRAM_SHA_256, b"n,,n=,r=x", b))
    );
    assert_eq!(
        enc(|o| frontend::sasl_response(o, b"c=biws")),
        pg_enc(|b| pg::sasl_response(b"c=biws", b))
    );
    // And our parsers read them back.
    let msg = enc(|o| frontend::password_message(o, b"secret"));
    let (tag, body) = parse_one(&msg);
    assert_eq!(
        (tag, parse_password_message(body).unwrap()),
        (b'p', b"secret".to_vec())
    );
}

/// A real SCRAM client (postgres-protocol's) against our encoders and parsers,
/// up to the client-final message (checking the server signature needs HMAC,
/// which is not among the allowed dependencies).
#[test]
fn scram_client_messages_parse() {
    let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
    let client_first = client.message().to_vec();
    let initial = pg_enc(|b| pg::sasl_initial_response(SCRAM_SHA_256, &client_first, b));
    let (tag, body) = parse_one(&initial);
    assert_eq!(tag, b'p');
    let (mechanism, data) = parse_sasl_initial_response(body).unwrap();
    assert_eq!((mechanism.as_str(), &data), (SCRAM_SHA_256, &client_first));

    // client-first is "<gs2 header>n=,r=<nonce>": answer with a server-first that extends it.
    let text = std::str::from_utf8(&data).unwrap();
    let nonce = text.rsplit_once("r=").unwrap().1;
    let server_first = format!("r={nonce}3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096");
    let cont = enc(|o| backend::authentication_sasl_continue(o, server_first.as_bytes()));
    let Message::AuthenticationSaslContinue(body) = pg_parse(&cont) else {
        panic!("not SASLContinue");
    };
    client.update(body.data()).unwrap();

    let client_final = client.message().to_vec();
    let resp = pg_enc(|b| pg::sasl_response(&client_final, b));
    let (tag, body) = parse_one(&resp);
    assert_eq!((tag, body), (b'p', &client_final[..]));
    assert!(
        body.starts_with(b"c=biws,r="),
        "{:?}",
        String::from_utf8_lossy(body)
    );
}

#[test]
fn backend_encoders_parse_with_postgres_protocol() {
    assert!(matches!(
        pg_parse(&enc(backend::authentication_ok)),
        Message::AuthenticationOk
    ));
    assert!(matches!(
        pg_parse(&enc(backend::authentication_cleartext_password)),
        Message::AuthenticationCleartextPassword
    ));
    assert!(matches!(
        pg_parse(&enc(|o| backend::authentication_sasl(o, &[SCRAM_SHA_256]))),
        Message::AuthenticationSasl(_)
    ));
    match pg_parse(&enc(|o| {
        backend::authentication_sasl_continue(o, b"srv-first")
    })) {
        Message::AuthenticationSaslContinue(b) => assert_eq!(b.data(), b"srv-first"),
        _ => panic!("not SASLContinue"),
    }
    match pg_parse(&enc(|o| backend::authentication_sasl_final(o, b"v=sig"))) {
        Message::AuthenticationSaslFinal(b) => assert_eq!(b.data(), b"v=sig"),
        _ => panic!("not SASLFinal"),
    }
    match pg_parse(&enc(|o| backend::parameter_status(o, "TimeZone", "UTC"))) {
        Message::ParameterStatus(b) => {
            assert_eq!((b.name().unwrap(), b.value().unwrap()), ("TimeZone", "UTC"))
        }
        _ => panic!("not ParameterStatus"),
    }
    // postgres-protocol only understands protocol 3.0's 4-byte keys.
    match pg_parse(&enc(|o| {
        backend::backend_key_data(o, -5, &[0xca, 0xfe, 0xba, 0xbe])
    })) {
        Message::BackendKeyData(b) => {
            assert_eq!(
                (b.process_id(), b.secret_key()),
                (-5, 0xcafe_babe_u32 as i32)
            )
        }
        _ => panic!("not BackendKeyData"),
    }
    match pg_parse(&enc(|o| backend::ready_for_query(o, b'T'))) {
        Message::ReadyForQuery(b) => assert_eq!(b.status(), b'T'),
        _ => panic!("not ReadyForQuery"),
    }
    // ErrorFields is a FallibleIterator (crate not among our deps): check the
    // variant here and the contents with our decoder below.
    assert!(matches!(
        pg_parse(&enc(|o| backend::error_response(
            o, "FATAL", "28P01", "bad", None, None
        ))),
        Message::ErrorResponse(_)
    ));
    assert!(matches!(
        pg_parse(&enc(|o| backend::notice_response(o, "01000", "hm"))),
        Message::NoticeResponse(_)
    ));
}

#[test]
fn backend_encoders_round_trip_with_decode() {
    let msg = enc(backend::authentication_ok);
    assert_eq!(msg, b"R\0\0\0\x08\0\0\0\0", "golden AuthenticationOk");
    assert_eq!(
        decode::authentication(parse_one(&msg).1).unwrap(),
        Authentication::Ok
    );

    let msg = enc(backend::authentication_cleartext_password);
    assert_eq!(
        decode::authentication(parse_one(&msg).1).unwrap(),
        Authentication::CleartextPassword
    );

    let msg = enc(|o| backend::authentication_sasl(o, &[SCRAM_SHA_256]));
    assert_eq!(
        msg, b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0",
        "golden AuthenticationSASL"
    );
    assert_eq!(
        decode::authentication(parse_one(&msg).1).unwrap(),
        Authentication::Sasl(vec![SCRAM_SHA_256])
    );

    let msg = enc(|o| backend::authentication_sasl_continue(o, b"abc"));
    assert_eq!(
        decode::authentication(parse_one(&msg).1).unwrap(),
        Authentication::SaslContinue(b"abc")
    );
    let msg = enc(|o| backend::authentication_sasl_final(o, b"v=x"));
    assert_eq!(
        decode::authentication(parse_one(&msg).1).unwrap(),
        Authentication::SaslFinal(b"v=x")
    );

    let msg = enc(|o| backend::parameter_status(o, "server_encoding", "UTF8"));
    let (tag, body) = parse_one(&msg);
    assert_eq!(
        (tag, decode::parameter_status(body).unwrap()),
        (b'S', ("server_encoding", "UTF8"))
    );

    for len in [4, 32, 256] {
        let key = vec![0xab; len];
        let msg = enc(|o| backend::backend_key_data(o, 7, &key));
        let (tag, body) = parse_one(&msg);
        assert_eq!(
            (tag, decode::backend_key_data(body).unwrap()),
            (b'K', (7, &key[..]))
        );
    }

    let msg = enc(|o| backend::ready_for_query(o, b'I'));
    assert_eq!(msg, b"Z\0\0\0\x05I", "golden ReadyForQuery");
    assert_eq!(decode::ready_for_query(parse_one(&msg).1).unwrap(), b'I');

    let msg = enc(|o| backend::error_response(o, "FATAL", "28000", "m", Some("d"), Some("h")));
    let (tag, body) = parse_one(&msg);
    assert_eq!(tag, b'E');
    assert_eq!(
        decode::error_fields(body).unwrap(),
        vec![
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28000"),
            (b'M', "m"),
            (b'D', "d"),
            (b'H', "h")
        ]
    );
    let msg = enc(|o| backend::error_response(o, "ERROR", "08P01", "m", None, Some("h")));
    assert_eq!(
        decode::error_fields(parse_one(&msg).1).unwrap(),
        vec![
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "08P01"),
            (b'M', "m"),
            (b'H', "h")
        ]
    );

    let msg = enc(|o| backend::notice_response(o, "00000", "note"));
    let (tag, body) = parse_one(&msg);
    assert_eq!(tag, b'N');
    assert_eq!(
        decode::error_fields(body).unwrap(),
        vec![
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', "note")
        ]
    );

    let msg = enc(|o| backend::negotiate_protocol_version(o, 2, &["_pq_.a", "_pq_.b"]));
    let (tag, body) = parse_one(&msg);
    assert_eq!(tag, b'v');
    assert_eq!(
        decode::negotiate_protocol_version(body).unwrap(),
        (2, vec!["_pq_.a", "_pq_.b"])
    );
    let msg = enc(|o| backend::negotiate_protocol_version(o, 0, &[]));
    assert_eq!(
        msg, b"v\0\0\0\x0c\0\0\0\0\0\0\0\0",
        "golden NegotiateProtocolVersion"
    );

    let msg = enc(|o| frontend::sasl_initial_response(o, "PLAIN", b""));
    let (m, d) = parse_sasl_initial_response(parse_one(&msg).1).unwrap();
    assert_eq!((m.as_str(), d.len()), ("PLAIN", 0));
}

#[test]
fn encoders_replace_embedded_nul() {
    let msg = enc(|o| backend::error_response(o, "FATAL", "28000", "a\0b", Some("\0"), None));
    let fields = decode::error_fields(parse_one(&msg).1).unwrap();
    assert_eq!(fields[3], (b'M', "a\u{FFFD}b"));
    assert_eq!(fields[4], (b'D', "\u{FFFD}"));

    let p = startup(&startup_message(&[("user", "ev\0il"), ("database", "d")]));
    assert_eq!(p.param("user"), Some("ev\u{FFFD}il"));
    assert_eq!(p.param("database"), Some("d"), "later fields not shifted");

    let msg = enc(|o| frontend::password_message(o, b"pw\0tail"));
    let pw = parse_password_message(parse_one(&msg).1).unwrap();
    assert_eq!(
        pw,
        "pw\u{FFFD}tail".as_bytes(),
        "never truncated to a shorter password"
    );
}

// ---------------------------------------------------------------- incomplete vs invalid

#[test]
fn every_strict_prefix_is_incomplete() {
    for pkt in valid_startup_packets() {
        for i in 0..pkt.len() {
            let got = parse_startup_packet(&pkt[..i]);
            assert!(matches!(got, Ok(None)), "prefix {i} of {pkt:?}: {got:?}");
        }
        assert!(matches!(parse_startup_packet(&pkt), Ok(Some((_, n))) if n == pkt.len()));
    }
    for msg in valid_messages() {
        for i in 0..msg.len() {
            let got = parse_message(&msg[..i], MAX_AUTH_MESSAGE_LEN);
            assert!(matches!(got, Ok(None)), "prefix {i} of {msg:?}: {got:?}");
        }
        assert!(
            matches!(parse_message(&msg, MAX_AUTH_MESSAGE_LEN), Ok(Some((_, _, n))) if n == msg.len())
        );
    }
}

#[test]
fn oversize_lengths_rejected_on_header_bytes_alone() {
    let got = parse_startup_packet(b"\x7f\xff\xff\xff");
    assert!(matches!(
        got,
        Err(WireError::BadLength {
            len: 0x7fff_ffff,
            min: 8,
            max: MAX_STARTUP_LEN
        })
    ));
    let got = parse_message(b"p\x7f\xff\xff\xff", MAX_AUTH_MESSAGE_LEN);
    assert!(matches!(
        got,
        Err(WireError::BadLength {
            len: 0x7fff_ffff,
            min: 4,
            ..
        })
    ));
    let got = parse_message(b"p\x00\x00\x00\x03", MAX_AUTH_MESSAGE_LEN);
    assert!(matches!(got, Err(WireError::BadLength { len: 3, .. })));
    // usize::MAX as a bound must not overflow.
    let got = parse_message(b"p\xff\xff\xff\xff", usize::MAX);
    assert!(matches!(got, Ok(None)), "{got:?}");
}

/// The stream holds only the header and stays open: the reader must fail
/// right away rather than allocate for (and wait on) a 2 GiB body.
#[tokio::test]
async fn oversize_stream_header_fails_without_waiting() {
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(b"\x7f\xff\xff\xff").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), read_startup_packet(&mut server)).await;
    assert!(
        matches!(got, Ok(Err(WireError::BadLength { .. }))),
        "{got:?}"
    );

    client.write_all(b"p\x7f\xff\xff\xff").await.unwrap();
    let got = tokio::time::timeout(
        Duration::from_secs(5),
        read_message(&mut server, MAX_AUTH_MESSAGE_LEN),
    )
    .await;
    assert!(
        matches!(got, Ok(Err(WireError::BadLength { .. }))),
        "{got:?}"
    );

    // A 9-byte SSLRequest is refused after 8 bytes, before its 9th arrives.
    client
        .write_all(b"\x00\x00\x00\x09\x04\xd2\x16\x2f")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), read_startup_packet(&mut server)).await;
    assert!(
        matches!(
            got,
            Ok(Err(WireError::BadLength {
                len: 9,
                min: 8,
                max: 8
            }))
        ),
        "{got:?}"
    );
    drop(client);
}

#[tokio::test]
async fn stream_closing_mid_packet_is_closed() {
    for pkt in valid_startup_packets() {
        for i in 0..pkt.len() {
            let got = read_startup_packet(&mut &pkt[..i]).await;
            assert!(
                matches!(got, Err(WireError::Closed)),
                "prefix {i} of {pkt:?}: {got:?}"
            );
        }
    }
    for msg in valid_messages() {
        for i in 0..msg.len() {
            let got = read_message(&mut &msg[..i], MAX_AUTH_MESSAGE_LEN).await;
            assert!(
                matches!(got, Err(WireError::Closed)),
                "prefix {i} of {msg:?}: {got:?}"
            );
        }
    }
    // Over a real duplex too: the peer writes half a packet and hangs up.
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(b"\x00\x00\x00\x10\x04\xd2").await.unwrap();
    drop(client);
    assert!(matches!(
        read_startup_packet(&mut server).await,
        Err(WireError::Closed)
    ));
}

#[tokio::test]
async fn readers_consume_exactly_one_packet() {
    const NEXT: &[u8] = b"\x16\x03\x01 next bytes belong to TLS";
    for pkt in valid_startup_packets() {
        let stream = [&pkt[..], NEXT].concat();
        let mut rest = &stream[..];
        let got = read_startup_packet(&mut rest).await.unwrap();
        assert_eq!(got, startup(&pkt));
        assert_eq!(rest, NEXT);
    }
    for msg in valid_messages() {
        let stream = [&msg[..], NEXT].concat();
        let mut rest = &stream[..];
        let (tag, body) = read_message(&mut rest, MAX_AUTH_MESSAGE_LEN).await.unwrap();
        let (want_tag, want_body) = parse_one(&msg);
        assert_eq!((tag, &body[..]), (want_tag, want_body));
        assert_eq!(rest, NEXT);
    }

    // Over a duplex: SSLRequest, then a password message, then unrelated bytes.
    let (mut client, mut server) = tokio::io::duplex(1024);
    let mut wire = b"\x00\x00\x00\x08\x04\xd2\x16\x2f".to_vec();
    frontend::password_message(&mut wire, b"pw");
    wire.extend_from_slice(NEXT);
    client.write_all(&wire).await.unwrap();
    drop(client);
    assert_eq!(
        read_startup_packet(&mut server).await.unwrap(),
        StartupPacket::SslRequest
    );
    let (tag, body) = read_message(&mut server, MAX_AUTH_MESSAGE_LEN)
        .await
        .unwrap();
    assert_eq!(
        (tag, parse_password_message(&body).unwrap()),
        (b'p', b"pw".to_vec())
    );
    let mut left = Vec::new();
    server.read_to_end(&mut left).await.unwrap();
    assert_eq!(left, NEXT);
}

/// Each malformed startup fixture fails identically through the stream reader,
/// never as `Closed` (which would mean "send more").
#[tokio::test]
async fn stream_reader_rejects_startup_fixtures() {
    for (name, bytes, want) in startup_fixtures::BAD_HEADERS {
        let got = read_startup_packet(&mut &bytes[..]).await;
        assert_eq!(
            got.as_ref().err().and_then(startup_fixtures::kind),
            Some(*want),
            "{name}"
        );
    }
    for (name, bytes) in startup_fixtures::BAD_BODIES {
        let got = read_startup_packet(&mut &bytes[..]).await;
        assert!(
            matches!(got, Err(WireError::Malformed { .. })),
            "{name}: {got:?}"
        );
    }
}

struct FailingReader;

impl AsyncRead for FailingReader {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Err(std::io::Error::other("boom")))
    }
}

#[tokio::test]
async fn io_errors_pass_through() {
    assert!(matches!(
        read_startup_packet(&mut FailingReader).await,
        Err(WireError::Io(_))
    ));
    assert!(matches!(
        read_message(&mut FailingReader, 16).await,
        Err(WireError::Io(_))
    ));
}

// ---------------------------------------------------------------- fuzz

/// xorshift64: deterministic, dependency-free.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Interesting values for a length field.
const LENGTHS: &[u32] = &[
    0,
    1,
    3,
    4,
    5,
    7,
    8,
    9,
    15,
    16,
    17,
    267,
    268,
    269,
    10_000,
    10_001,
    16 * 1024 + 4,
    16 * 1024 + 5,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

fn mutate(rng: &mut XorShift, corpus: &[Vec<u8>]) -> Vec<u8> {
    let base = &corpus[rng.below(corpus.len())];
    let mut v = base.clone();
    match rng.below(6) {
        0 => (0..rng.below(48)).map(|_| rng.next() as u8).collect(),
        1 => {
            v.truncate(rng.below(v.len() + 1));
            v
        }
        2 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(v.len());
                if let Some(b) = v.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            v
        }
        3 => {
            // Length field edit: startup packets have it at 0, typed messages at 1.
            let at = rng.below(2);
            let old = v
                .get(at..at + 4)
                .map_or(0, |s| u32::from_be_bytes(s.try_into().unwrap()));
            let new = match rng.below(3) {
                0 => LENGTHS[rng.below(LENGTHS.len())],
                1 => old.wrapping_add(rng.below(17) as u32).wrapping_sub(8),
                _ => rng.next() as u32,
            };
            if let Some(s) = v.get_mut(at..at + 4) {
                s.copy_from_slice(&new.to_be_bytes());
            }
            v
        }
        4 => {
            // Insert or delete a byte somewhere.
            let i = rng.below(v.len() + 1);
            if rng.below(2) == 0 {
                v.insert(i, rng.next() as u8);
            } else if i < v.len() {
                v.remove(i);
            }
            v
        }
        _ => {
            // Splice two packets, as a pipelining client would send them.
            v.extend_from_slice(&corpus[rng.below(corpus.len())]);
            v
        }
    }
}

#[derive(Default, Debug)]
struct Tally {
    complete: usize,
    incomplete: usize,
    invalid: usize,
}

impl Tally {
    fn count<T>(&mut self, r: &Result<Option<T>, WireError>) {
        match r {
            Ok(Some(_)) => self.complete += 1,
            Ok(None) => self.incomplete += 1,
            Err(_) => self.invalid += 1,
        }
    }
}

/// Feeds `input` to every parser, checking the stream readers agree with the
/// slice parsers: same packet and bytes consumed, `Closed` for incomplete,
/// the same error for invalid.
async fn feed(input: &[u8], startup_tally: &mut Tally, message_tally: &mut Tally) {
    let parsed = parse_startup_packet(input);
    startup_tally.count(&parsed);
    let mut rest = input;
    let read = read_startup_packet(&mut rest).await;
    match (&parsed, &read) {
        (Ok(Some((p, n))), Ok(q)) => {
            assert_eq!(p, q);
            assert_eq!(rest.len(), input.len() - n, "read more than the packet");
            if let StartupPacket::Startup {
                major: 3,
                minor: 0,
                params,
            } = p
            {
                let pairs: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                assert_eq!(startup(&startup_message(&pairs)), *p, "re-encodes");
            }
        }
        (Ok(None), Err(WireError::Closed)) => {}
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("parse {parsed:?} vs read {read:?} on {input:?}"),
    }

    for max_len in [MAX_AUTH_MESSAGE_LEN, 8] {
        let parsed = parse_message(input, max_len);
        message_tally.count(&parsed);
        let mut rest = input;
        let read = read_message(&mut rest, max_len).await;
        match (&parsed, &read) {
            (Ok(Some((tag, body, n))), Ok((t, b))) => {
                assert_eq!((tag, *body), (t, &b[..]));
                assert_eq!(rest.len(), input.len() - n, "read more than the message");
            }
            (Ok(None), Err(WireError::Closed)) => {}
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("parse {parsed:?} vs read {read:?} on {input:?}"),
        }
    }

    // Body decoders, on the raw input and on it minus a message header.
    for body in [input, input.get(5..).unwrap_or_default()] {
        let _ = parse_password_message(body);
        let _ = parse_sasl_initial_response(body);
        let _ = decode::authentication(body);
        let _ = decode::parameter_status(body);
        let _ = decode::backend_key_data(body);
        let _ = decode::error_fields(body);
        let _ = decode::ready_for_query(body);
        let _ = decode::negotiate_protocol_version(body);
    }
}

#[tokio::test]
async fn fuzz_every_parser_deterministically() {
    let mut corpus = valid_startup_packets();
    corpus.extend(valid_messages());
    corpus.extend(startup_fixtures::BAD_BODIES.iter().map(|(_, b)| b.to_vec()));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut startup_tally, mut message_tally) = (Tally::default(), Tally::default());
    let start = Instant::now();
    for _ in 0..20_000 {
        let input = mutate(&mut rng, &corpus);
        feed(&input, &mut startup_tally, &mut message_tally).await;
    }
    // Generous bound for a slow debug build; the run takes well under a second.
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    // The generator must exercise all three outcomes of both framings.
    for t in [&startup_tally, &message_tally] {
        assert!(
            t.complete > 100 && t.incomplete > 100 && t.invalid > 100,
            "{t:?}"
        );
    }
}

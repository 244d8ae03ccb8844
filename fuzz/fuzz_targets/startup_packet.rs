//! Startup-phase packets from a client (SSLRequest, GSSENCRequest, CancelRequest,
//! StartupMessage): `teesql_sidecar::pgwire::parse_startup_packet` on arbitrary bytes.
//!
//! The input is treated as a byte stream: packets are parsed one after another as the
//! sidecar would after TLS negotiation. Besides "never panics", checks the documented
//! contract: a packet is never reported complete before all its bytes are there, and
//! what the crate's own encoders produce from a parsed packet parses back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teesql_sidecar::pgwire::{
    MAX_STARTUP_LEN, StartupPacket, cancel_request, parse_startup_packet, startup_message,
};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    // Each packet is at least 8 bytes, so this loop is bounded by the input.
    while let Ok(Some((packet, used))) = parse_startup_packet(rest) {
        assert!(used >= 8 && used <= MAX_STARTUP_LEN && used <= rest.len());
        let frame = &rest[..used];
        // Every strict prefix of a complete packet is "need more bytes", never a packet.
        for cut in [0, 1, 4, 7, 8, used / 2, used - 1] {
            if cut < used {
                assert!(
                    matches!(parse_startup_packet(&frame[..cut]), Ok(None)),
                    "prefix {cut} of a {used}-byte packet did not parse as incomplete"
                );
            }
        }
        let _ = packet.param("user");
        let _ = packet.param("database");
        match &packet {
            StartupPacket::Startup {
                major,
                minor,
                params,
            } => {
                assert_eq!(*major, 3);
                let pairs: Vec<(&str, &str)> =
                    params.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let encoded = startup_message(&pairs);
                match parse_startup_packet(&encoded) {
                    Ok(Some((StartupPacket::Startup { major: 3, minor: 0, params: p2 }, n))) => {
                        assert_eq!(n, encoded.len());
                        assert_eq!(&p2, params);
                    }
                    other => panic!("re-encoded StartupMessage (minor {minor}) parsed as {other:?}"),
                }
            }
            StartupPacket::Cancel { pid, key } => {
                let encoded = cancel_request(*pid, key);
                assert_eq!(encoded, frame, "CancelRequest does not re-encode to its bytes");
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => assert_eq!(used, 8),
        }
        rest = &rest[used..];
    }
});

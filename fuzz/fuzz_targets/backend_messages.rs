//! Typed messages: `parse_message` framing, the backend-message decoders the sidecar
//! uses when it logs in to Postgres (`pgwire::decode`), and the two client
//! authentication messages it parses as a server (PasswordMessage, SASLInitialResponse).
//!
//! Input layout: byte 0 picks the body bound passed to `parse_message` (so both the
//! auth-phase bound and small bounds are exercised); the rest is a byte stream of
//! messages, each dispatched on its tag. Every decoder is also run once on the raw
//! remainder, so decoders are reached even when the framing is wrong. Decoded values
//! are re-encoded with the crate's encoders and must decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use teesql_sidecar::pgwire::{
    self, MAX_AUTH_MESSAGE_LEN, backend, decode, frontend, parse_message,
    parse_password_message, parse_sasl_initial_response,
};

/// Frames one message with the crate's encoder and returns its body.
fn body_of(encoded: &[u8]) -> &[u8] {
    match parse_message(encoded, usize::MAX / 2) {
        Ok(Some((_, body, used))) => {
            assert_eq!(used, encoded.len());
            body
        }
        other => panic!("encoder output does not frame: {other:?}"),
    }
}

fn decode_all(tag: Option<u8>, body: &[u8]) {
    let any = tag.is_none();
    if any || tag == Some(b'R') {
        if let Ok(auth) = decode::authentication(body) {
            let mut out = Vec::new();
            let again = match &auth {
                decode::Authentication::Ok => {
                    backend::authentication_ok(&mut out);
                    true
                }
                decode::Authentication::CleartextPassword => {
                    backend::authentication_cleartext_password(&mut out);
                    true
                }
                decode::Authentication::Sasl(m) => {
                    backend::authentication_sasl(&mut out, m);
                    true
                }
                decode::Authentication::SaslContinue(d) => {
                    backend::authentication_sasl_continue(&mut out, d);
                    true
                }
                decode::Authentication::SaslFinal(d) => {
                    backend::authentication_sasl_final(&mut out, d);
                    true
                }
                decode::Authentication::Md5Password(_) | decode::Authentication::Other(_) => false,
            };
            if again {
                assert_eq!(decode::authentication(body_of(&out)).ok(), Some(auth));
            }
        }
    }
    if any || tag == Some(b'S') {
        if let Ok((name, value)) = decode::parameter_status(body) {
            let mut out = Vec::new();
            backend::parameter_status(&mut out, name, value);
            assert_eq!(decode::parameter_status(body_of(&out)).ok(), Some((name, value)));
        }
    }
    if any || tag == Some(b'K') {
        if let Ok((pid, key)) = decode::backend_key_data(body) {
            let mut out = Vec::new();
            backend::backend_key_data(&mut out, pid, key);
            assert_eq!(decode::backend_key_data(body_of(&out)).ok(), Some((pid, key)));
        }
    }
    if any || tag == Some(b'E') || tag == Some(b'N') {
        let _ = decode::error_fields(body);
    }
    if any || tag == Some(b'Z') {
        if let Ok(status) = decode::ready_for_query(body) {
            let mut out = Vec::new();
            backend::ready_for_query(&mut out, status);
            assert_eq!(decode::ready_for_query(body_of(&out)).ok(), Some(status));
        }
    }
    if any || tag == Some(b'v') {
        if let Ok((minor, options)) = decode::negotiate_protocol_version(body) {
            let mut out = Vec::new();
            backend::negotiate_protocol_version(&mut out, minor, &options);
            assert_eq!(
                decode::negotiate_protocol_version(body_of(&out)).ok(),
                Some((minor, options))
            );
        }
    }
    if any || tag == Some(b'p') {
        if let Ok(password) = parse_password_message(body) {
            let mut out = Vec::new();
            frontend::password_message(&mut out, &password);
            assert_eq!(parse_password_message(body_of(&out)).ok(), Some(password));
        }
        if let Ok((mechanism, data)) = parse_sasl_initial_response(body) {
            let mut out = Vec::new();
            frontend::sasl_initial_response(&mut out, &mechanism, &data);
            assert_eq!(
                parse_sasl_initial_response(body_of(&out)).ok(),
                Some((mechanism, data))
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };
    let max_len = match sel % 4 {
        0 => MAX_AUTH_MESSAGE_LEN,
        1 => usize::from(sel),
        2 => 0,
        _ => usize::MAX,
    };
    let _ = pgwire::expect_tag(sel, b'p', "fuzz");
    let mut rest = stream;
    // Each message is at least 5 bytes, so this loop is bounded by the input.
    while let Ok(Some((tag, body, used))) = parse_message(rest, max_len) {
        assert!(used >= 5 && used <= rest.len() && body.len() == used - 5);
        assert!(body.len() <= max_len);
        // A strict prefix of a complete message is never a message.
        assert!(matches!(parse_message(&rest[..used - 1], max_len), Ok(None)));
        decode_all(Some(tag), body);
        rest = &rest[used..];
    }
    decode_all(None, stream);
});

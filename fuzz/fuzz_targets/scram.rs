//! SCRAM-SHA-256(-PLUS) server exchange: `teesql_sidecar::auth::scram::ScramServer`
//! against a fixed `ScramVerifier` (password "secret", iteration count 1 so PBKDF2 is
//! cheap), with and without channel binding data.
//!
//! Input layout: byte 0 is a flag byte, the rest is split on `0xFF` (never part of
//! UTF-8, so it cannot occur in a message that passes the UTF-8 check) into
//! `[client-first, client-final, extra]`.
//!
//! * bit 0: channel binding data `Some(32 bytes)` (else `None`); bit 5 instead derives it
//!   with `tls_server_end_point(extra)` (the server's own DER walk).
//! * bits 1-2: mechanism `SCRAM-SHA-256`, `SCRAM-SHA-256-PLUS`, `extra` as text, or "".
//! * bit 3: in client-final, replace `@N` with the combined nonce the server sent, `@C`
//!   with the expected channel binding (base64 of gs2 header + binding data) and a
//!   trailing `,p=@P` with the correct proof for "secret", so the fuzzer can reach the
//!   proof check and the success path despite the random server nonce.
//! * bit 4: replay a message after the exchange (later calls must fail, not panic).
//!
//! Checks: never panics, and `client_final` succeeds only when the proof is the one a
//! client knowing the password computes (anything else would be an authentication bypass).
#![no_main]

mod common;

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac as _};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest as _, Sha256};
use teesql_sidecar::auth::scram::{
    SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramServer, ScramVerifier, tls_server_end_point,
};

const PASSWORD: &[u8] = b"secret";
const SALT: [u8; 16] = [7; 16];
const ITERATIONS: u32 = 1;

static VERIFIER: LazyLock<ScramVerifier> =
    LazyLock::new(|| ScramVerifier::new(&[PASSWORD], &SALT, ITERATIONS));
/// Two passwords: the proof check runs over every stored key.
static VERIFIER2: LazyLock<ScramVerifier> =
    LazyLock::new(|| ScramVerifier::new(&[b"other", PASSWORD], &SALT, ITERATIONS));

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(key)
        .expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage) for PASSWORD.
fn client_proof(auth_message: &[u8]) -> String {
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(PASSWORD, &SALT, ITERATIONS);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let signature = hmac(&stored_key, auth_message);
    let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
    B64.encode(proof)
}

/// Split of a client-first-message at the end of its gs2 header (after the 2nd comma).
fn gs2_split(first: &str) -> Option<(&str, &str)> {
    let mut commas = first.match_indices(',').map(|(i, _)| i);
    commas.next()?;
    let end = commas.next()? + 1;
    Some((first.get(..end)?, first.get(end..)?))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == 0xff);
    let first = parts.next().unwrap_or_default();
    let fin = parts.next().unwrap_or_default();
    let extra = parts.next().unwrap_or_default();

    let cb_data = if flags & 0x20 != 0 {
        Some(tls_server_end_point(extra))
    } else if flags & 1 != 0 {
        Some(vec![0xcb; 32])
    } else {
        None
    };
    let extra_text = String::from_utf8_lossy(extra);
    let mechanism: &str = match (flags >> 1) & 3 {
        0 => SCRAM_SHA_256,
        1 => SCRAM_SHA_256_PLUS,
        2 => &extra_text,
        _ => "",
    };
    let _ = ScramServer::mechanisms(cb_data.is_some());
    let verifier: &ScramVerifier = if flags & 0x40 != 0 { &VERIFIER2 } else { &VERIFIER };
    let mut server = ScramServer::new(verifier, cb_data.clone());
    let _ = format!("{server:?}");

    let r = server.client_first(mechanism, first);
    common::trace("client_first", &r);
    let server_first = match r {
        Ok(server_first) => server_first,
        Err(_) => {
            assert!(server.matched().is_none());
            // Any error is final.
            assert!(server.client_final(fin).is_err());
            return;
        }
    };
    let server_first = String::from_utf8(server_first).expect("server-first is UTF-8");
    let server_nonce = server_first
        .strip_prefix("r=")
        .and_then(|s| s.split(',').next())
        .expect("server-first starts with r=<nonce>");

    let mut final_msg = fin.to_vec();
    let mut expected_proof = None;
    if flags & 8 != 0 {
        if let (Ok(first_text), Ok(fin_text)) = (std::str::from_utf8(first), std::str::from_utf8(fin)) {
            if let Some((gs2, bare)) = gs2_split(first_text) {
                let mut cbind = gs2.as_bytes().to_vec();
                if gs2.starts_with("p=") {
                    cbind.extend_from_slice(cb_data.as_deref().unwrap_or_default());
                }
                let mut text = fin_text
                    .replace("@N", server_nonce)
                    .replace("@C", &B64.encode(&cbind));
                if let Some(without_proof) = text.strip_suffix(",p=@P") {
                    let auth_message = format!("{bare},{server_first},{without_proof}");
                    let proof = client_proof(auth_message.as_bytes());
                    text = format!("{without_proof},p={proof}");
                    expected_proof = Some(proof);
                }
                final_msg = text.into_bytes();
            }
        }
    }

    let r = server.client_final(&final_msg);
    common::trace("client_final", &r);
    match r {
        Ok(server_final) => {
            let proof = expected_proof.expect("client_final accepted a proof the harness did not compute");
            assert!(final_msg.ends_with(proof.as_bytes()), "accepted a different proof");
            assert!(server_final.starts_with(b"v="));
            let matched = server.matched().expect("matched() after success");
            assert_eq!(matched, if flags & 0x40 != 0 { 1 } else { 0 });
        }
        Err(_) => assert!(server.matched().is_none()),
    }
    if flags & 0x10 != 0 {
        assert!(server.client_first(mechanism, first).is_err());
        assert!(server.client_final(&final_msg).is_err());
    }
});

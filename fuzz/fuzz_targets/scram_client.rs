//! SCRAM-SHA-256 client side: `teesql_sidecar::auth::scram_client::ScramClient`, as the
//! sidecar uses it to log in to Postgres, fed a hostile server's messages.
//!
//! Input layout: split on `0xFF` into `[server-first, server-final]`. In server-first,
//! `@N` is replaced with the client's own nonce (so the fuzzer gets past the nonce check);
//! with the iteration count above 64 the input is skipped (PBKDF2 is the only cost, and a
//! real server's count is bounded by the client: tested in the unit tests).
//!
//! Checks: never panics; `server_final` accepts only the signature a server knowing the
//! password computes (anything else would let a fake Postgres pass as the real one).
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac as _};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use teesql_sidecar::auth::scram_client::{KeyCache, ScramClient};

const PASSWORD: &[u8] = b"secret";
static CACHE: KeyCache = KeyCache::new();

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(key)
        .expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |&b| b == 0xff);
    let first = parts.next().unwrap_or_default();
    let fin = parts.next().unwrap_or_default();

    let mut client = ScramClient::new(PASSWORD, &CACHE).expect("randomness");
    let _ = format!("{client:?}");
    let client_first = String::from_utf8(client.client_first()).expect("client-first is UTF-8");
    let nonce = client_first
        .strip_prefix("n,,n=,r=")
        .expect("client-first is n,,n=,r=<nonce>")
        .to_string();
    let first = String::from_utf8_lossy(first).replace("@N", &nonce);
    if let Some(i) = first
        .split(',')
        .find_map(|a| a.strip_prefix("i="))
        .and_then(|i| i.parse::<u64>().ok())
        && i > 64
    {
        return;
    }
    // Before server-first, a final message is refused.
    assert!(client.server_final(fin).is_err());
    let Ok(client_final) = client.server_first(first.as_bytes()) else {
        return;
    };
    let client_final = String::from_utf8(client_final).expect("client-final is UTF-8");
    let without_proof = client_final
        .rsplit_once(",p=")
        .map(|(w, _)| w)
        .expect("client-final ends with the proof");

    // What a server knowing PASSWORD signs.
    let attr = |k: &str| first.split(',').find_map(|a| a.strip_prefix(k)).map(str::to_string);
    let salt = B64.decode(attr("s=").expect("accepted: has a salt")).expect("accepted: base64");
    let iterations: u32 = attr("i=").expect("accepted: has i").parse().expect("accepted: a number");
    let salted = pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(PASSWORD, &salt, iterations);
    let server_key = hmac(&salted, b"Server Key");
    let auth = format!("n=,r={nonce},{first},{without_proof}");
    let genuine = format!("v={}", B64.encode(hmac(&server_key, auth.as_bytes())));

    let accepted = client.server_final(fin).is_ok();
    assert_eq!(accepted, fin == genuine.as_bytes(), "server-final {:?}", String::from_utf8_lossy(fin));
    assert!(client.server_final(genuine.as_bytes()).is_ok());
});

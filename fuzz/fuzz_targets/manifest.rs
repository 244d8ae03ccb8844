//! Cluster manifest TXT records (from DNS): `Manifest::parse`, then `signed_body`,
//! `digest`, `signer` (secp256k1 public key recovery) and `to_txt` on success, and
//! `Manifest::claims`. A parsed manifest's `to_txt` must parse back to the same fields.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use teesql_appraisal::manifest::{MAX_MANIFEST_LEN, Manifest};

fuzz_target!(|data: &[u8]| {
    let txt = String::from_utf8_lossy(data);
    let r = Manifest::parse(&txt);
    common::trace("Manifest::parse", &r);
    match r {
        Ok(m) => {
            let _ = m.signed_body();
            let _ = m.digest();
            let signer = m.signer();
            common::trace("signer", &signer);
            let out = m.to_txt();
            if out.len() <= MAX_MANIFEST_LEN {
                let again = Manifest::parse(&out).expect("to_txt output parses");
                assert_eq!(again.cluster, m.cluster);
                assert_eq!(again.leader_instance, m.leader_instance);
                assert_eq!(again.leader_url, m.leader_url);
                assert_eq!(again.epoch, m.epoch);
                assert_eq!(again.valid_until, m.valid_until);
                assert_eq!(again.signature, m.signature);
                assert_eq!(again.signer().ok(), signer.ok());
            }
        }
        Err(_) => {}
    }
    let claims = Manifest::claims(&txt);
    let _ = serde_json::to_vec(&claims);
});

//! RA-TLS certificates as presented by a peer: `decode_cert_chain` (PEM or concatenated
//! DER) and `decode_certificate_der` (X.509 parse, dstack extensions `.1` quote, `.2`
//! JSON event log, `.3` app id, `.4` usage, `.8` versioned attestation, `.9` msgpack app
//! info), then the claims built from the resulting evidence.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use teesql_appraisal::evidence::{MAX_CHAIN_LEN, decode_cert_chain, decode_certificate_der};

fuzz_target!(|data: &[u8]| {
    // The TLS stack hands over DER certificates: the input as the leaf.
    let leaf = vec![data.to_vec()];
    let r = decode_certificate_der(&leaf);
    common::trace("decode_certificate_der(input)", &r);
    if let Ok(ev) = r {
        common::exercise_evidence(&ev);
    }
    // The CLI / files path: PEM or concatenated DER.
    let chain = decode_cert_chain(data);
    common::trace("decode_cert_chain", &chain);
    if let Ok(chain) = chain {
        assert!(!chain.is_empty() && chain.len() <= MAX_CHAIN_LEN);
        if chain != leaf {
            let r = decode_certificate_der(&chain);
            common::trace("decode_certificate_der(chain)", &r);
            if let Ok(ev) = r {
                assert_eq!(ev.certificate.as_ref().map(|c| c.chain_len), Some(chain.len()));
                common::exercise_evidence(&ev);
            }
        }
    }
});

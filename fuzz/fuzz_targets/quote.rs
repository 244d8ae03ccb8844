//! DCAP quotes (SGX v3, TDX v4/v5): `decode_quote_bytes` on the raw input and
//! `decode_quote_text` (binary or hex text), then the accessors the claims use and the
//! collateral key lookup (PCK certificate parse).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use teesql_appraisal::evidence::{decode_quote_bytes, decode_quote_text};

fuzz_target!(|data: &[u8]| {
    let bytes = decode_quote_bytes(data);
    common::trace("decode_quote_bytes", &bytes);
    if let Ok(q) = &bytes {
        assert_eq!(q.raw(), data);
        common::exercise_quote(q);
    }
    // Binary input never looks like hex, so decode_quote_text would repeat the above.
    let looks_binary = bytes.is_ok() || std::str::from_utf8(data).is_err();
    if !looks_binary {
        let r = decode_quote_text(data);
        common::trace("decode_quote_text", &r);
        if let Ok(q) = r {
            common::exercise_quote(&q);
        }
    }
});

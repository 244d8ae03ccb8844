//! dstack `VersionedAttestation` blobs: `decode_attestation` (V0 SCALE and V1 msgpack),
//! and `decode_attestation_text` for text input (hex, `0x` hex, `{"attestation": hex}`).
//!
//! On success: V0 blobs re-encoded with `encode_v0` must decode to the same attestation,
//! and the evidence is turned into claims as the verifier does.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use teesql_verifier::evidence::{
    AttestationFormat, EvidenceKind, decode_attestation, decode_attestation_text,
};

fuzz_target!(|data: &[u8]| {
    let r = decode_attestation(data);
    common::trace("decode_attestation", &r);
    if let Ok(att) = r {
        common::exercise_events(&att.runtime_events);
        if att.format == AttestationFormat::VersionedV0 {
            let again = decode_attestation(&att.encode_v0()).expect("encode_v0 output decodes");
            assert_eq!(again.format, AttestationFormat::VersionedV0);
            assert_eq!(again.quote, att.quote);
            assert_eq!(again.event_log, att.event_log);
            assert_eq!(again.runtime_events, att.runtime_events);
            assert_eq!(again.report_data, att.report_data);
            assert_eq!(again.config, att.config);
        }
        let r = att.into_evidence(EvidenceKind::DstackAttestation);
        common::trace("into_evidence", &r);
        if let Ok(ev) = r {
            common::exercise_evidence(&ev);
        }
    }
    // Text forms (binary input takes the same path as above, so only text is tried).
    let text = data.trim_ascii();
    let texty = text.first() == Some(&b'{')
        || (text.len() >= 2 && text.iter().all(|b| b.is_ascii_hexdigit() || *b == b'x' || *b == b'X'));
    if texty {
        let r = decode_attestation_text(data);
        common::trace("decode_attestation_text", &r);
        if let Ok(ev) = r {
            common::exercise_evidence(&ev);
        }
    }
});

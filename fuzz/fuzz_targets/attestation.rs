//! dstack `VersionedAttestation` blobs: `decode_attestation` (V0 SCALE and V1 msgpack),
//! and `decode_attestation_text` for text input (hex, `0x` hex, `{"attestation": hex}`).
//!
//! On success: V0 blobs re-encoded (SCALE, by `encode_v0` below: production code has no
//! encoder, the development one lives in tests/devattest) must decode to the same
//! attestation, and the evidence is turned into claims as the verifier does.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use teesql_appraisal::evidence::{
    AttestationFormat, DstackAttestation, EvidenceKind, decode_attestation,
    decode_attestation_text,
};

/// SCALE compact integer.
fn put_compact(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=0x3f => out.push((n as u8) << 2),
        0x40..=0x3fff => out.extend_from_slice(&(((n as u16) << 2) | 0b01).to_le_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&(((n as u32) << 2) | 0b10).to_le_bytes()),
        _ => {
            let bytes = n.to_le_bytes();
            let len = 8 - bytes.iter().rev().take_while(|b| **b == 0).count();
            out.push((((len - 4) as u8) << 2) | 0b11);
            out.extend_from_slice(&bytes[..len]);
        }
    }
}

/// SCALE `Vec<u8>` / `String`.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_compact(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// dstack `VersionedAttestation` V0: `0x00`, DstackTdx (`0x00`) quote and event log or
/// DstackAmdSevSnp (`0x03`) report, cert chain and mr_config, runtime events, report
/// data, config.
fn encode_v0(att: &DstackAttestation) -> Vec<u8> {
    let mut out = vec![0x00];
    if let Some(snp) = &att.snp {
        out.push(0x03);
        put_bytes(&mut out, snp.report.raw());
        put_compact(&mut out, snp.cert_chain.len() as u64);
        for c in &snp.cert_chain {
            put_bytes(&mut out, c);
        }
        put_bytes(&mut out, snp.mr_config.as_bytes());
    } else {
        out.push(0x00);
        put_bytes(&mut out, &att.quote);
        put_compact(&mut out, att.event_log.len() as u64);
        for e in &att.event_log {
            out.extend_from_slice(&e.imr.to_le_bytes());
            out.extend_from_slice(&e.event_type.to_le_bytes());
            put_bytes(&mut out, &e.digest);
            put_bytes(&mut out, e.event.as_bytes());
            put_bytes(&mut out, &e.event_payload);
        }
    }
    put_compact(&mut out, att.runtime_events.len() as u64);
    for e in &att.runtime_events {
        put_bytes(&mut out, e.event.as_bytes());
        put_bytes(&mut out, &e.payload);
    }
    out.extend_from_slice(&att.report_data);
    put_bytes(&mut out, att.config.as_deref().unwrap_or_default().as_bytes());
    out
}

fuzz_target!(|data: &[u8]| {
    let r = decode_attestation(data);
    common::trace("decode_attestation", &r);
    if let Ok(att) = r {
        common::exercise_events(&att.runtime_events);
        if att.format == AttestationFormat::VersionedV0 {
            let again = decode_attestation(&encode_v0(&att)).expect("encode_v0 output decodes");
            assert_eq!(again.format, AttestationFormat::VersionedV0);
            assert_eq!(again.quote, att.quote);
            assert_eq!(again.event_log, att.event_log);
            assert_eq!(again.runtime_events, att.runtime_events);
            assert_eq!(again.report_data, att.report_data);
            assert_eq!(again.config, att.config);
            let snp = |a: &DstackAttestation| {
                a.snp
                    .as_ref()
                    .map(|s| (s.report.clone(), s.cert_chain.clone(), s.mr_config.clone()))
            };
            assert_eq!(snp(&again), snp(&att));
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

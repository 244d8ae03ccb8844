//! Encoders for what dstack puts in RA-TLS certificates: the versioned attestation of
//! extension `.8` (V0 SCALE, V1 msgpack), and the DER OCTET STRING every extension value
//! is wrapped in. Written from dstack's own type definitions (cited at each), not from
//! the verifier's decoders. Production code never encodes evidence; these serve the
//! development agent and tests.

use rmpv::Value;
use teesql_appraisal::evidence::{AttestationFormat, DstackAttestation};

/// The form `att.format` names: V1 (msgpack) for `VersionedV1`, V0 (SCALE) otherwise.
/// dstack writes V1 whenever a runtime event has version 2, since SCALE cannot carry it.
pub fn versioned_attestation(att: &DstackAttestation) -> Vec<u8> {
    match att.format {
        AttestationFormat::VersionedV1 => attestation_v1(att),
        _ => attestation_v0(att),
    }
}

/// V1: msgpack of dstack's `AttestationV1` with named fields (`rmp_serde::to_vec_named`;
/// dstack `dstack-attest/src/v1.rs`, next@312dc605):
/// `{version: 1, platform: {kind: "tdx", data: {quote, event_log}}, stack: {kind:
/// "dstack", data: {report_data, runtime_events, config}}}`. Plain `Vec<u8>` fields
/// (`quote`, `report_data`) are serde sequences, so arrays of integers; the event fields
/// dstack marks `serde_human_bytes` (digest, payloads) are msgpack `bin`; an event's
/// `version` is written only when it is not 1, its `preimage` only when set.
pub fn attestation_v1(att: &DstackAttestation) -> Vec<u8> {
    let s = |t: &str| Value::String(t.into());
    let ints = |b: &[u8]| Value::Array(b.iter().map(|x| Value::from(*x)).collect());
    let bin = |b: &[u8]| Value::Binary(b.to_vec());
    let versioned = |mut fields: Vec<(Value, Value)>, version: u8| {
        if version != 1 {
            fields.push((s("version"), Value::from(version)));
        }
        fields
    };
    let event_log = att
        .event_log
        .iter()
        .map(|e| {
            let mut fields = versioned(
                vec![
                    (s("imr"), Value::from(e.imr)),
                    (s("event_type"), Value::from(e.event_type)),
                    (s("digest"), bin(&e.digest)),
                    (s("event"), s(&e.event)),
                    (s("event_payload"), bin(&e.event_payload)),
                ],
                e.version,
            );
            if let Some(p) = &e.preimage {
                fields.push((s("preimage"), bin(p)));
            }
            Value::Map(fields)
        })
        .collect();
    let runtime_events = att
        .runtime_events
        .iter()
        .map(|e| {
            Value::Map(versioned(
                vec![(s("event"), s(&e.event)), (s("payload"), bin(&e.payload))],
                e.version,
            ))
        })
        .collect();
    let doc = Value::Map(vec![
        (s("version"), Value::from(1)),
        (
            s("platform"),
            Value::Map(vec![
                (s("kind"), s("tdx")),
                (
                    s("data"),
                    Value::Map(vec![
                        (s("quote"), ints(&att.quote)),
                        (s("event_log"), Value::Array(event_log)),
                    ]),
                ),
            ]),
        ),
        (
            s("stack"),
            Value::Map(vec![
                (s("kind"), s("dstack")),
                (
                    s("data"),
                    Value::Map(vec![
                        (s("report_data"), ints(&att.report_data)),
                        (s("runtime_events"), Value::Array(runtime_events)),
                        (s("config"), s(att.config.as_deref().unwrap_or_default())),
                    ]),
                ),
            ]),
        ),
    ]);
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &doc);
    out
}

/// V0 SCALE (`0x00`, DstackTdx or DstackAmdSevSnp, …), the form dstack v0.5.9+ puts in
/// `.8`. Runtime events of version 2 cannot be carried in V0 (dstack switches to V1 for
/// them); they are encoded as their name and payload only.
pub fn attestation_v0(att: &DstackAttestation) -> Vec<u8> {
    let mut out = Vec::with_capacity(att.quote.len() + 1024);
    out.push(0x00); // V0
    if let Some(snp) = &att.snp {
        out.push(0x03); // DstackAmdSevSnp
        put_bytes(&mut out, snp.report.raw());
        put_compact(&mut out, snp.cert_chain.len() as u64);
        for c in &snp.cert_chain {
            put_bytes(&mut out, c);
        }
        put_bytes(&mut out, snp.mr_config.as_bytes());
    } else {
        out.push(0x00); // DstackTdx
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
    put_bytes(
        &mut out,
        att.config.as_deref().unwrap_or_default().as_bytes(),
    );
    out
}

/// Wrap an extension value the way dstack does: a DER OCTET STRING, which then goes into
/// `extnValue` (for certificate builders such as rcgen's custom extensions).
pub fn extension_value(content: &[u8]) -> Vec<u8> {
    yasna::construct_der(|w| w.write_bytes(content))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use teesql_appraisal::evidence::decode_attestation;

    fn blob() -> Vec<u8> {
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/dstack/simulator-attestation.bin"
        ))
        .unwrap()
    }

    #[test]
    fn v0_encoding_reproduces_the_recorded_blob_byte_for_byte() {
        let b = blob();
        assert_eq!(attestation_v0(&decode_attestation(&b).unwrap()), b);
        // SEV-SNP too, byte for byte.
        let snp = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/dstack/sev-snp-attestation.bin"
        ))
        .unwrap();
        assert_eq!(attestation_v0(&decode_attestation(&snp).unwrap()), snp);
    }

    #[test]
    fn v1_encoding_carries_version_2_events_that_v0_cannot() {
        let mut att = decode_attestation(&blob()).unwrap();
        for e in &mut att.runtime_events {
            e.version = 2;
        }
        att.format = AttestationFormat::VersionedV1;
        let v1 = versioned_attestation(&att);
        assert!(matches!(v1[0], 0x80..=0x8f), "a msgpack map: {:#x}", v1[0]);
        let back = decode_attestation(&v1).unwrap();
        assert_eq!(back.format, AttestationFormat::VersionedV1);
        assert_eq!(back.runtime_events, att.runtime_events);
        assert_eq!(back.quote, att.quote);
        assert_eq!(back.report_data, att.report_data);
        assert_eq!(back.event_log, att.event_log);
    }

    #[test]
    fn compact_encoding_round_trips_through_the_verifiers_decoder() {
        // A SCALE Vec<u8> of each length, decoded as an attestation's quote field.
        for n in [0usize, 1, 63, 64, 16383, 16384, 70_000] {
            let att = DstackAttestation {
                format: teesql_appraisal::evidence::AttestationFormat::VersionedV0,
                quote: vec![7; n],
                snp: None,
                event_log: Vec::new(),
                runtime_events: Vec::new(),
                report_data: [0; 64],
                config: None,
            };
            let back = decode_attestation(&attestation_v0(&att)).unwrap();
            assert_eq!(back.quote.len(), n);
        }
    }

    #[test]
    fn extension_value_is_a_der_octet_string_at_every_length_form() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![0x5a; len];
            let wrapped = extension_value(&content);
            assert_eq!(wrapped[0], 0x04);
            let (_, parsed) =
                x509_parser::der_parser::der::parse_der_octetstring(&wrapped).unwrap();
            assert_eq!(parsed.as_slice().unwrap(), &content[..], "len {len}");
        }
    }
}

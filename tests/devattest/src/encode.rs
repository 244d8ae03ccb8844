//! Encoders for what dstack puts in RA-TLS certificates, the inverses of the verifier's
//! decoders: the V0 SCALE attestation of extension `.8`, and the DER OCTET STRING every
//! extension value is wrapped in. Production code never encodes evidence; these serve the
//! development agent and tests.

use teesql_verifier::evidence::DstackAttestation;

/// V0 SCALE (`0x00`, DstackTdx, …), the form dstack v0.5.9+ puts in `.8`. Runtime events
/// of version 2 cannot be carried in V0 (dstack switches to V1 for them); they are
/// encoded as their name and payload only.
pub fn attestation_v0(att: &DstackAttestation) -> Vec<u8> {
    let mut out = Vec::with_capacity(att.quote.len() + 1024);
    out.push(0x00); // V0
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
    use teesql_verifier::evidence::decode_attestation;

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
    }

    #[test]
    fn compact_encoding_round_trips_through_the_verifiers_decoder() {
        // A SCALE Vec<u8> of each length, decoded as an attestation's quote field.
        for n in [0usize, 1, 63, 64, 16383, 16384, 70_000] {
            let att = DstackAttestation {
                format: teesql_verifier::evidence::AttestationFormat::VersionedV0,
                quote: vec![7; n],
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

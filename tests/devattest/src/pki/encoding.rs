//! The encodings the development PKI needs, from maintained crates: DER (yasna) for the
//! Intel SGX PCK extension, PEM (pem), percent-encoding for the PCCS issuer-chain headers,
//! RFC 3339 (time) for TCB Info / QE Identity dates.

use yasna::models::ObjectIdentifier;

/// Intel SGX extension OID 1.2.840.113741.1.13.1.
pub(super) const SGX_EXTENSION_OID: &[u64] = &[1, 2, 840, 113741, 1, 13, 1];

/// The value of one entry of the SGX extension.
pub(super) enum SgxValue<'a> {
    Bytes(&'a [u8]),
    Integer(u64),
    Enumerated(i64),
    Boolean(bool),
    Entries(Vec<SgxEntry<'a>>),
}

/// `SEQUENCE { OID (SGX extension arc + children), value }`.
pub(super) struct SgxEntry<'a> {
    pub children: Vec<u64>,
    pub value: SgxValue<'a>,
}

/// The DER of a `SEQUENCE` of SGX extension entries.
pub(super) fn sgx_entries(entries: &[SgxEntry<'_>]) -> Vec<u8> {
    yasna::construct_der(|w| write_entries(w, entries))
}

fn write_entries(w: yasna::DERWriter<'_>, entries: &[SgxEntry<'_>]) {
    w.write_sequence(|w| {
        for e in entries {
            w.next().write_sequence(|w| {
                let arcs: Vec<u64> = [SGX_EXTENSION_OID, &e.children].concat();
                w.next().write_oid(&ObjectIdentifier::from_slice(&arcs));
                let v = w.next();
                match &e.value {
                    SgxValue::Bytes(b) => v.write_bytes(b),
                    SgxValue::Integer(n) => v.write_u64(*n),
                    SgxValue::Enumerated(n) => v.write_enum(*n),
                    SgxValue::Boolean(b) => v.write_bool(*b),
                    SgxValue::Entries(inner) => write_entries(v, inner),
                }
            });
        }
    });
}

/// The DER of an OBJECT IDENTIFIER (tests look for it inside the extension).
#[cfg(test)]
pub(super) fn oid(arcs: &[u64]) -> Vec<u8> {
    yasna::construct_der(|w| w.write_oid(&ObjectIdentifier::from_slice(arcs)))
}

/// PEM with `label`, 64-character lines and LF line endings (the layout rcgen and Intel's
/// PCS produce on Linux), ending with a newline.
pub(super) fn pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Everything but RFC 3986 unreserved characters, as Intel's PCS escapes the issuer-chain
/// headers (and as dcap-qvl's client decodes them).
const ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub(super) fn percent_encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, ESCAPED).to_string()
}

/// The largest unix time with a four-digit year (9999-12-31T23:59:59Z).
pub(super) const MAX_RFC3339_UNIX: u64 = 253_402_300_799;

/// `secs` as `YYYY-MM-DDTHH:MM:SSZ`, the format of Intel's `issueDate` / `nextUpdate`.
pub(super) fn rfc3339(secs: u64) -> Option<String> {
    offset_date_time(secs)?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// `secs` as a UTC `OffsetDateTime`, if it has a four-digit year.
pub(super) fn offset_date_time(secs: u64) -> Option<time::OffsetDateTime> {
    if secs > MAX_RFC3339_UNIX {
        return None;
    }
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgx_entries_are_the_der_dcap_qvl_reads() {
        // 1.2.840.113741.1.13.1 (Intel SGX extension)
        assert_eq!(
            oid(SGX_EXTENSION_OID),
            [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01
            ]
        );
        let der = sgx_entries(&[SgxEntry {
            children: vec![5],
            value: SgxValue::Enumerated(1),
        }]);
        // SEQUENCE { SEQUENCE { OID ...1.5, ENUMERATED 1 } }
        assert_eq!(der[0], 0x30);
        assert!(der.ends_with(&[0x0a, 0x01, 0x01]));
    }

    #[test]
    fn percent_encoding_is_the_pcs_header_form() {
        let text = "-----BEGIN CERTIFICATE-----\nMII+/=\n-----END CERTIFICATE-----\n";
        let encoded = percent_encode(text);
        assert!(encoded.starts_with("-----BEGIN%20CERTIFICATE-----%0AMII%2B%2F%3D%0A"));
        assert_eq!(
            percent_encoding::percent_decode_str(&encoded)
                .decode_utf8()
                .unwrap(),
            text
        );
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(0).as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(
            rfc3339(1_767_225_600 + 3_661).as_deref(),
            Some("2026-01-01T01:01:01Z")
        );
        assert_eq!(
            rfc3339(MAX_RFC3339_UNIX).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(rfc3339(MAX_RFC3339_UNIX + 1), None);
    }
}

//! Small, dependency-free encoders used by the development PKI: a DER writer for the
//! Intel SGX PCK extension, PEM (base64) for certificates, percent-encoding for the PCCS
//! issuer-chain headers, and RFC 3339 timestamps for TCB Info / QE Identity.

use std::fmt::Write as _;

/// DER tag numbers used here.
pub(super) mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const ENUMERATED: u8 = 0x0a;
    pub const SEQUENCE: u8 = 0x30;
}

/// One DER TLV with a definite-length encoding.
pub(super) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len().saturating_add(6));
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        // Short form: `len` < 0x80 fits in one byte.
        out.push(len as u8);
    } else {
        let be = len.to_be_bytes();
        let skip = be.iter().take_while(|b| **b == 0).count();
        let significant = &be[skip..];
        // At most size_of::<usize>() (<= 16) length bytes, so this fits in 7 bits.
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// A DER SEQUENCE of already-encoded elements.
pub(super) fn sequence(items: &[Vec<u8>]) -> Vec<u8> {
    tlv(tag::SEQUENCE, &items.concat())
}

/// A DER OBJECT IDENTIFIER from its arcs (at least two; the first two must be valid).
pub(super) fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut content = Vec::new();
    if let [first, second, rest @ ..] = arcs {
        push_base128(
            &mut content,
            first.saturating_mul(40).saturating_add(*second),
        );
        for arc in rest {
            push_base128(&mut content, *arc);
        }
    }
    tlv(tag::OID, &content)
}

fn push_base128(out: &mut Vec<u8>, mut value: u64) {
    let mut groups = [0u8; 10];
    let mut n = 0;
    loop {
        // `value & 0x7f` fits in a byte; `n` < 10 since a u64 has at most 10 7-bit groups.
        groups[n] = (value & 0x7f) as u8;
        n += 1;
        value >>= 7;
        if value == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        let continuation = if i == 0 { 0 } else { 0x80 };
        out.push(groups[i] | continuation);
    }
}

/// A DER INTEGER (non-negative, minimal encoding).
pub(super) fn integer(value: u64) -> Vec<u8> {
    tlv(tag::INTEGER, &unsigned_be(value))
}

/// A DER ENUMERATED (non-negative, minimal encoding).
pub(super) fn enumerated(value: u64) -> Vec<u8> {
    tlv(tag::ENUMERATED, &unsigned_be(value))
}

fn unsigned_be(value: u64) -> Vec<u8> {
    let be = value.to_be_bytes();
    let skip = be.iter().take_while(|b| **b == 0).count().min(7);
    let mut out = Vec::with_capacity(9);
    if be[skip] & 0x80 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&be[skip..]);
    out
}

/// A DER OCTET STRING.
pub(super) fn octet_string(bytes: &[u8]) -> Vec<u8> {
    tlv(tag::OCTET_STRING, bytes)
}

/// A DER BOOLEAN.
pub(super) fn boolean(value: bool) -> Vec<u8> {
    tlv(tag::BOOLEAN, &[if value { 0xff } else { 0x00 }])
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub(super) fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3).saturating_mul(4));
    for chunk in data.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(BASE64[((n >> shift) & 0x3f) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// PEM with `label`, 64-character lines and LF line endings (the same layout rcgen and
/// Intel's PCS produce on Linux), ending with a newline.
pub(super) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = String::with_capacity(b64.len().saturating_add(b64.len() / 64 + 64));
    // Writing to a String cannot fail.
    let _ = writeln!(out, "-----BEGIN {label}-----");
    for line in b64.as_bytes().chunks(64) {
        // `b64` is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// Percent-encode everything except RFC 3986 unreserved characters, like the
/// `urlencoding` crate (and Intel's PCS for the issuer-chain headers) does.
pub(super) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len().saturating_mul(3));
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decode `%XX` escapes (and `+` as a space when `plus_is_space`, for query strings).
/// Invalid escapes are kept literally; invalid UTF-8 is replaced.
pub(super) fn percent_decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(if plus_is_space && b == b'+' { b' ' } else { b });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The largest unix time with a four-digit year (9999-12-31T23:59:59Z).
pub(super) const MAX_RFC3339_UNIX: u64 = 253_402_300_799;

/// `secs` as `YYYY-MM-DDTHH:MM:SSZ`, the format of Intel's `issueDate` / `nextUpdate`.
pub(super) fn rfc3339(secs: u64) -> Option<String> {
    let dt = offset_date_time(secs)?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    ))
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
    fn der_primitives() {
        assert_eq!(integer(0), [0x02, 0x01, 0x00]);
        assert_eq!(integer(13), [0x02, 0x01, 0x0d]);
        assert_eq!(integer(0x80), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(integer(0x1234), [0x02, 0x02, 0x12, 0x34]);
        assert_eq!(enumerated(1), [0x0a, 0x01, 0x01]);
        assert_eq!(boolean(true), [0x01, 0x01, 0xff]);
        assert_eq!(boolean(false), [0x01, 0x01, 0x00]);
        // 1.2.840.113741.1.13.1 (Intel SGX extension)
        assert_eq!(
            oid(&[1, 2, 840, 113741, 1, 13, 1]),
            [
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf8, 0x4d, 0x01, 0x0d, 0x01
            ]
        );
        let long = tlv(tag::OCTET_STRING, &[7u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(long.len(), 304);
        assert_eq!(
            tlv(tag::OCTET_STRING, &[1u8; 0x80])[..3],
            [0x04, 0x81, 0x80]
        );
    }

    #[test]
    fn base64_vectors() {
        for (input, expected) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff, 0xbf], "+/+/"),
        ] {
            assert_eq!(base64(input), expected);
        }
    }

    #[test]
    fn percent_round_trip() {
        let text = "-----BEGIN CERTIFICATE-----\nMII+/=\n-----END CERTIFICATE-----\n";
        let encoded = percent_encode(text);
        assert!(encoded.starts_with("-----BEGIN%20CERTIFICATE-----%0AMII%2B%2F%3D%0A"));
        assert_eq!(percent_decode(&encoded, false), text);
        assert_eq!(percent_decode("a+b%2", true), "a b%2");
        assert_eq!(percent_decode("%zz%41", false), "%zzA");
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

//! dstack RA-TLS certificates: every form dstack has emitted.
//!
//! Custom extensions live under Phala's PEN `1.3.6.1.4.1.62397.1.`; each value is a DER
//! OCTET STRING inside `extnValue`. `.1` + `.2` is the legacy form (raw quote + JSON
//! event log), `.8` the versioned attestation of dstack v0.5.9 and later.

use serde::Serialize;
use x509_parser::der_parser::der::parse_der_octetstring;
use x509_parser::prelude::{FromDer, Pem, X509Certificate};

use super::attestation::{AttestationFormat, decode_attestation};
use super::{
    EventLog, Evidence, EvidenceError, EvidenceKind, MAX_CHAIN_LEN, MAX_EVENTS, MAX_EVIDENCE_LEN,
    MAX_EXTENSION_LEN, check_len, decode_quote_bytes,
};
use crate::eventlog::TdxEvent;

/// The dstack certificate extension OIDs.
pub mod oid {
    /// Raw DCAP quote (legacy, dstack ≤ v0.5.8).
    pub const TDX_QUOTE: &str = "1.3.6.1.4.1.62397.1.1";
    /// JSON event log (legacy, with `.1`).
    pub const EVENT_LOG: &str = "1.3.6.1.4.1.62397.1.2";
    /// App id, 20 raw bytes.
    pub const APP_ID: &str = "1.3.6.1.4.1.62397.1.3";
    /// Certificate usage string (`app:custom`, `app:ca`, `kms:rpc`).
    pub const CERT_USAGE: &str = "1.3.6.1.4.1.62397.1.4";
    /// Versioned attestation (dstack ≥ v0.5.9).
    pub const ATTESTATION: &str = "1.3.6.1.4.1.62397.1.8";
    /// App info, msgpack (issuer claim, not attested).
    pub const APP_INFO: &str = "1.3.6.1.4.1.62397.1.9";
}

/// What a certificate says about itself (not attested unless noted).
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// The leaf's subject distinguished name, as text (e.g. `CN=…`).
    pub subject: String,
    /// The leaf's issuer distinguished name, as text.
    pub issuer: String,
    /// Validity, unix seconds.
    pub not_before: i64,
    /// End of the leaf's validity, unix seconds.
    pub not_after: i64,
    /// Which attestation form the certificate carries.
    pub attestation_format: AttestationFormat,
    /// `.3`: app id (hex).
    pub app_id: Option<String>,
    /// `.4`: usage string.
    pub usage: Option<String>,
    /// `.9`: app info, decoded from msgpack (bytes as hex). An issuer claim, not attested.
    pub app_info: Option<serde_json::Value>,
    /// Number of certificates presented with this one (leaf included).
    pub chain_len: usize,
    /// SubjectPublicKeyInfo DER of the leaf: what the quote's report data must bind.
    #[serde(skip)]
    pub spki_der: Vec<u8>,
}

/// Split a PEM or DER input into DER certificates, leaf first.
pub fn decode_cert_chain(input: &[u8]) -> Result<Vec<Vec<u8>>, EvidenceError> {
    check_len("certificate input", input.len(), MAX_EVIDENCE_LEN)?;
    let trimmed = input.trim_ascii_start();
    let ders: Vec<Vec<u8>> = if trimmed.starts_with(b"-----BEGIN") {
        let mut out = Vec::new();
        for pem in Pem::iter_from_buffer(input) {
            let pem = pem.map_err(|e| EvidenceError::invalid(format!("invalid PEM: {e}")))?;
            if pem.label != "CERTIFICATE" {
                continue;
            }
            out.push(pem.contents);
            if out.len() > MAX_CHAIN_LEN {
                break;
            }
        }
        out
    } else {
        split_der_sequence(input)?
    };
    if ders.is_empty() {
        return Err(EvidenceError::invalid("no certificate found in the input"));
    }
    if ders.len() > MAX_CHAIN_LEN {
        return Err(EvidenceError::TooLarge {
            what: "certificate chain (certificates)",
            len: ders.len(),
            limit: MAX_CHAIN_LEN,
        });
    }
    Ok(ders)
}

/// Concatenated DER certificates.
fn split_der_sequence(mut input: &[u8]) -> Result<Vec<Vec<u8>>, EvidenceError> {
    let mut out = Vec::new();
    while !input.is_empty() && out.len() <= MAX_CHAIN_LEN {
        let (rest, _) = X509Certificate::from_der(input).map_err(|e| {
            EvidenceError::invalid(format!(
                "not a PEM or DER certificate (certificate {}): {e}",
                out.len() + 1
            ))
        })?;
        let used = input.len() - rest.len();
        out.push(input[..used].to_vec());
        input = rest;
    }
    Ok(out)
}

/// Decode a presented chain (DER, leaf first) into evidence. The leaf carries the
/// attestation; the rest of the chain is not trusted for anything.
pub fn decode_certificate_der(chain: &[Vec<u8>]) -> Result<Evidence, EvidenceError> {
    let Some(leaf) = chain.first() else {
        return Ok(Evidence::none());
    };
    check_len("certificate", leaf.len(), MAX_EVIDENCE_LEN)?;
    if chain.len() > MAX_CHAIN_LEN {
        return Err(EvidenceError::TooLarge {
            what: "certificate chain (certificates)",
            len: chain.len(),
            limit: MAX_CHAIN_LEN,
        });
    }
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| EvidenceError::invalid(format!("malformed X.509 certificate: {e}")))?;

    let mut legacy_quote = None;
    let mut legacy_log = None;
    let mut versioned = None;
    let mut app_id = None;
    let mut usage = None;
    let mut app_info = None;
    for ext in cert.extensions() {
        let id = ext.oid.to_id_string();
        let target = match id.as_str() {
            oid::TDX_QUOTE => &mut legacy_quote,
            oid::EVENT_LOG => &mut legacy_log,
            oid::ATTESTATION => &mut versioned,
            oid::APP_ID => &mut app_id,
            oid::CERT_USAGE => &mut usage,
            oid::APP_INFO => &mut app_info,
            _ => continue,
        };
        check_len("certificate extension", ext.value.len(), MAX_EXTENSION_LEN)?;
        if target.is_some() {
            return Err(EvidenceError::invalid(format!(
                "certificate has extension {id} twice"
            )));
        }
        *target = Some(octet_string(&id, ext.value)?);
    }

    // The versioned form is the current one; a certificate carrying both forms is
    // judged by the versioned attestation, as dstack's own reader does.
    let (mut evidence, format) = if let Some(blob) = versioned {
        let att = decode_attestation(&blob)?;
        let format = att.format;
        (att.into_evidence(EvidenceKind::RaTlsCert)?, format)
    } else if let Some(quote) = legacy_quote {
        let mut ev = Evidence::from_quote(decode_quote_bytes(&quote)?);
        ev.kind = EvidenceKind::RaTlsCert;
        ev.event_log = legacy_log
            .map(|log| {
                serde_json::from_slice::<Vec<TdxEvent>>(&log)
                    .map(|tdx_events| EventLog {
                        tdx_events,
                        runtime_events: Vec::new(),
                    })
                    .map_err(|e| {
                        EvidenceError::invalid(format!(
                            "event log extension {} is not a dstack event log: {e}",
                            oid::EVENT_LOG
                        ))
                    })
                    .and_then(|log| {
                        check_len("event log (events)", log.tdx_events.len(), MAX_EVENTS)?;
                        Ok(log)
                    })
            })
            .transpose()?;
        (ev, AttestationFormat::LegacyQuote)
    } else {
        let mut ev = Evidence::none();
        ev.kind = EvidenceKind::RaTlsCert;
        (ev, AttestationFormat::None)
    };

    evidence.certificate = Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        attestation_format: format,
        app_id: app_id.map(hex::encode),
        usage: usage.map(|u| String::from_utf8_lossy(&u).into_owned()),
        app_info: app_info.map(|b| decode_app_info(&b)).transpose()?,
        chain_len: chain.len(),
        spki_der: cert.public_key().raw.to_vec(),
    });
    Ok(evidence)
}

/// The contents of the DER OCTET STRING dstack wraps every extension value in.
fn octet_string(oid: &str, value: &[u8]) -> Result<Vec<u8>, EvidenceError> {
    match parse_der_octetstring(value) {
        Ok(([], obj)) => obj
            .as_slice()
            .map(<[u8]>::to_vec)
            .map_err(|e| EvidenceError::invalid(format!("extension {oid}: {e}"))),
        Ok(_) => Err(EvidenceError::invalid(format!(
            "extension {oid} has bytes after its OCTET STRING"
        ))),
        Err(e) => Err(EvidenceError::invalid(format!(
            "extension {oid} is not a DER OCTET STRING: {e}"
        ))),
    }
}

/// Largest `.9` app info accepted. dstack's is a few hundred bytes; it is an issuer claim
/// that nothing attests, so a peer gets no room to make the verifier build (and cache)
/// large documents from it.
pub const MAX_APP_INFO_LEN: usize = 4096;
/// Deepest nesting of the `.9` app info, as rmpv counts it (a value and an array's or
/// map's contents count one each, so 16 allows 7 nested arrays; dstack's nests 2).
pub const MAX_APP_INFO_DEPTH: usize = 16;

/// `.9` app info: msgpack, turned into JSON with byte strings as hex.
fn decode_app_info(bytes: &[u8]) -> Result<serde_json::Value, EvidenceError> {
    if bytes.len() > MAX_APP_INFO_LEN {
        return Err(EvidenceError::invalid(format!(
            "app info extension {} is {} bytes, at most {MAX_APP_INFO_LEN}",
            oid::APP_INFO,
            bytes.len()
        )));
    }
    let value = rmpv::decode::read_value_ref_with_max_depth(&mut &bytes[..], MAX_APP_INFO_DEPTH)
        .map_err(|e| {
            EvidenceError::invalid(format!(
                "app info extension {} is not msgpack: {e}",
                oid::APP_INFO
            ))
        })?;
    let json = super::attestation::msgpack_to_json(&value);
    // dstack writes a positional array (8 fields in 0.5.6–0.5.11, 9 in 0.6.0: the last
    // is `init_script_hashes`) or, later, a map with these names; name the array's
    // fields like the map's.
    let mut info = match json {
        serde_json::Value::Array(items) if (8..=9).contains(&items.len()) => {
            serde_json::Value::Object(
                APP_INFO_FIELDS
                    .iter()
                    .map(|f| f.to_string())
                    .zip(items)
                    .collect(),
            )
        }
        other => other,
    };
    // `key_provider_info` is the key-provider event's JSON, as bytes: show it as JSON.
    if let Some(kp) = info.get_mut("key_provider_info") {
        let parsed = kp
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(serde_json::Value::is_object);
        if let Some(parsed) = parsed {
            *kp = parsed;
        }
    }
    Ok(info)
}

/// Field order of dstack's `AppInfo` (ra-tls), for the positional msgpack form.
const APP_INFO_FIELDS: [&str; 9] = [
    "app_id",
    "compose_hash",
    "instance_id",
    "device_id",
    "mr_system",
    "mr_aggregated",
    "os_image_hash",
    "key_provider_info",
    "init_script_hashes",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_info_is_bounded_in_size_and_depth() {
        // 623 bytes that nest 300 deep overflowed the stack with rmpv's default depth.
        let mut deep = vec![0x91u8; 300];
        deep.push(0x90);
        let err = decode_app_info(&deep).unwrap_err().to_string();
        assert!(err.contains("not msgpack"), "{err}");
        let mut ok_depth = vec![0x91u8; 6];
        ok_depth.push(0x90);
        assert!(decode_app_info(&ok_depth).is_ok());
        // 50,000 empty arrays (~50 KB): refused from its length, before decoding.
        let mut wide = vec![0xdd, 0x00, 0x00, 0xc3, 0x50];
        wide.extend(std::iter::repeat_n(0x90u8, 50_000));
        let err = decode_app_info(&wide).unwrap_err().to_string();
        assert!(err.contains("at most 4096"), "{err}");
        // dstack's positional form still decodes, with its fields named.
        let mut buf = Vec::new();
        let v = rmpv::Value::Array((0..8).map(|i| rmpv::Value::Binary(vec![i; 20])).collect());
        rmpv::encode::write_value(&mut buf, &v).unwrap();
        let json = decode_app_info(&buf).unwrap();
        assert_eq!(json["app_id"], hex::encode([0u8; 20]));
    }

    #[test]
    fn app_info_in_every_form_dstack_wrote() {
        use rmpv::Value;
        let bin = |b: &[u8]| Value::Binary(b.to_vec());
        let eight = vec![
            bin(&[0xa1, 0xa2, 0xa3]),
            bin(&[0xb1, 0xb2]),
            bin(&[0xc1, 0xc2]),
            bin(&[0xd1]),
            bin(&[0x51; 32]),
            bin(&[0x62; 32]),
            bin(&[0xe1, 0xe2]),
            bin(br#"{"name":"kms","id":"3059"}"#),
        ];
        let encode = |v: &Value| {
            let mut buf = Vec::new();
            rmpv::encode::write_value(&mut buf, v).unwrap();
            buf
        };
        // 0.5.6–0.5.11: 8 positional fields (fixarray 0x98).
        let v05 = encode(&Value::Array(eight.clone()));
        assert_eq!(v05[0], 0x98);
        let json = decode_app_info(&v05).unwrap();
        assert_eq!(json["app_id"], "a1a2a3");
        assert_eq!(json["os_image_hash"], "e1e2");
        assert_eq!(json["key_provider_info"]["name"], "kms");
        assert!(json.get("init_script_hashes").is_none());
        // 0.6.0: a 9th field, init_script_hashes (nil or a list of 32-byte values).
        let mut nine = eight.clone();
        nine.push(Value::Array(vec![bin(&[0x17; 32])]));
        let json = decode_app_info(&encode(&Value::Array(nine))).unwrap();
        assert_eq!(json["init_script_hashes"][0], "17".repeat(32));
        // The named map.
        let map = Value::Map(
            APP_INFO_FIELDS[..8]
                .iter()
                .map(|k| Value::String((*k).into()))
                .zip(eight)
                .chain([(Value::String("init_script_hashes".into()), Value::Nil)])
                .collect(),
        );
        let json = decode_app_info(&encode(&map)).unwrap();
        assert_eq!(json["compose_hash"], "b1b2");
        assert_eq!(json["key_provider_info"]["id"], "3059");
        assert_eq!(json["init_script_hashes"], serde_json::Value::Null);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(decode_cert_chain(b"hello").is_err());
        let pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = decode_certificate_der(&decode_cert_chain(pem).unwrap()).unwrap_err();
        assert!(err.to_string().contains("malformed X.509"), "{err}");
        assert!(decode_certificate_der(&[b"garbage".to_vec()]).is_err());
        assert_eq!(
            decode_certificate_der(&[]).unwrap().kind,
            EvidenceKind::None
        );
    }
}

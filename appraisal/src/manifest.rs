//! Signed leader manifests (DNS TXT at `_teesql-leader.<cluster_domain>`), read the way
//! TeeSQL's own client libraries read them.
//!
//! `v=1;cluster=0x<20 bytes>;leader_instance=<hex>;leader_url=<url>;epoch=<uint>;
//! valid_until=<unix>;sig=0x<65 bytes>`. Fields come in any order, split on `;` and on the
//! first `=`, and are trimmed; keys that v1 does not define are ignored (they are not
//! signed over) and listed in the claims. The signed body is the v1 fields in key order
//! (`cluster;epoch;leader_instance;leader_url;v;valid_until`, `k=v` joined by `;`), with
//! `cluster` and `leader_instance` lower-cased exactly as given (a `0x` is neither added
//! nor removed) and the numbers in decimal. The digest is EIP-191: keccak256(`"\x19Ethereum
//! Signed Message:\n" || decimal length || body`); the signature is secp256k1
//! `r || s || v` (v 27/28, or 0/1). The signer is the last 20 bytes of keccak256 of the
//! uncompressed public key (X || Y).
//!
//! This module parses and recovers the signer. Whether the signer is trusted, the
//! manifest still valid and the leader the one named is the `teesql.manifest` policy's call.

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use serde::Serialize;
use sha3::{Digest, Keccak256};

/// A TXT record longer than this is not a manifest.
pub const MAX_MANIFEST_LEN: usize = 2048;

/// The v1 keys, in the order of the signed body.
const SIGNED_KEYS: [&str; 6] = [
    "cluster",
    "epoch",
    "leader_instance",
    "leader_url",
    "v",
    "valid_until",
];

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The cluster's contract address, lower-cased as given (with or without `0x`).
    pub cluster: String,
    /// dstack instance id of the leader, lower-cased as given.
    pub leader_instance: String,
    /// Where the leader is reached, as given (trimmed; signed over as is).
    pub leader_url: String,
    /// The leadership epoch, decimal in the record; a higher epoch supersedes a lower one.
    pub epoch: u64,
    /// Unix seconds from which the manifest is no longer valid.
    pub valid_until: u64,
    /// `r || s || v`.
    pub signature: [u8; 65],
    /// Keys v1 does not define, in the order they came: ignored, not signed over.
    pub unknown_keys: Vec<String>,
}

/// Why a TXT record is not a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The record is longer than [`MAX_MANIFEST_LEN`] bytes (its length given).
    #[error("manifest is {0} bytes, more than the limit of {MAX_MANIFEST_LEN}")]
    TooLong(usize),
    /// A required v1 field (or `sig`) is absent.
    #[error("manifest field {0:?} is missing")]
    Missing(&'static str),
    /// A v1 field or `sig` appears more than once: refused rather than picking one.
    #[error("manifest field {0:?} appears twice")]
    Duplicate(String),
    /// A field's value is malformed: bad hex or length, not a number, `v` not `1`, or
    /// a part that is not `key=value`.
    #[error("manifest field {field:?}: {detail}")]
    Field {
        /// The field's key, or `(record)` for a part that is not `key=value`.
        field: &'static str,
        /// What is wrong with its value.
        detail: String,
    },
    /// The signature is malformed or recovers no secp256k1 public key (also a signing
    /// failure in [`sign`]).
    #[error("manifest signature does not recover a public key: {0}")]
    Signature(String),
}

/// What the manifest says, for the claims (`manifest.*`).
#[derive(Debug, Clone, Serialize)]
pub struct ManifestClaims {
    /// The manifest's `v`: 1; 0 when the record did not parse (then `error` says why
    /// and the fields below are empty or zero).
    pub version: u32,
    /// `0x` + 40 lowercase hex.
    pub cluster: String,
    /// Lowercase hex, no `0x`.
    pub leader_instance: String,
    /// The leader's URL, exactly as the record gives it (trimmed, not validated).
    pub leader_url: String,
    /// The manifest's epoch; a lower epoch than `highest_epoch_seen` is a rollback.
    pub epoch: u64,
    /// Unix seconds from which the manifest has expired (the policy requires
    /// `valid_until > now`).
    pub valid_until: u64,
    /// Recovered signer address, `0x` + 40 lowercase hex; `null` if none could be.
    pub signer: Option<String>,
    /// Why the manifest could not be parsed or its signer recovered.
    pub error: Option<String>,
    /// Keys the record carries that v1 does not define (ignored, not signed over).
    pub unknown_keys: Vec<String>,
    /// Signers the caller trusts, besides the policy's pins (lowercase `0x` + 40 hex).
    pub expected_signers: Vec<String>,
    /// The highest epoch of a manifest this verifier accepted for the same cluster, if
    /// any: an older one is a rollback.
    pub highest_epoch_seen: Option<u64>,
}

/// `text` without a leading `0x`/`0X`.
fn strip_0x(text: &str) -> &str {
    text.strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text)
}

/// Hex (an optional `0x`) of `min..=max` bytes.
fn hex_bytes(
    field: &'static str,
    text: &str,
    min: usize,
    max: usize,
) -> Result<Vec<u8>, ManifestError> {
    let bytes = hex::decode(strip_0x(text)).map_err(|e| ManifestError::Field {
        field,
        detail: format!("not hex: {e}"),
    })?;
    if bytes.len() < min || bytes.len() > max {
        let want = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(ManifestError::Field {
            field,
            detail: format!("{} bytes, expected {want}", bytes.len()),
        });
    }
    Ok(bytes)
}

impl Manifest {
    /// Parse a TXT record (its chunks already joined). Surrounding quotes and whitespace,
    /// as DNS tools print TXT strings, are tolerated.
    pub fn parse(txt: &str) -> Result<Self, ManifestError> {
        if txt.len() > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLong(txt.len()));
        }
        let txt = txt.trim().trim_matches('"').trim();
        let mut fields: [Option<&str>; 7] = [None; 7];
        let mut unknown_keys = Vec::new();
        for part in txt.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| ManifestError::Field {
                field: "(record)",
                detail: format!("{part:?} is not key=value"),
            })?;
            let (k, v) = (k.trim(), v.trim());
            let idx = match SIGNED_KEYS.iter().position(|key| *key == k) {
                Some(i) => i,
                None if k == "sig" => 6,
                None => {
                    unknown_keys.push(k.to_string());
                    continue;
                }
            };
            if fields[idx].replace(v).is_some() {
                return Err(ManifestError::Duplicate(k.to_string()));
            }
        }
        let get = |i: usize, name: &'static str| fields[i].ok_or(ManifestError::Missing(name));
        let number = |i: usize, name: &'static str| -> Result<u64, ManifestError> {
            get(i, name)?
                .parse::<u64>()
                .map_err(|e| ManifestError::Field {
                    field: name,
                    detail: e.to_string(),
                })
        };
        // The signed body says `v=1`: any other spelling would not verify.
        let version = get(4, "v")?;
        if version != "1" {
            return Err(ManifestError::Field {
                field: "v",
                detail: format!("version {version:?} is not supported (only 1)"),
            });
        }
        let cluster = get(0, "cluster")?;
        hex_bytes("cluster", cluster, 20, 20)?;
        let leader_instance = get(2, "leader_instance")?;
        hex_bytes("leader_instance", leader_instance, 1, 64)?;
        let signature: [u8; 65] = hex_bytes("sig", get(6, "sig")?, 65, 65)?
            .try_into()
            .map_err(|_| ManifestError::Missing("sig"))?;
        Ok(Self {
            cluster: cluster.to_ascii_lowercase(),
            leader_instance: leader_instance.to_ascii_lowercase(),
            leader_url: get(3, "leader_url")?.to_string(),
            epoch: number(1, "epoch")?,
            valid_until: number(5, "valid_until")?,
            signature,
            unknown_keys,
        })
    }

    /// The signed body: the v1 fields in key order.
    pub fn signed_body(&self) -> String {
        format!(
            "cluster={};epoch={};leader_instance={};leader_url={};v=1;valid_until={}",
            self.cluster, self.epoch, self.leader_instance, self.leader_url, self.valid_until
        )
    }

    /// The EIP-191 digest of the signed body.
    pub fn digest(&self) -> [u8; 32] {
        eip191_digest(self.signed_body().as_bytes())
    }

    /// The address that signed the manifest.
    pub fn signer(&self) -> Result<[u8; 20], ManifestError> {
        let sig = Signature::from_slice(&self.signature[..64])
            .map_err(|e| ManifestError::Signature(e.to_string()))?;
        let v = match self.signature[64] {
            27 | 28 => self.signature[64] - 27,
            0 | 1 => self.signature[64],
            other => {
                return Err(ManifestError::Signature(format!(
                    "recovery byte {other} is not 0, 1, 27 or 28"
                )));
            }
        };
        let recid =
            RecoveryId::from_byte(v).ok_or_else(|| ManifestError::Signature("bad v".into()))?;
        let key = VerifyingKey::recover_from_prehash(&self.digest(), &sig, recid)
            .map_err(|e| ManifestError::Signature(e.to_string()))?;
        Ok(address_of(&key))
    }

    /// Claims for a manifest text: parsed fields and recovered signer, or the error.
    pub fn claims(txt: &str) -> ManifestClaims {
        match Self::parse(txt) {
            Ok(m) => {
                let signer = m.signer();
                ManifestClaims {
                    version: 1,
                    cluster: format!("0x{}", strip_0x(&m.cluster)),
                    leader_instance: strip_0x(&m.leader_instance).to_string(),
                    leader_url: m.leader_url.clone(),
                    epoch: m.epoch,
                    valid_until: m.valid_until,
                    signer: signer
                        .as_ref()
                        .ok()
                        .map(|a| format!("0x{}", hex::encode(a))),
                    error: signer.err().map(|e| e.to_string()),
                    unknown_keys: m.unknown_keys,
                    expected_signers: Vec::new(),
                    highest_epoch_seen: None,
                }
            }
            Err(e) => ManifestClaims {
                version: 0,
                cluster: String::new(),
                leader_instance: String::new(),
                leader_url: String::new(),
                epoch: 0,
                valid_until: 0,
                signer: None,
                error: Some(e.to_string()),
                unknown_keys: Vec::new(),
                expected_signers: Vec::new(),
                highest_epoch_seen: None,
            },
        }
    }

    /// The TXT record text for this manifest: the signed body, then `;sig=0x…`. Every
    /// TeeSQL reader accepts this shape, including those that hash the record's text
    /// before `;sig=` as it stands.
    pub fn to_txt(&self) -> String {
        format!(
            "{};sig=0x{}",
            self.signed_body(),
            hex::encode(self.signature)
        )
    }
}

/// keccak256(`"\x19Ethereum Signed Message:\n" || decimal length || message`).
pub fn eip191_digest(message: &[u8]) -> [u8; 32] {
    Keccak256::new()
        .chain_update(b"\x19Ethereum Signed Message:\n")
        .chain_update(message.len().to_string().as_bytes())
        .chain_update(message)
        .finalize()
        .into()
}

/// Ethereum address of a secp256k1 key: last 20 bytes of keccak256(X || Y).
pub fn address_of(key: &VerifyingKey) -> [u8; 20] {
    let point = key.to_encoded_point(false);
    let hash = Keccak256::digest(&point.as_bytes()[1..]);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[12..]);
    out
}

/// Sign a manifest body (for tests and tooling that publish manifests).
pub fn sign(key: &k256::ecdsa::SigningKey, fields: &Manifest) -> Result<[u8; 65], ManifestError> {
    let (sig, recid) = key
        .sign_prehash_recoverable(&fields.digest())
        .map_err(|e| ManifestError::Signature(e.to_string()))?;
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&sig.to_bytes());
    out[64] = 27 + recid.to_byte();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden body from TeeSQL's tests (psycopg-ra-tls, prisma-ra-tls).
    const GOLDEN_BODY: &str = "cluster=0xbd32b609057a1a4569558a571d535c8f1212b097;epoch=42;leader_instance=ea23198e3419ebbb240571a29d0112d9bcbe69c0;leader_url=https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network;v=1;valid_until=1713312000";
    /// The address of TeeSQL's fixture key 0x11 x 32.
    const FIXTURE_SIGNER: &str = "0x19e7e376e7c213b7e7e7e46cc70a5dd086daff2a";

    fn golden_unsigned() -> Manifest {
        Manifest {
            cluster: "0xbd32b609057a1a4569558a571d535c8f1212b097".into(),
            leader_instance: "ea23198e3419ebbb240571a29d0112d9bcbe69c0".into(),
            leader_url:
                "https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network"
                    .into(),
            epoch: 42,
            valid_until: 1_713_312_000,
            signature: [0; 65],
            unknown_keys: Vec::new(),
        }
    }

    fn key(byte: u8) -> k256::ecdsa::SigningKey {
        k256::ecdsa::SigningKey::from_slice(&[byte; 32]).unwrap()
    }

    fn signed_golden() -> Manifest {
        let mut m = golden_unsigned();
        m.signature = sign(&key(0x11), &m).unwrap();
        m
    }

    #[test]
    fn golden_body_is_canonical_and_the_fixture_key_signs_as_teesql_says() {
        assert_eq!(golden_unsigned().signed_body(), GOLDEN_BODY);
        assert_eq!(
            format!("0x{}", hex::encode(address_of(key(0x11).verifying_key()))),
            FIXTURE_SIGNER
        );
        let m = signed_golden();
        assert_eq!(
            format!("0x{}", hex::encode(m.signer().unwrap())),
            FIXTURE_SIGNER
        );
        // The record TeeSQL publishes: the body, then the signature.
        assert_eq!(
            m.to_txt(),
            format!("{GOLDEN_BODY};sig=0x{}", hex::encode(m.signature))
        );
    }

    #[test]
    fn any_key_order_whitespace_and_unknown_keys_verify_as_teesql_reads_them() {
        let m = signed_golden();
        let sig = hex::encode(m.signature);
        let records = [
            // TeeSQL's fixtures put cluster first; DNS tools quote TXT strings.
            format!(
                "cluster=0xbd32b609057a1a4569558a571d535c8f1212b097;leader_instance=ea23198e3419ebbb240571a29d0112d9bcbe69c0;leader_url=https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network;epoch=42;valid_until=1713312000;v=1;sig=0x{sig}"
            ),
            format!(
                "\" sig=0x{sig} ; v = 1;valid_until=1713312000 ;epoch=42;leader_url=https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network;leader_instance=ea23198e3419ebbb240571a29d0112d9bcbe69c0;cluster=0xbd32b609057a1a4569558a571d535c8f1212b097;\""
            ),
            format!("{GOLDEN_BODY};region=eu;controller=dns-1;sig=0x{sig}"),
            // Upper case is lower-cased for the body, exactly as given otherwise.
            format!(
                "v=1;cluster=0xBD32B609057A1A4569558A571D535C8F1212B097;leader_instance=EA23198E3419EBBB240571A29D0112D9BCBE69C0;leader_url=https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network;epoch=42;valid_until=1713312000;sig=0x{sig}"
            ),
        ];
        for txt in records {
            let parsed = Manifest::parse(&txt).unwrap();
            assert_eq!(parsed.signed_body(), GOLDEN_BODY, "{txt}");
            assert_eq!(
                format!("0x{}", hex::encode(parsed.signer().unwrap())),
                FIXTURE_SIGNER,
                "{txt}"
            );
        }
        let claims = Manifest::claims(&format!(
            "{GOLDEN_BODY};region=eu;controller=dns-1;sig=0x{sig}"
        ));
        assert_eq!(claims.unknown_keys, ["region", "controller"]);
        assert_eq!(claims.signer.as_deref(), Some(FIXTURE_SIGNER));
        assert!(claims.error.is_none());
    }

    #[test]
    fn a_0x_is_signed_as_given() {
        // leader_instance with 0x: the body keeps it, so a signature over the body without
        // it does not recover the same signer (TeeSQL's readers agree).
        let m = signed_golden();
        let txt = m
            .to_txt()
            .replace("leader_instance=ea23", "leader_instance=0xea23");
        let parsed = Manifest::parse(&txt).unwrap();
        assert!(parsed.signed_body().contains("leader_instance=0xea23"));
        assert_ne!(parsed.signer().ok(), m.signer().ok());
        let mut resigned = parsed.clone();
        resigned.signature = sign(&key(0x11), &resigned).unwrap();
        let back = Manifest::parse(&resigned.to_txt()).unwrap();
        assert_eq!(
            format!("0x{}", hex::encode(back.signer().unwrap())),
            FIXTURE_SIGNER
        );
        // The claims normalise either spelling.
        assert_eq!(
            Manifest::claims(&resigned.to_txt()).leader_instance,
            "ea23198e3419ebbb240571a29d0112d9bcbe69c0"
        );
    }

    #[test]
    fn valid_until_may_be_u64_max() {
        let mut m = golden_unsigned();
        m.valid_until = u64::MAX;
        m.signature = sign(&key(0x11), &m).unwrap();
        let txt = m.to_txt();
        assert!(txt.contains("valid_until=18446744073709551615;"));
        let parsed = Manifest::parse(&txt).unwrap();
        assert_eq!(parsed.valid_until, u64::MAX);
        assert_eq!(
            format!("0x{}", hex::encode(parsed.signer().unwrap())),
            FIXTURE_SIGNER
        );
        // One more is not a u64.
        assert!(
            Manifest::parse(&txt.replace("18446744073709551615", "18446744073709551616")).is_err()
        );
    }

    #[test]
    fn signed_manifest_round_trips_and_recovers_the_signer() {
        for k in [key(0x11), key(0x42)] {
            let mut m = golden_unsigned();
            m.signature = sign(&k, &m).unwrap();
            let txt = m.to_txt();
            let parsed = Manifest::parse(&format!("\"{txt}\"")).unwrap();
            assert_eq!(parsed, m);
            assert_eq!(parsed.signer().unwrap(), address_of(k.verifying_key()));
        }
    }

    #[test]
    fn v_zero_or_one_is_accepted_like_27_or_28() {
        let mut m = signed_golden();
        let want = m.signer().unwrap();
        m.signature[64] -= 27;
        assert_eq!(m.signer().unwrap(), want);
    }

    #[test]
    fn any_change_to_the_body_changes_the_signer() {
        let m = signed_golden();
        let signer = m.signer().unwrap();
        let mut other = m.clone();
        other.epoch = 43;
        assert_ne!(other.signer().ok(), Some(signer));
        let mut url = m.clone();
        url.leader_url = "https://evil.example.com".into();
        assert_ne!(url.signer().ok(), Some(signer));
    }

    #[test]
    fn eip191_matches_known_vector() {
        // keccak256("\x19Ethereum Signed Message:\n5hello"), a well-known value.
        assert_eq!(
            hex::encode(eip191_digest(b"hello")),
            "50b2c43fd39106bafbba0da34fc430e1f91e3c96ea2acee2bc34119f92b37750"
        );
    }

    #[test]
    fn malformed_manifests_are_refused_with_the_field_named() {
        let txt = signed_golden().to_txt();
        let cases = [
            (txt.replace("v=1;", "v=2;"), "not supported"),
            (txt.replace("v=1;", "v=01;"), "not supported"),
            (txt.replace("epoch=42;", ""), "\"epoch\" is missing"),
            (txt.replace("epoch=42;", "epoch=x;"), "\"epoch\""),
            (format!("{txt};epoch=1"), "appears twice"),
            (txt.replace("cluster=0xbd", "cluster=0x"), "\"cluster\""),
            (txt.replace(";sig=0x", ";sig=0x00"), "\"sig\""),
            (txt.replace(";sig=0x", ";sig=0xdeadbeef;x=0x"), "\"sig\""),
            (
                txt.replace("leader_instance=ea", "leader_instance=zz"),
                "\"leader_instance\"",
            ),
            (txt.replace(";sig=", ";signature="), "\"sig\" is missing"),
            ("x".repeat(3000), "more than the limit"),
            ("garbage".into(), "not key=value"),
        ];
        for (bad, needle) in cases {
            let err = Manifest::parse(&bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let mut bad_v = signed_golden();
        bad_v.signature[64] = 5;
        assert!(bad_v.signer().is_err());
    }
}

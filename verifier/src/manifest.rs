//! Signed leader manifests (DNS TXT at `_teesql-leader.<cluster_domain>`).
//!
//! `v=1;cluster=0x<20 bytes>;leader_instance=<hex>;leader_url=<url>;epoch=<uint>;
//! valid_until=<unix>;sig=0x<65 bytes>`. The signed body is the fields other than `sig`
//! in key order (`cluster;epoch;leader_instance;leader_url;v;valid_until`, `k=v` joined
//! by `;`, `cluster` and `leader_instance` lower-cased). The digest is EIP-191:
//! keccak256(`"\x19Ethereum Signed Message:\n" || decimal length || body`); the signature
//! is secp256k1 `r || s || v` (v 27/28, or 0/1). The signer is the last 20 bytes of
//! keccak256 of the uncompressed public key (X || Y).
//!
//! This module parses and recovers the signer. Whether the signer is trusted, the
//! manifest still valid and the leader the one named is the `teesql.manifest` policy's call.

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use serde::Serialize;
use sha3::{Digest, Keccak256};

/// A TXT record longer than this is not a manifest.
pub const MAX_MANIFEST_LEN: usize = 2048;

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: u32,
    /// Cluster address, 20 bytes.
    pub cluster: [u8; 20],
    /// dstack instance id of the leader (bytes).
    pub leader_instance: Vec<u8>,
    pub leader_url: String,
    pub epoch: u64,
    pub valid_until: u64,
    /// `r || s || v`.
    pub signature: [u8; 65],
}

/// Why a TXT record is not a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, more than the limit of {MAX_MANIFEST_LEN}")]
    TooLong(usize),
    #[error("manifest field {0:?} is missing")]
    Missing(&'static str),
    #[error("manifest field {0:?} appears twice")]
    Duplicate(String),
    #[error("manifest has an unknown field {0:?}")]
    Unknown(String),
    #[error("manifest field {field:?}: {detail}")]
    Field { field: &'static str, detail: String },
    #[error("manifest signature does not recover a public key: {0}")]
    Signature(String),
}

/// What the manifest says, for the claims (`manifest.*`).
#[derive(Debug, Clone, Serialize)]
pub struct ManifestClaims {
    pub version: u32,
    /// `0x` + 40 lowercase hex.
    pub cluster: String,
    /// Lowercase hex, no `0x`.
    pub leader_instance: String,
    pub leader_url: String,
    pub epoch: u64,
    pub valid_until: u64,
    /// Recovered signer address, `0x` + 40 lowercase hex; `null` if none could be.
    pub signer: Option<String>,
    /// Why the manifest could not be parsed or its signer recovered.
    pub error: Option<String>,
    /// Signers the caller trusts, besides the policy's pins (lowercase `0x` + 40 hex).
    pub expected_signers: Vec<String>,
}

impl Manifest {
    /// Parse a TXT record. Surrounding quotes and whitespace (as DNS tools print TXT
    /// strings) are tolerated.
    pub fn parse(txt: &str) -> Result<Self, ManifestError> {
        if txt.len() > MAX_MANIFEST_LEN {
            return Err(ManifestError::TooLong(txt.len()));
        }
        let txt = txt.trim().trim_matches('"').trim();
        let mut fields: [Option<&str>; 7] = [None; 7];
        const KEYS: [&str; 7] = [
            "v",
            "cluster",
            "leader_instance",
            "leader_url",
            "epoch",
            "valid_until",
            "sig",
        ];
        for part in txt.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| ManifestError::Field {
                field: "(record)",
                detail: format!("{part:?} is not key=value"),
            })?;
            let idx = KEYS
                .iter()
                .position(|key| *key == k)
                .ok_or_else(|| ManifestError::Unknown(k.to_string()))?;
            if fields[idx].replace(v).is_some() {
                return Err(ManifestError::Duplicate(k.to_string()));
            }
        }
        let get = |i: usize| fields[i].ok_or(ManifestError::Missing(KEYS[i]));
        let num = |i: usize| -> Result<u64, ManifestError> {
            get(i)?.parse::<u64>().map_err(|e| ManifestError::Field {
                field: KEYS[i],
                detail: e.to_string(),
            })
        };
        let hex_field = |i: usize| -> Result<Vec<u8>, ManifestError> {
            let v = get(i)?;
            let v = v
                .strip_prefix("0x")
                .or_else(|| v.strip_prefix("0X"))
                .unwrap_or(v);
            hex::decode(v).map_err(|e| ManifestError::Field {
                field: KEYS[i],
                detail: format!("not hex: {e}"),
            })
        };
        let version = u32::try_from(num(0)?).map_err(|e| ManifestError::Field {
            field: "v",
            detail: e.to_string(),
        })?;
        if version != 1 {
            return Err(ManifestError::Field {
                field: "v",
                detail: format!("version {version} is not supported (only 1)"),
            });
        }
        let cluster: [u8; 20] =
            hex_field(1)?
                .try_into()
                .map_err(|v: Vec<u8>| ManifestError::Field {
                    field: "cluster",
                    detail: format!("{} bytes, expected a 20-byte address", v.len()),
                })?;
        let leader_instance = hex_field(2)?;
        if leader_instance.is_empty() || leader_instance.len() > 64 {
            return Err(ManifestError::Field {
                field: "leader_instance",
                detail: format!("{} bytes", leader_instance.len()),
            });
        }
        let leader_url = get(3)?.to_string();
        let signature: [u8; 65] =
            hex_field(6)?
                .try_into()
                .map_err(|v: Vec<u8>| ManifestError::Field {
                    field: "sig",
                    detail: format!("{} bytes, expected 65 (r || s || v)", v.len()),
                })?;
        Ok(Self {
            version,
            cluster,
            leader_instance,
            leader_url,
            epoch: num(4)?,
            valid_until: num(5)?,
            signature,
        })
    }

    /// The signed body: every field but `sig`, keys in order, hex lower-cased.
    pub fn signed_body(&self) -> String {
        format!(
            "cluster=0x{};epoch={};leader_instance={};leader_url={};v={};valid_until={}",
            hex::encode(self.cluster),
            self.epoch,
            hex::encode(&self.leader_instance),
            self.leader_url,
            self.version,
            self.valid_until
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
                    version: m.version,
                    cluster: format!("0x{}", hex::encode(m.cluster)),
                    leader_instance: hex::encode(&m.leader_instance),
                    leader_url: m.leader_url.clone(),
                    epoch: m.epoch,
                    valid_until: m.valid_until,
                    signer: signer
                        .as_ref()
                        .ok()
                        .map(|a| format!("0x{}", hex::encode(a))),
                    error: signer.err().map(|e| e.to_string()),
                    expected_signers: Vec::new(),
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
                expected_signers: Vec::new(),
            },
        }
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

impl Manifest {
    /// The TXT record text for this manifest.
    pub fn to_txt(&self) -> String {
        format!(
            "v={};cluster=0x{};leader_instance={};leader_url={};epoch={};valid_until={};sig=0x{}",
            self.version,
            hex::encode(self.cluster),
            hex::encode(&self.leader_instance),
            self.leader_url,
            self.epoch,
            self.valid_until,
            hex::encode(self.signature)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The golden body from TeeSQL's tests (REFERENCE.md).
    const GOLDEN_BODY: &str = "cluster=0xbd32b609057a1a4569558a571d535c8f1212b097;epoch=42;leader_instance=ea23198e3419ebbb240571a29d0112d9bcbe69c0;leader_url=https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network;v=1;valid_until=1713312000";

    fn golden_unsigned() -> Manifest {
        Manifest {
            version: 1,
            cluster: hex::decode("BD32B609057A1A4569558A571D535C8F1212B097")
                .unwrap()
                .try_into()
                .unwrap(),
            leader_instance: hex::decode("ea23198e3419ebbb240571a29d0112d9bcbe69c0").unwrap(),
            leader_url:
                "https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network"
                    .into(),
            epoch: 42,
            valid_until: 1_713_312_000,
            signature: [0; 65],
        }
    }

    fn key(byte: u8) -> k256::ecdsa::SigningKey {
        k256::ecdsa::SigningKey::from_slice(&[byte; 32]).unwrap()
    }

    #[test]
    fn golden_body_is_canonical() {
        assert_eq!(golden_unsigned().signed_body(), GOLDEN_BODY);
    }

    #[test]
    fn signed_manifest_round_trips_and_recovers_the_signer() {
        // TeeSQL's tests sign with 0x11 x 32; here a key generated for this test too.
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
        let k = key(0x11);
        let mut m = golden_unsigned();
        m.signature = sign(&k, &m).unwrap();
        let want = m.signer().unwrap();
        m.signature[64] -= 27;
        assert_eq!(m.signer().unwrap(), want);
    }

    #[test]
    fn any_change_to_the_body_changes_the_signer() {
        let k = key(0x11);
        let mut m = golden_unsigned();
        m.signature = sign(&k, &m).unwrap();
        let signer = m.signer().unwrap();
        let mut other = m.clone();
        other.epoch = 43;
        assert_ne!(other.signer().ok(), Some(signer));
        let mut url = m.clone();
        url.leader_url.push('x');
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
        let k = key(0x11);
        let mut m = golden_unsigned();
        m.signature = sign(&k, &m).unwrap();
        let txt = m.to_txt();
        let cases = [
            (txt.replace("v=1;", "v=2;"), "not supported"),
            (txt.replace("epoch=42;", ""), "\"epoch\" is missing"),
            (format!("{txt};epoch=1"), "appears twice"),
            (format!("{txt};x=1"), "unknown field"),
            (txt.replace("cluster=0xbd", "cluster=0x"), "\"cluster\""),
            (txt.replace(";sig=0x", ";sig=0x00"), "\"sig\""),
            ("x".repeat(3000), "more than the limit"),
            ("garbage".into(), "not key=value"),
        ];
        for (bad, needle) in cases {
            let err = Manifest::parse(&bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        let mut bad_v = m.clone();
        bad_v.signature[64] = 5;
        assert!(bad_v.signer().is_err());
    }
}

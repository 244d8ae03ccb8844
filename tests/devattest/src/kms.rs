//! A development KMS derived from the seed, issuing app keys the way dstack's KMS and
//! guest agent do, so a `GetKey` answer can be checked exactly as a dstack one is.
//!
//! - The KMS root is a secp256k1 key, which signs the key chains below. Beside it the KMS
//!   has a root CA (P-256, for its TLS), and that is what the guest's `key-provider`
//!   event and `Info`'s `key_provider_info` name: `{"name":"kms","id":"<hex of the CA's
//!   SubjectPublicKeyInfo DER>"}` (dstack `dstack-util/src/system_setup.rs`,
//!   `request_app_keys_from_kms_url`, next@312dc605: `x509.public_key().raw`).
//! - An app's root key: HKDF-SHA256(salt `RATLS`, IKM = KMS root secret, info =
//!   `app_id || "app-key"`).
//! - `GetKey(path, purpose)`: key = HKDF-SHA256(salt `RATLS`, IKM = app root secret,
//!   info = path), 32 bytes (the seed of an ed25519 key for `algorithm = "ed25519"`).
//!   `signature_chain = [link0, link1]`:
//!   - link0, by the app root key: keccak256(`purpose ":" hex(public key)`), where the
//!     public key is SEC1-compressed (33 bytes) or the raw ed25519 key (32 bytes);
//!   - link1, by the KMS root: keccak256(`"dstack-kms-issued:" || app_id (20 bytes) ||
//!     app root public key (33 bytes, compressed)`).
//!
//!   Each signature is `r || s || v`, 65 bytes, low-S, `v` the recovery id (0 or 1).
//!   A verifier recovers the app root key from link0, then the KMS root from link1, and
//!   compares it with the KMS root it trusts.
//! - `Sign(algorithm, data)` uses `GetKey("vms", "signing")`: `secp256k1` signs
//!   SHA-256(data), `secp256k1_prehashed` signs a 32-byte digest (both 64-byte `r || s`),
//!   `ed25519` signs the data; `signature_chain = [signature, link0, link1]`.

use k256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::Digest as _;
use sha3::Keccak256;

/// Why a KMS operation failed: an algorithm it does not know, input that is no key or
/// signature, or (astronomically unlikely) a derived secret that is no key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// An algorithm other than those `GetKey`, `Sign` and `Verify` know.
    #[error("Unsupported algorithm: {0:?}")]
    UnsupportedAlgorithm(String),
    /// A derived secret that is not a P-256 scalar.
    #[error("derived key is not a P-256 scalar: {0}")]
    NotP256(p256::elliptic_curve::Error),
    /// The KMS root CA's public key does not encode.
    #[error("KMS root CA public key: {0}")]
    CaPublicKey(p256::pkcs8::spki::Error),
    /// A derived secret that is not a secp256k1 scalar.
    #[error("derived key is not a secp256k1 scalar: {0}")]
    NotSecp256k1(k256::ecdsa::Error),
    /// A derived seed ring refuses as an ed25519 key.
    #[error("ed25519 key: {0}")]
    Ed25519(ring::error::KeyRejected),
    /// secp256k1 signing failed.
    #[error("{0}")]
    Signing(k256::ecdsa::Error),
    /// `secp256k1_prehashed` data that is not a 32-byte digest.
    #[error("secp256k1_prehashed needs a 32-byte digest, got {0}")]
    DigestLength(usize),
    /// A public key that is not a SEC1 secp256k1 key.
    #[error("public_key: {0}")]
    PublicKey(k256::ecdsa::Error),
    /// A signature that is not 64 bytes `r || s`.
    #[error("signature: {0}")]
    Signature(k256::ecdsa::Error),
    /// An ed25519 key or signature of the wrong length.
    #[error("ed25519 takes a 32-byte key and a 64-byte signature")]
    Ed25519Lengths,
}

/// Key algorithms `GetKey` and `Sign` know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    Secp256k1,
    Ed25519,
}

impl KeyAlgorithm {
    /// `secp256k1`, `k256` and empty (dstack's default) or `ed25519`.
    pub fn parse(name: &str) -> Result<Self, KmsError> {
        match name {
            "" | "secp256k1" | "k256" => Ok(Self::Secp256k1),
            "ed25519" => Ok(Self::Ed25519),
            other => Err(KmsError::UnsupportedAlgorithm(other.to_string())),
        }
    }
}

/// A derived key with its public key and dstack's signature chain over it.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// 32 bytes: a secp256k1 secret, or an ed25519 seed.
    pub secret: [u8; 32],
    /// SEC1-compressed (33 bytes) or raw ed25519 (32 bytes).
    pub public_key: Vec<u8>,
    /// `[link0, link1]`, 65 bytes each.
    pub signature_chain: Vec<Vec<u8>>,
}

/// What `Sign` returns.
#[derive(Debug, Clone)]
pub struct Signed {
    pub signature: Vec<u8>,
    pub public_key: Vec<u8>,
    /// `[signature, link0, link1]`.
    pub signature_chain: Vec<Vec<u8>>,
}

/// The development KMS of one seed, serving one app.
pub struct DevKms {
    root: SigningKey,
    /// SubjectPublicKeyInfo DER of the KMS root CA's P-256 key.
    ca_spki: Vec<u8>,
    app_id: [u8; 20],
    app_root: SigningKey,
}

impl std::fmt::Debug for DevKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKms")
            .field("root", &hex::encode(self.root_public_key()))
            .field("app_id", &hex::encode(self.app_id))
            .finish()
    }
}

impl DevKms {
    /// The KMS of `seed`, for the app `app_id`.
    pub fn new(seed: &[u8; 32], app_id: [u8; 20]) -> Result<Self, KmsError> {
        let root = scalar(
            &sha2::Sha256::new()
                .chain_update(b"teesql-dev-kms:root:")
                .chain_update(seed)
                .finalize()
                .into(),
        )?;
        let mut info = app_id.to_vec();
        info.extend_from_slice(b"app-key");
        let app_root = scalar(&hkdf(&root.to_bytes().into(), &info))?;
        let ca_secret: [u8; 32] = sha2::Sha256::new()
            .chain_update(b"teesql-dev-kms:root-ca:")
            .chain_update(seed)
            .finalize()
            .into();
        let ca_spki = {
            use p256::pkcs8::EncodePublicKey as _;
            p256::SecretKey::from_slice(&ca_secret)
                .map_err(KmsError::NotP256)?
                .public_key()
                .to_public_key_der()
                .map_err(KmsError::CaPublicKey)?
                .as_bytes()
                .to_vec()
        };
        Ok(Self {
            root,
            ca_spki,
            app_id,
            app_root,
        })
    }

    /// The KMS root public key, SEC1-compressed.
    pub fn root_public_key(&self) -> Vec<u8> {
        compressed(self.root.verifying_key())
    }

    /// The KMS root CA's SubjectPublicKeyInfo DER: what a policy pins in
    /// `data.teesql.kms_roots` (as hex) to trust the app ids this KMS issues.
    pub fn root_ca_spki(&self) -> &[u8] {
        &self.ca_spki
    }

    /// `key_provider_info` / the `key-provider` event: `{"name":"kms","id":"<hex>"}`,
    /// keys in dstack's order.
    pub fn key_provider_info(&self) -> String {
        format!(
            r#"{{"name":"kms","id":"{}"}}"#,
            hex::encode(self.root_ca_spki())
        )
    }

    /// `GetKey(path, purpose, algorithm)`.
    pub fn get_key(
        &self,
        path: &str,
        purpose: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<IssuedKey, KmsError> {
        let secret = hkdf(&self.app_root.to_bytes().into(), path.as_bytes());
        let public_key = match algorithm {
            KeyAlgorithm::Secp256k1 => compressed(scalar(&secret)?.verifying_key()),
            KeyAlgorithm::Ed25519 => ed25519(&secret)?.1,
        };
        let link0 = sign_recoverable(
            &self.app_root,
            &keccak(&[
                purpose.as_bytes(),
                b":",
                hex::encode(&public_key).as_bytes(),
            ]),
        )?;
        let app_root_public = compressed(self.app_root.verifying_key());
        let link1 = sign_recoverable(
            &self.root,
            &keccak(&[b"dstack-kms-issued:", &self.app_id, &app_root_public]),
        )?;
        Ok(IssuedKey {
            secret,
            public_key,
            signature_chain: vec![link0.to_vec(), link1.to_vec()],
        })
    }

    /// `Sign(algorithm, data)`: `secp256k1`, `secp256k1_prehashed` or `ed25519`.
    pub fn sign(&self, algorithm: &str, data: &[u8]) -> Result<Signed, KmsError> {
        let (base, prehashed) = match algorithm {
            "secp256k1" | "k256" => (KeyAlgorithm::Secp256k1, false),
            "secp256k1_prehashed" => (KeyAlgorithm::Secp256k1, true),
            "ed25519" => (KeyAlgorithm::Ed25519, false),
            other => return Err(KmsError::UnsupportedAlgorithm(other.to_string())),
        };
        let key = self.get_key("vms", "signing", base)?;
        let signature = match base {
            KeyAlgorithm::Secp256k1 => {
                let digest: [u8; 32] = if prehashed {
                    data.try_into()
                        .map_err(|_| KmsError::DigestLength(data.len()))?
                } else {
                    sha2::Sha256::digest(data).into()
                };
                let sig: Signature = scalar(&key.secret)?
                    .sign_prehash_recoverable(&digest)
                    .map_err(KmsError::Signing)?
                    .0;
                sig.to_bytes().to_vec()
            }
            KeyAlgorithm::Ed25519 => ed25519(&key.secret)?.0.sign(data).as_ref().to_vec(),
        };
        let mut signature_chain = vec![signature.clone()];
        signature_chain.extend(key.signature_chain);
        Ok(Signed {
            signature,
            public_key: key.public_key,
            signature_chain,
        })
    }
}

/// `Verify(algorithm, data, signature, public_key)`: `Ok(false)` for a signature that does
/// not verify, `Err` for input that cannot be a key or a signature.
pub fn verify(
    algorithm: &str,
    data: &[u8],
    signature: &[u8],
    public_key: &[u8],
) -> Result<bool, KmsError> {
    match algorithm {
        "secp256k1" | "k256" | "secp256k1_prehashed" => {
            let key = VerifyingKey::from_sec1_bytes(public_key).map_err(KmsError::PublicKey)?;
            let sig = Signature::from_slice(signature).map_err(KmsError::Signature)?;
            let digest: Vec<u8> = if algorithm == "secp256k1_prehashed" {
                data.to_vec()
            } else {
                sha2::Sha256::digest(data).to_vec()
            };
            Ok(
                k256::ecdsa::signature::hazmat::PrehashVerifier::verify_prehash(
                    &key, &digest, &sig,
                )
                .is_ok(),
            )
        }
        "ed25519" => {
            if public_key.len() != 32 || signature.len() != 64 {
                return Err(KmsError::Ed25519Lengths);
            }
            Ok(
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
                    .verify(data, signature)
                    .is_ok(),
            )
        }
        other => Err(KmsError::UnsupportedAlgorithm(other.to_string())),
    }
}

fn keccak(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Keccak256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HKDF-SHA256 with dstack's salt, 32 bytes out.
fn hkdf(ikm: &[u8; 32], info: &[u8]) -> [u8; 32] {
    use ring::hkdf::{HKDF_SHA256, Salt};
    let mut out = [0u8; 32];
    let prk = Salt::new(HKDF_SHA256, b"RATLS").extract(ikm);
    // Expanding to one hash length with a one-part info cannot fail (RFC 5869: up to
    // 255 blocks).
    if let Ok(okm) = prk.expand(&[info], HKDF_SHA256) {
        let _ = okm.fill(&mut out);
    }
    out
}

fn scalar(bytes: &[u8; 32]) -> Result<SigningKey, KmsError> {
    SigningKey::from_slice(bytes).map_err(KmsError::NotSecp256k1)
}

fn compressed(key: &VerifyingKey) -> Vec<u8> {
    key.to_encoded_point(true).as_bytes().to_vec()
}

fn ed25519(seed: &[u8; 32]) -> Result<(ring::signature::Ed25519KeyPair, Vec<u8>), KmsError> {
    use ring::signature::KeyPair as _;
    let pair =
        ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).map_err(KmsError::Ed25519)?;
    let public = pair.public_key().as_ref().to_vec();
    Ok((pair, public))
}

/// `r || s || v` (v = recovery id 0/1), low-S.
fn sign_recoverable(key: &SigningKey, digest: &[u8; 32]) -> Result<[u8; 65], KmsError> {
    let (sig, recid) = key
        .sign_prehash_recoverable(digest)
        .map_err(KmsError::Signing)?;
    let mut out = [0u8; 65];
    out[..64].copy_from_slice(&sig.to_bytes());
    out[64] = recid.to_byte();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::RecoveryId;

    fn recover(digest: &[u8; 32], sig: &[u8]) -> VerifyingKey {
        let s = Signature::from_slice(&sig[..64]).unwrap();
        assert!(s.normalize_s().is_none(), "high-S signature");
        VerifyingKey::recover_from_prehash(digest, &s, RecoveryId::from_byte(sig[64]).unwrap())
            .unwrap()
    }

    #[test]
    fn a_chain_recovers_to_the_kms_root_as_dstack_verifiers_check_it() {
        let app_id = [0x42; 20];
        let kms = DevKms::new(&[1; 32], app_id).unwrap();
        for alg in [KeyAlgorithm::Secp256k1, KeyAlgorithm::Ed25519] {
            let k = kms.get_key("pg/superuser", "test", alg).unwrap();
            assert_eq!(k.signature_chain.len(), 2);
            let d0 = keccak(&[b"test:", hex::encode(&k.public_key).as_bytes()]);
            let app_root = compressed(&recover(&d0, &k.signature_chain[0]));
            let d1 = keccak(&[b"dstack-kms-issued:", &app_id, &app_root]);
            let root = compressed(&recover(&d1, &k.signature_chain[1]));
            assert_eq!(root, kms.root_public_key());
            // Another purpose or app does not verify with this chain.
            let other = keccak(&[b"other:", hex::encode(&k.public_key).as_bytes()]);
            assert_ne!(
                compressed(&recover(&other, &k.signature_chain[0])),
                app_root
            );
        }
        // Derived, not random; the path and the app change the key.
        let a = kms.get_key("a", "", KeyAlgorithm::Secp256k1).unwrap();
        assert_eq!(
            a.secret,
            kms.get_key("a", "x", KeyAlgorithm::Secp256k1)
                .unwrap()
                .secret
        );
        assert_ne!(
            a.secret,
            kms.get_key("b", "", KeyAlgorithm::Secp256k1)
                .unwrap()
                .secret
        );
        let other_app = DevKms::new(&[1; 32], [0x43; 20]).unwrap();
        assert_eq!(other_app.root_public_key(), kms.root_public_key());
        assert_ne!(
            other_app
                .get_key("a", "", KeyAlgorithm::Secp256k1)
                .unwrap()
                .secret,
            a.secret
        );
    }

    #[test]
    fn sign_and_verify_every_algorithm() {
        let kms = DevKms::new(&[2; 32], [1; 20]).unwrap();
        let digest: [u8; 32] = sha2::Sha256::digest(b"hello").into();
        for (alg, data) in [
            ("secp256k1", b"hello".to_vec()),
            ("secp256k1_prehashed", digest.to_vec()),
            ("ed25519", b"hello".to_vec()),
        ] {
            let s = kms.sign(alg, &data).unwrap();
            assert_eq!(s.signature.len(), 64, "{alg}");
            assert_eq!(s.signature_chain.len(), 3);
            assert!(
                verify(alg, &data, &s.signature, &s.public_key).unwrap(),
                "{alg}"
            );
            assert!(
                !verify(
                    alg,
                    b"other data 32 bytes long........",
                    &s.signature,
                    &s.public_key
                )
                .unwrap()
            );
        }
        // secp256k1 over data equals secp256k1_prehashed over its SHA-256.
        let a = kms.sign("secp256k1", b"hello").unwrap();
        assert!(verify("secp256k1_prehashed", &digest, &a.signature, &a.public_key).unwrap());
        assert!(kms.sign("secp256k1_prehashed", b"short").is_err());
        assert!(kms.sign("rsa", b"x").is_err());
        assert!(verify("secp256k1", b"x", &[0; 3], &a.public_key).is_err());
        assert!(KeyAlgorithm::parse("p256").is_err());
    }
}

//! Signed decisions: every decision the service answers carries a compact JWS (ES256)
//! that a relying party which was not on the gRPC channel (an audit log, a second
//! service, a browser) can check with the verifier's public keys alone, served as a JWKS
//! at `/.well-known/jwks.json`.
//!
//! The token is an EAR (draft-ietf-rats-ear-04, profile [`PROFILE`]), so any EAR consumer
//! reads it: `iat`, `ear_verifier_id`, `ear_status`, `eat_nonce` when the request carried
//! one, and one submodule per appraised component (`cpu0`, the CVM) with its status, its
//! AR4SI trustworthiness vector ([`super::ear`]) and the policy hash as its appraisal
//! policy id. TeeSQL's own fields (allow, reasons, grants, tdx, app) sit under the one
//! private claim `teesql`, which no EAR name can collide with; all are in CLAIMS.md
//! ("Decision tokens").
//!
//! A verifier with an RA-TLS identity binds its signing key to its own quote: the JWK
//! carries `teesql_getquote`, the guest agent's GetQuote response for report data
//! [`key_report_data`] of the key, so a relying party can appraise who signed
//! (`token verify --attested`, purpose `verifier`).

use std::path::Path;
use std::sync::OnceLock;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
/// What a relying party does with a token, in the appraisal library (the sidecar and
/// `token verify` use it without the service).
pub use teesql_appraisal::token::{
    JWK_QUOTE_MEMBER, KeyQuote, TokenError, key_quote, key_report_data, verify,
};

/// `eat_profile` of decision tokens: EAR as draft-ietf-rats-ear-04 defines it.
pub const PROFILE: &str = "tag:ietf.org,2026:rats/ear#04";
/// `ear_verifier_id.developer`.
pub const DEVELOPER: &str = "https://github.com/TeeSQL/teesql-front-door";
/// The submodule that stands for the appraised CVM (as Trustee names its CPU attester).
pub const CPU_SUBMOD: &str = "cpu0";
/// The private claim holding TeeSQL's own fields.
pub const PRIVATE_CLAIM: &str = "teesql";
/// A request's nonce, echoed as `eat_nonce`: EAR allows 8 to 64 bytes.
pub const NONCE_LEN: std::ops::RangeInclusive<usize> = 8..=64;
/// The default `iss`.
pub const DEFAULT_ISSUER: &str = "teesql-verifier";
/// A decision with no validity of its own (no collateral, no certificate) is signed for
/// this long.
pub const DEFAULT_LIFETIME_SECS: u64 = 300;

/// Why a decision-signing key cannot be made, bound to a quote, or sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerError {
    /// No key could be generated.
    #[error("cannot generate a decision-signing key")]
    Generate,
    /// The key file cannot be read as PEM.
    #[error("signing_key {}: {source}", path.display())]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key file holds a key that is not PKCS#8.
    #[error("signing_key {}: expected a PKCS#8 P-256 key (BEGIN PRIVATE KEY)", path.display())]
    NotPkcs8 {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The key in the file cannot sign decisions.
    #[error("signing_key {}: {source}", path.display())]
    InKeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why its key cannot be used.
        #[source]
        source: Box<SignerError>,
    },
    /// Not a P-256 key in PKCS#8 (ring's verdict).
    #[error("not a P-256 PKCS#8 key: {0}")]
    NotP256Pkcs8(ring::error::KeyRejected),
    /// No JWK can be made of the key.
    #[error("not a P-256 key: {0}")]
    NotP256(#[source] jsonwebtoken::errors::Error),
    /// A JSON document (`JWKS`, `header`, `claims`) does not serialize.
    #[error("{what}: {source}")]
    Json {
        /// Which document.
        what: &'static str,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The JWKS has no key to attach a quote to.
    #[error("JWKS without a key")]
    NoKey,
    /// The key is already bound to a quote.
    #[error("the signing key is already bound to a quote")]
    AlreadyBound,
    /// ring could not sign.
    #[error("signing failed")]
    Signing,
}

fn json_error(what: &'static str) -> impl FnOnce(serde_json::Error) -> SignerError {
    move |source| SignerError::Json { what, source }
}

/// What a token says about one decision.
#[derive(Debug, Clone, Default)]
pub struct TokenFacts<'a> {
    /// The policy purpose decided for (`teesql.purpose`).
    pub purpose: &'a str,
    /// The decision (`teesql.allow`); false makes `ear_status` `contraindicated`.
    pub allow: bool,
    /// The reason codes (`teesql.reasons`), empty when allowed; they also shape the EAR vector.
    pub reasons: Vec<&'a str>,
    /// The deciding policy package, `teesql.<purpose>` (`teesql.policy_id`).
    pub policy_id: &'a str,
    /// `sha256:<hex>` of the policy set (`teesql.policy_hash`), also the submodule's
    /// `ear_appraisal_policy_ids`; empty leaves that out.
    pub policy_hash: &'a str,
    /// The OPA bundle revision of the policy set (`teesql.policy_revision`); empty (left
    /// out) for policies from directories.
    pub policy_revision: &'a str,
    /// The service's SHA-256 over the evidence (see CLAIMS.md).
    pub evidence_sha256: [u8; 32],
    /// Unix seconds until which the facts hold, the token's `exp`; 0 or past means
    /// [`DEFAULT_LIFETIME_SECS`] from signing.
    pub valid_until: u64,
    /// The quote's MRTD, lower-case hex (`teesql.tdx.mrtd`); `None` without a quote.
    pub mrtd: Option<&'a str>,
    /// The quote's TCB status, e.g. `UpToDate` (`teesql.tdx.tcb_status`); `None` when unknown.
    pub tcb_status: Option<&'a str>,
    /// The quote backend that decided: `dcap`, `ita` or `simulator` (`teesql.tdx.backend`).
    pub backend: Option<&'a str>,
    /// The trust root verified against: `intel`, `dev`, `custom`, `intel-trust-authority`
    /// or `simulator` (`teesql.tdx.root`).
    pub root: Option<&'a str>,
    /// The quote verified up to a trust root (`teesql.tdx.verified`).
    pub verified: bool,
    /// The attested app id, hex (`teesql.app.app_id`); `None` when not attested.
    pub app_id: Option<&'a str>,
    /// The compose hash the replayed event log attests (`teesql.app.compose_hash`);
    /// `None` without an event log.
    pub compose_hash: Option<&'a str>,
    /// What the policy granted.
    pub grants: Option<&'a crate::policy::Grants>,
    /// The caller's nonce, echoed as `eat_nonce`.
    pub nonce: Option<&'a [u8]>,
    /// A quote was presented.
    pub has_quote: bool,
    /// The TD's debug attribute (sets the EAR `runtime-opaque` claim); `None` without a quote.
    pub debug: Option<bool>,
    /// The event log replayed to RTMR3; `None` without an event log.
    pub rtmr3_replayed: Option<bool>,
    /// The TEE of the evidence, `tdx` or `sev-snp` (`teesql.tee`); `None` without any.
    /// On `sev-snp` the TEE's facts go under `teesql.snp` (with `snp_measurement` for
    /// the measurement) instead of `teesql.tdx`.
    pub tee: Option<&'a str>,
    /// The SEV-SNP launch measurement, hex (`teesql.snp.measurement`).
    pub snp_measurement: Option<&'a str>,
}

/// The verifier's decision-signing key.
///
/// Tokens are signed with ring's P-256 (a parsed key pair, about a tenth of the cost of
/// jsonwebtoken's RustCrypto backend, which parses the key and derives its public half on
/// every call); the JWS is the standard compact form, and [`verify`] and every test
/// check it with jsonwebtoken.
pub struct DecisionSigner {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    kid: String,
    /// base64url of the protected header, the same for every token.
    header_b64: String,
    jwks: String,
    /// The JWKS with the key bound to this verifier's quote, once it is.
    attested_jwks: OnceLock<String>,
    issuer: String,
}

impl std::fmt::Debug for DecisionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionSigner")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl DecisionSigner {
    /// A fresh P-256 key (the default: tokens are then checkable for as long as this
    /// process serves its JWKS).
    pub fn generate(issuer: &str) -> Result<Self, SignerError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .map_err(|_| SignerError::Generate)?;
        Self::from_pkcs8_der(pkcs8.as_ref(), issuer)
    }

    /// A P-256 key from a PKCS#8 PEM file (`openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256`), so tokens outlive restarts.
    pub fn from_pem_file(path: &Path, issuer: &str) -> Result<Self, SignerError> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let der =
            match PrivateKeyDer::from_pem_file(path).map_err(|source| SignerError::KeyFile {
                path: path.to_path_buf(),
                source,
            })? {
                PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
                _ => {
                    return Err(SignerError::NotPkcs8 {
                        path: path.to_path_buf(),
                    });
                }
            };
        Self::from_pkcs8_der(&der, issuer).map_err(|e| SignerError::InKeyFile {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    fn from_pkcs8_der(der: &[u8], issuer: &str) -> Result<Self, SignerError> {
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &rng,
        )
        .map_err(SignerError::NotP256Pkcs8)?;
        let mut jwk = Jwk::from_encoding_key(&EncodingKey::from_ec_der(der), Algorithm::ES256)
            .map_err(SignerError::NotP256)?;
        // The key id: a digest of the public key, stable for a key file across restarts.
        let public = serde_json::to_vec(&jwk.algorithm).unwrap_or_default();
        let kid = hex::encode(&Sha256::digest(&public)[..12]);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let jwks =
            serde_json::to_string(&JwkSet { keys: vec![jwk] }).map_err(json_error("JWKS"))?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.clone());
        header.typ = Some("JWT".into());
        let header_json = serde_json::to_vec(&header).map_err(json_error("header"))?;
        let signer = Self {
            key,
            rng,
            kid,
            header_b64: b64(&header_json),
            jwks,
            attested_jwks: OnceLock::new(),
            issuer: issuer.to_string(),
        };
        // A key that cannot sign is found at start, not on the first decision.
        signer.sign(&TokenFacts::default(), 0)?;
        Ok(signer)
    }

    /// The public keys, as `/.well-known/jwks.json` serves them.
    pub fn jwks_json(&self) -> &str {
        self.attested_jwks.get().unwrap_or(&self.jwks)
    }

    /// The report data a quote binding this key must carry ([`key_report_data`]).
    pub fn report_data(&self) -> [u8; 64] {
        use ring::signature::KeyPair;
        key_report_data(self.key.public_key().as_ref())
    }

    /// Publish the key with the guest agent's GetQuote response for [`Self::report_data`]
    /// (once; a second call is refused).
    pub fn attach_quote(&self, getquote: Value) -> Result<(), SignerError> {
        let mut set: Value = serde_json::from_str(&self.jwks).map_err(json_error("JWKS"))?;
        let key = set["keys"]
            .get_mut(0)
            .and_then(Value::as_object_mut)
            .ok_or(SignerError::NoKey)?;
        key.insert(JWK_QUOTE_MEMBER.into(), getquote);
        let text = serde_json::to_string(&set).map_err(json_error("JWKS"))?;
        self.attested_jwks
            .set(text)
            .map_err(|_| SignerError::AlreadyBound)
    }

    /// Sign one decision made at `now`.
    pub fn sign(&self, f: &TokenFacts<'_>, now: u64) -> Result<String, SignerError> {
        let exp = if f.valid_until > now {
            f.valid_until
        } else {
            now + DEFAULT_LIFETIME_SECS
        };
        let appraisal = super::ear::appraise(&super::ear::Inputs {
            allow: f.allow,
            reasons: &f.reasons,
            has_quote: f.has_quote,
            verified: f.verified,
            tcb_status: f.tcb_status,
            debug: f.debug,
            rtmr3_replayed: f.rtmr3_replayed,
            compose_hash: f.compose_hash,
        });
        let mut submod = json!({
            "ear_status": appraisal.status,
            "ear_trustworthiness_vector": appraisal.vector,
        });
        if !f.policy_hash.is_empty() {
            submod["ear_appraisal_policy_ids"] = json!([f.policy_hash]);
        }
        let mut claims = json!({
            "eat_profile": PROFILE,
            "iss": self.issuer,
            "iat": now,
            "exp": exp,
            "ear_verifier_id": {
                "developer": DEVELOPER,
                "build": concat!("teesql-verifier ", env!("CARGO_PKG_VERSION")),
            },
            "ear_status": appraisal.status,
            "submods": { CPU_SUBMOD: submod },
            PRIVATE_CLAIM: {
                "purpose": f.purpose,
                "allow": f.allow,
                "reasons": f.reasons,
                "policy_id": f.policy_id,
                "policy_hash": f.policy_hash,
                "evidence_sha256": hex::encode(f.evidence_sha256),
                "tee": f.tee,
                "app": {
                    "app_id": f.app_id,
                    "compose_hash": f.compose_hash,
                },
                "grants": f.grants,
            },
        });
        // The CVM's TEE is the `cpu0` submodule; its facts under the TEE's own name.
        let (tee, facts) = match f.tee {
            Some("sev-snp") => (
                "snp",
                json!({
                    "verified": f.verified,
                    "measurement": f.snp_measurement,
                    "tcb_status": f.tcb_status,
                    "root": f.root,
                }),
            ),
            _ => (
                "tdx",
                json!({
                    "verified": f.verified,
                    "mrtd": f.mrtd,
                    "tcb_status": f.tcb_status,
                    "backend": f.backend,
                    "root": f.root,
                }),
            ),
        };
        claims[PRIVATE_CLAIM][tee] = facts;
        if let Some(nonce) = f.nonce {
            claims["eat_nonce"] = json!(b64(nonce));
        }
        if !f.policy_revision.is_empty() {
            claims[PRIVATE_CLAIM]["policy_revision"] = json!(f.policy_revision);
        }
        let payload = serde_json::to_vec(&claims).map_err(json_error("claims"))?;
        let message = format!("{}.{}", self.header_b64, b64(&payload));
        // ES256 in a JWS is r || s, 64 bytes: ring's FIXED encoding (RFC 7518 §3.4).
        let sig = self
            .key
            .sign(&self.rng, message.as_bytes())
            .map_err(|_| SignerError::Signing)?;
        Ok(format!("{message}.{}", b64(sig.as_ref())))
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_snp_decision_names_its_tee_and_its_facts_under_snp() {
        let s = DecisionSigner::generate("v1").unwrap();
        let denied = TokenFacts {
            purpose: "sidecar",
            allow: false,
            reasons: vec!["snp_measurement_not_pinned"],
            verified: true,
            tcb_status: Some("UpToDate"),
            root: Some("amd"),
            has_quote: true,
            debug: Some(false),
            tee: Some("sev-snp"),
            snp_measurement: Some("7f51"),
            ..TokenFacts::default()
        };
        let c = verify(&s.sign(&denied, 1_000).unwrap(), s.jwks_json(), None, 1_001).unwrap();
        assert_eq!(c["teesql"]["tee"], "sev-snp");
        assert_eq!(c["teesql"]["snp"]["measurement"], "7f51");
        assert_eq!(c["teesql"]["snp"]["root"], "amd");
        assert!(c["teesql"].get("tdx").is_none(), "{c}");
        let cpu = &c["submods"][CPU_SUBMOD];
        assert_eq!(cpu["ear_status"], "contraindicated");
        // An unpinned measurement: executables unrecognized (33); genuine hardware (2).
        assert_eq!(cpu["ear_trustworthiness_vector"]["executables"], 33);
        assert_eq!(cpu["ear_trustworthiness_vector"]["hardware"], 2);
        // A TDX decision keeps teesql.tdx and has no snp.
        let tdx = TokenFacts {
            tee: Some("tdx"),
            mrtd: Some("ab"),
            ..TokenFacts::default()
        };
        let c = verify(&s.sign(&tdx, 1_000).unwrap(), s.jwks_json(), None, 1_001).unwrap();
        assert_eq!(c["teesql"]["tdx"]["mrtd"], "ab");
        assert!(c["teesql"].get("snp").is_none());
    }

    #[test]
    fn a_signed_decision_verifies_and_an_altered_or_expired_one_does_not() {
        let s = DecisionSigner::generate("v1").unwrap();
        let facts = TokenFacts {
            purpose: "sidecar",
            allow: true,
            valid_until: 2_000,
            mrtd: Some("ab"),
            ..TokenFacts::default()
        };
        let t = s.sign(&facts, 1_000).unwrap();
        let c = verify(&t, s.jwks_json(), Some("v1"), 1_500).unwrap();
        assert_eq!(c["teesql"]["allow"], true);
        assert_eq!(c["ear_status"], "affirming");
        assert_eq!(c["exp"], 2_000);
        assert_eq!(
            verify(&t, s.jwks_json(), Some("v1"), 2_100).unwrap_err(),
            TokenError::Expired {
                exp: 2_000,
                now: 2_100
            }
        );
        assert!(verify(&t, s.jwks_json(), Some("other"), 1_500).is_err());
        // Another key's JWKS: the kid is unknown.
        let other = DecisionSigner::generate("v1").unwrap();
        assert!(matches!(
            verify(&t, other.jwks_json(), None, 1_500).unwrap_err(),
            TokenError::UnknownKey(_)
        ));
        // A payload changed by one claim no longer matches its signature.
        let parts: Vec<&str> = t.split('.').collect();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
        let forged = payload.replace("\"allow\":true", "\"allow\":false");
        assert_ne!(forged, payload);
        let forged = format!("{}.{}.{}", parts[0], b64.encode(forged), parts[2]);
        assert!(matches!(
            verify(&forged, s.jwks_json(), None, 1_500).unwrap_err(),
            TokenError::Signature(_)
        ));
    }

    #[test]
    fn grants_are_signed_with_the_decision() {
        let s = DecisionSigner::generate("v1").unwrap();
        let grants = crate::policy::Grants {
            roles: vec!["tenant_acme".into()],
            attributes: [("tenant".to_string(), "acme".to_string())].into(),
        };
        let t = s
            .sign(
                &TokenFacts {
                    purpose: "sidecar",
                    allow: true,
                    grants: Some(&grants),
                    ..TokenFacts::default()
                },
                1_000,
            )
            .unwrap();
        let c = verify(&t, s.jwks_json(), Some("v1"), 1_100).unwrap();
        assert_eq!(
            c["teesql"]["grants"],
            json!({"roles": ["tenant_acme"], "attributes": {"tenant": "acme"}})
        );
        let none = s.sign(&TokenFacts::default(), 1_000).unwrap();
        let c = verify(&none, s.jwks_json(), Some("v1"), 1_100).unwrap();
        assert_eq!(c["teesql"]["grants"], Value::Null);
    }

    #[test]
    fn a_key_bound_to_a_quote_names_the_report_data_a_relying_party_recomputes() {
        let s = DecisionSigner::generate("v1").unwrap();
        let kid = s.kid.clone();
        assert_eq!(key_quote(s.jwks_json(), &kid).unwrap(), None);
        s.attach_quote(json!({"quote": "00", "event_log": "[]"}))
            .unwrap();
        let q = key_quote(s.jwks_json(), &kid).unwrap().unwrap();
        assert_eq!(q.expected_report_data, s.report_data());
        assert_eq!(
            serde_json::from_slice::<Value>(&q.getquote).unwrap()["quote"],
            "00"
        );
        // Still an ordinary JWKS for the token itself.
        let t = s.sign(&TokenFacts::default(), 1_000).unwrap();
        verify(&t, s.jwks_json(), None, 1_000).unwrap();
        // Another key's report data differs; a second binding is refused.
        let other = DecisionSigner::generate("v1").unwrap();
        assert_ne!(other.report_data(), s.report_data());
        assert!(s.attach_quote(json!({})).is_err());
    }
}

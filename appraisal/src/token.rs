//! Checking decision tokens as a relying party does: the signature against the
//! verifier's JWKS ([`verify`]), and the quote a verifier with an RA-TLS identity binds
//! its signing key to ([`key_quote`], [`key_report_data`]). The service signs them
//! (`teesql_verifier::service::token`); this half needs no service.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::Digest;

/// Why a decision token, or the quote its signing key carries, is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The JWKS is not a JSON Web Key Set.
    #[error("the JWKS is not valid: {0}")]
    Jwks(String),
    /// The token's JOSE header does not decode.
    #[error("the token's header: {0}")]
    Header(String),
    /// The token is signed with another algorithm than ES256.
    #[error("the token is signed with {0}; decision tokens use ES256")]
    Algorithm(String),
    /// The token's header names no key.
    #[error("the token names no key (kid)")]
    NoKid,
    /// The JWKS has no key with the token's `kid`.
    #[error("no key {0:?} in the JWKS")]
    UnknownKey(String),
    /// The key is in the JWKS but unusable.
    #[error("key {kid:?}: {detail}")]
    Key {
        /// The key's id.
        kid: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The signature, issuer or a required claim does not check.
    #[error("the token does not verify: {0}")]
    Signature(String),
    /// The token has no numeric `exp`.
    #[error("the token has no numeric exp")]
    NoExp,
    /// The token expired (more than 60 s before `now`).
    #[error("the token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`, unix seconds.
        exp: u64,
        /// The time it was checked at, unix seconds.
        now: u64,
    },
}

/// The JWK member that carries the quote binding the key.
pub const JWK_QUOTE_MEMBER: &str = "teesql_getquote";

/// What a quote binding a decision-signing key carries as report data:
/// `SHA-512("teesql-jwk:" ‖ 0x04 ‖ x ‖ y)`, the key's uncompressed P-256 point.
pub fn key_report_data(uncompressed_point: &[u8]) -> [u8; 64] {
    use sha2::Sha512;
    let mut h = Sha512::new();
    h.update(b"teesql-jwk:");
    h.update(uncompressed_point);
    h.finalize().into()
}

/// A quote a JWKS publishes for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQuote {
    /// The guest agent's GetQuote response, JSON.
    pub getquote: Vec<u8>,
    /// The report data it must carry to bind the key ([`key_report_data`]).
    pub expected_report_data: [u8; 64],
}

/// The quote a JWKS publishes for key `kid`; `None` when the key carries none.
pub fn key_quote(jwks: &str, kid: &str) -> Result<Option<KeyQuote>, TokenError> {
    use base64::Engine;
    let set: Value = serde_json::from_str(jwks).map_err(|e| TokenError::Jwks(e.to_string()))?;
    let key = set["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .ok_or_else(|| TokenError::UnknownKey(kid.to_string()))?;
    let Some(getquote) = key.get(JWK_QUOTE_MEMBER) else {
        return Ok(None);
    };
    let coord = |name: &str| {
        key[name]
            .as_str()
            .and_then(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(v)
                    .ok()
            })
            .filter(|v| v.len() == 32)
            .ok_or_else(|| TokenError::Key {
                kid: kid.to_string(),
                detail: format!("{name} is not a P-256 coordinate"),
            })
    };
    let mut point = vec![0x04];
    point.extend(coord("x")?);
    point.extend(coord("y")?);
    let json = serde_json::to_vec(getquote).map_err(|e| TokenError::Jwks(e.to_string()))?;
    Ok(Some(KeyQuote {
        getquote: json,
        expected_report_data: key_report_data(&point),
    }))
}

/// Check a decision token against a JWKS (as a relying party does): ES256 only, the key
/// by `kid`, the signature, `exp` at `now` (60 s skew), and `iss` when given. Returns the
/// claims.
pub fn verify(
    token: &str,
    jwks: &str,
    issuer: Option<&str>,
    now: u64,
) -> Result<Value, TokenError> {
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| TokenError::Jwks(e.to_string()))?;
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Header(e.to_string()))?;
    if header.alg != Algorithm::ES256 {
        return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = header.kid.ok_or(TokenError::NoKid)?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| TokenError::UnknownKey(kid.clone()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| TokenError::Key {
        kid: kid.clone(),
        detail: e.to_string(),
    })?;
    let mut v = Validation::new(Algorithm::ES256);
    v.validate_exp = false;
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "iss", "iat"]);
    if let Some(iss) = issuer {
        v.set_issuer(&[iss]);
    }
    let data = jsonwebtoken::decode::<Value>(token, &key, &v)
        .map_err(|e| TokenError::Signature(e.to_string()))?;
    let exp = data.claims["exp"].as_u64().ok_or(TokenError::NoExp)?;
    if now > exp.saturating_add(60) {
        return Err(TokenError::Expired { exp, now });
    }
    Ok(data.claims)
}

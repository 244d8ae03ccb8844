//! A stand-in for Intel Trust Authority on loopback, speaking its wire API:
//! `POST /appraisal/v2/attest` (header `x-api-key`, JSON `{"quote": base64,
//! "token_signing_alg", "policy_ids", "policy_must_match"}`) answers `{"token": JWT}`, and
//! `GET /certs` serves the JWKS.
//!
//! It appraises quotes for real — dcap-qvl against the development PKI's root and its
//! PCCS — and signs real JWTs (PS384, or RS256 when asked) with RSA keys it generates.
//! Its tokens are written from Intel's published samples, not from the verifier
//! (`tests/data/ita-samples/`: docs.trustauthority.intel.com, "Attestation tokens and
//! claims", and a v2 token Intel issued in 2026): `iss` "Intel Trust Authority" as every
//! documented sample has it, whatever the verifier expects; ITA's v2 form (`ver` 2.0.0,
//! the attester and `tdx_*` claims nested under `tdx`); `jti`, `eat_profile`, `intuse`,
//! `dbgstat`, `attester_type`, `attester_tcb_status`, `attester_tcb_date`,
//! `attester_advisory_ids`, `verifier_instance_ids`, `policy_ids_matched` /
//! `policy_ids_unmatched` (`{id, version, hash}`), `policy_defined_claims`, every `tdx_*`
//! claim of the samples and `tdx_collateral`; a `jku` naming its own JWKS.
//! Tests switch it into the failure modes a verifier must survive ([`Behaviour`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use teesql_verifier::backend::QuoteBackend;
use teesql_verifier::backend::dcap::{DcapBackend, TrustRoot};
use teesql_verifier::collateral::{CollateralConfig, CollateralProvider};

use crate::agent::TestAgent;

/// How the mock answers the next attestation requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// A valid token.
    Normal,
    /// A token that expired an hour ago.
    Expired,
    /// A token whose header names this `jku` instead of the mock's JWKS.
    ForeignJku(String),
    /// An unsigned token (`alg: none`).
    AlgNone,
    /// HS256 "signed" with the RSA public key as the secret (key confusion).
    Hs256WithPublicKey,
    /// Sign with a fresh key (a new `kid`), as after ITA rotates its keys.
    RotateKey,
    /// Answer every attestation with this HTTP status.
    Status(u16),
    /// Sign this published claim set (one of `tests/data/ita-samples/`) with the quote's
    /// measurements put where the set has them and the times made current: what the
    /// verifier does with a token shaped exactly like one Intel documents.
    Sample(Value),
}

struct SigningKey {
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

struct Shared {
    api_key: String,
    jwks_url: String,
    /// ITA policy ids this mock's appraisals match; any other requested id is unmatched.
    matching_policies: Mutex<Vec<String>>,
    keys: Mutex<Vec<Arc<SigningKey>>>,
    behaviour: Mutex<Behaviour>,
    attest_requests: AtomicU64,
    jwks_requests: AtomicU64,
    appraiser: DcapBackend,
}

/// A running mock; it stops when dropped.
pub struct MockIta {
    /// The API base (`--ita-url`).
    pub url: String,
    /// Its JWKS (`--ita-jwks-url`).
    pub jwks_url: String,
    /// The API key it accepts.
    pub api_key: String,
    state: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockIta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockIta").field("url", &self.url).finish()
    }
}

impl Drop for MockIta {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn new_key(n: usize) -> Result<SigningKey> {
    use rsa::Generate;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let private = rsa::PrivateKey::generate();
    let der = private.to_pkcs1_der().context("RSA key encoding")?;
    let key = EncodingKey::from_rsa_der(der.as_bytes());
    let kid = format!("mock-ita-{n}");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::PS384)?;
    jwk.common.key_id = Some(kid.clone());
    Ok(SigningKey { kid, key, jwk })
}

impl MockIta {
    /// Start on a free loopback port, appraising quotes of `agent`'s development PKI.
    pub async fn start(agent: &TestAgent) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let collateral = CollateralProvider::new(&CollateralConfig {
            pccs_url: Some(agent.url.clone()),
            ..CollateralConfig::default()
        })?;
        let root = TrustRoot::development_from_file(&agent.root_der_path())?;
        let first = tokio::task::spawn_blocking(|| new_key(1)).await??;
        let state = Arc::new(Shared {
            api_key: "mock-ita-api-key-0123456789".into(),
            jwks_url: format!("{url}/certs"),
            matching_policies: Mutex::new(Vec::new()),
            keys: Mutex::new(vec![Arc::new(first)]),
            behaviour: Mutex::new(Behaviour::Normal),
            attest_requests: AtomicU64::new(0),
            jwks_requests: AtomicU64::new(0),
            appraiser: DcapBackend::new(root, Arc::new(collateral)),
        });
        let app = axum::Router::new()
            .route("/appraisal/v2/attest", post(attest))
            .route("/certs", get(certs))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            jwks_url: state.jwks_url.clone(),
            api_key: state.api_key.clone(),
            url,
            state,
            task,
        })
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self
            .state
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = behaviour;
    }

    /// The ITA policy ids the mock's appraisals match (others requested are unmatched).
    pub fn match_policies(&self, ids: &[&str]) {
        *self
            .state
            .matching_policies
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = ids.iter().map(|i| i.to_string()).collect();
    }

    /// Attestation requests received so far.
    pub fn attest_requests(&self) -> u64 {
        self.state.attest_requests.load(Ordering::SeqCst)
    }

    /// JWKS requests received so far.
    pub fn jwks_requests(&self) -> u64 {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    /// The verifier's ITA settings for this mock, with `api_key`: its API base and JWKS;
    /// the accepted issuers are the verifier's defaults.
    pub fn config(&self, api_key: &str) -> Result<teesql_verifier::backend::ita::ItaConfig> {
        let key =
            teesql_verifier::backend::ita::ApiKey::new(api_key).map_err(anyhow::Error::msg)?;
        let mut c = teesql_verifier::backend::ita::ItaConfig::new(&self.url, key);
        c.jwks_url = self.jwks_url.clone();
        c.backoff = std::time::Duration::from_millis(20);
        Ok(c)
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn certs(State(s): State<Arc<Shared>>) -> Response {
    s.jwks_requests.fetch_add(1, Ordering::SeqCst);
    let keys = s.keys.lock().unwrap_or_else(|p| p.into_inner());
    let set = JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    };
    axum::Json(set).into_response()
}

async fn attest(State(s): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    s.attest_requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(s.api_key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    let behaviour = s
        .behaviour
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Behaviour::Status(code) = behaviour {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "mock failure");
    }
    let Ok(req) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let Some(raw) = req
        .get("quote")
        .and_then(Value::as_str)
        .and_then(|q| base64::engine::general_purpose::STANDARD.decode(q).ok())
    else {
        return error(StatusCode::BAD_REQUEST, "quote missing or not base64");
    };
    let alg = match req.get("token_signing_alg").and_then(Value::as_str) {
        Some("RS256") => Algorithm::RS256,
        Some("PS384") | None => Algorithm::PS384,
        Some(_) => return error(StatusCode::BAD_REQUEST, "unsupported token_signing_alg"),
    };
    let Ok(quote) = teesql_verifier::evidence::decode_quote_bytes(&raw) else {
        return error(StatusCode::BAD_REQUEST, "not a quote");
    };
    let now = teesql_verifier::Clock::System.now();
    let facts = s.appraiser.appraise(&quote, now).await;
    if !facts.verified {
        let why = facts.error.map(|e| e.message).unwrap_or_default();
        return error(
            StatusCode::BAD_REQUEST,
            &format!("quote verification failed: {why}"),
        );
    }
    let Some(td) = quote.td_report() else {
        return error(StatusCode::BAD_REQUEST, "not a TDX quote");
    };
    let (iat, exp) = if behaviour == Behaviour::Expired {
        (now - 7200, now - 3600)
    } else {
        (now, now + 300)
    };
    // Policies: each requested id is matched when the mock knows it, else unmatched;
    // with policy_must_match, ITA issues no token when any is unmatched.
    let requested: Vec<String> = req
        .get("policy_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let known = s
        .matching_policies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (matched, unmatched): (Vec<String>, Vec<String>) =
        requested.into_iter().partition(|id| known.contains(id));
    let must_match = req
        .get("policy_must_match")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if must_match && !unmatched.is_empty() {
        // Intel documents that no token is issued; the status is not documented, and
        // clients (Trustee) read `{"error": …}` from any non-200.
        return error(
            StatusCode::BAD_REQUEST,
            &format!("policy_must_match: unmatched policies {unmatched:?}"),
        );
    }
    let policy = |id: &String| json!({"id": id, "version": "v1", "hash": base64::engine::general_purpose::STANDARD.encode(sha2_of(id.as_bytes()))});
    let tdx = json!({
        "attester_type": "TDX",
        "attester_tcb_status": facts.tcb_status,
        "attester_tcb_date": "2024-03-13T00:00:00Z",
        "attester_advisory_ids": facts.advisory_ids,
        "dbgstat": if td.debug() { "enabled" } else { "disabled" },
        "tdx_tee_tcb_svn": hex::encode(td.tee_tcb_svn),
        "tdx_mrseam": hex::encode(td.mr_seam),
        "tdx_mrsignerseam": hex::encode(td.mr_signer_seam),
        "tdx_seam_attributes": hex::encode(td.seam_attributes),
        "tdx_td_attributes": hex::encode(td.td_attributes),
        "tdx_xfam": hex::encode(td.xfam),
        "tdx_mrtd": hex::encode(td.mrtd),
        "tdx_mrconfigid": hex::encode(td.mr_config_id),
        "tdx_mrowner": hex::encode(td.mr_owner),
        "tdx_mrownerconfig": hex::encode(td.mr_owner_config),
        "tdx_rtmr0": hex::encode(td.rtmr[0]),
        "tdx_rtmr1": hex::encode(td.rtmr[1]),
        "tdx_rtmr2": hex::encode(td.rtmr[2]),
        "tdx_rtmr3": hex::encode(td.rtmr[3]),
        "tdx_report_data": hex::encode(quote.report_data()),
        "tdx_seamsvn": u16::from_le_bytes([td.tee_tcb_svn[0], td.tee_tcb_svn[1]]),
        "tdx_td_attributes_debug": td.debug(),
        "tdx_td_attributes_septve_disable": td.td_attributes[3] & 0x10 != 0,
        "tdx_td_attributes_protection_keys": td.td_attributes[3] & 0x40 != 0,
        "tdx_td_attributes_key_locker": td.td_attributes[3] & 0x80 != 0,
        "tdx_td_attributes_perfmon": td.td_attributes[7] & 0x80 != 0,
        "tdx_is_debuggable": td.debug(),
        "tdx_collateral": {
            "qeidcerthash": hex::encode(sha2_of(b"qeidcert")),
            "qeidcrlhash": hex::encode(sha2_of(b"qeidcrl")),
            "qeidhash": hex::encode(sha2_of(b"qeid")),
            "quotehash": hex::encode(sha2_of(&raw)),
            "tcbinfocerthash": hex::encode(sha2_of(b"tcbinfocert")),
            "tcbinfocrlhash": hex::encode(sha2_of(b"tcbinfocrl")),
            "tcbinfohash": hex::encode(sha2_of(b"tcbinfo")),
        },
    });
    let claims = match &behaviour {
        Behaviour::Sample(sample) => sample_claims(sample, &tdx, iat, exp),
        _ => json!({
            "tdx": tdx,
            "policy_ids_matched": matched.iter().map(policy).collect::<Vec<_>>(),
            "policy_ids_unmatched": if unmatched.is_empty() { Value::Null } else { json!(unmatched.iter().map(policy).collect::<Vec<_>>()) },
            "policy_defined_claims": {},
            "verifier_instance_ids": [uuid(now, 1), uuid(now, 2)],
            "eat_profile": "https://portal.trustauthority.intel.com/eat_profile.html",
            "intuse": "generic",
            "ver": "2.0.0",
            "iss": "Intel Trust Authority",
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": uuid(now, s.attest_requests.load(Ordering::SeqCst)),
        }),
    };
    if behaviour == Behaviour::RotateKey {
        let n = s.keys.lock().unwrap_or_else(|p| p.into_inner()).len() + 1;
        match tokio::task::spawn_blocking(move || new_key(n)).await {
            Ok(Ok(k)) => s
                .keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::new(k)),
            _ => return error(StatusCode::INTERNAL_SERVER_ERROR, "key generation failed"),
        }
    }
    let key = match s.keys.lock().unwrap_or_else(|p| p.into_inner()).last() {
        Some(k) => k.clone(),
        None => return error(StatusCode::INTERNAL_SERVER_ERROR, "no key"),
    };
    let token = match sign(&s, &behaviour, alg, &key, &claims) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    axum::Json(json!({ "token": token })).into_response()
}

/// A published claim set made to describe this quote: each `tdx_*` measurement it has
/// (flat, or nested under `tdx`) takes the quote's value; its times become current.
/// Everything else — issuer, version, policies, other TEEs' objects — stays as Intel
/// published it.
fn sample_claims(sample: &Value, tdx: &Value, iat: u64, exp: u64) -> Value {
    let mut claims = sample.clone();
    let measured = [
        "tdx_mrtd",
        "tdx_rtmr0",
        "tdx_rtmr1",
        "tdx_rtmr2",
        "tdx_rtmr3",
        "tdx_report_data",
        "tdx_is_debuggable",
        "tdx_td_attributes_debug",
    ];
    let target = if claims.get("tdx").is_some_and(Value::is_object) {
        &mut claims["tdx"]
    } else {
        &mut claims
    };
    if let Some(obj) = target.as_object_mut() {
        for name in measured {
            if obj.contains_key(name) {
                obj.insert(name.to_string(), tdx[name].clone());
            }
        }
    }
    for (name, value) in [("iat", iat), ("nbf", iat), ("exp", exp)] {
        claims[name] = json!(value);
    }
    claims
}

/// A UUID-shaped id (version 4 layout), unique per `n` within a second.
fn uuid(now: u64, n: u64) -> String {
    let h = hex::encode(sha2_of(format!("{now}:{n}").as_bytes()));
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn sha2_of(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

fn sign(
    s: &Shared,
    behaviour: &Behaviour,
    alg: Algorithm,
    key: &SigningKey,
    claims: &Value,
) -> Result<String> {
    let b64 = |v: &Value| -> Result<String, serde_json::Error> {
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v)?))
    };
    match behaviour {
        // Hostile tokens a library would refuse to make: assembled by hand, on purpose.
        Behaviour::AlgNone => Ok(format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT", "kid": key.kid}))?,
            b64(claims)?
        )),
        Behaviour::Hs256WithPublicKey => {
            let public = serde_json::to_vec(&key.jwk)?;
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(key.kid.clone());
            header.jku = Some(s.jwks_url.clone());
            Ok(jsonwebtoken::encode(
                &header,
                claims,
                &EncodingKey::from_secret(&public)?,
            )?)
        }
        _ => {
            let mut header = Header::new(alg);
            header.kid = Some(key.kid.clone());
            header.jku = Some(match behaviour {
                Behaviour::ForeignJku(url) => url.clone(),
                _ => s.jwks_url.clone(),
            });
            Ok(jsonwebtoken::encode(&header, claims, &key.key)?)
        }
    }
}

//! The Intel Trust Authority backend: ITA appraises the quote and answers with a signed
//! JWT; the token is verified here, never trusted.
//!
//! - `POST {api}/appraisal/v2/attest`, header `x-api-key`, body
//!   `{"quote": base64, "token_signing_alg": "PS384"}` (with `policy_ids` and
//!   `policy_must_match` when the operator names ITA policies) -> `{"token": JWT}`.
//!   Timeouts; retries with exponential backoff on 429 and 5xx.
//! - The token: `alg` PS384 or RS256 only; its key found by `kid` in the JWKS at the
//!   configured URL (never at a `jku` the token names: a different `jku` is refused and
//!   not fetched); the JWKS cached and fetched again on an unknown `kid` at most once a
//!   minute; `exp`, `nbf`, `iat` and `iss` checked against the appraisal time with a
//!   small leeway. The issuers accepted by default are the ones Intel's tokens carry:
//!   `Intel Trust Authority` (every sample token in Intel's documentation) and the
//!   region's portal URL (tokens issued since 2025).
//! - `policy_ids_matched` / `policy_ids_unmatched` are facts: a configured policy id the
//!   token does not list as matched counts as unmatched, and the policy denies on it.
//! - Its claims (v2: nested under `tdx`; older: flat) must describe the quote that was
//!   sent — MRTD, RTMR0..3, report data, debug — and give the TCB status and advisory
//!   IDs. The facts keep the token's SHA-256 and its validity window.
//! - Failures that say nothing about the quote (the service unreachable, rate-limited,
//!   failing, refusing the API key, an untrustworthy answer) are `undecided`: never
//!   cached, and a chain may ask another backend. The API key never appears in a log,
//!   an error or a metric.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    BoxFuture, CollateralWindow, QuoteBackend, QuoteFacts, TrustRootKind, VerifyErrorCode,
};
use crate::evidence::Quote;
use crate::http::{BodyError, error_chain};

/// ITA's API, United States region (the default).
pub const US_API_URL: &str = "https://api.trustauthority.intel.com";
/// ITA's API, European Union region.
pub const EU_API_URL: &str = "https://api.eu.trustauthority.intel.com";
const US_PORTAL: &str = "https://portal.trustauthority.intel.com";
const EU_PORTAL: &str = "https://portal.eu.trustauthority.intel.com";
/// The `iss` of every sample token in Intel's Trust Authority documentation (attestation
/// token pages for TDX, SGX and GPU).
pub const DOCUMENTED_ISSUER: &str = "Intel Trust Authority";
/// The most ITA policy ids a request names (ITA's own limit is 10).
pub const MAX_POLICY_IDS: usize = 10;

/// The largest answer read from ITA (token or JWKS).
const MAX_BODY: usize = 256 << 10;
/// The largest token accepted.
const MAX_TOKEN: usize = 64 << 10;
/// The most keys a JWKS may hold.
const MAX_KEYS: usize = 64;

/// Why an API key is refused ([`ApiKey::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Nothing but whitespace.
    #[error("the Intel Trust Authority API key is empty")]
    Empty,
    /// Characters other than printable ASCII.
    #[error("the Intel Trust Authority API key has characters an HTTP header cannot carry")]
    NotHeaderSafe,
}

/// The HTTP client of an [`ItaBackend`] could not be built.
#[derive(Debug, thiserror::Error)]
#[error("Intel Trust Authority client: {0}")]
pub struct ItaClientError(#[source] pub reqwest::Error);

/// The API key: kept out of every `Debug`, log line and message.
#[derive(Clone)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// The key with surrounding whitespace trimmed; refused when empty or holding
    /// anything but printable ASCII (it must fit an HTTP header).
    pub fn new(key: &str) -> Result<Self, ApiKeyError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(ApiKeyError::Empty);
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiKeyError::NotHeaderSafe);
        }
        Ok(Self(Arc::from(key)))
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(redacted)")
    }
}

/// How to reach ITA and what to accept from it.
#[derive(Debug, Clone)]
pub struct ItaConfig {
    /// API base, e.g. [`US_API_URL`].
    pub api_url: String,
    /// Where the token-signing keys are read: only here, whatever a token says.
    pub jwks_url: String,
    /// The `iss` values accepted (any one of them).
    pub issuers: Vec<String>,
    /// ITA policies to appraise against (`policy_ids`); each must be matched.
    pub policy_ids: Vec<String>,
    /// Ask ITA to issue no token unless every policy matches (`policy_must_match`).
    pub policy_must_match: bool,
    /// Sent as the `x-api-key` header of attest requests; never logged.
    pub api_key: ApiKey,
    /// Time limit of one HTTP request.
    pub request_timeout: Duration,
    /// Attempts after the first on 429, 5xx and transport errors.
    pub retries: u32,
    /// The first backoff; doubled on each retry.
    pub backoff: Duration,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, seconds.
    pub leeway_secs: u64,
    /// The JWKS is fetched again for an unknown `kid` at most this often.
    pub jwks_refresh_interval: Duration,
}

impl ItaConfig {
    /// Settings for `api_url` with the region's JWKS and the issuers its tokens carry
    /// (the EU region for its API base, the US one otherwise), 10 s per request, two
    /// retries.
    pub fn new(api_url: &str, api_key: ApiKey) -> Self {
        let api_url = api_url.trim_end_matches('/').to_string();
        let portal = if api_url == EU_API_URL {
            EU_PORTAL
        } else {
            US_PORTAL
        };
        Self {
            jwks_url: format!("{portal}/certs"),
            issuers: vec![DOCUMENTED_ISSUER.to_string(), portal.to_string()],
            policy_ids: Vec::new(),
            policy_must_match: false,
            api_url,
            api_key,
            request_timeout: Duration::from_secs(10),
            retries: 2,
            backoff: Duration::from_millis(250),
            leeway_secs: 60,
            jwks_refresh_interval: Duration::from_secs(60),
        }
    }
}

/// The JWKS as last fetched.
#[derive(Debug, Default)]
struct Keys {
    set: Option<Arc<JwkSet>>,
    /// When an unknown `kid` last made us fetch again.
    refreshed: Option<Instant>,
}

/// Counters for tests and metrics.
#[derive(Debug, Default)]
pub struct ItaStats {
    /// `POST …/appraisal/v2/attest` requests sent, each retry counted.
    pub attest_requests: std::sync::atomic::AtomicU64,
    /// JWKS fetches attempted: while no set is held, then for an unknown `kid` at most
    /// once per `jwks_refresh_interval`.
    pub jwks_fetches: std::sync::atomic::AtomicU64,
}

/// Sends quotes to Intel Trust Authority and turns its verified token into facts; the
/// JWKS is cached in between.
#[derive(Debug)]
pub struct ItaBackend {
    config: ItaConfig,
    http: reqwest::Client,
    keys: tokio::sync::Mutex<Keys>,
    /// Requests made to ITA, for tests and metrics.
    pub stats: ItaStats,
}

/// Why the token (or the call) failed, as facts.
struct Failure {
    code: VerifyErrorCode,
    message: String,
}

fn failure(code: VerifyErrorCode, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

impl ItaBackend {
    /// A backend with its own HTTP client (per-request timeout from `config`, connect
    /// timeout at most 5 s, no redirects followed); fails only if the client cannot be built.
    pub fn new(config: ItaConfig) -> Result<Self, ItaClientError> {
        let http = crate::http::client_builder(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(ItaClientError)?;
        Ok(Self {
            config,
            http,
            keys: tokio::sync::Mutex::new(Keys::default()),
            stats: ItaStats::default(),
        })
    }

    /// The settings it was built with (the API key stays redacted in `Debug`).
    pub fn config(&self) -> &ItaConfig {
        &self.config
    }

    /// `intel-trust-authority` when tokens are checked against Intel's published keys;
    /// `custom` for any other JWKS (a test double, a proxy): the claims say whose keys
    /// signed, and the production policy accepts only Intel's.
    pub fn root(&self) -> TrustRootKind {
        let official = [US_PORTAL, EU_PORTAL]
            .iter()
            .any(|p| self.config.jwks_url.trim_end_matches('/') == format!("{p}/certs"));
        if official {
            TrustRootKind::IntelTrustAuthority
        } else {
            TrustRootKind::Custom
        }
    }

    async fn appraise_quote(&self, quote: &Quote, now: u64) -> Result<QuoteFacts, Failure> {
        let token = self.attest(quote).await?;
        let claims = self.verify_token(&token, now).await?;
        facts_from_claims(&claims, quote, &token, self.root(), &self.config.policy_ids)
    }

    /// Ask ITA for a token, retrying what may pass.
    async fn attest(&self, quote: &Quote) -> Result<String, Failure> {
        let url = format!("{}/appraisal/v2/attest", self.config.api_url);
        let mut body = serde_json::json!({
            "quote": base64::engine::general_purpose::STANDARD.encode(quote.raw()),
            "token_signing_alg": "PS384",
        });
        if !self.config.policy_ids.is_empty() {
            body["policy_ids"] = serde_json::json!(self.config.policy_ids);
            body["policy_must_match"] = serde_json::json!(self.config.policy_must_match);
        }
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                let wait = self
                    .config
                    .backoff
                    .saturating_mul(1 << (attempt - 1).min(8));
                tokio::time::sleep(wait).await;
            }
            self.stats
                .attest_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sent = self
                .http
                .post(&url)
                .header("x-api-key", self.config.api_key.expose())
                .header("accept", "application/json")
                .json(&body)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{url}: {}", transport_error(&e));
                    continue;
                }
            };
            let status = resp.status();
            let text = read_bounded(resp).await;
            match status.as_u16() {
                200 => {
                    let text = text.map_err(|e| {
                        failure(VerifyErrorCode::ServiceUnavailable, format!("{url}: {e}"))
                    })?;
                    return token_from_body(&text);
                }
                401 | 403 => {
                    tracing::error!(
                        url = %url,
                        status = status.as_u16(),
                        "Intel Trust Authority refused the API key; check INTEL_TRUST_AUTHORITY_API_KEY (or --ita-api-key-file)"
                    );
                    return Err(failure(
                        VerifyErrorCode::ServiceUnavailable,
                        format!(
                            "Intel Trust Authority refused the API key (HTTP {}): check INTEL_TRUST_AUTHORITY_API_KEY or the --ita-api-key-file",
                            status.as_u16()
                        ),
                    ));
                }
                429 | 500..=599 => {
                    last = format!("{url}: HTTP {}", status.as_u16());
                }
                code => {
                    // ITA looked at the quote and would not attest it (400: not a valid
                    // quote): a verdict, not an outage.
                    let detail = text.unwrap_or_default();
                    return Err(failure(
                        VerifyErrorCode::Other,
                        format!(
                            "Intel Trust Authority did not attest the quote (HTTP {code}): {}",
                            excerpt(&detail)
                        ),
                    ));
                }
            }
        }
        Err(failure(
            VerifyErrorCode::ServiceUnavailable,
            format!(
                "Intel Trust Authority unavailable after {} attempt(s): {last}",
                self.config.retries + 1
            ),
        ))
    }

    /// The token's claims, if the token verifies.
    async fn verify_token(&self, token: &str, now: u64) -> Result<Value, Failure> {
        let bad = |m: String| failure(VerifyErrorCode::TokenInvalid, m);
        if token.len() > MAX_TOKEN {
            return Err(bad(format!(
                "the token is {} bytes, at most {MAX_TOKEN}",
                token.len()
            )));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| bad(format!("the token's header cannot be read: {e}")))?;
        if !matches!(header.alg, Algorithm::PS384 | Algorithm::RS256) {
            return Err(bad(format!(
                "the token is signed with {:?}; only PS384 and RS256 are accepted",
                header.alg
            )));
        }
        if let Some(jku) = &header.jku
            && jku.trim_end_matches('/') != self.config.jwks_url.trim_end_matches('/')
        {
            return Err(bad(format!(
                "the token names its keys at {jku:?}, not at the configured JWKS {}; not fetched",
                self.config.jwks_url
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| bad("the token names no key (kid)".into()))?;
        let key = self.key(kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        // Time is checked below against the appraisal time, not the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.set_issuer(&self.config.issuers);
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| bad(format!("the token does not verify: {e}")))?;
        let claims = data.claims;
        let time = |name: &str| claims.get(name).and_then(Value::as_u64);
        let leeway = self.config.leeway_secs;
        let exp = time("exp").ok_or_else(|| bad("the token has no numeric exp".into()))?;
        if now > exp.saturating_add(leeway) {
            return Err(bad(format!("the token expired at {exp} (now {now})")));
        }
        if let Some(nbf) = time("nbf")
            && now.saturating_add(leeway) < nbf
        {
            return Err(bad(format!("the token is valid from {nbf} (now {now})")));
        }
        if let Some(iat) = time("iat")
            && now.saturating_add(leeway) < iat
        {
            return Err(bad(format!(
                "the token was issued at {iat}, in the future (now {now})"
            )));
        }
        Ok(claims)
    }

    /// The key `kid` from the configured JWKS, fetching it when there is none yet, or
    /// again for an unknown `kid` at most once per refresh interval.
    async fn key(&self, kid: &str) -> Result<DecodingKey, Failure> {
        let mut keys = self.keys.lock().await;
        if let Some(found) = keys.set.as_ref().and_then(|s| s.find(kid).cloned()) {
            return decoding_key(&found);
        }
        // The first fetch is free; a refresh for an unknown kid waits out the interval
        // since the last one, so a token stream of made-up kids cannot hammer the JWKS.
        let may_fetch = keys.set.is_none()
            || keys
                .refreshed
                .is_none_or(|t| t.elapsed() >= self.config.jwks_refresh_interval);
        if !may_fetch {
            return Err(failure(
                VerifyErrorCode::TokenInvalid,
                format!(
                    "no key {kid:?} in the JWKS at {} (fetched again at most every {:?})",
                    self.config.jwks_url, self.config.jwks_refresh_interval
                ),
            ));
        }
        if keys.set.is_some() {
            keys.refreshed = Some(Instant::now());
        }
        let set = self.fetch_jwks().await?;
        keys.set = Some(Arc::new(set));
        match keys.set.as_ref().and_then(|s| s.find(kid).cloned()) {
            Some(found) => decoding_key(&found),
            None => Err(failure(
                VerifyErrorCode::TokenInvalid,
                format!("no key {kid:?} in the JWKS at {}", self.config.jwks_url),
            )),
        }
    }

    async fn fetch_jwks(&self) -> Result<JwkSet, Failure> {
        let url = &self.config.jwks_url;
        let unavailable = |m: String| {
            failure(
                VerifyErrorCode::ServiceUnavailable,
                format!("JWKS {url}: {m}"),
            )
        };
        self.stats
            .jwks_fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| unavailable(transport_error(&e)))?;
        if !resp.status().is_success() {
            return Err(unavailable(format!("HTTP {}", resp.status().as_u16())));
        }
        let text = read_bounded(resp).await.map_err(unavailable)?;
        let set: JwkSet =
            serde_json::from_str(&text).map_err(|e| unavailable(format!("not a JWK set: {e}")))?;
        if set.keys.len() > MAX_KEYS {
            return Err(unavailable(format!(
                "{} keys, at most {MAX_KEYS}",
                set.keys.len()
            )));
        }
        Ok(set)
    }
}

fn decoding_key(jwk: &jsonwebtoken::jwk::Jwk) -> Result<DecodingKey, Failure> {
    DecodingKey::from_jwk(jwk).map_err(|e| {
        failure(
            VerifyErrorCode::TokenInvalid,
            format!("the JWKS key cannot be used: {e}"),
        )
    })
}

impl QuoteBackend for ItaBackend {
    fn name(&self) -> &str {
        "ita"
    }

    fn appraise<'a>(&'a self, quote: &'a Quote, now: u64) -> BoxFuture<'a, QuoteFacts> {
        Box::pin(async move {
            match self.appraise_quote(quote, now).await {
                Ok(facts) => facts,
                Err(f) => QuoteFacts::new("ita", self.root()).failed(f.code, f.message),
            }
        })
    }
}

/// `{"token": "…"}`.
fn token_from_body(text: &str) -> Result<String, Failure> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        failure(
            VerifyErrorCode::ServiceUnavailable,
            format!("Intel Trust Authority answered with something other than JSON: {e}"),
        )
    })?;
    v.get("token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            failure(
                VerifyErrorCode::ServiceUnavailable,
                "Intel Trust Authority answered without a token",
            )
        })
}

/// The facts a verified token gives, after checking it describes `quote`.
fn facts_from_claims(
    claims: &Value,
    quote: &Quote,
    token: &str,
    root: TrustRootKind,
    required_policies: &[String],
) -> Result<QuoteFacts, Failure> {
    let bad = |m: String| failure(VerifyErrorCode::TokenInvalid, m);
    // v2 tokens nest the TDX claims under `tdx`; older ones are flat.
    let tdx = claims
        .get("tdx")
        .filter(|v| v.is_object())
        .unwrap_or(claims);
    let text = |name: &str| tdx.get(name).and_then(Value::as_str);
    let td = quote
        .td_report()
        .ok_or_else(|| bad("the quote sent is not a TDX quote".into()))?;
    let expected = [
        ("tdx_mrtd", hex::encode(td.mrtd)),
        ("tdx_rtmr0", hex::encode(td.rtmr[0])),
        ("tdx_rtmr1", hex::encode(td.rtmr[1])),
        ("tdx_rtmr2", hex::encode(td.rtmr[2])),
        ("tdx_rtmr3", hex::encode(td.rtmr[3])),
        ("tdx_report_data", hex::encode(quote.report_data())),
    ];
    for (name, want) in &expected {
        let got = text(name)
            .and_then(normalize)
            .ok_or_else(|| bad(format!("the token has no {name}")))?;
        if &got != want {
            return Err(bad(format!(
                "the token's {name} {got} is not the quote's {want}: it describes another quote"
            )));
        }
    }
    if let Some(debug) = tdx.get("tdx_is_debuggable").and_then(Value::as_bool)
        && debug != td.debug()
    {
        return Err(bad(format!(
            "the token says tdx_is_debuggable = {debug}, the quote says {}",
            td.debug()
        )));
    }
    let status = text("attester_tcb_status")
        .or_else(|| claims.get("attester_tcb_status").and_then(Value::as_str))
        .map(tcb_status)
        .ok_or_else(|| bad("the token has no attester_tcb_status".into()))?;
    let advisories = tdx
        .get("attester_advisory_ids")
        .or_else(|| claims.get("attester_advisory_ids"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let time = |name: &str| claims.get(name).and_then(Value::as_u64);
    let exp = time("exp").unwrap_or(0);
    let from = time("nbf").or_else(|| time("iat")).unwrap_or(0);
    // Claims v2 tokens keep at the top, and some keep inside `tdx` too: read both.
    let either = |name: &str| tdx.get(name).or_else(|| claims.get(name));
    let strings = |name: &str| -> Vec<String> {
        either(name)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .take(64)
                    .collect()
            })
            .unwrap_or_default()
    };
    // `policy_ids_matched` / `_unmatched` list `{id, version[, hash]}`; either may be
    // absent or null. A policy the operator asked for and the token does not list as
    // matched is unmatched, whatever else the token says.
    let policy_ids = |name: &str| -> Vec<String> {
        claims
            .get(name)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.get("id").and_then(Value::as_str))
                    .map(str::to_ascii_lowercase)
                    .take(64)
                    .collect()
            })
            .unwrap_or_default()
    };
    let matched = policy_ids("policy_ids_matched");
    let mut unmatched = policy_ids("policy_ids_unmatched");
    for id in required_policies {
        let id = id.to_ascii_lowercase();
        if !matched.contains(&id) && !unmatched.contains(&id) {
            unmatched.push(id);
        }
    }
    let ita = super::ItaFacts {
        issuer: claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        ver: either("ver").and_then(Value::as_str).map(str::to_string),
        jti: claims
            .get("jti")
            .and_then(Value::as_str)
            .map(str::to_string),
        attester_tcb_date: either("attester_tcb_date")
            .and_then(Value::as_str)
            .map(str::to_string),
        verifier_instance_ids: strings("verifier_instance_ids"),
        policy_ids_required: required_policies.to_vec(),
        policy_ids_matched: matched,
        policy_ids_unmatched: unmatched,
    };
    let mut facts = QuoteFacts::new("ita", root);
    facts.verified = true;
    facts.ita = Some(ita);
    facts.tcb_status = Some(status.to_string());
    facts.advisory_ids = advisories;
    facts.collateral = Some(CollateralWindow {
        not_before: from,
        not_after: exp,
    });
    facts.token_sha256 = Some(hex::encode(Sha256::digest(token.as_bytes())));
    Ok(facts)
}

/// An ITA policy id: a UUID, `8-4-4-4-12` hex digits.
pub fn is_policy_id(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// ITA's TCB status in the names DCAP (and so the policies) use. Intel's current tokens
/// carry those names already; its older documented samples say `OK` and `OUT_OF_DATE`,
/// mapped here with their kin. Anything else is passed on as it is, so a policy sees it.
fn tcb_status(status: &str) -> &str {
    match status {
        "OK" => "UpToDate",
        "OUT_OF_DATE" => "OutOfDate",
        "SW_HARDENING_NEEDED" => "SWHardeningNeeded",
        "CONFIGURATION_NEEDED" => "ConfigurationNeeded",
        "CONFIGURATION_AND_SW_HARDENING_NEEDED" => "ConfigurationAndSWHardeningNeeded",
        "OUT_OF_DATE_CONFIGURATION_NEEDED" => "OutOfDateConfigurationNeeded",
        "REVOKED" => "Revoked",
        other => other,
    }
}

/// A measurement as lowercase hex: given as hex, or as base64.
fn normalize(value: &str) -> Option<String> {
    let v = value.trim().trim_start_matches("0x");
    if v.is_empty() {
        return None;
    }
    if v.len().is_multiple_of(2) && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(v.to_ascii_lowercase());
    }
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .ok()
        .map(hex::encode)
}

/// The body as text, at most [`MAX_BODY`] bytes.
async fn read_bounded(mut resp: reqwest::Response) -> Result<String, String> {
    let body = crate::http::read_bounded(&mut resp, MAX_BODY)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => format!("the answer is larger than {MAX_BODY} bytes"),
            BodyError::Transport(e) => transport_error(&e),
        })?;
    String::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())
}

/// A transport error with its causes, without the URL's query (none is sent) or headers.
fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The causes, not the error's own text: it would repeat the URL.
    match std::error::Error::source(e) {
        Some(cause) => format!("{kind}: {}", error_chain(cause)),
        None => kind.to_string(),
    }
}

/// At most 200 characters of an error body, for a message.
fn excerpt(text: &str) -> String {
    let t: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    if t.is_empty() { "no detail".into() } else { t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_key_never_shows() {
        let key = ApiKey::new("  sekrit-key ").unwrap();
        let cfg = ItaConfig::new(US_API_URL, key);
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
        assert_eq!(cfg.api_key.expose(), "sekrit-key");
        assert_eq!(ApiKey::new("").unwrap_err(), ApiKeyError::Empty);
        assert_eq!(ApiKey::new("a\nb").unwrap_err(), ApiKeyError::NotHeaderSafe);
    }

    #[test]
    fn regions_have_their_own_keys_and_issuer() {
        let key = ApiKey::new("k").unwrap();
        let us = ItaConfig::new(US_API_URL, key.clone());
        assert_eq!(us.jwks_url, "https://portal.trustauthority.intel.com/certs");
        assert_eq!(
            us.issuers,
            [
                "Intel Trust Authority",
                "https://portal.trustauthority.intel.com"
            ]
        );
        let eu = ItaConfig::new(&format!("{EU_API_URL}/"), key);
        assert_eq!(
            eu.jwks_url,
            "https://portal.eu.trustauthority.intel.com/certs"
        );
        assert_eq!(eu.api_url, EU_API_URL);
        assert_eq!(
            eu.issuers,
            [
                "Intel Trust Authority",
                "https://portal.eu.trustauthority.intel.com"
            ]
        );
    }

    #[test]
    fn only_intels_keys_make_the_root_intels() {
        let key = ApiKey::new("k").unwrap();
        let official = ItaBackend::new(ItaConfig::new(EU_API_URL, key.clone())).unwrap();
        assert_eq!(official.root(), TrustRootKind::IntelTrustAuthority);
        let mut cfg = ItaConfig::new(US_API_URL, key);
        cfg.jwks_url = "http://127.0.0.1:9/certs".into();
        assert_eq!(ItaBackend::new(cfg).unwrap().root(), TrustRootKind::Custom);
    }

    #[test]
    fn measurements_read_as_hex_or_base64() {
        assert_eq!(normalize("0xABcd").as_deref(), Some("abcd"));
        assert_eq!(normalize("q80=").as_deref(), Some("abcd"));
        assert_eq!(normalize(""), None);
    }
}

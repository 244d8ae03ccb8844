//! `teesql-verifier serve` configuration: a TOML file, overridden by environment
//! variables, overridden by flags. Every bad setting is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use teesql_proto::settings::{Env, Problems, first};

use super::{DecisionLog, DecisionService, LogTarget, Metrics, ServiceOptions};
use crate::Clock;
use crate::backend::dcap::TrustRoot;
use crate::backend::{BackendConfig, BackendSettings, resolve_backends};
use crate::collateral::{CollateralConfig, INTEL_PCS_URL};
use crate::policy::PolicySet;

/// Every setting, each optional: flags (clap), the environment (`from_env`) and the file
/// (TOML) fill the same shape, then merge.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// gRPC listen address, HOST:PORT or unix:///PATH [default: 127.0.0.1:50051].
    /// Plaintext TCP only on loopback unless --insecure-plaintext. [env: TEESQL_VERIFIER_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key. [env: TEESQL_VERIFIER_TLS_CERT]
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM). [env: TEESQL_VERIFIER_TLS_KEY]
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve gRPC over TLS with an RA-TLS certificate from the dstack guest agent
    /// (GetTlsKey), renewed every --ra-tls-renew-secs; clients trust it by appraising its
    /// quote (policy purpose `verifier`). The decision-signing key is then bound to a quote
    /// too (its JWK carries it). [env: TEESQL_VERIFIER_RA_TLS]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ra_tls: Option<bool>,
    /// The guest agent: a unix socket path or an http URL [default: DSTACK_SIMULATOR_ENDPOINT,
    /// else /var/run/dstack.sock]. [env: TEESQL_VERIFIER_DSTACK_ENDPOINT]
    #[arg(long, value_name = "PATH|URL")]
    pub dstack_endpoint: Option<String>,
    /// How often the RA-TLS certificate is renewed, seconds [default: 3600]. [env: TEESQL_VERIFIER_RA_TLS_RENEW_SECS]
    #[arg(long, value_name = "SECS")]
    pub ra_tls_renew_secs: Option<u64>,
    /// Allow plaintext gRPC on a non-loopback address: whoever is on the path can then
    /// answer "allow" for this verifier. [env: TEESQL_VERIFIER_INSECURE_PLAINTEXT]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_plaintext: Option<bool>,
    /// A file holding the bearer token PolicyAdmin requires; without it PolicyAdmin
    /// answers only over the unix socket or loopback. [env: TEESQL_VERIFIER_ADMIN_TOKEN_FILE]
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve gRPC server reflection [default: true]. [env: TEESQL_VERIFIER_REFLECTION]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub reflection: Option<bool>,
    /// Largest request accepted, KiB [default: 4096]. [env: TEESQL_VERIFIER_MAX_MESSAGE_KIB]
    #[arg(long, value_name = "KIB")]
    pub max_message_kib: Option<u64>,
    /// Requests served at once on one connection [default: 64]. [env: TEESQL_VERIFIER_CONCURRENCY_PER_CONNECTION]
    #[arg(long, value_name = "N")]
    pub concurrency_per_connection: Option<u64>,
    /// Sign every decision (Decision.token, a JWS checkable with /.well-known/jwks.json)
    /// [default: true]. [env: TEESQL_VERIFIER_SIGN_DECISIONS]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub sign_decisions: Option<bool>,
    /// The decision-signing key, P-256 PKCS#8 PEM [default: a key generated at start].
    /// [env: TEESQL_VERIFIER_SIGNING_KEY]
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// The `iss` of decision tokens [default: teesql-verifier]. [env: TEESQL_VERIFIER_TOKEN_ISSUER]
    #[arg(long, value_name = "ISS")]
    pub token_issuer: Option<String>,
    /// HTTP address for /metrics and /healthz [default: off]. [env: TEESQL_VERIFIER_METRICS_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Policy profile directory; repeat to merge profiles [default: policies/teesql]. [env: TEESQL_VERIFIER_POLICY_DIR]
    #[arg(long = "policy-dir", value_name = "DIR", value_delimiter = ',')]
    #[serde(alias = "policy_dir")]
    pub policy_dirs: Option<Vec<PathBuf>>,
    /// Root CA (DER or PEM) to verify quotes against instead of Intel's. [env: TEESQL_VERIFIER_TRUST_ROOT]
    #[arg(long, value_name = "FILE")]
    pub trust_root: Option<PathBuf>,
    /// A development root (teesql-dev's seeded PKI) to verify quotes against; claims say
    /// `tdx.root = "dev"`, which only the development profile accepts. [env: TEESQL_VERIFIER_DEV_TRUST_ROOT]
    #[arg(long, value_name = "FILE")]
    pub dev_trust_root: Option<PathBuf>,
    /// PCCS or Intel PCS for collateral [default: Intel PCS]. [env: TEESQL_PCCS_URL]
    #[arg(long, value_name = "URL")]
    pub pccs_url: Option<String>,
    /// Never fetch collateral over the network. [env: TEESQL_VERIFIER_OFFLINE]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub offline: Option<bool>,
    /// Directory of collateral JSON files, used before the PCCS. [env: TEESQL_VERIFIER_COLLATERAL_DIR]
    #[arg(long, value_name = "DIR")]
    pub collateral_dir: Option<PathBuf>,
    /// One collateral JSON file used for every quote (testing). [env: TEESQL_VERIFIER_COLLATERAL_FILE]
    #[arg(long, value_name = "FILE")]
    pub collateral_file: Option<PathBuf>,
    /// Time limit to fetch one collateral set from the PCCS, seconds [default: 10]. [env: TEESQL_VERIFIER_FETCH_TIMEOUT_SECS]
    #[arg(long, value_name = "SECS")]
    pub fetch_timeout_secs: Option<u64>,
    /// Decision log: "stdout", "off", or a file to append to [default: stdout]. [env: TEESQL_VERIFIER_DECISION_LOG]
    #[arg(long, value_name = "TARGET")]
    pub decision_log: Option<String>,
    /// Memory for cached appraisals of verified quotes, MiB; evidence without a verified
    /// quote gets a sixteenth of it, at least 1 MiB [default: 64]. [env: TEESQL_VERIFIER_CACHE_MAX_MIB]
    #[arg(long, value_name = "MIB")]
    pub cache_max_mib: Option<u64>,
    /// Replaced by cache_max_mib (the cache is bounded in bytes); kept to say so.
    #[arg(skip)]
    pub cache_capacity: Option<u64>,
    /// Memory for the platform cache, KiB; 0 turns it off. A fresh quote from a platform
    /// verified before (same PCK chain, QE report, TDX module, collateral) then costs one
    /// signature check instead of a full DCAP verification [default: 1024]. [env: TEESQL_VERIFIER_PLATFORM_CACHE_KIB]
    #[arg(long, value_name = "KIB")]
    pub platform_cache_kib: Option<u64>,
    /// Longest an appraisal stays cached, seconds (never past its collateral) [default: 3600]. [env: TEESQL_VERIFIER_CACHE_MAX_TTL_SECS]
    #[arg(long, value_name = "SECS")]
    pub cache_max_ttl_secs: Option<u64>,
    /// Time limit of one policy evaluation, milliseconds [default: 250]. [env: TEESQL_VERIFIER_EVAL_TIMEOUT_MS]
    #[arg(long, value_name = "MS")]
    pub eval_timeout_ms: Option<u64>,
    /// Time limit of one request, seconds [default: 30]. [env: TEESQL_VERIFIER_REQUEST_TIMEOUT_SECS]
    #[arg(long, value_name = "SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Quote backend: dcap, ita, simulator (development only, alone), or a chain tried in
    /// order when one cannot decide, e.g. dcap,ita [default: dcap]. [env: TEESQL_VERIFIER_BACKEND]
    #[arg(long, value_name = "NAMES")]
    pub backend: Option<String>,
    /// Intel Trust Authority API base [default: https://api.trustauthority.intel.com;
    /// the EU region is https://api.eu.trustauthority.intel.com]. [env: TEESQL_VERIFIER_ITA_URL]
    #[arg(long, value_name = "URL")]
    pub ita_url: Option<String>,
    /// Where ITA's token-signing keys are read, whatever a token names [default: the
    /// region's https://portal…trustauthority.intel.com/certs]. [env: TEESQL_VERIFIER_ITA_JWKS_URL]
    #[arg(long, value_name = "URL")]
    pub ita_jwks_url: Option<String>,
    /// The issuers (`iss`, comma-separated) ITA tokens may name [default: "Intel Trust
    /// Authority", as Intel's documented tokens say, and the region's portal URL].
    /// [env: TEESQL_VERIFIER_ITA_ISSUER]
    #[arg(long, value_name = "ISS")]
    pub ita_issuer: Option<String>,
    /// A file holding the ITA API key [default: env INTEL_TRUST_AUTHORITY_API_KEY, the
    /// key itself, as Intel's clients read it]. [env: TEESQL_VERIFIER_ITA_API_KEY_FILE]
    #[arg(long, value_name = "FILE")]
    pub ita_api_key_file: Option<PathBuf>,
    /// ITA policy ids (UUIDs, comma-separated, at most 10) to appraise quotes against;
    /// a token that does not list each as matched is refused (`ita_policy_unmatched`).
    /// [env: TEESQL_VERIFIER_ITA_POLICY_IDS]
    #[arg(long, value_name = "UUIDS")]
    pub ita_policy_ids: Option<String>,
    /// Ask ITA to issue no token unless every policy matches (ITA's PolicyMustMatch).
    /// [env: TEESQL_VERIFIER_ITA_POLICY_MUST_MATCH]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ita_policy_must_match: Option<bool>,
    /// Where the verifier keeps what must survive a restart: the highest accepted epoch of
    /// each pinned signer's leader manifests (manifest-epochs.json), so a restart does not
    /// forget rollback protection [default: none, kept in memory]. [env: TEESQL_VERIFIER_STATE_DIR]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Appraise as of this fixed unix time instead of the clock (recorded evidence, tests). [env: TEESQL_VERIFIER_NOW]
    #[arg(long, value_name = "UNIX")]
    pub now: Option<u64>,
}

/// `hi` over `lo`, field by field.
macro_rules! overlay {
    ($hi:expr, $lo:expr, $($f:ident),*) => {
        ServeSettings { $($f: first([$hi.$f, $lo.$f]),)* }
    };
}

/// The defaults, named.
pub mod defaults {
    /// gRPC listen address (`--listen`): loopback only, plaintext allowed there.
    pub const LISTEN: &str = "127.0.0.1:50051";
    /// Policy profile directory (`--policy-dir`), relative to the working directory.
    pub const POLICY_DIR: &str = "policies/teesql";
    /// Seconds to fetch one collateral set from the PCCS (`--fetch-timeout-secs`).
    pub const FETCH_TIMEOUT_SECS: u64 = 10;
    /// MiB for cached appraisals of verified quotes (`--cache-max-mib`).
    pub const CACHE_MAX_MIB: u64 = 64;
    /// Longest an appraisal stays cached, seconds (`--cache-max-ttl-secs`).
    pub const CACHE_MAX_TTL_SECS: u64 = 3600;
    /// KiB for the platform cache (`--platform-cache-kib`; 0 turns it off).
    pub const PLATFORM_CACHE_KIB: u64 = 1024;
    /// Milliseconds one policy evaluation may take (`--eval-timeout-ms`).
    pub const EVAL_TIMEOUT_MS: u64 = 250;
    /// Seconds one gRPC request may take (`--request-timeout-secs`).
    pub const REQUEST_TIMEOUT_SECS: u64 = 30;
    /// Where the decision log goes (`--decision-log`): standard output.
    pub const DECISION_LOG: &str = "stdout";
    /// Largest request accepted, KiB (`--max-message-kib`): 4 MiB.
    pub const MAX_MESSAGE_KIB: u64 = 4096;
    /// Requests served at once on one connection (`--concurrency-per-connection`).
    pub const CONCURRENCY_PER_CONNECTION: u64 = 64;
    /// Seconds between RA-TLS certificate renewals (`--ra-tls-renew-secs`).
    pub const RA_TLS_RENEW_SECS: u64 = 3600;
    /// The smallest `--ra-tls-renew-secs` accepted; less is a configuration error.
    pub const MIN_RA_TLS_RENEW_SECS: u64 = 10;
}

/// The verifier's own RA-TLS identity, from the dstack guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaTlsConfig {
    /// `None`: dstack-sdk's discovery (`DSTACK_SIMULATOR_ENDPOINT`, then the CVM socket).
    pub endpoint: Option<String>,
    /// How often a fresh certificate is fetched (`ra_tls_renew_secs`, default 3600 s, at
    /// least 10 s); retried within a minute after a failure.
    pub renew_every: Duration,
}

impl ServeSettings {
    /// `self` over `lower` (flags over environment, environment over file).
    pub fn over(self, lower: ServeSettings) -> ServeSettings {
        overlay!(
            self,
            lower,
            listen,
            tls_cert,
            tls_key,
            ra_tls,
            dstack_endpoint,
            ra_tls_renew_secs,
            insecure_plaintext,
            admin_token_file,
            reflection,
            max_message_kib,
            concurrency_per_connection,
            sign_decisions,
            signing_key,
            token_issuer,
            metrics_listen,
            policy_dirs,
            trust_root,
            dev_trust_root,
            pccs_url,
            offline,
            collateral_dir,
            collateral_file,
            fetch_timeout_secs,
            decision_log,
            cache_max_mib,
            cache_capacity,
            platform_cache_kib,
            cache_max_ttl_secs,
            eval_timeout_ms,
            request_timeout_secs,
            backend,
            ita_url,
            ita_jwks_url,
            ita_issuer,
            ita_api_key_file,
            ita_policy_ids,
            ita_policy_must_match,
            state_dir,
            now
        )
    }

    /// The settings the environment gives (the variables `--help` names). A value that
    /// does not parse is a problem naming its variable, not a silent default.
    pub fn from_env(env: &dyn Env, p: &mut Problems) -> ServeSettings {
        let path = |name: &str| env.var(name).map(PathBuf::from);
        // A number from the variable, or from the name it had until 2026-12 (a notice).
        let renamed = |p: &mut Problems, name: &str, was: &str| -> Option<u64> {
            let text = p.var_renamed(env, name, &[was])?;
            p.parse(name, &text)
        };
        ServeSettings {
            listen: env.var("TEESQL_VERIFIER_LISTEN"),
            metrics_listen: env.var("TEESQL_VERIFIER_METRICS_LISTEN"),
            policy_dirs: env
                .var("TEESQL_VERIFIER_POLICY_DIR")
                .map(|v| v.split(',').map(PathBuf::from).collect()),
            tls_cert: path("TEESQL_VERIFIER_TLS_CERT"),
            tls_key: path("TEESQL_VERIFIER_TLS_KEY"),
            ra_tls: p.env_switch(env, "TEESQL_VERIFIER_RA_TLS"),
            dstack_endpoint: env.var("TEESQL_VERIFIER_DSTACK_ENDPOINT"),
            ra_tls_renew_secs: p.env(env, "TEESQL_VERIFIER_RA_TLS_RENEW_SECS"),
            insecure_plaintext: p.env_switch(env, "TEESQL_VERIFIER_INSECURE_PLAINTEXT"),
            admin_token_file: path("TEESQL_VERIFIER_ADMIN_TOKEN_FILE"),
            reflection: p.env_switch(env, "TEESQL_VERIFIER_REFLECTION"),
            max_message_kib: p.env(env, "TEESQL_VERIFIER_MAX_MESSAGE_KIB"),
            concurrency_per_connection: p.env(env, "TEESQL_VERIFIER_CONCURRENCY_PER_CONNECTION"),
            sign_decisions: p.env_switch(env, "TEESQL_VERIFIER_SIGN_DECISIONS"),
            signing_key: path("TEESQL_VERIFIER_SIGNING_KEY"),
            token_issuer: env.var("TEESQL_VERIFIER_TOKEN_ISSUER"),
            trust_root: path("TEESQL_VERIFIER_TRUST_ROOT"),
            dev_trust_root: path("TEESQL_VERIFIER_DEV_TRUST_ROOT"),
            pccs_url: p.var_renamed(env, "TEESQL_PCCS_URL", &["PCCS_URL"]),
            offline: p.env_switch(env, "TEESQL_VERIFIER_OFFLINE"),
            collateral_dir: path("TEESQL_VERIFIER_COLLATERAL_DIR"),
            collateral_file: p
                .var_renamed(
                    env,
                    "TEESQL_VERIFIER_COLLATERAL_FILE",
                    &["TEESQL_VERIFIER_COLLATERAL"],
                )
                .map(PathBuf::from),
            fetch_timeout_secs: renamed(
                p,
                "TEESQL_VERIFIER_FETCH_TIMEOUT_SECS",
                "TEESQL_VERIFIER_FETCH_TIMEOUT",
            ),
            decision_log: env.var("TEESQL_VERIFIER_DECISION_LOG"),
            cache_max_mib: p.env(env, "TEESQL_VERIFIER_CACHE_MAX_MIB"),
            cache_capacity: None,
            platform_cache_kib: p.env(env, "TEESQL_VERIFIER_PLATFORM_CACHE_KIB"),
            cache_max_ttl_secs: renamed(
                p,
                "TEESQL_VERIFIER_CACHE_MAX_TTL_SECS",
                "TEESQL_VERIFIER_CACHE_TTL",
            ),
            eval_timeout_ms: p.env(env, "TEESQL_VERIFIER_EVAL_TIMEOUT_MS"),
            request_timeout_secs: renamed(
                p,
                "TEESQL_VERIFIER_REQUEST_TIMEOUT_SECS",
                "TEESQL_VERIFIER_REQUEST_TIMEOUT",
            ),
            backend: env.var("TEESQL_VERIFIER_BACKEND"),
            ita_url: env.var("TEESQL_VERIFIER_ITA_URL"),
            ita_jwks_url: env.var("TEESQL_VERIFIER_ITA_JWKS_URL"),
            ita_issuer: env.var("TEESQL_VERIFIER_ITA_ISSUER"),
            ita_api_key_file: path("TEESQL_VERIFIER_ITA_API_KEY_FILE"),
            ita_policy_ids: env.var("TEESQL_VERIFIER_ITA_POLICY_IDS"),
            ita_policy_must_match: p.env_switch(env, "TEESQL_VERIFIER_ITA_POLICY_MUST_MATCH"),
            state_dir: path("TEESQL_VERIFIER_STATE_DIR"),
            now: p.env(env, "TEESQL_VERIFIER_NOW"),
        }
    }

    /// Read a TOML configuration file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Where gRPC is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `HOST:PORT` as an IP socket address (no names); plaintext only on loopback unless
    /// `insecure_plaintext` or TLS is set.
    Tcp(SocketAddr),
    /// `unix:///run/teesql/verifier.sock`
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err("expected unix:///ABSOLUTE/PATH".into());
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(Self::Tcp)
            .map_err(|e| format!("{e}; expected HOST:PORT or unix:///PATH"))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// Who may call PolicyAdmin.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminAccess {
    /// Callers over the unix socket or loopback.
    LocalOnly,
    /// Callers presenting `authorization: Bearer <token>`; the SHA-256 of the token is kept.
    Token([u8; 32]),
}

impl AdminAccess {
    /// Access by bearer `token`; only its SHA-256 is kept (callers' tokens are trimmed
    /// before hashing).
    pub fn token(token: &str) -> Self {
        use sha2::Digest;
        Self::Token(sha2::Sha256::digest(token.as_bytes()).into())
    }
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LocalOnly => f.write_str("LocalOnly"),
            Self::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// Settings checked and resolved, with defaults applied.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where gRPC is served (`listen`, default `127.0.0.1:50051`).
    pub listen: Listen,
    /// TLS for gRPC (an operator certificate).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS for gRPC with an RA-TLS certificate from the guest agent (set up by
    /// `server::Verifier::attest`).
    pub ra_tls: Option<RaTlsConfig>,
    /// Who may call PolicyAdmin: the token in `admin_token_file`, else local callers only.
    pub admin: AdminAccess,
    /// Serve gRPC server reflection (`reflection`, default true).
    pub reflection: bool,
    /// Largest request accepted, bytes (`max_message_kib` × 1024; default 4 MiB).
    pub max_message_bytes: usize,
    /// Requests served at once on one connection (`concurrency_per_connection`, default 64).
    pub concurrency_per_connection: usize,
    /// Signs decisions, unless turned off.
    pub signer: Option<Arc<super::token::DecisionSigner>>,
    /// Where `/metrics`, `/healthz` and the JWKS are served (`metrics_listen`); `None`
    /// when unset, empty or `off`.
    pub metrics_listen: Option<SocketAddr>,
    /// Policy profile directories, merged in order (`policy_dir`, default `policies/teesql`).
    pub policy_dirs: Vec<PathBuf>,
    /// Quote backends, trust root, collateral sources and platform cache (`backend`,
    /// `trust_root`, `pccs_url`, `offline`, `collateral_*`, `platform_cache_kib`, `ita_*`).
    pub backend: BackendConfig,
    /// Where decisions are logged (`decision_log`: stdout, off or a file; default stdout).
    pub decision_log: LogTarget,
    /// Appraisal cache size and lifetime, clock and manifest epochs file
    /// (`cache_max_mib`, `cache_max_ttl_secs`, `now`, `state_dir`).
    pub options: ServiceOptions,
    /// Time limit of one policy evaluation (`eval_timeout_ms`, default 250 ms).
    pub eval_limit: Duration,
    /// Time limit of one gRPC request (`request_timeout_secs`, default 30 s).
    pub request_timeout: Duration,
}

impl ServeConfig {
    /// Flags over the environment over the file, then [`Self::resolve`]: every problem,
    /// in any layer, is returned together.
    pub fn load(
        flags: ServeSettings,
        env: &dyn Env,
        file: ServeSettings,
    ) -> Result<Self, Vec<String>> {
        let mut p = Problems::new();
        let from_env = ServeSettings::from_env(env, &mut p);
        Self::check(flags.over(from_env).over(file), env, p)
    }

    /// Check every setting (no environment); all problems are returned together.
    pub fn resolve(s: ServeSettings) -> Result<Self, Vec<String>> {
        Self::check(s, &teesql_proto::settings::NoEnv, Problems::new())
    }

    fn check(s: ServeSettings, env: &dyn Env, mut p: Problems) -> Result<Self, Vec<String>> {
        let (chain, ita) = resolve_backends(
            &BackendSettings {
                backend: s.backend.clone(),
                ita_url: s.ita_url.clone(),
                ita_jwks_url: s.ita_jwks_url.clone(),
                ita_issuer: s.ita_issuer.clone(),
                ita_api_key_file: s.ita_api_key_file.clone(),
                ita_policy_ids: s.ita_policy_ids.clone(),
                ita_policy_must_match: s.ita_policy_must_match,
            },
            env,
            &mut p,
        );
        let endpoint = Endpoint::check(&s, &mut p);
        let policy_dirs = s
            .policy_dirs
            .clone()
            .unwrap_or_else(|| vec![PathBuf::from(defaults::POLICY_DIR)]);
        for d in &policy_dirs {
            if !d.is_dir() {
                p.push(format!("policy_dir {}: not a directory", d.display()));
            }
        }
        let trust_root = TrustRoot::choose(s.trust_root.as_deref(), s.dev_trust_root.as_deref())
            .map_err(|e| p.push(e))
            .ok();
        let clock = s.now.map(Clock::Fixed).unwrap_or(Clock::System);
        let collateral = collateral(&s, clock, &mut p);
        let limits = Limits::check(&s, &mut p);
        let decision_log = decision_log(&s, &mut p);
        let signer = signer(&s, &mut p);
        let manifest_epochs_file = manifest_epochs_file(&s, &mut p);
        p.finish(|| {
            let Endpoint {
                listen,
                tls,
                ra_tls,
                admin,
                metrics_listen,
            } = endpoint;
            Some(Self {
                listen: listen?,
                tls,
                ra_tls,
                admin: admin?,
                reflection: s.reflection.unwrap_or(true),
                max_message_bytes: usize::try_from(limits.max_message_kib.saturating_mul(1024))
                    .unwrap_or(usize::MAX),
                concurrency_per_connection: usize::try_from(limits.concurrency)
                    .unwrap_or(usize::MAX),
                signer,
                metrics_listen,
                policy_dirs,
                backend: BackendConfig {
                    chain: chain?,
                    ita,
                    trust_root: trust_root?,
                    collateral,
                    platform_cache_bytes: s
                        .platform_cache_kib
                        .unwrap_or(defaults::PLATFORM_CACHE_KIB)
                        .saturating_mul(1024),
                },
                decision_log: decision_log?,
                options: ServiceOptions {
                    cache_max_bytes: limits.cache_mib.saturating_mul(1 << 20),
                    cache_max_ttl: Duration::from_secs(limits.cache_ttl),
                    clock,
                    manifest_epochs_file,
                },
                eval_limit: Duration::from_millis(limits.eval_ms),
                request_timeout: Duration::from_secs(limits.request_timeout),
            })
        })
    }

    /// Build the service: load policies, the backend and its collateral sources, the
    /// decision log. Needs a tokio runtime (the decision log writer).
    pub fn build(&self) -> Result<Arc<DecisionService>, Vec<String>> {
        let policies =
            PolicySet::load(&self.policy_dirs, self.eval_limit).map_err(|e| vec![e.to_string()])?;
        let backend = self.backend.build().map_err(|e| vec![e])?;
        let metrics = Arc::new(
            Metrics::new()
                .with_collateral(backend.collateral.clone())
                .with_platforms(backend.platforms.clone()),
        );
        let log = DecisionLog::start(&self.decision_log)
            .map_err(|e| vec![format!("decision_log: {e}")])?;
        let service =
            DecisionService::new(backend.appraiser, policies, &self.options, log, metrics);
        Ok(Arc::new(match &self.signer {
            Some(signer) => service.with_signer(signer.clone()),
            None => service,
        }))
    }
}

/// Read a file that holds a credential, refusing it (as ssh refuses a private key) when
/// its group or others may read or write it: the error names the mode.
fn private_file(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "permissions {:04o} are too open: the file holds a credential, so group and others may have no access (chmod 600)",
            mode & 0o7777
        ));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// Where and how gRPC is served: the listener, its TLS, who may administer policies and
/// the metrics listener.
struct Endpoint {
    listen: Option<Listen>,
    tls: Option<Arc<rustls::ServerConfig>>,
    ra_tls: Option<RaTlsConfig>,
    admin: Option<AdminAccess>,
    metrics_listen: Option<SocketAddr>,
}

impl Endpoint {
    fn check(s: &ServeSettings, p: &mut Problems) -> Self {
        let listen: Option<Listen> =
            p.parse("listen", s.listen.as_deref().unwrap_or(defaults::LISTEN));
        let tls = match (&s.tls_cert, &s.tls_key) {
            (Some(cert), Some(key)) => teesql_proto::transport::server_config(cert, key)
                .map(Arc::new)
                .map_err(|e| p.push(e))
                .ok(),
            (None, None) => None,
            _ => {
                p.push("tls_cert and tls_key: give both, or neither");
                None
            }
        };
        let ra_tls = s.ra_tls.unwrap_or(false).then(|| RaTlsConfig {
            endpoint: s.dstack_endpoint.clone(),
            renew_every: Duration::from_secs(p.at_least(
                "ra_tls_renew_secs",
                s.ra_tls_renew_secs.unwrap_or(defaults::RA_TLS_RENEW_SECS),
                defaults::MIN_RA_TLS_RENEW_SECS,
            )),
        });
        if ra_tls.is_some() && (s.tls_cert.is_some() || s.tls_key.is_some()) {
            p.push("ra_tls and tls_cert/tls_key: serve one certificate, the guest agent's or the operator's");
        }
        if let Some(l) = &listen {
            match l {
                Listen::Unix(_) if tls.is_some() || ra_tls.is_some() => {
                    p.push("tls_cert / ra_tls: TLS is for TCP listeners; a unix socket is local already");
                }
                Listen::Tcp(addr)
                    if tls.is_none()
                        && ra_tls.is_none()
                        && !addr.ip().is_loopback()
                        && !s.insecure_plaintext.unwrap_or(false) =>
                {
                    p.push(format!(
                        "listen {addr}: plaintext gRPC on a non-loopback address lets anyone on the path answer for this verifier; give tls_cert and tls_key, or ra_tls, listen on a unix socket, or set insecure_plaintext"
                    ));
                }
                _ => {}
            }
        }
        let admin = match &s.admin_token_file {
            Some(path) => match private_file(path) {
                Ok(t) if t.trim().len() >= 16 => Some(AdminAccess::token(t.trim())),
                Ok(_) => {
                    p.push(format!(
                        "admin_token_file {}: the token must be at least 16 characters",
                        path.display()
                    ));
                    None
                }
                Err(e) => {
                    p.push(format!("admin_token_file {}: {e}", path.display()));
                    None
                }
            },
            None => Some(AdminAccess::LocalOnly),
        };
        let metrics_listen = s
            .metrics_listen
            .as_deref()
            .filter(|v| !v.is_empty() && *v != "off")
            .and_then(|v| p.socket_addr("metrics_listen", v));
        Self {
            listen,
            tls,
            ra_tls,
            admin,
            metrics_listen,
        }
    }
}

/// Where collateral comes from: the offline file and directory, then the PCCS.
fn collateral(s: &ServeSettings, clock: Clock, p: &mut Problems) -> CollateralConfig {
    let pccs_url = s
        .pccs_url
        .clone()
        .unwrap_or_else(|| INTEL_PCS_URL.to_string());
    if !(pccs_url.starts_with("http://") || pccs_url.starts_with("https://")) {
        p.push(format!("pccs_url {pccs_url:?}: must be an http(s) URL"));
    }
    for (name, path) in [
        ("collateral_dir", &s.collateral_dir),
        ("collateral_file", &s.collateral_file),
    ] {
        if let Some(path) = path
            && !path.exists()
        {
            p.push(format!("{name} {}: does not exist", path.display()));
        }
    }
    let fetch_timeout = p.at_least(
        "fetch_timeout_secs",
        s.fetch_timeout_secs.unwrap_or(defaults::FETCH_TIMEOUT_SECS),
        1,
    );
    CollateralConfig {
        file: s.collateral_file.clone(),
        dir: s.collateral_dir.clone(),
        pccs_url: (!s.offline.unwrap_or(false)).then_some(pccs_url),
        fetch_timeout: Duration::from_secs(fetch_timeout),
        clock,
        ..CollateralConfig::default()
    }
}

/// What one caller can make the service spend: memory for appraisals, time per
/// evaluation and request, message size and concurrency.
struct Limits {
    cache_mib: u64,
    cache_ttl: u64,
    eval_ms: u64,
    request_timeout: u64,
    max_message_kib: u64,
    concurrency: u64,
}

impl Limits {
    fn check(s: &ServeSettings, p: &mut Problems) -> Self {
        let mut positive =
            |name: &str, v: Option<u64>, default: u64| p.at_least(name, v.unwrap_or(default), 1);
        let cache_mib = positive("cache_max_mib", s.cache_max_mib, defaults::CACHE_MAX_MIB);
        let cache_ttl = positive(
            "cache_max_ttl_secs",
            s.cache_max_ttl_secs,
            defaults::CACHE_MAX_TTL_SECS,
        );
        let eval_ms = positive(
            "eval_timeout_ms",
            s.eval_timeout_ms,
            defaults::EVAL_TIMEOUT_MS,
        );
        let request_timeout = positive(
            "request_timeout_secs",
            s.request_timeout_secs,
            defaults::REQUEST_TIMEOUT_SECS,
        );
        let max_message_kib = positive(
            "max_message_kib",
            s.max_message_kib,
            defaults::MAX_MESSAGE_KIB,
        );
        let concurrency = positive(
            "concurrency_per_connection",
            s.concurrency_per_connection,
            defaults::CONCURRENCY_PER_CONNECTION,
        );
        if s.cache_capacity.is_some() {
            p.report(
                "cache_capacity",
                "replaced by cache_max_mib (the appraisal cache is bounded in bytes)",
            );
        }
        Self {
            cache_mib,
            cache_ttl,
            eval_ms,
            request_timeout,
            max_message_kib,
            concurrency,
        }
    }
}

/// Where decisions are logged; a file's directory must exist.
fn decision_log(s: &ServeSettings, p: &mut Problems) -> Option<LogTarget> {
    let decision_log: Option<LogTarget> = p.parse(
        "decision_log",
        s.decision_log.as_deref().unwrap_or(defaults::DECISION_LOG),
    );
    if let Some(LogTarget::File(path)) = &decision_log
        && let Some(parent) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !parent.is_dir()
    {
        p.push(format!(
            "decision_log {}: directory {} does not exist",
            path.display(),
            parent.display()
        ));
    }
    decision_log
}

/// The key that signs decisions, unless signing is off.
fn signer(s: &ServeSettings, p: &mut Problems) -> Option<Arc<super::token::DecisionSigner>> {
    let issuer = s
        .token_issuer
        .clone()
        .unwrap_or_else(|| super::token::DEFAULT_ISSUER.to_string());
    if s.sign_decisions.unwrap_or(true) {
        let made = match &s.signing_key {
            Some(path) => super::token::DecisionSigner::from_pem_file(path, &issuer),
            None => super::token::DecisionSigner::generate(&issuer),
        };
        made.map(Arc::new).map_err(|e| p.push(e)).ok()
    } else {
        None
    }
}

/// The manifest epochs file in the state directory, when there is one.
fn manifest_epochs_file(s: &ServeSettings, p: &mut Problems) -> Option<PathBuf> {
    // The state directory must exist and its epoch file, if any, be readable: a
    // corrupt one is a start-up error, not silently forgotten protection.
    s.state_dir.as_ref().and_then(|dir| {
            if !dir.is_dir() {
                p.push(format!(
                    "state_dir {}: not a directory (create it; the verifier keeps manifest epochs there)",
                    dir.display()
                ));
                return None;
            }
            let file = dir.join("manifest-epochs.json");
            super::epochs::Epochs::open(Some(file.clone()))
                .map_err(|e| p.push(format!("state_dir: {e}")))
                .ok()
                .map(|_| file)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> ServeSettings {
        ServeSettings {
            policy_dirs: Some(vec![PathBuf::from(env!("CARGO_MANIFEST_DIR"))]),
            ..ServeSettings::default()
        }
    }

    #[test]
    fn flags_over_environment_over_file() {
        let file = ServeSettings {
            listen: Some("127.0.0.1:1".into()),
            cache_max_mib: Some(8),
            eval_timeout_ms: Some(100),
            ..ServeSettings::default()
        };
        let env = [
            ("TEESQL_VERIFIER_LISTEN", "127.0.0.1:2"),
            ("TEESQL_VERIFIER_CACHE_MAX_MIB", "16"),
            ("TEESQL_VERIFIER_OFFLINE", "yes"),
        ];
        let c = ServeConfig::load(
            ServeSettings {
                listen: Some("127.0.0.1:3".into()),
                ..flags()
            },
            &env,
            file,
        )
        .unwrap();
        assert_eq!(c.listen, Listen::Tcp("127.0.0.1:3".parse().unwrap()));
        assert_eq!(c.options.cache_max_bytes, 16 << 20);
        assert_eq!(c.eval_limit, Duration::from_millis(100));
        assert_eq!(c.backend.collateral.pccs_url, None);
        assert_eq!(
            c.request_timeout,
            Duration::from_secs(defaults::REQUEST_TIMEOUT_SECS)
        );
    }

    /// A variable renamed so that it is `TEESQL_VERIFIER_` and its key is still read by
    /// its old name for one release, with a notice; the new name wins.
    #[test]
    fn renamed_variables_are_read_by_their_old_names_with_a_notice() {
        let mut p = Problems::new();
        let old = [
            ("TEESQL_VERIFIER_CACHE_TTL", "120"),
            ("PCCS_URL", "https://pccs.example"),
            ("TEESQL_VERIFIER_FETCH_TIMEOUT_SECS", "7"),
            ("TEESQL_VERIFIER_FETCH_TIMEOUT", "9"),
        ];
        let s = ServeSettings::from_env(&old, &mut p);
        assert_eq!(s.cache_max_ttl_secs, Some(120));
        assert_eq!(s.pccs_url.as_deref(), Some("https://pccs.example"));
        assert_eq!(s.fetch_timeout_secs, Some(7), "the new name wins");
        assert!(p.is_empty());
        let notices = p.notices().join("\n");
        assert!(
            notices.contains("TEESQL_VERIFIER_CACHE_TTL is deprecated")
                && notices.contains("set TEESQL_VERIFIER_CACHE_MAX_TTL_SECS")
                && notices.contains("PCCS_URL is deprecated")
                && notices.contains("set TEESQL_PCCS_URL"),
            "{notices}"
        );
        assert!(
            !notices.contains("TEESQL_VERIFIER_FETCH_TIMEOUT is"),
            "{notices}"
        );
    }

    /// Each kind of bad value, in each layer, names its key or variable; all come back
    /// together.
    #[test]
    fn every_kind_of_bad_value_names_its_key() {
        let env = [
            ("TEESQL_VERIFIER_FETCH_TIMEOUT_SECS", "ten"),
            ("TEESQL_VERIFIER_OFFLINE", "perhaps"),
            ("TEESQL_VERIFIER_NOW", "-1"),
        ];
        let file = ServeSettings {
            metrics_listen: Some("9090".into()),
            cache_max_mib: Some(0),
            cache_max_ttl_secs: Some(0),
            eval_timeout_ms: Some(0),
            request_timeout_secs: Some(0),
            cache_capacity: Some(10),
            pccs_url: Some("ftp://pccs".into()),
            collateral_file: Some("/nonexistent/collateral.json".into()),
            decision_log: Some("/nonexistent/dir/decisions.log".into()),
            trust_root: Some("/nonexistent/root.der".into()),
            ..ServeSettings::default()
        };
        let errors = ServeConfig::load(
            ServeSettings {
                listen: Some("localhost".into()),
                policy_dirs: Some(vec!["/nonexistent/policies".into()]),
                ..ServeSettings::default()
            },
            &env,
            file,
        )
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "TEESQL_VERIFIER_FETCH_TIMEOUT_SECS \"ten\"",
            "TEESQL_VERIFIER_OFFLINE \"perhaps\": expected true or false",
            "TEESQL_VERIFIER_NOW \"-1\"",
            "listen \"localhost\"",
            "metrics_listen \"9090\"",
            "policy_dir /nonexistent/policies: not a directory",
            "trust root /nonexistent/root.der",
            "pccs_url \"ftp://pccs\"",
            "collateral_file /nonexistent/collateral.json: does not exist",
            "cache_max_mib: 0 is below the minimum, 1",
            "cache_max_ttl_secs: 0 is below",
            "eval_timeout_ms: 0 is below",
            "request_timeout_secs: 0 is below",
            "cache_capacity: replaced by cache_max_mib",
            "decision_log /nonexistent/dir/decisions.log: directory /nonexistent/dir does not exist",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
        assert_eq!(errors.len(), 15, "{all}");
    }

    #[test]
    fn ra_tls_is_tls_on_tcp_and_not_beside_an_operator_certificate() {
        // RA-TLS counts as TLS: a non-loopback listener needs no insecure_plaintext.
        let c = ServeConfig::resolve(ServeSettings {
            listen: Some("0.0.0.0:0".into()),
            ra_tls: Some(true),
            dstack_endpoint: Some("/run/dstack.sock".into()),
            ..flags()
        })
        .unwrap();
        let ra = c.ra_tls.unwrap();
        assert_eq!(ra.endpoint.as_deref(), Some("/run/dstack.sock"));
        assert_eq!(
            ra.renew_every,
            Duration::from_secs(defaults::RA_TLS_RENEW_SECS)
        );
        let errors = ServeConfig::resolve(ServeSettings {
            listen: Some("unix:///tmp/v.sock".into()),
            ra_tls: Some(true),
            tls_cert: Some("/nonexistent/c.pem".into()),
            ra_tls_renew_secs: Some(1),
            ..flags()
        })
        .unwrap_err()
        .join("\n");
        for needle in [
            "ra_tls and tls_cert/tls_key: serve one certificate",
            "a unix socket is local already",
            "ra_tls_renew_secs: 1 is below the minimum, 10",
        ] {
            assert!(errors.contains(needle), "{needle} missing in:\n{errors}");
        }
    }
}

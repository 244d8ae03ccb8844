//! What `serve` is given: every setting optional, from flags, the environment and the
//! TOML file (keys as the long flags), merged in that order; and the defaults, named.

use std::path::PathBuf;

use serde::Deserialize;

use teesql_proto::settings::{Env, Problems, first};

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
    /// Policies from an OPA bundle (.tar.gz: .rego modules, data.json documents, a
    /// .manifest whose revision goes with every decision) instead of --policy-dir; read
    /// again on change and on SIGHUP. [env: TEESQL_VERIFIER_POLICY_BUNDLE]
    #[arg(long, value_name = "FILE")]
    pub policy_bundle: Option<PathBuf>,
    /// Policies from an OPA bundle served over HTTP(S), polled with If-None-Match every
    /// --policy-bundle-poll-secs; a bundle that fails to download, verify or compile
    /// leaves the serving policies in place. [env: TEESQL_VERIFIER_POLICY_BUNDLE_URL]
    #[arg(long, value_name = "URL")]
    pub policy_bundle_url: Option<String>,
    /// Seconds between polls of --policy-bundle-url [default: 60]. [env: TEESQL_VERIFIER_POLICY_BUNDLE_POLL_SECS]
    #[arg(long, value_name = "SECS")]
    pub policy_bundle_poll_secs: Option<u64>,
    /// The key bundles must be signed with (OPA's .signatures.json): a PEM public key
    /// (RSA, EC or Ed25519) or a file holding an HMAC secret. With it, an unsigned bundle
    /// is refused. [env: TEESQL_VERIFIER_BUNDLE_VERIFICATION_KEY]
    #[arg(long, value_name = "FILE")]
    pub bundle_verification_key: Option<PathBuf>,
    /// The `scope` the bundle signature must carry [default: none]. [env: TEESQL_VERIFIER_BUNDLE_VERIFICATION_SCOPE]
    #[arg(long, value_name = "SCOPE")]
    pub bundle_verification_scope: Option<String>,
    /// Root CA (DER or PEM) to verify quotes against instead of Intel's. [env: TEESQL_VERIFIER_TRUST_ROOT]
    #[arg(long, value_name = "FILE")]
    pub trust_root: Option<PathBuf>,
    /// A development root (teesql-dev's seeded PKI) to verify quotes against; claims say
    /// `tdx.root = "dev"`, which only the development profile accepts. [env: TEESQL_VERIFIER_DEV_TRUST_ROOT]
    #[arg(long, value_name = "FILE")]
    pub dev_trust_root: Option<PathBuf>,
    /// A development SEV-SNP ARK (PEM or DER; teesql-devattest's) to verify SEV-SNP
    /// reports against instead of AMD's; claims say `snp.root = "dev"`, which only the
    /// development profile accepts. [env: TEESQL_VERIFIER_SNP_DEV_ARK]
    #[arg(long, value_name = "FILE")]
    pub snp_dev_ark: Option<PathBuf>,
    /// AMD certificates in KDS's layout (<Product>/cert_chain, <Product>/crl,
    /// <Product>/<hwID>/<REPORTED_TCB>.der) for SEV-SNP evidence sent without them.
    /// [env: TEESQL_VERIFIER_SNP_CERT_DIR]
    #[arg(long, value_name = "DIR")]
    pub snp_cert_dir: Option<PathBuf>,
    /// AMD's KDS or a mirror, asked (once per chip and TCB, cached) for the VCEK of
    /// SEV-SNP evidence sent without one, and for AMD's CRL [default: AMD's KDS; none
    /// when offline]. [env: TEESQL_VERIFIER_KDS_URL]
    #[arg(long, value_name = "URL")]
    pub kds_url: Option<String>,
    /// PCCS or Intel PCS for collateral [default: Intel PCS]. [env: TEESQL_PCCS_URL]
    #[arg(long, value_name = "URL")]
    pub pccs_url: Option<String>,
    /// Never fetch collateral over the network. [env: TEESQL_VERIFIER_OFFLINE]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub offline: Option<bool>,
    /// Directory of collateral JSON files, used before the PCCS. [env: TEESQL_VERIFIER_COLLATERAL_DIR]
    #[arg(long, value_name = "DIR")]
    pub collateral_dir: Option<PathBuf>,
    /// Keep collateral fetched from the PCS/PCCS in this directory (created if missing),
    /// and start from it: a restarted verifier asks the network only for platforms it has
    /// not seen, or whose collateral expired. Kept files are verified like fetched ones.
    /// [env: TEESQL_VERIFIER_COLLATERAL_CACHE_DIR]
    #[arg(long, value_name = "DIR")]
    pub collateral_cache_dir: Option<PathBuf>,
    /// Most MiB the collateral cache directory holds; the oldest files go first [default: 64].
    /// [env: TEESQL_VERIFIER_COLLATERAL_CACHE_MIB]
    #[arg(long, value_name = "MIB")]
    pub collateral_cache_mib: Option<u64>,
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
    /// MiB the collateral cache directory holds.
    pub const COLLATERAL_CACHE_MIB: u64 = 64;
    /// Seconds between polls of `--policy-bundle-url`.
    pub const BUNDLE_POLL_SECS: u64 = 60;
    /// The smallest `--policy-bundle-poll-secs` accepted.
    pub const MIN_BUNDLE_POLL_SECS: u64 = 1;
    /// The smallest `--ra-tls-renew-secs` accepted; less is a configuration error.
    pub const MIN_RA_TLS_RENEW_SECS: u64 = 10;
}

/// Why a configuration file cannot be read ([`ServeSettings::from_file`]).
#[derive(Debug, thiserror::Error)]
pub enum SettingsFileError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the settings in TOML.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// toml's error.
        #[source]
        source: toml::de::Error,
    },
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
            policy_bundle,
            policy_bundle_url,
            policy_bundle_poll_secs,
            bundle_verification_key,
            bundle_verification_scope,
            trust_root,
            dev_trust_root,
            snp_dev_ark,
            snp_cert_dir,
            kds_url,
            pccs_url,
            offline,
            collateral_dir,
            collateral_cache_dir,
            collateral_cache_mib,
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
            policy_bundle: path("TEESQL_VERIFIER_POLICY_BUNDLE"),
            policy_bundle_url: env.var("TEESQL_VERIFIER_POLICY_BUNDLE_URL"),
            policy_bundle_poll_secs: p.env(env, "TEESQL_VERIFIER_POLICY_BUNDLE_POLL_SECS"),
            bundle_verification_key: path("TEESQL_VERIFIER_BUNDLE_VERIFICATION_KEY"),
            bundle_verification_scope: env.var("TEESQL_VERIFIER_BUNDLE_VERIFICATION_SCOPE"),
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
            snp_dev_ark: path("TEESQL_VERIFIER_SNP_DEV_ARK"),
            snp_cert_dir: path("TEESQL_VERIFIER_SNP_CERT_DIR"),
            kds_url: env.var("TEESQL_VERIFIER_KDS_URL"),
            pccs_url: p.var_renamed(env, "TEESQL_PCCS_URL", &["PCCS_URL"]),
            offline: p.env_switch(env, "TEESQL_VERIFIER_OFFLINE"),
            collateral_dir: path("TEESQL_VERIFIER_COLLATERAL_DIR"),
            collateral_cache_dir: path("TEESQL_VERIFIER_COLLATERAL_CACHE_DIR"),
            collateral_cache_mib: p.env(env, "TEESQL_VERIFIER_COLLATERAL_CACHE_MIB"),
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
    pub fn from_file(path: &std::path::Path) -> Result<Self, SettingsFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| SettingsFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

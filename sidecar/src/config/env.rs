//! Every environment variable the sidecar and `forward` read, named once. `--help`, the
//! README's tables (checked by `tests/tests/readme.rs`) and resolution use these.
//!
//! A variable is `TEESQL_` and its setting's key: `[backend] port` is
//! `TEESQL_BACKEND_PORT`. A renamed variable is still read by its old name for one
//! release, with a notice ([`teesql_proto::settings::Problems::var_renamed`]).

use teesql_proto::settings::Env;

/// The TOML configuration file's path (`--config`); unset = defaults, env and flags only.
pub const SIDECAR_CONFIG: &str = "TEESQL_SIDECAR_CONFIG";

/// `listen.postgres`, under `--listen`: the Postgres-over-TLS address.
pub const SIDECAR_LISTEN: &str = "TEESQL_SIDECAR_LISTEN";
/// `listen.admin`, under `--admin-listen`: the admin HTTP address, or `off`.
pub const SIDECAR_ADMIN_LISTEN: &str = "TEESQL_SIDECAR_ADMIN_LISTEN";
/// `listen.public`: the /attestation-only HTTP address, or `off` (no flag).
pub const SIDECAR_PUBLIC_LISTEN: &str = "TEESQL_SIDECAR_PUBLIC_LISTEN";
/// `listen.postgres_threads`: threads serving the Postgres port, 0 = the shared scheduler (no flag).
pub const SIDECAR_POSTGRES_THREADS: &str = "TEESQL_SIDECAR_POSTGRES_THREADS";
/// `identity.alt_names`, under `--alt-names`: comma-separated certificate names.
pub const SIDECAR_ALT_NAMES: &str = "TEESQL_SIDECAR_ALT_NAMES";

/// `verifier.url` / `--verifier`: one or more comma-separated gRPC URLs.
pub const VERIFIER_URL: &str = "TEESQL_VERIFIER_URL";
/// `verifier.timeout_ms` / `--verifier-timeout-ms`: milliseconds per decision.
pub const VERIFIER_TIMEOUT_MS: &str = "TEESQL_VERIFIER_TIMEOUT_MS";
/// `verifier.policy_hashes` / `--verifier-policy-hash`: comma-separated `sha256:<hex>`.
pub const VERIFIER_POLICY_HASHES: &str = "TEESQL_VERIFIER_POLICY_HASHES";
/// `verifier.ca_file` / `--verifier-ca-file`: PEM CAs for an https verifier.
pub const VERIFIER_CA_FILE: &str = "TEESQL_VERIFIER_CA_FILE";
/// `verifier.cert_sha256` / `--verifier-cert-sha256`: the https verifier's certificate hash (hex).
pub const VERIFIER_CERT_SHA256: &str = "TEESQL_VERIFIER_CERT_SHA256";
/// `verifier.identity_policy_dir`: policy profile to appraise the verifier's RA-TLS certificate.
pub const VERIFIER_IDENTITY_POLICY_DIR: &str = "TEESQL_VERIFIER_IDENTITY_POLICY_DIR";
/// `verifier.identity_trust_root`: root CA (DER or PEM) for the verifier's quote instead of Intel's.
pub const VERIFIER_IDENTITY_TRUST_ROOT: &str = "TEESQL_VERIFIER_IDENTITY_TRUST_ROOT";
/// `verifier.identity_dev_trust_root`: teesql-dev's root, for a verifier on the development agent.
pub const VERIFIER_IDENTITY_DEV_TRUST_ROOT: &str = "TEESQL_VERIFIER_IDENTITY_DEV_TRUST_ROOT";
/// `verifier.identity_pccs_url`: collateral for the verifier's quote, over [`PCCS_URL`].
pub const VERIFIER_IDENTITY_PCCS_URL: &str = "TEESQL_VERIFIER_IDENTITY_PCCS_URL";

/// `backend.host`, under `--backend-host`: a host, or a unix socket directory (`/…`).
pub const BACKEND_HOST: &str = "TEESQL_BACKEND_HOST";
/// `backend.port`, under `--backend-port`.
pub const BACKEND_PORT: &str = "TEESQL_BACKEND_PORT";
/// `backend.method`, under `--backend-method`: trust, password, md5 or scram-sha-256.
pub const BACKEND_METHOD: &str = "TEESQL_BACKEND_METHOD";
/// Where the backend password is read from unless `backend.password_env` names another.
pub const BACKEND_PASSWORD: &str = "TEESQL_BACKEND_PASSWORD";
/// The admin user's password, unless `backend.admin_password_env` names another
/// variable or `backend.admin_password_file` is set.
pub const BACKEND_ADMIN_PASSWORD: &str = "TEESQL_BACKEND_ADMIN_PASSWORD";

/// `auth.method`, under `--auth-method`: scram-sha-256 or cleartext (alias password).
pub const AUTH_METHOD: &str = "TEESQL_AUTH_METHOD";
/// `auth.channel_binding`: auto, always or never (no flag).
pub const AUTH_CHANNEL_BINDING: &str = "TEESQL_AUTH_CHANNEL_BINDING";
/// Until 2026-12: `TEESQL_CHANNEL_BINDING`.
pub const AUTH_CHANNEL_BINDING_WAS: &[&str] = &["TEESQL_CHANNEL_BINDING"];
/// The cluster secrets, unless `auth.*_secret_env` names others.
pub const READ_SECRET: &str = "TEESQL_READ_SECRET";
/// The read-write cluster secret (64 hex digits), unless `auth.readwrite_secret_env`
/// names another variable or `auth.readwrite_secret_file` is set.
pub const READWRITE_SECRET: &str = "TEESQL_READWRITE_SECRET";

/// Where collateral comes from (a PCCS, or Intel PCS), for every appraisal in this
/// process; the verifier reads the same variable.
pub const PCCS_URL: &str = "TEESQL_PCCS_URL";
/// Until 2026-12: `PCCS_URL`, unprefixed.
pub const PCCS_URL_WAS: &[&str] = &["PCCS_URL"];

/// `forward`: the MRTDs the server must have. Unprefixed on purpose: TeeSQL's client
/// libraries read the same variable, so one environment serves both.
pub const EXPECTED_MRTD: &str = "EXPECTED_MRTD";

/// Every variable above, for `--help` and the README check.
pub const ALL: &[&str] = &[
    SIDECAR_CONFIG,
    SIDECAR_LISTEN,
    SIDECAR_ADMIN_LISTEN,
    SIDECAR_PUBLIC_LISTEN,
    SIDECAR_POSTGRES_THREADS,
    SIDECAR_ALT_NAMES,
    VERIFIER_URL,
    VERIFIER_TIMEOUT_MS,
    VERIFIER_POLICY_HASHES,
    VERIFIER_CA_FILE,
    VERIFIER_CERT_SHA256,
    VERIFIER_IDENTITY_POLICY_DIR,
    VERIFIER_IDENTITY_TRUST_ROOT,
    VERIFIER_IDENTITY_DEV_TRUST_ROOT,
    VERIFIER_IDENTITY_PCCS_URL,
    BACKEND_HOST,
    BACKEND_PORT,
    BACKEND_METHOD,
    BACKEND_PASSWORD,
    BACKEND_ADMIN_PASSWORD,
    AUTH_METHOD,
    AUTH_CHANNEL_BINDING,
    READ_SECRET,
    READWRITE_SECRET,
    PCCS_URL,
    EXPECTED_MRTD,
];

/// `TEESQL_PCCS_URL`, else (deprecated, without a notice here: the caller's resolution
/// already gave it) `PCCS_URL`.
pub fn pccs_url(e: &dyn Env) -> Option<String> {
    e.var(PCCS_URL)
        .or_else(|| PCCS_URL_WAS.iter().find_map(|old| e.var(old)))
}

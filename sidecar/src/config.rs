//! Sidecar configuration: a TOML file, environment variables over it, flags over those.
//! Every bad setting is reported at once; secrets never appear in any message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;
pub use teesql_proto::settings::{Env, ProcessEnv};
use teesql_proto::settings::{Problems, first};
use teesql_proto::transport::ServerTrust;

use crate::auth::{AuthMap, GrantedRole, Privileges, Secret, is_reserved_role};

/// The settings as they can be written: every field optional (file, env and flags merge).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarFile {
    #[serde(default)]
    pub listen: ListenFile,
    #[serde(default)]
    pub identity: IdentityFile,
    #[serde(default)]
    pub verifier: VerifierFile,
    #[serde(default)]
    pub backend: BackendFile,
    #[serde(default)]
    pub auth: AuthFile,
    #[serde(default)]
    pub limits: LimitsFile,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Postgres over TLS [default: 0.0.0.0:5433].
    pub postgres: Option<String>,
    /// HTTP /health, /attestation, /metrics for the operator [default: 127.0.0.1:8080];
    /// "off" disables.
    pub admin: Option<String>,
    /// HTTP with /attestation only, for anyone [default: off], e.g. "0.0.0.0:8080" with
    /// the admin listener moved to another loopback port.
    pub public: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// Certificate subject CN [default: first alt name].
    pub subject: Option<String>,
    /// Subject alternative names of the server certificate [default: localhost, 127.0.0.1].
    pub alt_names: Option<Vec<String>>,
    /// Renew the certificate this often, seconds [default: 3600].
    pub renew_secs: Option<u64>,
    /// Guest agent endpoint [default: DSTACK_SIMULATOR_ENDPOINT, else the dstack socket].
    pub endpoint: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifierFile {
    /// gRPC URL of teesql-verifier: http://127.0.0.1:PORT, https://HOST:PORT or
    /// unix:///PATH; several, comma-separated, are balanced and fail over
    /// [default: http://127.0.0.1:50051].
    pub url: Option<String>,
    /// Time limit of one decision, milliseconds [default: 5000].
    pub timeout_ms: Option<u64>,
    /// CA certificates (PEM) that an https verifier's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Or the SHA-256 (hex) of the https verifier's certificate.
    pub cert_sha256: Option<String>,
    /// The policies decisions may come from (`sha256:<hex>` each, as decisions carry them
    /// and the verifier prints them at start), during a rollout the old and the new
    /// [default: the first answer's; an endpoint answering under another is not believed:
    /// the next one is asked].
    pub policy_hashes: Option<Vec<String>>,
    /// Or a policy profile whose purpose `verifier` judges the https verifier's own
    /// RA-TLS certificate (pins in data.teesql.verifier_pins), appraised in the sidecar.
    pub identity_policy_dir: Option<PathBuf>,
    /// A root CA for the verifier's quote instead of Intel's.
    pub identity_trust_root: Option<PathBuf>,
    /// The development root, for a verifier on the development agent.
    pub identity_dev_trust_root: Option<PathBuf>,
    /// Collateral for the verifier's quote [default: env PCCS_URL, else Intel PCS].
    pub identity_pccs_url: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// Postgres host [default: 127.0.0.1]; a path starting with / is a unix socket directory.
    pub host: Option<String>,
    /// [default: 5432]
    pub port: Option<u16>,
    /// How the sidecar logs in to Postgres as the role: trust, password, md5, scram-sha-256 [default: trust].
    pub method: Option<String>,
    /// Password of the sidecar-managed roles in Postgres (methods other than trust).
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Superuser for /attestation's Postgres state and for `provision` [default: postgres].
    pub admin_user: Option<String>,
    pub admin_password_file: Option<PathBuf>,
    pub admin_password_env: Option<String>,
    /// Time limit to connect and log in to Postgres, milliseconds [default: 5000].
    pub connect_timeout_ms: Option<u64>,
    /// Opt-in: Postgres connections kept for reuse per (role, database, parameters) after a
    /// client terminates; 0 keeps reuse off and the relay a plain byte copy [default: 0].
    pub pool_max_idle_per_key: Option<usize>,
    /// How long a kept connection may wait for a client, seconds [default: 60].
    pub pool_idle_timeout_secs: Option<u64>,
    /// Connections kept for reuse over all keys [default: 64].
    pub pool_max_idle_total: Option<usize>,
    /// Startup parameters passed on to Postgres besides the built-in list
    /// (application_name, client_encoding, DateStyle, TimeZone, IntervalStyle,
    /// extra_float_digits, search_path, statement_timeout, lock_timeout,
    /// idle_in_transaction_session_timeout, bytea_output). Others are refused.
    pub forward_parameters: Option<Vec<String>>,
    /// Startup parameters accepted from clients but not passed on (as PgBouncer's
    /// ignore_startup_parameters).
    pub ignore_parameters: Option<Vec<String>>,
    /// Record each session's attested identity for `teesql.identity()` in SQL (needs
    /// `provision`) [default: true when a role is `granted`, else false].
    pub record_identity: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// scram-sha-256 (default; -PLUS channel binding when the client asks) or cleartext.
    pub method: Option<String>,
    /// When to offer SCRAM-SHA-256-PLUS: auto (only when the TLS peer negotiated ALPN
    /// `postgresql`, i.e. it is the Postgres client itself), always, or never [default: auto].
    pub channel_binding: Option<String>,
    /// The read secret (32 bytes, hex) from a file or an environment variable
    /// [default env: TEESQL_READ_SECRET].
    pub read_secret_file: Option<PathBuf>,
    pub read_secret_env: Option<String>,
    /// The read-write secret [default env: TEESQL_READWRITE_SECRET].
    pub readwrite_secret_file: Option<PathBuf>,
    pub readwrite_secret_env: Option<String>,
    /// Roles whose authentication is relayed to Postgres unchanged (mode B), e.g. postgres.
    pub passthrough_roles: Option<Vec<String>>,
    /// More roles, each with its own secret.
    #[serde(default)]
    pub roles: Vec<ExtraRoleFile>,
    /// The user a client names to let the verifier's policy choose its role: the first
    /// role of the decision's grants that is a `granted` role here [default: teesql_app].
    pub tenant_user: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraRoleFile {
    pub name: String,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
    /// What `provision` grants: read, readwrite or none [default: none].
    pub privileges: Option<String>,
    /// Only for a client whose verifier decision grants this role (`grants.roles`, e.g.
    /// a tenant's role from data.teesql.tenants) [default: false]. It needs a secret of
    /// its own (both factors: the grant and the secret) or `attestation_only`.
    pub granted: Option<bool>,
    /// With `granted`: the grant alone logs the client in, no secret is asked. Opt-in,
    /// for roles the policy grants only to pinned compose hashes [default: false].
    pub attestation_only: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Concurrent client connections [default: 1000].
    pub max_connections: Option<usize>,
    /// Deadline from accept to an established TLS session (SSLRequest or direct TLS,
    /// then the TLS handshake), seconds [default: 10].
    pub tls_handshake_timeout_secs: Option<u64>,
    /// Deadline after TLS for the StartupMessage, seconds [default: 60]. TeeSQL's client
    /// libraries verify the server's quote (a PCCS fetch or an Intel Trust Authority round
    /// trip, 15 to 40 s) before they send it.
    pub startup_timeout_secs: Option<u64>,
    /// Deadline from the StartupMessage to a logged-in session (authentication, the
    /// verifier's decision, the login to Postgres), seconds [default: 10].
    pub login_timeout_secs: Option<u64>,
    /// Replaced by the three deadlines above; kept only to name them in the error.
    pub handshake_timeout_secs: Option<u64>,
    /// Close sessions idle this long, seconds; 0 = never [default: 0].
    pub idle_timeout_secs: Option<u64>,
    /// On shutdown, wait this long for sessions to end, seconds [default: 30].
    pub shutdown_grace_secs: Option<u64>,
    /// Failed logins allowed per (client address, user) per minute [default: 30].
    pub failed_auth_per_minute: Option<u32>,
    /// Handshakes a client address may abandon (close or stall after its
    /// StartupMessage) per minute [default: 60].
    pub abandoned_per_minute: Option<u32>,
    /// Handshakes in progress per client address [default: 256].
    pub handshakes_per_address: Option<usize>,
    /// Time from accept to the client's first packet, seconds [default: 5].
    pub first_packet_timeout_secs: Option<u64>,
    /// Open connections per HTTP listener [default: 64].
    pub http_max_connections: Option<usize>,
    /// Open connections per HTTP listener from one client address (IPv6: a /64)
    /// [default: 32, half of a listener's connections].
    pub http_connections_per_address: Option<usize>,
    /// Time for an HTTP client to send its request headers, seconds [default: 5].
    pub http_header_timeout_secs: Option<u64>,
    /// Longest an HTTP connection may live, seconds [default: 30].
    pub http_connection_timeout_secs: Option<u64>,
}

/// Where the sidecar logs in to Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    Tcp(String, u16),
    /// Unix socket directory and port (the socket is `<dir>/.s.PGSQL.<port>`).
    Unix(PathBuf, u16),
}

impl BackendAddr {
    pub fn describe(&self) -> String {
        match self {
            Self::Tcp(h, p) => format!("{h}:{p}"),
            Self::Unix(d, p) => format!("{}/.s.PGSQL.{p}", d.display()),
        }
    }
}

/// How the sidecar logs in to Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendMethod {
    Trust,
    Password,
    Md5,
    #[value(name = "scram-sha-256")]
    ScramSha256,
}

/// How clients authenticate to the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuthMethod {
    /// SCRAM-SHA-256 (and -PLUS, see `channel_binding`).
    #[value(name = "scram-sha-256")]
    Scram,
    /// The secret in a PasswordMessage (inside TLS).
    #[value(alias = "password")]
    Cleartext,
}

/// When the sidecar offers SCRAM-SHA-256-PLUS (channel binding to its TLS certificate).
///
/// A transparent forwarder (TeeSQL's client libraries, mode A) terminates TLS and relays
/// bytes to a driver that speaks plaintext to it; libpq then refuses any -PLUS offer
/// ("server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection"). Only
/// a TLS peer that is evidently the Postgres client itself can bind the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChannelBinding {
    /// Offer -PLUS only when ALPN `postgresql` was negotiated (libpq 17+ sends it on
    /// every TLS connection; TeeSQL's forwarders send none).
    Auto,
    /// Offer -PLUS on every TLS connection (breaks libpq behind a forwarder).
    Always,
    /// Never offer -PLUS.
    Never,
}

/// The defaults, named. `--help` and the comments on `SidecarFile` quote them.
pub mod defaults {
    pub const LISTEN: &str = "0.0.0.0:5433";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:8080";
    pub const ALT_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
    pub const RENEW_SECS: u64 = 3600;
    /// The guest agent is not asked for a certificate more often than this.
    pub const MIN_RENEW_SECS: u64 = 10;
    pub const VERIFIER_URL: &str = "http://127.0.0.1:50051";
    pub const VERIFIER_TIMEOUT_MS: u64 = 5000;
    pub const BACKEND_HOST: &str = "127.0.0.1";
    pub const BACKEND_PORT: u16 = 5432;
    pub const BACKEND_METHOD: super::BackendMethod = super::BackendMethod::Trust;
    pub const BACKEND_ADMIN_USER: &str = "postgres";
    pub const BACKEND_CONNECT_TIMEOUT_MS: u64 = 5000;
    pub const POOL_MAX_IDLE_PER_KEY: usize = 0;
    pub const POOL_IDLE_TIMEOUT_SECS: u64 = 60;
    pub const POOL_MAX_IDLE_TOTAL: usize = 64;
    pub const AUTH_METHOD: super::ClientAuthMethod = super::ClientAuthMethod::Scram;
    pub const CHANNEL_BINDING: super::ChannelBinding = super::ChannelBinding::Auto;
    pub const READ_SECRET_ENV: &str = "TEESQL_READ_SECRET";
    pub const READWRITE_SECRET_ENV: &str = "TEESQL_READWRITE_SECRET";
    pub const TENANT_USER: &str = "teesql_app";
    pub const BACKEND_PASSWORD_ENV: &str = "TEESQL_BACKEND_PASSWORD";
    pub const BACKEND_ADMIN_PASSWORD_ENV: &str = "TEESQL_BACKEND_ADMIN_PASSWORD";
    pub const MAX_CONNECTIONS: usize = 1000;
    pub const TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
    pub const STARTUP_TIMEOUT_SECS: u64 = 60;
    pub const LOGIN_TIMEOUT_SECS: u64 = 10;
    pub const IDLE_TIMEOUT_SECS: u64 = 0;
    pub const SHUTDOWN_GRACE_SECS: u64 = 30;
    pub const FAILED_AUTH_PER_MINUTE: u32 = 30;
    pub const ABANDONED_PER_MINUTE: u32 = 60;
    pub const HANDSHAKES_PER_ADDRESS: usize = 256;
    pub const FIRST_PACKET_TIMEOUT_SECS: u64 = 5;
    pub const HTTP_MAX_CONNECTIONS: usize = 64;
    pub const HTTP_CONNECTIONS_PER_ADDRESS: usize = 32;
    pub const HTTP_HEADER_TIMEOUT_SECS: u64 = 5;
    pub const HTTP_CONNECTION_TIMEOUT_SECS: u64 = 30;
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub public_listen: Option<SocketAddr>,
    pub identity: IdentityConfig,
    pub verifier_url: String,
    pub verifier_trust: Option<ServerTrust>,
    pub verifier_timeout: Duration,
    /// Policy hashes decisions may come from; empty = the first answer's.
    pub verifier_policy_hashes: Vec<String>,
    pub backend: BackendConfig,
    pub auth_method: ClientAuthMethod,
    pub channel_binding: ChannelBinding,
    pub auth: AuthMap,
    pub limits: Limits,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub subject: String,
    pub alt_names: Vec<String>,
    pub renew_every: Duration,
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub addr: BackendAddr,
    pub method: BackendMethod,
    pub password: Option<Secret>,
    pub admin_user: String,
    pub admin_password: Option<Secret>,
    pub connect_timeout: Duration,
    pub pool_max_idle_per_key: usize,
    pub pool_max_idle_total: usize,
    pub pool_idle_timeout: Duration,
    /// Which client startup parameters are passed on, and which are ignored.
    pub startup_parameters: crate::params::StartupParameters,
    /// Record each session's attested identity (`teesql.session_identity`).
    pub record_identity: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    pub startup_timeout: Duration,
    pub login_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub shutdown_grace: Duration,
    pub address: AddressLimits,
    pub first_packet_timeout: Duration,
    pub http: HttpLimits,
}

/// Flag values (each overrides the file and the environment).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub verifier_url: Option<String>,
    pub backend_host: Option<String>,
    pub backend_port: Option<u16>,
    /// One of `BackendMethod`'s choices, checked with every other setting.
    pub backend_method: Option<String>,
    /// One of `ClientAuthMethod`'s choices, checked with every other setting.
    pub auth_method: Option<String>,
    pub alt_names: Option<Vec<String>>,
    pub max_connections: Option<usize>,
}

/// A listener address, or `off` (also the empty string).
fn optional_listener(p: &mut Problems, key: &str, text: &str) -> Option<SocketAddr> {
    if text == "off" || text.is_empty() {
        None
    } else {
        p.socket_addr(key, text)
    }
}

/// A whole number of seconds (or milliseconds) at least 1.
fn positive(p: &mut Problems, key: &str, value: Option<u64>, default: u64) -> u64 {
    p.at_least(key, value.unwrap_or(default), 1)
}

impl SidecarConfig {
    /// Merge flags over environment over file, check everything, load secrets. Every
    /// problem is returned, each naming its key; no secret appears in any of them.
    pub fn resolve(
        file: SidecarFile,
        env: &dyn Env,
        flags: Overrides,
    ) -> Result<Self, Vec<String>> {
        let mut p = Problems::new();
        let e = |name: &str| env.var(name);

        let listen_s = first([
            flags.listen,
            e("TEESQL_SIDECAR_LISTEN"),
            file.listen.postgres,
        ])
        .unwrap_or_else(|| defaults::LISTEN.into());
        let listen = p.socket_addr("listen", &listen_s);
        let admin_s = first([
            flags.admin_listen,
            e("TEESQL_SIDECAR_ADMIN_LISTEN"),
            file.listen.admin,
        ])
        .unwrap_or_else(|| defaults::ADMIN_LISTEN.into());
        let admin_listen = optional_listener(&mut p, "admin listen", &admin_s);
        let public_s = first([e("TEESQL_SIDECAR_PUBLIC_LISTEN"), file.listen.public])
            .unwrap_or_else(|| "off".into());
        let public_listen = optional_listener(&mut p, "public listen", &public_s);

        let alt_names = first([
            flags.alt_names,
            e("TEESQL_SIDECAR_ALT_NAMES")
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
            file.identity.alt_names,
        ])
        .unwrap_or_else(|| defaults::ALT_NAMES.map(String::from).to_vec());
        if alt_names.is_empty() {
            p.report("identity.alt_names", "at least one name is needed");
        }
        let identity = IdentityConfig {
            subject: file
                .identity
                .subject
                .unwrap_or_else(|| alt_names.first().cloned().unwrap_or_default()),
            renew_every: Duration::from_secs(p.at_least(
                "identity.renew_secs",
                file.identity.renew_secs.unwrap_or(defaults::RENEW_SECS),
                defaults::MIN_RENEW_SECS,
            )),
            endpoint: file.identity.endpoint,
            alt_names,
        };

        let verifier_url = first([
            flags.verifier_url,
            e("TEESQL_VERIFIER_URL"),
            file.verifier.url,
        ])
        .unwrap_or_else(|| defaults::VERIFIER_URL.into());
        let verifier_trust = crate::verifier::TrustSettings::from_env(env)
            .over(crate::verifier::TrustSettings {
                ca_file: file.verifier.ca_file,
                cert_sha256: file.verifier.cert_sha256,
                identity_policy_dir: file.verifier.identity_policy_dir,
                identity_trust_root: file.verifier.identity_trust_root,
                identity_dev_trust_root: file.verifier.identity_dev_trust_root,
                identity_pccs_url: file.verifier.identity_pccs_url,
            })
            .resolve_as(env, &|k| format!("verifier.{k}"))
            .map_err(|e| p.push(e))
            .ok()
            .flatten();
        if let Err(e) = teesql_proto::transport::check(&verifier_url, verifier_trust.as_ref()) {
            p.push(format!("verifier.url {e}"));
        }
        let verifier_policy_hashes = first([
            e("TEESQL_VERIFIER_POLICY_HASHES").map(|v| vec![v]),
            file.verifier.policy_hashes,
        ])
        .map(|given| crate::verifier::parse_policy_hashes(&given))
        .transpose()
        .map_err(|e| p.report("verifier.policy_hashes", &e))
        .ok()
        .flatten()
        .unwrap_or_default();
        let verifier_timeout = Duration::from_millis(positive(
            &mut p,
            "verifier.timeout_ms",
            file.verifier.timeout_ms,
            defaults::VERIFIER_TIMEOUT_MS,
        ));

        let host = first([
            flags.backend_host,
            e("TEESQL_BACKEND_HOST"),
            file.backend.host,
        ])
        .unwrap_or_else(|| defaults::BACKEND_HOST.into());
        let port = first([
            flags.backend_port,
            p.env(env, "TEESQL_BACKEND_PORT"),
            file.backend.port,
        ])
        .unwrap_or(defaults::BACKEND_PORT);
        let backend_addr = if host.starts_with('/') {
            BackendAddr::Unix(PathBuf::from(host), port)
        } else {
            BackendAddr::Tcp(host, port)
        };
        let method_given = [
            ("backend.method", flags.backend_method),
            ("TEESQL_BACKEND_METHOD", e("TEESQL_BACKEND_METHOD")),
            ("backend.method", file.backend.method),
        ];
        let method = if method_given.iter().all(|(_, v)| v.is_none()) {
            Some(defaults::BACKEND_METHOD)
        } else {
            p.first_choice(method_given)
        };
        let password = load_secret_text(
            "backend.password",
            file.backend.password_file.as_ref(),
            file.backend
                .password_env
                .as_deref()
                .or(Some(defaults::BACKEND_PASSWORD_ENV)),
            env,
            &mut p,
        );
        if let Some(m) = method
            && m != BackendMethod::Trust
            && password.is_none()
        {
            p.report(
                "backend.method",
                format_args!(
                    "{}: needs backend.password_file or {}",
                    m.to_possible_value()
                        .map(|v| v.get_name().to_string())
                        .unwrap_or_default(),
                    defaults::BACKEND_PASSWORD_ENV
                ),
            );
        }
        let admin_password = load_secret_text(
            "backend.admin_password",
            file.backend.admin_password_file.as_ref(),
            file.backend
                .admin_password_env
                .as_deref()
                .or(Some(defaults::BACKEND_ADMIN_PASSWORD_ENV)),
            env,
            &mut p,
        );
        let startup_parameters = crate::params::StartupParameters::new(
            file.backend.forward_parameters.unwrap_or_default(),
            file.backend.ignore_parameters.unwrap_or_default(),
        )
        .unwrap_or_else(|e| {
            p.push(e);
            crate::params::StartupParameters::default()
        });
        let mut backend = BackendConfig {
            addr: backend_addr,
            method: method.unwrap_or(defaults::BACKEND_METHOD),
            password,
            admin_user: file
                .backend
                .admin_user
                .unwrap_or_else(|| defaults::BACKEND_ADMIN_USER.into()),
            admin_password,
            connect_timeout: Duration::from_millis(positive(
                &mut p,
                "backend.connect_timeout_ms",
                file.backend.connect_timeout_ms,
                defaults::BACKEND_CONNECT_TIMEOUT_MS,
            )),
            pool_max_idle_per_key: file
                .backend
                .pool_max_idle_per_key
                .unwrap_or(defaults::POOL_MAX_IDLE_PER_KEY),
            pool_idle_timeout: Duration::from_secs(positive(
                &mut p,
                "backend.pool_idle_timeout_secs",
                file.backend.pool_idle_timeout_secs,
                defaults::POOL_IDLE_TIMEOUT_SECS,
            )),
            pool_max_idle_total: file
                .backend
                .pool_max_idle_total
                .unwrap_or(defaults::POOL_MAX_IDLE_TOTAL),
            startup_parameters,
            // Set below, once the roles are known.
            record_identity: false,
        };

        let auth_method = p
            .first_choice([
                ("auth.method", flags.auth_method),
                ("TEESQL_AUTH_METHOD", e("TEESQL_AUTH_METHOD")),
                ("auth.method", file.auth.method),
            ])
            .unwrap_or(defaults::AUTH_METHOD);
        let channel_binding = p
            .first_choice([
                ("TEESQL_CHANNEL_BINDING", e("TEESQL_CHANNEL_BINDING")),
                ("auth.channel_binding", file.auth.channel_binding),
            ])
            .unwrap_or(defaults::CHANNEL_BINDING);
        let read = load_cluster_secret(
            "auth.read_secret",
            file.auth.read_secret_file.as_ref(),
            file.auth
                .read_secret_env
                .as_deref()
                .unwrap_or(defaults::READ_SECRET_ENV),
            env,
            &mut p,
        );
        let readwrite = load_cluster_secret(
            "auth.readwrite_secret",
            file.auth.readwrite_secret_file.as_ref(),
            file.auth
                .readwrite_secret_env
                .as_deref()
                .unwrap_or(defaults::READWRITE_SECRET_ENV),
            env,
            &mut p,
        );
        let mut extra = Vec::new();
        let mut granted = Vec::new();
        for r in file.auth.roles {
            let what = format!("auth.roles[{}]", r.name);
            if !valid_role_name(&r.name) {
                p.report(&what, "role names are lowercase letters, digits and _");
            }
            let privileges = match r.privileges.as_deref() {
                None => Privileges::None,
                Some(v) => p
                    .choice(&format!("{what}.privileges"), v)
                    .unwrap_or(Privileges::None),
            };
            let attestation_only = r.attestation_only.unwrap_or(false);
            if r.granted.unwrap_or(false) {
                let secrets = match (&r.secret_file, &r.secret_env, attestation_only) {
                    (None, None, true) => Vec::new(),
                    (_, _, true) => {
                        p.report(
                            &what,
                            "attestation_only takes no secret (the grant alone logs in)",
                        );
                        Vec::new()
                    }
                    // Not the read-write secret: a tenant holding it could log in as
                    // teesql_readwrite from an application no tenant maps.
                    (None, None, false) => {
                        p.report(
                            &what,
                            "a granted role needs a secret of its own (secret_file or secret_env) or attestation_only = true",
                        );
                        Vec::new()
                    }
                    (f, env_name, false) => load_cluster_secret(
                        &what,
                        f.as_ref(),
                        env_name.as_deref().unwrap_or(""),
                        env,
                        &mut p,
                    )
                    .into_iter()
                    .collect(),
                };
                granted.push(GrantedRole {
                    name: r.name,
                    secrets,
                    privileges,
                    attestation_only,
                });
                continue;
            }
            if attestation_only {
                p.report(&what, "attestation_only needs granted = true");
            }
            let secret = match (&r.secret_file, &r.secret_env) {
                (None, None) => {
                    p.report(&what, "needs secret_file or secret_env");
                    None
                }
                (f, env_name) => load_cluster_secret(
                    &what,
                    f.as_ref(),
                    env_name.as_deref().unwrap_or(""),
                    env,
                    &mut p,
                ),
            };
            if let Some(s) = secret {
                extra.push((r.name, s, privileges));
            }
        }
        let passthrough = file.auth.passthrough_roles.unwrap_or_default();
        let tenant_user = file
            .auth
            .tenant_user
            .unwrap_or_else(|| defaults::TENANT_USER.to_string());
        if !valid_role_name(&tenant_user) {
            p.report(
                "auth.tenant_user",
                "role names are lowercase letters, digits and _",
            );
        }
        // A granted role or the tenant user must not be a name that means something else:
        // the cluster roles, a passthrough role (Postgres would authenticate it, and no
        // grant would be checked), the admin, Postgres' own pg_ roles.
        let reserved = |name: &str| {
            is_reserved_role(name, &backend.admin_user, |n| {
                passthrough.iter().any(|p| p == n)
            })
        };
        for g in &granted {
            if reserved(&g.name) || g.name == tenant_user {
                p.report(
                    &format!("auth.roles[{}]", g.name),
                    "a granted role cannot be a cluster role, a passthrough role, the admin user, a pg_ role or auth.tenant_user",
                );
            }
        }
        if !granted.is_empty()
            && (reserved(&tenant_user) || extra.iter().any(|(n, _, _)| *n == tenant_user))
        {
            p.report(
                "auth.tenant_user",
                "must be a name of its own, not a role clients log in as",
            );
        }
        backend.record_identity = file.backend.record_identity.unwrap_or(!granted.is_empty());
        if read.is_none()
            && readwrite.is_none()
            && extra.is_empty()
            && granted.is_empty()
            && passthrough.is_empty()
        {
            p.push(
                "no client can log in: set TEESQL_READ_SECRET / TEESQL_READWRITE_SECRET (or auth.*_secret_file), extra roles, or passthrough_roles",
            );
        }

        let l = file.limits;
        if l.handshake_timeout_secs.is_some() {
            p.report(
                "limits.handshake_timeout_secs",
                "replaced by tls_handshake_timeout_secs (accept to TLS), startup_timeout_secs (TLS to StartupMessage) and login_timeout_secs (StartupMessage to logged in)",
            );
        }
        let secs = |p: &mut Problems, key: &str, v: Option<u64>, default: u64| {
            Duration::from_secs(positive(p, key, v, default))
        };
        let limits = Limits {
            max_connections: p.at_least(
                "limits.max_connections",
                first([flags.max_connections, l.max_connections])
                    .unwrap_or(defaults::MAX_CONNECTIONS),
                1,
            ),
            tls_handshake_timeout: secs(
                &mut p,
                "limits.tls_handshake_timeout_secs",
                l.tls_handshake_timeout_secs,
                defaults::TLS_HANDSHAKE_TIMEOUT_SECS,
            ),
            startup_timeout: secs(
                &mut p,
                "limits.startup_timeout_secs",
                l.startup_timeout_secs,
                defaults::STARTUP_TIMEOUT_SECS,
            ),
            login_timeout: secs(
                &mut p,
                "limits.login_timeout_secs",
                l.login_timeout_secs,
                defaults::LOGIN_TIMEOUT_SECS,
            ),
            idle_timeout: match l.idle_timeout_secs.unwrap_or(defaults::IDLE_TIMEOUT_SECS) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            shutdown_grace: Duration::from_secs(
                l.shutdown_grace_secs
                    .unwrap_or(defaults::SHUTDOWN_GRACE_SECS),
            ),
            address: AddressLimits {
                failed_auth_per_minute: p.at_least(
                    "limits.failed_auth_per_minute",
                    l.failed_auth_per_minute
                        .unwrap_or(defaults::FAILED_AUTH_PER_MINUTE),
                    1,
                ),
                abandoned_per_minute: p.at_least(
                    "limits.abandoned_per_minute",
                    l.abandoned_per_minute
                        .unwrap_or(defaults::ABANDONED_PER_MINUTE),
                    1,
                ),
                handshakes_per_address: p.at_least(
                    "limits.handshakes_per_address",
                    l.handshakes_per_address
                        .unwrap_or(defaults::HANDSHAKES_PER_ADDRESS),
                    1,
                ),
            },
            first_packet_timeout: secs(
                &mut p,
                "limits.first_packet_timeout_secs",
                l.first_packet_timeout_secs,
                defaults::FIRST_PACKET_TIMEOUT_SECS,
            ),
            http: HttpLimits {
                max_connections: p.at_least(
                    "limits.http_max_connections",
                    l.http_max_connections
                        .unwrap_or(defaults::HTTP_MAX_CONNECTIONS),
                    1,
                ),
                max_per_address: p.at_least(
                    "limits.http_connections_per_address",
                    l.http_connections_per_address
                        .unwrap_or(defaults::HTTP_CONNECTIONS_PER_ADDRESS),
                    1,
                ),
                header_timeout: secs(
                    &mut p,
                    "limits.http_header_timeout_secs",
                    l.http_header_timeout_secs,
                    defaults::HTTP_HEADER_TIMEOUT_SECS,
                ),
                connection_timeout: secs(
                    &mut p,
                    "limits.http_connection_timeout_secs",
                    l.http_connection_timeout_secs,
                    defaults::HTTP_CONNECTION_TIMEOUT_SECS,
                ),
            },
        };

        p.finish(|| {
            Some(Self {
                listen: listen?,
                admin_listen,
                public_listen,
                identity,
                verifier_url,
                verifier_trust,
                verifier_timeout,
                verifier_policy_hashes,
                backend,
                auth_method,
                channel_binding,
                auth: AuthMap::new(read, readwrite, extra, passthrough)
                    .with_granted(granted, tenant_user),
                limits,
            })
        })
    }

    /// Read a TOML file.
    pub fn read_file(path: &std::path::Path) -> Result<SidecarFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn valid_role_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A cluster secret: 32 bytes as 64 hex digits, from a file or the environment.
fn load_cluster_secret(
    what: &str,
    file: Option<&PathBuf>,
    env_name: &str,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<Secret> {
    let text = if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                p.report(what, format_args!("{}: {e}", path.display()));
                return None;
            }
        }
    } else {
        env.var(env_name)?
    };
    match Secret::from_hex(text.trim()) {
        Ok(s) => Some(s),
        Err(msg) => {
            p.report(what, msg);
            None
        }
    }
}

/// A password (any text), from a file or the environment.
fn load_secret_text(
    what: &str,
    file: Option<&PathBuf>,
    env_name: Option<&str>,
    env: &dyn Env,
    p: &mut Problems,
) -> Option<Secret> {
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(t) => Some(Secret::from_text(t.trim_end_matches(['\n', '\r']))),
            Err(e) => {
                p.report(what, format_args!("{}: {e}", path.display()));
                None
            }
        };
    }
    env_name
        .and_then(|n| env.var(n))
        .map(|t| Secret::from_text(&t))
}

/// Limits per client address on the Postgres port (`limits.*`).
#[derive(Debug, Clone, Copy)]
pub struct AddressLimits {
    /// Failed logins per (address, user) per minute.
    pub failed_auth_per_minute: u32,
    /// Abandoned handshakes per address per minute.
    pub abandoned_per_minute: u32,
    /// Handshakes in progress per address.
    pub handshakes_per_address: usize,
}

/// Bounds of one HTTP listener (`limits.http_*`).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Connections open at once from one client address (an IPv6 /64).
    pub max_per_address: usize,
    /// Time to receive a request's headers (slow clients are closed).
    pub header_timeout: Duration,
    /// Longest a connection may live, keep-alive included.
    pub connection_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_per_address: 32,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const S1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const S2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn defaults_with_secrets_from_env() {
        let c = SidecarConfig::resolve(
            SidecarFile::default(),
            &env(&[("TEESQL_READ_SECRET", S1), ("TEESQL_READWRITE_SECRET", S2)]),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:5433");
        assert_eq!(c.admin_listen.unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(c.public_listen, None);
        assert_eq!(c.backend.addr, BackendAddr::Tcp("127.0.0.1".into(), 5432));
        assert_eq!(c.auth_method, ClientAuthMethod::Scram);
        assert_eq!(c.channel_binding, ChannelBinding::Auto);
        assert_eq!(c.limits.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.limits.startup_timeout, Duration::from_secs(60));
        assert_eq!(c.limits.login_timeout, Duration::from_secs(10));
        assert!(c.auth.role("teesql_read").is_some());
    }

    #[test]
    fn granted_roles_need_a_second_factor_unless_attestation_only() {
        let file = |roles: &str| -> SidecarFile {
            toml::from_str(&format!("[auth]\ntenant_user = \"app\"\n{roles}")).unwrap()
        };
        // A secret of its own: both factors; never the read-write secret.
        let c = SidecarConfig::resolve(
            file("[[auth.roles]]\nname = \"tenant_a\"\ngranted = true\nsecret_env = \"A\"\n"),
            &env(&[("TEESQL_READWRITE_SECRET", S1), ("A", S2)]),
            Overrides::default(),
        )
        .unwrap();
        let role = c.auth.role("tenant_a").unwrap();
        assert!(role.granted && !role.attestation_only);
        assert!(role.check_cleartext(S2.as_bytes()));
        assert!(!role.check_cleartext(S1.as_bytes()));
        assert!(c.auth.needs_grant("app") && c.auth.needs_grant("tenant_a"));
        assert!(!c.auth.needs_grant("teesql_readwrite"));
        assert!(
            c.backend.record_identity,
            "on by default with granted roles"
        );

        let c = SidecarConfig::resolve(
            file("[[auth.roles]]\nname = \"tenant_a\"\ngranted = true\nattestation_only = true\n"),
            &env(&[("TEESQL_READ_SECRET", S2)]),
            Overrides::default(),
        )
        .unwrap();
        assert!(c.auth.role("tenant_a").unwrap().attestation_only);

        let errors = SidecarConfig::resolve(
            file(
                "[[auth.roles]]\nname = \"tenant_a\"\ngranted = true\n\
                 [[auth.roles]]\nname = \"tenant_b\"\nattestation_only = true\nsecret_env = \"X\"\n\
                 [[auth.roles]]\nname = \"tenant_c\"\ngranted = true\nattestation_only = true\nsecret_env = \"X\"\n",
            ),
            &env(&[("TEESQL_READ_SECRET", S2), ("X", S1)]),
            Overrides::default(),
        )
        .unwrap_err()
        .join("\n");
        for needle in [
            "auth.roles[tenant_a]: a granted role needs a secret of its own",
            "auth.roles[tenant_b]: attestation_only needs granted = true",
            "auth.roles[tenant_c]: attestation_only takes no secret",
        ] {
            assert!(errors.contains(needle), "{needle} missing in:\n{errors}");
        }

        // Names that mean something else are refused.
        let errors = SidecarConfig::resolve(
            toml::from_str(
                "[auth]\ntenant_user = \"teesql_read\"\npassthrough_roles = [\"postgres\"]\n\
                 [[auth.roles]]\nname = \"postgres\"\ngranted = true\nattestation_only = true\n\
                 [[auth.roles]]\nname = \"pg_monitor\"\ngranted = true\nattestation_only = true\n",
            )
            .unwrap(),
            &env(&[("TEESQL_READWRITE_SECRET", S1)]),
            Overrides::default(),
        )
        .unwrap_err()
        .join("\n");
        for needle in [
            "auth.roles[postgres]: a granted role cannot be",
            "auth.roles[pg_monitor]: a granted role cannot be",
            "auth.tenant_user: must be a name of its own",
        ] {
            assert!(errors.contains(needle), "{needle} missing in:\n{errors}");
        }

        // Without granted roles nothing needs a grant and no identity is recorded.
        let c = SidecarConfig::resolve(
            file(""),
            &env(&[("TEESQL_READ_SECRET", S2)]),
            Overrides::default(),
        )
        .unwrap();
        assert!(!c.auth.needs_grant("app"));
        assert!(!c.backend.record_identity);
    }

    #[test]
    fn every_bad_setting_is_reported_and_no_secret_leaks() {
        let file: SidecarFile = toml::from_str(
            r#"
            listen = { postgres = "nope", admin = "1.2.3.4" }
            verifier = { url = "grpc://x" }
            backend = { method = "kerberos" }
            auth = { method = "magic", read_secret_env = "R", channel_binding = "sometimes" }
            limits = { handshake_timeout_secs = 10 }
            "#,
        )
        .unwrap();
        let errors =
            SidecarConfig::resolve(file, &env(&[("R", "zz-secret-zz")]), Overrides::default())
                .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "listen \"nope\"",
            "admin listen",
            "verifier.url",
            "backend.method \"kerberos\": expected trust, password, md5 or scram-sha-256",
            "auth.method \"magic\": expected scram-sha-256 or cleartext",
            "auth.read_secret",
            "auth.channel_binding \"sometimes\": expected auto, always or never",
            "limits.handshake_timeout_secs: replaced by tls_handshake_timeout_secs",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
        assert!(!all.contains("zz-secret-zz"), "{all}");
    }

    #[test]
    fn flags_override_env_override_file() {
        let file: SidecarFile =
            toml::from_str("listen = { postgres = \"127.0.0.1:1\" }\nbackend = { port = 1 }")
                .unwrap();
        let c = SidecarConfig::resolve(
            file,
            &env(&[
                ("TEESQL_READ_SECRET", S1),
                ("TEESQL_SIDECAR_LISTEN", "127.0.0.1:2"),
                ("TEESQL_BACKEND_PORT", "2"),
            ]),
            Overrides {
                listen: Some("127.0.0.1:3".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.backend.addr, BackendAddr::Tcp("127.0.0.1".into(), 2));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<SidecarFile>("[auth]\nsecret = 1").is_err());
    }

    /// Each kind of bad value: an unparsable variable, a zero where at least 1 is
    /// needed, a value below its minimum, a bad choice in a role, a bad choice in a
    /// variable. Each names its key, and all come back together.
    #[test]
    fn every_kind_of_bad_value_names_its_key() {
        let file: SidecarFile = toml::from_str(
            r#"
            identity = { renew_secs = 5 }
            verifier = { timeout_ms = 0 }
            backend = { connect_timeout_ms = 0, pool_idle_timeout_secs = 0 }
            limits = { max_connections = 0, tls_handshake_timeout_secs = 0, startup_timeout_secs = 0, login_timeout_secs = 0, failed_auth_per_minute = 0, abandoned_per_minute = 0, handshakes_per_address = 0, first_packet_timeout_secs = 0, http_max_connections = 0, http_header_timeout_secs = 0, http_connection_timeout_secs = 0 }
            [[auth.roles]]
            name = "app"
            secret_env = "APP_SECRET"
            privileges = "all"
            "#,
        )
        .unwrap();
        let errors = SidecarConfig::resolve(
            file,
            &env(&[
                ("TEESQL_READ_SECRET", S1),
                ("APP_SECRET", S2),
                ("TEESQL_BACKEND_PORT", "54x2"),
                ("TEESQL_CHANNEL_BINDING", "maybe"),
            ]),
            Overrides::default(),
        )
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "TEESQL_BACKEND_PORT \"54x2\": invalid digit",
            "TEESQL_CHANNEL_BINDING \"maybe\": expected auto, always or never",
            "identity.renew_secs: 5 is below the minimum, 10",
            "verifier.timeout_ms: 0 is below the minimum, 1",
            "backend.connect_timeout_ms: 0 is below",
            "backend.pool_idle_timeout_secs: 0 is below",
            "limits.max_connections: 0 is below",
            "limits.tls_handshake_timeout_secs: 0 is below",
            "limits.startup_timeout_secs: 0 is below",
            "limits.login_timeout_secs: 0 is below",
            "limits.failed_auth_per_minute: 0 is below",
            "limits.abandoned_per_minute: 0 is below",
            "limits.handshakes_per_address: 0 is below",
            "limits.first_packet_timeout_secs: 0 is below",
            "limits.http_max_connections: 0 is below",
            "limits.http_header_timeout_secs: 0 is below",
            "limits.http_connection_timeout_secs: 0 is below",
            "auth.roles[app].privileges \"all\": expected read, readwrite or none",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
        assert_eq!(errors.len(), 18, "{all}");
    }

    #[test]
    fn choices_from_the_environment_and_their_aliases() {
        let c = SidecarConfig::resolve(
            SidecarFile::default(),
            &env(&[
                ("TEESQL_READ_SECRET", S1),
                ("TEESQL_AUTH_METHOD", "password"),
                ("TEESQL_BACKEND_METHOD", "scram-sha-256"),
                ("TEESQL_BACKEND_PASSWORD", "pw"),
                ("TEESQL_CHANNEL_BINDING", "never"),
            ]),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.auth_method, ClientAuthMethod::Cleartext);
        assert_eq!(c.backend.method, BackendMethod::ScramSha256);
        assert_eq!(c.channel_binding, ChannelBinding::Never);
    }
}

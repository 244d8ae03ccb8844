//! Sidecar configuration: a TOML file, environment variables over it, flags over those.
//! Every bad setting is reported at once; secrets never appear in any message.
//!
//! One file per section of the TOML file, each declaring its settings once (the file's
//! struct, read from the environment by the names in [`env`]) with a `resolve` that
//! checks them; [`SidecarConfig::resolve`] calls them in turn.

pub mod auth;
pub mod backend;
pub mod env;
pub mod identity;
pub mod limits;
pub mod listen;
pub mod verifier;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;
use teesql_proto::settings::shown::{Lines, SET, UNSET, list, path_or_unset, quote, url};
pub use teesql_proto::settings::{Env, ProcessEnv};
use teesql_proto::settings::{Problems, UnknownKeyHint};
use teesql_proto::transport::ServerTrust;

pub use self::auth::{AuthFile, ExtraRoleFile};
pub use self::backend::{BackendConfig, BackendFile};
pub use self::identity::{IdentityConfig, IdentityFile};
pub use self::limits::{AddressLimits, HttpLimits, Limits, LimitsFile};
pub use self::listen::ListenFile;
pub use self::verifier::{VerifierConfig, VerifierSettings};
use crate::auth::AuthMap;

/// The `[verifier]` table: the settings `forward` shares.
pub type VerifierFile = VerifierSettings;

/// The settings as they can be written: every field optional (file, env and flags merge).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarFile {
    /// `[listen]`: the Postgres port and the admin and public HTTP listeners.
    #[serde(default)]
    pub listen: ListenFile,
    /// `[identity]`: the server certificate's names and renewal.
    #[serde(default)]
    pub identity: IdentityFile,
    /// `[verifier]`: where the verifier is and how it is trusted.
    #[serde(default)]
    pub verifier: VerifierFile,
    /// `[backend]`: how Postgres is reached and logged in to, and connection reuse.
    #[serde(default)]
    pub backend: BackendFile,
    /// `[auth]`: client authentication, cluster secrets and extra roles.
    #[serde(default)]
    pub auth: AuthFile,
    /// `[limits]`: connection counts, deadlines and rates.
    #[serde(default)]
    pub limits: LimitsFile,
}

/// Where the sidecar logs in to Postgres.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendAddr {
    /// Host name or IP address and port (`backend.host` not starting with `/`).
    Tcp(String, u16),
    /// Unix socket directory and port (the socket is `<dir>/.s.PGSQL.<port>`).
    Unix(PathBuf, u16),
}

impl BackendAddr {
    /// For logs and errors: `host:port`, or the socket's full path.
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
    /// No password (pg_hba `trust`); if Postgres asks for one the login fails. The default.
    Trust,
    /// pg_hba `password`: the backend password in a cleartext PasswordMessage. Like every
    /// method but trust, it answers whichever of cleartext, MD5 or SCRAM Postgres asks for.
    Password,
    /// pg_hba `md5`: the backend password, MD5-hashed with the role name and Postgres' salt.
    Md5,
    /// pg_hba `scram-sha-256`: SASL with the backend password, without channel binding.
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
    /// `listen.postgres`: Postgres over TLS on every interface.
    pub const LISTEN: &str = "0.0.0.0:5433";
    /// `listen.admin`: the operator's HTTP listener, loopback only.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:8080";
    /// `listen.postgres_threads`: 0, the shared scheduler.
    pub const POSTGRES_THREADS: usize = 0;
    /// `identity.alt_names`: the server certificate's subject alternative names.
    pub const ALT_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];
    /// `identity.renew_secs`: seconds between server certificate renewals (one hour).
    pub const RENEW_SECS: u64 = 3600;
    /// The guest agent is not asked for a certificate more often than this.
    pub const MIN_RENEW_SECS: u64 = 10;
    /// `verifier.url`: a verifier on loopback, plaintext gRPC.
    pub const VERIFIER_URL: &str = "http://127.0.0.1:50051";
    /// `verifier.timeout_ms`: milliseconds one decision may take, in the sidecar.
    pub const VERIFIER_TIMEOUT_MS: u64 = 5000;
    /// `backend.host`: Postgres on loopback TCP.
    pub const BACKEND_HOST: &str = "127.0.0.1";
    /// `backend.port`: Postgres' standard port.
    pub const BACKEND_PORT: u16 = 5432;
    /// `backend.method`: trust, so no backend password is needed by default.
    pub const BACKEND_METHOD: super::BackendMethod = super::BackendMethod::Trust;
    /// `backend.admin_user`: the superuser for /attestation's Postgres state and `provision`.
    pub const BACKEND_ADMIN_USER: &str = "postgres";
    /// `backend.connect_timeout_ms`: milliseconds to connect and log in to Postgres.
    pub const BACKEND_CONNECT_TIMEOUT_MS: u64 = 5000;
    /// `backend.pool_max_idle_per_key`: 0 = connection reuse off.
    pub const POOL_MAX_IDLE_PER_KEY: usize = 0;
    /// `backend.pool_idle_timeout_secs`: seconds a kept connection waits for a client.
    pub const POOL_IDLE_TIMEOUT_SECS: u64 = 60;
    /// `backend.pool_max_idle_total`: kept connections over all pool keys.
    pub const POOL_MAX_IDLE_TOTAL: usize = 64;
    /// `auth.method`: SCRAM-SHA-256 (and -PLUS as `channel_binding` allows).
    pub const AUTH_METHOD: super::ClientAuthMethod = super::ClientAuthMethod::Scram;
    /// `auth.channel_binding`: -PLUS only to peers that negotiated ALPN `postgresql`.
    pub const CHANNEL_BINDING: super::ChannelBinding = super::ChannelBinding::Auto;
    /// `auth.read_secret_env`: the variable holding the read secret (64 hex digits).
    pub const READ_SECRET_ENV: &str = "TEESQL_READ_SECRET";
    /// `auth.readwrite_secret_env`: the variable holding the read-write secret (64 hex digits).
    pub const READWRITE_SECRET_ENV: &str = "TEESQL_READWRITE_SECRET";
    /// `auth.tenant_user`: the user name that lets the verifier's grants choose the role.
    pub const TENANT_USER: &str = "teesql_app";
    /// `backend.password_env`: the variable holding the backend password.
    pub const BACKEND_PASSWORD_ENV: &str = "TEESQL_BACKEND_PASSWORD";
    /// `backend.admin_password_env`: the variable holding the admin user's password.
    pub const BACKEND_ADMIN_PASSWORD_ENV: &str = "TEESQL_BACKEND_ADMIN_PASSWORD";
    /// `limits.max_connections`: concurrent client connections on the Postgres port.
    pub const MAX_CONNECTIONS: usize = 1000;
    /// `limits.tls_handshake_timeout_secs`: seconds from accept to an established TLS session.
    pub const TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
    /// `limits.startup_timeout_secs`: seconds after TLS for the StartupMessage (clients
    /// may first appraise the server's quote).
    pub const STARTUP_TIMEOUT_SECS: u64 = 60;
    /// `limits.login_timeout_secs`: seconds from the StartupMessage to a logged-in session.
    pub const LOGIN_TIMEOUT_SECS: u64 = 10;
    /// `limits.idle_timeout_secs`: 0 = idle sessions are never closed.
    pub const IDLE_TIMEOUT_SECS: u64 = 0;
    /// `limits.shutdown_grace_secs`: seconds sessions get to end on shutdown.
    pub const SHUTDOWN_GRACE_SECS: u64 = 30;
    /// `limits.failed_auth_per_minute`: failed logins per (client address, user).
    pub const FAILED_AUTH_PER_MINUTE: u32 = 30;
    /// `limits.abandoned_per_minute`: abandoned handshakes per client address.
    pub const ABANDONED_PER_MINUTE: u32 = 60;
    /// `limits.handshakes_per_address`: handshakes in progress per client address.
    pub const HANDSHAKES_PER_ADDRESS: usize = 256;
    /// `limits.first_packet_timeout_secs`: seconds from accept to the client's first packet.
    pub const FIRST_PACKET_TIMEOUT_SECS: u64 = 5;
    /// `limits.http_max_connections`: open connections per HTTP listener.
    pub const HTTP_MAX_CONNECTIONS: usize = 64;
    /// `limits.http_connections_per_address`: per client address (IPv6: a /64), per listener.
    pub const HTTP_CONNECTIONS_PER_ADDRESS: usize = 32;
    /// `limits.http_header_timeout_secs`: seconds to send an HTTP request's headers.
    pub const HTTP_HEADER_TIMEOUT_SECS: u64 = 5;
    /// `limits.http_connection_timeout_secs`: seconds an HTTP connection may live.
    pub const HTTP_CONNECTION_TIMEOUT_SECS: u64 = 30;
}

/// Checked configuration.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Where clients connect with Postgres over TLS (`listen.postgres`, default 0.0.0.0:5433).
    pub listen: SocketAddr,
    /// The operator's HTTP listener (/health, /attestation, /metrics); `None` = `off`.
    pub admin_listen: Option<SocketAddr>,
    /// The HTTP listener serving only /attestation to anyone; `None` = off (the default).
    pub public_listen: Option<SocketAddr>,
    /// Threads serving the Postgres port, each with its own listener and scheduler
    /// (`listen.postgres_threads`); 0 = the scheduler shared with the rest (the default).
    pub postgres_threads: usize,
    /// The server certificate the guest agent issues, and how often it is renewed.
    pub identity: IdentityConfig,
    /// Verifier gRPC URL(s), comma-separated when several (default http://127.0.0.1:50051).
    pub verifier_url: String,
    /// How an https verifier is trusted; `None` for a loopback http:// or a unix:// URL.
    pub verifier_trust: Option<ServerTrust>,
    /// Time limit of one verifier decision (`verifier.timeout_ms`, default 5000 ms).
    pub verifier_timeout: Duration,
    /// Policy hashes decisions may come from; empty = the first answer's.
    pub verifier_policy_hashes: Vec<String>,
    /// How the sidecar reaches and logs in to Postgres (`[backend]`).
    pub backend: BackendConfig,
    /// How clients authenticate (`auth.method`, default SCRAM-SHA-256).
    pub auth_method: ClientAuthMethod,
    /// When SCRAM-SHA-256-PLUS is offered (`auth.channel_binding`, default auto).
    pub channel_binding: ChannelBinding,
    /// The roles clients may log in as, with their secrets (`[auth]`, secrets loaded).
    pub auth: AuthMap,
    /// Connection counts, deadlines and rates (`[limits]`).
    pub limits: Limits,
    /// Where the secrets came from (never what they are), and the settings kept above
    /// only in a processed form: what [`Self::render`] shows.
    pub sources: Sources,
}

/// Where each secret came from, as `env NAME` or `file PATH` (`None`: not set), and the
/// settings [`SidecarConfig`] keeps only processed, as given: what `config check` shows.
/// It holds no secret.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The read secret (`auth.read_secret_file`, else `auth.read_secret_env`).
    pub read_secret: Option<String>,
    /// The read-write secret (`auth.readwrite_secret_file`, else `auth.readwrite_secret_env`).
    pub readwrite_secret: Option<String>,
    /// Each `[[auth.roles]]` secret, by role name.
    pub role_secrets: BTreeMap<String, String>,
    /// `auth.passthrough_roles`.
    pub passthrough_roles: Vec<String>,
    /// The backend password (`backend.password_file`, else `backend.password_env`).
    pub backend_password: Option<String>,
    /// The admin user's password (`backend.admin_password_file`, else `…_env`).
    pub backend_admin_password: Option<String>,
    /// `backend.forward_parameters`, as given.
    pub forward_parameters: Vec<String>,
    /// `backend.ignore_parameters`, as given.
    pub ignore_parameters: Vec<String>,
    /// The `[verifier]` settings, flags over environment over file, as given.
    pub verifier: VerifierSettings,
}

/// Where a secret read from `file`, else from the variable `env_name`, comes from.
fn secret_source(file: Option<&PathBuf>, env_name: &str, e: &dyn Env) -> Option<String> {
    match file {
        Some(path) => Some(format!("file {}", path.display())),
        None => e.var(env_name).map(|_| format!("env {env_name}")),
    }
}

/// Flag values (each overrides the file and the environment).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`: the Postgres listen address, over `TEESQL_SIDECAR_LISTEN` and `listen.postgres`.
    pub listen: Option<String>,
    /// `--admin-listen`: the admin HTTP address or `off`, over `TEESQL_SIDECAR_ADMIN_LISTEN`.
    pub admin_listen: Option<String>,
    /// `--backend-host`: Postgres host, or a unix socket directory if it starts with `/`.
    pub backend_host: Option<String>,
    /// `--backend-port`, over `TEESQL_BACKEND_PORT` and `backend.port`.
    pub backend_port: Option<u16>,
    /// One of `BackendMethod`'s choices, checked with every other setting.
    pub backend_method: Option<String>,
    /// One of `ClientAuthMethod`'s choices, checked with every other setting.
    pub auth_method: Option<String>,
    /// `--alt-names` (comma-separated), over `TEESQL_SIDECAR_ALT_NAMES` and `identity.alt_names`.
    pub alt_names: Option<Vec<String>>,
    /// `--max-connections`, over `limits.max_connections` (no environment variable).
    pub max_connections: Option<usize>,
    /// `--verifier`, `--verifier-ca-file`, … (over `TEESQL_VERIFIER_*`).
    pub verifier: VerifierSettings,
}

/// A whole number of seconds (or milliseconds) at least 1.
fn positive(p: &mut Problems, key: &str, value: Option<u64>, default: u64) -> u64 {
    p.at_least(key, value.unwrap_or(default), 1)
}

/// Why a configuration file cannot be read ([`SidecarConfig::read_file`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the configuration in TOML.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's error.
        #[source]
        source: toml::de::Error,
    },
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
        let mut flags = flags;
        let (auth, backend) = (&file.auth, &file.backend);
        let mut sources = Sources {
            read_secret: secret_source(
                auth.read_secret_file.as_ref(),
                auth.read_secret_env.as_deref().unwrap_or(env::READ_SECRET),
                env,
            ),
            readwrite_secret: secret_source(
                auth.readwrite_secret_file.as_ref(),
                auth.readwrite_secret_env
                    .as_deref()
                    .unwrap_or(env::READWRITE_SECRET),
                env,
            ),
            role_secrets: auth
                .roles
                .iter()
                .filter_map(|r| {
                    let from = r.secret_env.as_deref().unwrap_or_default();
                    secret_source(r.secret_file.as_ref(), from, env).map(|s| (r.name.clone(), s))
                })
                .collect(),
            passthrough_roles: auth.passthrough_roles.clone().unwrap_or_default(),
            backend_password: secret_source(
                backend.password_file.as_ref(),
                backend
                    .password_env
                    .as_deref()
                    .unwrap_or(env::BACKEND_PASSWORD),
                env,
            ),
            backend_admin_password: secret_source(
                backend.admin_password_file.as_ref(),
                backend
                    .admin_password_env
                    .as_deref()
                    .unwrap_or(env::BACKEND_ADMIN_PASSWORD),
                env,
            ),
            forward_parameters: backend.forward_parameters.clone().unwrap_or_default(),
            ignore_parameters: backend.ignore_parameters.clone().unwrap_or_default(),
            verifier: VerifierSettings::default(),
        };
        let (listen, admin_listen, public_listen, postgres_threads) =
            file.listen.resolve(env, &mut flags, &mut p);
        let identity = file.identity.resolve(env, &mut flags, &mut p);
        let verifier_settings = std::mem::take(&mut flags.verifier)
            .over(VerifierSettings::from_env(env, &mut p))
            .over(file.verifier);
        sources.verifier = verifier_settings.clone();
        let verifier = verifier_settings.check(
            env,
            Duration::from_millis(defaults::VERIFIER_TIMEOUT_MS),
            &|k| format!("verifier.{k}"),
            &mut p,
        );
        let record_identity = file.backend.record_identity;
        let mut backend = file.backend.resolve(env, &mut flags, &mut p);
        let auth = file
            .auth
            .resolve(env, &mut flags, &backend.admin_user, &mut p);
        backend.record_identity = record_identity.unwrap_or(auth.map.has_granted());
        let limits = file.limits.resolve(&mut flags, &mut p);
        p.finish(|| {
            let verifier = verifier?;
            Some(Self {
                listen: listen?,
                admin_listen,
                public_listen,
                postgres_threads,
                identity,
                verifier_url: verifier.url,
                verifier_trust: verifier.trust,
                verifier_timeout: verifier.timeout,
                verifier_policy_hashes: verifier.policy_hashes,
                backend,
                auth_method: auth.method,
                channel_binding: auth.channel_binding,
                auth: auth.map,
                limits,
                sources,
            })
        })
    }

    /// Read a TOML file.
    pub fn read_file(path: &std::path::Path) -> Result<SidecarFile, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Read a TOML file, with every problem in it: each key the file cannot have
    /// (unknown, or a value of the wrong type) is a problem naming the file and the key,
    /// and is left out, so that the rest of the file, the environment and the flags are
    /// checked too and one run names every bad key.
    pub fn read_file_checked(path: &Path) -> (SidecarFile, Vec<String>) {
        teesql_proto::settings::read_toml(path, UnknownKeyHint::KnownKeys)
    }

    /// The configuration as `key = value` lines under the file's `[tables]`, every
    /// secret as `<set>` or `<unset>` (with where it came from), never its value.
    pub fn render(&self) -> String {
        let mut o = Lines::default();
        let listener = |a: Option<SocketAddr>| quote(&a.map_or("off".into(), |a| a.to_string()));

        o.table("listen");
        o.kv("postgres", quote(&self.listen.to_string()));
        o.kv("admin", listener(self.admin_listen));
        o.kv("public", listener(self.public_listen));
        o.kv("postgres_threads", self.postgres_threads);

        o.table("identity");
        let id = &self.identity;
        o.kv("subject", quote(&id.subject));
        o.kv("alt_names", list(&id.alt_names));
        o.kv("renew_secs", id.renew_every.as_secs());
        match &id.endpoint {
            Some(e) => o.kv("endpoint", url(e)),
            None => o.note(
                "endpoint",
                UNSET,
                "DSTACK_SIMULATOR_ENDPOINT, else /var/run/dstack.sock",
            ),
        }

        o.table("verifier");
        let v = &self.sources.verifier;
        o.kv("url", url(&self.verifier_url));
        o.kv("timeout_ms", self.verifier_timeout.as_millis());
        if self.verifier_policy_hashes.is_empty() {
            o.note("policy_hashes", "[]", "the first answer's");
        } else {
            o.kv("policy_hashes", list(&self.verifier_policy_hashes));
        }
        o.kv("ca_file", path_or_unset(v.ca_file.as_deref()));
        o.kv(
            "cert_sha256",
            v.cert_sha256.as_deref().map_or(UNSET.into(), quote),
        );
        o.kv(
            "identity_policy_dir",
            path_or_unset(v.identity_policy_dir.as_deref()),
        );
        if v.identity_policy_dir.is_some() {
            o.kv(
                "identity_trust_root",
                path_or_unset(v.identity_trust_root.as_deref()),
            );
            o.kv(
                "identity_dev_trust_root",
                path_or_unset(v.identity_dev_trust_root.as_deref()),
            );
            o.kv(
                "identity_pccs_url",
                v.identity_pccs_url.as_deref().map_or(UNSET.into(), url),
            );
        }
        if self.verifier_trust.is_none() {
            o.comment("a loopback http:// or unix:// verifier: no certificate to trust");
        }

        o.table("backend");
        let b = &self.backend;
        let (host, port) = match &b.addr {
            BackendAddr::Tcp(h, p) => (h.clone(), *p),
            BackendAddr::Unix(d, p) => (d.display().to_string(), *p),
        };
        o.kv("host", quote(&host));
        o.kv("port", port);
        o.kv("method", quote(&choice(b.method)));
        o.secret("password", self.sources.backend_password.as_deref());
        o.kv("admin_user", quote(&b.admin_user));
        o.secret(
            "admin_password",
            self.sources.backend_admin_password.as_deref(),
        );
        o.kv("connect_timeout_ms", b.connect_timeout.as_millis());
        o.kv("pool_max_idle_per_key", b.pool_max_idle_per_key);
        o.kv("pool_idle_timeout_secs", b.pool_idle_timeout.as_secs());
        o.kv("pool_max_idle_total", b.pool_max_idle_total);
        o.kv("forward_parameters", list(&self.sources.forward_parameters));
        o.kv("ignore_parameters", list(&self.sources.ignore_parameters));
        o.kv("record_identity", b.record_identity);

        o.table("auth");
        o.kv("method", quote(&choice(self.auth_method)));
        o.kv("channel_binding", quote(&choice(self.channel_binding)));
        o.secret("read_secret", self.sources.read_secret.as_deref());
        o.secret("readwrite_secret", self.sources.readwrite_secret.as_deref());
        o.kv("passthrough_roles", list(&self.sources.passthrough_roles));
        match self.auth.tenant_user() {
            Some(u) => o.kv("tenant_user", quote(u)),
            None => o.note("tenant_user", UNSET, "no granted roles"),
        }
        o.comment("the roles clients log in as");
        for role in self.auth.roles() {
            let mut fields = vec![format!("privileges = {}", quote(&choice(role.privileges)))];
            if role.granted {
                fields.push("granted = true".into());
            }
            if role.attestation_only {
                fields.push("attestation_only = true".into());
            } else {
                fields.push(format!("secret = {SET}"));
            }
            let line = format!("{{ {} }}", fields.join(", "));
            let from = match role.name.as_str() {
                "teesql_read" => Some("the read or the read-write secret".to_string()),
                "teesql_readwrite" => Some("the read-write secret".to_string()),
                name => self.sources.role_secrets.get(name).cloned(),
            };
            let key = format!("roles.{}", role.name);
            match from {
                Some(from) if !role.attestation_only => o.note(&key, line, &from),
                _ => o.kv(&key, line),
            }
        }

        o.table("limits");
        let l = &self.limits;
        o.kv("max_connections", l.max_connections);
        o.kv(
            "tls_handshake_timeout_secs",
            l.tls_handshake_timeout.as_secs(),
        );
        o.kv("startup_timeout_secs", l.startup_timeout.as_secs());
        o.kv("login_timeout_secs", l.login_timeout.as_secs());
        o.kv(
            "idle_timeout_secs",
            l.idle_timeout.map_or(0, |d| d.as_secs()),
        );
        o.kv(
            "session_max_age_secs",
            l.session_max_age.map_or(0, |d| d.as_secs()),
        );
        o.kv(
            "revalidate_on_unavailable",
            quote(&choice(l.revalidate_on_unavailable)),
        );
        o.kv("shutdown_grace_secs", l.shutdown_grace.as_secs());
        o.kv("failed_auth_per_minute", l.address.failed_auth_per_minute);
        o.kv("abandoned_per_minute", l.address.abandoned_per_minute);
        o.kv("handshakes_per_address", l.address.handshakes_per_address);
        o.kv(
            "first_packet_timeout_secs",
            l.first_packet_timeout.as_secs(),
        );
        o.kv("http_max_connections", l.http.max_connections);
        o.kv("http_connections_per_address", l.http.max_per_address);
        o.kv("http_header_timeout_secs", l.http.header_timeout.as_secs());
        o.kv(
            "http_connection_timeout_secs",
            l.http.connection_timeout.as_secs(),
        );
        o.finish()
    }
}

/// The name a choice is written with (`scram-sha-256`).
fn choice<T: ValueEnum>(v: T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
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

    /// `listen.postgres_threads`: 0 by default, the variable over the file, and a
    /// thread count meant per connection refused by name.
    #[test]
    fn postgres_threads_default_env_and_bound() {
        let read = [("TEESQL_READ_SECRET", S1)];
        let c = SidecarConfig::resolve(SidecarFile::default(), &env(&read), Overrides::default())
            .unwrap();
        assert_eq!(c.postgres_threads, 0);
        let file: SidecarFile = toml::from_str("[listen]\npostgres_threads = 4").unwrap();
        let c = SidecarConfig::resolve(file.clone(), &env(&read), Overrides::default()).unwrap();
        assert_eq!(c.postgres_threads, 4);
        assert!(
            c.render().contains("postgres_threads = 4"),
            "{}",
            c.render()
        );
        let c = SidecarConfig::resolve(
            file,
            &env(&[read[0], ("TEESQL_SIDECAR_POSTGRES_THREADS", "2")]),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.postgres_threads, 2);
        let file: SidecarFile = toml::from_str("[listen]\npostgres_threads = 5000").unwrap();
        let errors = SidecarConfig::resolve(file, &env(&read), Overrides::default()).unwrap_err();
        assert!(
            errors
                .join("\n")
                .contains("listen.postgres_threads: 5000 is above 256"),
            "{errors:?}"
        );
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
                ("TEESQL_AUTH_CHANNEL_BINDING", "maybe"),
            ]),
            Overrides::default(),
        )
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "TEESQL_BACKEND_PORT \"54x2\": invalid digit",
            "TEESQL_AUTH_CHANNEL_BINDING \"maybe\": expected auto, always or never",
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
                // Its name until 2026-12, still read (with a notice).
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

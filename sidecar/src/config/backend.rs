//! `[backend]`: how the sidecar reaches and logs in to Postgres, and what it keeps.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;
use teesql_proto::settings::{Env, Problems, first};

use super::{BackendAddr, BackendMethod, Overrides, defaults, env, positive};
use crate::auth::Secret;

/// The `[backend]` table as written; every key optional.
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
    /// Or the variable holding that password, read when `password_file` is unset
    /// [default: TEESQL_BACKEND_PASSWORD].
    pub password_env: Option<String>,
    /// Superuser for /attestation's Postgres state and for `provision` [default: postgres].
    pub admin_user: Option<String>,
    /// File holding the admin user's password (trailing newline dropped); over `admin_password_env`.
    pub admin_password_file: Option<PathBuf>,
    /// Variable holding the admin user's password [default: TEESQL_BACKEND_ADMIN_PASSWORD].
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

/// The `[backend]` settings, checked, with the passwords loaded.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Where Postgres is: TCP, or a unix socket when `backend.host` starts with `/`.
    pub addr: BackendAddr,
    /// How the sidecar logs in to Postgres (default trust).
    pub method: BackendMethod,
    /// Password of the sidecar-managed roles; `None` when neither the file nor the
    /// variable gives one (only valid with `trust`).
    pub password: Option<Secret>,
    /// The superuser for /attestation's Postgres state and `provision` (default `postgres`).
    pub admin_user: String,
    /// The admin user's password; `None` = log in without one.
    pub admin_password: Option<Secret>,
    /// Time limit to connect and log in to Postgres (`backend.connect_timeout_ms`, default 5 s).
    pub connect_timeout: Duration,
    /// Idle connections kept per (role, database, parameters); 0 = no reuse (the default).
    pub pool_max_idle_per_key: usize,
    /// Idle connections kept over all keys (default 64).
    pub pool_max_idle_total: usize,
    /// How long a kept connection may wait for a client before it is closed (default 60 s).
    pub pool_idle_timeout: Duration,
    /// Which client startup parameters are passed on, and which are ignored.
    pub startup_parameters: crate::params::StartupParameters,
    /// Record each session's attested identity (`teesql.session_identity`).
    pub record_identity: bool,
}

impl BackendFile {
    /// Everything but `record_identity`, which depends on the roles (set by `resolve`).
    pub(super) fn resolve(
        self,
        e: &dyn Env,
        flags: &mut Overrides,
        p: &mut Problems,
    ) -> BackendConfig {
        let host = first([
            flags.backend_host.take(),
            e.var(env::BACKEND_HOST),
            self.host,
        ])
        .unwrap_or_else(|| defaults::BACKEND_HOST.into());
        let port = first([
            flags.backend_port.take(),
            p.env(e, env::BACKEND_PORT),
            self.port,
        ])
        .unwrap_or(defaults::BACKEND_PORT);
        let addr = if host.starts_with('/') {
            BackendAddr::Unix(PathBuf::from(host), port)
        } else {
            BackendAddr::Tcp(host, port)
        };
        let method_given = [
            ("backend.method", flags.backend_method.take()),
            (env::BACKEND_METHOD, e.var(env::BACKEND_METHOD)),
            ("backend.method", self.method),
        ];
        let method = if method_given.iter().all(|(_, v)| v.is_none()) {
            Some(defaults::BACKEND_METHOD)
        } else {
            p.first_choice(method_given)
        };
        let password = load_secret_text(
            "backend.password",
            self.password_file.as_ref(),
            self.password_env.as_deref().or(Some(env::BACKEND_PASSWORD)),
            e,
            p,
        );
        if let Some(m) = method
            && m != BackendMethod::Trust
            && password.is_none()
        {
            let name = m.to_possible_value().map(|v| v.get_name().to_string());
            p.report(
                "backend.method",
                format_args!(
                    "{}: needs backend.password_file or {}",
                    name.unwrap_or_default(),
                    env::BACKEND_PASSWORD
                ),
            );
        }
        let admin_password = load_secret_text(
            "backend.admin_password",
            self.admin_password_file.as_ref(),
            self.admin_password_env
                .as_deref()
                .or(Some(env::BACKEND_ADMIN_PASSWORD)),
            e,
            p,
        );
        let startup_parameters = crate::params::StartupParameters::new(
            self.forward_parameters.unwrap_or_default(),
            self.ignore_parameters.unwrap_or_default(),
        )
        .unwrap_or_else(|problem| {
            p.push(problem);
            crate::params::StartupParameters::default()
        });
        BackendConfig {
            addr,
            method: method.unwrap_or(defaults::BACKEND_METHOD),
            password,
            admin_user: self
                .admin_user
                .unwrap_or_else(|| defaults::BACKEND_ADMIN_USER.into()),
            admin_password,
            connect_timeout: Duration::from_millis(positive(
                p,
                "backend.connect_timeout_ms",
                self.connect_timeout_ms,
                defaults::BACKEND_CONNECT_TIMEOUT_MS,
            )),
            pool_max_idle_per_key: self
                .pool_max_idle_per_key
                .unwrap_or(defaults::POOL_MAX_IDLE_PER_KEY),
            pool_idle_timeout: Duration::from_secs(positive(
                p,
                "backend.pool_idle_timeout_secs",
                self.pool_idle_timeout_secs,
                defaults::POOL_IDLE_TIMEOUT_SECS,
            )),
            pool_max_idle_total: self
                .pool_max_idle_total
                .unwrap_or(defaults::POOL_MAX_IDLE_TOTAL),
            startup_parameters,
            // Set by the caller once the roles are known (`record_identity` above).
            record_identity: false,
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

//! `[auth]`: how clients authenticate to the sidecar, and the roles they may log in as.

use std::path::PathBuf;

use serde::Deserialize;
use teesql_proto::settings::{Env, Problems};

use super::{ChannelBinding, ClientAuthMethod, Overrides, defaults, env};
use crate::auth::{AuthMap, GrantedRole, Privileges, Secret, is_reserved_role};

/// The `[auth]` table as written; every key optional.
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
    /// The variable holding the read secret, read when `read_secret_file` is unset.
    pub read_secret_env: Option<String>,
    /// The read-write secret [default env: TEESQL_READWRITE_SECRET].
    pub readwrite_secret_file: Option<PathBuf>,
    /// The variable holding the read-write secret, read when `readwrite_secret_file` is unset.
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

/// One `[[auth.roles]]` entry: a role clients may log in as beside the cluster roles.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraRoleFile {
    /// The Postgres role name: lowercase letters, digits and `_`, at most 63 bytes.
    pub name: String,
    /// File holding the role's secret (32 bytes as 64 hex digits); over `secret_env`.
    pub secret_file: Option<PathBuf>,
    /// Variable holding the role's secret (64 hex digits); one of the two is needed
    /// unless the role is `attestation_only`.
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

/// The `[auth]` settings, checked.
#[derive(Debug)]
pub(super) struct AuthConfig {
    pub method: ClientAuthMethod,
    pub channel_binding: ChannelBinding,
    pub map: AuthMap,
}

impl AuthFile {
    /// `admin_user` is the backend's: no client role may take its name.
    pub(super) fn resolve(
        self,
        e: &dyn Env,
        flags: &mut Overrides,
        admin_user: &str,
        p: &mut Problems,
    ) -> AuthConfig {
        let method = p
            .first_choice([
                ("auth.method", flags.auth_method.take()),
                (env::AUTH_METHOD, e.var(env::AUTH_METHOD)),
                ("auth.method", self.method),
            ])
            .unwrap_or(defaults::AUTH_METHOD);
        let channel_binding_env =
            p.var_renamed(e, env::AUTH_CHANNEL_BINDING, env::AUTH_CHANNEL_BINDING_WAS);
        let channel_binding = p
            .first_choice([
                (env::AUTH_CHANNEL_BINDING, channel_binding_env),
                ("auth.channel_binding", self.channel_binding),
            ])
            .unwrap_or(defaults::CHANNEL_BINDING);
        let read = load_cluster_secret(
            "auth.read_secret",
            self.read_secret_file.as_ref(),
            self.read_secret_env.as_deref().unwrap_or(env::READ_SECRET),
            e,
            p,
        );
        let readwrite = load_cluster_secret(
            "auth.readwrite_secret",
            self.readwrite_secret_file.as_ref(),
            self.readwrite_secret_env
                .as_deref()
                .unwrap_or(env::READWRITE_SECRET),
            e,
            p,
        );
        let (extra, granted) = roles(self.roles, e, p);
        let passthrough = self.passthrough_roles.unwrap_or_default();
        let tenant_user = self
            .tenant_user
            .unwrap_or_else(|| defaults::TENANT_USER.to_string());
        check_names(admin_user, &passthrough, &extra, &granted, &tenant_user, p);
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
        AuthConfig {
            method,
            channel_binding,
            map: AuthMap::new(read, readwrite, extra, passthrough)
                .with_granted(granted, tenant_user),
        }
    }
}

/// The extra roles (each with its own secret) and the granted roles, checked.
fn roles(
    given: Vec<ExtraRoleFile>,
    e: &dyn Env,
    p: &mut Problems,
) -> (Vec<(String, Secret, Privileges)>, Vec<GrantedRole>) {
    let mut extra = Vec::new();
    let mut granted = Vec::new();
    for r in given {
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
                (f, env_name, false) => {
                    load_cluster_secret(&what, f.as_ref(), env_name.as_deref().unwrap_or(""), e, p)
                        .into_iter()
                        .collect()
                }
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
            (f, env_name) => {
                load_cluster_secret(&what, f.as_ref(), env_name.as_deref().unwrap_or(""), e, p)
            }
        };
        if let Some(s) = secret {
            extra.push((r.name, s, privileges));
        }
    }
    (extra, granted)
}

/// A granted role or the tenant user must not be a name that means something else: the
/// cluster roles, a passthrough role (Postgres would authenticate it, and no grant would
/// be checked), the admin, Postgres' own pg_ roles.
fn check_names(
    admin_user: &str,
    passthrough: &[String],
    extra: &[(String, Secret, Privileges)],
    granted: &[GrantedRole],
    tenant_user: &str,
    p: &mut Problems,
) {
    if !valid_role_name(tenant_user) {
        p.report(
            "auth.tenant_user",
            "role names are lowercase letters, digits and _",
        );
    }
    let reserved =
        |name: &str| is_reserved_role(name, admin_user, |n| passthrough.iter().any(|p| p == n));
    for g in granted {
        if reserved(&g.name) || g.name == tenant_user {
            p.report(
                &format!("auth.roles[{}]", g.name),
                "a granted role cannot be a cluster role, a passthrough role, the admin user, a pg_ role or auth.tenant_user",
            );
        }
    }
    if !granted.is_empty()
        && (reserved(tenant_user) || extra.iter().any(|(n, _, _)| n == tenant_user))
    {
        p.report(
            "auth.tenant_user",
            "must be a name of its own, not a role clients log in as",
        );
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

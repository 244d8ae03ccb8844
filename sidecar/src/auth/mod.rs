//! Client authentication: cluster secrets, the role map, SCRAM and cleartext checks.
//!
//! `teesql_read` accepts the read secret or the read-write secret (downgrade is allowed),
//! `teesql_readwrite` only the read-write secret, extra roles their own secret. The
//! password a client sends is the secret as 64 hex digits. Comparisons are constant time,
//! and SCRAM verifiers are computed once, at start-up.

pub mod scram;
pub mod scram_client;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use scram::{DEFAULT_ITERATIONS, ScramVerifier};

/// Why a cluster secret is refused ([`Secret::from_hex`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Not hex.
    #[error("must be 64 hex digits (a 32-byte secret, e.g. from `openssl rand -hex 32`)")]
    NotHex,
    /// Hex, but not 32 bytes of it.
    #[error("must be 32 bytes (64 hex digits), got {0} bytes")]
    WrongLength(usize),
}

/// Secret bytes. `Debug` and `Display` never show them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// A cluster secret: exactly 32 bytes written as 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let bytes = hex::decode(text).map_err(|_| SecretError::NotHex)?;
        if bytes.len() != 32 {
            return Err(SecretError::WrongLength(bytes.len()));
        }
        Ok(Self(bytes.into()))
    }

    /// Any text (backend passwords).
    pub fn from_text(text: &str) -> Self {
        Self(text.as_bytes().into())
    }

    /// The raw bytes (32 for a cluster secret, the UTF-8 text for a password); never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The password form of a cluster secret: 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

/// What `provision` grants a role (SEED.md roles table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Privileges {
    /// SELECT on schema public, including future tables.
    Read,
    /// SELECT, INSERT, UPDATE, DELETE, CREATE on schema public.
    #[value(name = "readwrite")]
    ReadWrite,
    /// Login only.
    None,
}

/// One role clients can log in as with a secret.
pub struct RoleAuth {
    /// The Postgres role name, e.g. `teesql_read`.
    pub name: String,
    /// What `provision` grants it (`teesql_read`: read, `teesql_readwrite`: readwrite).
    pub privileges: Privileges,
    /// Only with the verifier's grant (`grants.roles`).
    pub granted: bool,
    /// With `granted`: no secret is asked.
    pub attestation_only: bool,
    accepted: Vec<Secret>,
    scram: ScramVerifier,
    /// For a granted role: its secrets under the tenant user's decoy salt, used when a
    /// client logs in as the tenant user. A refused tenant-user login gets the decoy of
    /// that name, so the salt a peer sees is the same whether or not it is granted.
    scram_as_tenant_user: Option<ScramVerifier>,
}

/// Whether `name` already means something a granted (tenant) role must not be: a cluster
/// role, the admin user, one of Postgres' own `pg_` roles, or a passthrough role (Postgres
/// would authenticate it, and no grant would be checked).
pub fn is_reserved_role(
    name: &str,
    admin_user: &str,
    is_passthrough: impl Fn(&str) -> bool,
) -> bool {
    name == "teesql_read"
        || name == "teesql_readwrite"
        || name == admin_user
        || name.starts_with("pg_")
        || is_passthrough(name)
}

/// SCRAM verifiers of `accepted` secrets in both of their password forms (lower- and
/// upper-case hex) under `salt`.
fn scram_verifier(accepted: &[Secret], salt: &[u8]) -> ScramVerifier {
    let forms: Vec<String> = accepted
        .iter()
        .flat_map(|s| {
            let hex = s.to_hex();
            [hex.clone(), hex.to_ascii_uppercase()]
        })
        .collect();
    let passwords: Vec<&[u8]> = forms.iter().map(|s| s.as_bytes()).collect();
    ScramVerifier::new(&passwords, salt, DEFAULT_ITERATIONS)
}

/// A role a client may log in as only when the verifier's decision grants it.
#[derive(Debug, Clone)]
pub struct GrantedRole {
    /// The Postgres role name, as the decision's `grants.roles` names it.
    pub name: String,
    /// The secrets it accepts (none with `attestation_only`).
    pub secrets: Vec<Secret>,
    /// What `provision` grants it (`auth.roles[].privileges`, default none).
    pub privileges: Privileges,
    /// The grant alone logs the client in; no secret is asked.
    pub attestation_only: bool,
}

impl fmt::Debug for RoleAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleAuth")
            .field("name", &self.name)
            .field("privileges", &self.privileges)
            .field("granted", &self.granted)
            .field("attestation_only", &self.attestation_only)
            .field("secrets", &self.accepted.len())
            .finish()
    }
}

impl RoleAuth {
    fn new(name: &str, privileges: Privileges, accepted: Vec<Secret>) -> Self {
        let salt = random::<16>();
        Self::with_salt(name, privileges, accepted, &salt)
    }

    fn with_salt(name: &str, privileges: Privileges, accepted: Vec<Secret>, salt: &[u8]) -> Self {
        Self {
            name: name.to_string(),
            privileges,
            granted: false,
            attestation_only: false,
            scram: scram_verifier(&accepted, salt),
            scram_as_tenant_user: None,
            accepted,
        }
    }

    /// SCRAM verifiers of every accepted secret (lower- and upper-case hex forms).
    pub fn scram(&self) -> &ScramVerifier {
        &self.scram
    }

    /// The verifiers for a login as the tenant user that was granted this role.
    pub fn scram_as_tenant_user(&self) -> &ScramVerifier {
        self.scram_as_tenant_user.as_ref().unwrap_or(&self.scram)
    }

    /// Check a cleartext password in constant time against every accepted secret.
    pub fn check_cleartext(&self, password: &[u8]) -> bool {
        let Some(given) = std::str::from_utf8(password)
            .ok()
            .and_then(|t| hex::decode(t.trim_end_matches('\0')).ok())
            .filter(|b| b.len() == 32)
        else {
            return false;
        };
        let mut ok = subtle::Choice::from(0);
        for s in &self.accepted {
            ok |= s.expose().ct_eq(&given);
        }
        bool::from(ok)
    }
}

/// The roles clients log in as, and the roles relayed to Postgres.
#[derive(Debug, Clone)]
pub struct AuthMap {
    roles: Arc<BTreeMap<String, RoleAuth>>,
    passthrough: Arc<BTreeSet<String>>,
    /// The user that lets the policy choose among the granted roles; `None` without any.
    tenant_user: Option<Arc<str>>,
    /// Derives decoy SCRAM salts for unknown users, so none can be told from a real one.
    decoy_key: [u8; 32],
}

impl AuthMap {
    /// `teesql_read` (accepting `read` and `readwrite`) and `teesql_readwrite` when
    /// their secrets are given, `extra` roles with one secret each, and `passthrough`
    /// roles Postgres authenticates. SCRAM verifiers are computed here, with fresh salts.
    pub fn new(
        read: Option<Secret>,
        readwrite: Option<Secret>,
        extra: Vec<(String, Secret, Privileges)>,
        passthrough: Vec<String>,
    ) -> Self {
        let mut roles = BTreeMap::new();
        let read_accepts: Vec<Secret> = read.iter().chain(readwrite.iter()).cloned().collect();
        if !read_accepts.is_empty() {
            roles.insert(
                "teesql_read".to_string(),
                RoleAuth::new("teesql_read", Privileges::Read, read_accepts),
            );
        }
        if let Some(rw) = readwrite {
            roles.insert(
                "teesql_readwrite".to_string(),
                RoleAuth::new("teesql_readwrite", Privileges::ReadWrite, vec![rw]),
            );
        }
        for (name, secret, privileges) in extra {
            roles.insert(name.clone(), RoleAuth::new(&name, privileges, vec![secret]));
        }
        Self {
            roles: Arc::new(roles),
            passthrough: Arc::new(passthrough.into_iter().collect()),
            tenant_user: None,
            decoy_key: random::<32>(),
        }
    }

    /// Add roles a client gets only with the verifier's grant, and the user that asks the
    /// policy to choose one of them.
    pub fn with_granted(mut self, granted: Vec<GrantedRole>, tenant_user: String) -> Self {
        if granted.is_empty() {
            return self;
        }
        let mut roles: BTreeMap<String, RoleAuth> = Arc::try_unwrap(self.roles)
            .unwrap_or_else(|_| unreachable!("the map is not shared while it is built"));
        let tenant_salt = ScramVerifier::decoy(&self.decoy_key, &tenant_user, DEFAULT_ITERATIONS)
            .salt()
            .to_vec();
        for g in granted {
            let as_tenant_user = scram_verifier(&g.secrets, &tenant_salt);
            let mut role = RoleAuth::new(&g.name, g.privileges, g.secrets);
            role.granted = true;
            role.attestation_only = g.attestation_only;
            role.scram_as_tenant_user = Some(as_tenant_user);
            roles.insert(g.name, role);
        }
        self.roles = Arc::new(roles);
        self.tenant_user = Some(tenant_user.into());
        self
    }

    /// The user that asks the policy to choose its role, when granted roles exist.
    pub fn tenant_user(&self) -> Option<&str> {
        self.tenant_user.as_deref()
    }

    /// Whether `user` asks the policy to choose its role.
    pub fn is_tenant_user(&self, user: &str) -> bool {
        self.tenant_user.as_deref() == Some(user)
    }

    /// Whether logging in as `user` depends on the verifier's grants: the tenant user or a
    /// granted role.
    pub fn needs_grant(&self, user: &str) -> bool {
        self.is_tenant_user(user) || self.role(user).is_some_and(|r| r.granted)
    }

    /// Whether any role needs a grant.
    pub fn has_granted(&self) -> bool {
        self.tenant_user.is_some()
    }

    /// The role clients log in to with a secret or a grant; `None` for unknown and
    /// passthrough roles.
    pub fn role(&self, name: &str) -> Option<&RoleAuth> {
        self.roles.get(name)
    }

    /// Every role the sidecar authenticates itself, by name (passthrough roles excluded).
    pub fn roles(&self) -> impl Iterator<Item = &RoleAuth> {
        self.roles.values()
    }

    /// Whether `user` is in `auth.passthrough_roles`: its authentication is relayed to
    /// Postgres unchanged.
    pub fn is_passthrough(&self, user: &str) -> bool {
        self.passthrough.contains(user)
    }

    /// Whether any role's authentication is relayed to Postgres.
    pub fn has_passthrough(&self) -> bool {
        !self.passthrough.is_empty()
    }

    /// A SCRAM verifier that no password matches, stable per user name.
    pub fn decoy(&self, user: &str) -> ScramVerifier {
        ScramVerifier::decoy(&self.decoy_key, user, DEFAULT_ITERATIONS)
    }
}

/// Random bytes from the operating system.
pub fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // SystemRandom fails only when the OS has no entropy source, which breaks TLS too.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut out).is_err() {
        tracing::error!("the operating system's random number generator failed");
        std::process::abort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Secret {
        Secret::from_hex(&hex::encode([b; 32])).unwrap()
    }

    #[test]
    fn secrets_never_print() {
        let s = secret(7);
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let map = AuthMap::new(Some(s), None, vec![], vec![]);
        assert!(!format!("{map:?}").contains("0707"));
    }

    #[test]
    fn bad_secrets_are_explained() {
        assert!(
            Secret::from_hex("abc")
                .unwrap_err()
                .to_string()
                .contains("64 hex digits")
        );
        assert_eq!(
            Secret::from_hex(&"ab".repeat(31)).unwrap_err().to_string(),
            "must be 32 bytes (64 hex digits), got 31 bytes"
        );
    }

    #[test]
    fn read_accepts_both_secrets_readwrite_only_its_own() {
        let map = AuthMap::new(
            Some(secret(1)),
            Some(secret(2)),
            vec![],
            vec!["postgres".into()],
        );
        let read = map.role("teesql_read").unwrap();
        let rw = map.role("teesql_readwrite").unwrap();
        assert!(read.check_cleartext(secret(1).to_hex().as_bytes()));
        assert!(read.check_cleartext(secret(2).to_hex().to_uppercase().as_bytes()));
        assert!(rw.check_cleartext(secret(2).to_hex().as_bytes()));
        assert!(!rw.check_cleartext(secret(1).to_hex().as_bytes()));
        assert!(!rw.check_cleartext(b"nonsense"));
        assert!(map.is_passthrough("postgres"));
        assert!(map.role("postgres").is_none());
    }
}

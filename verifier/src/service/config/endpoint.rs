//! How gRPC is served: the listener, TLS (an operator certificate or the guest agent's
//! RA-TLS one), who may administer policies, and the metrics listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use teesql_proto::settings::Problems;

use super::settings::{ServeSettings, defaults};

/// The verifier's own RA-TLS identity, from the dstack guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaTlsConfig {
    /// `None`: dstack-sdk's discovery (`DSTACK_SIMULATOR_ENDPOINT`, then the CVM socket).
    pub endpoint: Option<String>,
    /// How often a fresh certificate is fetched (`ra_tls_renew_secs`, default 3600 s, at
    /// least 10 s); retried within a minute after a failure.
    pub renew_every: Duration,
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

/// Where and how gRPC is served: the listener, its TLS, who may administer policies and
/// the metrics listener.
pub(super) struct Endpoint {
    pub(super) listen: Option<Listen>,
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
    pub(super) ra_tls: Option<RaTlsConfig>,
    pub(super) admin: Option<AdminAccess>,
    pub(super) metrics_listen: Option<SocketAddr>,
}

impl Endpoint {
    pub(super) fn check(s: &ServeSettings, p: &mut Problems) -> Self {
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

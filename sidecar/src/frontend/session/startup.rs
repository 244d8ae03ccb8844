//! Phase 2: the StartupMessage, inside TLS.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::error::HandshakeError;
use super::{Shared, StartupParameters};
use crate::pgwire::{self, StartupPacket, WireError, backend as msg};

/// What the client asked for.
#[derive(Debug, Clone)]
pub struct Startup {
    pub user: String,
    /// The database; defaults to the user name, as Postgres does.
    pub database: String,
    /// The parameters passed on to Postgres (the allowlisted ones), in order.
    pub params: Vec<(String, String)>,
    /// Protocol options (`_pq_.*`) asked for, none supported.
    pub protocol_options: Vec<String>,
}

/// Read the StartupMessage and check what the sidecar can serve. A CancelRequest inside
/// TLS is forwarded and ends the connection.
pub async fn read<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    tls: &mut S,
    peer: SocketAddr,
) -> Result<Startup, HandshakeError> {
    let packet = match pgwire::read_startup_packet(tls).await {
        Ok(p) => p,
        Err(WireError::Closed) => return Err(HandshakeError::Closed),
        Err(e) => return Err(HandshakeError::InvalidStartupPacket(e)),
    };
    let (minor, params) = match packet {
        StartupPacket::Startup { minor, params, .. } => (minor, params),
        StartupPacket::Cancel { pid, key } => {
            shared
                .cancels
                .forward(&shared.config.backend.addr, pid, &key, peer)
                .await;
            return Err(HandshakeError::CancelRequest);
        }
        StartupPacket::SslRequest => {
            return Err(HandshakeError::UnexpectedInsideTls("SSLRequest"));
        }
        StartupPacket::GssEncRequest => {
            return Err(HandshakeError::UnexpectedInsideTls("GSSENCRequest"));
        }
    };
    let startup = check(params, &shared.config.backend.startup_parameters)?;
    // A newer protocol minor version or protocol options (`_pq_.*`): we speak 3.0 and
    // support none, which Postgres says with NegotiateProtocolVersion.
    let unsupported: Vec<&str> = startup
        .protocol_options
        .iter()
        .map(String::as_str)
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        let mut out = Vec::new();
        msg::negotiate_protocol_version(&mut out, 0, &unsupported);
        tls.write_all(&out)
            .await
            .map_err(|_| HandshakeError::Closed)?;
    }
    Ok(startup)
}

/// The user and database the parameters name, and whether the sidecar serves them.
/// `params` of the result are those passed on to Postgres.
fn check(
    params: Vec<(String, String)>,
    allowed: &StartupParameters,
) -> Result<Startup, HandshakeError> {
    // Before anything reads (or logs) a value: control characters and the allowlist.
    let checked = allowed.check(&params)?;
    let param = |name: &str| pgwire::param(&params, name);
    let user = param("user")
        .filter(|u| !u.is_empty())
        .ok_or(HandshakeError::NoUser)?
        .to_string();
    let database = param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_string();
    if param("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        return Err(HandshakeError::Replication);
    }
    Ok(Startup {
        user,
        database,
        params: checked.forwarded,
        protocol_options: checked.protocol_options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn allowed() -> StartupParameters {
        StartupParameters::default()
    }

    #[test]
    fn only_allowlisted_parameters_are_kept() {
        let s = check(
            params(&[
                ("user", "u"),
                ("application_name", "a"),
                ("replication", "false"),
            ]),
            &allowed(),
        )
        .unwrap();
        assert_eq!(s.params, params(&[("application_name", "a")]));
        assert!(matches!(
            check(params(&[("user", "u"), ("options", "-c x=y")]), &allowed()),
            Err(HandshakeError::ParameterRefused(_))
        ));
    }

    /// Protocol options are neither passed on nor refused: the client is told none is
    /// supported (NegotiateProtocolVersion), as Postgres does.
    #[test]
    fn protocol_options_are_answered_not_forwarded() {
        let s = check(
            params(&[
                ("user", "u"),
                ("_pq_.test_option", "1"),
                ("application_name", "a"),
            ]),
            &allowed(),
        )
        .unwrap();
        assert_eq!(s.params, params(&[("application_name", "a")]));
        assert_eq!(s.protocol_options, vec!["_pq_.test_option".to_string()]);
    }

    #[test]
    fn database_defaults_to_the_user() {
        let s = check(params(&[("user", "teesql_read")]), &allowed()).unwrap();
        assert_eq!(
            (s.user.as_str(), s.database.as_str()),
            ("teesql_read", "teesql_read")
        );
        let s = check(params(&[("user", "u"), ("database", "")]), &allowed()).unwrap();
        assert_eq!(s.database, "u");
    }

    #[test]
    fn no_user_and_replication_are_refused() {
        assert!(matches!(
            check(params(&[]), &allowed()),
            Err(HandshakeError::NoUser)
        ));
        assert!(matches!(
            check(params(&[("user", "")]), &allowed()),
            Err(HandshakeError::NoUser)
        ));
        for r in ["true", "database", "1"] {
            assert!(matches!(
                check(params(&[("user", "u"), ("replication", r)]), &allowed()),
                Err(HandshakeError::Replication)
            ));
        }
        for r in ["false", "0", "off"] {
            assert!(check(params(&[("user", "u"), ("replication", r)]), &allowed()).is_ok());
        }
    }
}

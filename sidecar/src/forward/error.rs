//! Why the forwarder ended a local client's connection before relaying it: one error
//! type with the one response the local client gets and the outcome the log names,
//! like the sidecar's `HandshakeError`.

use crate::pgwire::WireError;
use crate::pgwire::sqlstate;

/// Why a forwarded connection ended before its session.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The local client went away (nothing to answer).
    #[error("the local client closed the connection")]
    Closed,
    /// The local client's startup packet did not parse.
    #[error("invalid startup packet: {0}")]
    InvalidStartup(WireError),
    /// No startup packet within the deadline.
    #[error("no startup packet within {0:?}")]
    StartupTimeout(std::time::Duration),
    /// The database could not be found or reached.
    #[error("{0}")]
    Unreachable(String),
    /// The verifier did not allow the server (or could not be asked).
    #[error("the server at {addr} failed attestation: {why}")]
    ServerRejected {
        /// The sidecar dialled, `host:port`.
        addr: String,
        /// The verifier's or the manifest check's reason, or "verifier unavailable (…)".
        why: String,
    },
    /// The server closed the connection before the login.
    #[error("the server closed the connection")]
    ServerClosed,
    /// The server asked for authentication the forwarder will not relay (a cleartext or
    /// MD5 password, a SASL mechanism other than SCRAM-SHA-256).
    #[error("{0}")]
    AuthRefused(String),
    /// Either side went away or broke the protocol during authentication; what the
    /// server said was passed on as it came.
    #[error("authentication phase ended: {0}")]
    Ended(String),
}

/// What the local client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Nothing (it is gone, or the server's own error was passed on).
    Close,
    /// One `FATAL` with this SQLSTATE and message.
    Fatal {
        /// The SQLSTATE: 08P01, 08006 or 28000 ([`sqlstate`]).
        code: &'static str,
        /// The full reason, prefixed `teesql forwarder: `.
        message: String,
    },
}

impl ForwardError {
    /// The one response the local client gets. The forwarder's client is the
    /// application's own driver on loopback: it is told the reason in full.
    pub fn response(&self) -> Response {
        let fatal = |code, message: String| Response::Fatal {
            code,
            message: format!("teesql forwarder: {message}"),
        };
        match self {
            Self::Closed | Self::Ended(_) => Response::Close,
            Self::InvalidStartup(_) | Self::StartupTimeout(_) => {
                fatal(sqlstate::PROTOCOL_VIOLATION, self.to_string())
            }
            Self::Unreachable(_) | Self::ServerClosed => {
                fatal(sqlstate::CONNECTION_FAILURE, self.to_string())
            }
            Self::ServerRejected { .. } | Self::AuthRefused(_) => {
                fatal(sqlstate::INVALID_AUTHORIZATION, self.to_string())
            }
        }
    }

    /// The outcome the log names.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::InvalidStartup(_) => "protocol_error",
            Self::StartupTimeout(_) => "startup_timeout",
            Self::Unreachable(_) => "unreachable",
            Self::ServerRejected { .. } => "server_rejected",
            Self::ServerClosed => "server_closed",
            Self::AuthRefused(_) => "auth_refused",
            Self::Ended(_) => "ended",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_one_response_and_an_outcome() {
        let cases = [
            (ForwardError::Closed, None),
            (
                ForwardError::InvalidStartup(WireError::Closed),
                Some(sqlstate::PROTOCOL_VIOLATION),
            ),
            (
                ForwardError::StartupTimeout(std::time::Duration::from_secs(1)),
                Some(sqlstate::PROTOCOL_VIOLATION),
            ),
            (
                ForwardError::Unreachable("x".into()),
                Some(sqlstate::CONNECTION_FAILURE),
            ),
            (
                ForwardError::ServerRejected {
                    addr: "db:5433".into(),
                    why: "tcb".into(),
                },
                Some(sqlstate::INVALID_AUTHORIZATION),
            ),
            (
                ForwardError::ServerClosed,
                Some(sqlstate::CONNECTION_FAILURE),
            ),
            (
                ForwardError::AuthRefused("md5".into()),
                Some(sqlstate::INVALID_AUTHORIZATION),
            ),
            (ForwardError::Ended("x".into()), None),
        ];
        let mut outcomes = std::collections::BTreeSet::new();
        for (e, code) in cases {
            match (e.response(), code) {
                (Response::Close, None) => {}
                (Response::Fatal { code: got, message }, Some(want)) => {
                    assert_eq!(got, want, "{e:?}");
                    assert!(message.starts_with("teesql forwarder: "), "{message}");
                }
                (r, c) => panic!("{e:?}: {r:?} vs {c:?}"),
            }
            outcomes.insert(e.outcome());
        }
        assert_eq!(outcomes.len(), 8, "one outcome each");
    }
}

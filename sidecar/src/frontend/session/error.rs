//! Every way a handshake ends without a session, each with the one response the client
//! gets and the one metric label it is counted under. The rule that every refusal looks
//! the same to the client (`FATAL 28000 authentication_failed`) lives in
//! [`HandshakeError::response`], and nowhere else.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::pgwire::WireError;
use crate::postgres::login::BackendError;

/// The message every refused client gets, whatever the reason.
pub const AUTH_FAILED: &str = "authentication_failed";

/// The SQLSTATEs the sidecar itself sends.
pub use crate::pgwire::sqlstate;

/// The handshake's phases, each with its own deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// From accept to the client's first packet (a TLS ClientHello or an SSLRequest).
    FirstPacket,
    /// From accept to an established TLS session (SSLRequest or direct TLS included).
    Tls,
    /// After TLS, until the StartupMessage arrives. Clients that verify the server's
    /// quote before they start Postgres' protocol spend this time on attestation.
    Startup,
    /// From the StartupMessage to a logged-in session: authentication, the verifier's
    /// decision and the login to Postgres.
    Login,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FirstPacket => "first packet",
            Self::Tls => "TLS handshake",
            Self::Startup => "StartupMessage",
            Self::Login => "login",
        })
    }
}

/// Why a client was refused with the generic error. Goes to the log and metrics, never
/// to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The secret does not match the role.
    WrongSecret,
    /// No such role (authenticated against a decoy).
    UnknownRole,
    /// The client broke the authentication exchange.
    AuthProtocol(String),
    /// The verifier's policy said no.
    VerifierDenied {
        /// The policy package that decided, e.g. `teesql.sidecar` (`Decision.policy_id`).
        policy_id: String,
        /// The decision's reasons as (code, message), e.g. `("mrtd_not_pinned", …)`.
        reasons: Vec<(String, String)>,
    },
    /// The verifier could not be asked in time (fail closed).
    VerifierUnavailable(String),
    /// Postgres refused a passthrough role's own authentication.
    PassthroughRefused(String),
    /// The client asked for a role (or the tenant user) that the verifier's decision does
    /// not grant it.
    NotGranted {
        /// The StartupMessage's user: a role, or `auth.tenant_user`.
        user: String,
        /// The roles the decision's `grants.roles` names; empty when it grants none.
        granted: Vec<String>,
    },
}

impl Refusal {
    /// Whether the client caused it (its secret, its evidence, its protocol), as opposed
    /// to an outage on the server's side.
    pub fn is_client_fault(&self) -> bool {
        !matches!(self, Self::VerifierUnavailable(_))
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongSecret => f.write_str("wrong secret"),
            Self::UnknownRole => f.write_str("unknown role"),
            Self::AuthProtocol(e) => write!(f, "authentication protocol error: {e}"),
            Self::VerifierDenied { policy_id, reasons } => {
                write!(f, "verifier denied ({policy_id}): ")?;
                for (i, (code, message)) in reasons.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{code}: {message}")?;
                }
                Ok(())
            }
            Self::VerifierUnavailable(e) => write!(f, "verifier unavailable, failing closed: {e}"),
            Self::PassthroughRefused(m) => {
                write!(f, "Postgres refused the passthrough login: {m}")
            }
            Self::NotGranted { user, granted } if granted.is_empty() => write!(
                f,
                "{user} needs a role granted by the verifier's policy, and the decision grants none"
            ),
            Self::NotGranted { user, granted } => write!(
                f,
                "the verifier's decision grants {} but not {user}",
                granted.join(", ")
            ),
        }
    }
}

/// How a handshake ended without a session.
#[derive(Debug)]
pub enum HandshakeError {
    /// The client went away.
    Closed,
    /// A phase's deadline passed.
    Timeout(Phase, Duration),
    /// A plaintext StartupMessage: this endpoint requires TLS.
    PlaintextRefused,
    /// A startup packet that cannot be decoded (before or inside TLS).
    InvalidStartupPacket(WireError),
    /// Plaintext bytes were pipelined after the SSLRequest (CVE-2021-23214 class).
    DataAfterSslRequest,
    /// A second GSSENCRequest after we said no to the first.
    GssEncRequestTwice,
    /// Inside TLS, a request that only makes sense before it.
    UnexpectedInsideTls(&'static str),
    /// Not a failure: the connection carried a CancelRequest, which was handled.
    CancelRequest,
    /// The TLS handshake failed.
    TlsFailed(String),
    /// The StartupMessage names no user.
    NoUser,
    /// `replication=…`: not offered through the sidecar.
    Replication,
    /// A startup parameter name or value with control characters (named, escaped).
    ControlCharacters(String),
    /// A startup parameter the sidecar does not pass on (`options`, unknown settings).
    ParameterRefused(String),
    /// The client's address used up its failed logins.
    RateLimited,
    /// Refused with the generic error.
    AuthFailed {
        /// The user the client named, for the log and the failed-login count.
        user: String,
        /// Every reason found (the secret's and the verifier's may both fail); logged,
        /// never sent.
        causes: Vec<Refusal>,
    },
    /// Authenticated, but the login to Postgres failed.
    Backend(BackendError),
    /// `limits.max_connections` reached.
    TooManyConnections,
    /// `limits.handshakes_per_address` reached for the client's address.
    TooManyFromAddress,
}

/// What the client is told.
#[derive(Debug, PartialEq, Eq)]
pub enum Response {
    /// Nothing: the connection is just closed.
    Close,
    /// One `FATAL` ErrorResponse.
    Fatal {
        /// The SQLSTATE, one of [`sqlstate`]'s (28000 for every refusal).
        code: &'static str,
        /// The message (`M` field); [`AUTH_FAILED`] for every refused login.
        message: Cow<'static, str>,
    },
    /// An ErrorResponse from Postgres, passed on as it is (for example "database does
    /// not exist" to a client that authenticated).
    Raw(Vec<u8>),
}

impl HandshakeError {
    /// The one response the client gets.
    pub fn response(&self) -> Response {
        use sqlstate::*;
        let fatal = |code, message: &'static str| Response::Fatal {
            code,
            message: Cow::Borrowed(message),
        };
        match self {
            Self::Closed | Self::Timeout(..) | Self::CancelRequest | Self::TlsFailed(_) => {
                Response::Close
            }
            Self::PlaintextRefused => fatal(
                INVALID_AUTHORIZATION,
                "TLS is required: this TeeSQL endpoint accepts only encrypted connections (use sslmode=require or verify-full, or a TeeSQL client library)",
            ),
            Self::InvalidStartupPacket(e) => Response::Fatal {
                code: PROTOCOL_VIOLATION,
                message: Cow::Owned(format!("invalid startup packet: {e}")),
            },
            Self::DataAfterSslRequest => fatal(
                PROTOCOL_VIOLATION,
                "received unencrypted data after SSL request",
            ),
            Self::GssEncRequestTwice => fatal(PROTOCOL_VIOLATION, "GSSENCRequest sent twice"),
            Self::UnexpectedInsideTls(_) => {
                fatal(PROTOCOL_VIOLATION, "unexpected request inside TLS")
            }
            Self::NoUser => fatal(
                INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            ),
            Self::Replication => fatal(
                FEATURE_NOT_SUPPORTED,
                "replication connections are not supported through the TeeSQL sidecar",
            ),
            Self::ControlCharacters(_) => fatal(
                PROTOCOL_VIOLATION,
                "invalid startup packet: a startup parameter contains control characters",
            ),
            Self::ParameterRefused(name) if name.eq_ignore_ascii_case("options") => fatal(
                FEATURE_NOT_SUPPORTED,
                "the startup parameter \"options\" (PGOPTIONS, -c settings) is not accepted through the TeeSQL sidecar; use SET after connecting",
            ),
            Self::ParameterRefused(name) => Response::Fatal {
                code: FEATURE_NOT_SUPPORTED,
                message: Cow::Owned(format!(
                    "the startup parameter {:?} is not accepted through the TeeSQL sidecar; use SET after connecting, or ask the operator to add it to backend.forward_parameters",
                    name.chars().take(64).collect::<String>()
                )),
            },
            Self::RateLimited | Self::AuthFailed { .. } => {
                fatal(INVALID_AUTHORIZATION, AUTH_FAILED)
            }
            Self::Backend(BackendError::Refused { raw, .. }) => Response::Raw(raw.clone()),
            Self::Backend(_) => fatal(
                CONNECTION_FAILURE,
                "the database is not available right now; try again shortly",
            ),
            Self::TooManyConnections => {
                fatal(TOO_MANY_CONNECTIONS, "sorry, too many clients already")
            }
            Self::TooManyFromAddress => fatal(
                TOO_MANY_CONNECTIONS,
                "too many connections in progress from your address; try again shortly",
            ),
        }
    }

    /// The metric label this ending is counted under.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Closed => Outcome::Closed,
            Self::Timeout(Phase::FirstPacket, _) => Outcome::FirstPacketTimeout,
            Self::Timeout(Phase::Tls, _) => Outcome::TlsTimeout,
            Self::Timeout(Phase::Startup, _) => Outcome::StartupTimeout,
            Self::Timeout(Phase::Login, _) => Outcome::LoginTimeout,
            Self::PlaintextRefused => Outcome::PlaintextRefused,
            Self::InvalidStartupPacket(_)
            | Self::DataAfterSslRequest
            | Self::GssEncRequestTwice
            | Self::UnexpectedInsideTls(_)
            | Self::NoUser
            | Self::Replication
            | Self::ControlCharacters(_)
            | Self::ParameterRefused(_) => Outcome::ProtocolError,
            Self::CancelRequest => Outcome::Cancel,
            Self::TlsFailed(_) => Outcome::TlsFailed,
            Self::RateLimited => Outcome::RateLimited,
            Self::AuthFailed { .. } => Outcome::AuthFailed,
            Self::Backend(_) => Outcome::BackendFailed,
            Self::TooManyConnections => Outcome::TooMany,
            Self::TooManyFromAddress => Outcome::TooManyFromAddress,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("the client closed the connection during the handshake"),
            Self::Timeout(phase, d) => write!(f, "{phase} deadline ({d:?}) passed"),
            Self::PlaintextRefused => {
                f.write_str("refused a plaintext connection: TLS is required")
            }
            Self::InvalidStartupPacket(e) => write!(f, "invalid startup packet: {e}"),
            Self::DataAfterSslRequest => f.write_str("plaintext bytes pipelined after SSLRequest"),
            Self::GssEncRequestTwice => f.write_str("GSSENCRequest sent twice"),
            Self::UnexpectedInsideTls(what) => write!(f, "{what} inside TLS"),
            Self::CancelRequest => f.write_str("cancel request"),
            Self::TlsFailed(e) => write!(f, "TLS handshake failed: {e}"),
            Self::NoUser => f.write_str("no user in StartupMessage"),
            Self::Replication => f.write_str("replication connection"),
            Self::ControlCharacters(name) => {
                write!(f, "control characters in startup parameter {name:?}")
            }
            Self::ParameterRefused(name) => write!(f, "startup parameter {name:?} refused"),
            Self::RateLimited => {
                f.write_str("too many failed or abandoned logins from this address")
            }
            Self::AuthFailed { causes, .. } => {
                for (i, c) in causes.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{c}")?;
                }
                Ok(())
            }
            Self::Backend(e) => write!(f, "could not log in to Postgres: {e}"),
            Self::TooManyConnections => f.write_str("connection limit reached"),
            Self::TooManyFromAddress => {
                f.write_str("too many handshakes in progress from this address")
            }
        }
    }
}

pub use crate::metrics::{Outcome, OutcomeLabels};

impl From<crate::params::ParameterError> for HandshakeError {
    fn from(e: crate::params::ParameterError) -> Self {
        match e {
            crate::params::ParameterError::ControlCharacters(name) => Self::ControlCharacters(name),
            crate::params::ParameterError::Refused(name) => Self::ParameterRefused(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_error() -> Vec<HandshakeError> {
        vec![
            HandshakeError::Closed,
            HandshakeError::Timeout(Phase::FirstPacket, Duration::from_secs(1)),
            HandshakeError::Timeout(Phase::Tls, Duration::from_secs(1)),
            HandshakeError::Timeout(Phase::Startup, Duration::from_secs(1)),
            HandshakeError::Timeout(Phase::Login, Duration::from_secs(1)),
            HandshakeError::PlaintextRefused,
            HandshakeError::InvalidStartupPacket(WireError::UnknownCode(1)),
            HandshakeError::DataAfterSslRequest,
            HandshakeError::GssEncRequestTwice,
            HandshakeError::UnexpectedInsideTls("SSLRequest"),
            HandshakeError::CancelRequest,
            HandshakeError::TlsFailed("bad".into()),
            HandshakeError::NoUser,
            HandshakeError::Replication,
            HandshakeError::ControlCharacters("user".into()),
            HandshakeError::ParameterRefused("options".into()),
            HandshakeError::RateLimited,
            HandshakeError::AuthFailed {
                user: "u".into(),
                causes: vec![Refusal::WrongSecret],
            },
            HandshakeError::Backend(BackendError::Timeout(Duration::from_secs(1))),
            HandshakeError::Backend(BackendError::Refused {
                code: sqlstate::INVALID_CATALOG_NAME.into(),
                message: "no db".into(),
                raw: vec![b'E'],
            }),
            HandshakeError::TooManyConnections,
            HandshakeError::TooManyFromAddress,
        ]
    }

    #[test]
    fn every_refusal_of_a_login_looks_the_same_to_the_client() {
        let refusals = [
            HandshakeError::RateLimited,
            HandshakeError::AuthFailed {
                user: "teesql_read".into(),
                causes: vec![Refusal::WrongSecret],
            },
            HandshakeError::AuthFailed {
                user: "nobody".into(),
                causes: vec![Refusal::UnknownRole],
            },
            HandshakeError::AuthFailed {
                user: "teesql_read".into(),
                causes: vec![Refusal::VerifierDenied {
                    policy_id: "teesql.sidecar".into(),
                    reasons: vec![("mrtd_not_pinned".into(), "MRTD ab".into())],
                }],
            },
            HandshakeError::AuthFailed {
                user: "teesql_read".into(),
                causes: vec![Refusal::VerifierUnavailable("down".into())],
            },
            HandshakeError::AuthFailed {
                user: "postgres".into(),
                causes: vec![Refusal::PassthroughRefused("password".into())],
            },
        ];
        for e in refusals {
            assert_eq!(
                e.response(),
                Response::Fatal {
                    code: "28000",
                    message: Cow::Borrowed(AUTH_FAILED)
                },
                "{e}"
            );
            // The cause is for the operator's log, never in the response.
            assert!(!format!("{:?}", e.response()).contains("mrtd"));
        }
    }

    #[test]
    fn each_kind_has_one_response_and_one_label() {
        let expected: &[(&str, Option<&str>)] = &[
            ("closed", None),
            ("first_packet_timeout", None),
            ("tls_timeout", None),
            ("startup_timeout", None),
            ("login_timeout", None),
            ("plaintext_refused", Some("28000")),
            ("protocol_error", Some("08P01")),
            ("protocol_error", Some("08P01")),
            ("protocol_error", Some("08P01")),
            ("protocol_error", Some("08P01")),
            ("cancel", None),
            ("tls_failed", None),
            ("protocol_error", Some("28000")),
            ("protocol_error", Some("0A000")),
            ("protocol_error", Some("08P01")),
            ("protocol_error", Some("0A000")),
            ("rate_limited", Some("28000")),
            ("auth_failed", Some("28000")),
            ("backend_failed", Some("08006")),
            ("backend_failed", None),
            ("too_many", Some("53300")),
            ("too_many_from_address", Some("53300")),
        ];
        let errors = every_error();
        assert_eq!(errors.len(), expected.len());
        for (e, (label, code)) in errors.iter().zip(expected) {
            assert_eq!(e.outcome().as_str(), *label, "{e}");
            match (e.response(), code) {
                (Response::Fatal { code: got, .. }, Some(want)) => assert_eq!(got, *want, "{e}"),
                (Response::Close, None) => {}
                (Response::Raw(raw), None) => assert_eq!(raw, vec![b'E']),
                (other, want) => panic!("{e}: {other:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn labels_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for o in Outcome::ALL {
            assert!(seen.insert(o.as_str()), "{o:?}");
        }
    }

    #[test]
    fn outages_are_not_the_clients_fault() {
        assert!(!Refusal::VerifierUnavailable("x".into()).is_client_fault());
        assert!(Refusal::WrongSecret.is_client_fault());
        assert!(Refusal::UnknownRole.is_client_fault());
    }
}

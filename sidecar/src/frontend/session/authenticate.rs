//! Phase 3a: the client proves it holds a secret of the role (SCRAM-SHA-256, with -PLUS
//! channel binding when offered, or a cleartext password inside TLS), while the verifier
//! decides on its evidence. Both must say yes.

use std::time::Instant;

use teesql_proto::v1::Decision;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Shared;
use super::error::{HandshakeError, Refusal};
use crate::auth::AuthMap;
use crate::auth::scram::{ScramError, ScramServer, ScramVerifier};
use crate::auth::scram_client::ScramKeys;
use crate::config::ClientAuthMethod;
use crate::pgwire::{self, WireError, backend as msg};
use crate::verifier::VerifierUnavailable;

/// The outcome of the client's half: the SASLFinal message to send with
/// AuthenticationOk (empty for cleartext), or why the secret was not accepted.
#[derive(Debug)]
pub enum Authenticated {
    Yes(Vec<u8>),
    No(Refusal),
}

/// Run the authentication exchange for `user`'s secrets (for a granted role reached
/// through the tenant user, `as_tenant_user`: under that name's salt). `end_point` is the
/// channel binding data when SCRAM-SHA-256-PLUS is offered. A client that breaks the
/// exchange is refused (`AuthFailed`) at once; one that goes away is `Closed`.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &mut S,
    auth: &AuthMap,
    method: ClientAuthMethod,
    user: &str,
    as_tenant_user: bool,
    end_point: Option<Vec<u8>>,
) -> Result<Authenticated, HandshakeError> {
    let protocol = |e: String| HandshakeError::AuthFailed {
        user: user.to_string(),
        causes: vec![Refusal::AuthProtocol(e)],
    };
    let role = auth.role(user);
    let unknown_or_wrong = || {
        if role.is_some() {
            Refusal::WrongSecret
        } else {
            Refusal::UnknownRole
        }
    };
    let mut out = Vec::new();
    match method {
        ClientAuthMethod::Cleartext => {
            msg::authentication_cleartext_password(&mut out);
            send(tls, &out).await?;
            let body = read_p(tls, &protocol).await?;
            let password =
                pgwire::parse_password_message(&body).map_err(|e| protocol(e.to_string()))?;
            Ok(match role {
                Some(r) if r.check_cleartext(&password) => Authenticated::Yes(Vec::new()),
                _ => Authenticated::No(unknown_or_wrong()),
            })
        }
        ClientAuthMethod::Scram => {
            let decoy;
            let verifier = match role {
                Some(r) if as_tenant_user => r.scram_as_tenant_user(),
                Some(r) => r.scram(),
                None => {
                    decoy = auth.decoy(user);
                    &decoy
                }
            };
            match scram(tls, verifier, end_point, &protocol).await? {
                Some((server_final, _)) if role.is_some() => Ok(Authenticated::Yes(server_final)),
                _ => Ok(Authenticated::No(unknown_or_wrong())),
            }
        }
    }
}

/// A passthrough role's SCRAM exchange against its verifier from Postgres: on success,
/// the SASLFinal for the client and the keys that log in to Postgres as the role;
/// `None` when the client's proof is wrong.
pub async fn passthrough_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &mut S,
    verifier: &ScramVerifier,
    end_point: Option<Vec<u8>>,
    user: &str,
) -> Result<Option<(Vec<u8>, ScramKeys)>, HandshakeError> {
    let protocol = |e: String| HandshakeError::AuthFailed {
        user: user.to_string(),
        causes: vec![Refusal::AuthProtocol(e)],
    };
    let Some((server_final, client_key)) = scram(tls, verifier, end_point, &protocol).await? else {
        return Ok(None);
    };
    let server_key = verifier
        .server_key()
        .ok_or_else(|| protocol("the verifier has no key".into()))?;
    Ok(Some((
        server_final,
        ScramKeys {
            salt: verifier.salt().to_vec(),
            iterations: verifier.iterations(),
            client_key,
            server_key,
        },
    )))
}

/// One SCRAM-SHA-256(-PLUS) exchange with the client against `verifier`: the SASLFinal
/// and the ClientKey the client proved, or `None` for a wrong secret.
async fn scram<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &mut S,
    verifier: &ScramVerifier,
    end_point: Option<Vec<u8>>,
    protocol: &impl Fn(String) -> HandshakeError,
) -> Result<Option<(Vec<u8>, [u8; 32])>, HandshakeError> {
    let mut out = Vec::new();
    let plus = end_point.is_some();
    let mut server = ScramServer::new(verifier, end_point);
    msg::authentication_sasl(&mut out, ScramServer::mechanisms(plus));
    send(tls, &out).await?;
    let body = read_p(tls, protocol).await?;
    let (mechanism, data) =
        pgwire::parse_sasl_initial_response(&body).map_err(|e| protocol(e.to_string()))?;
    let server_first = server
        .client_first(&mechanism, &data)
        .map_err(|e| protocol(e.to_string()))?;
    out.clear();
    msg::authentication_sasl_continue(&mut out, &server_first);
    send(tls, &out).await?;
    let body = read_p(tls, protocol).await?;
    match server.client_final(&body) {
        Ok(server_final) => Ok(server.client_key().map(|k| (server_final, k))),
        Err(ScramError::AuthFailed) => Ok(None),
        Err(e) => Err(protocol(e.to_string())),
    }
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> Result<(), HandshakeError> {
    s.write_all(bytes)
        .await
        .map_err(|_| HandshakeError::Closed)?;
    s.flush().await.map_err(|_| HandshakeError::Closed)
}

/// Read one PasswordMessage / SASL message ('p').
async fn read_p<S: AsyncRead + Unpin>(
    s: &mut S,
    protocol: &impl Fn(String) -> HandshakeError,
) -> Result<Vec<u8>, HandshakeError> {
    match pgwire::read_message(s, pgwire::MAX_AUTH_MESSAGE_LEN).await {
        Ok((b'p', body)) => Ok(body),
        Ok((tag, _)) => Err(protocol(format!(
            "expected a password message, got {:?}",
            tag as char
        ))),
        Err(WireError::Closed | WireError::Io(_)) => Err(HandshakeError::Closed),
        Err(e) => Err(protocol(e.to_string())),
    }
}

/// Await the verifier: `Ok` only on an explicit allow.
pub async fn verdict(
    shared: &Shared,
    handle: tokio::task::JoinHandle<Result<Decision, VerifierUnavailable>>,
    asked: Instant,
) -> Result<Decision, Refusal> {
    let result = handle.await;
    shared
        .metrics
        .verifier_call(asked.elapsed(), matches!(result, Ok(Ok(_))));
    match result {
        Ok(Ok(d)) if d.allow => {
            // An allow may carry the policy's warnings (a TCB grace, Intel's next TCB
            // set): the operator must see them, the client need not.
            for r in &d.reasons {
                tracing::warn!(code = %r.code, message = %r.message, "the verifier allowed with a warning");
            }
            Ok(d)
        }
        Ok(Ok(d)) => Err(Refusal::VerifierDenied {
            policy_id: d.policy_id,
            reasons: d.reasons.into_iter().map(|r| (r.code, r.message)).collect(),
        }),
        Ok(Err(e)) => Err(Refusal::VerifierUnavailable(e.to_string())),
        Err(e) => Err(Refusal::VerifierUnavailable(format!(
            "the call failed: {e}"
        ))),
    }
}

//! Phase 3b: log in to Postgres as the role (or take a connection kept from an earlier
//! session), then tell the client it is in: AuthenticationOk, parameters, a
//! sidecar-issued cancel key, ReadyForQuery.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Shared;
use super::error::HandshakeError;
use crate::frontend::cancel::CancelGuard;
use crate::pgwire::backend as msg;
use crate::postgres::login::{self as backend, LoggedIn};
use crate::postgres::pool::PoolKey;

/// Log in to Postgres with the sidecar's own credentials for the role, or reuse a kept
/// connection with the same key.
pub async fn to_postgres(
    shared: &Shared,
    key: &PoolKey,
    forwarded: &[(&str, &str)],
) -> Result<LoggedIn, HandshakeError> {
    if let Some(kept) = shared.pool.take(key) {
        return Ok(kept);
    }
    let backend = &shared.config.backend;
    backend::login(
        &backend.addr,
        backend.method,
        backend.password.as_ref(),
        forwarded,
        backend.connect_timeout,
    )
    .await
    .map_err(HandshakeError::Backend)
}

/// Tell the client it is in. Returns the cancel key registered for the session.
pub async fn welcome<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    client: &mut S,
    backend: &LoggedIn,
    sasl_final: &[u8],
) -> Result<Option<CancelGuard>, HandshakeError> {
    let mut out = Vec::with_capacity(512);
    if !sasl_final.is_empty() {
        msg::authentication_sasl_final(&mut out, sasl_final);
    }
    msg::authentication_ok(&mut out);
    for (k, v) in &backend.params {
        msg::parameter_status(&mut out, k, v);
    }
    let cancel = backend
        .cancel_key
        .as_ref()
        .map(|(pid, key)| shared.cancels.register(*pid, key.clone()));
    if let Some(g) = &cancel {
        msg::backend_key_data(&mut out, g.pid, &g.key);
    }
    out.extend_from_slice(&backend.notices);
    msg::ready_for_query(&mut out, b'I');
    if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
        return Err(HandshakeError::Closed);
    }
    Ok(cancel)
}

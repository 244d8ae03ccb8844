//! One client connection, from accept to relay (DESIGN.md, "One handshake, end to end").
//!
//! 1. Peek the first byte: `0x16` is direct TLS; otherwise read one bounded startup packet:
//!    SSLRequest gets `S` (plaintext bytes pipelined after it are fatal), GSSENCRequest
//!    gets `N`, CancelRequest is forwarded, a plaintext StartupMessage is refused.
//! 2. TLS (client certificate optional at the TLS layer).
//! 3. Read the StartupMessage; start the verifier's decision at once, in parallel with
//!    client authentication (SCRAM-SHA-256[-PLUS] or cleartext; passthrough roles relay
//!    their exchange to Postgres).
//! 4. Any failure (wrong secret, unknown role, verifier deny or unreachable) gives the
//!    client one `FATAL 28000 authentication_failed`; the cause goes to the log and metrics.
//! 5. Log in to Postgres, rewrite BackendKeyData, then relay bytes.
//!
//! Everything before the relay runs under the handshake deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use teesql_proto::v1::{Decision, VerifyPeerRequest};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::auth::AuthMap;
use crate::auth::scram::{ScramError, ScramServer};
use crate::backend::{self, BackendError, LoggedIn};
use crate::cancel::{CancelGuard, CancelMap};
use crate::config::{ClientAuthMethod, SidecarConfig};
use crate::metrics::Metrics;
use crate::pgwire::{self, StartupPacket, WireError, backend as msg};
use crate::pool::{BackendPool, PoolKey};
use crate::ratelimit::FailureLimiter;
use crate::relay::{self, RelayEnd};
use crate::tls::RotatingCert;
use crate::verifier::{VerifierClient, VerifierUnavailable};

/// The message every refused client gets, whatever the reason.
pub const AUTH_FAILED: &str = "authentication_failed";
/// SQLSTATE invalid_authorization_specification.
pub const SQLSTATE_AUTH: &str = "28000";

/// Everything sessions share.
pub struct Shared {
    pub config: SidecarConfig,
    pub tls: TlsAcceptor,
    pub cert: Arc<RotatingCert>,
    pub verifier: VerifierClient,
    pub cancels: Arc<CancelMap>,
    pub limiter: FailureLimiter,
    pub metrics: Metrics,
    pub pool: BackendPool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("listen", &self.config.listen)
            .field("verifier", &self.verifier.url())
            .finish_non_exhaustive()
    }
}

/// How a connection ended, for metrics and logs.
#[derive(Debug)]
enum Outcome {
    /// Logged in; relay until done.
    Session(Box<Ready>),
    /// Refused with the generic error; `cause` is for the operator.
    AuthFailed {
        user: String,
        cause: String,
    },
    PlaintextRefused,
    /// Refused without authentication: too many failures from the address.
    RateLimited,
    Cancel,
    TlsFailed(String),
    Protocol(String),
    BackendFailed(String),
    /// The client went away during the handshake.
    Closed,
}

/// A logged-in session, ready to relay.
#[derive(Debug)]
struct Ready {
    client: TlsStream<TcpStream>,
    backend: LoggedIn,
    _cancel: Option<CancelGuard>,
    user: String,
    database: String,
    /// Set when the Postgres connection may be reused after the client terminates.
    pool_key: Option<PoolKey>,
}

/// Serve one accepted connection to its end.
pub async fn handle(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(15)),
    );
    // A client over its failure limit still gets the protocol it speaks (TLS, then one
    // FATAL after its StartupMessage), so it sees the same refusal as any other; it just
    // never reaches authentication or the verifier.
    let blocked = shared.limiter.is_blocked(peer.ip());
    let deadline = shared.config.limits.handshake_timeout;
    let outcome = match tokio::time::timeout(deadline, negotiate(&shared, stream, peer, blocked))
        .await
    {
        Ok(o) => o,
        Err(_) => {
            shared.metrics.connection("timeout");
            tracing::info!(client.addr = %peer, timeout = ?deadline, "handshake deadline passed; closed");
            return;
        }
    };
    match outcome {
        Outcome::Session(ready) => {
            shared.metrics.handshake(started.elapsed());
            shared.metrics.connection("session");
            tracing::info!(
                client.addr = %peer,
                user = %ready.user,
                database = %ready.database,
                handshake_ms = started.elapsed().as_millis() as u64,
                "session started"
            );
            shared.metrics.session_started();
            let Ready {
                mut client,
                mut backend,
                _cancel,
                user,
                pool_key,
                ..
            } = *ready;
            let catch_terminate = pool_key.is_some() && shared.pool.enabled();
            let end = relay::relay(
                &mut client,
                &mut backend.stream,
                shared.config.limits.idle_timeout,
                catch_terminate,
            )
            .await;
            drop(_cancel);
            if let (RelayEnd::Terminated(_), Some(key)) = (&end, pool_key) {
                let _ = client.shutdown().await;
                drop(client);
                shared.pool.give_back(key, backend).await;
            }
            shared.metrics.session_ended();
            let (counts, how) = match &end {
                RelayEnd::Closed(r) => (*r, "closed".to_string()),
                RelayEnd::Terminated(r) => (*r, "terminated".to_string()),
                RelayEnd::Idle(r) => (*r, "idle timeout".to_string()),
                RelayEnd::Error(e, r) => (*r, format!("error: {e}")),
            };
            shared
                .metrics
                .relayed(counts.client_to_backend, counts.backend_to_client);
            tracing::info!(
                client.addr = %peer,
                user = %user,
                bytes.up = counts.client_to_backend,
                bytes.down = counts.backend_to_client,
                end = %how,
                "session ended"
            );
        }
        Outcome::RateLimited => {
            shared.metrics.connection("rate_limited");
            tracing::warn!(client.addr = %peer, "refused: too many failed logins from this address");
        }
        Outcome::AuthFailed { user, cause } => {
            shared.metrics.connection("auth_failed");
            shared.limiter.record_failure(peer.ip());
            tracing::warn!(client.addr = %peer, user = %user, cause = %cause, "authentication failed");
        }
        Outcome::PlaintextRefused => {
            shared.metrics.connection("plaintext_refused");
            tracing::info!(client.addr = %peer, "refused a plaintext connection: TLS is required");
        }
        Outcome::Cancel => shared.metrics.connection("cancel"),
        Outcome::TlsFailed(e) => {
            shared.metrics.connection("tls_failed");
            tracing::info!(client.addr = %peer, error = %e, "TLS handshake failed");
        }
        Outcome::Protocol(e) => {
            shared.metrics.connection("protocol_error");
            tracing::info!(client.addr = %peer, error = %e, "protocol error");
        }
        Outcome::BackendFailed(e) => {
            shared.metrics.connection("backend_failed");
            tracing::warn!(client.addr = %peer, error = %e, "could not log in to Postgres");
        }
        Outcome::Closed => shared.metrics.connection("closed"),
    }
}

/// Refuse on a plaintext connection with one ErrorResponse (also understood by a client
/// waiting for the answer to its SSLRequest).
pub async fn refuse_plain(mut stream: TcpStream, code: &str, message: &str) {
    let mut out = Vec::new();
    msg::error_response(&mut out, "FATAL", code, message, None, None);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

async fn negotiate(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    blocked: bool,
) -> Outcome {
    // Step 1: what does the client want?
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => return Outcome::Closed,
        Ok(_) => {}
    }
    if first[0] != 0x16 {
        let mut gss_refused = false;
        loop {
            let packet = match pgwire::read_startup_packet(&mut stream).await {
                Ok(p) => p,
                Err(WireError::Closed) => return Outcome::Closed,
                Err(e) => {
                    refuse_plain(stream, "08P01", &format!("invalid startup packet: {e}")).await;
                    return Outcome::Protocol(e.to_string());
                }
            };
            match packet {
                StartupPacket::SslRequest => {
                    // Bytes already waiting after the SSLRequest were sent in the clear
                    // before TLS: never treat them as part of the session.
                    let mut probe = [0u8; 1];
                    match stream.try_read(&mut probe) {
                        Ok(0) => return Outcome::Closed,
                        Ok(_) => {
                            refuse_plain(
                                stream,
                                "08P01",
                                "received unencrypted data after SSL request",
                            )
                            .await;
                            return Outcome::Protocol(
                                "plaintext bytes pipelined after SSLRequest".into(),
                            );
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return Outcome::Closed,
                    }
                    if stream.write_all(b"S").await.is_err() {
                        return Outcome::Closed;
                    }
                    break;
                }
                StartupPacket::GssEncRequest if !gss_refused => {
                    gss_refused = true;
                    if stream.write_all(b"N").await.is_err() {
                        return Outcome::Closed;
                    }
                }
                StartupPacket::Cancel { pid, key } => {
                    forward_cancel(shared, pid, &key, peer).await;
                    return Outcome::Cancel;
                }
                StartupPacket::Startup { .. } => {
                    refuse_plain(
                        stream,
                        SQLSTATE_AUTH,
                        "TLS is required: this TeeSQL endpoint accepts only encrypted connections (use sslmode=require or verify-full, or a TeeSQL client library)",
                    )
                    .await;
                    return Outcome::PlaintextRefused;
                }
                StartupPacket::GssEncRequest => {
                    refuse_plain(stream, "08P01", "GSSENCRequest sent twice").await;
                    return Outcome::Protocol("GSSENCRequest sent twice".into());
                }
            }
        }
    }

    // Step 2: TLS.
    // Channel binding needs the hash of the certificate this handshake served. A renewal
    // that lands during the handshake leaves that unknown; such a session is offered plain
    // SCRAM-SHA-256 only, rather than a -PLUS that would fail.
    let before = shared.cert.current();
    let mut tls = match shared.tls.accept(stream).await {
        Ok(t) => t,
        Err(e) => return Outcome::TlsFailed(e.to_string()),
    };
    let end_point =
        Arc::ptr_eq(&before, &shared.cert.current()).then(|| before.end_point_hash.clone());
    drop(before);
    let (sni, alpn, chain) = {
        let conn = tls.get_ref().1;
        (
            conn.server_name().unwrap_or_default().to_string(),
            conn.alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_default(),
            conn.peer_certificates()
                .map(|c| c.iter().map(|d| d.to_vec()).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    };

    // Step 3: the StartupMessage, inside TLS.
    let packet = match pgwire::read_startup_packet(&mut tls).await {
        Ok(p) => p,
        Err(WireError::Closed) => return Outcome::Closed,
        Err(e) => {
            fatal(&mut tls, "08P01", &format!("invalid startup packet: {e}")).await;
            return Outcome::Protocol(e.to_string());
        }
    };
    let (minor, params) = match packet {
        StartupPacket::Startup { minor, params, .. } => (minor, params),
        StartupPacket::Cancel { pid, key } => {
            forward_cancel(shared, pid, &key, peer).await;
            return Outcome::Cancel;
        }
        other => {
            fatal(&mut tls, "08P01", "unexpected request inside TLS").await;
            return Outcome::Protocol(format!("{other:?} inside TLS"));
        }
    };
    if blocked {
        fatal(&mut tls, SQLSTATE_AUTH, AUTH_FAILED).await;
        return Outcome::RateLimited;
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let Some(user) = get("user").filter(|u| !u.is_empty()) else {
        fatal(
            &mut tls,
            SQLSTATE_AUTH,
            "no PostgreSQL user name specified in startup packet",
        )
        .await;
        return Outcome::Protocol("no user in StartupMessage".into());
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        fatal(
            &mut tls,
            "0A000",
            "replication connections are not supported through the TeeSQL sidecar",
        )
        .await;
        return Outcome::Protocol("replication connection".into());
    }
    let unsupported: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.as_str())
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        let mut out = Vec::new();
        msg::negotiate_protocol_version(&mut out, 0, &unsupported);
        if tls.write_all(&out).await.is_err() {
            return Outcome::Closed;
        }
    }

    // Ask the verifier now; authenticate the client meanwhile.
    let request = VerifyPeerRequest {
        purpose: "sidecar".into(),
        chain,
        user: user.clone(),
        database: database.clone(),
        sni,
        client_addr: peer.to_string(),
        alpn,
        expected_mrtds: Vec::new(),
    };
    let verifier = shared.verifier.clone();
    let asked = Instant::now();
    let decision = tokio::spawn(async move { verifier.verify_peer(request).await });

    let forwarded = backend::forwarded_params(&user, &database, &params);
    let cfg = &shared.config;
    if cfg.auth.is_passthrough(&user) {
        if let Err(cause) = decided(shared, decision, asked).await {
            fatal(&mut tls, SQLSTATE_AUTH, AUTH_FAILED).await;
            return Outcome::AuthFailed { user, cause };
        }
        let logged_in = match backend::passthrough_login(
            &mut tls,
            &cfg.backend.addr,
            &forwarded,
            cfg.backend.connect_timeout,
        )
        .await
        {
            Ok(l) => l,
            Err(BackendError::Refused { code, message, .. }) if code.starts_with("28") => {
                fatal(&mut tls, SQLSTATE_AUTH, AUTH_FAILED).await;
                return Outcome::AuthFailed {
                    user,
                    cause: format!("Postgres refused the passthrough login: {message}"),
                };
            }
            Err(e) => return backend_failed(&mut tls, e).await,
        };
        return finish(shared, tls, logged_in, Vec::new(), user, database, None).await;
    }

    let auth = match authenticate(&mut tls, &cfg.auth, cfg.auth_method, &user, end_point).await {
        Ok(a) => a,
        Err(AuthFailure::Closed) => return Outcome::Closed,
        Err(AuthFailure::Protocol(e)) => {
            fatal(&mut tls, SQLSTATE_AUTH, AUTH_FAILED).await;
            return Outcome::AuthFailed {
                user,
                cause: format!("authentication protocol error: {e}"),
            };
        }
    };
    let verdict = decided(shared, decision, asked).await;
    let cause = match (&auth, verdict) {
        (Authenticated::Yes(_), Ok(())) => None,
        (Authenticated::No(why), Ok(())) => Some(why.clone()),
        (Authenticated::Yes(_), Err(v)) => Some(v),
        (Authenticated::No(why), Err(v)) => Some(format!("{why}; {v}")),
    };
    if let Some(cause) = cause {
        fatal(&mut tls, SQLSTATE_AUTH, AUTH_FAILED).await;
        return Outcome::AuthFailed { user, cause };
    }
    let Authenticated::Yes(sasl_final) = auth else {
        return Outcome::Protocol("unreachable".into());
    };

    // Step 5: log in to Postgres as the role, or take a connection kept from an earlier
    // session of the same role, database and parameters.
    let key = PoolKey {
        user: user.clone(),
        database: database.clone(),
        params: forwarded
            .iter()
            .skip(2)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    let logged_in = match shared.pool.take(&key) {
        Some(l) => l,
        None => match backend::login(
            &cfg.backend.addr,
            cfg.backend.method,
            cfg.backend.password.as_ref(),
            &forwarded,
            cfg.backend.connect_timeout,
        )
        .await
        {
            Ok(l) => l,
            Err(e) => return backend_failed(&mut tls, e).await,
        },
    };
    finish(
        shared,
        tls,
        logged_in,
        sasl_final,
        user,
        database,
        Some(key),
    )
    .await
}

/// The client's authentication result: `Yes(SASLFinal message or empty)` or `No(cause)`.
#[derive(Debug)]
enum Authenticated {
    Yes(Vec<u8>),
    No(String),
}

#[derive(Debug)]
enum AuthFailure {
    Closed,
    Protocol(String),
}

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &mut S,
    auth: &AuthMap,
    method: ClientAuthMethod,
    user: &str,
    end_point: Option<Vec<u8>>,
) -> Result<Authenticated, AuthFailure> {
    let role = auth.role(user);
    let mut out = Vec::new();
    match method {
        ClientAuthMethod::Cleartext => {
            msg::authentication_cleartext_password(&mut out);
            send(tls, &out).await?;
            let body = read_p(tls).await?;
            let password = pgwire::parse_password_message(&body)
                .map_err(|e| AuthFailure::Protocol(e.to_string()))?;
            Ok(match role {
                Some(r) if r.check_cleartext(&password) => Authenticated::Yes(Vec::new()),
                Some(_) => Authenticated::No("wrong secret".into()),
                None => Authenticated::No(format!("unknown role {user:?}")),
            })
        }
        ClientAuthMethod::Scram => {
            let decoy;
            let verifier = match role {
                Some(r) => r.scram(),
                None => {
                    decoy = auth.decoy(user);
                    &decoy
                }
            };
            let plus = end_point.is_some();
            let mut server = ScramServer::new(verifier, end_point);
            msg::authentication_sasl(&mut out, ScramServer::mechanisms(plus));
            send(tls, &out).await?;
            let body = read_p(tls).await?;
            let (mechanism, data) = pgwire::parse_sasl_initial_response(&body)
                .map_err(|e| AuthFailure::Protocol(e.to_string()))?;
            let server_first = server
                .client_first(&mechanism, &data)
                .map_err(|e| AuthFailure::Protocol(e.to_string()))?;
            out.clear();
            msg::authentication_sasl_continue(&mut out, &server_first);
            send(tls, &out).await?;
            let body = read_p(tls).await?;
            match server.client_final(&body) {
                Ok(server_final) if role.is_some() => Ok(Authenticated::Yes(server_final)),
                Ok(_) | Err(ScramError::AuthFailed) => Ok(Authenticated::No(if role.is_some() {
                    "wrong secret".into()
                } else {
                    format!("unknown role {user:?}")
                })),
                Err(e) => Err(AuthFailure::Protocol(e.to_string())),
            }
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) -> Result<(), AuthFailure> {
    s.write_all(bytes).await.map_err(|_| AuthFailure::Closed)?;
    s.flush().await.map_err(|_| AuthFailure::Closed)
}

/// Read one PasswordMessage / SASL message ('p').
async fn read_p<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, AuthFailure> {
    match pgwire::read_message(s, pgwire::MAX_AUTH_MESSAGE_LEN).await {
        Ok((b'p', body)) => Ok(body),
        Ok((tag, _)) => Err(AuthFailure::Protocol(format!(
            "expected a password message, got {:?}",
            tag as char
        ))),
        Err(WireError::Closed | WireError::Io(_)) => Err(AuthFailure::Closed),
        Err(e) => Err(AuthFailure::Protocol(e.to_string())),
    }
}

/// Await the verifier: `Ok` only on an explicit allow.
async fn decided(
    shared: &Shared,
    handle: tokio::task::JoinHandle<Result<Decision, VerifierUnavailable>>,
    asked: Instant,
) -> Result<(), String> {
    let result = handle.await;
    let ok = matches!(result, Ok(Ok(_)));
    shared.metrics.verifier_call(asked.elapsed(), ok);
    match result {
        Ok(Ok(d)) if d.allow => Ok(()),
        Ok(Ok(d)) => Err(format!(
            "verifier denied ({}): {}",
            d.policy_id,
            d.reasons
                .iter()
                .map(|r| format!("{}: {}", r.code, r.message))
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Ok(Err(e)) => Err(format!("verifier unavailable, failing closed: {e}")),
        Err(e) => Err(format!("verifier call failed: {e}")),
    }
}

async fn backend_failed<S: AsyncWrite + Unpin>(tls: &mut S, e: BackendError) -> Outcome {
    match &e {
        BackendError::Refused { raw, .. } => {
            // What Postgres says to an authenticated client (e.g. no such database).
            let _ = tls.write_all(raw).await;
            let _ = tls.shutdown().await;
        }
        _ => {
            fatal(
                tls,
                "08006",
                "the database is not available right now; try again shortly",
            )
            .await
        }
    }
    Outcome::BackendFailed(e.to_string())
}

/// Tell the client it is in: AuthenticationOk, parameters, a sidecar-issued cancel key,
/// ReadyForQuery.
async fn finish(
    shared: &Arc<Shared>,
    mut tls: TlsStream<TcpStream>,
    logged_in: LoggedIn,
    sasl_final: Vec<u8>,
    user: String,
    database: String,
    pool_key: Option<PoolKey>,
) -> Outcome {
    let mut out = Vec::with_capacity(512);
    if !sasl_final.is_empty() {
        msg::authentication_sasl_final(&mut out, &sasl_final);
    }
    msg::authentication_ok(&mut out);
    for (k, v) in &logged_in.params {
        msg::parameter_status(&mut out, k, v);
    }
    let guard = logged_in
        .cancel_key
        .as_ref()
        .map(|(pid, key)| shared.cancels.register(*pid, key.clone()));
    if let Some(g) = &guard {
        msg::backend_key_data(&mut out, g.pid, &g.key);
    }
    out.extend_from_slice(&logged_in.notices);
    msg::ready_for_query(&mut out, b'I');
    if tls.write_all(&out).await.is_err() || tls.flush().await.is_err() {
        return Outcome::Closed;
    }
    Outcome::Session(Box::new(Ready {
        client: tls,
        backend: logged_in,
        _cancel: guard,
        user,
        database,
        pool_key,
    }))
}

/// Send one FATAL ErrorResponse and close.
async fn fatal<S: AsyncWrite + Unpin>(s: &mut S, code: &str, message: &str) {
    let mut out = Vec::new();
    msg::error_response(&mut out, "FATAL", code, message, None, None);
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

async fn forward_cancel(shared: &Shared, pid: i32, key: &[u8], peer: SocketAddr) {
    match shared.cancels.lookup(pid, key) {
        Some((backend_pid, backend_key)) => {
            if let Err(e) =
                backend::cancel(&shared.config.backend.addr, backend_pid, &backend_key).await
            {
                tracing::warn!(client.addr = %peer, error = %e, "could not forward a cancel request");
            } else {
                tracing::info!(client.addr = %peer, "cancel request forwarded");
            }
        }
        None => tracing::info!(client.addr = %peer, "cancel request for no live session; ignored"),
    }
}

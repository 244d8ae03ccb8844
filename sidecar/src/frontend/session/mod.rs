//! One client connection, from accept to relay (DESIGN.md, "One handshake, end to end").
//!
//! 1. [`negotiate`]: SSLRequest, GSSENCRequest, CancelRequest or direct TLS, then TLS
//!    (a client certificate is optional at the TLS layer). Deadline `tls_handshake_timeout`.
//! 2. [`startup`]: the StartupMessage inside TLS. Its own, longer deadline
//!    (`startup_timeout`): TeeSQL's client libraries verify the server's quote between
//!    TLS and their StartupMessage.
//! 3. [`authenticate`] and [`login`]: the verifier's decision starts at once, in parallel
//!    with client authentication; then the login to Postgres. Deadline `login_timeout`.
//!    SCRAM-SHA-256-PLUS is offered by `auth.channel_binding`: by default only to a TLS
//!    peer that negotiated ALPN `postgresql`, the mark of a Postgres client that made the
//!    TLS connection itself; a forwarder relaying for a plaintext driver sends none, and
//!    libpq behind it would refuse a -PLUS offer.
//! 4. Any failure ends in exactly one response, chosen by [`HandshakeError::response`]:
//!    every refusal (wrong secret, unknown role, verifier deny or unreachable) is the
//!    same `FATAL 28000 authentication_failed`; the cause goes to the log and metrics.
//! 5. Relay bytes until either side is done.

mod authenticate;
pub mod error;
mod login;
mod negotiate;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use teesql_proto::v1::VerifyPeerRequest;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use self::authenticate::Authenticated;
pub use self::error::{AUTH_FAILED, HandshakeError, Outcome, Phase, Refusal, Response};
use self::negotiate::ClientHello;
use self::startup::Startup;
use crate::config::ChannelBinding;
use crate::frontend::cancel::CancelGuard;
use crate::frontend::live::Admitted;
use crate::frontend::relay::{self, RelayEnd};
pub use crate::params::{FORWARDED_BY_DEFAULT, StartupParameters};
use crate::pgwire;
use crate::postgres::identity_rows::SessionIdentity;
use crate::postgres::login::{self as backend, BackendError, LoggedIn};
use crate::postgres::pool::PoolKey;

pub use crate::state::Shared;

/// A logged-in session, ready to relay.
#[derive(Debug)]
struct Ready {
    client: TlsStream<TcpStream>,
    backend: LoggedIn,
    _cancel: Option<CancelGuard>,
    user: String,
    role: String,
    database: String,
    /// Set when the Postgres connection may be reused after the client terminates.
    pool_key: Option<PoolKey>,
    /// What the session was admitted on, to re-judge it when the policy changes.
    admitted: Option<Admitted>,
}

/// Serve one accepted connection to its end, in a span carrying its session id (the id
/// the verifier logs its admission decision under) and the client's address, so every
/// log line about it can be found by one id in both programs.
pub async fn handle(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    use tracing::Instrument;
    let id = session_id();
    let span = tracing::info_span!("session", session_id = %id, client.addr = %peer);
    serve_connection(shared, stream, peer, id)
        .instrument(span)
        .await;
}

/// A fresh session id: 16 hex digits from the system's random source.
pub(crate) fn session_id() -> String {
    let mut raw = [0u8; 8];
    // Without randomness the id is zero: log lines lose correlation, nothing else.
    let _ = getrandom::fill(&mut raw);
    hex::encode(raw)
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, id: String) {
    let started = Instant::now();
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(15)),
    );
    // Handshakes in progress are capped per address; past the cap the connection gets
    // one plaintext error at once (as Postgres answers "too many clients").
    let Some(slot) = shared.limiter.begin_handshake(peer.ip()) else {
        let e = HandshakeError::TooManyFromAddress;
        ended(&shared, &e, peer);
        refuse_plain(stream, e).await;
        return;
    };
    // Boxed: a task holds its future inline for the session's life, and the handshake's
    // states (TLS, SCRAM, the verifier's question, the Postgres login) are several KiB
    // that an established session no longer needs.
    let result = Box::pin(handshake(&shared, stream, peer, &id)).await;
    drop(slot);
    match result {
        Ok(ready) => {
            shared.metrics.handshake(started.elapsed());
            shared.metrics.connection(Outcome::Session);
            let admitted = ready.admitted.as_ref();
            tracing::info!(
                client.addr = %peer,
                user = %ready.user,
                role = %ready.role,
                database = %ready.database,
                tenant = admitted.and_then(|a| a.tenant.as_deref()).unwrap_or_default(),
                policy.hash = admitted.map(|a| a.policy_hash.as_str()).unwrap_or_default(),
                handshake_ms = started.elapsed().as_millis() as u64,
                "session started"
            );
            serve_session(&shared, ready, peer).await;
        }
        Err(e) => ended(&shared, &e, peer),
    }
}

/// Count and log a handshake that ended without a session.
fn ended(shared: &Shared, e: &HandshakeError, peer: SocketAddr) {
    shared.metrics.connection(e.outcome());
    match e {
        HandshakeError::Closed | HandshakeError::CancelRequest => {}
        HandshakeError::AuthFailed { user, causes } => {
            // Only what the client caused counts against it: not a verifier outage.
            if causes.iter().any(Refusal::is_client_fault) {
                shared.limiter.record_failure(peer.ip(), user);
            }
            tracing::warn!(client.addr = %peer, user = %user, cause = %e, "authentication failed");
        }
        HandshakeError::RateLimited
        | HandshakeError::Backend(_)
        | HandshakeError::TooManyConnections
        | HandshakeError::TooManyFromAddress => {
            tracing::warn!(client.addr = %peer, error = %e, "refused");
        }
        _ => tracing::info!(client.addr = %peer, error = %e, "handshake ended"),
    }
}

/// Relay a logged-in session until either side is done; with reuse on, keep the Postgres
/// connection of a client that said Terminate.
async fn serve_session(shared: &Arc<Shared>, ready: Box<Ready>, peer: SocketAddr) {
    shared.metrics.session_started();
    // Taken by the box and moved out at once: an argument moved into an async fn and
    // then taken apart is kept twice in the task, for the session's life.
    fn unbox(ready: Box<Ready>) -> Ready {
        *ready
    }
    let Ready {
        mut client,
        mut backend,
        _cancel,
        user,
        pool_key,
        admitted,
        ..
    } = unbox(ready);
    let catch_terminate = pool_key.is_some() && shared.pool.enabled();
    if !catch_terminate {
        // Postgres' parameters and login notices are kept only for a connection that may
        // be handed to another client; the client has had them.
        backend.params = Vec::new();
        backend.notices = Vec::new();
    }
    let mut registration = admitted.map(|a| shared.sessions.register(a));
    // Boxed once, so that `follow` holds a pointer rather than a second copy of it.
    let relaying = Box::pin(relay::relay_metered(
        &mut client,
        &mut backend.stream,
        shared.config.limits.idle_timeout,
        catch_terminate,
        registration.as_ref().map(|r| r.meter.clone()),
    ));
    let end = match registration.as_mut() {
        Some(reg) => follow(shared, reg, relaying).await,
        None => Ok(relaying.await),
    };
    drop(registration);
    drop(_cancel);
    let end = match end {
        Ok(end) => end,
        Err(revocation) => {
            // No longer admitted: the client is told (no policy detail), its Postgres
            // connection is closed with it and never kept for another.
            let mut out = Vec::new();
            pgwire::backend::error_response(
                &mut out,
                "FATAL",
                pgwire::sqlstate::ADMIN_SHUTDOWN,
                "terminating connection: the session's attestation is no longer accepted",
                None,
                None,
            );
            let _ = client.write_all(&out).await;
            let _ = client.shutdown().await;
            drop(backend);
            shared.metrics.session_ended();
            tracing::warn!(
                client.addr = %peer,
                user = %user,
                codes = %revocation.codes.join(","),
                policy.hash = %revocation.policy_hash,
                end = "revoked",
                "session ended"
            );
            return;
        }
    };
    // Only a connection that was quiet at the client's Terminate (everything it asked
    // answered, idle) is reset and kept; any other is closed with the session.
    if let (RelayEnd::Terminated { quiet: true, .. }, Some(key)) = (&end, pool_key) {
        let _ = client.shutdown().await;
        drop(client);
        // Boxed for the same reason as the handshake: resetting a connection for reuse
        // takes KiB of state that a relaying session would otherwise carry all along.
        Box::pin(shared.pool.give_back(key, backend)).await;
    }
    shared.metrics.session_ended();
    let (counts, how) = match &end {
        RelayEnd::Closed(r) => (*r, "closed".to_string()),
        RelayEnd::Terminated { relayed, quiet } => (
            *relayed,
            if *quiet {
                "terminated".to_string()
            } else {
                "terminated with requests in flight".to_string()
            },
        ),
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

/// Relay while the session stays admitted: until the relay ends, a re-judging ends it,
/// or it reaches `limits.session_max_age_secs`. When its decision's facts expire (the
/// client's certificate, the collateral), it is judged again in the background.
async fn follow(
    shared: &Arc<Shared>,
    reg: &mut crate::frontend::live::Registration,
    relaying: impl std::future::Future<Output = RelayEnd>,
) -> Result<RelayEnd, crate::frontend::live::Revocation> {
    let mut relaying = std::pin::pin!(relaying);
    let mut max_age = shared
        .config
        .limits
        .session_max_age
        .map(|d| tokio::time::Instant::now() + d);
    let mut check_at: Option<tokio::time::Instant> = None;
    loop {
        let (valid_until, now) = (reg.valid_until(), teesql_appraisal::Clock::System.now());
        if valid_until >= now && valid_until > 0 {
            // The facts hold through their last second; judge it the second after.
            check_at =
                Some(tokio::time::Instant::now() + Duration::from_secs(valid_until + 1 - now));
        } else if valid_until > 0 && check_at.is_none() {
            check_at = Some(tokio::time::Instant::now());
        }
        tokio::select! {
            end = &mut relaying => return Ok(end),
            Ok(revocation) = &mut reg.revoked => return Err(revocation),
            _ = tokio::time::sleep_until(check_at.unwrap_or_else(tokio::time::Instant::now)), if check_at.is_some() => {
                let (s, id) = (shared.clone(), reg.id());
                tokio::spawn(async move { s.sessions.rejudge_one(&s.judge(), id).await });
                // Unless the re-judging finds newer facts, look again in a minute.
                check_at = Some(tokio::time::Instant::now() + Duration::from_secs(60));
            }
            _ = tokio::time::sleep_until(max_age.unwrap_or_else(tokio::time::Instant::now)), if max_age.is_some() => {
                max_age = None;
                shared.sessions.end(&shared.metrics, reg.id(), "session_max_age");
            }
        }
    }
}

/// The whole handshake, phase by phase, each under its own deadline. On failure the
/// client has been sent the error's one response.
async fn handshake(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    id: &str,
) -> Result<Box<Ready>, HandshakeError> {
    let limits = &shared.config.limits;

    // Phase 1: negotiation and TLS, one deadline for both; a shorter one for the first
    // packet (an SSLRequest, a ClientHello), which any client sends at once.
    let tls_deadline = tokio::time::Instant::now() + limits.tls_handshake_timeout;
    let timed_out = || HandshakeError::Timeout(Phase::Tls, limits.tls_handshake_timeout);
    let first_packet = limits
        .first_packet_timeout
        .min(limits.tls_handshake_timeout);
    match tokio::time::timeout(first_packet, negotiate::first_packet(&stream)).await {
        Err(_) => return Err(HandshakeError::Timeout(Phase::FirstPacket, first_packet)),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    match tokio::time::timeout_at(
        tls_deadline,
        negotiate::before_tls(shared, &mut stream, peer),
    )
    .await
    {
        Err(_) => return Err(timed_out()),
        Ok(Err(e)) => {
            respond(&mut stream, &e).await;
            return Err(e);
        }
        Ok(Ok(())) => {}
    }
    let (mut tls, hello) = tokio::time::timeout_at(tls_deadline, negotiate::tls(shared, stream))
        .await
        .map_err(|_| timed_out())??;
    match after_tls(shared, &mut tls, peer, hello, id).await {
        Ok(session) => Ok(Box::new(Ready {
            client: tls,
            backend: session.backend,
            _cancel: session.cancel,
            user: session.user,
            role: session.role,
            database: session.database,
            pool_key: session.pool_key,
            admitted: session.admitted,
        })),
        Err(e) => {
            respond(&mut tls, &e).await;
            Err(e)
        }
    }
}

/// A logged-in session's parts, before the stream joins them.
#[derive(Debug)]
struct Session {
    backend: LoggedIn,
    cancel: Option<CancelGuard>,
    user: String,
    /// The Postgres role: the user, or the role granted for it.
    role: String,
    database: String,
    pool_key: Option<PoolKey>,
    admitted: Option<Admitted>,
}

/// Phases 2 and 3, inside TLS.
async fn after_tls(
    shared: &Arc<Shared>,
    tls: &mut TlsStream<TcpStream>,
    peer: SocketAddr,
    hello: ClientHello,
    id: &str,
) -> Result<Session, HandshakeError> {
    let limits = &shared.config.limits;
    let startup = tokio::time::timeout(limits.startup_timeout, startup::read(shared, tls, peer))
        .await
        .map_err(|_| HandshakeError::Timeout(Phase::Startup, limits.startup_timeout))??;
    // A client over its limits still gets the protocol it speaks (TLS, then one FATAL
    // after its StartupMessage), so it sees the same refusal as any other; it just never
    // reaches authentication or the verifier.
    if shared.limiter.is_blocked(peer.ip(), &startup.user) {
        return Err(HandshakeError::RateLimited);
    }
    let result = tokio::time::timeout(
        limits.login_timeout,
        log_in(shared, tls, peer, hello, startup, id),
    )
    .await
    .map_err(|_| HandshakeError::Timeout(Phase::Login, limits.login_timeout))
    .and_then(|r| r);
    // The verifier has been asked: a client that goes away now (or stalls) has cost an
    // appraisal without failing a login, and counts in its own budget.
    if matches!(
        result,
        Err(HandshakeError::Closed | HandshakeError::Timeout(Phase::Login, _))
    ) {
        shared.limiter.record_abandoned(peer.ip());
    }
    result
}

/// A passthrough role's login: against its SCRAM verifier from Postgres, the exchange
/// runs here (with channel binding when `end_point` is given) and the ClientKey the
/// client proved logs in to Postgres, which decides; without a readable SCRAM verifier,
/// Postgres' own exchange is relayed. Returns the Postgres session and the SASLFinal the
/// client gets with AuthenticationOk (none after a relayed exchange).
async fn passthrough(
    shared: &Shared,
    tls: &mut TlsStream<TcpStream>,
    user: &str,
    forwarded: &backend::Forwarded,
    end_point: Option<Vec<u8>>,
) -> Result<(LoggedIn, Vec<u8>), HandshakeError> {
    let forwarded = &forwarded.pairs();
    use crate::postgres::passthrough::Lookup;
    let cfg = &shared.config;
    let refused = |why: Refusal| HandshakeError::AuthFailed {
        user: user.to_string(),
        causes: vec![why],
    };
    let verifier = match shared.passthrough.get(&cfg.backend, user).await {
        Lookup::Scram(v) => v,
        other => {
            if let Lookup::Unavailable(why) = other {
                tracing::warn!(user, error = %why, "no SCRAM verifier for the passthrough role: relaying Postgres' own exchange (no channel binding)");
            }
            let relayed = backend::passthrough_login(
                tls,
                &cfg.backend.addr,
                forwarded,
                cfg.backend.connect_timeout,
            )
            .await;
            return match relayed {
                Ok(l) => Ok((l, Vec::new())),
                Err(BackendError::Refused { code, message, .. }) if code.starts_with("28") => {
                    Err(refused(Refusal::PassthroughRefused(message)))
                }
                Err(e) => Err(HandshakeError::Backend(e)),
            };
        }
    };
    let Some((sasl_final, keys)) =
        authenticate::passthrough_exchange(tls, &verifier, end_point, user).await?
    else {
        // A wrong password, or one changed since the verifier was read: read it again
        // next time (failed logins are rate-limited per address).
        shared.passthrough.forget(user);
        return Err(refused(Refusal::WrongSecret));
    };
    match backend::login_with_keys(
        &cfg.backend.addr,
        keys,
        forwarded,
        cfg.backend.connect_timeout,
    )
    .await
    {
        Ok(l) => Ok((l, sasl_final)),
        Err(e) => {
            // The verifier no longer is Postgres' (the password changed): read it again
            // next time.
            shared.passthrough.forget(user);
            match e {
                BackendError::Refused { code, message, .. } if code.starts_with("28") => {
                    Err(refused(Refusal::PassthroughRefused(message)))
                }
                BackendError::Protocol(m) if m.contains("verifier changed") => {
                    Err(refused(Refusal::PassthroughRefused(m)))
                }
                e => Err(HandshakeError::Backend(e)),
            }
        }
    }
}

/// What authorizes a session: the role it logs in to Postgres as, the SCRAM server-final
/// message owed to the client (empty without an exchange), and the decision.
struct Authorized {
    role: String,
    sasl_final: Vec<u8>,
    decision: teesql_proto::v1::Decision,
}

/// The verifier's decision, asked at the start of phase 3 and awaited when a role class
/// needs it.
struct Pending {
    handle: tokio::task::JoinHandle<
        Result<teesql_proto::v1::Decision, crate::verifier::VerifierUnavailable>,
    >,
    asked: Instant,
}

fn auth_failed(user: &str, why: Refusal) -> HandshakeError {
    HandshakeError::AuthFailed {
        user: user.to_string(),
        causes: vec![why],
    }
}

/// Phase 3: the verifier's decision and the client's authentication, then Postgres. One
/// function per role class decides who the client is; the rest is the same for all.
async fn log_in(
    shared: &Arc<Shared>,
    tls: &mut TlsStream<TcpStream>,
    peer: SocketAddr,
    hello: ClientHello,
    startup: Startup,
    id: &str,
) -> Result<Session, HandshakeError> {
    let Startup {
        user,
        database,
        params,
        ..
    } = startup;
    // Ask the verifier now; authenticate the client meanwhile.
    let request = VerifyPeerRequest {
        purpose: "sidecar".into(),
        chain: hello.chain,
        user: user.clone(),
        database: database.clone(),
        sni: hello.sni,
        client_addr: peer.to_string(),
        alpn: if hello.alpn_postgresql {
            "postgresql".into()
        } else {
            String::new()
        },
        decision_id: id.to_string(),
        ..VerifyPeerRequest::default()
    };
    let verifier = shared.verifier.clone();
    let asked_for = request.clone();
    let pending = Pending {
        asked: Instant::now(),
        handle: tokio::spawn(tracing::Instrument::in_current_span(async move {
            verifier.verify_peer(request).await
        })),
    };
    let cfg = &shared.config;
    // SCRAM-SHA-256-PLUS binds the login to this TLS channel, for every role alike (a
    // passthrough role's exchange runs here too, against its verifier from Postgres).
    // `auto` offers it only to a peer that negotiated ALPN `postgresql` (libpq 17+):
    // behind TeeSQL's forwarders the driver sees plaintext and libpq would refuse it.
    let end_point = match cfg.channel_binding {
        ChannelBinding::Always => hello.end_point,
        ChannelBinding::Auto if hello.alpn_postgresql => hello.end_point,
        ChannelBinding::Auto | ChannelBinding::Never => None,
    };
    if cfg.auth.is_passthrough(&user) {
        let forwarded = backend::Forwarded::new(&user, &database, &params);
        let mut session = log_in_passthrough(shared, tls, pending, &forwarded, end_point).await?;
        session.admitted = Some(Admitted::new(
            asked_for,
            session.role.clone(),
            false,
            &teesql_proto::v1::Decision::default(),
        ));
        return Ok(session);
    }
    let authorized = if cfg.auth.needs_grant(&user) {
        authorize_granted(shared, tls, pending, &user, end_point).await?
    } else {
        authorize_cluster_role(shared, tls, pending, &user, end_point).await?
    };
    let Authorized {
        role,
        sasl_final,
        decision,
    } = authorized;
    let forwarded = backend::Forwarded::new(&role, &database, &params);
    let key = PoolKey {
        user: role.clone(),
        database: database.clone(),
        params: forwarded.settings.clone(),
    };
    let logged_in = login::to_postgres(shared, &key, &forwarded.pairs()).await?;
    if let Some(recorder) = &shared.identities {
        let identity = SessionIdentity::from_decision(&decision, &user, &role);
        let recorded = match &logged_in.cancel_key {
            Some((pid, _)) => recorder.record(&database, *pid, &identity).await,
            None => Err(crate::postgres::identity_rows::RecordError::NoProcessId),
        };
        recorded.map_err(|e| HandshakeError::Backend(BackendError::Identity(e)))?;
    }
    let cancel = login::welcome(shared, tls, &logged_in, &sasl_final).await?;
    let admitted = Admitted::new(
        asked_for,
        role.clone(),
        cfg.auth.needs_grant(&user),
        &decision,
    );
    Ok(Session {
        backend: logged_in,
        cancel,
        user,
        role,
        database,
        pool_key: Some(key),
        admitted: Some(admitted),
    })
}

/// A role Postgres authenticates: the decision first (it must allow the role itself),
/// then the exchange against the role's own verifier, then Postgres. Never pooled.
async fn log_in_passthrough(
    shared: &Arc<Shared>,
    tls: &mut TlsStream<TcpStream>,
    pending: Pending,
    forwarded: &backend::Forwarded,
    end_point: Option<Vec<u8>>,
) -> Result<Session, HandshakeError> {
    let user = forwarded.user.clone();
    let verdict = authenticate::verdict(shared, pending.handle, pending.asked).await;
    if let Err(r) = verdict.and_then(|d| within_grants(&user, d)) {
        return Err(auth_failed(&user, r));
    }
    let (logged_in, sasl_final) = passthrough(shared, tls, &user, forwarded, end_point).await?;
    let cancel = login::welcome(shared, tls, &logged_in, &sasl_final).await?;
    Ok(Session {
        backend: logged_in,
        cancel,
        role: user.clone(),
        database: forwarded.database.clone(),
        user,
        pool_key: None,
        admitted: None,
    })
}

/// A granted role, or the tenant user: which role, and so which secret, depends on the
/// decision, so it is awaited first. A peer without the grant still goes through the
/// exchange (against a decoy for the tenant user) before the generic error, so that it
/// learns nothing of its grant before it proves a secret.
async fn authorize_granted(
    shared: &Shared,
    tls: &mut TlsStream<TcpStream>,
    pending: Pending,
    user: &str,
    end_point: Option<Vec<u8>>,
) -> Result<Authorized, HandshakeError> {
    let cfg = &shared.config;
    let chosen = authenticate::verdict(shared, pending.handle, pending.asked)
        .await
        .and_then(|d| Ok((granted_role(&cfg.auth, user, &d)?, d)));
    let (role, decision) = match chosen {
        Ok(chosen) => chosen,
        Err(why) => {
            authenticate::exchange(tls, &cfg.auth, cfg.auth_method, user, false, end_point).await?;
            return Err(auth_failed(user, why));
        }
    };
    let attestation_only = cfg.auth.role(&role).is_some_and(|r| r.attestation_only);
    let sasl_final = if attestation_only {
        Vec::new()
    } else {
        let as_tenant_user = cfg.auth.is_tenant_user(user);
        match authenticate::exchange(
            tls,
            &cfg.auth,
            cfg.auth_method,
            &role,
            as_tenant_user,
            end_point,
        )
        .await?
        {
            Authenticated::Yes(sasl_final) => sasl_final,
            Authenticated::No(why) => return Err(auth_failed(user, why)),
        }
    };
    Ok(Authorized {
        role,
        sasl_final,
        decision,
    })
}

/// A cluster role (`teesql_read`, `teesql_readwrite`, extra roles): the secret is checked
/// while the verifier decides; both must pass, and every failure is reported.
async fn authorize_cluster_role(
    shared: &Shared,
    tls: &mut TlsStream<TcpStream>,
    pending: Pending,
    user: &str,
    end_point: Option<Vec<u8>>,
) -> Result<Authorized, HandshakeError> {
    let cfg = &shared.config;
    let auth =
        authenticate::exchange(tls, &cfg.auth, cfg.auth_method, user, false, end_point).await?;
    let verdict = authenticate::verdict(shared, pending.handle, pending.asked).await;
    let verdict = verdict.and_then(|d| within_grants(user, d));
    match (auth, verdict) {
        (Authenticated::Yes(sasl_final), Ok(decision)) => Ok(Authorized {
            role: user.to_string(),
            sasl_final,
            decision,
        }),
        (auth, verdict) => {
            let mut causes = Vec::new();
            if let Authenticated::No(why) = auth {
                causes.push(why);
            }
            if let Err(v) = verdict {
                causes.push(v);
            }
            Err(HandshakeError::AuthFailed {
                user: user.to_string(),
                causes,
            })
        }
    }
}

/// The decision, unless it grants roles and `user` is none of them: a client the policy
/// gave roles (a tenant's application) never gets a cluster-wide role (the policy denies
/// it too).
fn within_grants(
    user: &str,
    decision: teesql_proto::v1::Decision,
) -> Result<teesql_proto::v1::Decision, Refusal> {
    match decision.grants.as_ref().map(|g| &g.roles) {
        Some(granted) if !granted.is_empty() && !granted.iter().any(|r| r == user) => {
            Err(Refusal::NotGranted {
                user: user.to_string(),
                granted: granted.clone(),
            })
        }
        _ => Ok(decision),
    }
}

/// The role a client that needs a grant logs in as: for the tenant user, the first role
/// the decision grants that is a granted role here; for a granted role, itself if the
/// decision grants it.
fn granted_role(
    auth: &crate::auth::AuthMap,
    user: &str,
    decision: &teesql_proto::v1::Decision,
) -> Result<String, Refusal> {
    let granted: Vec<String> = decision
        .grants
        .as_ref()
        .map(|g| g.roles.clone())
        .unwrap_or_default();
    let usable = |r: &&String| auth.role(r).is_some_and(|a| a.granted);
    let chosen = if auth.is_tenant_user(user) {
        granted.iter().find(usable)
    } else {
        granted.iter().filter(usable).find(|r| r.as_str() == user)
    };
    chosen.cloned().ok_or_else(|| Refusal::NotGranted {
        user: user.to_string(),
        granted,
    })
}

/// Send the error's one response, then close.
async fn respond<S: AsyncWrite + Unpin>(s: &mut S, e: &HandshakeError) {
    match e.response() {
        Response::Close => {}
        Response::Fatal { code, message } => pgwire::send_fatal(s, code, &message).await,
        Response::Raw(raw) => pgwire::send_and_close(s, &raw).await,
    }
}

/// Refuse a connection that has not started TLS with the error's one response (also
/// understood by a client waiting for the answer to its SSLRequest).
pub async fn refuse_plain(mut stream: TcpStream, e: HandshakeError) {
    respond(&mut stream, &e).await;
}

#[cfg(test)]
mod sizes {
    //! The bytes of a session's task: a tokio task holds its whole future inline, for
    //! the session's life, so the largest state any await point of it keeps is what
    //! every idle session costs.

    use super::*;

    fn of3<A, B, C, F>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn of4<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle session's task holds inline (the handshake and the relay's copy
    /// state are boxed apart; a session's buffers are counted by `teesql-bench`).
    const SESSION_TASK_MAX: usize = 3 * 1024;

    #[test]
    fn a_session_task_stays_small() {
        let task = of3::<Arc<Shared>, TcpStream, SocketAddr, _>(handle);
        let shake = of4::<&'static Arc<Shared>, TcpStream, SocketAddr, &'static str, _>(handshake);
        let relay = of3::<&'static Arc<Shared>, Box<Ready>, SocketAddr, _>(serve_session);
        eprintln!(
            "session task {task} B (handshake {shake} B, boxed; serve_session {relay} B; Ready {} B)",
            std::mem::size_of::<Ready>()
        );
        assert!(
            task <= SESSION_TASK_MAX,
            "a session's task future is {task} B, over {SESSION_TASK_MAX} B: a large state kept across an await (box it, or take arguments by Box)"
        );
        assert!(
            relay < shake,
            "serve_session ({relay} B) should not carry the handshake's state ({shake} B)"
        );
    }
}

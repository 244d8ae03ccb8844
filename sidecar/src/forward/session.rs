//! One local client's connection: its startup packet (plaintext, within a deadline), the
//! server found and judged, the authentication exchange relayed with only SCRAM-SHA-256
//! let through, then the relay.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{ForwardError, Forwarder};
use crate::frontend::relay;
use crate::pgwire::{self, StartupPacket, WireError, backend as msg};

/// Most a local client may take to send its startup packet.
pub const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Serve one local client to the end of its session, or to the error that ended it
/// before (its response not yet sent).
pub(super) async fn serve(
    fwd: &Forwarder,
    local: &mut TcpStream,
    peer: SocketAddr,
    id: &str,
) -> Result<(), ForwardError> {
    let _ = local.set_nodelay(true);
    let read = tokio::time::timeout(STARTUP_TIMEOUT, startup(fwd, local))
        .await
        .map_err(|_| ForwardError::StartupTimeout(STARTUP_TIMEOUT))?;
    let Some((startup, params)) = read? else {
        return Ok(()); // a cancel request, passed on
    };
    let user = pgwire::param(&params, "user").unwrap_or_default();
    let database = pgwire::param(&params, "database").unwrap_or_default();

    let (target, mut upstream) = fwd.reach().await.map_err(ForwardError::Unreachable)?;
    let chain: Vec<Vec<u8>> = upstream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.to_vec()).collect())
        .unwrap_or_default();
    if let Err(why) = fwd.judge(&chain, &target, user, database, peer, id).await {
        let _ = upstream.shutdown().await;
        return Err(ForwardError::ServerRejected {
            addr: target.addr.clone(),
            why,
        });
    }
    if upstream.write_all(&startup).await.is_err() {
        return Err(ForwardError::ServerClosed);
    }
    if let Err(e) =
        authentication_phase(local, &mut upstream, fwd.config.allow_cleartext_upstream).await
    {
        if matches!(e, ForwardError::AuthRefused(_)) {
            let _ = upstream.shutdown().await;
        }
        return Err(e);
    }
    let end = relay::relay(local, &mut upstream, None, false).await;
    tracing::debug!(client.addr = %peer, end = ?end, "forwarded session ended");
    Ok(())
}

/// The local client's startup message, as bytes to send on and its parameters. The
/// client speaks plaintext: an SSLRequest or GSSENCRequest is answered `N` (its DSN should
/// say sslmode=disable); a cancel request is passed on (`None`).
async fn startup(
    fwd: &Forwarder,
    local: &mut TcpStream,
) -> Result<Option<(Vec<u8>, Vec<(String, String)>)>, ForwardError> {
    loop {
        match pgwire::read_startup_packet(local).await {
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                local
                    .write_all(b"N")
                    .await
                    .map_err(|_| ForwardError::Closed)?;
            }
            Ok(StartupPacket::Startup {
                params,
                major,
                minor,
            }) => {
                let pairs: Vec<(&str, &str)> = params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                // Keep the version the client asked for; the sidecar negotiates.
                let bytes = pgwire::startup_message_version(major, minor, &pairs);
                return Ok(Some((bytes, params)));
            }
            Ok(StartupPacket::Cancel { pid, key }) => {
                fwd.forward_cancel(pid, &key).await;
                return Ok(None);
            }
            Err(WireError::Closed) => return Err(ForwardError::Closed),
            Err(e) => return Err(ForwardError::InvalidStartup(e)),
        }
    }
}

/// Relay the authentication exchange message by message. Only SCRAM-SHA-256 is relayed:
/// it never reveals the secret, even to a server that is not the one expected. A request
/// for a cleartext or MD5 password would have the local driver send the cluster secret
/// (or a replayable hash of it), so it is refused unless `allow_cleartext` is set.
/// SCRAM-SHA-256-PLUS is hidden from the local client: its connection to the forwarder
/// is plaintext, so it cannot bind a channel (libpq refuses a PLUS offer without TLS),
/// while the forwarder's own connection is mutually authenticated TLS. Ends after
/// AuthenticationOk (`Ok`) or an error from either side (`Err`, after passing the
/// server's error on).
pub(super) async fn authentication_phase<L, U>(
    local: &mut L,
    upstream: &mut U,
    allow_cleartext: bool,
) -> Result<(), ForwardError>
where
    L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use ForwardError::{AuthRefused as Refused, Ended};
    use pgwire::decode::{self, Authentication};
    let mut sasl_started = false;
    loop {
        let (tag, body) = pgwire::read_message(upstream, pgwire::MAX_AUTH_MESSAGE_LEN)
            .await
            .map_err(|e| Ended(format!("server: {e}")))?;
        let mut out = Vec::new();
        let auth = if tag == b'R' {
            Some(decode::authentication(&body).map_err(|e| Ended(format!("server: {e}")))?)
        } else {
            None
        };
        match &auth {
            Some(Authentication::Sasl(mechanisms)) => {
                if !mechanisms.contains(&"SCRAM-SHA-256") {
                    return Err(Refused(format!(
                        "the server offered SASL mechanisms {mechanisms:?}; only SCRAM-SHA-256 is relayed"
                    )));
                }
                sasl_started = true;
                msg::authentication_sasl(&mut out, &["SCRAM-SHA-256"]);
            }
            Some(Authentication::SaslContinue(_) | Authentication::SaslFinal(_))
                if sasl_started =>
            {
                out.extend_from_slice(&crate::postgres::login::raw_message(tag, &body))
            }
            Some(Authentication::Ok) => {
                out.extend_from_slice(&crate::postgres::login::raw_message(tag, &body))
            }
            Some(Authentication::CleartextPassword | Authentication::Md5Password(_))
                if allow_cleartext =>
            {
                out.extend_from_slice(&crate::postgres::login::raw_message(tag, &body))
            }
            Some(Authentication::CleartextPassword) => {
                return Err(Refused(
                    "the server asked for a cleartext password; the forwarder does not let the cluster secret out (a TeeSQL sidecar uses SCRAM-SHA-256; --allow-cleartext-upstream permits it)".into(),
                ));
            }
            Some(Authentication::Md5Password(_)) => {
                return Err(Refused(
                    "the server asked for an MD5 password; the forwarder does not let a hash of the cluster secret out (a TeeSQL sidecar uses SCRAM-SHA-256; --allow-cleartext-upstream permits it)".into(),
                ));
            }
            Some(other) => {
                return Err(Refused(format!(
                    "the server asked for authentication the forwarder does not relay ({other:?})"
                )));
            }
            // An error, NegotiateProtocolVersion or a notice: passed on.
            None => out.extend_from_slice(&crate::postgres::login::raw_message(tag, &body)),
        }
        local
            .write_all(&out)
            .await
            .map_err(|e| Ended(format!("client: {e}")))?;
        match auth {
            Some(Authentication::Ok) => return Ok(()),
            Some(Authentication::SaslFinal(_)) => continue,
            Some(_) => {
                let (ctag, cbody) = pgwire::read_message(local, pgwire::MAX_AUTH_MESSAGE_LEN)
                    .await
                    .map_err(|e| Ended(format!("client: {e}")))?;
                upstream
                    .write_all(&crate::postgres::login::raw_message(ctag, &cbody))
                    .await
                    .map_err(|e| Ended(format!("server: {e}")))?;
            }
            None if tag == b'E' => return Err(Ended("the server refused the login".into())),
            None => continue,
        }
    }
}

//! Phase 1: what the client wants, then TLS.
//!
//! Peek the first byte: `0x16` is direct TLS (PG 17 `sslnegotiation=direct`, and TeeSQL's
//! client forwarders); otherwise read one bounded startup packet: SSLRequest gets `S`
//! (plaintext bytes pipelined after it are fatal), GSSENCRequest gets `N`, CancelRequest
//! is forwarded, a plaintext StartupMessage is refused.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Shared;
use super::error::HandshakeError;
use crate::frontend::tls::ALPN_POSTGRESQL;
use crate::pgwire::{self, StartupPacket, WireError};

/// What the TLS handshake told us about the client.
#[derive(Debug)]
pub struct ClientHello {
    /// Server name the client sent (SNI), or empty.
    pub sni: String,
    /// Whether ALPN `postgresql` was negotiated: the TLS peer speaks Postgres' protocol
    /// itself (libpq 17+ sends it on every TLS connection), rather than relaying bytes.
    pub alpn_postgresql: bool,
    /// The client's certificate chain (DER), empty when it presented none.
    pub chain: Vec<Vec<u8>>,
    /// `tls-server-end-point` hash of the certificate this handshake served, for
    /// SCRAM-SHA-256-PLUS; `None` when a renewal made it uncertain.
    pub end_point: Option<Vec<u8>>,
}

/// Wait for the client's first byte.
pub async fn first_packet(stream: &TcpStream) -> Result<(), HandshakeError> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => Err(HandshakeError::Closed),
        Ok(_) => Ok(()),
    }
}

/// Before TLS: answer SSLRequest / GSSENCRequest, handle CancelRequest, refuse plaintext.
/// `Ok` means the next byte from the client starts a TLS handshake.
pub async fn before_tls(
    shared: &Shared,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<(), HandshakeError> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => return Err(HandshakeError::Closed),
        Ok(_) => {}
    }
    if first[0] == 0x16 {
        return Ok(());
    }
    let mut gss_refused = false;
    loop {
        let packet = match pgwire::read_startup_packet(stream).await {
            Ok(p) => p,
            Err(WireError::Closed) => return Err(HandshakeError::Closed),
            Err(e) => return Err(HandshakeError::InvalidStartupPacket(e)),
        };
        match packet {
            StartupPacket::SslRequest => {
                // Bytes already waiting after the SSLRequest were sent in the clear
                // before TLS: never treat them as part of the session.
                let mut probe = [0u8; 1];
                match stream.try_read(&mut probe) {
                    Ok(0) => return Err(HandshakeError::Closed),
                    Ok(_) => return Err(HandshakeError::DataAfterSslRequest),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(HandshakeError::Closed),
                }
                stream
                    .write_all(b"S")
                    .await
                    .map_err(|_| HandshakeError::Closed)?;
                return Ok(());
            }
            StartupPacket::GssEncRequest if !gss_refused => {
                gss_refused = true;
                stream
                    .write_all(b"N")
                    .await
                    .map_err(|_| HandshakeError::Closed)?;
            }
            StartupPacket::GssEncRequest => return Err(HandshakeError::GssEncRequestTwice),
            StartupPacket::Cancel { pid, key } => {
                shared
                    .cancels
                    .forward(&shared.config.backend.addr, pid, &key, peer)
                    .await;
                return Err(HandshakeError::CancelRequest);
            }
            StartupPacket::Startup { .. } => return Err(HandshakeError::PlaintextRefused),
        }
    }
}

/// The TLS handshake (a client certificate is optional at this layer).
pub async fn tls(
    shared: &Arc<Shared>,
    stream: TcpStream,
) -> Result<(TlsStream<TcpStream>, ClientHello), HandshakeError> {
    // Channel binding needs the hash of the certificate this handshake served. A renewal
    // that lands during the handshake leaves that unknown; such a session is offered plain
    // SCRAM-SHA-256 only, rather than a -PLUS that would fail.
    let before = shared.cert.current();
    let tls = shared
        .tls
        .accept(stream)
        .await
        .map_err(|e| HandshakeError::TlsFailed(e.to_string()))?;
    let end_point =
        Arc::ptr_eq(&before, &shared.cert.current()).then(|| before.end_point_hash.clone());
    let conn = tls.get_ref().1;
    let hello = ClientHello {
        sni: conn.server_name().unwrap_or_default().to_string(),
        alpn_postgresql: conn.alpn_protocol() == Some(ALPN_POSTGRESQL),
        chain: conn
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.to_vec()).collect())
            .unwrap_or_default(),
        end_point,
    };
    Ok((tls, hello))
}

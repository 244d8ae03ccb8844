//! `teesql-sidecar forward` (mode A): the application side of mutual RA-TLS.
//!
//! Any Postgres client connects in plaintext to a localhost listener (its DSN uses
//! `sslmode=disable`); for each connection the forwarder opens direct TLS to the sidecar,
//! presenting the application CVM's RA-TLS client certificate, and before relaying a
//! single byte asks the verifier to judge the server's certificate (purpose `client`:
//! MRTD pins such as `EXPECTED_MRTD`, TCB status, key binding). Optionally the leader is
//! also checked against a signed leader manifest. A rejected server gives the local
//! client one FATAL with the verifier's reasons.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, SignatureScheme};
use teesql_proto::v1::verifier_client::VerifierClient as Grpc;
use teesql_proto::v1::{Decision, VerifyManifestRequest, VerifyPeerRequest};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tonic::transport::Channel;

use crate::identity::GuestAgent;
use crate::pgwire::{self, StartupPacket, WireError, backend as msg};
use crate::relay;

/// How the forwarder runs.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// The sidecar, `host:port`.
    pub to: String,
    /// TLS server name (SNI); default: the host part of `to` when it is a name.
    pub server_name: Option<String>,
    pub verifier_url: String,
    /// Which policy judges the server [default: client].
    pub purpose: String,
    /// MRTDs the application expects (hex), checked on top of the policy's pins.
    pub expected_mrtds: Vec<String>,
    /// A signed leader manifest to check the server against.
    pub manifest: Option<ManifestSource>,
    /// Manifest signers this application trusts (`0x` + 40 hex).
    pub manifest_signers: Vec<String>,
    pub connect_timeout: Duration,
    /// Renew the client certificate this often.
    pub renew_every: Duration,
}

/// Where the leader manifest comes from.
#[derive(Debug, Clone)]
pub enum ManifestSource {
    /// A TXT record given as text.
    Txt(String),
    /// Resolve `_teesql-leader.<domain>` in DNS for every connection.
    Dns(String),
}

/// The forwarder's client certificate, renewed in the background.
struct ClientIdentity {
    current: arc_swap::ArcSwap<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientIdentity")
    }
}

impl rustls::client::ResolvesClientCert for ClientIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<rustls::sign::CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("client certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("client key: {e}"))?;
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("client key: {e}"))?;
    Ok(rustls::sign::CertifiedKey::new(certs, signing))
}

/// A running forwarder's shared state.
pub struct Forwarder {
    config: ForwardConfig,
    connector: TlsConnector,
    server_name: ServerName<'static>,
    verifier: Grpc<Channel>,
    identity: Arc<ClientIdentity>,
    agent: Arc<GuestAgent>,
    /// The last manifest fetched from DNS, for the log.
    last_manifest: Mutex<Option<String>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("to", &self.config.to)
            .field("verifier", &self.config.verifier_url)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Fetch the client certificate from the guest agent and prepare TLS.
    pub async fn start(
        config: ForwardConfig,
        agent_endpoint: Option<&str>,
    ) -> Result<Arc<Self>, String> {
        let agent = Arc::new(GuestAgent::new(agent_endpoint));
        let (chain, key) = agent
            .tls_identity("teesql-forwarder", &["teesql-forwarder".to_string()], false)
            .await
            .map_err(|e| format!("cannot get the client certificate: {e}"))?;
        let identity = Arc::new(ClientIdentity {
            current: arc_swap::ArcSwap::from_pointee(certified(&chain, &key)?),
        });
        let mut tls = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::AnyServerCertificate::new()))
            .with_client_cert_resolver(identity.clone());
        tls.alpn_protocols = vec![crate::tls::ALPN_POSTGRESQL.to_vec()];
        tls.resumption = rustls::client::Resumption::disabled();
        let host = config
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(&config.to).to_string());
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| format!("server name {host:?}: {e}"))?;
        let channel = tonic::transport::Endpoint::from_shared(config.verifier_url.clone())
            .map_err(|e| format!("verifier url: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Arc::new(Self {
            connector: TlsConnector::from(Arc::new(tls)),
            server_name,
            verifier: Grpc::new(channel),
            identity,
            agent,
            last_manifest: Mutex::new(None),
            config,
        }))
    }

    /// Serve local clients until `shutdown` completes.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let renew = {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(me.config.renew_every).await;
                    match me
                        .agent
                        .tls_identity("teesql-forwarder", &["teesql-forwarder".to_string()], false)
                        .await
                    {
                        Ok((chain, key)) => match certified(&chain, &key) {
                            Ok(c) => me.identity.current.store(Arc::new(c)),
                            Err(e) => {
                                tracing::warn!(error = %e, "client certificate renewal failed")
                            }
                        },
                        Err(e) => tracing::warn!(error = %e, "client certificate renewal failed"),
                    }
                }
            })
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let me = self.clone();
                        tokio::spawn(async move { me.handle(stream, peer).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        renew.abort();
    }

    async fn handle(&self, mut local: TcpStream, peer: SocketAddr) {
        let _ = local.set_nodelay(true);
        // The local client speaks plaintext: answer an SSLRequest or GSSENCRequest with
        // 'N' (its DSN should say sslmode=disable), pass a cancel request on.
        let (startup, params) = loop {
            match pgwire::read_startup_packet(&mut local).await {
                Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                    if local.write_all(b"N").await.is_err() {
                        return;
                    }
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
                    let mut bytes = pgwire::startup_message(&pairs);
                    // Keep the version the client asked for; the sidecar negotiates.
                    let version = (u32::from(major) << 16) | u32::from(minor);
                    bytes[4..8].copy_from_slice(&version.to_be_bytes());
                    break (bytes, params);
                }
                Ok(StartupPacket::Cancel { pid, key }) => {
                    self.forward_cancel(pid, &key).await;
                    return;
                }
                Err(WireError::Closed) => return,
                Err(e) => {
                    fatal(&mut local, "08P01", &format!("invalid startup packet: {e}")).await;
                    return;
                }
            }
        };
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let user = get("user");
        let database = get("database");

        let mut upstream = match self.connect().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client.addr = %peer, to = %self.config.to, error = %e, "cannot reach the database");
                fatal(
                    &mut local,
                    "08006",
                    &format!("teesql forwarder: cannot reach {}: {e}", self.config.to),
                )
                .await;
                return;
            }
        };
        let chain: Vec<Vec<u8>> = upstream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.to_vec()).collect())
            .unwrap_or_default();
        if let Err(why) = self.judge(&chain, &user, &database, peer).await {
            tracing::warn!(client.addr = %peer, to = %self.config.to, reason = %why, "server rejected");
            fatal(
                &mut local,
                "28000",
                &format!(
                    "teesql forwarder: the server at {} failed attestation: {why}",
                    self.config.to
                ),
            )
            .await;
            let _ = upstream.shutdown().await;
            return;
        }
        if upstream.write_all(&startup).await.is_err() {
            fatal(
                &mut local,
                "08006",
                "teesql forwarder: the server closed the connection",
            )
            .await;
            return;
        }
        if let Err(e) = authentication_phase(&mut local, &mut upstream).await {
            tracing::info!(client.addr = %peer, error = %e, "authentication phase ended");
            return;
        }
        let end = relay::relay(&mut local, &mut upstream, None, false).await;
        tracing::debug!(client.addr = %peer, end = ?end, "forwarded session ended");
    }

    /// Direct TLS to the sidecar.
    async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let tcp = tokio::time::timeout(
            self.config.connect_timeout,
            TcpStream::connect(&self.config.to),
        )
        .await
        .map_err(|_| format!("no connection within {:?}", self.config.connect_timeout))?
        .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(
            self.config.connect_timeout,
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))
    }

    /// Ask the verifier about the server (and the manifest, when configured).
    async fn judge(
        &self,
        chain: &[Vec<u8>],
        user: &str,
        database: &str,
        peer: SocketAddr,
    ) -> Result<(), String> {
        let mut grpc = self.verifier.clone();
        let decision = grpc
            .verify_peer(VerifyPeerRequest {
                purpose: self.config.purpose.clone(),
                chain: chain.to_vec(),
                user: user.to_string(),
                database: database.to_string(),
                sni: self.server_name_text(),
                client_addr: peer.to_string(),
                alpn: String::new(),
                expected_mrtds: self.config.expected_mrtds.clone(),
            })
            .await
            .map_err(|s| format!("verifier unavailable ({:?}: {})", s.code(), s.message()))?
            .into_inner();
        allowed(&decision)?;
        let txt = match &self.config.manifest {
            None => return Ok(()),
            Some(ManifestSource::Txt(t)) => t.clone(),
            Some(ManifestSource::Dns(domain)) => resolve_manifest(domain).await?,
        };
        if let Ok(mut last) = self.last_manifest.lock() {
            *last = Some(txt.clone());
        }
        let decision = grpc
            .verify_manifest(VerifyManifestRequest {
                manifest: txt,
                leader_chain: chain.to_vec(),
                expected_signers: self.config.manifest_signers.clone(),
            })
            .await
            .map_err(|s| format!("verifier unavailable ({:?}: {})", s.code(), s.message()))?
            .into_inner();
        allowed(&decision)
    }

    fn server_name_text(&self) -> String {
        match &self.server_name {
            ServerName::DnsName(n) => n.as_ref().to_string(),
            ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
            _ => String::new(),
        }
    }

    async fn forward_cancel(&self, pid: i32, key: &[u8]) {
        if let Ok(mut s) = self.connect().await {
            let _ = s.write_all(&pgwire::cancel_request(pid, key)).await;
            let _ = s.flush().await;
            let _ = s.shutdown().await;
        }
    }
}

/// Relay the authentication exchange message by message, hiding SCRAM-SHA-256-PLUS
/// from the local client: its connection to the forwarder is plaintext, so it cannot
/// bind a channel (libpq refuses a PLUS offer without TLS), while the forwarder's own
/// connection is mutually authenticated TLS. Ends after AuthenticationOk (`Ok`) or an
/// error from either side (`Err`, after passing the server's error on).
async fn authentication_phase<L, U>(local: &mut L, upstream: &mut U) -> Result<(), String>
where
    L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use pgwire::decode::{self, Authentication};
    loop {
        let (tag, body) = pgwire::read_message(upstream, pgwire::MAX_AUTH_MESSAGE_LEN)
            .await
            .map_err(|e| format!("server: {e}"))?;
        let mut out = Vec::new();
        let auth = if tag == b'R' {
            Some(decode::authentication(&body).map_err(|e| format!("server: {e}"))?)
        } else {
            None
        };
        match &auth {
            Some(Authentication::Sasl(mechanisms)) => {
                let plain: Vec<&str> = mechanisms
                    .iter()
                    .copied()
                    .filter(|m| *m != "SCRAM-SHA-256-PLUS")
                    .collect();
                msg::authentication_sasl(&mut out, &plain);
            }
            _ => out.extend_from_slice(&crate::backend::raw_message(tag, &body)),
        }
        local
            .write_all(&out)
            .await
            .map_err(|e| format!("client: {e}"))?;
        match auth {
            Some(Authentication::Ok) => return Ok(()),
            Some(Authentication::SaslFinal(_)) => continue,
            Some(_) => {
                let (ctag, cbody) = pgwire::read_message(local, pgwire::MAX_AUTH_MESSAGE_LEN)
                    .await
                    .map_err(|e| format!("client: {e}"))?;
                upstream
                    .write_all(&crate::backend::raw_message(ctag, &cbody))
                    .await
                    .map_err(|e| format!("server: {e}"))?;
            }
            None if tag == b'E' => return Err("the server refused the login".into()),
            // NegotiateProtocolVersion and notices before authentication: passed on.
            None => continue,
        }
    }
}

fn allowed(d: &Decision) -> Result<(), String> {
    if d.allow {
        return Ok(());
    }
    Err(d
        .reasons
        .iter()
        .map(|r| format!("{}: {}", r.code, r.message))
        .collect::<Vec<_>>()
        .join("; "))
}

fn host_of(to: &str) -> &str {
    match to.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => to,
    }
}

/// The TXT record at `_teesql-leader.<domain>`.
async fn resolve_manifest(domain: &str) -> Result<String, String> {
    let name = format!("_teesql-leader.{}", domain.trim_end_matches('.'));
    let resolver = hickory_resolver::TokioResolver::builder_tokio()
        .map_err(|e| format!("DNS resolver: {e}"))?
        .build()
        .map_err(|e| format!("DNS resolver: {e}"))?;
    let answer = resolver
        .txt_lookup(name.clone())
        .await
        .map_err(|e| format!("DNS TXT {name}: {e}"))?;
    answer
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .find(|t| t.starts_with("v=1;"))
        .ok_or_else(|| format!("DNS TXT {name}: no v=1 manifest"))
}

async fn fatal(local: &mut TcpStream, code: &str, message: &str) {
    let mut out = Vec::new();
    msg::error_response(&mut out, "FATAL", code, message, None, None);
    let mut w = BufWriter::new(local);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
    let _ = w.into_inner().shutdown().await;
}

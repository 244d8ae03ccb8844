//! `teesql-sidecar forward` (mode A): the application side of mutual RA-TLS.
//!
//! Any Postgres client connects in plaintext to a localhost listener (its DSN uses
//! `sslmode=disable`); for each connection the forwarder opens direct TLS to the sidecar,
//! presenting the application CVM's RA-TLS client certificate, and before relaying a
//! single byte asks the verifier to judge the server's certificate (purpose `client`:
//! MRTD pins such as `EXPECTED_MRTD`, TCB status, key binding). Optionally the leader is
//! also checked against a signed leader manifest. A rejected server gives the local
//! client one FATAL with the verifier's reasons.
//!
//! Without `--to`, the manifest names the server: the forwarder dials its `leader_url`
//! (https -> 443, http -> 80, an explicit port wins, gateway names `<id>-<port>s.<node>`
//! are served on 443). Every TXT record at `_teesql-leader.<domain>` is tried until one
//! verifies against the pinned signers; a connect failure re-resolves and retries once;
//! a verification failure stops.

pub mod error;
pub mod manifest;
mod session;
pub mod settings;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use teesql_proto::v1::{Decision, VerifyManifestRequest, VerifyPeerRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

pub use self::error::ForwardError;
pub use self::manifest::leader_address;
use self::manifest::resolve_manifests;
pub use self::settings::*;
use crate::accept::{self, AcceptLimits};
use crate::identity::GuestAgent;
use crate::pgwire;
use crate::verifier::VerifierClient;

/// The forwarder's client certificate, renewed in the background.
type ClientIdentity = teesql_proto::transport::Rotating<rustls::sign::CertifiedKey>;

/// Why the client certificate and key the guest agent gave cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientKeyError {
    /// The certificate chain (PEM) does not parse.
    #[error("client certificate: {0}")]
    Certificate(#[source] rustls::pki_types::pem::Error),
    /// The private key (PEM) does not parse.
    #[error("client key: {0}")]
    KeyPem(#[source] rustls::pki_types::pem::Error),
    /// rustls cannot sign with the private key.
    #[error("client key: {0}")]
    Key(#[source] rustls::Error),
}

/// A server name (`--server-name`, or the host dialled) that TLS cannot carry.
#[derive(Debug, thiserror::Error)]
#[error("server name {name:?}: {source}")]
pub struct BadServerName {
    /// The name.
    pub name: String,
    /// Why it is not a DNS name or IP address.
    #[source]
    pub source: rustls::pki_types::InvalidDnsNameError,
}

/// Why a forwarder could not start ([`Forwarder::start`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwarderStartError {
    /// The guest agent gave no client certificate.
    #[error("cannot get the client certificate: {0}")]
    Identity(#[source] crate::identity::AgentError),
    /// The client certificate or key cannot be used.
    #[error(transparent)]
    ClientKey(#[from] ClientKeyError),
    /// rustls refused the client configuration.
    #[error("{0}")]
    Tls(#[source] rustls::Error),
    /// `--to`'s host (or `--server-name`) is not a name TLS can carry.
    #[error(transparent)]
    ServerName(#[from] BadServerName),
    /// The verifier client cannot be made from the settings.
    #[error(transparent)]
    Verifier(#[from] crate::verifier::VerifierClientError),
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<rustls::sign::CertifiedKey, ClientKeyError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(ClientKeyError::Certificate)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(ClientKeyError::KeyPem)?;
    let signing = crate::frontend::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(ClientKeyError::Key)?;
    Ok(rustls::sign::CertifiedKey::new(certs, signing))
}

/// A running forwarder's shared state.
pub struct Forwarder {
    config: ForwardConfig,
    connector: TlsConnector,
    verifier: VerifierClient,
    identity: Arc<ClientIdentity>,
    agent: Arc<GuestAgent>,
    /// The manifest record the last connection was checked against, for the log.
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

/// Where one connection goes, and what it is checked against.
#[derive(Debug)]
struct Target {
    /// `host:port`.
    addr: String,
    server_name: ServerName<'static>,
    /// Manifest records to check the server against (any one that allows will do).
    manifests: Vec<String>,
}

impl Forwarder {
    /// Fetch the client certificate from the guest agent and prepare TLS.
    pub async fn start(
        config: ForwardConfig,
        agent_endpoint: Option<&str>,
    ) -> Result<Arc<Self>, ForwarderStartError> {
        let agent = Arc::new(GuestAgent::new(agent_endpoint));
        let (chain, key) = agent
            .tls_identity("teesql-forwarder", &["teesql-forwarder".to_string()], false)
            .await
            .map_err(ForwarderStartError::Identity)?;
        let identity = ClientIdentity::new(certified(&chain, &key)?);
        let mut tls = ClientConfig::builder_with_provider(crate::frontend::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(ForwarderStartError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(
                crate::frontend::tls::ServerCertificateRule::any(),
            ))
            .with_client_cert_resolver(identity.clone());
        tls.alpn_protocols = vec![crate::frontend::tls::ALPN_POSTGRESQL.to_vec()];
        tls.resumption = rustls::client::Resumption::disabled();
        if let Some(to) = &config.to {
            server_name_for(config.server_name.as_deref(), host_of(to))?;
        }
        let verifier = VerifierClient::new(
            &config.verifier_url,
            config.verifier_trust.as_ref(),
            config.verifier_timeout,
        )?
        .with_policy_hashes(config.verifier_policy_hashes.clone(), Default::default());
        Ok(Arc::new(Self {
            connector: TlsConnector::from(Arc::new(tls)),
            verifier,
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
                let every = me.config.renew_every;
                let renew = || async {
                    let (chain, key) = me
                        .agent
                        .tls_identity("teesql-forwarder", &["teesql-forwarder".to_string()], false)
                        .await
                        .map_err(|e| e.to_string())?;
                    me.identity
                        .replace(certified(&chain, &key).map_err(|e| e.to_string())?);
                    Ok::<(), String>(())
                };
                crate::identity::renew_forever("client", every, renew, |_| {}).await;
            })
        };
        let limits = AcceptLimits {
            max_connections: MAX_CONNECTIONS,
            max_per_address: None,
            grace: SHUTDOWN_GRACE,
        };
        let me = self.clone();
        accept::serve(
            listener,
            accept::Gate::new(limits),
            shutdown,
            |stream, peer| {
                let me = me.clone();
                async move { me.handle(stream, peer).await }
            },
            |mut stream, peer, _| async move {
                tracing::warn!(client.addr = %peer, limit = MAX_CONNECTIONS, "connection limit reached; refusing");
                pgwire::send_fatal(
                    &mut stream,
                    pgwire::sqlstate::TOO_MANY_CONNECTIONS,
                    "teesql forwarder: too many connections",
                )
                .await;
            },
        )
        .await;
        renew.abort();
    }

    /// Serve one application connection in a span with its session id, the id the
    /// verifier logs its decision on the server under.
    async fn handle(&self, local: TcpStream, peer: SocketAddr) {
        use tracing::Instrument;
        let id = crate::frontend::session::session_id();
        let span = tracing::info_span!("forward", session_id = %id, client.addr = %peer);
        self.serve_connection(local, peer, &id)
            .instrument(span)
            .await;
    }

    async fn serve_connection(&self, mut local: TcpStream, peer: SocketAddr, id: &str) {
        let Err(e) = session::serve(self, &mut local, peer, id).await else {
            return;
        };
        match e {
            ForwardError::Closed | ForwardError::Ended(_) => {
                tracing::info!(client.addr = %peer, outcome = e.outcome(), error = %e, "connection ended before its session");
            }
            _ => {
                tracing::warn!(client.addr = %peer, outcome = e.outcome(), error = %e, "connection refused");
            }
        }
        if let error::Response::Fatal { code, message } = e.response() {
            pgwire::send_fatal(&mut local, code, &message).await;
        }
    }

    /// Find the server and connect to it. A leader named by a manifest that cannot be
    /// reached is looked up again, once (it may have moved).
    async fn reach(&self) -> Result<(Target, tokio_rustls::client::TlsStream<TcpStream>), String> {
        let target = self.target().await?;
        match self.connect(&target).await {
            Ok(s) => Ok((target, s)),
            Err(e) if self.config.to.is_none() => {
                tracing::warn!(leader = %target.addr, error = %e, "cannot reach the leader; resolving the manifest again");
                let again = self.target().await?;
                let s = self.connect(&again).await.map_err(|e2| {
                    format!(
                        "cannot reach {} ({e}), nor after resolving the manifest again {} ({e2})",
                        target.addr, again.addr
                    )
                })?;
                Ok((again, s))
            }
            Err(e) => Err(format!("cannot reach {}: {e}", target.addr)),
        }
    }

    /// Where to connect: `--to`, or the leader of the first manifest record that
    /// verifies on its own (signature, signer, expiry).
    async fn target(&self) -> Result<Target, String> {
        let records = match &self.config.manifest {
            None => Vec::new(),
            Some(ManifestSource::Txt(t)) => vec![t.clone()],
            Some(ManifestSource::Dns(domain)) => resolve_manifests(domain, self.config.dns_server)
                .await
                .map_err(|e| e.to_string())?,
        };
        if let Some(to) = &self.config.to {
            return Ok(Target {
                addr: to.clone(),
                server_name: server_name_for(self.config.server_name.as_deref(), host_of(to))
                    .map_err(|e| e.to_string())?,
                manifests: records,
            });
        }
        let (record, decision) = self.first_allowed(&records, &[]).await?;
        let claims: serde_json::Value = serde_json::from_str(&decision.claims_json)
            .map_err(|e| format!("the verifier's claims: {e}"))?;
        let url = claims["manifest"]["leader_url"]
            .as_str()
            .ok_or("the verifier's claims name no leader_url")?;
        let (host, port) = leader_address(url).map_err(|e| e.to_string())?;
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        tracing::debug!(leader = %addr, "the manifest names the leader");
        Ok(Target {
            server_name: server_name_for(self.config.server_name.as_deref(), &host)
                .map_err(|e| e.to_string())?,
            addr,
            manifests: vec![record],
        })
    }

    /// Direct TLS to the sidecar.
    async fn connect(
        &self,
        target: &Target,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let timeout = self.config.connect_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&target.addr))
            .await
            .map_err(|_| format!("no connection within {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(
            timeout,
            self.connector.connect(target.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))
    }

    /// Ask the verifier about the server, and about the manifest with the server's chain
    /// when one is configured.
    async fn judge(
        &self,
        chain: &[Vec<u8>],
        target: &Target,
        user: &str,
        database: &str,
        peer: SocketAddr,
        id: &str,
    ) -> Result<(), String> {
        let decision = self
            .verifier
            .verify_peer(VerifyPeerRequest {
                nonce: Vec::new(),
                decision_id: id.to_string(),
                sign: false,
                purpose: self.config.purpose.clone(),
                chain: chain.to_vec(),
                user: user.to_string(),
                database: database.to_string(),
                sni: server_name_text(&target.server_name),
                client_addr: peer.to_string(),
                alpn: String::new(),
                expected_mrtds: self.config.expected_mrtds.clone(),
                expected_compose_hashes: self.config.expected_compose_hashes.clone(),
                expected_app_ids: self.config.expected_app_ids.clone(),
            })
            .await
            .map_err(|e| format!("verifier unavailable ({})", e.detail))?;
        allowed(&decision)?;
        if target.manifests.is_empty() {
            return Ok(());
        }
        let (record, _) = self.first_allowed(&target.manifests, chain).await?;
        if let Ok(mut last) = self.last_manifest.lock() {
            *last = Some(record);
        }
        Ok(())
    }

    /// Of the records the verifier allows (with the leader's chain, when given), the one
    /// with the highest epoch: a stale record left beside the current one must not win
    /// by coming first. Or every record's reasons.
    async fn first_allowed(
        &self,
        records: &[String],
        chain: &[Vec<u8>],
    ) -> Result<(String, Decision), String> {
        let mut why = Vec::new();
        let mut best: Option<(u64, String, Decision)> = None;
        for (i, record) in records.iter().enumerate() {
            let decision = self
                .verifier
                .verify_manifest(VerifyManifestRequest {
                    nonce: Vec::new(),
                    decision_id: String::new(),
                    sign: false,
                    manifest: record.clone(),
                    leader_chain: chain.to_vec(),
                    expected_signers: self.config.manifest_signers.clone(),
                })
                .await
                .map_err(|e| format!("verifier unavailable ({})", e.detail))?;
            match allowed(&decision) {
                Ok(()) => {
                    let epoch = serde_json::from_str::<serde_json::Value>(&decision.claims_json)
                        .ok()
                        .and_then(|c| c["manifest"]["epoch"].as_u64())
                        .unwrap_or(0);
                    if best.as_ref().is_none_or(|(e, _, _)| epoch > *e) {
                        best = Some((epoch, record.clone(), decision));
                    }
                }
                Err(e) => why.push(format!("record {} of {}: {e}", i + 1, records.len())),
            }
        }
        if let Some((_, record, decision)) = best {
            return Ok((record, decision));
        }
        Err(match why.len() {
            0 => "no manifest record".to_string(),
            1 => why.remove(0),
            n => format!(
                "none of the {n} manifest records verifies: {}",
                why.join(" | ")
            ),
        })
    }

    async fn forward_cancel(&self, pid: i32, key: &[u8]) {
        if let Ok((_, mut s)) = self.reach().await {
            let _ = s.write_all(&pgwire::cancel_request(pid, key)).await;
            let _ = s.flush().await;
            let _ = s.shutdown().await;
        }
    }
}

fn server_name_for(given: Option<&str>, host: &str) -> Result<ServerName<'static>, BadServerName> {
    let name = given.unwrap_or(host).to_string();
    ServerName::try_from(name.clone()).map_err(|source| BadServerName { name, source })
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(n) => n.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => String::new(),
    }
}

fn allowed(d: &Decision) -> Result<(), String> {
    if d.allow {
        for r in &d.reasons {
            tracing::warn!(code = %r.code, message = %r.message, "the verifier allowed the server with a warning");
        }
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

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

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, SignatureScheme};
use teesql_proto::settings::Env;
use teesql_proto::v1::{Decision, VerifyManifestRequest, VerifyPeerRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::frontend::relay;
use crate::identity::GuestAgent;
use crate::pgwire::{self, StartupPacket, WireError, backend as msg};
use crate::verifier::VerifierClient;
use teesql_proto::transport::ServerTrust;

/// How the forwarder runs.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Where local clients connect (plaintext; loopback).
    pub listen: SocketAddr,
    /// The sidecar, `host:port`; `None` = the leader the manifest names.
    pub to: Option<String>,
    /// TLS server name (SNI); default: the host dialled, when it is a name.
    pub server_name: Option<String>,
    pub verifier_url: String,
    pub verifier_trust: Option<ServerTrust>,
    /// Time limit of one decision.
    pub verifier_timeout: Duration,
    /// Policy hashes the verifier's decisions may come from; empty = the first answer's.
    pub verifier_policy_hashes: Vec<String>,
    /// Which policy judges the server [default: client].
    pub purpose: String,
    /// MRTDs the application expects (hex), checked on top of the policy's pins.
    pub expected_mrtds: Vec<String>,
    /// Compose hashes the application expects of the server (hex).
    pub expected_compose_hashes: Vec<String>,
    /// App ids the application expects of the server (hex).
    pub expected_app_ids: Vec<String>,
    /// Answer a server's request for a cleartext or MD5 password (the cluster secret!)
    /// instead of refusing it. Off by default: only SCRAM-SHA-256 is relayed.
    pub allow_cleartext_upstream: bool,
    /// A signed leader manifest to check the server against (and to find it by).
    pub manifest: Option<ManifestSource>,
    /// Manifest signers this application trusts (`0x` + 40 hex).
    pub manifest_signers: Vec<String>,
    /// DNS server for the manifest lookup; `None` = the system's resolver.
    pub dns_server: Option<SocketAddr>,
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

/// The forwarder's settings as given by flags, before checking; `resolve` adds the
/// environment (`TEESQL_VERIFIER_URL`, `EXPECTED_MRTD`) under them.
#[derive(Debug, Clone, Default)]
pub struct ForwardSettings {
    /// [default: `DEFAULT_LISTEN`]
    pub listen: Option<String>,
    pub to: Option<String>,
    pub server_name: Option<String>,
    /// Where the verifier is and how it is trusted (`--verifier`, `--verifier-ca-file`,
    /// …), over the environment (`TEESQL_VERIFIER_URL`, `TEESQL_VERIFIER_CA_FILE`, …).
    pub verifier: crate::config::VerifierSettings,
    /// [default: `DEFAULT_PURPOSE`]
    pub purpose: Option<String>,
    /// As given: 96 hex digits each, optional `0x`, any case; blanks ignored
    /// [default: env EXPECTED_MRTD, comma-separated].
    pub expected_mrtds: Vec<String>,
    /// 64 hex digits each, optional `0x`.
    pub expected_compose_hashes: Vec<String>,
    /// 40 hex digits each, optional `0x`.
    pub expected_app_ids: Vec<String>,
    pub allow_cleartext_upstream: bool,
    /// Start even though nothing beyond MRTDs identifies the server (the verifier's own
    /// policy is trusted to pin it).
    pub allow_unpinned_server: bool,
    pub manifest_domain: Option<String>,
    pub manifest_txt: Option<String>,
    pub manifest_signers: Vec<String>,
    /// `IP` or `IP:PORT` (port 53 when omitted).
    pub dns_server: Option<String>,
}

/// Where local clients connect by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
/// The policy that judges the server by default.
pub const DEFAULT_PURPOSE: &str = "client";
/// Time limit of one decision of the verifier (a cold appraisal may fetch collateral).
pub const VERIFIER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TCP connect plus TLS handshake to the sidecar may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the forwarder's client certificate is renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(3600);
/// The flag a `[verifier]` setting is given by on `forward`'s command line.
fn verifier_flag(key: &str) -> String {
    match key {
        "url" => "--verifier".into(),
        "policy_hashes" => "--verifier-policy-hash".into(),
        k => format!("--verifier-{}", k.replace('_', "-")),
    }
}

/// Most TXT records considered at `_teesql-leader.<domain>`.
pub const MAX_MANIFEST_RECORDS: usize = 16;

impl ForwardSettings {
    /// Check every setting, with `env` under the flags; all problems are reported at once.
    pub fn resolve(self, env: &dyn Env) -> Result<ForwardConfig, Vec<String>> {
        let mut errors = Vec::new();
        let listen_s = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_s
            .parse::<SocketAddr>()
            .map_err(|e| errors.push(format!("--listen {listen_s:?}: {e} (expected ip:port)")))
            .ok();
        let purpose = self.purpose.unwrap_or_else(|| DEFAULT_PURPOSE.to_string());
        let given_mrtds = if self.expected_mrtds.is_empty() {
            env.var(crate::config::env::EXPECTED_MRTD)
                .map(|v| v.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        } else {
            self.expected_mrtds
        };
        let expected_mrtds = hex_pins("expected MRTD", &given_mrtds, 48, &mut errors);
        let expected_compose_hashes = hex_pins(
            "--expected-compose-hash",
            &self.expected_compose_hashes,
            32,
            &mut errors,
        );
        let expected_app_ids =
            hex_pins("--expected-app-id", &self.expected_app_ids, 20, &mut errors);
        let mut manifest_signers = Vec::new();
        for s in &self.manifest_signers {
            let hex = s.trim().trim_start_matches("0x").trim_start_matches("0X");
            if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(format!(
                    "--manifest-signer {s:?}: must be 0x + 40 hex digits"
                ));
            }
            manifest_signers.push(format!("0x{}", hex.to_ascii_lowercase()));
        }
        let manifest = match (self.manifest_txt, self.manifest_domain) {
            (Some(_), Some(_)) => {
                errors.push("--manifest-txt and --manifest-domain: give one, not both".into());
                None
            }
            (Some(t), None) => Some(ManifestSource::Txt(t)),
            (None, Some(d)) if d.trim().trim_matches('.').is_empty() => {
                errors.push("--manifest-domain: empty".into());
                None
            }
            (None, Some(d)) => Some(ManifestSource::Dns(d.trim().to_string())),
            (None, None) => None,
        };
        // An MRTD names the dstack OS image, which every CVM on that image shares: it does
        // not say which application (which database) answers. Something must.
        if expected_compose_hashes.is_empty()
            && expected_app_ids.is_empty()
            && manifest_signers.is_empty()
            && !self.allow_unpinned_server
        {
            errors.push(
                "nothing identifies the server beyond its OS image: give --expected-compose-hash, --expected-app-id or --manifest-signer (an MRTD alone is shared by every CVM on that image), or --allow-unpinned-server if the verifier's policy pins the server itself".into(),
            );
        }
        if self.to.is_none() && manifest.is_none() {
            errors.push(
                "no server: give --to HOST:PORT, or --manifest-domain (or --manifest-txt) to reach the leader its signed manifest names".into(),
            );
        }
        if let Some(to) = &self.to
            && !to.contains(':')
        {
            errors.push(format!("--to {to:?}: expected HOST:PORT"));
        }
        let dns_server = match self.dns_server.as_deref() {
            None => None,
            Some(text) => match parse_dns_server(text) {
                Ok(a) => Some(a),
                Err(e) => {
                    errors.push(e);
                    None
                }
            },
        };
        let mut p = teesql_proto::settings::Problems::new();
        let verifier = self
            .verifier
            .over(crate::config::VerifierSettings::from_env(env, &mut p))
            .check(env, VERIFIER_TIMEOUT, &verifier_flag, &mut p);
        errors.extend(p.into_vec());
        let (Some(listen), Some(verifier), true) = (listen, verifier, errors.is_empty()) else {
            return Err(errors);
        };
        Ok(ForwardConfig {
            listen,
            to: self.to,
            server_name: self.server_name,
            verifier_url: verifier.url,
            verifier_trust: verifier.trust,
            verifier_timeout: verifier.timeout,
            verifier_policy_hashes: verifier.policy_hashes,
            purpose,
            expected_mrtds,
            expected_compose_hashes,
            expected_app_ids,
            allow_cleartext_upstream: self.allow_cleartext_upstream,
            manifest,
            manifest_signers,
            dns_server,
            connect_timeout: CONNECT_TIMEOUT,
            renew_every: RENEW_EVERY,
        })
    }
}

/// Hex pins of `bytes` bytes each: optional `0x`, any case, blanks ignored; lower-cased.
fn hex_pins(what: &str, given: &[String], bytes: usize, errors: &mut Vec<String>) -> Vec<String> {
    given
        .iter()
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
        .map(|m| {
            let hex = m
                .trim_start_matches("0x")
                .trim_start_matches("0X")
                .to_ascii_lowercase();
            if hex.len() != 2 * bytes || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(format!(
                    "{what} {m:?}: must be {} hex digits ({bytes} bytes)",
                    2 * bytes
                ));
            }
            hex
        })
        .collect()
}

fn parse_dns_server(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .map_err(|_| format!("--dns-server {text:?}: expected IP or IP:PORT"))
}

/// The host and port to dial for a manifest's `leader_url`, as TeeSQL's clients do:
/// an explicit port wins; gateway names `<id>-<port>s.<node>` (TLS passthrough on the
/// gateway) are served on 443; otherwise https -> 443, http -> 80.
pub fn leader_address(leader_url: &str) -> Result<(String, u16), String> {
    let url = url::Url::parse(leader_url.trim())
        .map_err(|e| format!("leader_url {leader_url:?}: {e}"))?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err(format!("leader_url {leader_url:?}: no host")),
    };
    if let Some(port) = url.port() {
        return Ok((host, port));
    }
    let gateway = host
        .split('.')
        .next()
        .and_then(|label| label.rsplit_once('-'))
        .is_some_and(|(_, tail)| {
            tail.strip_suffix('s')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        });
    match url.scheme() {
        _ if gateway => Ok((host, 443)),
        "https" => Ok((host, 443)),
        "http" => Ok((host, 80)),
        other => Err(format!(
            "leader_url {leader_url:?}: scheme {other:?} (expected https or http)"
        )),
    }
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
    let signing = crate::frontend::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("client key: {e}"))?;
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
    ) -> Result<Arc<Self>, String> {
        let agent = Arc::new(GuestAgent::new(agent_endpoint));
        let (chain, key) = agent
            .tls_identity("teesql-forwarder", &["teesql-forwarder".to_string()], false)
            .await
            .map_err(|e| format!("cannot get the client certificate: {e}"))?;
        let identity = Arc::new(ClientIdentity {
            current: arc_swap::ArcSwap::from_pointee(certified(&chain, &key)?),
        });
        let mut tls = ClientConfig::builder_with_provider(crate::frontend::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
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
                        .current
                        .store(Arc::new(certified(&chain, &key)?));
                    Ok(())
                };
                crate::identity::renew_forever("client", every, renew, |_| {}).await;
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
                    // Keep the version the client asked for; the sidecar negotiates.
                    let bytes = pgwire::startup_message_version(major, minor, &pairs);
                    break (bytes, params);
                }
                Ok(StartupPacket::Cancel { pid, key }) => {
                    self.forward_cancel(pid, &key).await;
                    return;
                }
                Err(WireError::Closed) => return,
                Err(e) => {
                    pgwire::send_fatal(
                        &mut local,
                        "08P01",
                        &format!("invalid startup packet: {e}"),
                    )
                    .await;
                    return;
                }
            }
        };
        let user = pgwire::param(&params, "user").unwrap_or_default();
        let database = pgwire::param(&params, "database").unwrap_or_default();

        let (target, mut upstream) = match self.reach().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(client.addr = %peer, error = %e, "cannot reach the database");
                pgwire::send_fatal(&mut local, "08006", &format!("teesql forwarder: {e}")).await;
                return;
            }
        };
        let chain: Vec<Vec<u8>> = upstream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.to_vec()).collect())
            .unwrap_or_default();
        if let Err(why) = self.judge(&chain, &target, user, database, peer).await {
            tracing::warn!(client.addr = %peer, to = %target.addr, reason = %why, "server rejected");
            pgwire::send_fatal(
                &mut local,
                "28000",
                &format!(
                    "teesql forwarder: the server at {} failed attestation: {why}",
                    target.addr
                ),
            )
            .await;
            let _ = upstream.shutdown().await;
            return;
        }
        if upstream.write_all(&startup).await.is_err() {
            pgwire::send_fatal(
                &mut local,
                "08006",
                "teesql forwarder: the server closed the connection",
            )
            .await;
            return;
        }
        match authentication_phase(
            &mut local,
            &mut upstream,
            self.config.allow_cleartext_upstream,
        )
        .await
        {
            Ok(()) => {}
            Err(AuthPhaseError::Refused(why)) => {
                tracing::warn!(client.addr = %peer, to = %target.addr, reason = %why, "refused the server's authentication request");
                pgwire::send_fatal(&mut local, "28000", &format!("teesql forwarder: {why}")).await;
                let _ = upstream.shutdown().await;
                return;
            }
            Err(AuthPhaseError::Ended(e)) => {
                tracing::info!(client.addr = %peer, error = %e, "authentication phase ended");
                return;
            }
        }
        let end = relay::relay(&mut local, &mut upstream, None, false).await;
        tracing::debug!(client.addr = %peer, end = ?end, "forwarded session ended");
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
            Some(ManifestSource::Dns(domain)) => {
                resolve_manifests(domain, self.config.dns_server).await?
            }
        };
        if let Some(to) = &self.config.to {
            return Ok(Target {
                addr: to.clone(),
                server_name: server_name_for(self.config.server_name.as_deref(), host_of(to))?,
                manifests: records,
            });
        }
        let (record, decision) = self.first_allowed(&records, &[]).await?;
        let claims: serde_json::Value = serde_json::from_str(&decision.claims_json)
            .map_err(|e| format!("the verifier's claims: {e}"))?;
        let url = claims["manifest"]["leader_url"]
            .as_str()
            .ok_or("the verifier's claims name no leader_url")?;
        let (host, port) = leader_address(url)?;
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        tracing::debug!(leader = %addr, "the manifest names the leader");
        Ok(Target {
            server_name: server_name_for(self.config.server_name.as_deref(), &host)?,
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
    ) -> Result<(), String> {
        let decision = self
            .verifier
            .verify_peer(VerifyPeerRequest {
                nonce: Vec::new(),
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

fn server_name_for(given: Option<&str>, host: &str) -> Result<ServerName<'static>, String> {
    let name = given.unwrap_or(host).to_string();
    ServerName::try_from(name.clone()).map_err(|e| format!("server name {name:?}: {e}"))
}

fn server_name_text(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(n) => n.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => String::new(),
    }
}

/// Why the forwarder stopped a login.
#[derive(Debug)]
enum AuthPhaseError {
    /// The server asked for something the local client must not answer; the local
    /// client has been told why.
    Refused(String),
    /// Either side went away or broke the protocol (passed on as it came).
    Ended(String),
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
async fn authentication_phase<L, U>(
    local: &mut L,
    upstream: &mut U,
    allow_cleartext: bool,
) -> Result<(), AuthPhaseError>
where
    L: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use AuthPhaseError::{Ended, Refused};
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

/// Every TXT record at `_teesql-leader.<domain>` (a name that already starts with
/// `_teesql-leader.` is used as it is), each record's chunks joined.
async fn resolve_manifests(
    domain: &str,
    dns_server: Option<SocketAddr>,
) -> Result<Vec<String>, String> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    let domain = domain.trim().trim_end_matches('.');
    let name = if domain.starts_with("_teesql-leader.") {
        format!("{domain}.")
    } else {
        format!("_teesql-leader.{domain}.")
    };
    let builder = match dns_server {
        None => hickory_resolver::TokioResolver::builder_tokio()
            .map_err(|e| format!("DNS resolver: {e}"))?,
        Some(addr) => {
            let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
            udp.port = addr.port();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            hickory_resolver::TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                Default::default(),
            )
        }
    };
    let resolver = builder.build().map_err(|e| format!("DNS resolver: {e}"))?;
    let answer = resolver
        .txt_lookup(name.clone())
        .await
        .map_err(|e| format!("DNS TXT {name}: {e}"))?;
    let records: Vec<String> = answer
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
        .take(MAX_MANIFEST_RECORDS)
        .collect();
    if records.is_empty() {
        return Err(format!("DNS TXT {name}: no records"));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_urls_map_to_ports_as_teesql_clients_dial_them() {
        let cases = [
            (
                "https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433s.dstack-base-prod4.phala.network",
                "ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433s.dstack-base-prod4.phala.network",
                443,
            ),
            (
                "https://ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network",
                "ea23198e3419ebbb240571a29d0112d9bcbe69c0-5433.dstack-base-prod9.phala.network",
                443,
            ),
            ("https://example.com:8443/path/here", "example.com", 8443),
            ("http://localhost:5433", "localhost", 5433),
            ("https://db.example.com:5432", "db.example.com", 5432),
            ("http://db.example.com", "db.example.com", 80),
            ("https://db.example.com:443", "db.example.com", 443),
            ("https://[::1]:5433", "::1", 5433),
            // A gateway name is served on 443 whatever the scheme says.
            (
                "http://abc-5433s.node.example",
                "abc-5433s.node.example",
                443,
            ),
        ];
        for (url, host, port) in cases {
            assert_eq!(
                leader_address(url).unwrap(),
                (host.to_string(), port),
                "{url}"
            );
        }
        for bad in ["https://", "ftp://db.example.com", "not a url", ""] {
            assert!(leader_address(bad).is_err(), "{bad}");
        }
    }

    const NO_ENV: &teesql_proto::settings::NoEnv = &teesql_proto::settings::NoEnv;

    fn settings() -> ForwardSettings {
        ForwardSettings {
            to: Some("db.example.com:5433".into()),
            verifier: crate::config::VerifierSettings {
                url: Some("http://127.0.0.1:50051".into()),
                ..Default::default()
            },
            expected_compose_hashes: vec![format!("0x{}", "C1".repeat(32))],
            ..ForwardSettings::default()
        }
    }

    #[test]
    fn an_mrtd_alone_does_not_identify_the_server() {
        let mrtd_only = || ForwardSettings {
            expected_compose_hashes: vec![],
            expected_mrtds: vec!["ab".repeat(48)],
            ..settings()
        };
        let errors = mrtd_only().resolve(NO_ENV).unwrap_err();
        assert!(
            errors[0].contains("nothing identifies the server beyond its OS image"),
            "{errors:?}"
        );
        for ok in [
            ForwardSettings {
                expected_app_ids: vec!["a1".repeat(20)],
                ..mrtd_only()
            },
            ForwardSettings {
                manifest_signers: vec![format!("0x{}", "cd".repeat(20))],
                ..mrtd_only()
            },
            ForwardSettings {
                allow_unpinned_server: true,
                ..mrtd_only()
            },
        ] {
            ok.resolve(NO_ENV).unwrap();
        }
        let c = settings().resolve(NO_ENV).unwrap();
        assert_eq!(c.expected_compose_hashes, ["c1".repeat(32)]);
        let errors = ForwardSettings {
            expected_compose_hashes: vec!["c1".repeat(31)],
            expected_app_ids: vec!["zz".repeat(20)],
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap_err()
        .join("\n");
        assert!(errors.contains("--expected-compose-hash"), "{errors}");
        assert!(errors.contains("--expected-app-id"), "{errors}");
    }

    #[test]
    fn settings_resolve_with_defaults_and_normalised_pins() {
        let c = ForwardSettings {
            expected_mrtds: vec![format!("0X{}", "AB".repeat(48)), " ".into()],
            manifest_signers: vec![format!("0x{}", "CD".repeat(20))],
            manifest_domain: Some("db.example.com".into()),
            dns_server: Some("127.0.0.1:5353".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap();
        assert_eq!(c.expected_mrtds, ["ab".repeat(48)]);
        assert_eq!(c.manifest_signers, [format!("0x{}", "cd".repeat(20))]);
        assert_eq!(c.dns_server, Some("127.0.0.1:5353".parse().unwrap()));
        assert!(matches!(c.manifest, Some(ManifestSource::Dns(ref d)) if d == "db.example.com"));
        assert_eq!(c.connect_timeout, CONNECT_TIMEOUT);
        let c = ForwardSettings {
            dns_server: Some("10.0.0.53".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap();
        assert_eq!(c.dns_server, Some("10.0.0.53:53".parse().unwrap()));
    }

    #[test]
    fn a_manifest_domain_alone_names_the_server() {
        let c = ForwardSettings {
            to: None,
            manifest_domain: Some("db.example.com".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap();
        assert!(c.to.is_none());
    }

    #[test]
    fn every_bad_setting_is_named_at_once() {
        let errors = ForwardSettings {
            to: None,
            verifier: crate::config::VerifierSettings {
                url: Some("grpc://x".into()),
                ..Default::default()
            },
            expected_mrtds: vec!["abc".into()],
            manifest_signers: vec!["0x12".into()],
            dns_server: Some("dns.example".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "no server: give --to",
            "--verifier \"grpc://x\"",
            "expected MRTD \"abc\"",
            "--manifest-signer \"0x12\"",
            "--dns-server \"dns.example\"",
        ] {
            assert!(all.contains(needle), "{needle} missing in:\n{all}");
        }
        let errors = ForwardSettings {
            to: Some("no-port".into()),
            manifest_domain: Some("a".into()),
            manifest_txt: Some("v=1".into()),
            ..settings()
        }
        .resolve(NO_ENV)
        .unwrap_err();
        let all = errors.join("\n");
        assert!(
            all.contains("--to \"no-port\": expected HOST:PORT"),
            "{all}"
        );
        assert!(all.contains("give one, not both"), "{all}");
    }

    #[test]
    fn the_environment_fills_what_flags_leave_out() {
        let mrtd = "ab".repeat(48);
        let env = [
            ("TEESQL_VERIFIER_URL", "https://10.0.0.1:50051"),
            ("TEESQL_VERIFIER_CERT_SHA256", &*"cd".repeat(32)),
            ("EXPECTED_MRTD", &*format!("{mrtd}, ")),
        ];
        let c = ForwardSettings {
            verifier: Default::default(),
            ..settings()
        }
        .resolve(&env)
        .unwrap();
        assert_eq!(c.verifier_url, "https://10.0.0.1:50051");
        assert_eq!(c.verifier_trust, Some(ServerTrust::CertSha256([0xcd; 32])));
        assert_eq!(c.expected_mrtds, [mrtd]);
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.purpose, DEFAULT_PURPOSE);
        assert_eq!(c.verifier_timeout, VERIFIER_TIMEOUT);
        // Flags win over the environment.
        let c = ForwardSettings {
            expected_mrtds: vec!["cd".repeat(48)],
            ..settings()
        }
        .resolve(&[env[0], env[2]])
        .unwrap();
        assert_eq!(c.verifier_url, "http://127.0.0.1:50051");
        assert_eq!(c.expected_mrtds, ["cd".repeat(48)]);
        // A bad listen address is named with the rest.
        let errors = ForwardSettings {
            listen: Some("6432".into()),
            ..settings()
        }
        .resolve(&[("EXPECTED_MRTD", "xyz")])
        .unwrap_err()
        .join("\n");
        assert!(errors.contains("--listen \"6432\""), "{errors}");
        assert!(errors.contains("expected MRTD \"xyz\""), "{errors}");
    }
}

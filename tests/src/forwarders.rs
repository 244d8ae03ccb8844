//! Test doubles of TeeSQL's client-side forwarders (psycopg-ra-tls, sqlx-ra-tls and
//! prisma-ra-tls, v0.3), which cannot run here: they need a dstack CVM and Intel's PCS or
//! Intel Trust Authority. They behave as the real ones do in everything a server or a
//! driver can observe:
//!
//! - a listener on 127.0.0.1; every local connection gets a fresh upstream connection;
//! - [`Shape::DirectTls`] (v0.3): TLS from the first byte, no SSLRequest (the dstack
//!   gateway routes by SNI, which an SSLRequest would hide). [`Shape::SslRequest`]: older
//!   releases send an SSLRequest first and expect `S`;
//! - no ALPN; SNI = the target host (none for an IP address); TLS 1.2 or 1.3; a dstack
//!   RA-TLS client certificate from the guest agent (`GetTlsKey` with `usage_ra_tls` and
//!   `usage_client_auth`, through dstack's own Rust SDK, as sqlx-ra-tls does);
//! - any server chain accepted at the TLS layer (the handshake signature is still
//!   checked), 15 s for the TCP connect and 15 s for the TLS handshake (sqlx-ra-tls);
//! - the server's quote verified **before** a single byte of the driver's is read or
//!   sent: dcap-qvl against the given root and collateral, TCB status `UpToDate` or
//!   `SWHardeningNeeded`, debug off, an optional MRTD allowlist and the key binding
//!   (`SHA-512("ratls-cert:" || SPKI)`, as sqlx-ra-tls checks). `verify_delay` stands for
//!   the PCCS or Intel Trust Authority round trip (they allow 15-40 s);
//! - a server that fails verification gets its connection closed, and so does the local
//!   driver (the real ones log and drop both sockets);
//! - then bytes are relayed unchanged in both directions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use dcap_qvl::QuoteCollateralV3;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the forwarder starts the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// TLS from the first byte (psycopg-ra-tls, sqlx-ra-tls, prisma-ra-tls v0.3).
    DirectTls,
    /// An SSLRequest, `S`, then TLS (older releases).
    SslRequest,
}

/// What a TeeSQL forwarder double needs.
#[derive(Debug, Clone)]
pub struct ForwarderDouble {
    pub shape: Shape,
    /// The sidecar.
    pub target: SocketAddr,
    /// The host name the application's DSN names (SNI); `None` = an IP address, no SNI.
    pub host: Option<String>,
    /// The guest agent endpoint (unix socket path or URL).
    pub agent: String,
    /// DCAP trust root (DER) and collateral for the server's quote.
    pub root_der: Vec<u8>,
    pub collateral: QuoteCollateralV3,
    /// MRTDs the application allows (lowercase hex); empty = any.
    pub allowed_mrtds: Vec<String>,
    /// Time the quote verification takes.
    pub verify_delay: Duration,
}

/// A running forwarder double.
#[derive(Debug)]
pub struct RunningForwarder {
    pub addr: SocketAddr,
    /// Upstream connections whose server failed verification.
    pub rejected: Arc<AtomicU64>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RunningForwarder {
    /// The DSN the library hands its driver: the forwarder, `sslmode=disable`.
    pub fn dsn(&self, user: &str, secret: &str, db: &str) -> String {
        format!(
            "postgresql://{user}:{secret}@{}/{db}?sslmode=disable",
            self.addr
        )
    }
}

impl ForwarderDouble {
    /// Fetch the client certificate and start listening on 127.0.0.1.
    pub async fn start(self) -> Result<RunningForwarder> {
        let client = dstack_sdk::dstack_client::DstackClient::new(Some(&self.agent));
        let issued = client
            .get_tls_key(
                dstack_sdk::dstack_client::TlsKeyConfig::builder()
                    .subject("sqlx-ra-tls-client")
                    .usage_ra_tls(true)
                    .usage_server_auth(false)
                    .usage_client_auth(true)
                    .build(),
            )
            .await
            .context("GetTlsKey")?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.certificate_chain.join("\n").as_bytes())
                .collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_slice(issued.key.as_bytes())?;
        let mut tls =
            rustls::ClientConfig::builder_with_provider(teesql_sidecar::frontend::tls::provider())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(
                    teesql_sidecar::frontend::tls::ServerCertificateRule::any(),
                ))
                .with_client_auth_cert(chain, key)?;
        // What the real ones set: nothing.
        tls.alpn_protocols.clear();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let rejected = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let me = Arc::new(self);
        let counter = rejected.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => {
                        let Ok((local, _)) = accepted else { continue };
                        let (me, connector, counter) = (me.clone(), connector.clone(), counter.clone());
                        tokio::spawn(async move {
                            if let Err(e) = me.forward(local, &connector).await {
                                counter.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(error = %e, "forwarder double: connection failed");
                            }
                        });
                    }
                }
            }
        });
        Ok(RunningForwarder {
            addr,
            rejected,
            _stop: tx,
        })
    }

    async fn forward(
        &self,
        mut local: TcpStream,
        connector: &tokio_rustls::TlsConnector,
    ) -> Result<()> {
        let _ = local.set_nodelay(true);
        let step = Duration::from_secs(15);
        let mut tcp = tokio::time::timeout(step, TcpStream::connect(self.target))
            .await
            .map_err(|_| anyhow!("TCP connect timed out"))??;
        let _ = tcp.set_nodelay(true);
        if self.shape == Shape::SslRequest {
            tcp.write_all(&teesql_sidecar::pgwire::ssl_request())
                .await?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer).await?;
            if answer[0] != b'S' {
                bail!(
                    "the server answered the SSLRequest with {:?}",
                    answer[0] as char
                );
            }
        }
        let name = match &self.host {
            Some(h) => ServerName::try_from(h.clone())?,
            None => ServerName::IpAddress(self.target.ip().into()),
        };
        let mut upstream = tokio::time::timeout(step, connector.connect(name, tcp))
            .await
            .map_err(|_| anyhow!("TLS handshake timed out"))??;
        let chain: Vec<Vec<u8>> = upstream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.to_vec()).collect())
            .unwrap_or_default();
        tokio::time::sleep(self.verify_delay).await;
        if let Err(e) = self.verify(&chain) {
            let _ = upstream.shutdown().await;
            return Err(e);
        }
        tokio::io::copy_bidirectional(&mut local, &mut upstream).await?;
        Ok(())
    }

    /// Judge the server by its quote, as the TeeSQL libraries' DCAP verifier does.
    fn verify(&self, chain: &[Vec<u8>]) -> Result<()> {
        let evidence = teesql_verifier::evidence::decode_certificate_der(chain)
            .map_err(|e| anyhow!("no quote in the server certificate: {e}"))?;
        let quote = evidence
            .quote
            .context("the server certificate has no quote")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let report = dcap_qvl::verify::QuoteVerifier::new(self.root_der.clone())
            .allow_debug(true)
            .verify(quote.raw(), &self.collateral, now)
            .map_err(|e| anyhow!("quote verification failed: {e:#}"))?;
        if !["UpToDate", "SWHardeningNeeded"].contains(&report.status.as_str()) {
            bail!("TCB status {} is not accepted", report.status);
        }
        let td = quote.td_report().context("not a TDX quote")?;
        if td.td_attributes[0] & 1 != 0 {
            bail!("TDX TD is in debug mode");
        }
        let mrtd = hex::encode(td.mrtd);
        if !self.allowed_mrtds.is_empty() && !self.allowed_mrtds.contains(&mrtd) {
            bail!("MRTD {mrtd} is not allowed");
        }
        let leaf = x509_parser::parse_x509_certificate(chain.first().context("no chain")?)
            .map_err(|e| anyhow!("server certificate: {e}"))?
            .1;
        let expected = sha2::Sha512::new()
            .chain_update(b"ratls-cert:")
            .chain_update(leaf.tbs_certificate.subject_pki.raw)
            .finalize();
        if td.report_data[..] != expected[..] {
            bail!("the quote's report data does not bind the server's key");
        }
        Ok(())
    }
}

//! How the verifier is reached, and how it serves: the one place that knows the three
//! transports.
//!
//! - `unix:///run/teesql/verifier.sock`: a unix socket, for the same CVM (plaintext).
//! - `http://127.0.0.1:50051`: plaintext TCP, only to a loopback address.
//! - `https://verifier.example:50051`: TLS, the server authenticated by a CA file, by
//!   the SHA-256 of its certificate, or by appraising the quote in its RA-TLS
//!   certificate ([`ServerTrust`]).
//!
//! Whoever can answer the sidecar's questions decides who gets into the database, so a
//! client refuses a plaintext verifier that is not on this machine.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint, Uri};

/// Why a verifier URL, the way a verifier is trusted, or a TLS configuration cannot be
/// used. Each message names the URL, setting or file concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A verifier URL that does not parse.
    #[error("{url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        #[source]
        reason: UrlProblem,
    },
    /// A verifier list without a URL in it.
    #[error("{list:?}: no verifier URL")]
    NoUrl {
        /// The list as given.
        list: String,
    },
    /// More URLs than [`MAX_ENDPOINTS`].
    #[error("{count} verifier URLs; at most {MAX_ENDPOINTS}")]
    TooManyUrls {
        /// How many were given.
        count: usize,
    },
    /// The same URL twice in a list.
    #[error("{url:?} is listed twice")]
    DuplicateUrl {
        /// The URL listed twice.
        url: String,
    },
    /// An `https://` verifier without a way to authenticate it.
    #[error(
        "{url:?}: an https verifier needs verifier_ca_file, verifier_cert_sha256 or verifier_identity_policy_dir to be trusted"
    )]
    Untrusted {
        /// The verifier's URL.
        url: String,
    },
    /// A way to trust a verifier given for one that does not speak TLS.
    #[error(
        "{url:?}: verifier_ca_file / verifier_cert_sha256 / verifier_identity_policy_dir need an https:// verifier URL"
    )]
    TrustWithoutTls {
        /// The verifier's URL.
        url: String,
    },
    /// Plaintext TCP to a verifier on another machine.
    #[error(
        "{url:?}: plaintext only to a loopback address; use https:// (with verifier_ca_file, verifier_cert_sha256 or verifier_identity_policy_dir) or unix://"
    )]
    PlaintextNotLocal {
        /// The verifier's URL.
        url: String,
    },
    /// Both a CA file and a certificate hash given.
    #[error("{ca_file} and {cert_sha256}: give one way to trust the verifier, not both")]
    TwoTrusts {
        /// The CA file setting's name, as the user spells it.
        ca_file: String,
        /// The certificate hash setting's name, as the user spells it.
        cert_sha256: String,
    },
    /// A certificate hash that is not 64 hex digits.
    #[error("{key} {value:?}: expected 64 hex digits (SHA-256 of the certificate's DER)")]
    BadCertSha256 {
        /// The setting's name, as the user spells it.
        key: String,
        /// The value given.
        value: String,
    },
    /// The gRPC endpoint could not be made from the URL.
    #[error("verifier url {url:?}: {source}")]
    Endpoint {
        /// The verifier's URL.
        url: String,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A PEM file (certificates or key) that cannot be read or parsed.
    #[error("{key} {}: {source}", path.display())]
    Pem {
        /// The setting that names the file (`tls_cert`, `verifier_ca_file`, …).
        key: String,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file without a certificate in it.
    #[error("{key} {}: no PEM certificate in it", path.display())]
    NoCertificate {
        /// The setting that names the file.
        key: String,
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate rustls does not accept.
    #[error("verifier_ca_file {}: {source}", path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// rustls's error.
        #[source]
        source: rustls::Error,
    },
    /// A certificate chain (PEM) that does not parse.
    #[error("certificate chain: {0}")]
    ChainPem(#[source] rustls::pki_types::pem::Error),
    /// A certificate chain without a certificate.
    #[error("certificate chain is empty")]
    EmptyChain,
    /// A private key (PEM) that does not parse.
    #[error("private key: {0}")]
    KeyPem(#[source] rustls::pki_types::pem::Error),
    /// A private key rustls cannot sign with.
    #[error("private key: {0}")]
    KeyUnusable(#[source] rustls::Error),
    /// A certificate and key that do not make a server configuration.
    #[error("tls_cert/tls_key: {0}")]
    CertKey(#[source] rustls::Error),
    /// rustls refused the configuration (protocol versions of the provider).
    #[error("{0}")]
    Tls(#[from] rustls::Error),
}

/// What is wrong with a verifier URL ([`TransportError::BadUrl`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UrlProblem {
    /// `unix://` followed by a relative path.
    #[error("a unix socket URL names an absolute path (unix:///run/teesql/verifier.sock)")]
    RelativeSocketPath,
    /// Neither `https://`, `http://` nor `unix://`.
    #[error("expected https://HOST:PORT, http://127.0.0.1:PORT or unix:///PATH")]
    Scheme,
    /// The authority does not parse.
    #[error("{0}")]
    Authority(#[source] tonic::codegen::http::uri::InvalidUri),
    /// No host.
    #[error("no host")]
    NoHost,
    /// No port (there is no default).
    #[error("no port")]
    NoPort,
    /// A path after the authority.
    #[error("a verifier URL has no path")]
    Path,
}

/// Where a verifier is, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifierAddr {
    /// A unix socket at this absolute path (`unix:///run/teesql/verifier.sock`).
    Unix(PathBuf),
    /// `host:port`, and whether TLS is spoken.
    Tcp {
        /// Host name or IP literal, without the brackets of an IPv6 literal.
        host: String,
        /// TCP port; the URL must state it (no default).
        port: u16,
        /// True for `https://`, false for `http://` (then only to a loopback host).
        tls: bool,
    },
}

impl VerifierAddr {
    /// Parse `unix:///ABS/PATH`, `http://HOST:PORT` or `https://HOST:PORT` (no path;
    /// IPv6 hosts in brackets); the error names the URL. Does not check locality.
    pub fn parse(url: &str) -> Result<Self, TransportError> {
        let bad = |reason| TransportError::BadUrl {
            url: url.to_string(),
            reason,
        };
        if let Some(path) = url.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad(UrlProblem::RelativeSocketPath));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad(UrlProblem::Scheme));
        };
        let authority = rest.trim_end_matches('/');
        let uri: Uri = format!("http://{authority}")
            .parse()
            .map_err(|e| bad(UrlProblem::Authority(e)))?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad(UrlProblem::NoHost))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().ok_or_else(|| bad(UrlProblem::NoPort))?;
        if uri.path() != "/" {
            return Err(bad(UrlProblem::Path));
        }
        Ok(Self::Tcp { host, port, tls })
    }

    /// True for a unix socket and for a TCP address on this machine.
    pub fn is_local(&self) -> bool {
        match self {
            Self::Unix(_) => true,
            Self::Tcp { host, .. } => is_loopback_host(host),
        }
    }
}

/// `localhost` or a loopback IP literal.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why [`PeerCheck::check`] refused a peer: the checker's own error.
pub type PeerRefused = Box<dyn std::error::Error + Send + Sync>;

/// What [`PeerCheck::check`] returns: `Ok` with what was attested (for the log), or why
/// the peer is refused.
pub type CheckFuture<'a> =
    Pin<Box<dyn std::future::Future<Output = Result<String, PeerRefused>> + Send + 'a>>;

/// Judges a TLS verifier by its certificate chain (leaf first) after the handshake and
/// before the first request: the verifier's own RA-TLS certificate, appraised in the
/// client's process (`teesql_verifier::local::VerifierIdentity`).
pub trait PeerCheck: Send + Sync + std::fmt::Debug {
    /// Appraise the peer's `chain` (leaf first); an `Err` closes the connection with
    /// `PermissionDenied` before any request is sent.
    fn check<'a>(&'a self, chain: &'a [CertificateDer<'static>]) -> CheckFuture<'a>;
}

/// How a client authenticates a TLS verifier.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// CA certificates (PEM); the name in the URL must be in the certificate.
    CaFile(PathBuf),
    /// The SHA-256 of the verifier's certificate (DER), as `openssl x509 -outform der |
    /// sha256sum` prints it.
    CertSha256([u8; 32]),
    /// The verifier's RA-TLS certificate, appraised by this check (the name in the URL
    /// is not what identifies it; its attested compose hash and app id are).
    Attested(Arc<dyn PeerCheck>),
}

impl PartialEq for ServerTrust {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::CaFile(a), Self::CaFile(b)) => a == b,
            (Self::CertSha256(a), Self::CertSha256(b)) => a == b,
            (Self::Attested(a), Self::Attested(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl ServerTrust {
    /// From the two settings a client has; at most one may be given. `key` spells a
    /// setting's name as the caller's user writes it (`verifier.ca_file`,
    /// `--verifier-ca-file`) for the messages.
    pub fn from_settings(
        ca_file: Option<&Path>,
        cert_sha256: Option<&str>,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<Self>, TransportError> {
        match (ca_file, cert_sha256) {
            (Some(_), Some(_)) => Err(TransportError::TwoTrusts {
                ca_file: key("ca_file"),
                cert_sha256: key("cert_sha256"),
            }),
            (Some(f), None) => Ok(Some(Self::CaFile(f.to_path_buf()))),
            (None, Some(h)) => {
                let digits = h.trim().trim_start_matches("sha256:").replace(':', "");
                let mut pin = [0u8; 32];
                hex::decode_to_slice(&digits, &mut pin).map_err(|_| {
                    TransportError::BadCertSha256 {
                        key: key("cert_sha256"),
                        value: h.to_string(),
                    }
                })?;
                Ok(Some(Self::CertSha256(pin)))
            }
            (None, None) => Ok(None),
        }
    }
}

/// SHA-256 of a certificate's DER, lower-case hex (what [`ServerTrust::CertSha256`] pins).
pub fn cert_sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Most verifier endpoints one client balances over.
pub const MAX_ENDPOINTS: usize = 16;

/// The URLs of a verifier list, `URL[,URL…]` (blanks around commas ignored): one or more,
/// at most [`MAX_ENDPOINTS`], none twice.
pub fn split_urls(list: &str) -> Result<Vec<&str>, TransportError> {
    let urls: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(TransportError::NoUrl {
            list: list.to_string(),
        });
    }
    if urls.len() > MAX_ENDPOINTS {
        return Err(TransportError::TooManyUrls { count: urls.len() });
    }
    for (i, u) in urls.iter().enumerate() {
        if urls[..i].contains(u) {
            return Err(TransportError::DuplicateUrl { url: u.to_string() });
        }
    }
    Ok(urls)
}

/// Check a verifier URL (or a comma-separated list of them) and how it is trusted, as
/// [`connect_lazy`] will use them (the CA file is read), for configuration errors at
/// start-up.
pub fn check(urls: &str, trust: Option<&ServerTrust>) -> Result<(), TransportError> {
    for url in split_urls(urls)? {
        plan(url, trust)?;
    }
    Ok(())
}

/// How one connection is secured: the TLS configuration, and the check of the peer's
/// chain after the handshake when the verifier is trusted by its quote.
#[derive(Debug, Clone)]
struct Secured {
    config: Arc<rustls::ClientConfig>,
    check: Option<Arc<dyn PeerCheck>>,
}

/// The address, and how the connection is secured when it speaks TLS.
fn plan(
    url: &str,
    trust: Option<&ServerTrust>,
) -> Result<(VerifierAddr, Option<Secured>), TransportError> {
    let url_ = || url.to_string();
    let addr = VerifierAddr::parse(url)?;
    let tls = match (&addr, trust) {
        (VerifierAddr::Tcp { tls: true, .. }, Some(t)) => Some(Secured {
            config: Arc::new(client_config(t)?),
            check: match t {
                ServerTrust::Attested(check) => Some(check.clone()),
                _ => None,
            },
        }),
        (VerifierAddr::Tcp { tls: true, .. }, None) => {
            return Err(TransportError::Untrusted { url: url_() });
        }
        (_, Some(_)) => {
            return Err(TransportError::TrustWithoutTls { url: url_() });
        }
        (
            VerifierAddr::Tcp {
                tls: false, host, ..
            },
            None,
        ) if !is_loopback_host(host) => {
            return Err(TransportError::PlaintextNotLocal { url: url_() });
        }
        _ => None,
    };
    Ok((addr, tls))
}

/// A lazily connected gRPC channel to the verifier at `url`. Refuses plaintext TCP to
/// another machine, and TLS without a way to authenticate the server.
pub fn connect_lazy(
    url: &str,
    trust: Option<&ServerTrust>,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Channel, TransportError> {
    let (addr, tls) = plan(url, trust)?;
    // The URI only names the :authority; the connector below decides how to get there.
    let authority = match &addr {
        VerifierAddr::Unix(_) => "http://localhost".to_string(),
        VerifierAddr::Tcp { host, port, .. } if host.contains(':') => {
            format!("http://[{host}]:{port}")
        }
        VerifierAddr::Tcp { host, port, .. } => format!("http://{host}:{port}"),
    };
    let endpoint = Endpoint::from_shared(authority)
        .map_err(|source| TransportError::Endpoint {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    let connector = tower::service_fn(move |_: Uri| {
        let addr = addr.clone();
        let tls = tls.clone();
        async move { open(&addr, tls, connect_timeout).await.map(TokioIo::new) }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// Run `check` in a task of its own. The connect timeout may cancel this connection
/// attempt while the appraisal waits for collateral (a cold fetch from Intel PCS over a
/// WAN can take longer); the appraisal then runs on, bounded by its own fetch timeout, so
/// what it fetched is cached and the next attempt is quick.
async fn check_detached(
    check: Arc<dyn PeerCheck>,
    chain: Vec<CertificateDer<'static>>,
) -> Result<String, PeerRefused> {
    tokio::spawn(async move { check.check(&chain).await })
        .await
        .unwrap_or_else(|e| Err(format!("the check did not finish: {e}").into()))
}

async fn open(
    addr: &VerifierAddr,
    tls: Option<Secured>,
    connect_timeout: Duration,
) -> std::io::Result<Stream> {
    let timed = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} within {connect_timeout:?}"),
        )
    };
    match addr {
        VerifierAddr::Unix(path) => {
            let s = tokio::time::timeout(connect_timeout, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| timed("no connection"))??;
            Ok(Stream::Unix(s))
        }
        VerifierAddr::Tcp { host, port, .. } => {
            let tcp = tokio::time::timeout(
                connect_timeout,
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await
            .map_err(|_| timed("no connection"))??;
            tcp.set_nodelay(true)?;
            let Some(tls) = tls else {
                return Ok(Stream::Tcp(tcp));
            };
            let name = ServerName::try_from(host.clone())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let s = tokio::time::timeout(
                connect_timeout,
                tokio_rustls::TlsConnector::from(tls.config).connect(name, tcp),
            )
            .await
            .map_err(|_| timed("no TLS handshake"))??;
            if let Some(check) = tls.check {
                let chain = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .unwrap_or_default()
                    .to_vec();
                match check_detached(check, chain).await {
                    Ok(attested) => {
                        tracing::debug!(verifier = %host, %attested, "verifier attested");
                    }
                    Err(why) => {
                        tracing::warn!(verifier = %host, %why, "the verifier's attestation was refused");
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            format!("the verifier's attestation was refused: {why}"),
                        ));
                    }
                }
            }
            Ok(Stream::ClientTls(Box::new(s)))
        }
    }
}

/// The rustls crypto provider of every TeeSQL TLS endpoint: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(trust: &ServerTrust) -> Result<rustls::ClientConfig, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let mut config = match trust {
        ServerTrust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = read_certs(path, "verifier_ca_file")?;
            for c in certs {
                roots.add(c).map_err(|source| TransportError::BadCa {
                    path: path.clone(),
                    source,
                })?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::CertSha256(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCertificateRule::sha256(*pin)))
            .with_no_client_auth(),
        // Judged after the handshake, by its quote ([`PeerCheck`]).
        ServerTrust::Attested(_) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerCertificateRule::any()))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A certified key (with whatever goes with it) that renewal swaps without a lock:
/// handshakes in progress keep the one they started with. The one rotating identity of
/// every TeeSQL endpoint: the sidecar's server certificate, the forwarder's client
/// certificate and the verifier's RA-TLS certificate.
#[derive(Debug)]
pub struct Rotating<T>(arc_swap::ArcSwap<T>);

/// What a [`Rotating`] serves: its certified key.
pub trait Certified: std::fmt::Debug + Send + Sync + 'static {
    /// The key and chain to present.
    fn certified(this: &Arc<Self>) -> Arc<rustls::sign::CertifiedKey>;
}

impl Certified for rustls::sign::CertifiedKey {
    fn certified(this: &Arc<Self>) -> Arc<rustls::sign::CertifiedKey> {
        this.clone()
    }
}

impl<T: Certified> Rotating<T> {
    /// Serving `initial` until replaced.
    pub fn new(initial: T) -> Arc<Self> {
        Arc::new(Self(arc_swap::ArcSwap::from_pointee(initial)))
    }

    /// What is served now.
    pub fn current(&self) -> Arc<T> {
        self.0.load_full()
    }

    /// Serve `next` from the next handshake on.
    pub fn replace(&self, next: T) {
        self.0.store(Arc::new(next));
    }
}

impl<T: Certified> rustls::server::ResolvesServerCert for Rotating<T> {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(T::certified(&self.0.load()))
    }
}

impl<T: Certified> rustls::client::ResolvesClientCert for Rotating<T> {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(T::certified(&self.0.load()))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A certificate chain (PEM, leaf first) and its private key (PEM), as dstack's GetTlsKey
/// returns them, ready to serve.
pub fn certified_key(
    chain_pem: &str,
    key_pem: &str,
) -> Result<rustls::sign::CertifiedKey, TransportError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(TransportError::ChainPem)?;
    if certs.is_empty() {
        return Err(TransportError::EmptyChain);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(TransportError::KeyPem)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(TransportError::KeyUnusable)?;
    Ok(rustls::sign::CertifiedKey::new(certs, signing))
}

/// Certificates from a PEM file, at least one.
pub fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = |source| TransportError::Pem {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<_, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TransportError::NoCertificate {
            key: key.to_string(),
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// What a verifier that accepts a certificate by its own rule still checks: the handshake
/// signature made with the certificate's key, so the peer proves possession of it.
/// (The sidecar accepts any certificate at the TLS layer and has the verifier judge it;
/// a pinned verifier certificate is accepted by its hash.)
#[derive(Debug)]
pub struct HandshakeSignatures {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Default for HandshakeSignatures {
    fn default() -> Self {
        Self {
            provider: provider(),
        }
    }
}

impl HandshakeSignatures {
    /// Check a TLS 1.2 handshake signature over `message` with `cert`'s public key
    /// (ring's algorithms); an error refuses the handshake.
    pub fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    /// Check a TLS 1.3 handshake signature over `message` with `cert`'s public key
    /// (ring's algorithms); an error refuses the handshake.
    pub fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    /// The signature schemes ring verifies, to offer in the handshake
    /// (`ServerCertVerifier::supported_verify_schemes`).
    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server certificate accepted by a rule of the client's own rather than by a CA: any
/// certificate — judged afterwards by its quote, before any byte goes to the peer (the
/// forwarder's Postgres server, an attested verifier) — or exactly one, by the SHA-256 of
/// its DER. Either way the handshake signature is checked with the certificate's key, so
/// only its holder can answer.
#[derive(Debug)]
pub struct ServerCertificateRule {
    /// `None`: any certificate.
    pin: Option<[u8; 32]>,
    signatures: HandshakeSignatures,
}

impl ServerCertificateRule {
    /// Any certificate, to be judged by its quote once the handshake is done.
    pub fn any() -> Self {
        Self {
            pin: None,
            signatures: HandshakeSignatures::default(),
        }
    }

    /// Exactly the certificate whose DER has this SHA-256.
    pub fn sha256(pin: [u8; 32]) -> Self {
        Self {
            pin: Some(pin),
            signatures: HandshakeSignatures::default(),
        }
    }
}

impl ServerCertVerifier for ServerCertificateRule {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            Some(pin) if Sha256::digest(end_entity.as_ref()).as_slice() != pin => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

/// The server's TLS configuration from an operator's certificate chain and key (PEM),
/// speaking HTTP/2 only.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TransportError> {
    let chain = read_certs(cert, "tls_cert")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TransportError::Pem {
        key: "tls_key".into(),
        path: key.to_path_buf(),
        source,
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TransportError::CertKey)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The server's TLS configuration with a certificate chosen per handshake (one that is
/// renewed: the verifier's RA-TLS certificate), speaking HTTP/2 only.
pub fn server_config_resolving(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, TransportError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// One connection to or from the verifier, whatever the transport.
#[derive(Debug)]
pub enum Stream {
    /// Plaintext TCP (a client's `http://` loopback URL, or a server's plaintext listener).
    Tcp(tokio::net::TcpStream),
    /// A unix socket (`unix://` URL), plaintext.
    Unix(tokio::net::UnixStream),
    /// A client's TLS connection to an `https://` verifier, its server already
    /// authenticated (and, for [`ServerTrust::Attested`], its quote appraised).
    ClientTls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    /// A connection the verifier accepted on its TLS listener, after the handshake.
    ServerTls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
            Stream::ClientTls($s) => $e,
            Stream::ServerTls($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::ClientTls(s) => s.is_write_vectored(),
            Stream::ServerTls(s) => s.is_write_vectored(),
        }
    }
}

/// Who is calling, as the server sees the connection (in each request's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Over TCP (plaintext or TLS) from this address.
    Tcp {
        /// The remote address; `None` when the socket could not report it (`peer_addr`
        /// failed), which [`Peer::is_local`] treats as not local.
        addr: Option<std::net::SocketAddr>,
        /// True when the connection speaks TLS, false for plaintext TCP.
        tls: bool,
    },
    /// Over the unix socket.
    Unix,
}

impl Peer {
    /// On this machine: the unix socket or a loopback TCP address.
    pub fn is_local(&self) -> bool {
        match self {
            Peer::Unix => true,
            Peer::Tcp { addr, .. } => addr.is_some_and(|a| a.ip().is_loopback()),
        }
    }
}

impl tonic::transport::server::Connected for Stream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        match self {
            Stream::Unix(_) => Peer::Unix,
            Stream::Tcp(s) => Peer::Tcp {
                addr: s.peer_addr().ok(),
                tls: false,
            },
            Stream::ServerTls(s) => Peer::Tcp {
                addr: s.get_ref().0.peer_addr().ok(),
                tls: true,
            },
            Stream::ClientTls(s) => Peer::Tcp {
                addr: s.get_ref().0.peer_addr().ok(),
                tls: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct SlowCheck {
        finished: std::sync::atomic::AtomicBool,
    }

    impl PeerCheck for SlowCheck {
        fn check<'a>(&'a self, _: &'a [CertificateDer<'static>]) -> CheckFuture<'a> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.finished
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                Ok("attested".into())
            })
        }
    }

    #[tokio::test]
    async fn an_attempt_cancelled_by_its_timeout_leaves_the_check_running() {
        let check = Arc::new(SlowCheck::default());
        let cancelled = tokio::time::timeout(
            Duration::from_millis(20),
            check_detached(check.clone(), Vec::new()),
        )
        .await;
        assert!(cancelled.is_err(), "the attempt should time out");
        assert!(!check.finished.load(std::sync::atomic::Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            check.finished.load(std::sync::atomic::Ordering::SeqCst),
            "the check stopped with the attempt"
        );
        assert_eq!(
            check_detached(check, Vec::new()).await.ok().as_deref(),
            Some("attested")
        );
    }

    #[test]
    fn urls_parse_and_say_what_is_wrong() {
        assert_eq!(
            VerifierAddr::parse("unix:///run/teesql/verifier.sock").unwrap(),
            VerifierAddr::Unix("/run/teesql/verifier.sock".into())
        );
        assert_eq!(
            VerifierAddr::parse("https://v.example:443").unwrap(),
            VerifierAddr::Tcp {
                host: "v.example".into(),
                port: 443,
                tls: true
            }
        );
        let v6 = VerifierAddr::parse("http://[::1]:50051/").unwrap();
        assert!(v6.is_local(), "{v6:?}");
        assert!(!VerifierAddr::parse("http://10.0.0.1:1").unwrap().is_local());
        for (bad, needle) in [
            ("unix://relative.sock", "absolute path"),
            ("grpc://x:1", "expected https://"),
            ("http://x", "no port"),
            ("http://x:1/path", "no path"),
        ] {
            let e = VerifierAddr::parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn url_lists_split_on_commas() {
        assert_eq!(
            split_urls(" unix:///a.sock , http://127.0.0.1:1").unwrap(),
            vec!["unix:///a.sock", "http://127.0.0.1:1"]
        );
        assert!(
            split_urls(" , ")
                .unwrap_err()
                .to_string()
                .contains("no verifier URL")
        );
        assert!(matches!(
            split_urls("unix:///a,unix:///a"),
            Err(TransportError::DuplicateUrl { url }) if url == "unix:///a"
        ));
        let many = vec!["unix:///x"; MAX_ENDPOINTS + 1]
            .iter()
            .enumerate()
            .map(|(i, u)| format!("{u}{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            split_urls(&many).unwrap_err().to_string(),
            format!(
                "{} verifier URLs; at most {MAX_ENDPOINTS}",
                MAX_ENDPOINTS + 1
            )
        );
        let e = check("http://127.0.0.1:1,http://192.0.2.1:1", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("192.0.2.1"), "{e}");
    }

    #[test]
    fn trust_settings_are_one_or_none() {
        let key = |k: &str| format!("verifier.{k}");
        assert_eq!(ServerTrust::from_settings(None, None, &key).unwrap(), None);
        let pin = "ab".repeat(32);
        assert_eq!(
            ServerTrust::from_settings(None, Some(&format!("sha256:{pin}")), &key).unwrap(),
            Some(ServerTrust::CertSha256([0xab; 32]))
        );
        let e = ServerTrust::from_settings(None, Some("abc"), &key)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("verifier.cert_sha256 \"abc\""), "{e}");
        assert_eq!(
            ServerTrust::from_settings(Some(Path::new("/x")), Some(&pin), &key)
                .unwrap_err()
                .to_string(),
            "verifier.ca_file and verifier.cert_sha256: give one way to trust the verifier, not both"
        );
    }

    #[tokio::test]
    async fn plaintext_to_another_machine_and_unauthenticated_tls_are_refused() {
        let t = Duration::from_secs(1);
        let e = connect_lazy("http://192.0.2.1:50051", None, t, t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plaintext only to a loopback address"), "{e}");
        let e = connect_lazy("https://192.0.2.1:50051", None, t, t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "needs verifier_ca_file, verifier_cert_sha256 or verifier_identity_policy_dir"
            ),
            "{e}"
        );
        let pin = ServerTrust::CertSha256([1; 32]);
        let e = connect_lazy("http://127.0.0.1:1", Some(&pin), t, t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("need an https://"), "{e}");
        assert!(connect_lazy("http://127.0.0.1:1", None, t, t).is_ok());
        assert!(connect_lazy("unix:///tmp/x.sock", None, t, t).is_ok());
        assert!(connect_lazy("https://192.0.2.1:1", Some(&pin), t, t).is_ok());
    }
}

//! TLS for the Postgres port: rustls, TLS 1.3 preferred and 1.2 allowed, ALPN `postgresql`
//! offered (not required), a client certificate optional and never judged here.
//!
//! rustls still checks the client's CertificateVerify signature with the certificate's
//! key, so a presented certificate proves possession of its key; whether the certificate
//! (and the quote in it) is acceptable is the verifier's decision.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use teesql_proto::transport::HandshakeSignatures;

/// ALPN protocol id of PostgreSQL (direct TLS, PG 17).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The crypto provider everything here uses: ring (the same as the verifier's clients).
pub use teesql_proto::transport::provider;

pub use crate::identity::{RotatingCert, ServerIdentity};

/// Asks for a client certificate, accepts any (or none), checks only the handshake
/// signature made with its key.
#[derive(Debug)]
struct AnyClientCertificate(HandshakeSignatures);

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Judged by the verifier service, by its quote, not by a CA.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// The client side's counterpart: `ServerCertificateRule::any()` accepts any server
/// chain at the TLS layer (still checking the handshake signature); the chain is judged
/// afterwards, by its quote, before any byte is relayed.
pub use teesql_proto::transport::ServerCertificateRule;

/// The server configuration of the Postgres port.
pub fn server_config(cert: Arc<RotatingCert>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(AnyClientCertificate(
            HandshakeSignatures::default(),
        )))
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    // Sessions are long-lived and few; no resumption state to guard.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

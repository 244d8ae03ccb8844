//! The sidecar's own identity: RA-TLS certificates and quotes from the dstack guest agent
//! (the CVM's socket, or `DSTACK_SIMULATOR_ENDPOINT` — how it uses the development agent).

use std::sync::Arc;
use std::time::Duration;

pub use teesql_proto::agent::{AgentError, GuestAgent, renew_forever};

use rustls::sign::CertifiedKey;

/// A server identity ready for rustls.
pub async fn server_identity(
    agent: &GuestAgent,
    subject: &str,
    alt_names: &[String],
) -> Result<ServerIdentity, AgentError> {
    let (chain, key) = agent.tls_identity(subject, alt_names, true).await?;
    ServerIdentity::from_pem(&chain, &key).map_err(|e| agent.err(e))
}

/// Renew the sidecar's serving certificate on schedule.
pub async fn renew_server_certificate(
    agent: Arc<GuestAgent>,
    cert: Arc<RotatingCert>,
    subject: String,
    alt_names: Vec<String>,
    every: Duration,
    on_result: impl Fn(bool) + Send + 'static,
) {
    let renew = || async {
        let id = server_identity(&agent, &subject, &alt_names).await?;
        tracing::debug!(not_after = id.not_after, "new server certificate");
        cert.replace(id);
        Ok::<(), AgentError>(())
    };
    renew_forever("server", every, renew, on_result).await;
}

/// A certificate and key ready to serve, with the `tls-server-end-point` hash clients
/// bind SCRAM to.
#[derive(Debug)]
pub struct ServerIdentity {
    /// The chain (leaf first) and signing key rustls serves.
    pub certified: Arc<CertifiedKey>,
    /// RFC 5929 `tls-server-end-point` of the leaf (its DER hashed with its signature's
    /// hash, SHA-256 by default): the channel binding data of SCRAM-SHA-256-PLUS.
    pub end_point_hash: Vec<u8>,
    /// Unix seconds; when the certificate expires.
    pub not_after: u64,
}

impl ServerIdentity {
    /// From a PEM chain (leaf first) and a PEM private key, as dstack's GetTlsKey returns.
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Self, teesql_proto::transport::TransportError> {
        let certified = teesql_proto::transport::certified_key(chain_pem, key_pem)?;
        let leaf = &certified.cert[0];
        let not_after = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, c)| c.validity().not_after.timestamp().max(0) as u64)
            .unwrap_or(0);
        Ok(Self {
            end_point_hash: crate::auth::scram::tls_server_end_point(leaf),
            certified: Arc::new(certified),
            not_after,
        })
    }
}

/// The serving certificate, swapped without a lock or a restart when it is renewed.
pub type RotatingCert = teesql_proto::transport::Rotating<ServerIdentity>;

impl teesql_proto::transport::Certified for ServerIdentity {
    fn certified(this: &Arc<Self>) -> Arc<CertifiedKey> {
        this.certified.clone()
    }
}

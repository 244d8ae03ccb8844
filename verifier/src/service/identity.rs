//! The verifier's own RA-TLS identity (`serve --ra-tls`): a certificate from the dstack
//! guest agent (GetTlsKey, the key and quote made inside this CVM), served on gRPC and
//! renewed on schedule; and a quote binding the decision-signing key, published in the
//! JWKS. Clients then trust this verifier by what it runs (its compose hash and app id,
//! appraised under the policy purpose `verifier`), not by a CA.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use teesql_proto::agent::{GuestAgent, renew_forever};

use super::config::RaTlsConfig;
use super::token::{DecisionSigner, SignerError};
use teesql_proto::agent::AgentError;
use teesql_proto::transport::TransportError;

/// Why the verifier's RA-TLS identity could not be set up or bound to the signing key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The guest agent gave no certificate.
    #[error("cannot get the verifier's RA-TLS certificate: {0}")]
    Certificate(#[source] AgentError),
    /// The certificate and key the agent gave cannot be served.
    #[error("the guest agent's RA-TLS identity: {0}")]
    Unusable(#[source] TransportError),
    /// rustls refused the server configuration.
    #[error(transparent)]
    Tls(TransportError),
    /// The guest agent gave no quote for the signing key.
    #[error("cannot bind the signing key to a quote: {0}")]
    Quote(#[source] AgentError),
    /// The quote does not serialize.
    #[error("{0}")]
    QuoteJson(#[source] serde_json::Error),
    /// The signing key could not take the quote.
    #[error(transparent)]
    Signer(#[from] SignerError),
}

/// The subject of the verifier's certificates.
pub const SUBJECT: &str = "teesql-verifier";

/// The serving certificate, swapped on renewal; handshakes in progress keep theirs.
pub type RotatingKey = teesql_proto::transport::Rotating<CertifiedKey>;

/// The guest agent and the certificate it issued.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    agent: Arc<GuestAgent>,
    key: Arc<RotatingKey>,
    renew_every: Duration,
}

impl AgentIdentity {
    /// The first certificate (an agent that cannot give one stops start-up).
    pub async fn start(config: &RaTlsConfig) -> Result<Self, IdentityError> {
        let agent = Arc::new(GuestAgent::new(config.endpoint.as_deref()));
        let first = issue(&agent).await?;
        Ok(Self {
            agent,
            key: RotatingKey::new(first),
            renew_every: config.renew_every,
        })
    }

    /// gRPC's TLS configuration, serving whatever certificate is current.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, IdentityError> {
        teesql_proto::transport::server_config_resolving(self.key.clone())
            .map(Arc::new)
            .map_err(IdentityError::Tls)
    }

    /// The certificate being served (leaf first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.key.current().cert.clone()
    }

    /// Bind the decision-signing key to a quote: GetQuote with the key's report data,
    /// published with the key in the JWKS.
    pub async fn bind_signing_key(&self, signer: &DecisionSigner) -> Result<(), IdentityError> {
        let quote = self
            .agent
            .quote(signer.report_data())
            .await
            .map_err(IdentityError::Quote)?;
        let value = serde_json::to_value(&quote).map_err(IdentityError::QuoteJson)?;
        Ok(signer.attach_quote(value)?)
    }

    /// Renew forever (the task is aborted when the server stops).
    pub async fn renew(self) {
        let renew = || async {
            let next = issue(&self.agent).await?;
            self.key.replace(next);
            Ok::<(), IdentityError>(())
        };
        renew_forever("verifier", self.renew_every, renew, |_| {}).await;
    }
}

async fn issue(agent: &GuestAgent) -> Result<CertifiedKey, IdentityError> {
    let (chain, key) = agent
        .tls_identity(SUBJECT, &[SUBJECT.to_string()], true)
        .await
        .map_err(IdentityError::Certificate)?;
    teesql_proto::transport::certified_key(&chain, &key).map_err(IdentityError::Unusable)
}

//! The sidecar's own identity: RA-TLS certificates and quotes from the dstack guest agent
//! (the CVM's socket, or `DSTACK_SIMULATOR_ENDPOINT` — how it uses the development agent).

use std::sync::Arc;
use std::time::Duration;

pub use teesql_proto::agent::{AgentError, GuestAgent, renew_forever};

use crate::tls::{RotatingCert, ServerIdentity};

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
        let id = server_identity(&agent, &subject, &alt_names)
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(not_after = id.not_after, "new server certificate");
        cert.replace(id);
        Ok(())
    };
    renew_forever("server", every, renew, on_result).await;
}

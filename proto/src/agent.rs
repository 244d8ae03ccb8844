//! The dstack guest agent, as a TeeSQL program in a CVM uses it: RA-TLS keys and
//! certificates (`GetTlsKey`), quotes (`GetQuote`), `Info`, and renewal on schedule. The
//! agent is the CVM's socket, or `DSTACK_SIMULATOR_ENDPOINT` (how the development agent
//! is reached).

use std::time::Duration;

use dstack_sdk::dstack_client::{DstackClient, GetQuoteResponse, InfoResponse, TlsKeyConfig};

/// Talks to the guest agent.
pub struct GuestAgent {
    client: DstackClient,
    endpoint: String,
}

impl std::fmt::Debug for GuestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestAgent")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Why the guest agent could not help.
#[derive(Debug, thiserror::Error)]
#[error("dstack guest agent at {endpoint}: {detail}")]
pub struct AgentError {
    /// The agent as shown to people: its URL or socket path, or the discovered default.
    pub endpoint: String,
    /// What went wrong; for a failed call, its name and the error, or that no answer
    /// came within 15 s.
    pub detail: String,
}

/// How long one agent call may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(15);

impl GuestAgent {
    /// `endpoint`: an http(s) URL or a unix socket path; `None` = dstack-sdk's discovery
    /// (`DSTACK_SIMULATOR_ENDPOINT`, then `/var/run/dstack.sock` and friends).
    pub fn new(endpoint: Option<&str>) -> Self {
        let shown = endpoint
            .map(str::to_string)
            .or_else(|| std::env::var("DSTACK_SIMULATOR_ENDPOINT").ok())
            .unwrap_or_else(|| "the dstack socket (/var/run/dstack.sock)".into());
        Self {
            client: DstackClient::new(endpoint),
            endpoint: shown,
        }
    }

    /// An error naming this agent.
    pub fn err(&self, detail: impl std::fmt::Display) -> AgentError {
        AgentError {
            endpoint: self.endpoint.clone(),
            detail: detail.to_string(),
        }
    }

    async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> Result<T, AgentError> {
        match tokio::time::timeout(AGENT_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(format!("{what}: {e:#}"))),
            Err(_) => Err(self.err(format!("{what}: no answer within {AGENT_TIMEOUT:?}"))),
        }
    }

    /// A fresh RA-TLS key and certificate (`GetTlsKey` with `usage_ra_tls`).
    pub async fn tls_identity(
        &self,
        subject: &str,
        alt_names: &[String],
        server: bool,
    ) -> Result<(String, String), AgentError> {
        let config = TlsKeyConfig::builder()
            .subject(subject)
            .alt_names(alt_names.to_vec())
            .usage_ra_tls(true)
            .usage_server_auth(server)
            .usage_client_auth(!server)
            .build();
        let resp = self
            .call("GetTlsKey", self.client.get_tls_key(config))
            .await?;
        Ok((resp.certificate_chain.concat(), resp.key))
    }

    /// A TDX quote carrying `report_data`, with the event log and `vm_config`
    /// (`GetQuote`); fails after 15 s without an answer.
    pub async fn quote(&self, report_data: [u8; 64]) -> Result<GetQuoteResponse, AgentError> {
        self.call("GetQuote", self.client.get_quote(report_data.to_vec()))
            .await
    }

    /// The CVM's app id, compose hash, instance id and registers (`Info`); fails after
    /// 15 s without an answer.
    pub async fn info(&self) -> Result<InfoResponse, AgentError> {
        self.call("Info", self.client.info()).await
    }
}

/// Run `renew` every `every`, forever (the task is aborted when its owner stops). A
/// failed renewal is retried after at most a minute and whatever was renewed last keeps
/// serving meanwhile; sessions already established are never touched. `what` names the
/// certificate in the log.
pub async fn renew_forever<F, Fut, E>(
    what: &'static str,
    every: Duration,
    mut renew: F,
    on_result: impl Fn(bool) + Send + 'static,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        match renew().await {
            Ok(()) => {
                tracing::info!(certificate = what, "renewed");
                on_result(true);
                wait = every;
            }
            Err(e) => {
                tracing::warn!(certificate = what, error = %e, "renewal failed; retrying in at most 60 s");
                on_result(false);
                wait = every.min(Duration::from_secs(60));
            }
        }
    }
}

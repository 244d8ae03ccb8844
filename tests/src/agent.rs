//! The development guest agent, in-process, on a unix socket and a TCP port.

use std::path::{Path, PathBuf};

use teesql_devattest::agent::{AgentConfig, AgentListener, DevAgent};

/// A running development agent. Stops when dropped.
#[derive(Debug)]
pub struct TestAgent {
    pub agent: DevAgent,
    /// Unix socket of the guest agent API (`DSTACK_SIMULATOR_ENDPOINT`).
    pub socket: PathBuf,
    /// `http://127.0.0.1:PORT`: guest agent API and PCCS.
    pub url: String,
    /// Holds `dev-root.der`, `dev-collateral.json`, `dev-app-ca.pem`.
    pub out_dir: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl TestAgent {
    /// Start an agent for `seed`, with its files and socket under `dir`.
    pub async fn start(seed: [u8; 32], dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(AgentConfig::new(seed), dir).await
    }

    pub async fn start_with(config: AgentConfig, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with_port(config, dir, None).await
    }

    /// Like [`Self::start_with`], with the TCP port fixed (`None` = chosen by the OS).
    pub async fn start_with_port(
        config: AgentConfig,
        dir: &Path,
        port: Option<u16>,
    ) -> anyhow::Result<Self> {
        let agent = DevAgent::new(config)?;
        let socket = dir.join("dstack.sock");
        let out_dir = dir.join("dev-pki");
        agent.write_out_dir(&out_dir).await?;
        let (url, tx) = agent
            .spawn_on_loopback(port.unwrap_or(0), vec![AgentListener::Unix(socket.clone())])
            .await?;
        // The unix socket exists once bound; wait for it.
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(Self {
            agent,
            socket,
            url,
            out_dir,
            _stop: tx,
        })
    }

    pub fn root_der_path(&self) -> PathBuf {
        self.out_dir.join("dev-root.der")
    }

    pub fn app_ca_path(&self) -> PathBuf {
        self.out_dir.join("dev-app-ca.pem")
    }
}

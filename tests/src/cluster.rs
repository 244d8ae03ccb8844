//! A whole local TeeSQL cluster: a temporary Postgres (roles provisioned), the
//! development guest agent, the verifier (gRPC, dev trust root, a policy profile) and
//! the sidecar, each on its own loopback port. `teesql-dev` and the end-to-end tests
//! both start it from here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use teesql_sidecar::Sidecar;
use teesql_sidecar::config::{Overrides, SidecarConfig, SidecarFile};
use teesql_sidecar::forward::{ForwardSettings, Forwarder};
use teesql_verifier::service::DecisionService;
use teesql_verifier::service::config::{ServeConfig, ServeSettings};
use teesql_verifier::service::server::{GrpcListener, Listeners, Verifier};
use tokio::io::AsyncWriteExt;

use crate::agent::TestAgent;
use crate::postgres::{PgOptions, TempPostgres};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Policy profile under `policies/`: `dev` (clients without attestation allowed) or
    /// `teesql` (production).
    pub profile: String,
    /// Sidecar settings as a TOML fragment (merged over the defaults below).
    pub sidecar_toml: String,
    pub pg: PgOptions,
    /// Fixed ports (teesql-dev); `None` = chosen by the OS.
    pub sidecar_port: Option<u16>,
    pub admin_port: Option<u16>,
    pub verifier_port: Option<u16>,
    /// The verifier's `/metrics` (and `/healthz`) listener on 127.0.0.1; `None` = any
    /// free port.
    pub verifier_metrics_port: Option<u16>,
    pub agent_port: Option<u16>,
    /// Seed of the development PKI and agent.
    pub seed: [u8; 32],
    /// The database CVM's agent, when not the default one of `seed` (another dstack
    /// version, key provider or app id).
    pub agent: Option<teesql_devattest::AgentConfig>,
    /// Where the agent socket, dev PKI files and logs go; `None` = a temporary directory.
    pub state_dir: Option<PathBuf>,
    /// Databases to provision the roles in (besides `postgres`).
    pub databases: Vec<String>,
    /// Decision log target for the verifier ("off", "stdout" or a file).
    pub decision_log: String,
    /// The sidecar reaches Postgres through its unix socket instead of 127.0.0.1.
    pub backend_unix_socket: bool,
    /// Also start the public HTTP listener (`/attestation` only).
    pub public_http: bool,
    /// The verifier's quote backend(s), as `--backend` takes them (`dcap`, `ita`,
    /// `dcap,ita`); with `ita` a mock Intel Trust Authority is started.
    pub backend: String,
    /// How the sidecar and forwarders reach the verifier.
    pub verifier_transport: VerifierTransport,
    /// Verifier settings over the cluster's own (e.g. `snp_dev_ark`, `kds_url`).
    pub verifier_settings: ServeSettings,
}

/// How the verifier serves gRPC in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifierTransport {
    /// Plaintext on 127.0.0.1.
    #[default]
    Loopback,
    /// TLS on 127.0.0.1 with a certificate from a CA the cluster makes
    /// (`Cluster::verifier_ca`).
    Tls,
    /// A unix socket in the state directory.
    Unix,
    /// TLS on 127.0.0.1 with the verifier's own RA-TLS certificate from the development
    /// agent; the sidecar and `forward` trust it by appraising that certificate under
    /// the purpose `verifier` of a profile pinning the agent's compose hash
    /// (`Cluster::verifier_identity`).
    RaTls,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            profile: "dev".into(),
            sidecar_toml: String::new(),
            pg: PgOptions::default(),
            sidecar_port: None,
            admin_port: None,
            verifier_port: None,
            verifier_metrics_port: None,
            agent_port: None,
            seed: [0x5e; 32],
            agent: None,
            state_dir: None,
            databases: Vec::new(),
            decision_log: "off".into(),
            backend_unix_socket: false,
            public_http: false,
            backend: "dcap".into(),
            verifier_transport: VerifierTransport::Loopback,
            verifier_settings: ServeSettings::default(),
        }
    }
}

/// A logged-in session spoken in raw protocol ([`Cluster::raw_session`]).
#[derive(Debug)]
pub struct RawSession {
    pub tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl RawSession {
    /// Send raw protocol bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await?;
        Ok(())
    }

    /// A simple query's text (a 'Q' message).
    pub fn query(sql: &str) -> Vec<u8> {
        let mut out = Vec::new();
        teesql_sidecar::pgwire::frontend::query(&mut out, sql);
        out
    }

    /// Messages up to and including the next ReadyForQuery: (tag, body) each.
    pub async fn until_ready(&mut self) -> Result<Vec<(u8, Vec<u8>)>> {
        let mut got = Vec::new();
        loop {
            let (tag, body) = teesql_sidecar::pgwire::read_message(&mut self.tls, 1 << 20).await?;
            let done = tag == b'Z';
            got.push((tag, body));
            if done {
                return Ok(got);
            }
        }
    }

    /// The text of the first column of every DataRow among `messages`.
    pub fn rows(messages: &[(u8, Vec<u8>)]) -> Vec<String> {
        messages
            .iter()
            .filter(|(t, _)| *t == b'D')
            .filter_map(|(_, b)| {
                let len = i32::from_be_bytes(b.get(2..6)?.try_into().ok()?);
                let len = usize::try_from(len).ok()?;
                Some(String::from_utf8_lossy(b.get(6..6 + len)?).into_owned())
            })
            .collect()
    }

    /// Terminate and close.
    pub async fn terminate(mut self) -> Result<()> {
        self.send(b"X\0\0\0\x04").await?;
        self.tls.shutdown().await?;
        Ok(())
    }
}

/// A running cluster. Dropping it stops everything and removes temporary state.
#[derive(Debug)]
pub struct Cluster {
    pub pg: TempPostgres,
    pub agent: TestAgent,
    /// The mock Intel Trust Authority, when the verifier uses the `ita` backend.
    pub ita: Option<crate::ita::MockIta>,
    /// The verifier's TCP address (unused with a unix socket).
    pub verifier_addr: SocketAddr,
    /// What clients put in their verifier URL.
    pub verifier_url: String,
    /// The verifier's `/metrics`, `/healthz` listener (always started, on 127.0.0.1).
    pub verifier_metrics_addr: Option<SocketAddr>,
    /// With TLS: the CA that issued the verifier's certificate (PEM).
    pub verifier_ca: Option<PathBuf>,
    /// With RA-TLS: how clients trust the verifier by its quote.
    pub verifier_identity: Option<teesql_sidecar::verifier::TrustSettings>,
    pub verifier: Arc<DecisionService>,
    pub sidecar_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The public HTTP listener, when started.
    pub public_addr: Option<SocketAddr>,
    pub sidecar: Arc<teesql_sidecar::state::Shared>,
    /// 64 hex digits.
    pub read_secret: String,
    pub readwrite_secret: String,
    pub state_dir: PathBuf,
    sidecar_config: SidecarConfig,
    verifier_stop: Option<tokio::sync::oneshot::Sender<()>>,
    sidecar_stop: Option<tokio::sync::oneshot::Sender<()>>,
    sidecar_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _tmp: Option<tempfile::TempDir>,
}

/// A policy profile in `dir` that extends the development profile and pins the verifier
/// (purpose `verifier`) to `compose_hashes`; returns `dir`.
pub fn write_identity_profile(dir: &Path, compose_hashes: &[String]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let base = repo_root().join("policies").join("dev").canonicalize()?;
    std::fs::write(
        dir.join("profile.toml"),
        format!("extends = [{:?}]\n", base.display().to_string()),
    )?;
    let data = serde_json::json!({"teesql": {"verifier_pins": {"compose_hash": compose_hashes, "app_id": []}}});
    std::fs::write(dir.join("data.json"), data.to_string())?;
    Ok(dir.to_path_buf())
}

/// Trust a verifier on `agent` by its quote, judged by the profile in `dir`.
pub fn identity_trust(agent: &TestAgent, dir: PathBuf) -> teesql_sidecar::verifier::TrustSettings {
    teesql_sidecar::verifier::TrustSettings {
        identity_policy_dir: Some(dir),
        identity_dev_trust_root: Some(agent.root_der_path()),
        identity_pccs_url: Some(agent.url.clone()),
        ..Default::default()
    }
}

/// The sidecar's `[verifier]` keys for `trust`'s identity settings.
fn identity_toml(trust: &teesql_sidecar::verifier::TrustSettings) -> String {
    let mut out = String::new();
    if let Some(d) = &trust.identity_policy_dir {
        out.push_str(&format!(
            "identity_policy_dir = {:?}\n",
            d.display().to_string()
        ));
    }
    if let Some(r) = &trust.identity_dev_trust_root {
        out.push_str(&format!(
            "identity_dev_trust_root = {:?}\n",
            r.display().to_string()
        ));
    }
    if let Some(u) = &trust.identity_pccs_url {
        out.push_str(&format!("identity_pccs_url = {u:?}\n"));
    }
    out
}

/// The repository root (policies/ lives there).
/// A policy profile in `dir` (created) extending the development one, with `data` merged
/// over its data: how a test pins what its case needs.
pub fn dev_profile(dir: &Path, data: &serde_json::Value) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("profile.toml"),
        format!(
            "extends = [{:?}]\n",
            repo_root().join("policies/dev").display().to_string()
        ),
    )?;
    std::fs::write(dir.join("data.json"), data.to_string())?;
    Ok(dir.to_path_buf())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn secret(seed: &[u8; 32], label: &str) -> String {
    use sha2::Digest;
    hex::encode(
        sha2::Sha256::new()
            .chain_update(seed)
            .chain_update(label.as_bytes())
            .finalize(),
    )
}

async fn bind(port: Option<u16>, what: &str) -> Result<tokio::net::TcpListener> {
    let addr = format!("127.0.0.1:{}", port.unwrap_or(0));
    tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))
}

impl Cluster {
    /// Start everything and wait until it answers.
    pub async fn start(opts: ClusterOptions) -> Result<Self> {
        crate::init_logging();
        let (tmp, state_dir) = match &opts.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("teesql-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };

        // Postgres, in the background thread pool (initdb takes a moment).
        let pg_opts = opts.pg.clone();
        let pg = tokio::task::spawn_blocking(move || TempPostgres::start(pg_opts))
            .await?
            .map_err(|e| anyhow!("{e}"))?;

        let read_secret = secret(&opts.seed, "read");
        let readwrite_secret = secret(&opts.seed, "readwrite");

        // Guest agent.
        let agent = TestAgent::start_with_port(
            opts.agent
                .clone()
                .unwrap_or_else(|| teesql_devattest::AgentConfig::new(opts.seed)),
            &state_dir,
            opts.agent_port,
        )
        .await?;

        // Verifier, and the mock Intel Trust Authority if it uses one.
        let ita = if opts.backend.split(',').any(|b| b.trim() == "ita") {
            Some(crate::ita::MockIta::start(&agent).await?)
        } else {
            None
        };
        let tls_files = match opts.verifier_transport {
            VerifierTransport::Tls => Some(teesql_devattest::server_pki::ServerPki::write(
                &state_dir,
                "verifier",
                "teesql-dev verifier CA",
            )?),
            _ => None,
        };
        let ra_tls = opts.verifier_transport == VerifierTransport::RaTls;
        let verifier_identity = if ra_tls {
            let dir = write_identity_profile(
                &state_dir.join("verifier-identity"),
                &[agent.agent.compose_hash_hex()],
            )?;
            Some(identity_trust(&agent, dir))
        } else {
            None
        };
        let settings = ServeSettings {
            listen: Some(format!("127.0.0.1:{}", opts.verifier_port.unwrap_or(0))),
            ra_tls: ra_tls.then_some(true),
            dstack_endpoint: ra_tls.then(|| agent.socket.display().to_string()),
            tls_cert: tls_files.as_ref().map(|f| f.cert.clone()),
            tls_key: tls_files.as_ref().map(|f| f.key.clone()),
            policy_dirs: Some(vec![repo_root().join("policies").join(&opts.profile)]),
            dev_trust_root: Some(agent.root_der_path()),
            pccs_url: Some(agent.url.clone()),
            decision_log: Some(opts.decision_log.clone()),
            backend: Some(opts.backend.clone()),
            ita_url: ita.as_ref().map(|m| m.url.clone()),
            ita_jwks_url: ita.as_ref().map(|m| m.jwks_url.clone()),
            ..ServeSettings::default()
        };
        let settings = opts.verifier_settings.clone().over(settings);
        let ita_env: BTreeMap<String, String> = ita
            .iter()
            .map(|m| {
                (
                    "INTEL_TRUST_AUTHORITY_API_KEY".to_string(),
                    m.api_key.clone(),
                )
            })
            .collect();
        let vconfig = ServeConfig::load(settings, &ita_env, ServeSettings::default())
            .map_err(|e| anyhow!(e.join("; ")))?;
        let running = Verifier::start(&vconfig)
            .map_err(|e| anyhow!(e.join("; ")))?
            .attest(&vconfig)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let verifier = running.service().clone();
        let (grpc, verifier_addr) = match opts.verifier_transport {
            VerifierTransport::Unix => (
                GrpcListener::bind_unix(&state_dir.join("verifier.sock"))
                    .map_err(|e| anyhow!("{e}"))?,
                SocketAddr::from(([127, 0, 0, 1], 0)),
            ),
            _ => {
                let l = bind(opts.verifier_port, "verifier").await?;
                let addr = l.local_addr()?;
                (l.into(), addr)
            }
        };
        let verifier_url = grpc.url(tls_files.is_some() || ra_tls);
        let verifier_ca = tls_files.map(|f| f.ca);
        let (vtx, vrx) = tokio::sync::oneshot::channel::<()>();
        let metrics = bind(opts.verifier_metrics_port, "verifier metrics").await?;
        let verifier_metrics_addr = Some(metrics.local_addr()?);
        let listeners = Listeners {
            grpc,
            metrics: Some(metrics),
        };
        tokio::spawn(running.run(listeners, async {
            let _ = vrx.await;
        }));

        // Sidecar.
        // With SO_REUSEPORT only for a configuration with serving threads (each binds its
        // own listener beside this one); otherwise a port in use stays an error.
        let threads = toml::from_str::<SidecarFile>(&merge_tables(&opts.sidecar_toml))
            .context("the test's sidecar configuration")?
            .listen
            .postgres_threads;
        let reuse_port = threads.is_some_and(|n| n > 0);
        let listener = teesql_sidecar::frontend::server::bind(
            std::net::SocketAddr::from(([127, 0, 0, 1], opts.sidecar_port.unwrap_or(0))),
            reuse_port,
        )
        .with_context(|| format!("sidecar: cannot listen on port {:?}", opts.sidecar_port))?;
        let sidecar_addr = listener.local_addr()?;
        let admin = Some(bind(opts.admin_port, "sidecar admin").await?);
        let admin_addr = admin.as_ref().map(|a| a.local_addr()).transpose()?;
        let public = if opts.public_http {
            Some(bind(None, "sidecar public HTTP").await?)
        } else {
            None
        };
        let public_addr = public.as_ref().map(|a| a.local_addr()).transpose()?;
        let mut toml = format!(
            "[listen]\npostgres = \"{sidecar_addr}\"\nadmin = \"{}\"\n\
             [identity]\nendpoint = \"{}\"\nalt_names = [\"localhost\", \"127.0.0.1\"]\n\
             [verifier]\nurl = \"{verifier_url}\"\n{}\
             [backend]\nhost = \"{}\"\nport = {}\n",
            admin_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "off".into()),
            agent.socket.display(),
            match (&verifier_ca, &verifier_identity) {
                (Some(ca), _) => format!("ca_file = {:?}\n", ca.display().to_string()),
                (None, Some(id)) => identity_toml(id),
                (None, None) => String::new(),
            },
            if opts.backend_unix_socket {
                pg.socket_dir.display().to_string()
            } else {
                "127.0.0.1".to_string()
            },
            pg.port,
        );
        toml.push_str(&opts.sidecar_toml);
        let file: SidecarFile = toml::from_str(&merge_tables(&toml)).context("sidecar config")?;
        let mut env: BTreeMap<String, String> = [
            ("TEESQL_READ_SECRET".to_string(), read_secret.clone()),
            (
                "TEESQL_READWRITE_SECRET".to_string(),
                readwrite_secret.clone(),
            ),
        ]
        .into_iter()
        .collect();
        if let Some(pw) = &opts.pg.superuser_password {
            env.insert("TEESQL_BACKEND_ADMIN_PASSWORD".into(), pw.clone());
        }
        let sidecar_config = SidecarConfig::resolve(file, &env, Overrides::default())
            .map_err(|e| anyhow!(e.join("; ")))?;
        let mut databases = vec!["postgres".to_string()];
        for db in &opts.databases {
            pg.psql("postgres", "postgres", &format!("CREATE DATABASE \"{db}\""))
                .map_err(|e| anyhow!("{e}"))?;
            databases.push(db.clone());
        }
        teesql_sidecar::postgres::provision::provision(&sidecar_config, &databases)
            .await
            .map_err(|e| anyhow!("provision: {e}"))?;
        let sidecar = Sidecar::start(sidecar_config.clone())
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let shared = sidecar.shared.clone();
        let (stx, srx) = tokio::sync::oneshot::channel::<()>();
        let listeners = teesql_sidecar::Listeners {
            postgres: listener,
            admin,
            public,
        };
        let task = tokio::spawn(sidecar.run(listeners, async {
            let _ = srx.await;
        }));

        Ok(Self {
            pg,
            agent,
            ita,
            verifier_addr,
            verifier_url,
            verifier_metrics_addr,
            verifier_ca,
            verifier_identity,
            verifier,
            sidecar_addr,
            admin_addr,
            public_addr,
            sidecar: shared,
            read_secret,
            readwrite_secret,
            state_dir,
            sidecar_config,
            verifier_stop: Some(vtx),
            sidecar_stop: Some(stx),
            sidecar_task: Some(task),
            _tmp: tmp,
        })
    }

    /// A DSN to the sidecar.
    pub fn dsn(&self, user: &str, secret: &str, db: &str, sslmode: &str) -> String {
        format!(
            "postgresql://{user}:{secret}@127.0.0.1:{}/{db}?sslmode={sslmode}",
            self.sidecar_addr.port()
        )
    }

    /// A TLS client configuration trusting this cluster's app CA, without a client
    /// certificate.
    pub fn client_tls(&self) -> Result<rustls::ClientConfig> {
        crate::clients::tls_config(&self.agent.app_ca_path(), None)
    }

    /// A tokio-postgres client logged in to the sidecar as `user` with `secret`, over
    /// TLS (`sslmode=require`, no client certificate) to database `db`.
    pub async fn connect(
        &self,
        user: &str,
        secret: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client> {
        let dsn = self.dsn(user, secret, db, "require");
        Ok(crate::clients::connect(&dsn, self.client_tls()?).await?)
    }

    /// Direct TLS to the sidecar (no SSLRequest) as `localhost`, offering ALPN
    /// `postgresql` when `alpn`; nothing sent after the handshake.
    pub async fn tls_connect(
        &self,
        alpn: bool,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut cfg = self.client_tls()?;
        if alpn {
            cfg.alpn_protocols = vec![b"postgresql".to_vec()];
        }
        let tcp = tokio::net::TcpStream::connect(self.sidecar_addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await?)
    }

    /// A session spoken in raw protocol: direct TLS, a StartupMessage with `params`
    /// (`user` and `database` among them), SCRAM-SHA-256 with `password`, up to the first
    /// ReadyForQuery. For tests that send what no driver would (pipelines, half-finished
    /// extended-protocol exchanges, an early Terminate).
    pub async fn raw_session(&self, params: &[(&str, &str)], password: &str) -> Result<RawSession> {
        self.raw_session_with(self.client_tls()?, params, password)
            .await
    }

    /// [`Self::raw_session`] with `tls` (e.g. presenting an application's certificate).
    pub async fn raw_session_with(
        &self,
        tls: rustls::ClientConfig,
        params: &[(&str, &str)],
        password: &str,
    ) -> Result<RawSession> {
        use teesql_sidecar::pgwire;
        let tcp = tokio::net::TcpStream::connect(self.sidecar_addr).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await?;
        tls.write_all(&pgwire::startup_message(params)).await?;
        let cache = teesql_sidecar::auth::scram_client::KeyCache::new();
        let mut scram =
            teesql_sidecar::auth::scram_client::ScramClient::new(password.as_bytes(), &cache)
                .map_err(|e| anyhow!("{e}"))?;
        loop {
            let (tag, body) = pgwire::read_message(&mut tls, 64 * 1024).await?;
            match (
                tag,
                body.get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            ) {
                (b'R', Some(10)) => {
                    let mut out = Vec::new();
                    pgwire::frontend::sasl_initial_response(
                        &mut out,
                        "SCRAM-SHA-256",
                        &scram.client_first(),
                    );
                    tls.write_all(&out).await?;
                }
                (b'R', Some(11)) => {
                    let reply = scram.server_first(&body[4..]).map_err(|e| anyhow!("{e}"))?;
                    let mut out = Vec::new();
                    pgwire::frontend::sasl_response(&mut out, &reply);
                    tls.write_all(&out).await?;
                }
                (b'R', Some(12)) => scram.server_final(&body[4..]).map_err(|e| anyhow!("{e}"))?,
                (b'R', Some(0)) | (b'S' | b'K' | b'N', _) => {}
                (b'Z', _) => return Ok(RawSession { tls }),
                (b'E', _) => anyhow::bail!("refused: {}", String::from_utf8_lossy(&body)),
                (other, _) => anyhow::bail!("unexpected {:?} during login", other as char),
            }
        }
    }

    /// Stop the verifier (its port stops answering).
    pub fn stop_verifier(&mut self) {
        if let Some(tx) = self.verifier_stop.take() {
            let _ = tx.send(());
        }
    }

    /// Stop the sidecar: stop accepting and drain sessions (up to its grace period).
    pub async fn stop_sidecar(&mut self) {
        if let Some(tx) = self.sidecar_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.sidecar_task.take() {
            let _ = t.await;
        }
    }

    /// The sidecar's count of connections that ended with `outcome`, once it reaches
    /// `at_least` or after 10 s. A session's outcome is counted as its task ends, just
    /// after its socket closes, so a client that saw the close may not see the count yet.
    pub async fn outcome_count(
        &self,
        outcome: teesql_sidecar::frontend::session::Outcome,
        at_least: u64,
    ) -> u64 {
        for _ in 0..100 {
            let n = self.sidecar.metrics.connections(outcome);
            if n >= at_least {
                return n;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.sidecar.metrics.connections(outcome)
    }

    pub fn sidecar_config(&self) -> &SidecarConfig {
        &self.sidecar_config
    }

    /// `forward` settings that reach this cluster's sidecar (SNI `localhost`), judged by
    /// its verifier, with the server pinned by its compose hash.
    pub fn forward_settings(&self) -> ForwardSettings {
        ForwardSettings {
            to: Some(self.sidecar_addr.to_string()),
            server_name: Some("localhost".into()),
            verifier: teesql_sidecar::verifier::TrustSettings {
                url: Some(self.verifier_url.clone()),
                ca_file: self.verifier_ca.clone(),
                ..self.verifier_identity.clone().unwrap_or_default()
            },
            expected_compose_hashes: vec![self.agent.agent.compose_hash_hex()],
            ..ForwardSettings::default()
        }
    }

    /// Start a `forward` with `settings` (no environment under them) on their `listen`
    /// address, else a free loopback port; it runs until the process ends. Returns where
    /// applications connect.
    pub async fn forward(&self, mut settings: ForwardSettings) -> Result<SocketAddr> {
        settings.listen.get_or_insert_with(|| "127.0.0.1:0".into());
        let config = settings
            .resolve(&teesql_proto::settings::NoEnv)
            .map_err(|e| anyhow!(e.join("; ")))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("forwarder: cannot listen on {}", config.listen))?;
        let forwarder = Forwarder::start(config, Some(&self.agent.socket.display().to_string()))
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let addr = listener.local_addr()?;
        tokio::spawn(forwarder.run(listener, std::future::pending()));
        Ok(addr)
    }

    /// A fresh RA-TLS client certificate from the agent: (chain PEM path, key PEM path).
    pub async fn client_certificate(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let issued = self
            .agent
            .agent
            .issue_tls_key(&teesql_devattest::RaTlsRequest {
                subject: "teesql-client".into(),
                alt_names: vec!["teesql-client".into()],
                usage_ra_tls: true,
                usage_server_auth: false,
                usage_client_auth: true,
                ..Default::default()
            })
            .await?;
        let cert = dir.join("client-cert.pem");
        let key = dir.join("client-key.pem");
        std::fs::write(&cert, issued.chain_pem.concat())?;
        std::fs::write(&key, &issued.key_pem)?;
        set_mode_600(&key)?;
        Ok((cert, key))
    }
}

fn set_mode_600(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Later `[table]` sections of the same name override earlier keys: merge them so the
/// TOML parser does not reject a repeated table.
fn merge_tables(text: &str) -> String {
    let mut tables: Vec<(String, Vec<String>)> = vec![(String::new(), Vec::new())];
    for line in text.lines() {
        let t = line.trim();
        // Each `[[array]]` entry is its own table: never merged, keys never deduplicated.
        if t.starts_with("[[") {
            tables.push((t.to_string(), Vec::new()));
            continue;
        }
        if t.starts_with('[') {
            let name = t.to_string();
            if !tables.iter().any(|(n, _)| *n == name) {
                tables.push((name.clone(), Vec::new()));
            }
            let idx = tables.iter().position(|(n, _)| *n == name).unwrap_or(0);
            let table = tables.remove(idx);
            tables.push(table);
            continue;
        }
        if let Some((key, _)) = t.split_once('=')
            && let Some(last) = tables.last_mut()
        {
            let key = key.trim().to_string();
            last.1
                .retain(|l| l.split_once('=').map(|(k, _)| k.trim()) != Some(key.as_str()));
        }
        if let Some(last) = tables.last_mut() {
            last.1.push(line.to_string());
        }
    }
    let mut out = String::new();
    for (name, lines) in tables {
        if !name.is_empty() {
            out.push_str(&name);
            out.push('\n');
        }
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_verifier();
        if let Some(tx) = self.sidecar_stop.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_tables_merge_and_later_keys_win() {
        let merged = merge_tables("[a]\nx = 1\ny = 2\n[b]\nz = 3\n[a]\nx = 9\n");
        let v: toml::Value = toml::from_str(&merged).unwrap();
        assert_eq!(v["a"]["x"].as_integer(), Some(9));
        assert_eq!(v["a"]["y"].as_integer(), Some(2));
        assert_eq!(v["b"]["z"].as_integer(), Some(3));
    }
}

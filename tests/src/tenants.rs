//! Two tenants' applications in front of one cluster, for the tenant tests and the
//! bench: development agents of the cluster's platform with their own app-compose.json
//! (so their own compose hashes), a policy profile over `policies/dev` mapping those
//! compose hashes to tenants, tenant roles in the sidecar, and a table `notes` with
//! row-level security keyed on `teesql.tenant()`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::{Value, json};
use teesql_devattest::{AgentConfig, DevAgent, RaTlsRequest};

use crate::cluster::{Cluster, ClusterOptions, dev_profile};

pub const SEED: [u8; 32] = [0x71; 32];

/// An application: its agent (its own compose file) and a client certificate from it.
#[derive(Debug)]
pub struct App {
    pub agent: DevAgent,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An application named `name` on the cluster's platform, with a client certificate in
/// `dir`.
pub async fn app(name: &str, dir: &Path) -> Result<App> {
    app_with(name, dir, |_| {}).await
}

/// Like [`app`], with its agent's configuration changed by `tweak` (its dstack version,
/// key provider or app id).
pub async fn app_with(name: &str, dir: &Path, tweak: impl FnOnce(&mut AgentConfig)) -> Result<App> {
    let compose = format!(
        r#"{{"manifest_version":2,"name":"{name}","runner":"docker-compose","docker_compose_file":"services:\n  app:\n    image: {name}\n"}}"#
    );
    let mut config = AgentConfig {
        app_compose: compose.into_bytes(),
        app_name: name.into(),
        ..AgentConfig::new(SEED)
    };
    tweak(&mut config);
    let agent = DevAgent::new(config)?;
    let issued = agent
        .issue_tls_key(&RaTlsRequest {
            subject: name.into(),
            alt_names: vec![name.into()],
            usage_ra_tls: true,
            usage_server_auth: false,
            usage_client_auth: true,
            ..Default::default()
        })
        .await?;
    let cert = dir.join(format!("{name}-cert.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, issued.chain_pem.concat())?;
    std::fs::write(&key, &issued.key_pem)?;
    // libpq refuses a key others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    Ok(App { agent, cert, key })
}

fn secret_file(dir: &Path, name: &str, byte: u8) -> Result<(PathBuf, String)> {
    let hex = hex::encode([byte; 32]);
    let path = dir.join(format!("{name}.secret"));
    std::fs::write(&path, &hex)?;
    Ok((path, hex))
}

/// The cluster and its applications: `acme-web` and `acme-batch` (tenant acme, role
/// `tenant_acme`), `globex` (tenant globex), `stranger` (no tenant).
#[derive(Debug)]
pub struct Setup {
    pub cluster: Cluster,
    pub acme: App,
    /// A second application of tenant acme (its own compose hash).
    pub acme_batch: App,
    pub globex: App,
    pub stranger: App,
    pub acme_secret: String,
    pub globex_secret: String,
    pub log: PathBuf,
    /// The tenants' data file (the policy profile's data.json).
    pub data_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// Start the cluster: Postgres connections kept for reuse when `pooling`; `tenant_acme`
/// logs in on its grant alone when `acme_attestation_only`, else with its own secret.
pub async fn setup(pooling: bool, acme_attestation_only: bool) -> Result<Setup> {
    setup_with(SetupOptions {
        pooling,
        acme_attestation_only,
        ..SetupOptions::default()
    })
    .await
}

/// What [`setup_with`] varies.
#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Keep Postgres connections for reuse.
    pub pooling: bool,
    /// `tenant_acme` logs in on its grant alone.
    pub acme_attestation_only: bool,
    /// A TCB recovery the platform's PCCS (the cluster agent's) rehearses.
    pub tcb_recovery: Option<teesql_devattest::pki::TcbRecovery>,
    /// More policy data, merged into the profile's `data.teesql` (e.g. `tcb_grace_days`).
    pub data: serde_json::Map<String, Value>,
}

/// [`setup`] with every option.
pub async fn setup_with(o: SetupOptions) -> Result<Setup> {
    let (pooling, acme_attestation_only) = (o.pooling, o.acme_attestation_only);
    let dir = tempfile::tempdir()?;
    let acme = app("acme-web", dir.path()).await?;
    let acme_batch = app("acme-batch", dir.path()).await?;
    let globex = app("globex", dir.path()).await?;
    let stranger = app("stranger", dir.path()).await?;

    // A profile over the development one, mapping compose hashes to tenants.
    let mut data = json!({"teesql": {"tenants": {
        "acme": {"role": "tenant_acme", "privileges": "readwrite",
                 "compose_hashes": [acme.agent.compose_hash_hex(), acme_batch.agent.compose_hash_hex()]},
        "globex": {"role": "tenant_globex", "privileges": "readwrite",
                   "compose_hashes": [globex.agent.compose_hash_hex()]},
    }}});
    for (k, v) in o.data {
        data["teesql"][k] = v;
    }
    let profile = dev_profile(&dir.path().join("profile"), &data)?;
    let data_file = profile.join("data.json");

    let (acme_file, acme_secret) = secret_file(dir.path(), "acme", 0xa1)?;
    let (globex_file, globex_secret) = secret_file(dir.path(), "globex", 0x6b)?;
    let log = dir.path().join("decisions.jsonl");
    let cluster = Cluster::start(ClusterOptions {
        seed: SEED,
        agent: o.tcb_recovery.map(|r| AgentConfig {
            tcb_recovery: Some(r),
            ..AgentConfig::new(SEED)
        }),
        profile: profile.display().to_string(),
        decision_log: log.display().to_string(),
        sidecar_toml: format!(
            "[backend]\npool_max_idle_per_key = {}\n\
             [[auth.roles]]\nname = \"tenant_acme\"\nprivileges = \"readwrite\"\ngranted = true\n{}\n\
             [[auth.roles]]\nname = \"tenant_globex\"\nprivileges = \"readwrite\"\ngranted = true\nsecret_file = {:?}\n",
            if pooling { 4 } else { 0 },
            if acme_attestation_only {
                "attestation_only = true".to_string()
            } else {
                format!("secret_file = {:?}", acme_file.display().to_string())
            },
            globex_file.display().to_string(),
        ),
        ..ClusterOptions::default()
    })
    .await?;

    // The table, as the database owner writes it: rows keyed on the attested tenant.
    cluster
        .pg
        .psql(
            "postgres",
            "postgres",
            "CREATE TABLE notes (tenant text NOT NULL DEFAULT teesql.tenant(), body text NOT NULL);
             ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
             CREATE POLICY own_rows ON notes
               USING (tenant = (SELECT teesql.tenant()))
               WITH CHECK (tenant = (SELECT teesql.tenant()));
             GRANT SELECT, INSERT ON notes TO tenant_acme, tenant_globex;",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Setup {
        cluster,
        acme,
        acme_batch,
        globex,
        stranger,
        acme_secret,
        globex_secret,
        log,
        data_file,
        _dir: dir,
    })
}

impl Setup {
    /// `app`'s TLS client configuration: the cluster's app CA, its own certificate.
    pub fn tls(&self, app: &App) -> Result<rustls::ClientConfig> {
        crate::clients::tls_config(
            &self.cluster.agent.app_ca_path(),
            Some((&app.cert, &app.key)),
        )
    }

    /// tokio-postgres through the sidecar as `app`, logging in as `user` with `secret`.
    pub async fn connect(
        &self,
        app: &App,
        user: &str,
        secret: &str,
    ) -> Result<std::result::Result<tokio_postgres::Client, tokio_postgres::Error>> {
        let tls = self.tls(app)?;
        Ok(
            crate::clients::connect(&self.cluster.dsn(user, secret, "postgres", "require"), tls)
                .await,
        )
    }

    /// Decision log lines for purpose sidecar, as JSON, once there are `at_least`.
    pub async fn decisions(&self, at_least: usize) -> Result<Vec<Value>> {
        for _ in 0..100 {
            let lines: Vec<Value> = std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|v: &Value| v["purpose"] == "sidecar")
                .collect();
            if lines.len() >= at_least {
                return Ok(lines);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        anyhow::bail!("fewer than {at_least} sidecar decisions logged")
    }
}

//! The sidecar's own connection to Postgres as the admin (superuser) role: the state
//! `/attestation` binds, passthrough roles' SCRAM verifiers, identity rows, provisioning.

use sha2::{Digest, Sha256};
use teesql_proto::report::PostgresState;
use teesql_proto::runtime::error_chain;

use crate::config::{BackendAddr, BackendConfig};

/// Why the admin connection, or what is read over it, failed. The messages carry the
/// Postgres error with its causes.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Logging in as the admin role failed.
    #[error(
        "connecting to Postgres database {database} as {user}: {}",
        error_chain(source)
    )]
    Connect {
        /// The database.
        database: String,
        /// The admin role.
        user: String,
        /// tokio-postgres' error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The state query failed.
    #[error("reading the Postgres state: {}", error_chain(.0))]
    State(#[source] tokio_postgres::Error),
}

/// Read the WAL position, control data and version as the admin user.
pub async fn postgres_state(cfg: &BackendConfig) -> Result<PostgresState, AdminError> {
    let client = admin_client(cfg).await?;
    let row = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text, \
                    current_setting('server_version'), \
                    (SELECT row_to_json(s)::text FROM pg_control_system() s), \
                    (SELECT row_to_json(c)::text FROM pg_control_checkpoint() c)",
            &[],
        )
        .await
        .map_err(AdminError::State)?;
    let lsn: Option<String> = row.get(0);
    let version: String = row.get(1);
    let system: String = row.get(2);
    let checkpoint: String = row.get(3);
    Ok(PostgresState {
        wal_lsn: lsn.unwrap_or_else(|| "0/0".into()),
        controldata_hash: hex::encode(Sha256::digest(format!("{system}\n{checkpoint}").as_bytes())),
        pg_version: version,
    })
}

/// A tokio-postgres connection as the admin (superuser) role.
pub async fn admin_client(cfg: &BackendConfig) -> Result<tokio_postgres::Client, AdminError> {
    admin_client_to(cfg, "postgres").await
}

/// A tokio-postgres connection as the admin (superuser) role to `database`.
pub async fn admin_client_to(
    cfg: &BackendConfig,
    database: &str,
) -> Result<tokio_postgres::Client, AdminError> {
    let mut pg = tokio_postgres::Config::new();
    pg.user(&cfg.admin_user).dbname(database);
    // A superuser session resolves names in pg_catalog only: a role with CREATE on a
    // schema on the default search_path (teesql_readwrite has it on public) could
    // otherwise plant functions it runs (CVE-2018-1058).
    pg.options("-c search_path=pg_catalog");
    match &cfg.addr {
        BackendAddr::Tcp(h, p) => pg.host(h).port(*p),
        BackendAddr::Unix(d, p) => pg.host_path(d).port(*p),
    };
    if let Some(pw) = &cfg.admin_password {
        pg.password(pw.expose());
    }
    pg.connect_timeout(cfg.connect_timeout);
    let (client, conn) =
        pg.connect(tokio_postgres::NoTls)
            .await
            .map_err(|source| AdminError::Connect {
                database: database.to_string(),
                user: cfg.admin_user.clone(),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "admin connection ended");
        }
    });
    Ok(client)
}

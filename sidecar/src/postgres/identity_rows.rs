//! The attested identity of each session, recorded where SQL can read it and nobody else
//! can write it.
//!
//! `provision` creates, in each database, a schema `teesql` owned by the admin role:
//!
//! - `teesql.session_identity (pid, backend_start, identity jsonb)`: no rights for anyone
//!   but its owner. The sidecar writes one row per Postgres backend over its own admin
//!   connection, after the login and before the client sees ReadyForQuery, and again
//!   whenever it hands a kept backend to another client.
//! - `teesql.identity()`: `SECURITY DEFINER`, executable by everyone; returns the row of
//!   the calling backend (`pg_backend_pid()`), and only while its `backend_start` is the
//!   one recorded, so a recycled process id never shows an earlier session's identity.
//! - `teesql.tenant()`: `teesql.identity() -> 'attributes' ->> 'tenant'`, for
//!   row-level security (`USING (tenant = (SELECT teesql.tenant()))`).
//!
//! Nothing a session can do changes what the functions return: `SET`, `RESET` and `SET
//! ROLE` do not touch the backend's process id or the table, the session's role has no
//! right on the table, and startup parameters are not read. Cost: one `INSERT … ON
//! CONFLICT` round trip on an admin connection kept per database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use teesql_proto::runtime::error_chain;

use crate::config::BackendConfig;
use crate::postgres::admin::{AdminError, admin_client_to};

/// Why the `teesql` schema could not be provisioned in a database ([`provision`]).
#[derive(Debug, thiserror::Error)]
pub enum ProvisionSchemaError {
    /// A statement creating the schema, table or functions failed.
    #[error(
        "creating teesql.identity() in database {database}: {}",
        error_chain(source)
    )]
    Create {
        /// The database.
        database: String,
        /// tokio-postgres' error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The check of the schema's owners failed to run.
    #[error(
        "checking schema teesql in database {database}: {}",
        error_chain(source)
    )]
    Check {
        /// The database.
        database: String,
        /// tokio-postgres' error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The schema holds what another role owns or was granted.
    #[error(
        "in database {database}, schema teesql holds what another role owns or was granted ({foreign}): \
         drop or revoke it (or make the admin role its owner), then provision again"
    )]
    Foreign {
        /// The database.
        database: String,
        /// What is foreign, `, `-separated.
        foreign: String,
    },
}

/// Why a session's identity was not recorded ([`IdentityRecorder::record`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Postgres sent no process id (BackendKeyData): there is no backend to record for.
    #[error("Postgres sent no process id (BackendKeyData)")]
    NoProcessId,
    /// The identity does not serialize.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// No admin connection to the database.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// Postgres has no such backend of that role in that database.
    #[error("Postgres has no backend {pid} of role {role} in database {database}")]
    NoBackend {
        /// The backend's process id.
        pid: i32,
        /// The session's role.
        role: String,
        /// The database.
        database: String,
    },
    /// The database was not provisioned (no `teesql.session_identity`).
    #[error(
        "{} (database {database} has no teesql.session_identity: run `teesql-sidecar provision`)",
        error_chain(source)
    )]
    NotProvisioned {
        /// The database.
        database: String,
        /// tokio-postgres' error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The insert failed.
    #[error("{}", error_chain(.0))]
    Postgres(#[source] tokio_postgres::Error),
}

/// The SQL `provision` runs in each database (idempotent).
pub const PROVISION_SQL: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS teesql",
    "REVOKE ALL ON SCHEMA teesql FROM PUBLIC",
    "GRANT USAGE ON SCHEMA teesql TO PUBLIC",
    "CREATE TABLE IF NOT EXISTS teesql.session_identity (\
        pid integer PRIMARY KEY, \
        backend_start timestamptz NOT NULL, \
        identity jsonb NOT NULL)",
    "REVOKE ALL ON teesql.session_identity FROM PUBLIC",
    "CREATE OR REPLACE FUNCTION teesql.identity() RETURNS jsonb \
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ \
        SELECT s.identity FROM teesql.session_identity s \
        WHERE s.pid = pg_catalog.pg_backend_pid() \
          AND s.backend_start = (SELECT a.backend_start \
                                 FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a) \
        $$",
    "CREATE OR REPLACE FUNCTION teesql.tenant() RETURNS text \
        LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ \
        SELECT teesql.identity() -> 'attributes' ->> 'tenant' $$",
    "REVOKE ALL ON FUNCTION teesql.identity(), teesql.tenant() FROM PUBLIC",
    "GRANT EXECUTE ON FUNCTION teesql.identity(), teesql.tenant() TO PUBLIC",
];

/// The backend must still be the session's: its role and database, not a process that
/// took over the id of one that died meanwhile.
const RECORD_SQL: &str = "INSERT INTO teesql.session_identity (pid, backend_start, identity) \
     SELECT a.pid, a.backend_start, $2::text::jsonb \
     FROM pg_catalog.pg_stat_get_activity($1) a \
     WHERE a.pid = $1 AND a.usesysid = (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname = $3) \
       AND a.datid = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = $4) \
     ON CONFLICT (pid) DO UPDATE \
     SET backend_start = EXCLUDED.backend_start, identity = EXCLUDED.identity";

/// Create the schema, table and functions in the database `c` is connected to, then
/// check that every object in schema `teesql` belongs to the role running this (the
/// admin): one that someone else created first could be redefined by them.
pub async fn provision(c: &tokio_postgres::Client, db: &str) -> Result<(), ProvisionSchemaError> {
    for sql in PROVISION_SQL {
        c.batch_execute(sql)
            .await
            .map_err(|source| ProvisionSchemaError::Create {
                database: db.to_string(),
                source,
            })?;
    }
    let foreign: Option<String> = c
        .query_one(OWNERS_SQL, &[])
        .await
        .map_err(|source| ProvisionSchemaError::Check {
            database: db.to_string(),
            source,
        })?
        .get(0);
    match foreign {
        None => Ok(()),
        Some(foreign) => Err(ProvisionSchemaError::Foreign {
            database: db.to_string(),
            foreign,
        }),
    }
}

/// Objects in (or the) schema `teesql` not owned by `current_user`, and grants on them
/// beyond USAGE on the schema and EXECUTE on the functions to PUBLIC; or NULL.
const OWNERS_SQL: &str = "WITH me AS (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user), \
     ns AS (SELECT oid, nspowner, nspacl FROM pg_catalog.pg_namespace WHERE nspname = 'teesql') \
     SELECT pg_catalog.string_agg(what, ', ') FROM ( \
       SELECT 'schema teesql' AS what FROM ns WHERE nspowner <> (SELECT oid FROM me) \
       UNION ALL SELECT 'relation ' || relname FROM pg_catalog.pg_class \
         WHERE relnamespace = (SELECT oid FROM ns) AND relowner <> (SELECT oid FROM me) \
       UNION ALL SELECT 'function ' || proname FROM pg_catalog.pg_proc \
         WHERE pronamespace = (SELECT oid FROM ns) AND proowner <> (SELECT oid FROM me) \
       UNION ALL SELECT 'type ' || typname FROM pg_catalog.pg_type \
         WHERE typnamespace = (SELECT oid FROM ns) AND typowner <> (SELECT oid FROM me) \
           AND typrelid = 0 AND typcategory <> 'A' \
       UNION ALL SELECT 'operator ' || oprname FROM pg_catalog.pg_operator \
         WHERE oprnamespace = (SELECT oid FROM ns) AND oprowner <> (SELECT oid FROM me) \
       UNION ALL SELECT 'a grant of ' || a.privilege_type || ' on schema teesql' \
         FROM ns, pg_catalog.aclexplode(ns.nspacl) a \
         WHERE a.grantee <> ns.nspowner AND NOT (a.grantee = 0 AND a.privilege_type = 'USAGE') \
       UNION ALL SELECT 'a grant of ' || a.privilege_type || ' on ' || c.relname \
         FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a \
         WHERE c.relnamespace = (SELECT oid FROM ns) AND a.grantee <> c.relowner \
       UNION ALL SELECT 'a grant of ' || a.privilege_type || ' on function ' || p.proname \
         FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a \
         WHERE p.pronamespace = (SELECT oid FROM ns) AND a.grantee <> p.proowner \
           AND NOT (a.grantee = 0 AND a.privilege_type = 'EXECUTE') \
     ) x";

/// Admin connections kept: one per database, at most this many databases.
const MAX_DATABASES: usize = 64;

/// What a session's `teesql.identity()` returns.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SessionIdentity {
    /// From the attested event log (RTMR3 replayed), else null.
    pub app_id: Option<String>,
    /// The app-compose's SHA-256 (hex), from the attested event log, else null.
    pub compose_hash: Option<String>,
    /// The dstack instance id (hex), from the attested event log, else null.
    pub instance_id: Option<String>,
    /// The policy's grants.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// Every role the decision's `grants.roles` names (empty when it grants none).
    pub roles: Vec<String>,
    /// The Postgres role the session logged in as, and the user the client named.
    pub role: String,
    /// The user the client named in its StartupMessage, e.g. `teesql_app` (the tenant user).
    pub user: String,
    /// `sha256:<hex>` of the policy set that decided (`Decision.policy_hash`).
    pub policy_hash: String,
    /// Unix seconds of the decision (the session is re-judged when the policy changes;
    /// it ends when no longer admitted).
    pub decided_at: u64,
}

impl SessionIdentity {
    /// The identity a verifier decision attests for a session as `role`.
    pub fn from_decision(d: &teesql_proto::v1::Decision, user: &str, role: &str) -> Self {
        #[derive(serde::Deserialize, Default)]
        struct Claims {
            app: Option<App>,
        }
        #[derive(serde::Deserialize, Default)]
        struct App {
            app_id: Option<String>,
            compose_hash: Option<String>,
            instance_id: Option<String>,
            #[serde(default)]
            rtmr3_replayed: bool,
        }
        let app = serde_json::from_str::<Claims>(&d.claims_json)
            .ok()
            .and_then(|c| c.app)
            .filter(|a| a.rtmr3_replayed)
            .unwrap_or_default();
        let (roles, attributes) = match &d.grants {
            Some(g) => (
                g.roles.clone(),
                g.attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            None => Default::default(),
        };
        Self {
            app_id: app.app_id,
            compose_hash: app.compose_hash,
            instance_id: app.instance_id,
            attributes,
            roles,
            role: role.to_string(),
            user: user.to_string(),
            policy_hash: d.policy_hash.clone(),
            decided_at: teesql_appraisal::Clock::System.now(),
        }
    }
}

/// Writes session identities over admin connections, one per database.
#[derive(Debug, Clone)]
pub struct IdentityRecorder {
    backend: BackendConfig,
    clients: Arc<Mutex<HashMap<String, Arc<tokio_postgres::Client>>>>,
    /// Identities recorded, for the periodic removal of ended sessions' rows.
    recorded: Arc<std::sync::atomic::AtomicU64>,
}

/// Every this many identities recorded, rows of backends that have ended are removed from
/// the database just written to: the table holds about as many rows as there are live
/// sessions, not one per process id ever used.
pub const PRUNE_EVERY: u64 = 256;

const PRUNE_SQL: &str = "DELETE FROM teesql.session_identity s \
     WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_get_activity(NULL) a \
                       WHERE a.pid = s.pid AND a.backend_start = s.backend_start)";

impl IdentityRecorder {
    /// Logs in as `backend.admin_user`; connections are opened on first use, per database.
    pub fn new(backend: BackendConfig) -> Self {
        Self {
            backend,
            clients: Arc::default(),
            recorded: Arc::default(),
        }
    }

    /// Record `identity` for the backend `pid` in `database`. One retry on a fresh
    /// connection if the kept one has failed.
    pub async fn record(
        &self,
        database: &str,
        pid: i32,
        identity: &SessionIdentity,
    ) -> Result<(), RecordError> {
        let json = serde_json::to_string(identity)?;
        let mut retried = false;
        loop {
            let client = self.client(database).await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&pid, &json, &identity.role, &database];
            match client.execute(RECORD_SQL, &params).await {
                Ok(1) => {
                    let n = self
                        .recorded
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n % PRUNE_EVERY == PRUNE_EVERY - 1 {
                        let database = database.to_string();
                        tokio::spawn(async move {
                            if let Err(e) = client.execute(PRUNE_SQL, &[]).await {
                                tracing::warn!(%database, error = %error_chain(&e), "could not remove ended sessions' identities");
                            }
                        });
                    }
                    return Ok(());
                }
                Ok(_) => {
                    return Err(RecordError::NoBackend {
                        pid,
                        role: identity.role.clone(),
                        database: database.to_string(),
                    });
                }
                Err(e) => {
                    let missing = e
                        .as_db_error()
                        .is_some_and(|d| d.code().code() == "42P01" || d.code().code() == "3F000");
                    if missing {
                        return Err(RecordError::NotProvisioned {
                            database: database.to_string(),
                            source: e,
                        });
                    }
                    if client.is_closed() {
                        self.forget(database, &client);
                        if !retried {
                            retried = true;
                            continue;
                        }
                    }
                    return Err(RecordError::Postgres(e));
                }
            }
        }
    }

    async fn client(&self, database: &str) -> Result<Arc<tokio_postgres::Client>, AdminError> {
        if let Some(c) = self.lock().get(database).filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let client = Arc::new(admin_client_to(&self.backend, database).await?);
        let mut clients = self.lock();
        if clients.len() >= MAX_DATABASES && !clients.contains_key(database) {
            let any = clients.keys().next().cloned();
            if let Some(k) = any {
                clients.remove(&k);
            }
        }
        clients.insert(database.to_string(), client.clone());
        Ok(client)
    }

    fn forget(&self, database: &str, client: &Arc<tokio_postgres::Client>) {
        let mut clients = self.lock();
        if clients
            .get(database)
            .is_some_and(|c| Arc::ptr_eq(c, client))
        {
            clients.remove(database);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio_postgres::Client>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

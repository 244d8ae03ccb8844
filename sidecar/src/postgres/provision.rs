//! `teesql-sidecar provision`: create the roles of the auth map in Postgres, idempotently,
//! with the privileges of SEED.md's roles table.
//!
//! - `teesql_read`: SELECT on schema public, including tables created later (by the
//!   superuser or by `teesql_readwrite`).
//! - `teesql_readwrite`: SELECT, INSERT, UPDATE, DELETE and CREATE on schema public
//!   (and the sequences behind serial columns).
//!
//! What Postgres grants every role (`PUBLIC`) and a read-only role should not have is
//! taken from `PUBLIC` and given back to the read-write roles: creating temporary
//! tables (`TEMPORARY` on the database), creating large objects (`lo_create`,
//! `lo_creat`, `lo_from_bytea`, `lo_import`) and advisory locks (`pg_advisory_*`,
//! `pg_try_advisory_*`), which a read-only client could hold to stall writers.
//! `NOTIFY`/`LISTEN` need no privilege in Postgres and stay open to every role.
//!
//! Roles log in without a password when the backend method is trust; otherwise their
//! password is the backend password the sidecar logs in with.

use std::path::{Path, PathBuf};

use crate::auth::Privileges;
use crate::config::{BackendConfig, BackendMethod, SidecarConfig};
use crate::postgres::admin::{AdminError, admin_client, admin_client_to};
use crate::postgres::identity_rows::ProvisionSchemaError;
use teesql_proto::runtime::error_chain;

/// Why provisioning stopped. The messages name the role, database or statement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// No admin connection.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The `teesql` schema could not be provisioned.
    #[error(transparent)]
    Schema(#[from] ProvisionSchemaError),
    /// A tenant role of the data file that means something else to the sidecar.
    #[error(
        "--tenants: tenant role {role} is a cluster role, a passthrough role, the admin user, a pg_ role, auth.tenant_user or a non-granted role of the config; give the tenant a role of its own"
    )]
    ReservedRole {
        /// The role.
        role: String,
    },
    /// A statement failed.
    #[error("{what}: {}", error_chain(source))]
    Sql {
        /// The statement or what it was for (passwords masked).
        what: String,
        /// tokio-postgres' error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Setting a role's password failed (the statement, which holds the verifier, is
    /// not shown).
    #[error("setting the password of role {role} failed")]
    Password {
        /// The role.
        role: String,
    },
    /// Tenant roles hold more than their grants.
    #[error(
        "in database {database}, tenant roles hold more than their grants: {problems}; a tenant role must be an ordinary role of its own"
    )]
    TenantPowers {
        /// The database.
        database: String,
        /// What each holds, `; `-separated.
        problems: String,
    },
}

/// Why a tenant data file cannot be used ([`read_tenants`]). Each message starts with
/// `--tenants FILE`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TenantsError {
    /// The file cannot be read.
    #[error("--tenants {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("--tenants {}: not JSON: {source}", path.display())]
    NotJson {
        /// The file.
        path: PathBuf,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// No object at `teesql.tenants`.
    #[error("--tenants {}: no object at teesql.tenants", path.display())]
    NoTenants {
        /// The file.
        path: PathBuf,
    },
    /// A tenant that cannot be provisioned.
    #[error("--tenants {}: teesql.tenants.{tenant}: {problem}", path.display())]
    Tenant {
        /// The file.
        path: PathBuf,
        /// The tenant's name.
        tenant: String,
        /// What is wrong with it.
        #[source]
        problem: TenantProblem,
    },
}

/// What is wrong with one tenant of a data file ([`TenantsError::Tenant`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TenantProblem {
    /// No `role`.
    #[error("no \"role\"")]
    NoRole,
    /// A role that is not a lowercase SQL identifier.
    #[error("role {0:?} is not a lowercase SQL identifier")]
    BadRole(String),
    /// `privileges` other than read, readwrite or none.
    #[error("privileges {0:?}: expected read, readwrite or none")]
    BadPrivileges(String),
    /// A role another tenant has, without both saying `shared_role`.
    #[error(
        "role {role} is also tenant {other}'s: give each tenant a role of its own, or set \"shared_role\": true on both (then only row-level security separates them)"
    )]
    SharedRole {
        /// The role.
        role: String,
        /// The other tenant.
        other: String,
    },
}

/// A failed statement, named by `what`.
fn failed(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ProvisionError {
    let what = what.into();
    move |source| ProvisionError::Sql { what, source }
}

/// What was done, for the operator.
#[derive(Debug, Default)]
pub struct Provisioned {
    /// Roles that did not exist and were created (`CREATE ROLE … LOGIN`).
    pub created: Vec<String>,
    /// Roles that already existed; their password and privileges were set again.
    pub updated: Vec<String>,
}

/// Provision every role of the auth map in each of `databases`.
pub async fn provision(
    cfg: &SidecarConfig,
    databases: &[String],
) -> Result<Provisioned, ProvisionError> {
    provision_with(cfg, databases, &[]).await
}

/// The tenant roles of a policy data file: `teesql.tenants.<name>.role` with its
/// `privileges` (read, readwrite or none; default none).
pub fn read_tenants(path: &Path) -> Result<Vec<(String, Privileges)>, TenantsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TenantsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let data: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| TenantsError::NotJson {
            path: path.to_path_buf(),
            source,
        })?;
    let Some(tenants) = data.pointer("/teesql/tenants").and_then(|t| t.as_object()) else {
        return Err(TenantsError::NoTenants {
            path: path.to_path_buf(),
        });
    };
    let mut out: Vec<(String, Privileges)> = Vec::new();
    let mut owners: Vec<(String, &str, bool)> = Vec::new();
    for (name, spec) in tenants {
        let bad = |problem| TenantsError::Tenant {
            path: path.to_path_buf(),
            tenant: name.clone(),
            problem,
        };
        let role = spec
            .get("role")
            .and_then(|r| r.as_str())
            .ok_or_else(|| bad(TenantProblem::NoRole))?;
        if !teesql_appraisal::policy::is_identifier(role) {
            return Err(bad(TenantProblem::BadRole(role.to_string())));
        }
        let privileges = match spec.get("privileges").and_then(|p| p.as_str()) {
            None | Some("none") => Privileges::None,
            Some("read") => Privileges::Read,
            Some("readwrite") => Privileges::ReadWrite,
            Some(other) => {
                return Err(bad(TenantProblem::BadPrivileges(other.to_string())));
            }
        };
        // A role shared by tenants leaves only row-level security between them (query
        // text in pg_stat_activity, cancelling each other's backends, pooled backends
        // passing between them): refused unless each tenant says so.
        let shared = spec
            .get("shared_role")
            .and_then(|s| s.as_bool())
            .unwrap_or(false);
        if let Some((other, _, other_shared)) = owners.iter().find(|(_, r, _)| *r == role)
            && !(shared && *other_shared)
        {
            return Err(bad(TenantProblem::SharedRole {
                role: role.to_string(),
                other: other.clone(),
            }));
        }
        owners.push((name.clone(), role, shared));
        if !out.iter().any(|(r, _)| r == role) {
            out.push((role.to_string(), privileges));
        }
    }
    Ok(out)
}

/// Provision every role of the auth map and `tenants` in each of `databases`, and the
/// `teesql` schema behind `teesql.identity()`.
pub async fn provision_with(
    cfg: &SidecarConfig,
    databases: &[String],
    tenants: &[(String, Privileges)],
) -> Result<Provisioned, ProvisionError> {
    let mut roles: Vec<(String, Privileges)> = cfg
        .auth
        .roles()
        .map(|r| (r.name.clone(), r.privileges))
        .collect();
    for (role, privileges) in tenants {
        // The data file names the roles; it must not name one that means something else.
        if crate::auth::is_reserved_role(role, &cfg.backend.admin_user, |n| {
            cfg.auth.is_passthrough(n)
        }) || cfg.auth.tenant_user() == Some(role.as_str())
            || cfg.auth.role(role).is_some_and(|r| !r.granted)
        {
            return Err(ProvisionError::ReservedRole { role: role.clone() });
        }
        match roles.iter_mut().find(|(r, _)| r == role) {
            Some(known) => known.1 = *privileges,
            None => roles.push((role.clone(), *privileges)),
        }
    }
    // Read-write first: read's default privileges refer to it.
    roles.sort_by_key(|(_, p)| match p {
        Privileges::ReadWrite => 0,
        Privileges::Read => 1,
        Privileges::None => 2,
    });
    let mut done = Provisioned::default();
    let admin = admin_client(&cfg.backend).await?;
    for (role, _) in &roles {
        let existed: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
                &[role],
            )
            .await
            .map_err(failed(format!("checking role {role}")))?
            .get(0);
        if existed {
            done.updated.push(role.clone());
        } else {
            exec_formatted(&admin, "CREATE ROLE %I LOGIN", &[role]).await?;
            done.created.push(role.clone());
        }
        set_password(&admin, &cfg.backend, role).await?;
    }
    // Tenant roles (granted by the verifier's policy) share schema public with each
    // other: they get no CREATE there, so none can plant functions or operators that
    // another tenant's queries would resolve (CVE-2018-1058).
    let tenant_roles: Vec<&String> = cfg
        .auth
        .roles()
        .filter(|r| r.granted)
        .map(|r| &r.name)
        .chain(tenants.iter().map(|(r, _)| r))
        .collect();
    let readwrite_exists = roles.iter().any(|(r, _)| r == "teesql_readwrite");
    let writers: Vec<&String> = roles
        .iter()
        .filter(|(_, p)| *p == Privileges::ReadWrite)
        .map(|(r, _)| r)
        .collect();
    for db in databases {
        let mut per_db = cfg.backend.clone();
        let client = if db == "postgres" {
            None
        } else {
            per_db.admin_user = cfg.backend.admin_user.clone();
            Some(admin_client_to(&per_db, db).await?)
        };
        let c = client.as_ref().unwrap_or(&admin);
        restrict_public(c, db, &writers).await?;
        if !tenant_roles.is_empty() {
            // Before Postgres 15 every role may create in public through PUBLIC; the
            // cluster's read-write roles keep it by their own grant below.
            c.batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                .await
                .map_err(failed("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))?;
        }
        crate::postgres::identity_rows::provision(c, db).await?;
        for (role, privileges) in &roles {
            exec_formatted(c, "GRANT CONNECT ON DATABASE %I TO %I", &[db, role]).await?;
            match privileges {
                Privileges::Read => {
                    for sql in [
                        "GRANT USAGE ON SCHEMA public TO %I",
                        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO %I",
                        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO %I",
                    ] {
                        exec_formatted(c, sql, &[role]).await?;
                    }
                    if readwrite_exists {
                        exec_formatted(
                            c,
                            "ALTER DEFAULT PRIVILEGES FOR ROLE teesql_readwrite IN SCHEMA public GRANT SELECT ON TABLES TO %I",
                            &[role],
                        )
                        .await?;
                    }
                }
                Privileges::ReadWrite if tenant_roles.contains(&role) => {
                    for sql in [
                        "REVOKE CREATE ON SCHEMA public FROM %I",
                        "GRANT USAGE ON SCHEMA public TO %I",
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I",
                        "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO %I",
                        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I",
                        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %I",
                    ] {
                        exec_formatted(c, sql, &[role]).await?;
                    }
                }
                Privileges::ReadWrite => {
                    for sql in [
                        "GRANT USAGE, CREATE ON SCHEMA public TO %I",
                        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I",
                        "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO %I",
                        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I",
                        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %I",
                    ] {
                        exec_formatted(c, sql, &[role]).await?;
                    }
                }
                Privileges::None => {}
            }
        }
        check_tenants(c, db, &tenant_roles).await?;
    }
    Ok(done)
}

/// Tenant roles must hold no power beyond their grants: not a superuser or any role
/// attribute that escapes row-level security or creates roles, no membership in another
/// role, no CREATE on schema public and nothing of their own in it (functions or operators
/// there would be resolved by other tenants' queries).
async fn check_tenants(
    c: &tokio_postgres::Client,
    db: &str,
    tenant_roles: &[&String],
) -> Result<(), ProvisionError> {
    let names: Vec<String> = tenant_roles.iter().map(|r| r.to_string()).collect();
    let problems: Option<String> = c
        .query_one(
            "SELECT pg_catalog.string_agg(problem, '; ') FROM ( \
               SELECT r.rolname || ' is a superuser or has BYPASSRLS, CREATEROLE, CREATEDB or REPLICATION' AS problem \
                 FROM pg_catalog.pg_roles r WHERE r.rolname = ANY($1) \
                 AND (r.rolsuper OR r.rolbypassrls OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication) \
               UNION ALL SELECT r.rolname || ' is a member of ' || g.rolname \
                 FROM pg_catalog.pg_auth_members m \
                 JOIN pg_catalog.pg_roles r ON r.oid = m.member JOIN pg_catalog.pg_roles g ON g.oid = m.roleid \
                 WHERE r.rolname = ANY($1) \
               UNION ALL SELECT r.rolname || ' may CREATE in schema public' \
                 FROM pg_catalog.pg_roles r WHERE r.rolname = ANY($1) \
                 AND pg_catalog.has_schema_privilege(r.oid, 'public', 'CREATE') \
               UNION ALL SELECT r.rolname || ' owns function ' || p.oid::pg_catalog.regprocedure::text \
                 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner \
                 WHERE p.pronamespace = 'public'::pg_catalog.regnamespace AND r.rolname = ANY($1) \
               UNION ALL SELECT r.rolname || ' owns operator ' || o.oid::pg_catalog.regoperator::text \
                 FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_roles r ON r.oid = o.oprowner \
                 WHERE o.oprnamespace = 'public'::pg_catalog.regnamespace AND r.rolname = ANY($1) \
             ) x",
            &[&names],
        )
        .await
        .map_err(failed(format!("checking tenant roles in database {db}")))?
        .get(0);
    match problems {
        None => Ok(()),
        Some(problems) => Err(ProvisionError::TenantPowers {
            database: db.to_string(),
            problems,
        }),
    }
}

/// Take temporary tables, large-object creation and advisory locks from `PUBLIC` in
/// `db`, and give them to the read-write roles.
async fn restrict_public(
    c: &tokio_postgres::Client,
    db: &str,
    writers: &[&String],
) -> Result<(), ProvisionError> {
    exec_formatted(c, "REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC", &[db]).await?;
    for role in writers {
        exec_formatted(c, "GRANT TEMPORARY ON DATABASE %I TO %I", &[db, role]).await?;
    }
    let functions: Vec<String> = c
        .query(
            "SELECT p.oid::regprocedure::text FROM pg_proc p \
             WHERE p.pronamespace = 'pg_catalog'::regnamespace \
               AND (p.proname IN ('lo_create', 'lo_creat', 'lo_from_bytea', 'lo_import') \
                    OR p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$') \
             ORDER BY 1",
            &[],
        )
        .await
        .map_err(failed("listing functions to restrict"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for f in &functions {
        // `f` is Postgres' own regprocedure text (a quoted, typed signature).
        c.batch_execute(&format!("REVOKE EXECUTE ON FUNCTION {f} FROM PUBLIC"))
            .await
            .map_err(failed(format!("REVOKE EXECUTE ON FUNCTION {f}")))?;
        for role in writers {
            exec_formatted(c, &format!("GRANT EXECUTE ON FUNCTION {f} TO %I"), &[role]).await?;
        }
    }
    Ok(())
}

async fn set_password(
    c: &tokio_postgres::Client,
    backend: &BackendConfig,
    role: &str,
) -> Result<(), ProvisionError> {
    match (&backend.method, &backend.password) {
        (BackendMethod::Trust, _) | (_, None) => {
            exec_formatted(c, "ALTER ROLE %I LOGIN PASSWORD NULL", &[role]).await
        }
        (method, Some(pw)) => {
            // Postgres is sent a verifier, never the password itself, so a statement log
            // (log_statement = ddl) cannot leak it. md5 logins need an md5 verifier; every
            // other method checks against SCRAM's.
            let verifier = match method {
                BackendMethod::Md5 => postgres_protocol::password::md5(pw.expose(), role),
                _ => postgres_protocol::password::scram_sha_256(pw.expose()),
            };
            exec_formatted(c, "ALTER ROLE %I LOGIN PASSWORD %L", &[role, &verifier])
                .await
                .map_err(|_| ProvisionError::Password {
                    role: role.to_string(),
                })
        }
    }
}

/// Run `format(template, args…)` in Postgres (identifiers %I and literals %L quoted by
/// Postgres itself), then execute the result.
async fn exec_formatted(
    c: &tokio_postgres::Client,
    template: &str,
    args: &[&str],
) -> Result<(), ProvisionError> {
    let placeholders: Vec<String> = (2..args.len() + 2).map(|i| format!("${i}::text")).collect();
    let query = format!("SELECT format($1::text, {})", placeholders.join(", "));
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&template];
    for a in args {
        params.push(a);
    }
    let sql: String = c
        .query_one(&query, &params)
        .await
        .map_err(failed(format!("preparing {template}")))?
        .get(0);
    c.batch_execute(&sql)
        .await
        .map_err(failed(template.replace("%L", "***")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_shared_by_tenants_is_refused_unless_both_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.json");
        let write = |acme_shared: bool, globex_shared: bool| {
            let data = serde_json::json!({"teesql": {"tenants": {
                "acme": {"role": "tenant_shared", "privileges": "read", "shared_role": acme_shared},
                "globex": {"role": "tenant_shared", "privileges": "read", "shared_role": globex_shared},
                "initech": {"role": "tenant_initech", "privileges": "readwrite"},
            }}});
            std::fs::write(&file, data.to_string()).unwrap();
        };
        write(false, false);
        let e = read_tenants(&file).unwrap_err().to_string();
        assert!(
            e.contains("tenant_shared") && e.contains("a role of its own"),
            "{e}"
        );
        write(true, false);
        assert!(read_tenants(&file).is_err());
        write(true, true);
        let roles = read_tenants(&file).unwrap();
        assert_eq!(
            roles.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
            ["tenant_shared", "tenant_initech"]
        );
    }
}

//! The SQLSTATEs the sidecar and the forwarder send themselves (Postgres' own errors
//! are passed on as they come).

/// invalid_authorization_specification: every refusal.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// protocol_violation: malformed or unexpected messages.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// connection_failure: Postgres (or the sidecar) cannot be reached.
pub const CONNECTION_FAILURE: &str = "08006";
/// feature_not_supported: replication connections, refused startup parameters.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// invalid_catalog_name: a database the sidecar does not serve.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// admin_shutdown: an open session ended because its attestation is no longer accepted
/// (the policy changed), as Postgres ends a terminated backend's session.
pub const ADMIN_SHUTDOWN: &str = "57P01";

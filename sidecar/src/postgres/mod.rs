//! Everything the sidecar does as a client of Postgres: logging a session in
//! ([`login`]), keeping logged-in connections for reuse ([`pool`]), its own admin
//! connection ([`admin`]), the SCRAM verifiers of roles Postgres authenticates
//! ([`passthrough`]), the attested identity of each session ([`identity_rows`]) and
//! creating the roles and schema ([`provision`]).

pub mod admin;
pub mod identity_rows;
pub mod login;
pub mod passthrough;
pub mod pool;
pub mod provision;

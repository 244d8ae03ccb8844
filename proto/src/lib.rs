//! The TeeSQL verifier's gRPC API, `teesql.verifier.v1`, generated from
//! `proto/teesql/verifier/v1/verifier.proto` (which documents every message and field).

#![allow(missing_docs, missing_debug_implementations, clippy::doc_markdown)]

#[cfg(feature = "agent")]
pub mod agent;
pub mod codec;
pub mod report;
#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "runtime")]
pub mod settings;
#[cfg(feature = "runtime")]
pub mod transport;

/// `teesql.verifier.v1`.
pub mod v1 {
    tonic::include_proto!("teesql.verifier.v1");
}

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/teesql_verifier_v1_descriptor.bin"
));

//! TeeSQL verifier: the attestation service. It serves the appraisal of
//! [`teesql_appraisal`] over gRPC ([`service`]): decisions under hot-reloaded policies,
//! appraisal and collateral caches, signed decision tokens, a decision log and metrics.
//!
//! The appraisal modules are re-exported under their old paths, so
//! `teesql_verifier::evidence` is `teesql_appraisal::evidence`.

#![warn(missing_docs)]

pub use teesql_appraisal::{
    appraise, backend, claims, clock, collateral, eventlog, evidence, http, local, manifest,
    mr_config, policy, report, snp, tcb,
};
pub mod lifecycle;
pub mod measure;
pub mod service;

pub use teesql_appraisal::{Appraiser, Clock, Decision, DecisionRequest, decide};

//! TeeSQL verifier: appraises TDX and dstack attestation evidence and decides with Rego.
//!
//! Evidence is decoded ([`evidence`]), its quote verified by a [`backend`], the event log
//! replayed ([`eventlog`]), and everything condensed into [`claims::Claims`], the one
//! document [`policy`] evaluates. Backends report facts; only policies decide.

pub mod appraise;
pub mod backend;
pub mod claims;
pub mod clock;
pub mod collateral;
pub mod eventlog;
pub mod evidence;
pub mod http;
pub mod local;
pub mod manifest;
pub mod mr_config;
pub mod policy;
pub mod report;
pub mod service;

pub use appraise::{Appraiser, Decision, DecisionRequest, decide};
pub use clock::Clock;

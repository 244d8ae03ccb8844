//! TeeSQL appraisal: decodes TDX, AMD SEV-SNP and dstack attestation evidence, verifies
//! quotes and reports, replays event logs and decides with Rego policies — everything a
//! relying party needs to judge a peer in its own process, without the verifier service.
//!
//! Evidence is decoded ([`evidence`]), its quote verified by a [`backend`] (collateral
//! from [`collateral`]) or its SEV-SNP report by [`snp`] (offline, AMD's pinned roots),
//! the event log replayed ([`eventlog`]), and everything condensed
//! into [`claims::Claims`], the one document [`policy`] evaluates. Backends report facts;
//! only policies decide. [`local`] runs it all in-process (the sidecar appraises the
//! verifier's own RA-TLS certificate this way); [`token`] checks decision tokens.
//! `teesql-verifier` serves the same appraisal over gRPC.

#![warn(missing_docs)]

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
pub mod snp;
pub mod tcb;
pub mod token;

pub use appraise::{Appraiser, Decision, DecisionRequest, decide};
pub use clock::Clock;

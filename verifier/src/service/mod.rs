//! The verifier service: decisions with an appraisal cache, hot-swappable policies, a
//! decision log and metrics. Transport-independent; `grpc` puts it on the wire.
//!
//! Every decision runs the current policy on claims. The expensive part, verifying the
//! evidence, is cached by the hash of the evidence and never outlives the collateral or
//! certificate it rests on, so a reloaded policy applies to the very next decision.

pub mod bundles;
mod cache;
pub mod config;
mod decide;
pub mod ear;
pub mod epochs;
pub mod grpc;
pub mod identity;
pub mod log;
pub mod metrics;
mod prepared;
pub mod reload;
mod request;
pub mod server;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use cache::AppraisalCache;
pub use log::{DecisionLog, LogTarget};
pub use metrics::Metrics;
pub use prepared::TcbRecord;
pub use request::{PeerRequest, PeerSummary, QuoteInput, RequestError, TokenRequest};

use crate::Clock;
use crate::appraise::Appraiser;
use crate::policy::{Grants, PolicySet, Reason, Verdict};

/// A decision as the service returns it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceDecision {
    /// True only when the policy allowed and gave no reason to deny.
    pub allow: bool,
    /// Why it denies, sorted and without duplicates; when allowed, the policy's
    /// warnings (`warn`: `tcb_grace`, `tcb_early_demotion`), usually none.
    pub reasons: Vec<Reason>,
    /// The policy package that decided, `teesql.<purpose>`.
    pub policy_id: String,
    /// `sha256:<hex>` over every file of the policy set that decided.
    pub policy_hash: String,
    /// The claims the policy evaluated, JSON.
    pub claims_json: String,
    /// The evidence's appraisal came from the cache.
    pub cached: bool,
    /// Unix seconds until which the facts hold; 0 = unknown.
    pub valid_until: u64,
    /// The decision signed by the verifier (compact JWS), when it signs decisions.
    pub token: String,
    /// The id the decision is logged under: the caller's, or a fresh one.
    pub decision_id: String,
    /// The OPA bundle revision of the policies that decided; empty for directories.
    pub policy_revision: String,
    /// What the policy grants (allowed decisions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grants: Option<Grants>,
}

impl ServiceDecision {
    /// A verdict, with what the service adds: the claims it was reached on, whether the
    /// appraisal was cached, how long its facts hold. Signed afterwards.
    fn from_verdict(v: Verdict, claims_json: String, cached: bool, valid_until: u64) -> Self {
        Self {
            allow: v.allow,
            reasons: v.told().to_vec(),
            policy_id: v.policy_id,
            policy_hash: v.policy_hash,
            claims_json,
            cached,
            valid_until,
            token: String::new(),
            decision_id: String::new(),
            policy_revision: String::new(),
            grants: v.grants,
        }
    }
}

/// How the service is tuned.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Bytes for cached appraisals of verified quotes; other evidence gets a sixteenth of
    /// it (at least 1 MiB).
    pub cache_max_bytes: u64,
    /// Longest an appraisal is kept, whatever its collateral says.
    pub cache_max_ttl: Duration,
    /// The time decisions are made at: the system clock by default, or a fixed unix time
    /// (`--now`).
    pub clock: Clock,
    /// Where accepted manifest epochs are kept across restarts; `None` = in memory.
    pub manifest_epochs_file: Option<std::path::PathBuf>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            cache_max_bytes: 64 << 20,
            cache_max_ttl: Duration::from_secs(3600),
            clock: Clock::System,
            manifest_epochs_file: None,
        }
    }
}

/// The decision engine behind the gRPC API.
#[derive(Debug)]
pub struct DecisionService {
    appraiser: Appraiser,
    policies: ArcSwap<PolicySet>,
    cache: AppraisalCache,
    clock: Clock,
    log: DecisionLog,
    metrics: Arc<Metrics>,
    /// One reload at a time (file watcher, SIGHUP and the RPC may fire together), so an
    /// older load can never be stored over a newer one.
    reloading: tokio::sync::Mutex<()>,
    /// The highest manifest epoch accepted per cluster, against rollback.
    epochs: epochs::Epochs,
    /// Appraisals under way, by cache key: a burst of handshakes with the same fresh
    /// certificate verifies its quote once.
    appraising: cache::SingleFlight<decide::Appraisal>,
    /// Signs every decision answered, when set.
    signer: Option<Arc<token::DecisionSigner>>,
    /// The policy hash serving now and the TCB generation, for `WatchPolicies`
    /// subscribers.
    policy_hash: tokio::sync::watch::Sender<(String, u64)>,
    /// Set when the server drains: policy streams end so the drain can finish.
    draining: tokio::sync::watch::Sender<bool>,
    /// Where the policies come from when not from directories: an OPA bundle.
    bundle: Option<Arc<bundles::BundleSource>>,
}

impl DecisionService {
    /// A service deciding with `policies`, without a signer (see [`Self::with_signer`]).
    /// The manifest epochs file is read here; if it cannot be, rollback protection
    /// starts from memory (logged as an error).
    pub fn new(
        appraiser: Appraiser,
        policies: PolicySet,
        options: &ServiceOptions,
        log: DecisionLog,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.policy_loaded(policies.hash());
        let policy_hash = tokio::sync::watch::Sender::new((policies.hash().to_string(), 0));
        Self {
            policy_hash,
            draining: tokio::sync::watch::Sender::new(false),
            appraiser,
            policies: ArcSwap::from_pointee(policies),
            cache: AppraisalCache::new(
                cache::Budget {
                    verified_bytes: options.cache_max_bytes,
                    unverified_bytes: (options.cache_max_bytes / 16).max(1 << 20),
                    max_ttl: options.cache_max_ttl,
                },
                options.clock,
            ),
            clock: options.clock,
            log,
            metrics,
            reloading: tokio::sync::Mutex::new(()),
            appraising: cache::SingleFlight::default(),
            // The file was read once when the settings were checked: a failure here is a
            // race with whoever changed it since, and rollback protection then starts
            // from memory.
            epochs: epochs::Epochs::open(options.manifest_epochs_file.clone()).unwrap_or_else(
                |e| {
                    tracing::error!(error = %e, "cannot read the manifest epochs; starting without them");
                    epochs::Epochs::default()
                },
            ),
            signer: None,
            bundle: None,
        }
    }

    /// Take the policies from `bundle` on reload (the set given to [`Self::new`] is its
    /// first load).
    pub fn with_bundle(mut self, bundle: Arc<bundles::BundleSource>) -> Self {
        self.bundle = Some(bundle);
        self
    }

    /// The bundle the policies come from, if any.
    pub fn bundle(&self) -> Option<&Arc<bundles::BundleSource>> {
        self.bundle.as_ref()
    }

    /// Sign every decision with `signer`.
    pub fn with_signer(mut self, signer: Arc<token::DecisionSigner>) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The decision signer, for `/.well-known/jwks.json`.
    pub fn signer(&self) -> Option<&Arc<token::DecisionSigner>> {
        self.signer.as_ref()
    }

    /// The policy hash and TCB generation now, and every change after.
    pub fn watch_policies(&self) -> tokio::sync::watch::Receiver<(String, u64)> {
        self.policy_hash.subscribe()
    }

    /// New collateral changed a platform's TCB status: decisions that rest on the old
    /// one are to be judged again.
    fn tcb_changed(&self) {
        self.policy_hash
            .send_modify(|(_, generation)| *generation += 1);
    }

    /// Whether the server is draining, and every change of it: long-lived streams end
    /// when it turns true.
    pub fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// The server stops: streams end (requests in flight still finish).
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
    }

    /// The policy set serving now.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// The metrics this service records, as served at `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Bytes the appraisal cache holds now: (verified quotes, everything else).
    pub fn cache_bytes(&self) -> (u64, u64) {
        self.cache.weighted_bytes()
    }

    /// Write out every decision log line queued so far (at shutdown, after the last
    /// request). Blocks until the writer is done.
    pub fn close_log(&self) {
        self.log.close();
    }
}

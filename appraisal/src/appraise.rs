//! The appraisal pipeline: evidence in, claims and a decision out.

use std::sync::Arc;

use serde::Serialize;

use crate::backend::QuoteBackend;
use crate::claims::{AppraisedEvidence, Claims, ConnectionClaims};
use crate::evidence::Evidence;
use crate::policy::{PolicyError, PolicySet, Reason};
use crate::snp::SnpVerifier;

/// Turns evidence into claims with a quote backend (TDX) and an SEV-SNP verifier.
#[derive(Debug, Clone)]
pub struct Appraiser {
    backend: Arc<dyn QuoteBackend>,
    snp: Arc<SnpVerifier>,
}

impl Appraiser {
    /// An appraiser whose quotes `backend` verifies (DCAP, Intel Trust Authority, …) and
    /// whose SEV-SNP reports chain to AMD's pinned roots.
    pub fn new(backend: Arc<dyn QuoteBackend>) -> Self {
        Self {
            backend,
            snp: Arc::new(SnpVerifier::default()),
        }
    }

    /// The same, with SEV-SNP reports verified by `snp` (other roots).
    pub fn with_snp(self, snp: SnpVerifier) -> Self {
        Self {
            snp: Arc::new(snp),
            ..self
        }
    }

    /// The backend that verifies quotes, to name it or to get a quote's raw facts
    /// without claims or a decision.
    pub fn backend(&self) -> &Arc<dyn QuoteBackend> {
        &self.backend
    }

    /// Verify the evidence's quote (if any) and derive everything that depends only on
    /// the evidence: the part of the claims the appraisal cache may keep.
    pub async fn appraise(
        &self,
        evidence: &Evidence,
        now: u64,
        expected_report_data: Option<&[u8]>,
    ) -> AppraisedEvidence {
        let facts = match &evidence.quote {
            Some(q) => Some(self.backend.appraise(q, now).await),
            None => None,
        };
        // CPU-bound (three RSA and one ECDSA verification); KDS is asked only for what the
        // evidence and the certificate directory lack, and only once (cached).
        let snp = match &evidence.snp {
            Some(s) => Some(self.snp.appraise_online(s, now).await),
            None => None,
        };
        AppraisedEvidence::build_with_snp(evidence, facts.as_ref(), snp, expected_report_data)
    }
}

/// A decision, as the CLI prints it and the service returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// Accepted: the policy's `allow` was true and its `deny` empty.
    pub allow: bool,
    /// Why it was denied, sorted; when allowed, the policy's warnings (`warn`, e.g.
    /// `tcb_grace`), usually none.
    pub reasons: Vec<Reason>,
    /// The Rego package that decided, `teesql.<purpose>`.
    pub policy_id: String,
    /// `sha256:<hex>` over every file of the policy set ([`PolicySet::hash`]).
    pub policy_hash: String,
    /// The claims the policy evaluated (its `input`), as JSON.
    pub claims: serde_json::Value,
    /// What the policy grants (allowed decisions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grants: Option<crate::policy::Grants>,
}

/// Decide on claims with a policy set.
pub fn decide(policies: &PolicySet, claims: &Claims) -> Result<Decision, PolicyError> {
    let input = serde_json::to_value(claims).map_err(|e| PolicyError::Eval {
        purpose: claims.purpose.clone(),
        detail: format!("claims do not serialize: {e}"),
    })?;
    let verdict = policies.evaluate(&claims.purpose, &input)?;
    Ok(Decision {
        allow: verdict.allow,
        reasons: verdict.told().to_vec(),
        policy_id: verdict.policy_id,
        policy_hash: verdict.policy_hash,
        claims: input,
        grants: verdict.grants,
    })
}

/// One decision to make: the evidence, the policy purpose that judges it, and what the
/// caller knows beside it.
#[derive(Debug, Clone)]
pub struct DecisionRequest<'a> {
    /// The decoded evidence; its quote, when it has one, is verified by the backend.
    pub evidence: &'a Evidence,
    /// Which policy decides (`quote`, `sidecar`, `client`, …).
    pub purpose: &'a str,
    /// Appraise as of this unix time.
    pub now: u64,
    /// Report data the quote must carry.
    pub expected_report_data: Option<&'a [u8]>,
    /// The TLS connection the evidence came over, when there is one.
    pub connection: Option<ConnectionClaims>,
}

impl<'a> DecisionRequest<'a> {
    /// `evidence` judged by `purpose` at `now`, nothing else known.
    pub fn new(evidence: &'a Evidence, purpose: &'a str, now: u64) -> Self {
        Self {
            evidence,
            purpose,
            now,
            expected_report_data: None,
            connection: None,
        }
    }
}

impl Appraiser {
    /// Appraise and decide in one step (the `verify` command, tests).
    pub async fn decide(
        &self,
        policies: &PolicySet,
        req: DecisionRequest<'_>,
    ) -> Result<Decision, PolicyError> {
        let appraised = self
            .appraise(req.evidence, req.now, req.expected_report_data)
            .await;
        decide(
            policies,
            &appraised.into_claims(req.purpose, req.now, req.connection),
        )
    }
}

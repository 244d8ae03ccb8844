//! The appraisal pipeline: evidence in, claims and a decision out.

use std::sync::Arc;

use serde::Serialize;

use crate::backend::QuoteBackend;
use crate::claims::{AppraisedEvidence, Claims, ConnectionClaims};
use crate::evidence::Evidence;
use crate::policy::{PolicyError, PolicySet, Reason};

/// Turns evidence into claims with a quote backend.
#[derive(Debug, Clone)]
pub struct Appraiser {
    backend: Arc<dyn QuoteBackend>,
}

impl Appraiser {
    pub fn new(backend: Arc<dyn QuoteBackend>) -> Self {
        Self { backend }
    }

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
        AppraisedEvidence::build(
            evidence,
            facts.as_ref(),
            self.backend.name(),
            expected_report_data,
        )
    }
}

/// A decision, as the CLI prints it and the service returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub reasons: Vec<Reason>,
    pub policy_id: String,
    pub policy_hash: String,
    pub claims: serde_json::Value,
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
        reasons: verdict.reasons,
        policy_id: verdict.policy_id,
        policy_hash: verdict.policy_hash,
        claims: input,
    })
}

/// Appraise and decide in one step (the `verify` command).
pub async fn appraise_and_decide(
    appraiser: &Appraiser,
    policies: &PolicySet,
    evidence: &Evidence,
    purpose: &str,
    now: u64,
    expected_report_data: Option<&[u8]>,
    connection: Option<ConnectionClaims>,
) -> Result<Decision, PolicyError> {
    let appraised = appraiser
        .appraise(evidence, now, expected_report_data)
        .await;
    decide(policies, &appraised.into_claims(purpose, now, connection))
}

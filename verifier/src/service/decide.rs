//! One decision: the appraisal (cached, or made once for every caller waiting on the same
//! evidence), the policy's verdict on its claims, the signed token, the log line and the
//! metrics.

use std::sync::Arc;
use std::time::Instant;

use super::prepared::{self, Extra, Prepared};
use super::request::{PeerSummary, Pending, RequestError, TokenRequest};
use super::{DecisionService, ServiceDecision, log, token};
use crate::claims::AppraisedEvidence;
use crate::evidence::{Evidence, EvidenceError};
use crate::policy::{Reason, Verdict, reason_codes};

/// An appraisal as the single-flight shares it: prepared claims, or why the evidence
/// cannot be decoded.
pub(super) type Appraisal = Result<Arc<Prepared>, String>;

impl DecisionService {
    /// The token for `d`, made from `facts` (empty when decisions are not signed).
    pub(super) fn sign(
        &self,
        purpose: &str,
        d: &ServiceDecision,
        key: &[u8; 32],
        facts: &prepared::Facts,
        token: &TokenRequest,
        now: u64,
    ) -> String {
        let Some(signer) = self.signer.as_ref().filter(|_| token.sign) else {
            return String::new();
        };
        let identity = facts.measured.identity.as_ref();
        let facts = token::TokenFacts {
            purpose,
            allow: d.allow,
            reasons: d.reasons.iter().map(|r| r.code.as_str()).collect(),
            policy_id: &d.policy_id,
            policy_hash: &d.policy_hash,
            policy_revision: &d.policy_revision,
            evidence_sha256: *key,
            valid_until: d.valid_until,
            mrtd: facts.mrtd.as_deref(),
            tcb_status: facts.tcb_status.as_deref(),
            backend: facts.backend.as_deref(),
            root: facts.root.as_deref(),
            verified: facts.verified,
            app_id: facts.app_id.as_deref(),
            compose_hash: identity.and_then(|i| i.compose_hash.as_deref()),
            grants: d.grants.as_ref(),
            nonce: token.nonce.as_deref(),
            has_quote: facts.has_quote,
            debug: facts.debug,
            rtmr3_replayed: facts.rtmr3_replayed,
            tee: facts.tee,
            snp_measurement: facts.snp_measurement.as_deref(),
        };
        match signer.sign(&facts, now) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a decision; answering it unsigned");
                String::new()
            }
        }
    }

    pub(super) async fn decide<D, X>(
        &self,
        req: Pending<D, X>,
    ) -> Result<ServiceDecision, RequestError>
    where
        D: FnOnce() -> Result<Evidence, EvidenceError>,
        X: FnOnce(&prepared::Facts) -> Extra,
    {
        let Pending {
            purpose,
            key,
            decode,
            expected_report_data,
            connection,
            extra,
            mut summary,
            token,
        } = req;
        let purpose = purpose.as_str();
        let decision_id = token
            .decision_id
            .clone()
            .unwrap_or_else(super::request::new_decision_id);
        let started = Instant::now();
        let now = self.clock.now();
        let cached = self.cache.get(&key);
        self.metrics.appraisal_cache(cached.is_some());
        let (prepared, cached) = match cached {
            Some(hit) => (hit, true),
            None => {
                let appraise = async {
                    let evidence = decode().map_err(|e| e.to_string())?;
                    let appraised = self
                        .appraiser
                        .appraise(&evidence, now, expected_report_data.as_deref())
                        .await;
                    let until = valid_until(&appraised);
                    let prepared = Arc::new(Prepared::new(appraised, until));
                    // Failures that a later attempt could cure are not cached.
                    if !prepared.facts.transient {
                        self.cache.insert(key, prepared.clone(), until);
                        let (verified, unverified) = self.cache.weighted_bytes_estimate();
                        self.metrics.appraisal_cache_bytes(verified, unverified);
                    }
                    Ok(prepared)
                };
                match self.appraising.run(key, appraise).await.0 {
                    Ok(prepared) => (prepared, false),
                    Err(e) => {
                        summary.evidence = "malformed".into();
                        let reason = Reason {
                            code: reason_codes::EVIDENCE_MALFORMED.into(),
                            message: format!("the evidence cannot be decoded: {e}"),
                        };
                        let policies = self.policies.load_full();
                        let mut decision = ServiceDecision::from_verdict(
                            Verdict::refusal(purpose, policies.hash(), reason),
                            "null".into(),
                            false,
                            0,
                        );
                        decision.decision_id = decision_id;
                        decision.policy_revision =
                            policies.revision().unwrap_or_default().to_string();
                        decision.token = self.sign(
                            purpose,
                            &decision,
                            &key,
                            &prepared::Facts::default(),
                            &token,
                            now,
                        );
                        self.finish(purpose, &decision, &summary, started);
                        return Ok(decision);
                    }
                }
            }
        };
        let facts = &prepared.facts;
        if let Some(tcb) = &facts.tcb
            && self.metrics.tcb_seen(&tcb.seen(), now)
        {
            tracing::info!(platform = %tcb.seen().platform, status = %tcb.status, "a platform's TCB status changed with new collateral; open sessions are judged again");
            self.tcb_changed();
        }
        summary.evidence = facts.kind.clone();
        summary.tee = facts.tee;
        summary.subject = facts.subject.clone();
        summary.mrtd = facts.mrtd.clone();
        summary.app_id = facts.app_id.clone();
        summary.compose_hash = facts
            .measured
            .identity
            .as_ref()
            .and_then(|i| i.compose_hash.clone());
        summary.tcb = facts.tcb.clone();
        let valid_until = facts.valid_until;
        let extra = extra(facts);
        let (input, claims_json) = prepared.input(purpose, now, connection.as_ref(), &extra);
        let policies = self.policies.load_full();
        let verdict = policies.decide_value(purpose, input);
        let mut decision = ServiceDecision::from_verdict(verdict, claims_json, cached, valid_until);
        decision.decision_id = decision_id;
        decision.policy_revision = policies.revision().unwrap_or_default().to_string();
        decision.token = self.sign(purpose, &decision, &key, facts, &token, now);
        self.finish(purpose, &decision, &summary, started);
        Ok(decision)
    }

    pub(super) fn finish(
        &self,
        purpose: &str,
        d: &ServiceDecision,
        peer: &PeerSummary,
        started: Instant,
    ) {
        let latency = started.elapsed();
        self.metrics.decision(purpose, d.allow, latency);
        if !d.allow {
            self.metrics
                .denials(purpose, d.reasons.iter().map(|r| r.code.as_str()));
        }
        let logged = self.log.record(log::DecisionRecord {
            time: self.clock.now(),
            decision_id: d.decision_id.clone(),
            policy_revision: d.policy_revision.clone(),
            purpose: purpose.to_string(),
            peer: peer.clone(),
            allow: d.allow,
            reasons: d.reasons.clone(),
            grants: d.grants.clone(),
            policy_hash: d.policy_hash.clone(),
            cached: d.cached,
            latency_us: latency.as_micros() as u64,
        });
        if !logged {
            self.metrics.decision_log_dropped();
        }
    }
}

/// Until when the facts of an appraisal hold: the earliest of its collateral's next
/// update and its certificate's expiry; 0 when neither applies.
fn valid_until(a: &AppraisedEvidence) -> u64 {
    let collateral = a
        .tdx
        .as_ref()
        .and_then(|t| t.collateral)
        .map(|c| c.not_after);
    let cert = a.evidence.cert.as_ref().map(|c| c.not_after.max(0) as u64);
    // SEV-SNP: the VCEK's expiry (AMD's ARK and ASK outlive it by years).
    let vcek = a
        .snp
        .as_ref()
        .and_then(|s| s.vcek.as_ref())
        .map(|v| v.not_after.max(0) as u64);
    let cert = match (cert, vcek) {
        (Some(c), Some(v)) => Some(c.min(v)),
        (c, v) => c.or(v),
    };
    match (collateral, cert) {
        (Some(a), Some(b)) => a.min(b),
        (Some(x), None) | (None, Some(x)) => x,
        (None, None) => 0,
    }
}

//! The sidecar's client of the verifier service. Every handshake decision is the
//! verifier's; when it cannot be asked in time, the answer is no (fail closed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teesql_proto::transport::ServerTrust;
use teesql_proto::v1::verifier_client::VerifierClient as Grpc;
use teesql_proto::v1::{Decision, VerifyManifestRequest, VerifyPeerRequest};
use tonic::transport::Channel;

/// How an https verifier is trusted, and where it is: the `[verifier]` settings, shared by
/// the sidecar and `forward` (declared in [`crate::config::verifier`]).
pub use crate::config::VerifierSettings as TrustSettings;

/// A cheap-to-clone handle on the verifier: one endpoint, or several that share the
/// load and stand in for each other.
///
/// Calls go round-robin over the endpoints. When one cannot answer (unreachable, down,
/// overloaded, a failed handshake or a refused attestation, no answer in its share of the
/// time), the same question goes to the next, so no handshake fails while another
/// endpoint is up. A decision, allow or deny, is final: it is never asked again
/// elsewhere, unless it came from another policy than the others' (see [`PolicyHashes`]).
#[derive(Debug, Clone)]
pub struct VerifierClient {
    endpoints: Arc<[Endpoint]>,
    next: Arc<AtomicUsize>,
    timeout: Duration,
    url: String,
    policy: Arc<PolicyHashes>,
}

/// Which policy decisions may come from (`Decision.policy_hash`), so that endpoints
/// loaded with different policies never answer alternately.
///
/// With a list (`verifier.policy_hashes`, for a rollout: the old and the new), only those.
/// Without one, the first answer's hash; a decision under another is not used: it is
/// logged, counted (`teesql_sidecar_verifier_policy_mismatches_total`) and asked again of
/// the next endpoint. When no endpoint that answers still decides under the expected
/// hash and all those that do agree on one new hash (a reload or rollout that reached
/// every endpoint), that hash becomes the expected one: a change everywhere is followed,
/// a mix never is.
#[derive(Debug, Default)]
pub struct PolicyHashes {
    accepted: Vec<String>,
    expected: Mutex<Option<String>>,
    mismatches: prometheus_client::metrics::counter::Counter,
}

impl PolicyHashes {
    /// Whether a decision under `hash` may be used; records the first hash seen.
    fn admits(&self, hash: &str) -> bool {
        if !self.accepted.is_empty() {
            return self.accepted.iter().any(|h| h == hash);
        }
        let mut expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        match expected.as_deref() {
            Some(e) => e == hash,
            None => {
                tracing::info!(policy_hash = hash, "the verifier decides under this policy");
                *expected = Some(hash.to_string());
                true
            }
        }
    }

    /// Follow a policy every answering endpoint has moved to (never with a list).
    fn follow(&self, hash: &str) -> bool {
        if !self.accepted.is_empty() {
            return false;
        }
        let mut expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        tracing::warn!(
            was = expected.as_deref().unwrap_or(""),
            now = hash,
            "every verifier endpoint that answers decides under a new policy; following it"
        );
        *expected = Some(hash.to_string());
        true
    }

    fn expected(&self) -> String {
        if !self.accepted.is_empty() {
            return self.accepted.join(" or ");
        }
        let expected = self.expected.lock().unwrap_or_else(|e| e.into_inner());
        expected.clone().unwrap_or_default()
    }
}

#[derive(Debug)]
struct Endpoint {
    url: String,
    grpc: Grpc<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
}

/// Why a [`VerifierClient`] cannot be made from its URLs and trust.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifierClientError {
    /// The URL list is empty, too long or repeats a URL.
    #[error(transparent)]
    Urls(teesql_proto::transport::TransportError),
    /// One URL cannot be used as it is trusted (or does not parse).
    #[error("verifier url {0}")]
    Endpoint(#[source] teesql_proto::transport::TransportError),
}

/// The verifier could not decide.
#[derive(Debug, Clone, thiserror::Error)]
#[error("verifier at {url}: {detail}")]
pub struct VerifierUnavailable {
    /// The verifier URL list as configured (every endpoint, comma-separated).
    pub url: String,
    /// Each endpoint's failure, `; `-separated: a gRPC status, no answer in time, or a
    /// decision under an unexpected policy hash.
    pub detail: String,
}

/// Whether another endpoint may answer where this one did not (the request is fine; the
/// endpoint or the way to it is not).
fn endpoint_failure(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable
            | Unknown
            | Internal
            | ResourceExhausted
            | Cancelled
            | DeadlineExceeded
            | Aborted
    )
}

impl VerifierClient {
    /// Connects lazily: a verifier that is down at start-up is retried on each call.
    /// `urls`: one URL or several, comma-separated; each `http://` (loopback only),
    /// `https://` (trusted by `trust`) or `unix://`.
    pub fn new(
        urls: &str,
        trust: Option<&ServerTrust>,
        timeout: Duration,
    ) -> Result<Self, VerifierClientError> {
        let mut endpoints = Vec::new();
        for url in teesql_proto::transport::split_urls(urls).map_err(VerifierClientError::Urls)? {
            let channel = teesql_proto::transport::connect_lazy(
                url,
                trust,
                timeout.min(Duration::from_secs(2)),
                timeout,
            )
            .map_err(VerifierClientError::Endpoint)?;
            endpoints.push(Endpoint {
                url: url.to_string(),
                grpc: Grpc::new(channel.clone()),
                health: tonic_health::pb::health_client::HealthClient::new(channel),
            });
        }
        Ok(Self {
            endpoints: endpoints.into(),
            next: Arc::new(AtomicUsize::new(0)),
            timeout,
            url: urls.to_string(),
            policy: Arc::default(),
        })
    }

    /// Use decisions only under these policy hashes (`sha256:<hex>`, as decisions carry
    /// them); empty: under the first one seen. Mismatches are counted on `mismatches`.
    pub fn with_policy_hashes(
        mut self,
        accepted: Vec<String>,
        mismatches: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.policy = Arc::new(PolicyHashes {
            accepted,
            expected: Mutex::new(None),
            mismatches,
        });
        self
    }

    /// The URL list as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Ask for a decision on a peer; errors and timeouts are `Err`, never an allow.
    pub async fn verify_peer(
        &self,
        req: VerifyPeerRequest,
    ) -> Result<Decision, VerifierUnavailable> {
        self.decision(|mut grpc| {
            let req = req.clone();
            async move { grpc.verify_peer(req).await }
        })
        .await
    }

    /// Ask for a decision on a leader manifest; errors and timeouts are `Err`.
    pub async fn verify_manifest(
        &self,
        req: VerifyManifestRequest,
    ) -> Result<Decision, VerifierUnavailable> {
        self.decision(|mut grpc| {
            let req = req.clone();
            async move { grpc.verify_manifest(req).await }
        })
        .await
    }

    /// One decision within the time limit, from the first endpoint (round-robin) that
    /// gives one. Each endpoint gets an equal share of the time left, so one that hangs
    /// leaves time for the others.
    async fn decision<F, Fut>(&self, call: F) -> Result<Decision, VerifierUnavailable>
    where
        F: Fn(Grpc<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Decision>, tonic::Status>>,
    {
        let n = self.endpoints.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut failures = Vec::new();
        // Decisions under another policy than expected, by endpoint.
        let mut mismatched: Vec<(&str, Decision)> = Vec::new();
        for k in 0..n {
            let endpoint = &self.endpoints[(first + k) % n];
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let share = left / u32::try_from(n - k).unwrap_or(1);
            if share.is_zero() {
                break;
            }
            match tokio::time::timeout(share, call(endpoint.grpc.clone())).await {
                Ok(Ok(resp)) => {
                    let decision = resp.into_inner();
                    if !self.policy.admits(&decision.policy_hash) {
                        self.policy.mismatches.inc();
                        tracing::warn!(
                            endpoint = %endpoint.url,
                            policy_hash = %decision.policy_hash,
                            expected = %self.policy.expected(),
                            "a verifier endpoint decided under another policy; asking the next"
                        );
                        mismatched.push((&endpoint.url, decision));
                        continue;
                    }
                    if !failures.is_empty() {
                        tracing::warn!(
                            answered = %endpoint.url,
                            failed = %failures.join("; "),
                            "a verifier endpoint failed; another answered"
                        );
                    }
                    return Ok(decision);
                }
                Ok(Err(status)) if endpoint_failure(status.code()) => failures.push(format!(
                    "{}: {:?}: {}",
                    endpoint.url,
                    status.code(),
                    status.message()
                )),
                Ok(Err(status)) => {
                    return Err(self.unavailable(format!(
                        "{}: {:?}: {}",
                        endpoint.url,
                        status.code(),
                        status.message()
                    )));
                }
                Err(_) => failures.push(format!("{}: no decision within {share:?}", endpoint.url)),
            }
        }
        // No endpoint answered under the expected policy. If all that answered agree on
        // one new policy, it reached every endpoint that is up: follow it.
        if let Some((_, last)) = mismatched.last()
            && mismatched
                .iter()
                .all(|(_, d)| d.policy_hash == last.policy_hash)
            && self.policy.follow(&last.policy_hash)
            && let Some((_, decision)) = mismatched.pop()
        {
            return Ok(decision);
        }
        for (url, d) in &mismatched {
            failures.push(format!(
                "{url}: decided under policy {} where {} was expected",
                d.policy_hash,
                self.policy.expected()
            ));
        }
        if failures.is_empty() {
            failures.push(format!("no decision within {:?}", self.timeout));
        }
        Err(self.unavailable(failures.join("; ")))
    }

    /// The `WatchPolicies` stream of the first endpoint (in the configured order) that
    /// gives one: the policy hash now, then each change.
    pub async fn watch_policies(
        &self,
    ) -> Result<tonic::Streaming<teesql_proto::v1::PolicyChange>, VerifierUnavailable> {
        // In the configured order, from the first: the decisions' round-robin is not
        // moved by the follower.
        let mut failures = Vec::new();
        for endpoint in self.endpoints.iter() {
            let mut grpc = endpoint.grpc.clone();
            match tokio::time::timeout(
                self.timeout,
                grpc.watch_policies(teesql_proto::v1::WatchPoliciesRequest {}),
            )
            .await
            {
                Ok(Ok(stream)) => return Ok(stream.into_inner()),
                Ok(Err(status)) => failures.push(format!(
                    "{}: {:?}: {}",
                    endpoint.url,
                    status.code(),
                    status.message()
                )),
                Err(_) => failures.push(format!("{}: no answer in time", endpoint.url)),
            }
        }
        Err(self.unavailable(failures.join("; ")))
    }

    /// gRPC health check, all endpoints at once: `Ok` when at least one serves; else why
    /// none does.
    pub async fn check_health(&self) -> Result<(), VerifierUnavailable> {
        let mut checks = tokio::task::JoinSet::new();
        for e in self.endpoints.iter() {
            let mut health = e.health.clone();
            let url = e.url.clone();
            checks.spawn(async move {
                let req = tonic_health::pb::HealthCheckRequest {
                    service: "teesql.verifier.v1.Verifier".into(),
                };
                let serving =
                    tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
                match tokio::time::timeout(Duration::from_secs(2), health.check(req)).await {
                    Ok(Ok(r)) if r.get_ref().status == serving => Ok(()),
                    Ok(Ok(r)) => Err(format!("{url}: not serving ({})", r.get_ref().status)),
                    Ok(Err(s)) => Err(format!("{url}: {}", s.message())),
                    Err(_) => Err(format!("{url}: no answer within 2 s")),
                }
            });
        }
        let mut failures = Vec::new();
        while let Some(done) = checks.join_next().await {
            match done {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(format!("health check task: {e}")),
            }
        }
        Err(self.unavailable(failures.join("; ")))
    }

    fn unavailable(&self, detail: String) -> VerifierUnavailable {
        VerifierUnavailable {
            url: self.url.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(profile: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../policies")
            .join(profile)
    }

    #[test]
    fn one_way_to_trust_a_verifier_and_its_policy_loaded_at_start() {
        let attested = TrustSettings {
            identity_policy_dir: Some(policies("teesql")),
            ..TrustSettings::default()
        };
        let trust = attested.resolve(&teesql_proto::settings::NoEnv).unwrap();
        assert!(matches!(trust, Some(ServerTrust::Attested(_))), "{trust:?}");

        let both = TrustSettings {
            cert_sha256: Some("ab".repeat(32)),
            ..attested.clone()
        };
        let e = both
            .resolve(&teesql_proto::settings::NoEnv)
            .unwrap_err()
            .to_string();
        assert!(e.contains("give one way"), "{e}");

        let missing = TrustSettings {
            identity_policy_dir: Some("/nonexistent/policies".into()),
            ..TrustSettings::default()
        };
        let e = missing
            .resolve(&teesql_proto::settings::NoEnv)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("verifier_identity_policy_dir /nonexistent/policies"),
            "{e}"
        );

        // Each caller names its own settings; a value is shown as given.
        let flag = |k: &str| format!("--verifier-{}", k.replace('_', "-"));
        let e = TrustSettings {
            identity_policy_dir: Some("/etc/verifier_policies".into()),
            ..TrustSettings::default()
        }
        .resolve_as(&teesql_proto::settings::NoEnv, &flag)
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("--verifier-identity-policy-dir /etc/verifier_policies: "),
            "{e}"
        );

        let root_alone = TrustSettings {
            identity_dev_trust_root: Some("/x.der".into()),
            ..TrustSettings::default()
        };
        let e = root_alone
            .resolve(&teesql_proto::settings::NoEnv)
            .unwrap_err()
            .to_string();
        assert!(e.contains("need verifier_identity_policy_dir"), "{e}");

        // The environment fills what the file leaves out; the file wins where both speak.
        let env = [
            ("TEESQL_VERIFIER_IDENTITY_POLICY_DIR", "/from/env"),
            ("TEESQL_VERIFIER_IDENTITY_DEV_TRUST_ROOT", "/env-root.der"),
        ];
        let merged = TrustSettings {
            identity_policy_dir: Some("/from/file".into()),
            ..TrustSettings::default()
        }
        .over(TrustSettings::from_env(
            &env,
            &mut teesql_proto::settings::Problems::new(),
        ));
        assert_eq!(merged.identity_policy_dir, Some("/from/file".into()));
        assert_eq!(merged.identity_dev_trust_root, Some("/env-root.der".into()));
    }

    #[test]
    fn a_profile_without_the_verifier_purpose_trusts_no_verifier() {
        let dir = std::env::temp_dir().join(format!("teesql-no-verifier-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["lib.rego", "quote.rego", "data.json"] {
            std::fs::copy(policies("teesql").join(file), dir.join(file)).unwrap();
        }
        let e = TrustSettings {
            identity_policy_dir: Some(dir.clone()),
            ..TrustSettings::default()
        }
        .resolve(&teesql_proto::settings::NoEnv)
        .unwrap_err()
        .to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.contains("no purpose \"verifier\""), "{e}");
    }
}

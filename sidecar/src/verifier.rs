//! The sidecar's client of the verifier service. Every handshake decision is the
//! verifier's; when it cannot be asked in time, the answer is no (fail closed).

use std::time::Duration;

use teesql_proto::transport::ServerTrust;
use teesql_proto::v1::verifier_client::VerifierClient as Grpc;
use teesql_proto::v1::{Decision, VerifyManifestRequest, VerifyPeerRequest};
use tonic::transport::Channel;

/// A cheap-to-clone handle on the verifier.
#[derive(Debug, Clone)]
pub struct VerifierClient {
    grpc: Grpc<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    timeout: Duration,
    url: String,
}

/// The verifier could not decide.
#[derive(Debug, Clone, thiserror::Error)]
#[error("verifier at {url}: {detail}")]
pub struct VerifierUnavailable {
    pub url: String,
    pub detail: String,
}

impl VerifierClient {
    /// Connects lazily: a verifier that is down at start-up is retried on each call.
    /// `http://` (loopback only), `https://` (trusted by `trust`) or `unix://`.
    pub fn new(url: &str, trust: Option<&ServerTrust>, timeout: Duration) -> Result<Self, String> {
        let channel = teesql_proto::transport::connect_lazy(
            url,
            trust,
            timeout.min(Duration::from_secs(2)),
            timeout,
        )
        .map_err(|e| format!("verifier url {e}"))?;
        Ok(Self {
            grpc: Grpc::new(channel.clone()),
            health: tonic_health::pb::health_client::HealthClient::new(channel),
            timeout,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Ask for a decision on a peer; errors and timeouts are `Err`, never an allow.
    pub async fn verify_peer(
        &self,
        req: VerifyPeerRequest,
    ) -> Result<Decision, VerifierUnavailable> {
        let mut grpc = self.grpc.clone();
        self.decision(grpc.verify_peer(req)).await
    }

    /// Ask for a decision on a leader manifest; errors and timeouts are `Err`.
    pub async fn verify_manifest(
        &self,
        req: VerifyManifestRequest,
    ) -> Result<Decision, VerifierUnavailable> {
        let mut grpc = self.grpc.clone();
        self.decision(grpc.verify_manifest(req)).await
    }

    /// One call's decision within the time limit; anything else is unavailability.
    async fn decision(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<Decision>, tonic::Status>>,
    ) -> Result<Decision, VerifierUnavailable> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                Err(self.unavailable(format!("{:?}: {}", status.code(), status.message())))
            }
            Err(_) => Err(self.unavailable(format!("no decision within {:?}", self.timeout))),
        }
    }

    /// gRPC health check of the verifier.
    pub async fn check_health(&self) -> Result<(), VerifierUnavailable> {
        let mut health = self.health.clone();
        let req = tonic_health::pb::HealthCheckRequest {
            service: "teesql.verifier.v1.Verifier".into(),
        };
        match tokio::time::timeout(Duration::from_secs(2), health.check(req)).await {
            Ok(Ok(r))
                if r.get_ref().status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
            {
                Ok(())
            }
            Ok(Ok(r)) => Err(self.unavailable(format!("not serving ({})", r.get_ref().status))),
            Ok(Err(s)) => Err(self.unavailable(s.message().to_string())),
            Err(_) => Err(self.unavailable("no answer within 2 s".into())),
        }
    }

    fn unavailable(&self, detail: String) -> VerifierUnavailable {
        VerifierUnavailable {
            url: self.url.clone(),
            detail,
        }
    }
}

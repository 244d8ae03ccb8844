//! The gRPC face of the service: `teesql.verifier.v1.Verifier`, `PolicyAdmin`,
//! `grpc.health.v1` and server reflection (so generic clients such as grpcurl or
//! Python grpcio can call it without the .proto file).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use teesql_proto::v1::policy_admin_server::{PolicyAdmin, PolicyAdminServer};
use teesql_proto::v1::verifier_server::{Verifier, VerifierServer};
use teesql_proto::v1::{
    Decision, EvaluatePolicyRequest, GetPolicyRequest, GetPolicyResponse, ListPoliciesRequest,
    ListPoliciesResponse, PolicyFileInfo, Reason, ReloadPoliciesRequest, ReloadPoliciesResponse,
    VerifyManifestRequest, VerifyPeerRequest, VerifyQuoteRequest, VerifyReportRequest,
    verify_quote_request,
};
use tonic::{Request, Response, Status};

use super::{DecisionService, PeerRequest, QuoteInput, RequestError, ServiceDecision};
use crate::claims::ConnectionClaims;

/// Largest request accepted (a chain of 8 certificates of 1 MiB extensions).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The gRPC services over one [`DecisionService`].
#[derive(Debug, Clone)]
pub struct GrpcVerifier {
    service: Arc<DecisionService>,
}

impl GrpcVerifier {
    pub fn new(service: Arc<DecisionService>) -> Self {
        Self { service }
    }
}

fn to_proto(d: ServiceDecision) -> Decision {
    Decision {
        allow: d.allow,
        reasons: d
            .reasons
            .into_iter()
            .map(|r| Reason {
                code: r.code,
                message: r.message,
            })
            .collect(),
        policy_id: d.policy_id,
        policy_hash: d.policy_hash,
        claims_json: d.claims_json,
        cached: d.cached,
        valid_until: i64::try_from(d.valid_until).unwrap_or(i64::MAX),
    }
}

fn status(e: RequestError) -> Status {
    match e {
        RequestError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
    }
}

type Answer = Result<Response<Decision>, Status>;

#[tonic::async_trait]
impl Verifier for GrpcVerifier {
    async fn verify_peer(&self, req: Request<VerifyPeerRequest>) -> Answer {
        let r = req.into_inner();
        let decision = self
            .service
            .verify_peer(PeerRequest {
                purpose: r.purpose,
                chain: r.chain,
                connection: ConnectionClaims {
                    user: r.user,
                    database: r.database,
                    sni: r.sni,
                    client_addr: r.client_addr,
                    alpn: r.alpn,
                    expected_mrtds: r.expected_mrtds,
                    expected_compose_hashes: r.expected_compose_hashes,
                    expected_app_ids: r.expected_app_ids,
                },
            })
            .await
            .map_err(status)?;
        Ok(Response::new(to_proto(decision)))
    }

    async fn verify_quote(&self, req: Request<VerifyQuoteRequest>) -> Answer {
        let r = req.into_inner();
        let input = match r.evidence {
            Some(verify_quote_request::Evidence::Quote(quote)) => QuoteInput::Quote {
                quote,
                event_log: r.event_log,
            },
            Some(verify_quote_request::Evidence::Attestation(blob)) => {
                QuoteInput::Attestation(blob)
            }
            None => {
                return Err(Status::invalid_argument(
                    "evidence: one of quote or attestation is required",
                ));
            }
        };
        let expected = (!r.expected_report_data.is_empty()).then_some(r.expected_report_data);
        let decision = self
            .service
            .verify_quote(&r.purpose, input, expected)
            .await
            .map_err(status)?;
        Ok(Response::new(to_proto(decision)))
    }

    async fn verify_manifest(&self, req: Request<VerifyManifestRequest>) -> Answer {
        let r = req.into_inner();
        let decision = self
            .service
            .verify_manifest(&r.manifest, r.leader_chain, r.expected_signers)
            .await
            .map_err(status)?;
        Ok(Response::new(to_proto(decision)))
    }

    async fn verify_report(&self, req: Request<VerifyReportRequest>) -> Answer {
        let r = req.into_inner();
        let decision = self
            .service
            .verify_report(&r.report_json)
            .await
            .map_err(status)?;
        Ok(Response::new(to_proto(decision)))
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[tonic::async_trait]
impl PolicyAdmin for GrpcVerifier {
    async fn list_policies(
        &self,
        _: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        let p = self.service.policies();
        Ok(Response::new(ListPoliciesResponse {
            policy_hash: p.hash().to_string(),
            dirs: p.dirs().iter().map(|d| d.display().to_string()).collect(),
            purposes: p.purposes(),
            files: p
                .files()
                .iter()
                .map(|f| PolicyFileInfo {
                    path: f.display_path.clone(),
                    sha256: sha256_hex(f.contents.as_bytes()),
                    size: f.contents.len() as u64,
                })
                .collect(),
        }))
    }

    async fn get_policy(
        &self,
        req: Request<GetPolicyRequest>,
    ) -> Result<Response<GetPolicyResponse>, Status> {
        let path = req.into_inner().path;
        let p = self.service.policies();
        let f = p
            .files()
            .iter()
            .find(|f| f.display_path == path)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "path: no policy file {path:?} (see ListPolicies for the paths)"
                ))
            })?;
        Ok(Response::new(GetPolicyResponse {
            path,
            sha256: sha256_hex(f.contents.as_bytes()),
            contents: f.contents.clone(),
        }))
    }

    async fn evaluate_policy(&self, req: Request<EvaluatePolicyRequest>) -> Answer {
        let r = req.into_inner();
        let decision = self
            .service
            .evaluate(&r.purpose, &r.claims_json)
            .map_err(status)?;
        Ok(Response::new(to_proto(decision)))
    }

    async fn reload_policies(
        &self,
        _: Request<ReloadPoliciesRequest>,
    ) -> Result<Response<ReloadPoliciesResponse>, Status> {
        match self.service.reload().await {
            Ok((hash, changed)) => Ok(Response::new(ReloadPoliciesResponse {
                policy_hash: hash,
                changed,
            })),
            Err(e) => Err(Status::failed_precondition(format!(
                "the new policy set was rejected and the current one ({}) keeps serving: {e}",
                self.service.policies().hash()
            ))),
        }
    }
}

/// Serve every gRPC service on `listener` until `shutdown` completes, then drain.
pub async fn serve(
    service: Arc<DecisionService>,
    listener: tokio::net::TcpListener,
    request_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let grpc = GrpcVerifier::new(service);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<VerifierServer<GrpcVerifier>>().await;
    health
        .set_serving::<PolicyAdminServer<GrpcVerifier>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(teesql_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| tracing::error!(error = %e, "reflection v1 unavailable"))
        .ok();
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| tracing::error!(error = %e, "reflection v1alpha unavailable"))
        .ok();

    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .timeout(request_timeout)
        .add_service(VerifierServer::new(grpc.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(PolicyAdminServer::new(grpc).max_decoding_message_size(MAX_MESSAGE))
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            // Draining: tell health checkers (and load balancers) to send no more.
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<VerifierServer<GrpcVerifier>>()
                .await;
        })
        .await
}

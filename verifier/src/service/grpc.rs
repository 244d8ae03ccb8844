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

use futures_util::FutureExt;
use teesql_proto::transport::{Peer, Stream};

use super::config::{AdminAccess, ServeConfig};
use super::server::GrpcListener;
use super::{
    DecisionService, PeerRequest, QuoteInput, RequestError, ServiceDecision, TokenRequest,
};
use crate::claims::ConnectionClaims;

/// How gRPC is served (from [`ServeConfig`]).
#[derive(Debug, Clone)]
pub struct GrpcOptions {
    /// Time limit of one call, after which tonic cancels it (`request_timeout_secs`).
    pub request_timeout: Duration,
    /// TLS for the TCP listener: the operator's certificate or the RA-TLS one; `None` =
    /// plaintext (or a unix socket).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Who may call PolicyAdmin: `UNAUTHENTICATED` without the token, `PERMISSION_DENIED`
    /// for a remote caller when there is no token.
    pub admin: AdminAccess,
    /// Serve gRPC server reflection (v1 and v1alpha).
    pub reflection: bool,
    /// Largest request decoded, bytes; a larger one is answered `RESOURCE_EXHAUSTED`.
    pub max_message_bytes: usize,
    /// Requests served at once on one connection; further ones wait.
    pub concurrency_per_connection: usize,
}

impl GrpcOptions {
    /// The gRPC part of a resolved configuration; `tls` is the operator's certificate
    /// only ([`super::server::Verifier::attest`] sets the RA-TLS one).
    pub fn from_config(c: &ServeConfig) -> Self {
        Self {
            request_timeout: c.request_timeout,
            tls: c.tls.clone(),
            admin: c.admin.clone(),
            reflection: c.reflection,
            max_message_bytes: c.max_message_bytes,
            concurrency_per_connection: c.concurrency_per_connection,
        }
    }
}

/// A TLS handshake must finish within this (before any request is read).
pub const TLS_HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// TLS handshakes in progress at most; a connection past it is closed at once, so a
/// flood of silent peers holds at most this many tasks for the deadline.
const MAX_TLS_HANDSHAKES: usize = 256;

/// The gRPC services over one [`DecisionService`].
#[derive(Debug, Clone)]
pub struct GrpcVerifier {
    service: Arc<DecisionService>,
    admin: AdminAccess,
}

impl GrpcVerifier {
    /// The `Verifier` and `PolicyAdmin` handlers over `service`, PolicyAdmin gated by
    /// `admin` (a bearer token, or local callers only).
    pub fn new(service: Arc<DecisionService>, admin: AdminAccess) -> Self {
        Self { service, admin }
    }

    /// PolicyAdmin's gate: the bearer token when one is configured, else a caller on
    /// this machine.
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        match &self.admin {
            AdminAccess::Token(expected) => {
                let given = req
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(|t| Sha256::digest(t.trim().as_bytes()));
                match given {
                    Some(d) if d.as_slice() == expected => Ok(()),
                    _ => Err(Status::unauthenticated(
                        "PolicyAdmin needs `authorization: Bearer <token>` with the verifier's admin token",
                    )),
                }
            }
            AdminAccess::LocalOnly => {
                if req.extensions().get::<Peer>().is_some_and(Peer::is_local) {
                    Ok(())
                } else {
                    Err(Status::permission_denied(
                        "PolicyAdmin answers only over the unix socket or loopback unless the verifier has an admin token",
                    ))
                }
            }
        }
    }
}

/// Run a handler; a panic in it becomes INTERNAL for this call, and the service keeps
/// serving everyone else.
async fn guarded<T>(
    what: &'static str,
    f: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    match std::panic::AssertUnwindSafe(f).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(call = what, panic = %detail, "a request handler panicked; answering INTERNAL");
            Err(Status::internal("internal error"))
        }
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
        token: d.token,
        decision_id: d.decision_id,
        policy_revision: d.policy_revision,
        grants: d.grants.map(|g| teesql_proto::v1::Grants {
            roles: g.roles,
            attributes: g.attributes.into_iter().collect(),
        }),
    }
}

fn status(e: RequestError) -> Status {
    match e {
        RequestError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
    }
}

type Answer = Result<Response<Decision>, Status>;

/// The `WatchPolicies` stream: the current hash, then each change.
type PolicyStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<teesql_proto::v1::PolicyChange, Status>> + Send>,
>;

#[tonic::async_trait]
impl Verifier for GrpcVerifier {
    type WatchPoliciesStream = PolicyStream;

    async fn watch_policies(
        &self,
        _req: Request<teesql_proto::v1::WatchPoliciesRequest>,
    ) -> Result<Response<Self::WatchPoliciesStream>, Status> {
        let rx = self.service.watch_policies();
        let draining = self.service.draining();
        // The first item is the hash now; then one per change (a subscriber that falls
        // behind skips to the latest, which is all it needs). The stream ends when the
        // server drains, so that the drain can finish.
        let stream = futures_util::stream::unfold(
            (rx, draining, true),
            |(mut rx, mut draining, first)| async move {
                if *draining.borrow() {
                    return None;
                }
                if !first {
                    tokio::select! {
                        changed = rx.changed() => changed.ok()?,
                        _ = draining.wait_for(|d| *d) => return None,
                    }
                }
                let (hash, generation) = rx.borrow_and_update().clone();
                Some((
                    Ok(teesql_proto::v1::PolicyChange {
                        policy_hash: hash,
                        tcb_generation: generation,
                    }),
                    (rx, draining, false),
                ))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify_peer(&self, req: Request<VerifyPeerRequest>) -> Answer {
        guarded("verify_peer", async move {
            let r = req.into_inner();
            let token = TokenRequest::with_nonce(r.nonce)
                .and_then(|t| t.with_decision_id(r.decision_id))
                .map(|t| t.with_sign(r.sign))
                .map_err(status)?;
            let decision = self
                .service
                .verify_peer_with(
                    PeerRequest {
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
                    },
                    token,
                )
                .await
                .map_err(status)?;
            Ok(Response::new(to_proto(decision)))
        })
        .await
    }

    async fn verify_quote(&self, req: Request<VerifyQuoteRequest>) -> Answer {
        guarded("verify_quote", async move {
            let r = req.into_inner();
            #[cfg(test)]
            if r.purpose == tests::PANIC_PURPOSE {
                panic!("a test asked this handler to panic");
            }
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
            let token = TokenRequest::with_nonce(r.nonce)
                .and_then(|t| t.with_decision_id(r.decision_id))
                .map(|t| t.with_sign(r.sign))
                .map_err(status)?;
            let decision = self
                .service
                .verify_quote_with(&r.purpose, input, expected, token)
                .await
                .map_err(status)?;
            Ok(Response::new(to_proto(decision)))
        })
        .await
    }

    async fn verify_manifest(&self, req: Request<VerifyManifestRequest>) -> Answer {
        guarded("verify_manifest", async move {
            let r = req.into_inner();
            let token = TokenRequest::with_nonce(r.nonce)
                .and_then(|t| t.with_decision_id(r.decision_id))
                .map(|t| t.with_sign(r.sign))
                .map_err(status)?;
            let decision = self
                .service
                .verify_manifest_with(&r.manifest, r.leader_chain, r.expected_signers, token)
                .await
                .map_err(status)?;
            Ok(Response::new(to_proto(decision)))
        })
        .await
    }

    async fn verify_report(&self, req: Request<VerifyReportRequest>) -> Answer {
        guarded("verify_report", async move {
            let r = req.into_inner();
            let token = TokenRequest::with_nonce(r.nonce)
                .and_then(|t| t.with_decision_id(r.decision_id))
                .map(|t| t.with_sign(r.sign))
                .map_err(status)?;
            let decision = self
                .service
                .verify_report_with(&r.report_json, token)
                .await
                .map_err(status)?;
            Ok(Response::new(to_proto(decision)))
        })
        .await
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[tonic::async_trait]
impl PolicyAdmin for GrpcVerifier {
    async fn list_policies(
        &self,
        req: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.admit(&req)?;
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
        self.admit(&req)?;
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
        self.admit(&req)?;
        let r = req.into_inner();
        let decision = self
            .service
            .evaluate(&r.purpose, &r.claims_json)
            .map_err(status)?;
        Ok(Response::new(to_proto(decision)))
    }

    async fn reload_policies(
        &self,
        req: Request<ReloadPoliciesRequest>,
    ) -> Result<Response<ReloadPoliciesResponse>, Status> {
        self.admit(&req)?;
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

/// Connections from `listener` (TLS handshakes done concurrently, each within a
/// deadline, so a slow client holds up no one), for tonic.
fn incoming(
    listener: GrpcListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<Stream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_TLS_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = accept(&listener) => a,
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match (&acceptor, stream) {
                (Some(acceptor), Stream::Tcp(tcp)) => {
                    let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                        tracing::warn!(
                            peer = ?tcp.peer_addr().ok(),
                            "gRPC: {MAX_TLS_HANDSHAKES} TLS handshakes in progress; closing a new connection"
                        );
                        continue;
                    };
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        let _permit = permit;
                        let peer = tcp.peer_addr().ok();
                        match tokio::time::timeout(TLS_HANDSHAKE_DEADLINE, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(Ok(Stream::ServerTls(Box::new(tls)))).await;
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(?peer, error = %e, "gRPC TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(?peer, "gRPC TLS handshake timed out"),
                        }
                    });
                }
                (_, s) => {
                    if tx.send(Ok(s)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept(listener: &GrpcListener) -> std::io::Result<Stream> {
    match listener {
        GrpcListener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
        GrpcListener::Unix(l, _) => Ok(Stream::Unix(l.accept().await?.0)),
    }
}

/// tonic answers a request over the size limit with OUT_OF_RANGE; gRPC's own servers
/// (and the clients) expect RESOURCE_EXHAUSTED, with the limit named.
fn size_limit_status(
    limit: usize,
) -> impl Fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> + Clone {
    move |mut resp| {
        let h = resp.headers();
        let too_large = h.get("grpc-status").is_some_and(|v| v == "11")
            && h.get("grpc-message")
                .and_then(|m| m.to_str().ok())
                .is_some_and(|m| {
                    m.contains("message%20length%20too%20large")
                        || m.contains("message length too large")
                });
        if too_large {
            let h = resp.headers_mut();
            h.insert("grpc-status", http::HeaderValue::from_static("8"));
            if let Ok(v) = http::HeaderValue::from_str(
                &format!("request too large: the limit is {limit} bytes (max_message_kib)")
                    .replace(' ', "%20"),
            ) {
                h.insert("grpc-message", v);
            }
        }
        resp
    }
}

/// Serve every gRPC service on `listener` until `shutdown` completes, then drain.
pub async fn serve(
    service: Arc<DecisionService>,
    listener: GrpcListener,
    opts: GrpcOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let drain = service.clone();
    let grpc = GrpcVerifier::new(service, opts.admin.clone());
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
    let (reflection_v1, reflection_v1alpha) = if opts.reflection {
        (
            reflection()
                .build_v1()
                .map_err(|e| tracing::error!(error = %e, "reflection v1 unavailable"))
                .ok(),
            reflection()
                .build_v1alpha()
                .map_err(|e| tracing::error!(error = %e, "reflection v1alpha unavailable"))
                .ok(),
        )
    } else {
        (None, None)
    };
    let limit = opts.max_message_bytes;
    tonic::transport::Server::builder()
        .timeout(opts.request_timeout)
        .concurrency_limit_per_connection(opts.concurrency_per_connection)
        .layer(tower::util::MapResponseLayer::new(size_limit_status(limit)))
        .add_service(VerifierServer::new(grpc.clone()).max_decoding_message_size(limit))
        .add_service(PolicyAdminServer::new(grpc).max_decoding_message_size(limit))
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming(listener, opts.tls), async move {
            shutdown.await;
            drain.begin_drain();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::ServeSettings;
    use crate::service::server::{Listeners, Verifier as Running};
    use teesql_proto::v1::verifier_client::VerifierClient;

    /// The purpose that makes `verify_quote` panic, in test builds only.
    pub(super) const PANIC_PURPOSE: &str = "test-panic";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_handler_answers_internal_and_the_service_keeps_serving() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let config = ServeConfig::resolve(ServeSettings {
            listen: Some("127.0.0.1:0".into()),
            policy_dirs: Some(vec![root.join("policies/teesql")]),
            offline: Some(true),
            decision_log: Some("off".into()),
            ..ServeSettings::default()
        })
        .unwrap();
        let running = Running::start(&config).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let url = listeners.grpc.url(false);
        let (_stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(running.run(listeners, async {
            let _ = rx.await;
        }));
        let ch = teesql_proto::transport::connect_lazy(
            &url,
            None,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .unwrap();
        let ask = |purpose: &str| {
            let mut c = VerifierClient::new(ch.clone());
            let req = VerifyQuoteRequest {
                purpose: purpose.into(),
                evidence: Some(verify_quote_request::Evidence::Quote(vec![0; 16])),
                ..Default::default()
            };
            async move { c.verify_quote(req).await }
        };
        for _ in 0..3 {
            let e = ask(PANIC_PURPOSE).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::Internal, "{e:?}");
            assert_eq!(e.message(), "internal error", "no detail goes to the peer");
        }
        // The server is alive: a short quote is decided (denied, named).
        let d = ask("quote").await.unwrap().into_inner();
        assert!(!d.allow);
        assert_eq!(d.reasons[0].code, "evidence_malformed");
    }

    #[test]
    fn without_a_token_policy_admin_answers_only_local_callers() {
        let service = {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let config = ServeConfig::resolve(ServeSettings {
                policy_dirs: Some(vec![root.join("policies/teesql")]),
                offline: Some(true),
                decision_log: Some("off".into()),
                ..ServeSettings::default()
            })
            .unwrap();
            let rt = tokio::runtime::Runtime::new().unwrap();
            let _guard = rt.enter();
            config.build().unwrap()
        };
        let g = GrpcVerifier::new(service, AdminAccess::LocalOnly);
        let from = |peer: Option<Peer>| {
            let mut r = Request::new(ListPoliciesRequest {});
            if let Some(p) = peer {
                r.extensions_mut().insert(p);
            }
            g.admit(&r)
        };
        assert!(from(Some(Peer::Unix)).is_ok());
        assert!(
            from(Some(Peer::Tcp {
                addr: Some("127.0.0.1:5".parse().unwrap()),
                tls: false
            }))
            .is_ok()
        );
        let e = from(Some(Peer::Tcp {
            addr: Some("10.1.2.3:5".parse().unwrap()),
            tls: true,
        }))
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            from(None).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }
}

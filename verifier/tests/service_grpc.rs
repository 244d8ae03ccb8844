//! The verifier service over real gRPC on loopback: decisions on recorded quotes with a
//! pinned clock, the appraisal cache, policies swapped while requests flow, a broken
//! policy rejected, manifests, error semantics, health, reflection, metrics, decision log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use teesql_proto::v1::policy_admin_client::PolicyAdminClient;
use teesql_proto::v1::verifier_client::VerifierClient;
use teesql_proto::v1::{
    EvaluatePolicyRequest, GetPolicyRequest, ListPoliciesRequest, ReloadPoliciesRequest,
    VerifyManifestRequest, VerifyPeerRequest, VerifyQuoteRequest, verify_quote_request,
};
use teesql_verifier::manifest::{Manifest, address_of, sign};
use teesql_verifier::service::DecisionService;
use teesql_verifier::service::config::{ServeConfig, ServeSettings};
use teesql_verifier::service::server::{Listeners, Verifier};
use tonic::transport::Channel;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const NOW: u64 = 1_751_000_000;

/// A running service with its own copy of the policies (so tests can edit them).
struct Running {
    addr: std::net::SocketAddr,
    service: Arc<DecisionService>,
    policy_dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    async fn start(extra: impl FnOnce(&mut ServeSettings)) -> Self {
        let policy_dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(root().join("policies/teesql")).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, policy_dir.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        let mut settings = ServeSettings {
            listen: Some("127.0.0.1:0".into()),
            policy_dirs: Some(vec![policy_dir.path().to_path_buf()]),
            collateral_file: Some(root().join("testdata/dcap/tdx_quote_collateral.json")),
            offline: Some(true),
            decision_log: Some("off".into()),
            now: Some(NOW),
            ..ServeSettings::default()
        };
        extra(&mut settings);
        let config = ServeConfig::resolve(settings).unwrap();
        let verifier = Verifier::start(&config).unwrap();
        let service = verifier.service().clone();
        let listeners = Listeners::bind(&config).await.unwrap();
        let addr = listeners.grpc.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            verifier
                .run(listeners, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            service,
            policy_dir,
            _stop: tx,
        }
    }

    async fn channel(&self) -> Channel {
        let url = format!("http://{}", self.addr);
        for _ in 0..100 {
            if let Ok(c) = Channel::from_shared(url.clone()).unwrap().connect().await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("service did not come up on {url}");
    }

    async fn client(&self) -> VerifierClient<Channel> {
        VerifierClient::new(self.channel().await)
    }
}

fn quote_request() -> VerifyQuoteRequest {
    VerifyQuoteRequest {
        purpose: "quote".into(),
        evidence: Some(verify_quote_request::Evidence::Quote(
            std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap(),
        )),
        ..VerifyQuoteRequest::default()
    }
}

#[tokio::test]
async fn recorded_quote_allows_then_hits_the_cache() {
    let svc = Running::start(|_| {}).await;
    let mut c = svc.client().await;
    let first = c.verify_quote(quote_request()).await.unwrap().into_inner();
    assert!(first.allow, "{:?}", first.reasons);
    assert!(!first.cached);
    assert_eq!(first.policy_id, "teesql.quote");
    assert_eq!(first.valid_until, 1_752_919_235);
    let claims: serde_json::Value = serde_json::from_str(&first.claims_json).unwrap();
    assert_eq!(claims["tdx"]["tcb_status"], "UpToDate");
    assert_eq!(claims["now"], NOW);

    let second = c.verify_quote(quote_request()).await.unwrap().into_inner();
    assert!(second.allow && second.cached);
    assert_eq!(second.policy_hash, first.policy_hash);
}

#[tokio::test]
async fn invalid_requests_name_the_field() {
    let svc = Running::start(|_| {}).await;
    let mut c = svc.client().await;
    let cases: Vec<(tonic::Status, &str)> = vec![
        (
            c.verify_peer(VerifyPeerRequest::default())
                .await
                .unwrap_err(),
            "purpose",
        ),
        (
            c.verify_peer(VerifyPeerRequest {
                purpose: "nonsense".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            "purpose: no policy for \"nonsense\"",
        ),
        (
            c.verify_peer(VerifyPeerRequest {
                purpose: "sidecar".into(),
                chain: vec![vec![0x30]; 9],
                ..Default::default()
            })
            .await
            .unwrap_err(),
            "chain",
        ),
        (
            c.verify_quote(VerifyQuoteRequest::default())
                .await
                .unwrap_err(),
            "evidence",
        ),
        (
            c.verify_quote(VerifyQuoteRequest {
                expected_report_data: vec![0; 65],
                ..quote_request()
            })
            .await
            .unwrap_err(),
            "expected_report_data",
        ),
        (
            c.verify_manifest(VerifyManifestRequest::default())
                .await
                .unwrap_err(),
            "manifest",
        ),
        // Text fields are bounded: they would land in claims, answers and the log.
        (
            c.verify_peer(VerifyPeerRequest {
                purpose: "x".repeat(1 << 20),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            "purpose: 1048576 bytes, at most 64",
        ),
        (
            c.verify_peer(VerifyPeerRequest {
                purpose: "sidecar".into(),
                // Under the 4 MiB message limit, over the field's own bound.
                user: "u".repeat(3 << 20),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            "user: 3145728 bytes",
        ),
        (
            c.verify_peer(VerifyPeerRequest {
                purpose: "sidecar".into(),
                client_addr: "a".repeat(1000),
                ..Default::default()
            })
            .await
            .unwrap_err(),
            "client_addr",
        ),
        (
            c.verify_peer(VerifyPeerRequest {
                purpose: "sidecar".into(),
                expected_mrtds: vec!["ab".repeat(48); 1000],
                ..Default::default()
            })
            .await
            .unwrap_err(),
            "expected_mrtds: 1000 entries",
        ),
        (
            c.verify_peer(VerifyPeerRequest {
                purpose: "sidecar".into(),
                expected_mrtds: vec!["ab".repeat(4096)],
                ..Default::default()
            })
            .await
            .unwrap_err(),
            "expected_mrtds: entry 0",
        ),
    ];
    for (status, field) in cases {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn malformed_evidence_is_a_denial_not_an_error() {
    let svc = Running::start(|_| {}).await;
    let mut c = svc.client().await;
    let d = c
        .verify_peer(VerifyPeerRequest {
            purpose: "sidecar".into(),
            chain: vec![b"not a certificate".to_vec()],
            client_addr: "127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!d.allow);
    assert_eq!(d.reasons[0].code, "evidence_malformed");

    let mut truncated = quote_request();
    truncated.evidence = Some(verify_quote_request::Evidence::Quote(vec![4, 0, 2, 0]));
    let d = c.verify_quote(truncated).await.unwrap().into_inner();
    assert_eq!(d.reasons[0].code, "evidence_malformed");

    // No certificate under the production policy: attestation is required.
    let d = c
        .verify_peer(VerifyPeerRequest {
            purpose: "sidecar".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!d.allow);
    assert_eq!(d.reasons[0].code, "client_attestation_required");
}

#[tokio::test]
async fn collateral_source_down_denies_with_a_reason_and_does_not_hang() {
    // Nothing listens on port 9: the fetch fails fast; with a 1 s timeout either way.
    let svc = Running::start(|s| {
        s.collateral_file = None;
        s.offline = Some(false);
        s.pccs_url = Some("http://127.0.0.1:9".into());
        s.fetch_timeout_secs = Some(1);
    })
    .await;
    let mut c = svc.client().await;
    let started = Instant::now();
    let d = c.verify_quote(quote_request()).await.unwrap().into_inner();
    assert!(!d.allow);
    assert_eq!(d.reasons[0].code, "collateral_unavailable");
    assert!(
        d.reasons[0].message.contains("127.0.0.1:9"),
        "{}",
        d.reasons[0].message
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // Not cached: the next request tries again.
    let again = c.verify_quote(quote_request()).await.unwrap().into_inner();
    assert!(!again.cached);
}

#[tokio::test]
async fn policy_swapped_while_requests_flow_takes_effect_without_a_failed_request() {
    let svc = Running::start(|_| {}).await;
    let before = svc.service.policies().hash().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let mut c = svc.client().await;
        let stop = stop.clone();
        let ok = ok.clone();
        workers.push(tokio::spawn(async move {
            let mut hashes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let d = c
                    .verify_quote(quote_request())
                    .await
                    .expect("no request may fail during a policy swap")
                    .into_inner();
                ok.fetch_add(1, Ordering::Relaxed);
                hashes.push((d.policy_hash, d.allow));
            }
            hashes
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Pin a different MRTD: the watcher reloads, and the next decisions deny.
    let data_path = svc.policy_dir.path().join("data.json");
    let mut data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&data_path).unwrap()).unwrap();
    data["teesql"]["pins"]["mrtd"] = serde_json::json!(["ab".repeat(48)]);
    std::fs::write(&data_path, serde_json::to_string_pretty(&data).unwrap()).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while svc.service.policies().hash() == before {
        assert!(
            Instant::now() < deadline,
            "the policy change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = svc.service.policies().hash().to_string();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen_new = false;
    for w in workers {
        for (hash, allow) in w.await.unwrap() {
            assert!(hash == before || hash == after, "{hash}");
            if hash == after {
                seen_new = true;
                assert!(!allow, "decisions under the new policy deny");
            } else {
                assert!(allow);
            }
        }
    }
    assert!(seen_new);
    assert!(ok.load(Ordering::Relaxed) > 10);
}

#[tokio::test]
async fn broken_policy_is_rejected_and_the_old_one_keeps_serving() {
    let svc = Running::start(|_| {}).await;
    let mut admin = PolicyAdminClient::new(svc.channel().await);
    let listed = admin
        .list_policies(ListPoliciesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.purposes.contains(&"sidecar".to_string()));
    assert!(listed.files.iter().any(|f| f.path.ends_with("/quote.rego")));
    let quote_path = listed
        .files
        .iter()
        .find(|f| f.path.ends_with("/quote.rego"))
        .unwrap()
        .path
        .clone();
    let got = admin
        .get_policy(GetPolicyRequest {
            path: quote_path.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.contents.contains("package teesql.quote"));

    std::fs::write(
        svc.policy_dir.path().join("broken.rego"),
        "package teesql.broken\n\nallow if {\n",
    )
    .unwrap();
    let err = admin
        .reload_policies(ReloadPoliciesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("broken.rego"), "{}", err.message());
    assert_eq!(svc.service.policies().hash(), listed.policy_hash);
    let d = svc
        .client()
        .await
        .verify_quote(quote_request())
        .await
        .unwrap()
        .into_inner();
    assert!(d.allow);
    assert_eq!(d.policy_hash, listed.policy_hash);

    // Dry run on the claims of an earlier decision, edited.
    let mut claims: serde_json::Value = serde_json::from_str(&d.claims_json).unwrap();
    claims["tdx"]["debug"] = serde_json::json!(true);
    let dry = admin
        .evaluate_policy(EvaluatePolicyRequest {
            purpose: "quote".into(),
            claims_json: claims.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!dry.allow);
    assert_eq!(dry.reasons[0].code, "debug_td");
    let bad = admin
        .evaluate_policy(EvaluatePolicyRequest {
            purpose: "quote".into(),
            claims_json: "[1]".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("claims_json"));
}

#[tokio::test]
async fn manifests_are_judged_by_pinned_signer_and_time() {
    let key = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    let signer = format!("0x{}", hex::encode(address_of(key.verifying_key())));
    let svc = Running::start(|_| {}).await;
    let data_path = svc.policy_dir.path().join("data.json");
    let mut data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&data_path).unwrap()).unwrap();
    data["teesql"]["manifest_signers"] = serde_json::json!([signer]);
    std::fs::write(&data_path, data.to_string()).unwrap();
    svc.service.reload().await.unwrap();

    let mut m = Manifest::parse(&format!(
        "v=1;cluster=0xbd32b609057a1a4569558a571d535c8f1212b097;leader_instance=ea23198e3419ebbb240571a29d0112d9bcbe69c0;leader_url=https://leader.example:5433;epoch=42;valid_until=1713312000;sig=0x{}",
        "00".repeat(65)
    ))
    .unwrap();
    let mut c = svc.client().await;
    // The golden manifest expired in 2024: denied as expired.
    m.signature = sign(&key, &m).unwrap();
    let d = c
        .verify_manifest(VerifyManifestRequest {
            nonce: Vec::new(),
            decision_id: String::new(),
            sign: false,
            manifest: m.to_txt(),
            leader_chain: vec![],
            expected_signers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        d.reasons
            .iter()
            .map(|r| r.code.as_str())
            .collect::<Vec<_>>(),
        ["manifest_expired"]
    );
    // Still valid: allowed.
    m.valid_until = NOW + 3600;
    m.signature = sign(&key, &m).unwrap();
    let d = c
        .verify_manifest(VerifyManifestRequest {
            nonce: Vec::new(),
            decision_id: String::new(),
            sign: false,
            manifest: m.to_txt(),
            leader_chain: vec![],
            expected_signers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.allow, "{:?}", d.reasons);
    // An older epoch of the same cluster, validly signed, is a rollback once epoch 42 was
    // accepted; a newer one moves the cluster on.
    let ask = |m: &Manifest| VerifyManifestRequest {
        nonce: Vec::new(),
        decision_id: String::new(),
        sign: false,
        manifest: m.to_txt(),
        leader_chain: vec![],
        expected_signers: vec![],
    };
    for (epoch, allowed) in [(41, false), (43, true), (42, false), (43, true)] {
        let mut older = m.clone();
        older.epoch = epoch;
        older.signature = sign(&key, &older).unwrap();
        let d = c.verify_manifest(ask(&older)).await.unwrap().into_inner();
        assert_eq!(d.allow, allowed, "epoch {epoch}: {:?}", d.reasons);
        if !allowed {
            assert_eq!(d.reasons[0].code, "manifest_rolled_back", "{:?}", d.reasons);
        }
    }
    m.epoch = 43;
    // Signed by someone else: denied.
    let other = k256::ecdsa::SigningKey::from_slice(&[0x43; 32]).unwrap();
    m.signature = sign(&other, &m).unwrap();
    let d = c
        .verify_manifest(VerifyManifestRequest {
            nonce: Vec::new(),
            decision_id: String::new(),
            sign: false,
            manifest: m.to_txt(),
            leader_chain: vec![],
            expected_signers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.reasons[0].code, "manifest_signer_not_pinned");
    // Tampered after signing: another signer recovers, denied.
    m.signature = sign(&key, &m).unwrap();
    let tampered = m.to_txt().replace("epoch=43", "epoch=44");
    let d = c
        .verify_manifest(VerifyManifestRequest {
            nonce: Vec::new(),
            decision_id: String::new(),
            sign: false,
            manifest: tampered,
            leader_chain: vec![],
            expected_signers: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!d.allow);
}

#[tokio::test]
async fn health_and_reflection_answer() {
    let svc = Running::start(|_| {}).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(svc.channel().await);
    for service in [
        "",
        "teesql.verifier.v1.Verifier",
        "teesql.verifier.v1.PolicyAdmin",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(svc.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer: {resp:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "teesql.verifier.v1.Verifier",
        "teesql.verifier.v1.PolicyAdmin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
}

#[tokio::test]
async fn decisions_are_counted_and_logged() {
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("decisions.jsonl");
    let lp = log_path.clone();
    let svc = Running::start(move |s| s.decision_log = Some(lp.display().to_string())).await;
    let mut c = svc.client().await;
    c.verify_quote(quote_request()).await.unwrap();
    c.verify_peer(VerifyPeerRequest {
        purpose: "sidecar".into(),
        user: "teesql_read".into(),
        database: "app".into(),
        client_addr: "127.0.0.1:5555".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let metrics = svc.service.metrics().encode();
    for needle in [
        "teesql_verifier_decisions_total{purpose=\"quote\",outcome=\"allow\"} 1",
        "teesql_verifier_decisions_total{purpose=\"sidecar\",outcome=\"deny\"} 1",
        "teesql_verifier_appraisal_cache_total{result=\"miss\"} 2",
        "teesql_verifier_decision_duration_seconds_bucket",
        "teesql_verifier_policy_info{hash=\"sha256:",
        "collateral_fetches_total 0",
        // The one TDX quote needed the full verification; its platform is now known.
        "platform_cache_misses_total 1",
        "platform_cache_hits_total 0",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() == 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["purpose"], "quote");
    assert_eq!(lines[0]["allow"], true);
    assert!(
        lines[0]["peer"]["mrtd"]
            .as_str()
            .unwrap()
            .starts_with("91eb2b44")
    );
    assert_eq!(lines[1]["peer"]["user"], "teesql_read");
    assert_eq!(lines[1]["peer"]["addr"], "127.0.0.1:5555");
    assert_eq!(
        lines[1]["reasons"][0]["code"],
        "client_attestation_required"
    );
    assert!(lines[1]["latency_us"].as_u64().is_some());
    assert!(
        lines[1]["policy_hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

/// Dev-agent certificates over real gRPC: allowed by the development profile with the
/// dev root, denied by production, and cached on the second call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_agent_certificates_over_grpc() {
    use teesql_devattest::RaTlsRequest;
    use teesql_devattest::agent::{AgentConfig, AgentListener, DevAgent};

    let agent = DevAgent::new(AgentConfig::new([9; 32])).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pccs = format!("http://{}", listener.local_addr().unwrap());
    let a = agent.clone();
    tokio::spawn(async move {
        a.serve(vec![AgentListener::Tcp(listener)], std::future::pending())
            .await
            .unwrap();
    });
    let out = tempfile::tempdir().unwrap();
    agent.write_out_dir(out.path()).await.unwrap();
    let issued = agent
        .issue_tls_key(&RaTlsRequest {
            subject: "client".into(),
            alt_names: vec!["client.local".into()],
            usage_ra_tls: true,
            usage_server_auth: false,
            usage_client_auth: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let chain =
        teesql_verifier::evidence::decode_cert_chain(issued.chain_pem.concat().as_bytes()).unwrap();
    let request = VerifyPeerRequest {
        purpose: "sidecar".into(),
        chain: chain.clone(),
        user: "teesql_readwrite".into(),
        database: "app".into(),
        client_addr: "127.0.0.1:6000".into(),
        ..Default::default()
    };

    for (profile, allow) in [("dev", true), ("teesql", false)] {
        let root_der = out.path().join("dev-root.der");
        let pccs = pccs.clone();
        let svc = Running::start(move |s| {
            s.policy_dirs = Some(vec![root().join("policies").join(profile)]);
            s.dev_trust_root = Some(root_der);
            s.collateral_file = None;
            s.offline = Some(false);
            s.pccs_url = Some(pccs);
            s.now = None;
        })
        .await;
        let mut c = svc.client().await;
        let d = c.verify_peer(request.clone()).await.unwrap().into_inner();
        assert_eq!(d.allow, allow, "{profile}: {:?}", d.reasons);
        if !allow {
            assert_eq!(d.reasons[0].code, "dev_root");
        }
        let claims: serde_json::Value = serde_json::from_str(&d.claims_json).unwrap();
        assert_eq!(claims["connection"]["user"], "teesql_readwrite");
        assert_eq!(claims["binding"]["ok"], true);
        assert!(d.valid_until > 0);
        let again = c.verify_peer(request.clone()).await.unwrap().into_inner();
        assert!(again.cached);
        assert_eq!(again.allow, allow);
    }
}

/// A caller names its own key as a signer it trusts and gets a self-signed manifest with
/// epoch 2^64-1 accepted: that must not make every genuine manifest of the cluster a
/// rollback. Epochs are remembered per (cluster, signer) and only for signers the
/// verifier's own data pins, and with a state directory they survive a restart.
#[tokio::test]
async fn a_callers_own_signer_cannot_poison_the_clusters_epochs() {
    let genuine = k256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    let pinned = format!("0x{}", hex::encode(address_of(genuine.verifying_key())));
    let attacker = k256::ecdsa::SigningKey::from_slice(&[0x66; 32]).unwrap();
    let attackers = format!("0x{}", hex::encode(address_of(attacker.verifying_key())));
    let state = tempfile::tempdir().unwrap();
    let start = || {
        let dir = state.path().to_path_buf();
        Running::start(move |s| s.state_dir = Some(dir))
    };
    let pin = |svc: &Running| {
        let data_path = svc.policy_dir.path().join("data.json");
        let mut data: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&data_path).unwrap()).unwrap();
        data["teesql"]["manifest_signers"] = serde_json::json!([pinned]);
        std::fs::write(&data_path, data.to_string()).unwrap();
    };
    let manifest = |key: &k256::ecdsa::SigningKey, epoch: u64| {
        let mut m = Manifest::parse(&format!(
            "v=1;cluster=0xbd32b609057a1a4569558a571d535c8f1212b097;leader_instance=ea23198e3419ebbb240571a29d0112d9bcbe69c0;leader_url=https://leader.example:5433;epoch={epoch};valid_until={};sig=0x{}",
            NOW + 3600,
            "00".repeat(65)
        ))
        .unwrap();
        m.signature = sign(key, &m).unwrap();
        m.to_txt()
    };
    let ask = |txt: String, expected: Vec<String>| VerifyManifestRequest {
        nonce: Vec::new(),
        decision_id: String::new(),
        sign: false,
        manifest: txt,
        leader_chain: vec![],
        expected_signers: expected,
    };

    let svc = start().await;
    pin(&svc);
    svc.service.reload().await.unwrap();
    let mut c = svc.client().await;
    let d = c
        .verify_manifest(ask(manifest(&genuine, 7), vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(d.allow, "{:?}", d.reasons);
    // The attack: its own key as an expected signer, the highest epoch there is, many times.
    for _ in 0..50 {
        let d = c
            .verify_manifest(ask(manifest(&attacker, u64::MAX), vec![attackers.clone()]))
            .await
            .unwrap()
            .into_inner();
        assert!(d.allow, "the caller trusts its own signer: {:?}", d.reasons);
    }
    // The genuine signer's next manifest is not a rollback; its older one still is.
    let d = c
        .verify_manifest(ask(manifest(&genuine, 8), vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(d.allow, "{:?}", d.reasons);
    let d = c
        .verify_manifest(ask(manifest(&genuine, 6), vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.reasons[0].code, "manifest_rolled_back", "{:?}", d.reasons);
    drop(c);
    drop(svc);

    // A restarted verifier with the same state directory still remembers epoch 8.
    let svc = start().await;
    pin(&svc);
    svc.service.reload().await.unwrap();
    let mut c = svc.client().await;
    let d = c
        .verify_manifest(ask(manifest(&genuine, 7), vec![]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.reasons[0].code, "manifest_rolled_back", "{:?}", d.reasons);
    let d = c
        .verify_manifest(ask(manifest(&genuine, 9), vec![]))
        .await
        .unwrap()
        .into_inner();
    assert!(d.allow, "{:?}", d.reasons);
}

/// dstack 0.6's SEV-SNP attestation (ASK and VCEK embedded) judged by the service over
/// gRPC: refused by the production profile, which pins no SEV-SNP measurement; allowed
/// once data pins it (and takes this host's OutOfDate TCB), with the `snp` claims in the
/// answer and the decision valid until the VCEK expires.
#[tokio::test]
async fn sev_snp_attestations_are_judged_over_grpc_where_data_pins_them() {
    let snp_now = 1_781_658_304;
    let running = Running::start(|s| s.now = Some(snp_now)).await;
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("testdata/dstack/sev-snp-attestation.json")).unwrap(),
    )
    .unwrap();
    let blob = hex::decode(fixture["attestation"].as_str().unwrap()).unwrap();
    let ask = |c: &mut VerifierClient<Channel>| {
        let blob = blob.clone();
        let mut c = c.clone();
        async move {
            c.verify_quote(VerifyQuoteRequest {
                purpose: "quote".into(),
                evidence: Some(verify_quote_request::Evidence::Attestation(blob)),
                ..VerifyQuoteRequest::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let mut client = running.client().await;
    let refused = ask(&mut client).await;
    assert!(!refused.allow);
    let codes: Vec<&str> = refused.reasons.iter().map(|r| r.code.as_str()).collect();
    assert!(codes.contains(&"snp_measurement_not_pinned"), "{codes:?}");
    let claims: serde_json::Value = serde_json::from_str(&refused.claims_json).unwrap();
    assert_eq!(claims["snp"]["verified"], true, "{claims}");
    assert_eq!(claims["snp"]["tcb_status"], "OutOfDate");
    assert_eq!(claims["evidence"]["tee"], "sev-snp");

    let data_path = running.policy_dir.path().join("data.json");
    let mut data: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&data_path).unwrap()).unwrap();
    data["teesql"]["pins"]["snp_measurement"] = serde_json::json!([
        "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d"
    ]);
    data["teesql"]["accepted_tcb_statuses"] = serde_json::json!(["UpToDate", "OutOfDate"]);
    std::fs::write(&data_path, data.to_string()).unwrap();
    running.service.reload().await.unwrap();
    let allowed = ask(&mut client).await;
    assert!(allowed.allow, "{:?}", allowed.reasons);
    assert!(
        allowed.cached,
        "the appraisal is reused across the policy change"
    );
    // Valid until the VCEK's notAfter (2033-06-17 01:05:04 UTC).
    assert_eq!(allowed.valid_until, 2_002_583_104);
}

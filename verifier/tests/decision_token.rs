//! Signed decisions as a relying party sees them: a decision over gRPC carries a token,
//! the verifier's JWKS is on its HTTP listener, and `teesql-verifier token verify`
//! accepts the genuine token and refuses an altered, expired or foreign one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/python/find.rs"]
mod find;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use teesql_proto::transport::connect_lazy;
use teesql_proto::v1::verifier_client::VerifierClient;
use teesql_proto::v1::{VerifyQuoteRequest, verify_quote_request};
use teesql_verifier::service::config::{ServeConfig, ServeSettings};
use teesql_verifier::service::server::{Listeners, Verifier};

const NOW: u64 = 1_751_000_000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A verifier with /metrics and the JWKS; (gRPC URL, JWKS URL, stop).
async fn serve(extra: ServeSettings) -> (String, String, tokio::sync::oneshot::Sender<()>) {
    let config = ServeConfig::resolve(ServeSettings {
        listen: Some("127.0.0.1:0".into()),
        metrics_listen: Some("127.0.0.1:0".into()),
        policy_dirs: Some(vec![root().join("policies/teesql")]),
        collateral_file: Some(root().join("testdata/dcap/tdx_quote_collateral.json")),
        offline: Some(true),
        decision_log: Some("off".into()),
        now: Some(NOW),
        ..extra
    })
    .unwrap();
    let verifier = Verifier::start(&config)
        .unwrap()
        .attest(&config)
        .await
        .unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    let grpc = listeners.grpc.url(verifier.tls());
    let http = listeners.metrics.as_ref().unwrap().local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(verifier.run(listeners, async {
        let _ = rx.await;
    }));
    (grpc, format!("http://{http}/.well-known/jwks.json"), tx)
}

async fn decision(grpc: &str) -> teesql_proto::v1::Decision {
    decision_trusting(grpc, None).await
}

/// A decision on the recorded quote from the verifier at `grpc`, trusted by `trust`.
async fn decision_trusting(
    grpc: &str,
    trust: Option<&teesql_proto::transport::ServerTrust>,
) -> teesql_proto::v1::Decision {
    let ch = connect_lazy(grpc, trust, Duration::from_secs(5), Duration::from_secs(10)).unwrap();
    VerifierClient::new(ch)
        .verify_quote(VerifyQuoteRequest {
            purpose: "quote".into(),
            evidence: Some(verify_quote_request::Evidence::Quote(
                std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap(),
            )),
            sign: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// `teesql-verifier token verify TOKEN --jwks JWKS [extra]` (exit code, stdout, stderr).
async fn token_verify(token: &str, jwks: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teesql-verifier"));
    cmd.args(["token", "verify", token, "--jwks", jwks])
        .args(extra);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relying_party_accepts_a_genuine_decision_token_and_nothing_else() {
    let (grpc, jwks_url, _stop) = serve(ServeSettings::default()).await;
    let d = decision(&grpc).await;
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(
        d.token.split('.').count(),
        3,
        "a compact JWS: {:?}",
        d.token
    );

    // The JWKS alone (over HTTP) is enough to check it.
    let now = NOW.to_string();
    let (code, out, err) = token_verify(
        &d.token,
        &jwks_url,
        &["--now", &now, "--issuer", "teesql-verifier"],
    )
    .await;
    assert_eq!(code, Some(0), "{err}");
    let claims: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(claims["eat_profile"], "tag:ietf.org,2026:rats/ear#04");
    assert_eq!(claims["ear_status"], "affirming");
    let cpu = &claims["submods"]["cpu0"];
    assert_eq!(cpu["ear_status"], "affirming");
    assert_eq!(cpu["ear_trustworthiness_vector"]["hardware"], 2);
    assert_eq!(cpu["ear_appraisal_policy_ids"][0], d.policy_hash.as_str());
    let ours = &claims["teesql"];
    assert_eq!(ours["allow"], true);
    assert_eq!(ours["purpose"], "quote");
    assert_eq!(ours["policy_hash"], d.policy_hash.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap(),
        d.valid_until,
        "exp is the decision's validity"
    );
    assert_eq!(ours["tdx"]["tcb_status"], "UpToDate");
    assert_eq!(ours["tdx"]["backend"], "dcap");
    assert_eq!(ours["tdx"]["mrtd"].as_str().unwrap().len(), 96);
    assert_eq!(ours["evidence_sha256"].as_str().unwrap().len(), 64);

    // Altered: the same token saying "denied" instead.
    let parts: Vec<&str> = d.token.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let flipped = payload.replace("\"allow\":true", "\"allow\":false");
    assert_ne!(flipped, payload);
    let forged = format!("{}.{}.{}", parts[0], b64.encode(flipped), parts[2]);
    let (code, _, err) = token_verify(&forged, &jwks_url, &["--now", &now]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not verify"), "{err}");

    // Expired: checked after the decision's validity.
    let later = (d.valid_until as u64 + 3600).to_string();
    let (code, _, err) = token_verify(&d.token, &jwks_url, &["--now", &later]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("expired"), "{err}");

    // Another verifier's keys do not vouch for this one's decisions.
    let (_, other_jwks, _stop2) = serve(ServeSettings::default()).await;
    let (code, _, err) = token_verify(&d.token, &other_jwks, &["--now", &now]).await;
    assert_eq!(code, Some(1), "{err}");

    // Wrong issuer.
    let (code, _, _) = token_verify(
        &d.token,
        &jwks_url,
        &["--now", &now, "--issuer", "someone-else"],
    )
    .await;
    assert_eq!(code, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_file_keeps_tokens_valid_across_restarts_and_signing_can_be_off() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("signing.pem");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let with_key = || ServeSettings {
        signing_key: Some(key.clone()),
        ..ServeSettings::default()
    };
    let (grpc, _, stop) = serve(with_key()).await;
    let token = decision(&grpc).await.token;
    assert!(!token.is_empty());
    // Only a caller that asks (sign, or a nonce) gets a token: the sidecar does not.
    let ch = connect_lazy(&grpc, None, Duration::from_secs(5), Duration::from_secs(10)).unwrap();
    let unasked = VerifierClient::new(ch)
        .verify_quote(VerifyQuoteRequest {
            purpose: "quote".into(),
            evidence: Some(verify_quote_request::Evidence::Quote(
                std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unasked.token, "");
    assert_eq!(unasked.policy_hash, decision(&grpc).await.policy_hash);
    drop(stop);
    // A restarted verifier with the same key file: the old token checks against its JWKS.
    let (_, jwks, _stop) = serve(with_key()).await;
    let (code, _, err) = token_verify(&token, &jwks, &["--now", &NOW.to_string()]).await;
    assert_eq!(code, Some(0), "{err}");

    // Signing off: no token, and no JWKS.
    let (grpc, jwks, _stop3) = serve(ServeSettings {
        sign_decisions: Some(false),
        ..ServeSettings::default()
    })
    .await;
    assert_eq!(decision(&grpc).await.token, "");
    assert_eq!(reqwest::get(&jwks).await.unwrap().status().as_u16(), 404);

    // A key file that is not a P-256 key is a configuration error naming it.
    std::fs::write(&key, "not a key").unwrap();
    let e = ServeConfig::resolve(ServeSettings {
        signing_key: Some(key.clone()),
        policy_dirs: Some(vec![root().join("policies/teesql")]),
        ..ServeSettings::default()
    })
    .unwrap_err()
    .join("\n");
    assert!(e.contains("signing_key"), "{e}");
}

/// A JWKS URL that answers without end is read no further than its bound: the command
/// says so (exit 2) instead of holding whatever the server sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_jwks_is_refused_as_it_arrives() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    // A chunked body with no length: 4 MiB of JSON-looking bytes.
    let app = axum::Router::new().fallback(|| async {
        let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![b' '; 64 << 10]));
        axum::body::Body::from_stream(futures_util::stream::iter(chunks))
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let (code, _, err) = token_verify("a.b.c", &url, &[]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("more than 1048576 bytes"), "{err}");
}

/// A profile extending the development one that pins the verifier to `compose_hashes`.
fn identity_profile(dir: &Path, compose_hashes: &[String]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let base = root().join("policies/dev").canonicalize().unwrap();
    std::fs::write(
        dir.join("profile.toml"),
        format!("extends = [{:?}]\n", base.display().to_string()),
    )
    .unwrap();
    let data = serde_json::json!({"teesql": {"verifier_pins": {"compose_hash": compose_hashes}}});
    std::fs::write(dir.join("data.json"), data.to_string()).unwrap();
    dir.to_path_buf()
}

/// A verifier serving with `--ra-tls` on the development agent binds its signing key to
/// its quote; `token verify --attested` appraises who signed, and refuses a signer that
/// is not pinned, or a key without a quote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_verify_attested_checks_who_signed() {
    use teesql_devattest::agent::{AgentConfig, DevAgent};
    let agent = DevAgent::new(AgentConfig::new([5; 32])).unwrap();
    let (agent_url, _agent_stop) = agent.spawn_on_loopback(0, Vec::new()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    agent.write_out_dir(dir.path()).await.unwrap();
    let dev_root = dir.path().join("dev-root.der");

    let (grpc, jwks, _stop) = serve(ServeSettings {
        ra_tls: Some(true),
        dstack_endpoint: Some(agent_url.clone()),
        ..ServeSettings::default()
    })
    .await;
    assert!(grpc.starts_with("https://"), "{grpc}");
    let pinned = identity_profile(&dir.path().join("pinned"), &[agent.compose_hash_hex()]);
    // The client trusts the verifier by the same profile, appraised in this process.
    let identity =
        teesql_verifier::local::VerifierIdentity::new(&teesql_verifier::local::LocalSettings {
            policy_dirs: vec![pinned.clone()],
            dev_trust_root: Some(dev_root.clone()),
            pccs_url: Some(agent_url.clone()),
            ..Default::default()
        })
        .unwrap();
    let trust = teesql_proto::transport::ServerTrust::Attested(std::sync::Arc::new(identity));
    let token = decision_trusting(&grpc, Some(&trust)).await.token;

    let attested = |profile: &Path| {
        vec![
            "--attested".to_string(),
            "--policy-dir".into(),
            profile.display().to_string(),
            "--dev-trust-root".into(),
            dev_root.display().to_string(),
            "--pccs-url".into(),
            agent_url.clone(),
            "--now".into(),
            NOW.to_string(),
        ]
    };
    let args = attested(&pinned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = token_verify(&token, &jwks, &args).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("signed by an attested verifier"), "{err}");
    assert!(err.contains(&agent.compose_hash_hex()), "{err}");
    assert!(out.contains("\"allow\""), "{out}");

    let other = identity_profile(&dir.path().join("other"), &["ab".repeat(32)]);
    let args = attested(&other);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = token_verify(&token, &jwks, &args).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("verifier_compose_hash_not_pinned"), "{err}");

    // A verifier without --ra-tls publishes a bare key: the signer cannot be appraised.
    let (plain_grpc, plain_jwks, _stop2) = serve(ServeSettings::default()).await;
    let plain_token = decision(&plain_grpc).await.token;
    let args = attested(&pinned);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = token_verify(&plain_token, &plain_jwks, &args).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("carries no quote"), "{err}");
}

/// A verifier on the development agent (fresh quotes, collateral valid now), so its tokens
/// are current for libraries that check `exp` against the clock.
struct DevVerifier {
    grpc: String,
    jwks: String,
    agent: teesql_devattest::DevAgent,
    _out: tempfile::TempDir,
    _stops: (
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Sender<()>,
    ),
}

async fn dev_verifier() -> DevVerifier {
    let agent =
        teesql_devattest::DevAgent::new(teesql_devattest::AgentConfig::new([0x3c; 32])).unwrap();
    let (url, agent_stop) = agent.spawn_on_loopback(0, Vec::new()).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    agent.write_out_dir(out.path()).await.unwrap();
    let config = ServeConfig::resolve(ServeSettings {
        listen: Some("127.0.0.1:0".into()),
        metrics_listen: Some("127.0.0.1:0".into()),
        policy_dirs: Some(vec![root().join("policies/dev")]),
        dev_trust_root: Some(out.path().join("dev-root.der")),
        pccs_url: Some(url),
        decision_log: Some("off".into()),
        ..ServeSettings::default()
    })
    .unwrap();
    let verifier = Verifier::start(&config)
        .unwrap()
        .attest(&config)
        .await
        .unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    let grpc = listeners.grpc.url(verifier.tls());
    let http = listeners.metrics.as_ref().unwrap().local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(verifier.run(listeners, async {
        let _ = rx.await;
    }));
    DevVerifier {
        grpc,
        jwks: format!("http://{http}/.well-known/jwks.json"),
        agent,
        _out: out,
        _stops: (agent_stop, tx),
    }
}

impl DevVerifier {
    /// A decision on a fresh quote; `expected_report_data` other than the quote's denies.
    async fn decide(&self, nonce: &[u8], expected: &[u8]) -> teesql_proto::v1::Decision {
        let (quote, _) = self.agent.quote([0x11; 64]).await.unwrap();
        let ch = connect_lazy(
            &self.grpc,
            None,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .unwrap();
        VerifierClient::new(ch)
            .verify_quote(VerifyQuoteRequest {
                purpose: "quote".into(),
                evidence: Some(verify_quote_request::Evidence::Quote(quote)),
                expected_report_data: expected.to_vec(),
                nonce: nonce.to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    async fn jwks_json(&self) -> Vec<u8> {
        reqwest::get(&self.jwks)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }

    async fn jwk(&self) -> Vec<u8> {
        let set: serde_json::Value = serde_json::from_slice(&self.jwks_json().await).unwrap();
        serde_json::to_vec(&set["keys"][0]).unwrap()
    }
}

/// Veraison's EAR library reads an allowed and a denied decision token as EARs: it
/// verifies them with the verifier's JWK and validates them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ear_library_reads_decision_tokens() {
    let v = dev_verifier().await;
    let nonce = *b"teesql-ear-nonce";
    let allowed = v.decide(&nonce, &[]).await;
    assert!(allowed.allow, "{:?}", allowed.reasons);
    let denied = v.decide(&nonce, &[0x99; 64]).await;
    assert!(!denied.allow);
    let jwk = v.jwk().await;

    let ear = ear::Ear::from_jwt_jwk(&allowed.token, ear::Algorithm::ES256, &jwk).unwrap();
    ear.validate().unwrap();
    assert_eq!(ear.profile, ear::EAR_PROFILE);
    assert_eq!(
        ear.vid.developer,
        "https://github.com/TeeSQL/teesql-front-door"
    );
    assert!(ear.vid.build.starts_with("teesql-verifier "));
    assert_eq!(ear.status, Some(ear::TrustTier::Affirming));
    let cpu = &ear.submods["cpu0"];
    assert_eq!(cpu.status, ear::TrustTier::Affirming);
    assert_eq!(
        cpu.trust_vector.hardware.get(),
        2,
        "genuine hardware, UpToDate"
    );
    assert_eq!(
        cpu.trust_vector.runtime_opaque.get(),
        2,
        "memory encrypted, not debug"
    );
    assert_eq!(cpu.trust_vector.sourced_data.get(), 2, "current collateral");
    assert_eq!(cpu.policy_ids, std::slice::from_ref(&allowed.policy_hash));
    assert!(ear.nonce.is_some(), "the request's nonce is echoed");

    let ear = ear::Ear::from_jwt_jwk(&denied.token, ear::Algorithm::ES256, &jwk).unwrap();
    ear.validate().unwrap();
    assert_eq!(ear.status, Some(ear::TrustTier::Contraindicated));
    let cpu = &ear.submods["cpu0"];
    assert_eq!(cpu.status, ear::TrustTier::Contraindicated);
    assert_eq!(
        cpu.trust_vector.instance_identity.get(),
        96,
        "the quote does not bind the expected report data: an untrustworthy instance"
    );

    // Every claim CLAIMS.md lists for tokens is in one, and nothing else is.
    let claims = teesql_verifier::service::token::verify(
        &allowed.token,
        &String::from_utf8(v.jwks_json().await).unwrap(),
        None,
        teesql_verifier::Clock::System.now(),
    )
    .unwrap();
    let md = std::fs::read_to_string(root().join("verifier/CLAIMS.md")).unwrap();
    let table = md.split("## Decision tokens").nth(1).unwrap();
    let documented: Vec<&str> = table
        .lines()
        .skip_while(|l| !l.starts_with("| claim"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    for path in &documented {
        let mut at = &claims;
        for part in path.split('.') {
            at = &at[part];
        }
        assert!(
            !at.is_null(),
            "CLAIMS.md documents {path}, the token lacks it"
        );
    }
    for key in claims.as_object().unwrap().keys() {
        assert!(
            documented
                .iter()
                .any(|d| d.split('.').next() == Some(key.as_str())),
            "{key} is not in CLAIMS.md"
        );
    }

    // Another verifier's key does not verify it.
    let other = dev_verifier().await;
    assert!(
        ear::Ear::from_jwt_jwk(&allowed.token, ear::Algorithm::ES256, &other.jwk().await).is_err()
    );

    // `token verify` exits 1 for the denied decision's valid token, 0 with --signature-only.
    let (code, _, err) = token_verify(&denied.token, &v.jwks, &[]).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("denied decision") && err.contains("key_not_bound"),
        "{err}"
    );
    let (code, _, err) = token_verify(&denied.token, &v.jwks, &["--signature-only"]).await;
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = token_verify(&allowed.token, &v.jwks, &[]).await;
    assert_eq!(code, Some(0), "{err}");
}

/// A nonce outside EAR's 8 to 64 bytes is the caller's error, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_is_bounded() {
    let v = dev_verifier().await;
    let (quote, _) = v.agent.quote([0x11; 64]).await.unwrap();
    let ch = connect_lazy(
        &v.grpc,
        None,
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .unwrap();
    for bad in [vec![1u8; 7], vec![1u8; 65]] {
        let e = VerifierClient::new(ch.clone())
            .verify_quote(VerifyQuoteRequest {
                purpose: "quote".into(),
                evidence: Some(verify_quote_request::Evidence::Quote(quote.clone())),
                nonce: bad,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("nonce"), "{}", e.message());
    }
}

/// The Python relying party (PyJWT, tests/python/verify_decision_token.py) checks the
/// same tokens with nothing of ours but the JWKS URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_relying_party_checks_a_decision_token_with_pyjwt() {
    let Some(python) = find::python_with(&["jwt", "cryptography"]) else {
        return;
    };
    let v = dev_verifier().await;
    let nonce = *b"relying-party-01";
    let script = root().join("tests/python/verify_decision_token.py");
    let run = |token: String, nonce_hex: String| {
        let mut cmd = Command::new(&python);
        cmd.arg(&script).arg(token).arg(&v.jwks).arg(nonce_hex);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let allowed = v.decide(&nonce, &[]).await;
    let out = run(allowed.token.clone(), hex::encode(nonce))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["teesql"]["allow"], true);
    let denied = v.decide(&nonce, &[0x99; 64]).await;
    let out = run(denied.token, hex::encode(nonce)).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another request's nonce: not this request's token.
    let out = run(allowed.token, hex::encode(b"another-request!"))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

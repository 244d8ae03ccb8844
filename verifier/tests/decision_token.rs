//! Signed decisions as a relying party sees them: a decision over gRPC carries a token,
//! the verifier's JWKS is on its HTTP listener, and `teesql-verifier token verify`
//! accepts the genuine token and refuses an altered, expired or foreign one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
    assert_eq!(claims["allow"], true);
    assert_eq!(claims["ear.status"], "affirming");
    assert_eq!(claims["purpose"], "quote");
    assert_eq!(claims["policy_hash"], d.policy_hash.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap(),
        d.valid_until,
        "exp is the decision's validity"
    );
    assert_eq!(claims["tdx"]["tcb_status"], "UpToDate");
    assert_eq!(claims["tdx"]["backend"], "dcap");
    assert_eq!(claims["tdx"]["mrtd"].as_str().unwrap().len(), 96);
    assert_eq!(claims["evidence_sha256"].as_str().unwrap().len(), 64);

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

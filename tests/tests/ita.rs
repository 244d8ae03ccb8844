//! The `ita` backend against a mock Intel Trust Authority that speaks ITA's wire API,
//! appraises the development PKI's quotes with dcap-qvl and signs real JWTs; the `dcap,ita`
//! chain; `verify --backend ita` and a cluster whose verifier uses ITA.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use teesql_tests::agent::TestAgent;
use teesql_tests::cluster::{Cluster, ClusterOptions, repo_root};
use teesql_tests::ita::{Behaviour, MockIta};
use teesql_verifier::backend::dcap::TrustRoot;
use teesql_verifier::backend::{Backend, BackendConfig, BackendKind, QuoteFacts, VerifyErrorCode};
use teesql_verifier::collateral::CollateralConfig;
use teesql_verifier::evidence::{Evidence, Quote, decode_quote_bytes};
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet};
use teesql_verifier::service::{DecisionLog, DecisionService, Metrics, QuoteInput, ServiceOptions};
use teesql_verifier::{Clock, DecisionRequest};

struct Setup {
    _dir: tempfile::TempDir,
    agent: TestAgent,
    mock: MockIta,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let agent = TestAgent::start([0x17; 32], dir.path()).await.unwrap();
    let mock = MockIta::start(&agent).await.unwrap();
    Setup {
        _dir: dir,
        agent,
        mock,
    }
}

impl Setup {
    async fn quote(&self, byte: u8) -> Vec<u8> {
        self.agent.agent.quote([byte; 64]).await.unwrap().0
    }

    fn dcap(&self, pccs: &str) -> BackendConfig {
        BackendConfig::dcap(
            TrustRoot::development_from_file(&self.agent.root_der_path()).unwrap(),
            CollateralConfig {
                pccs_url: Some(pccs.to_string()),
                ..CollateralConfig::default()
            },
        )
    }

    fn backend(&self, chain: &[BackendKind], pccs: &str, api_key: &str) -> Backend {
        BackendConfig {
            chain: chain.to_vec(),
            ita: Some(self.mock.config(api_key).unwrap()),
            ..self.dcap(pccs)
        }
        .build()
        .unwrap()
    }

    fn ita(&self) -> Backend {
        self.backend(&[BackendKind::Ita], &self.agent.url, &self.mock.api_key)
    }
}

fn parsed(raw: &[u8]) -> Quote {
    decode_quote_bytes(raw).unwrap()
}

async fn facts(b: &Backend, raw: &[u8]) -> QuoteFacts {
    b.appraiser
        .backend()
        .appraise(&parsed(raw), Clock::System.now())
        .await
}

fn policies(profile: &str) -> PolicySet {
    PolicySet::load(
        &[repo_root().join("policies").join(profile)],
        DEFAULT_EVAL_LIMIT,
    )
    .unwrap()
}

async fn decide(b: &Backend, profile: &str, raw: &[u8]) -> teesql_verifier::Decision {
    let ev = Evidence::from_quote(parsed(raw));
    b.appraiser
        .decide(
            &policies(profile),
            DecisionRequest::new(&ev, "quote", Clock::System.now()),
        )
        .await
        .unwrap()
}

fn codes(d: &teesql_verifier::Decision) -> Vec<String> {
    d.reasons.iter().map(|r| r.code.clone()).collect()
}

fn code_of(f: &QuoteFacts) -> Option<VerifyErrorCode> {
    f.error.as_ref().map(|e| e.code)
}

fn message_of(f: &QuoteFacts) -> String {
    f.error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quote_decides_through_ita_as_through_dcap() {
    let s = setup().await;
    let raw = s.quote(1).await;
    let dcap = s.dcap(&s.agent.url).build().unwrap();
    let by_dcap = decide(&dcap, "dev", &raw).await;
    let by_ita = decide(&s.ita(), "dev", &raw).await;
    assert!(by_dcap.allow, "{:?}", by_dcap.reasons);
    assert!(by_ita.allow, "{:?}", by_ita.reasons);
    let (d, i) = (&by_dcap.claims["tdx"], &by_ita.claims["tdx"]);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(d), keys(i), "the same claims fields");
    for same in [
        "mrtd",
        "rtmr0",
        "rtmr3",
        "report_data",
        "tcb_status",
        "debug",
        "verified",
    ] {
        assert_eq!(d[same], i[same], "{same}");
    }
    assert_eq!(d["backend"], "dcap");
    assert_eq!(i["backend"], "ita");
    assert_eq!(d["token_sha256"], Value::Null);
    assert_eq!(i["token_sha256"].as_str().unwrap().len(), 64);
    // The mock's keys are not Intel's: the claims say so, and production refuses them.
    assert_eq!(i["root"], "custom");
    let prod = decide(&s.ita(), "teesql", &raw).await;
    assert!(!prod.allow);
    assert!(
        codes(&prod).contains(&"untrusted_root".to_string()),
        "{prod:?}"
    );
    // The token's window is the facts' window.
    let window = &i["collateral"];
    assert!(window["not_after"].as_u64().unwrap() > Clock::System.now());
}

/// A server that counts requests: a JWKS the verifier must never fetch.
async fn counting_server() -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    let h = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            "{\"keys\":[]}"
        }
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_or_stale_tokens_are_refused() {
    let s = setup().await;
    let raw = s.quote(2).await;
    let b = s.ita();
    let ok = facts(&b, &raw).await;
    assert!(ok.verified, "{}", message_of(&ok));
    assert_eq!(s.mock.jwks_requests(), 1);

    let cases: Vec<(Behaviour, &str)> = vec![
        (Behaviour::Expired, "expired"),
        (Behaviour::AlgNone, "header cannot be read"),
        (Behaviour::Hs256WithPublicKey, "only PS384 and RS256"),
    ];
    for (behaviour, needle) in cases {
        s.mock.set(behaviour.clone());
        let f = facts(&b, &raw).await;
        assert!(!f.verified, "{behaviour:?}");
        assert_eq!(
            code_of(&f),
            Some(VerifyErrorCode::TokenInvalid),
            "{behaviour:?}"
        );
        assert!(f.undecided(), "never cached, never a verdict on the quote");
        assert!(
            message_of(&f).contains(needle),
            "{behaviour:?}: {}",
            message_of(&f)
        );
    }

    // A jku that is not the configured JWKS: refused, and never fetched.
    let (foreign, hits) = counting_server().await;
    s.mock.set(Behaviour::ForeignJku(foreign.clone()));
    let f = facts(&b, &raw).await;
    assert_eq!(code_of(&f), Some(VerifyErrorCode::TokenInvalid));
    assert!(message_of(&f).contains("not fetched"), "{}", message_of(&f));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the foreign JWKS was fetched"
    );

    // ITA rotates its key: one JWKS refresh finds it.
    s.mock.set(Behaviour::RotateKey);
    let f = facts(&b, &raw).await;
    assert!(f.verified, "{}", message_of(&f));
    assert_eq!(s.mock.jwks_requests(), 2, "one refresh for the unknown kid");
    // Another unknown kid within the minute: no second refresh.
    let f = facts(&b, &raw).await;
    assert_eq!(code_of(&f), Some(VerifyErrorCode::TokenInvalid));
    assert!(
        message_of(&f).contains("at most every"),
        "{}",
        message_of(&f)
    );
    assert_eq!(s.mock.jwks_requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_are_retried_never_cached_and_a_bad_key_is_named() {
    let s = setup().await;
    let raw = s.quote(3).await;
    let b = s.ita();
    let retries = u64::from(s.mock.config("k").unwrap().retries);

    for status in [503u16, 429] {
        s.mock.set(Behaviour::Status(status));
        let before = s.mock.attest_requests();
        let f = facts(&b, &raw).await;
        assert_eq!(code_of(&f), Some(VerifyErrorCode::ServiceUnavailable));
        assert!(
            message_of(&f).contains(&format!("HTTP {status}")),
            "{}",
            message_of(&f)
        );
        assert_eq!(
            s.mock.attest_requests() - before,
            retries + 1,
            "HTTP {status}"
        );
    }

    // Through the service: an outage is not cached, the next request asks again.
    let service = DecisionService::new(
        b.appraiser.clone(),
        policies("dev"),
        &ServiceOptions::default(),
        DecisionLog::off(),
        Arc::new(Metrics::new()),
    );
    let ask = || {
        service.verify_quote(
            "quote",
            QuoteInput::Quote {
                quote: raw.clone(),
                event_log: String::new(),
            },
            None,
        )
    };
    s.mock.set(Behaviour::Status(500));
    let d = ask().await.unwrap();
    assert!(!d.allow);
    assert!(
        d.reasons
            .iter()
            .any(|r| r.code == "attestation_service_unavailable"),
        "{d:?}"
    );
    let after_first = s.mock.attest_requests();
    s.mock.set(Behaviour::Normal);
    let d = ask().await.unwrap();
    assert!(d.allow, "{:?}", d.reasons);
    assert!(
        s.mock.attest_requests() > after_first,
        "the outage was cached"
    );

    // A wrong API key: one request, a clear error, and the key in no message.
    let wrong = s.backend(&[BackendKind::Ita], &s.agent.url, "wrong-key-7f3a");
    let before = s.mock.attest_requests();
    let f = facts(&wrong, &raw).await;
    assert_eq!(code_of(&f), Some(VerifyErrorCode::ServiceUnavailable));
    let msg = message_of(&f);
    assert!(msg.contains("refused the API key (HTTP 401)"), "{msg}");
    assert!(msg.contains("INTEL_TRUST_AUTHORITY_API_KEY"), "{msg}");
    assert!(
        !msg.contains("wrong-key-7f3a") && !msg.contains(&s.mock.api_key),
        "{msg}"
    );
    assert_eq!(s.mock.attest_requests() - before, 1, "no retries on 401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_falls_back_only_when_dcap_cannot_decide() {
    let s = setup().await;
    let raw = s.quote(4).await;
    let chain = [BackendKind::Dcap, BackendKind::Ita];

    // PCCS down: DCAP cannot decide, ITA does.
    let pccs_down = s.backend(&chain, "http://127.0.0.1:9", &s.mock.api_key);
    let d = decide(&pccs_down, "dev", &raw).await;
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(d.claims["tdx"]["backend"], "ita");

    // A quote DCAP judged bad is not taken to ITA.
    let mut bad = raw.clone();
    bad[600] ^= 0xff; // inside the report data: the quote's signature no longer holds
    let working = s.backend(&chain, &s.agent.url, &s.mock.api_key);
    let before = s.mock.attest_requests();
    let f = facts(&working, &bad).await;
    assert!(!f.verified);
    assert!(!f.undecided(), "{}", message_of(&f));
    assert_eq!(f.backend, "dcap");
    assert_eq!(
        s.mock.attest_requests(),
        before,
        "a bad quote was retried elsewhere"
    );
}

fn workspace_binary(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not built: run the tests as the README says (cargo test --workspace)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_with_backend_ita_prints_the_same_decision() {
    let s = setup().await;
    let raw = s.quote(5).await;
    let dir = tempfile::tempdir().unwrap();
    let quote_file = dir.path().join("quote.bin");
    std::fs::write(&quote_file, &raw).unwrap();
    let key_file = dir.path().join("ita.key");
    std::fs::write(&key_file, &s.mock.api_key).unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(workspace_binary("teesql-verifier"));
        cmd.current_dir(repo_root())
            .env_remove("INTEL_TRUST_AUTHORITY_API_KEY")
            .env_remove("PCCS_URL")
            .args(["verify", "--quote"])
            .arg(&quote_file)
            .args(["--policy-dir", "policies/dev", "--dev-trust-root"])
            .arg(s.agent.root_der_path())
            .args(["--pccs-url", &s.agent.url])
            .args(extra);
        cmd.output().unwrap()
    };
    let ita = run(&[
        "--backend",
        "ita",
        "--ita-url",
        &s.mock.url,
        "--ita-jwks-url",
        &s.mock.jwks_url,
        "--ita-api-key-file",
        key_file.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&ita.stderr);
    assert_eq!(ita.status.code(), Some(0), "{err}");
    let out: Value = serde_json::from_slice(&ita.stdout).unwrap();
    assert_eq!(out["allow"], true);
    assert_eq!(out["claims"]["tdx"]["backend"], "ita");
    let dcap = run(&[]);
    let d: Value = serde_json::from_slice(&dcap.stdout).unwrap();
    assert_eq!(d["allow"], true);
    assert_eq!(d["claims"]["tdx"]["mrtd"], out["claims"]["tdx"]["mrtd"]);

    // No key: exit 2, saying where a key comes from.
    let none = run(&["--backend", "ita", "--ita-url", &s.mock.url]);
    assert_eq!(none.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("INTEL_TRUST_AUTHORITY_API_KEY"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}

/// The verifier service (as `serve --backend ita` runs it) judges the sidecar for a
/// mode A forwarder through ITA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_verifier_on_ita_judges_the_server() {
    let c = Cluster::start(ClusterOptions {
        backend: "ita".into(),
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let mock = c.ita.as_ref().expect("a mock ITA for the ita backend");
    let before = mock.attest_requests();
    let fwd = c.forward(c.forward_settings()).await.unwrap();
    let o = teesql_tests::clients::psql(
        &format!(
            "postgresql://teesql_read:{}@{fwd}/postgres?sslmode=disable",
            c.read_secret
        ),
        &["-tAc", "SELECT 6 * 7"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "42");
    assert!(
        mock.attest_requests() > before,
        "the server's quote went through ITA"
    );
}

/// `teesql-verifier serve --backend ita` as an operator runs it: the ITA settings in the
/// TOML file, the key in `INTEL_TRUST_AUTHORITY_API_KEY`, a quote decided over gRPC
/// through the mock with the claims naming ITA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_backend_ita_from_a_toml_file() {
    use std::io::{BufRead, BufReader};
    use teesql_proto::v1::verifier_client::VerifierClient;
    use teesql_proto::v1::{VerifyQuoteRequest, verify_quote_request};

    let s = setup().await;
    let raw = s.quote(6).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("verifier.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\npolicy_dir = [\"policies/dev\"]\n\
             dev_trust_root = {:?}\ndecision_log = \"off\"\nbackend = \"ita\"\n\
             ita_url = {:?}\nita_jwks_url = {:?}\n",
            s.agent.root_der_path().display().to_string(),
            s.mock.url,
            s.mock.jwks_url,
        ),
    )
    .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut serve = Kill(
        std::process::Command::new(workspace_binary("teesql-verifier"))
            .current_dir(repo_root())
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("INTEL_TRUST_AUTHORITY_API_KEY", &s.mock.api_key)
            .env_remove("PCCS_URL")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = serve.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("teesql-verifier listening on "))
    })
    .await
    .unwrap()
    .expect("serve exited before listening");
    assert!(line.contains("(backend ita,"), "{line}");
    let addr = line.split(' ').nth(3).unwrap();
    let mut client = VerifierClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let before = s.mock.attest_requests();
    let d = client
        .verify_quote(VerifyQuoteRequest {
            purpose: "quote".into(),
            evidence: Some(verify_quote_request::Evidence::Quote(raw)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.allow, "{:?}", d.reasons);
    let claims: Value = serde_json::from_str(&d.claims_json).unwrap();
    assert_eq!(claims["tdx"]["backend"], "ita");
    assert_eq!(claims["tdx"]["verified"], true);
    assert_eq!(s.mock.attest_requests(), before + 1);
    // The key is in no line the verifier printed.
    let _ = serve.0.kill();
    let out = stderr_of(&mut serve.0);
    assert!(!out.contains(&s.mock.api_key), "{out}");
}

/// Everything a stopped child wrote to stderr.
fn stderr_of(child: &mut std::process::Child) -> String {
    use std::io::Read;
    let _ = child.wait();
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    text
}

fn sample(name: &str) -> Value {
    let path = repo_root().join("tests/data/ita-samples").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Every claim set Intel publishes for its tokens (tests/data/ita-samples/), signed by the
/// mock's key and carrying the quote's measurements where the set has them: the backend,
/// with its default issuers, reads each as ITA means it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_shaped_like_intels_published_samples_are_read_as_intel_means_them() {
    let s = setup().await;
    let raw = s.quote(9).await;
    let ita = s.ita();
    for (name, status, unmatched) in [
        // v1 flat, "Intel Trust Authority", the older status spelling "OK".
        (
            "tdx-v1.json",
            "UpToDate",
            vec!["c7c49dd2-a96a-43bd-8cee-f2aa99503458"],
        ),
        // Claims nested under `tdx` beside `tpm_claims`.
        ("tdx-tpm-composite.json", "UpToDate", vec![]),
        // `nvgpu` beside `tdx`, policies matched and unmatched.
        (
            "gpu-tdx-composite.json",
            "UpToDate",
            vec![
                "8500e95a-58da-4b8a-a585-274730576d31",
                "5210b351-5865-4fb2-a731-17c6793cd4ca",
            ],
        ),
        // v2 as issued in 2026: the portal URL as `iss`.
        ("tdx-v2-2026-third-party.json", "UpToDate", vec![]),
    ] {
        s.mock.set(Behaviour::Sample(sample(name)));
        let f = facts(&ita, &raw).await;
        assert!(f.verified, "{name}: {}", message_of(&f));
        assert_eq!(f.tcb_status.as_deref(), Some(status), "{name}");
        let ita_facts = f.ita.clone().unwrap();
        assert_eq!(ita_facts.policy_ids_unmatched, unmatched, "{name}");
        // Unmatched ITA policies deny; the rest allow under the development profile.
        let d = decide(&ita, "dev", &raw).await;
        if unmatched.is_empty() {
            assert!(d.allow, "{name}: {:?}", d.reasons);
        } else {
            assert_eq!(codes(&d), ["ita_policy_unmatched"], "{name}");
        }
    }
    let d = decide(&ita, "dev", &raw).await;
    assert_eq!(
        d.claims["tdx"]["ita"]["issuer"],
        "https://portal.trustauthority.intel.com"
    );

    // An SGX token does not describe a TDX quote.
    s.mock.set(Behaviour::Sample(sample("sgx-v1.json")));
    let f = facts(&ita, &raw).await;
    assert_eq!(code_of(&f), Some(VerifyErrorCode::TokenInvalid));
    assert!(message_of(&f).contains("tdx_mrtd"), "{}", message_of(&f));

    // The mock's own tokens say "Intel Trust Authority" as the documentation does; an
    // operator who names another issuer refuses them.
    s.mock.set(Behaviour::Normal);
    let f = facts(&ita, &raw).await;
    assert!(f.verified, "{}", message_of(&f));
    assert_eq!(f.ita.as_ref().unwrap().issuer, "Intel Trust Authority");
    let mut strict = s.mock.config(&s.mock.api_key).unwrap();
    strict.issuers = vec!["https://issuer.example".into()];
    let other = BackendConfig {
        chain: vec![BackendKind::Ita],
        ita: Some(strict),
        ..s.dcap(&s.agent.url)
    }
    .build()
    .unwrap();
    let f = facts(&other, &raw).await;
    assert_eq!(code_of(&f), Some(VerifyErrorCode::TokenInvalid));
    assert!(
        message_of(&f).contains("InvalidIssuer"),
        "{}",
        message_of(&f)
    );
}

/// `--ita-policy-ids`: each configured policy must be matched; `PolicyMustMatch` is sent,
/// and then ITA issues no token for an unmatched one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_ita_policies_must_all_match() {
    let s = setup().await;
    let raw = s.quote(10).await;
    let (a, b) = (
        "b802fff0-eba4-4286-9fdb-7a3cdc04e94d",
        "3910b351-5865-4fb2-a731-17c6793cd4ca",
    );
    let with_policies = |must_match: bool| {
        let mut c = s.mock.config(&s.mock.api_key).unwrap();
        c.policy_ids = vec![a.into(), b.into()];
        c.policy_must_match = must_match;
        BackendConfig {
            chain: vec![BackendKind::Ita],
            ita: Some(c),
            ..s.dcap(&s.agent.url)
        }
        .build()
        .unwrap()
    };
    s.mock.match_policies(&[a]);
    let d = decide(&with_policies(false), "dev", &raw).await;
    assert_eq!(codes(&d), ["ita_policy_unmatched"]);
    assert!(d.reasons[0].message.contains(b), "{:?}", d.reasons);
    assert_eq!(
        d.claims["tdx"]["ita"]["policy_ids_matched"],
        serde_json::json!([a])
    );
    s.mock.match_policies(&[a, b]);
    let d = decide(&with_policies(false), "dev", &raw).await;
    assert!(d.allow, "{:?}", d.reasons);
    // PolicyMustMatch: no token for an unmatched policy, so the quote is not verified.
    s.mock.match_policies(&[a]);
    let f = facts(&with_policies(true), &raw).await;
    assert!(!f.verified);
    assert!(
        message_of(&f).contains("policy_must_match"),
        "{}",
        message_of(&f)
    );
}

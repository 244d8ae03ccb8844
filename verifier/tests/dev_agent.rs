//! The development agent end to end: its certificates verified by the real pipeline
//! (and the real `teesql-verifier verify` binary) with collateral fetched from its PCCS,
//! under the development profile (allowed) and production (denied), and the dev root
//! trusted only when given explicitly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::{Value, json};
use teesql_devattest::agent::{AgentConfig, DevAgent, DstackVersion, KeyProviderKind};
use teesql_verifier::backend::BackendConfig;
use teesql_verifier::backend::dcap::TrustRoot;
use teesql_verifier::collateral::{CollateralConfig, CollateralProvider};
use teesql_verifier::evidence;
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet};
use teesql_verifier::{Clock, DecisionRequest};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Agent {
    agent: DevAgent,
    url: String,
    out: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_agent(legacy: bool) -> Agent {
    let mut config = AgentConfig::new([7u8; 32]);
    config.legacy_cert_extensions = legacy;
    start_agent_with(config).await
}

async fn start_agent_with(config: AgentConfig) -> Agent {
    let agent = DevAgent::new(config).unwrap();
    let (url, tx) = agent.spawn_on_loopback(0, Vec::new()).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    agent.write_out_dir(out.path()).await.unwrap();
    Agent {
        agent,
        url,
        out,
        _stop: tx,
    }
}

async fn post(url: &str, method: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{url}/{method}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{method}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn tls_key(url: &str, client: bool) -> (String, Vec<Vec<u8>>) {
    let r = post(
        url,
        "GetTlsKey",
        json!({"subject": "db.local", "alt_names": ["localhost", "127.0.0.1"],
               "usage_ra_tls": true, "usage_server_auth": !client, "usage_client_auth": client}),
    )
    .await;
    let chain_pem: Vec<String> = serde_json::from_value(r["certificate_chain"].clone()).unwrap();
    let ders = evidence::decode_cert_chain(chain_pem.concat().as_bytes()).unwrap();
    (chain_pem.concat(), ders)
}

fn policies(profile: &str) -> PolicySet {
    PolicySet::load(&[root().join("policies").join(profile)], DEFAULT_EVAL_LIMIT).unwrap()
}

async fn decide(
    a: &Agent,
    trust_root: TrustRoot,
    set: &PolicySet,
    ev: &evidence::Evidence,
) -> teesql_verifier::Decision {
    let backend = BackendConfig::dcap(
        trust_root,
        CollateralConfig {
            pccs_url: Some(a.url.clone()),
            ..CollateralConfig::default()
        },
    )
    .build()
    .unwrap();
    let request = DecisionRequest::new(ev, "quote", Clock::System.now());
    backend.appraiser.decide(set, request).await.unwrap()
}

fn dev_root(a: &Agent) -> TrustRoot {
    TrustRoot::development_from_file(&a.out.path().join("dev-root.der")).unwrap()
}

fn codes(d: &teesql_verifier::Decision) -> Vec<String> {
    d.reasons.iter().map(|r| r.code.clone()).collect()
}

#[tokio::test]
async fn agent_certificate_allows_under_dev_profile_with_binding_and_replay() {
    let a = start_agent(false).await;
    let (_, chain) = tls_key(&a.url, false).await;
    let ev = evidence::decode_certificate_der(&chain).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(d.allow, "{:?}", d.reasons);
    let c = &d.claims;
    assert_eq!(c["tdx"]["root"], "dev");
    assert_eq!(c["tdx"]["verified"], true);
    assert_eq!(c["tdx"]["tcb_status"], "UpToDate");
    assert_eq!(c["tdx"]["mrtd"], a.agent.mrtd_hex());
    assert_eq!(c["binding"]["kind"], "ra_tls_spki");
    assert_eq!(c["binding"]["ok"], true);
    assert_eq!(c["app"]["rtmr3_replayed"], true);
    assert_eq!(c["evidence"]["cert"]["attestation_format"], "versioned_v0");
    assert_eq!(c["evidence"]["cert"]["usage"], "app:custom");
    // The compose hash is SHA-256 of the compose file; the app id its first 20 bytes.
    let compose = c["app"]["compose_hash"].as_str().unwrap();
    assert_eq!(&compose[..40], c["app"]["app_id"].as_str().unwrap());
    assert!(
        a.agent.pccs_requests() >= 4,
        "collateral came from the agent's PCCS"
    );
}

/// The development PKI can state any TCB level; its TCB Info is signed as always.
async fn agent_at_tcb(status: &str, advisories: &[&str]) -> Agent {
    let mut config = AgentConfig::new([9u8; 32]);
    config.platform_tcb = teesql_devattest::PlatformTcb {
        status: status.into(),
        advisory_ids: advisories.iter().map(|a| a.to_string()).collect(),
    };
    start_agent_with(config).await
}

/// A profile extending the development one with `data` merged over its data.
fn dev_profile_with(data: Value) -> (tempfile::TempDir, PolicySet) {
    let dir = tempfile::tempdir().unwrap();
    let base = root().join("policies/dev").canonicalize().unwrap();
    std::fs::write(
        dir.path().join("profile.toml"),
        format!("extends = [{:?}]\n", base.display().to_string()),
    )
    .unwrap();
    std::fs::write(dir.path().join("data.json"), data.to_string()).unwrap();
    let set = PolicySet::load(&[dir.path().to_path_buf()], DEFAULT_EVAL_LIMIT).unwrap();
    (dir, set)
}

#[tokio::test]
async fn tcb_statuses_and_advisories_as_teesql_clients_accept_them() {
    // SWHardeningNeeded is accepted by default, like TeeSQL's client libraries do; its
    // advisories are in the claims, and a listed one is refused.
    let a = agent_at_tcb("SWHardeningNeeded", &["INTEL-SA-00615", "INTEL-SA-00837"]).await;
    let (_, chain) = tls_key(&a.url, false).await;
    let ev = evidence::decode_certificate_der(&chain).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(d.claims["tdx"]["tcb_status"], "SWHardeningNeeded");
    assert_eq!(
        d.claims["tdx"]["advisory_ids"],
        json!(["INTEL-SA-00615", "INTEL-SA-00837"])
    );
    let (_dir, refusing) =
        dev_profile_with(json!({"teesql": {"refused_advisory_ids": ["intel-sa-00837"]}}));
    let d = decide(&a, dev_root(&a), &refusing, &ev).await;
    assert!(!d.allow);
    assert_eq!(codes(&d), ["advisory_refused"]);
    assert!(
        d.reasons[0].message.contains("INTEL-SA-00837"),
        "{:?}",
        d.reasons
    );

    // Anything else is refused by default.
    for (status, code) in [
        ("OutOfDate", "tcb_out_of_date"),
        ("ConfigurationNeeded", "tcb_status_not_accepted"),
        ("OutOfDateConfigurationNeeded", "tcb_out_of_date"),
    ] {
        let a = agent_at_tcb(status, &["INTEL-SA-00615"]).await;
        let (_, chain) = tls_key(&a.url, false).await;
        let ev = evidence::decode_certificate_der(&chain).unwrap();
        let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
        assert!(!d.allow, "{status}");
        assert_eq!(d.claims["tdx"]["tcb_status"], status);
        assert_eq!(codes(&d), [code], "{status}");
    }
}

#[tokio::test]
async fn production_never_trusts_dev_evidence() {
    let a = start_agent(false).await;
    let (_, chain) = tls_key(&a.url, false).await;
    let ev = evidence::decode_certificate_der(&chain).unwrap();
    // Dev root given, production profile: refused by policy.
    let d = decide(&a, dev_root(&a), &policies("teesql"), &ev).await;
    assert!(!d.allow);
    assert_eq!(codes(&d), ["dev_root"]);
    // No trust root given: Intel's, which does not chain the dev PKI.
    let d = decide(&a, TrustRoot::intel(), &policies("dev"), &ev).await;
    assert!(!d.allow);
    assert_eq!(d.claims["tdx"]["root"], "intel");
    assert_eq!(d.claims["tdx"]["verified"], false);
    assert!(
        codes(&d).contains(&"quote_signature_invalid".to_string()),
        "{:?}",
        d.reasons
    );
}

#[tokio::test]
async fn a_certificate_carrying_another_keys_quote_is_denied() {
    let a = start_agent(false).await;
    let (_, chain) = tls_key(&a.url, false).await;
    // Take the genuine attestation out of the agent's certificate and put it in a
    // certificate for a key of our own.
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == evidence::oid::ATTESTATION)
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".into()]).unwrap();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 62397, 1, 8],
            ext.value.to_vec(),
        ));
    let forged = params.self_signed(&key).unwrap();
    let ev = evidence::decode_certificate_der(&[forged.der().to_vec()]).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(!d.allow);
    assert_eq!(codes(&d), ["key_not_bound"]);
    assert_eq!(
        d.claims["tdx"]["verified"], true,
        "the quote itself is genuine"
    );
}

#[tokio::test]
async fn legacy_certificate_form_verifies_too() {
    let a = start_agent(true).await;
    let r = post(
        &a.url,
        "GetTlsKey",
        json!({"subject": "db.local", "usage_ra_tls": true, "usage_server_auth": true}),
    )
    .await;
    let chain_pem: Vec<String> = serde_json::from_value(r["certificate_chain"].clone()).unwrap();
    let chain = evidence::decode_cert_chain(chain_pem.concat().as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let raw = |oid: &str| {
        cert.extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == oid)
            .map(|e| e.value.to_vec())
    };
    let quote_ext = raw(evidence::oid::TDX_QUOTE).expect("legacy .1 requested");
    let log_ext = raw(evidence::oid::EVENT_LOG).expect("legacy .2 requested");
    assert!(raw(evidence::oid::ATTESTATION).is_some());

    // A certificate for `key` carrying only .1 and .2, as dstack before v0.5.9 issued
    // them: the decoder must take the legacy path to judge it.
    let arcs = |oid: &str| -> Vec<u64> { oid.split('.').map(|n| n.parse().unwrap()).collect() };
    let legacy_cert = |key: &rcgen::KeyPair| -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.custom_extensions = vec![
            rcgen::CustomExtension::from_oid_content(
                &arcs(evidence::oid::TDX_QUOTE),
                quote_ext.clone(),
            ),
            rcgen::CustomExtension::from_oid_content(
                &arcs(evidence::oid::EVENT_LOG),
                log_ext.clone(),
            ),
        ];
        params.self_signed(key).unwrap().der().to_vec()
    };
    let key = rcgen::KeyPair::from_pem(r["key"].as_str().unwrap()).unwrap();
    let ev = evidence::decode_certificate_der(&[legacy_cert(&key)]).unwrap();
    assert!(
        ev.event_log
            .as_ref()
            .is_some_and(|l| l.runtime_events.is_empty()),
        "judged from the .2 JSON event log"
    );
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(d.claims["binding"]["ok"], true);
    assert_eq!(d.claims["app"]["rtmr3_replayed"], true);

    // The same extensions on a certificate for another key are not bound.
    let other = rcgen::KeyPair::generate().unwrap();
    let ev = evidence::decode_certificate_der(&[legacy_cert(&other)]).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(!d.allow);
    assert_eq!(d.claims["binding"]["ok"], false);
}

#[tokio::test]
async fn quotes_reflect_emitted_events_and_replay() {
    let a = start_agent(false).await;
    post(
        &a.url,
        "EmitEvent",
        json!({"event": "teesql-ready", "payload": "0102"}),
    )
    .await;
    let q = post(&a.url, "GetQuote", json!({"report_data": "aabb"})).await;
    let ev = evidence::decode_getquote_json(q.to_string().as_bytes()).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(d.allow, "{:?}", d.reasons);
    let events = d.claims["app"]["events"].as_array().unwrap();
    assert_eq!(events.last().unwrap()["event"], "teesql-ready");
    assert_eq!(d.claims["app"]["rtmr3_replayed"], true);
    assert!(
        d.claims["tdx"]["report_data"]
            .as_str()
            .unwrap()
            .starts_with("aabb0000")
    );

    let att = post(&a.url, "Attest", json!({"report_data": "cc"})).await;
    let ev = evidence::decode_attestation_text(att.to_string().as_bytes()).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(d.allow, "{:?}", d.reasons);

    let info = post(&a.url, "Info", json!({})).await;
    let tcb: Value = serde_json::from_str(info["tcb_info"].as_str().unwrap()).unwrap();
    assert_eq!(tcb["mrtd"], a.agent.mrtd_hex());
    assert_eq!(tcb["rtmr3"], d.claims["tdx"]["rtmr3"]);
}

#[tokio::test]
async fn bad_requests_get_400_with_a_reason() {
    let a = start_agent(false).await;
    let client = reqwest::Client::new();
    for (method, body) in [
        ("GetQuote", json!({"report_data": "zz"})),
        ("GetQuote", json!({"report_data": "00".repeat(65)})),
        ("EmitEvent", json!({"event": "", "payload": ""})),
        ("GetTlsKey", json!({"alt_names": 5})),
    ] {
        let resp = client
            .post(format!("{}/{method}", a.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{method} {body}");
        let err: Value = resp.json().await.unwrap();
        assert!(
            err["error"].as_str().unwrap().starts_with("bad request"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn concurrent_collateral_misses_make_one_fetch() {
    let a = start_agent(false).await;
    let q = post(&a.url, "GetQuote", json!({"report_data": "01"})).await;
    let quote = evidence::decode_getquote_json(q.to_string().as_bytes())
        .unwrap()
        .quote
        .unwrap();
    let before = a.agent.pccs_requests();
    let provider = Arc::new(
        CollateralProvider::new(&CollateralConfig {
            pccs_url: Some(a.url.clone()),
            ..CollateralConfig::default()
        })
        .unwrap(),
    );
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let p = provider.clone();
        let q = quote.clone();
        tasks.push(tokio::spawn(
            async move { p.collateral_for(&q).await.is_ok() },
        ));
    }
    for t in tasks {
        assert!(t.await.unwrap());
    }
    // pckcrl + tcb + qe/identity + rootcacrl: one fetch is four requests.
    assert_eq!(a.agent.pccs_requests() - before, 4);
    assert_eq!(
        provider
            .stats
            .fetches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Later requests hit the cache.
    provider.collateral_for(&quote).await.unwrap();
    assert_eq!(a.agent.pccs_requests() - before, 4);
}

/// The README's two commands: start the agent, verify its example certificate.
/// Multi-threaded: the agent must keep serving while this thread waits on the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_binary_on_an_agent_certificate() {
    let a = start_agent(false).await;
    let out = a.out.path();
    let run = |profile: &str, extra: &[&str]| {
        let mut args = vec![
            "verify".to_string(),
            "--cert".into(),
            out.join("example-ra-tls-cert.pem").display().to_string(),
            "--dev-trust-root".into(),
            out.join("dev-root.der").display().to_string(),
            "--pccs-url".into(),
            a.url.clone(),
            "--policy-dir".into(),
            format!("policies/{profile}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(env!("CARGO_BIN_EXE_teesql-verifier"))
            .args(&args)
            .current_dir(root())
            .output()
            .unwrap()
    };
    let dev = run("dev", &[]);
    let d: Value = serde_json::from_slice(&dev.stdout).unwrap();
    assert_eq!(dev.status.code(), Some(0), "{d}");
    assert_eq!(d["claims"]["binding"]["ok"], true);
    assert_eq!(d["claims"]["app"]["rtmr3_replayed"], true);
    let prod = run("teesql", &[]);
    assert_eq!(prod.status.code(), Some(1));
    let d: Value = serde_json::from_slice(&prod.stdout).unwrap();
    assert_eq!(d["reasons"][0]["code"], "dev_root");
    // The out dir is also an offline collateral directory.
    let offline = Command::new(env!("CARGO_BIN_EXE_teesql-verifier"))
        .args([
            "verify",
            "--cert",
            &out.join("example-ra-tls-cert.pem").display().to_string(),
            "--dev-trust-root",
            &out.join("dev-root.der").display().to_string(),
            "--collateral-dir",
            &out.display().to_string(),
            "--offline",
            "--policy-dir",
            "policies/dev",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(
        offline.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );
}

async fn post_status(url: &str, method: &str, body: Value) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{url}/{method}"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_dstack_0_6_agent_speaks_0_6_and_its_evidence_is_read() {
    let mut config = AgentConfig::new([8u8; 32]);
    config.dstack = DstackVersion::V06;
    let a = start_agent_with(config).await;

    // Its certificate: the V1 (msgpack) attestation with version 2 events, dstack 0.6's
    // 9-field app info, gpu-policy-hash among the boot events.
    let r = post(
        &a.url,
        "GetTlsKey",
        json!({"subject": "db.local", "usage_ra_tls": true, "with_app_info": true}),
    )
    .await;
    let chain_pem: Vec<String> = serde_json::from_value(r["certificate_chain"].clone()).unwrap();
    let chain = evidence::decode_cert_chain(chain_pem.concat().as_bytes()).unwrap();
    let ev = evidence::decode_certificate_der(&chain).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(d.allow, "{:?}", d.reasons);
    let c = &d.claims;
    assert_eq!(c["evidence"]["cert"]["attestation_format"], "versioned_v1");
    assert_eq!(c["app"]["rtmr3_replayed"], true);
    assert_eq!(c["app"]["app_id_attested_by"], "compose_hash");
    assert_eq!(
        c["app"]["gpu_policy_hash"],
        "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "SHA-256 of the canonical empty GPU policy {{}}"
    );
    assert_eq!(
        c["evidence"]["cert"]["app_info"]["init_script_hashes"],
        json!([])
    );
    assert_eq!(c["tdx"]["mr_config"]["matches_event_log"], true);

    // GetQuote: runtime events stripped of their digests, carrying their preimages.
    let q = post(&a.url, "GetQuote", json!({"report_data": "aabb"})).await;
    let log: Vec<Value> = serde_json::from_str(q["event_log"].as_str().unwrap()).unwrap();
    assert!(log.iter().all(|e| e["version"] == 2 && e["digest"] == ""));
    assert!(
        log.iter()
            .all(|e| e["preimage"].as_str().is_some_and(|p| p.starts_with("7b")))
    );
    let ev = evidence::decode_getquote_json(q.to_string().as_bytes()).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(d.allow, "{:?}", d.reasons);

    // A preimage that is not the event's own is refused, and so is an unknown version.
    let mut forged: Vec<Value> = log.clone();
    forged[1]["preimage"] = json!(hex::encode(
        br#"{"name":"app-id","payload":"00","type":134217729}"#
    ));
    let mut q2 = q.clone();
    q2["event_log"] = json!(serde_json::to_string(&forged).unwrap());
    let ev = evidence::decode_getquote_json(q2.to_string().as_bytes()).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(!d.allow);
    assert_eq!(codes(&d), ["rtmr3_mismatch"]);
    assert!(
        d.claims["app"]["replay_error"]
            .as_str()
            .unwrap()
            .contains("preimage"),
        "{}",
        d.claims["app"]
    );
    let mut v3 = log.clone();
    v3[0]["version"] = json!(3);
    q2["event_log"] = json!(serde_json::to_string(&v3).unwrap());
    let err = evidence::decode_getquote_json(q2.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("version 3"), "{err}");

    // Attest: the V1 attestation; EmitEvent is gone in 0.6.
    let att = post(&a.url, "Attest", json!({"report_data": "cc"})).await;
    assert!(
        att["attestation"].as_str().unwrap().starts_with('8'),
        "a msgpack map"
    );
    let ev = evidence::decode_attestation_text(att.to_string().as_bytes()).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(d.allow, "{:?}", d.reasons);
    assert_eq!(
        post_status(&a.url, "EmitEvent", json!({"event": "x", "payload": ""})).await,
        reqwest::StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn events_after_system_ready_never_change_the_identity() {
    let a = start_agent(false).await;
    let before = {
        let q = post(&a.url, "GetQuote", json!({"report_data": "01"})).await;
        let ev = evidence::decode_getquote_json(q.to_string().as_bytes()).unwrap();
        decide(&a, dev_root(&a), &policies("dev"), &ev).await.claims["app"].clone()
    };
    // An application emits what looks like identity, and a second system-ready.
    for (event, payload) in [
        ("os-image-hash", "ee".repeat(32)),
        ("app-id", "bb".repeat(20)),
        ("compose-hash", "cc".repeat(32)),
        ("system-ready", String::new()),
        ("instance-id", "dd".repeat(20)),
    ] {
        post(
            &a.url,
            "EmitEvent",
            json!({"event": event, "payload": payload}),
        )
        .await;
    }
    let q = post(&a.url, "GetQuote", json!({"report_data": "01"})).await;
    let ev = evidence::decode_getquote_json(q.to_string().as_bytes()).unwrap();
    let d = decide(&a, dev_root(&a), &policies("dev"), &ev).await;
    assert!(d.allow, "{:?}", d.reasons);
    let app = &d.claims["app"];
    assert_eq!(
        app["rtmr3_replayed"], true,
        "the emitted events are measured"
    );
    for field in [
        "app_id",
        "compose_hash",
        "instance_id",
        "os_image_hash",
        "key_provider",
    ] {
        assert_eq!(app[field], before[field], "{field}");
    }
    let runtime: Vec<&str> = app["runtime_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        runtime,
        [
            "os-image-hash",
            "app-id",
            "compose-hash",
            "system-ready",
            "instance-id"
        ]
    );
    // A pin on the emitted OS image hash is not met by it.
    let (_dir, pinned) =
        dev_profile_with(json!({"teesql": {"pins": {"os_image_hash": ["ee".repeat(32)]}}}));
    let d = decide(&a, dev_root(&a), &pinned, &ev).await;
    assert_eq!(codes(&d), ["os_image_hash_not_pinned"]);
}

#[tokio::test]
async fn an_app_id_is_an_identity_only_under_a_pinned_kms_or_from_the_compose_hash() {
    let chosen = [0x5a; 20];
    let agent_with = |provider: KeyProviderKind, app_id: Option<[u8; 20]>| {
        let mut config = AgentConfig::new([6u8; 32]);
        config.dstack = DstackVersion::V06;
        config.key_provider = provider;
        config.app_id = app_id;
        start_agent_with(config)
    };
    let kms_less = agent_with(KeyProviderKind::None, Some(chosen)).await;
    let under_kms = agent_with(KeyProviderKind::Kms, Some(chosen)).await;
    let derived = agent_with(KeyProviderKind::None, None).await;
    let pin = |app_id: &str, kms_roots: Vec<String>| {
        dev_profile_with(json!({"teesql": {"pins": {"app_id": [app_id]}, "kms_roots": kms_roots}}))
    };
    let claims_of = |a: &Agent| {
        let url = a.url.clone();
        async move {
            let (_, chain) = tls_key(&url, true).await;
            evidence::decode_certificate_der(&chain).unwrap()
        }
    };

    // A KMS-less 0.6 CVM measures the app id its operator chose: not an identity.
    let ev = claims_of(&kms_less).await;
    let (_d1, set) = pin(&hex::encode(chosen), vec![under_kms.agent.kms_root_hex()]);
    let d = decide(&kms_less, dev_root(&kms_less), &set, &ev).await;
    assert_eq!(d.claims["app"]["app_id"], hex::encode(chosen));
    assert_eq!(d.claims["app"]["app_id_attested_by"], "none");
    assert_eq!(d.claims["app"]["key_provider"]["name"], "none");
    assert_eq!(codes(&d), ["app_id_not_attested"]);
    assert!(
        d.reasons[0].message.contains("compose hash"),
        "{:?}",
        d.reasons
    );

    // The same app id under a KMS: an identity once that KMS's root is pinned.
    let ev = claims_of(&under_kms).await;
    let root = under_kms.agent.kms_root_hex();
    assert!(
        root.starts_with("3059301306072a8648ce3d0201"),
        "a P-256 SPKI: {root}"
    );
    let d = decide(&under_kms, dev_root(&under_kms), &set, &ev).await;
    assert_eq!(d.claims["app"]["app_id_attested_by"], "kms");
    assert!(d.allow, "{:?}", d.reasons);
    let (_d2, unpinned) = pin(&hex::encode(chosen), vec![]);
    let d = decide(&under_kms, dev_root(&under_kms), &unpinned, &ev).await;
    assert_eq!(codes(&d), ["app_id_not_attested"]);
    assert!(
        d.reasons[0].message.contains("kms_roots"),
        "{:?}",
        d.reasons
    );

    // dstack 0.5's KMS-less derivation, app id = compose hash's first 20 bytes, still is.
    let ev = claims_of(&derived).await;
    let (_d3, set) = pin(&derived.agent.app_id_hex(), vec![]);
    let d = decide(&derived, dev_root(&derived), &set, &ev).await;
    assert_eq!(d.claims["app"]["app_id_attested_by"], "compose_hash");
    assert!(d.allow, "{:?}", d.reasons);

    // dstack 0.5 never booted a KMS-less CVM with a chosen app id; the agent refuses to.
    let mut config = AgentConfig::new([6u8; 32]);
    config.key_provider = KeyProviderKind::None;
    config.app_id = Some(chosen);
    assert!(DevAgent::new(config).is_err());
}

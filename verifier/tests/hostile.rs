//! What a hostile peer can make the verifier do, replayed against `teesql-verifier serve`
//! as a process: every TLS client of a sidecar gets its certificate chain appraised before
//! it authenticates, so certificates built to be expensive must cost bounded memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use teesql_proto::v1::VerifyPeerRequest;
use teesql_proto::v1::verifier_client::VerifierClient;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A fresh self-signed client certificate whose `.9` app info is `app_info`.
fn certificate_with_app_info(app_info: &[u8]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["attacker".into()]).unwrap();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 62397, 1, 9],
            teesql_devattest::encode::extension_value(app_info),
        ));
    params.self_signed(&key).unwrap().der().to_vec()
}

/// msgpack: an array of `n` empty arrays.
fn empty_arrays(n: u16) -> Vec<u8> {
    let mut out = vec![0xdc];
    out.extend_from_slice(&n.to_be_bytes());
    out.extend(std::iter::repeat_n(0x90u8, usize::from(n)));
    out
}

/// The tests that measure a process's memory run one at a time: a second one competing
/// for the two cores changes how the allocator spreads its arenas, not what is kept.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expensive_client_certificates_cost_bounded_memory() {
    let _alone = ALONE.lock().await;
    let mut serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_teesql-verifier"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args([
                "--offline",
                "--decision-log",
                "off",
                "--cache-max-mib",
                "16",
            ])
            .arg("--policy-dir")
            .arg(root().join("policies/teesql"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (mut grpc, mut metrics) = (None, None);
    for line in BufReader::new(serve.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("teesql-verifier metrics on ") {
            metrics = Some(rest.to_string());
        }
        if let Some(rest) = line.strip_prefix("teesql-verifier listening on ") {
            grpc = Some(format!("http://{}", rest.split(' ').next().unwrap()));
            break;
        }
    }
    let metrics = metrics.unwrap();
    let mut client = VerifierClient::connect(grpc.unwrap()).await.unwrap();
    let pid = serve.0.id();

    let ask = |cert: Vec<u8>| VerifyPeerRequest {
        purpose: "sidecar".into(),
        chain: vec![cert],
        user: "teesql_read".into(),
        ..Default::default()
    };
    // Warm up (allocator, policy, channel), then measure.
    for _ in 0..20 {
        client
            .verify_peer(ask(certificate_with_app_info(&empty_arrays(10))))
            .await
            .unwrap();
    }
    let before = rss_kib(pid);

    // The reported attack: ~50 KB of nested msgpack in `.9`, a fresh certificate per
    // connection: refused from its length, before decoding; nothing is kept. Then the
    // largest app info allowed, as many times: decoded, refused, and cached only in the
    // small tier for unverified evidence. Two rounds: the second must not grow further.
    let big = empty_arrays(50_000);
    let largest = empty_arrays(4090);
    const N: usize = 300;
    let mut after_round = Vec::new();
    for _round in 0..2 {
        for _ in 0..N {
            let d = client
                .verify_peer(ask(certificate_with_app_info(&big)))
                .await
                .unwrap()
                .into_inner();
            assert!(!d.allow);
            assert_eq!(d.reasons[0].code, "evidence_malformed", "{d:?}");
            assert!(d.reasons[0].message.contains("at most 4096"), "{d:?}");
            let d = client
                .verify_peer(ask(certificate_with_app_info(&largest)))
                .await
                .unwrap()
                .into_inner();
            assert!(!d.allow, "{d:?}");
        }
        after_round.push(rss_kib(pid));
    }
    let after = after_round[1];
    let unverified = metric(
        &metrics,
        "teesql_verifier_appraisal_cache_bytes{tier=\"unverified\"} ",
    )
    .await;
    let verified = metric(
        &metrics,
        "teesql_verifier_appraisal_cache_bytes{tier=\"verified\"} ",
    )
    .await;
    eprintln!(
        "verifier RSS {before} KiB -> {} KiB -> {after} KiB after 2 x {} hostile certificates; cache: {unverified} B unverified, {verified} B verified",
        after_round[0],
        2 * N
    );
    // Unverified evidence has a sixteenth of 16 MiB, at least 1 MiB; moka may briefly
    // overshoot by what it has not yet evicted.
    assert!(unverified <= 2.0 * 1_048_576.0, "{unverified}");
    assert_eq!(verified, 0.0);
    // Before the bounds, each of these certificates kept ~7.6 MiB for up to an hour
    // (1,200 of them: gigabytes). Now the growth stays within the cache budgets plus the
    // allocator's working set, and a second round adds nothing to speak of.
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    assert!(
        after.saturating_sub(after_round[0]) < 8 * 1024,
        "RSS kept growing: {} KiB then {after} KiB",
        after_round[0]
    );
}

/// A peer with a genuine quote (the development PKI signs for real here) can still make
/// every connection's evidence new: a fresh key means a fresh quote and a fresh cache
/// entry, each holding the claims of a long event log. The verified tier keeps them to
/// its byte budget; the process's memory must follow what the cache weighs, within a
/// quarter of the budget plus the base it started from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_genuine_quotes_fill_the_cache_to_its_budget_and_no_further() {
    let _alone = ALONE.lock().await;
    let agent =
        teesql_devattest::DevAgent::new(teesql_devattest::AgentConfig::new([0x4d; 32])).unwrap();
    // 60 runtime events of 1 KiB after boot: the most the claims keep of each.
    for i in 0..60 {
        agent
            .extend_rtmr3(&format!("junk-{i}"), &[i as u8; 1024])
            .await
            .unwrap();
    }
    let (pccs, _agent_stop) = agent.spawn_on_loopback(0, Vec::new()).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    agent.write_out_dir(out.path()).await.unwrap();
    const BUDGET_MIB: u64 = 64;
    let mut serve = Serve(
        Command::new(env!("CARGO_BIN_EXE_teesql-verifier"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--decision-log",
                "off",
                "--cache-max-mib",
                &BUDGET_MIB.to_string(),
                "--pccs-url",
                &pccs,
            ])
            .arg("--dev-trust-root")
            .arg(out.path().join("dev-root.der"))
            .arg("--policy-dir")
            .arg(root().join("policies/dev"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (mut grpc, mut metrics) = (None, None);
    for line in BufReader::new(serve.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("teesql-verifier metrics on ") {
            metrics = Some(rest.to_string());
        }
        if let Some(rest) = line.strip_prefix("teesql-verifier listening on ") {
            grpc = Some(format!("http://{}", rest.split(' ').next().unwrap()));
            break;
        }
    }
    let metrics = metrics.unwrap();
    let mut client = VerifierClient::connect(grpc.unwrap()).await.unwrap();
    let pid = serve.0.id();
    let fresh = || async {
        let issued = agent
            .issue_tls_key(&teesql_devattest::RaTlsRequest {
                subject: "client".into(),
                usage_ra_tls: true,
                usage_client_auth: true,
                ..Default::default()
            })
            .await
            .unwrap();
        VerifyPeerRequest {
            purpose: "sidecar".into(),
            chain: vec![issued.leaf_der],
            user: "teesql_read".into(),
            ..Default::default()
        }
    };
    let verified_bytes = || async {
        metric(
            &metrics,
            "teesql_verifier_appraisal_cache_bytes{tier=\"verified\"} ",
        )
        .await
    };
    for _ in 0..10 {
        let d = client
            .verify_peer(fresh().await)
            .await
            .unwrap()
            .into_inner();
        assert!(
            d.claims_json.contains("\"verified\":true"),
            "development quotes verify: {d:?}"
        );
    }
    let before = rss_kib(pid);
    // Fill the budget, then send as many again: the first half is evicted by the second.
    let budget = BUDGET_MIB * 1024 * 1024;
    let mut to_fill = 0u64;
    while verified_bytes().await < 0.9 * budget as f64 {
        for _ in 0..10 {
            client.verify_peer(fresh().await).await.unwrap();
        }
        to_fill += 10;
        assert!(to_fill < 10_000, "the cache never filled");
    }
    for _ in 0..to_fill {
        client.verify_peer(fresh().await).await.unwrap();
    }
    let sent = 2 * to_fill;
    let per_entry = 0.9 * budget as f64 / to_fill as f64;
    // Let moka settle what it has not yet evicted.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let after = rss_kib(pid);
    let held = verified_bytes().await;
    let budget_kib = budget / 1024;
    eprintln!(
        "verified tier: {sent} fresh quotes of ~{:.0} KiB each as weighed; cache holds {:.1} MiB of a {BUDGET_MIB} MiB budget; RSS {before} KiB -> {after} KiB (+{} KiB, {:.2} x budget)",
        per_entry / 1024.0,
        held / 1_048_576.0,
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / budget_kib as f64
    );
    assert!(
        held >= 0.5 * budget as f64,
        "the cache filled to its budget: {held}"
    );
    assert!(
        after.saturating_sub(before) <= budget_kib * 5 / 4,
        "RSS grew from {before} KiB to {after} KiB: more than 1.25 x the {BUDGET_MIB} MiB budget"
    );
}

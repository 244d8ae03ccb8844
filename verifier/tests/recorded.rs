//! The real pipeline (decode, dcap-qvl, RTMR3 replay, claims, shipped Rego policies) on
//! every recorded sample in `testdata/`, with `now` pinned inside each sample's
//! collateral window (see testdata/README.md), and at today's time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use teesql_verifier::backend::BackendConfig;
use teesql_verifier::evidence::{self, Evidence};
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet};
use teesql_verifier::{Clock, Decision, DecisionRequest};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn testdata(p: &str) -> PathBuf {
    root().join("testdata").join(p)
}

/// A recorded quote with its collateral and a time inside its window.
struct Sample {
    quote: &'static str,
    collateral: &'static str,
    now: u64,
}

const TDX: Sample = Sample {
    quote: "dcap/tdx_quote",
    collateral: "dcap/tdx_quote_collateral.json",
    now: 1_751_000_000,
};
const NEAR: Sample = Sample {
    quote: "dstack-near/quote.hex",
    collateral: "dstack-near/quote_collateral.json",
    now: 1_757_000_000,
};
const OUTDATED: Sample = Sample {
    quote: "dcap/tdx_quote_outdated",
    collateral: "dcap/tdx_quote_outdated_collateral.json",
    now: 1_772_000_000,
};
const SGX: Sample = Sample {
    quote: "dcap/sgx_quote",
    collateral: "dcap/sgx_quote_collateral.json",
    now: 1_751_000_000,
};

/// A profile extending the production one with `data` merged over its data.
fn profile(data: serde_json::Value) -> (tempfile::TempDir, PolicySet) {
    let dir = tempfile::tempdir().unwrap();
    let base = root().join("policies/teesql").canonicalize().unwrap();
    std::fs::write(
        dir.path().join("profile.toml"),
        format!("extends = [{:?}]\n", base.display().to_string()),
    )
    .unwrap();
    std::fs::write(dir.path().join("data.json"), data.to_string()).unwrap();
    let set = PolicySet::load(&[dir.path().to_path_buf()], DEFAULT_EVAL_LIMIT).unwrap();
    (dir, set)
}

fn production() -> PolicySet {
    PolicySet::load(&[root().join("policies/teesql")], DEFAULT_EVAL_LIMIT).unwrap()
}

async fn decide_with(
    policies: &PolicySet,
    evidence: &Evidence,
    collateral: Option<&str>,
    now: u64,
    expected_report_data: Option<&[u8]>,
) -> Decision {
    let backend = BackendConfig::recorded(collateral.map(testdata), now)
        .build()
        .unwrap();
    let request = DecisionRequest {
        expected_report_data,
        ..DecisionRequest::new(evidence, "quote", now)
    };
    backend.appraiser.decide(policies, request).await.unwrap()
}

fn quote_evidence(path: &str) -> Evidence {
    Evidence::from_quote(
        evidence::decode_quote_text(&std::fs::read(testdata(path)).unwrap()).unwrap(),
    )
}

async fn decide_sample(policies: &PolicySet, s: &Sample) -> Decision {
    decide_with(
        policies,
        &quote_evidence(s.quote),
        Some(s.collateral),
        s.now,
        None,
    )
    .await
}

fn codes(d: &Decision) -> Vec<&str> {
    d.reasons.iter().map(|r| r.code.as_str()).collect()
}

fn mrtd(d: &Decision) -> String {
    d.claims["tdx"]["mrtd"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn up_to_date_samples_allow_when_their_mrtd_is_pinned_and_deny_otherwise() {
    for sample in [TDX, NEAR] {
        let open = decide_sample(&production(), &sample).await;
        assert!(open.allow, "{}: {:?}", sample.quote, open.reasons);
        assert_eq!(open.claims["tdx"]["tcb_status"], "UpToDate");
        assert_eq!(open.claims["tdx"]["root"], "intel");
        assert_eq!(open.claims["tdx"]["debug"], false);

        let pinned = mrtd(&open);
        let (_dir, with_pin) =
            profile(serde_json::json!({"teesql": {"pins": {"mrtd": [pinned.to_uppercase()]}}}));
        let allowed = decide_sample(&with_pin, &sample).await;
        assert!(allowed.allow, "{}: {:?}", sample.quote, allowed.reasons);
        assert_ne!(allowed.policy_hash, open.policy_hash);

        let other = "ab".repeat(48);
        let (_dir, other_pin) =
            profile(serde_json::json!({"teesql": {"pins": {"mrtd": [other.clone()]}}}));
        let denied = decide_sample(&other_pin, &sample).await;
        assert!(!denied.allow);
        assert_eq!(codes(&denied), ["mrtd_not_pinned"]);
        let msg = &denied.reasons[0].message;
        assert!(msg.contains(&pinned) && msg.contains(&other), "{msg}");
    }
}

#[tokio::test]
async fn tdx_sample_claims_match_its_provenance() {
    let d = decide_sample(&production(), &TDX).await;
    let tdx = &d.claims["tdx"];
    assert!(mrtd(&d).starts_with("91eb2b44") && mrtd(&d).ends_with("8873118b7"));
    assert_eq!(tdx["rtmr3"], "0".repeat(96));
    assert_eq!(tdx["verified"], true);
    assert_eq!(tdx["collateral"]["not_before"], 1_750_329_147);
    assert_eq!(tdx["collateral"]["not_after"], 1_752_919_235);
}

#[tokio::test]
async fn near_sample_carries_a_compose_hash_in_mr_config_id() {
    let d = decide_sample(&production(), &NEAR).await;
    let id = d.claims["tdx"]["mr_config_id"].as_str().unwrap();
    assert!(id.starts_with("01"), "{id}");
    assert_ne!(d.claims["tdx"]["rtmr3"], "0".repeat(96));
}

#[tokio::test]
async fn outdated_sample_matches_no_tcb_level() {
    let d = decide_sample(&production(), &OUTDATED).await;
    assert!(!d.allow);
    assert_eq!(codes(&d), ["tcb_level_unknown"]);
    assert_eq!(d.claims["tdx"]["verified"], false);
    assert!(d.reasons[0].message.contains("TCB level"));
}

#[tokio::test]
async fn sgx_sample_is_refused_as_not_tdx() {
    let d = decide_sample(&production(), &SGX).await;
    assert!(!d.allow);
    assert_eq!(codes(&d), ["not_tdx"]);
    assert_eq!(d.claims["tdx"]["tee_type"], "sgx");
    assert!(d.claims["tdx"]["mrtd"].is_null());
}

#[tokio::test]
async fn a_flipped_bit_anywhere_signed_breaks_the_signature() {
    let raw = std::fs::read(testdata(TDX.quote)).unwrap();
    // In the TD report (MRTD), in the report data, and in the quote signature itself.
    for (offset, what) in [(200usize, "mrtd"), (600, "report data"), (640, "signature")] {
        let mut bad = raw.clone();
        bad[offset] ^= 0x01;
        let ev = Evidence::from_quote(evidence::decode_quote_bytes(&bad).unwrap());
        let d = decide_with(&production(), &ev, Some(TDX.collateral), TDX.now, None).await;
        assert!(!d.allow, "{what}");
        assert_eq!(
            codes(&d),
            ["quote_signature_invalid"],
            "{what}: {:?}",
            d.reasons
        );
    }
}

#[tokio::test]
async fn every_sample_is_refused_at_todays_time_as_expired() {
    let today = Clock::System.now();
    for sample in [TDX, NEAR, OUTDATED, SGX] {
        let d = decide_with(
            &production(),
            &quote_evidence(sample.quote),
            Some(sample.collateral),
            today,
            None,
        )
        .await;
        assert!(!d.allow, "{}", sample.quote);
        assert_eq!(codes(&d), ["collateral_expired"], "{}", sample.quote);
    }
}

#[tokio::test]
async fn expected_report_data_binds_or_denies() {
    let ev = quote_evidence(TDX.quote);
    let rd = hex::decode(
        decide_sample(&production(), &TDX).await.claims["tdx"]["report_data"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let bound = decide_with(&production(), &ev, Some(TDX.collateral), TDX.now, Some(&rd)).await;
    assert!(bound.allow, "{:?}", bound.reasons);
    assert_eq!(bound.claims["binding"]["kind"], "report_data");
    assert_eq!(bound.claims["binding"]["ok"], true);

    let other = decide_with(
        &production(),
        &ev,
        Some(TDX.collateral),
        TDX.now,
        Some(b"nonce"),
    )
    .await;
    assert_eq!(codes(&other), ["key_not_bound"]);
}

/// An RA-TLS certificate (legacy `.1` form) whose key is not the one the embedded,
/// genuine quote binds: a replayed quote.
#[tokio::test]
async fn certificate_whose_key_the_quote_does_not_bind_is_denied() {
    let quote = std::fs::read(testdata(TDX.quote)).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["db.example".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2026, 1, 1);
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 62397, 1, 1],
            teesql_devattest::encode::extension_value(&quote),
        ));
    let cert = params.self_signed(&key).unwrap();
    let ev = evidence::decode_certificate_der(&[cert.der().to_vec()]).unwrap();
    let d = decide_with(&production(), &ev, Some(TDX.collateral), TDX.now, None).await;
    assert!(!d.allow);
    assert_eq!(codes(&d), ["key_not_bound"], "{:?}", d.reasons);
    assert_eq!(d.claims["evidence"]["kind"], "ra_tls_cert");
    assert_eq!(
        d.claims["evidence"]["cert"]["attestation_format"],
        "legacy_quote"
    );
    assert_eq!(d.claims["tdx"]["verified"], true);
}

#[tokio::test]
async fn rtmr3_replay_reproduces_the_quote_for_dstack_fixtures() {
    let blob = evidence::decode_attestation_text(
        &std::fs::read(testdata("dstack/simulator-attestation.bin")).unwrap(),
    )
    .unwrap();
    let lite = evidence::decode_attestation_text(
        &std::fs::read(testdata("dstack/attestation-tdx-lite.json")).unwrap(),
    )
    .unwrap();
    let gq1 = evidence::decode_getquote_json(
        &std::fs::read(testdata("dstack/getquote-quote-report.json")).unwrap(),
    )
    .unwrap();
    let gq2 = evidence::decode_getquote_json(
        &std::fs::read(testdata("dstack/getquote-tdx-lite.json")).unwrap(),
    )
    .unwrap();
    for (name, ev) in [
        ("simulator blob", blob),
        ("tdx-lite attestation", lite),
        ("GetQuote quote-report", gq1),
        ("GetQuote tdx-lite", gq2),
    ] {
        // No collateral exists for these: the quote is unverified, the replay still runs.
        let d = decide_with(&production(), &ev, None, 1_760_000_000, None).await;
        let app = &d.claims["app"];
        assert_eq!(app["rtmr3_replayed"], true, "{name}: {app}");
        assert_eq!(app["rtmr3_replay"], d.claims["tdx"]["rtmr3"], "{name}");
        assert_eq!(
            d.claims["evidence"]["report_data_consistent"], true,
            "{name}"
        );
        assert_eq!(codes(&d), ["collateral_unavailable"], "{name}");
        assert!(
            app["app_id"].is_string() && app["compose_hash"].is_string(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn simulator_blob_identity_is_read_from_its_events() {
    let ev = evidence::decode_attestation_text(
        &std::fs::read(testdata("dstack/simulator-attestation.bin")).unwrap(),
    )
    .unwrap();
    let d = decide_with(&production(), &ev, None, 1_760_000_000, None).await;
    let app = &d.claims["app"];
    assert_eq!(app["app_id"], "5bb4ff9a3837357f19dc176407a5709c62eb6c56");
    assert_eq!(
        app["instance_id"],
        "1691ed1b47506cad7d08834668691d88246f5b1f"
    );
    assert_eq!(app["key_provider"]["name"], "kms");
    assert_eq!(app["events"].as_array().unwrap().len(), 9);
    assert!(d.claims["evidence"]["vm_config"]["vm_config"].is_string());
}

#[tokio::test]
async fn tampered_event_log_fails_replay() {
    let mut att = evidence::decode_attestation(
        &std::fs::read(testdata("dstack/simulator-attestation.bin")).unwrap(),
    )
    .unwrap();
    att.runtime_events[2].payload[0] ^= 0xff; // compose-hash
    let ev = att
        .into_evidence(evidence::EvidenceKind::DstackAttestation)
        .unwrap();
    let d = decide_with(&production(), &ev, None, 1_760_000_000, None).await;
    assert_eq!(d.claims["app"]["rtmr3_replayed"], false);
    assert!(codes(&d).contains(&"rtmr3_mismatch"));
}

/// dstack 0.6's `GetQuote` with the evidence in `attestation` (its only field on non-TDX
/// platforms and in dstack's simulator), made from dstack's own tdx-lite attestation.
#[tokio::test]
async fn getquote_with_an_attestation_field_is_read_from_it() {
    let wrapped: serde_json::Value = serde_json::from_slice(
        &std::fs::read(testdata("dstack/attestation-tdx-lite.json")).unwrap(),
    )
    .unwrap();
    let attestation = wrapped["attestation"].as_str().unwrap();
    let only = serde_json::json!({"quote": "", "event_log": "", "attestation": attestation});
    let ev = evidence::decode_getquote_json(only.to_string().as_bytes()).unwrap();
    assert_eq!(ev.kind, evidence::EvidenceKind::Getquote);
    let d = decide_with(&production(), &ev, None, 1_760_000_000, None).await;
    assert_eq!(
        d.claims["app"]["rtmr3_replayed"], true,
        "{}",
        d.claims["app"]
    );
    assert_eq!(d.claims["app"]["key_provider"]["name"], "kms");
    assert_eq!(d.claims["tdx"]["mr_config"]["form"], "v1");
    assert_eq!(d.claims["tdx"]["mr_config"]["matches_event_log"], true);

    // A quote and report data beside it must be the attestation's own.
    let att = evidence::decode_attestation(&hex::decode(attestation).unwrap()).unwrap();
    let same = serde_json::json!({"quote": hex::encode(&att.quote), "report_data": hex::encode(att.report_data), "attestation": attestation});
    assert!(evidence::decode_getquote_json(same.to_string().as_bytes()).is_ok());
    let mut other_quote = att.quote.clone();
    other_quote[100] ^= 1;
    let differs =
        serde_json::json!({"quote": hex::encode(other_quote), "attestation": attestation});
    let err = evidence::decode_getquote_json(differs.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("differs"), "{err}");
    let differs = serde_json::json!({"report_data": "ff", "attestation": attestation});
    assert!(evidence::decode_getquote_json(differs.to_string().as_bytes()).is_err());
    let empty = serde_json::json!({"quote": "", "event_log": ""});
    let err = evidence::decode_getquote_json(empty.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("neither"), "{err}");
}

/// The report that found it: dstack's 0.5 fixture with one `os-image-hash` event emitted
/// after `system-ready` was reported as the attested OS image. (The quote is dstack's,
/// so the changed log no longer replays; the identity must not move either way.)
#[tokio::test]
async fn an_os_image_hash_emitted_after_system_ready_is_not_the_os_image() {
    let mut doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(testdata("dstack/getquote-quote-report.json")).unwrap(),
    )
    .unwrap();
    let mut log: Vec<serde_json::Value> =
        serde_json::from_str(doc["event_log"].as_str().unwrap()).unwrap();
    log.push(serde_json::json!({"imr": 3, "event_type": 134217729, "digest": "", "event": "os-image-hash", "event_payload": "ee".repeat(32)}));
    doc["event_log"] = serde_json::Value::String(serde_json::to_string(&log).unwrap());
    let ev = evidence::decode_getquote_json(doc.to_string().as_bytes()).unwrap();
    let d = decide_with(&production(), &ev, None, 1_760_000_000, None).await;
    let app = &d.claims["app"];
    assert_eq!(app["os_image_hash"], serde_json::Value::Null, "{app}");
    let runtime: Vec<&str> = app["runtime_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(runtime, ["LIUM_MINER_HOTKEY", "os-image-hash"]);
    // dstack 0.5, local-sgx: the app id is the compose hash's first 20 bytes.
    assert_eq!(app["app_id_attested_by"], "compose_hash");
}

/// A V1 attestation with a runtime event of a version dstack does not define is refused,
/// not hashed as version 1.
#[tokio::test]
async fn runtime_events_of_unknown_versions_are_refused() {
    use rmpv::Value;
    let att = evidence::decode_attestation(
        &std::fs::read(testdata("dstack/simulator-attestation.bin")).unwrap(),
    )
    .unwrap();
    for (version, ok) in [(1u8, true), (2, true), (3, false), (0, false)] {
        let s = |t: &str| Value::String(t.into());
        let events: Vec<Value> = att
            .runtime_events
            .iter()
            .map(|e| {
                Value::Map(vec![
                    (s("event"), s(&e.event)),
                    (s("payload"), Value::Binary(e.payload.clone())),
                    (s("version"), Value::from(version)),
                ])
            })
            .collect();
        let doc = Value::Map(vec![
            (s("version"), Value::from(1)),
            (
                s("platform"),
                Value::Map(vec![
                    (s("kind"), s("tdx")),
                    (
                        s("data"),
                        Value::Map(vec![(s("quote"), Value::Binary(att.quote.clone()))]),
                    ),
                ]),
            ),
            (
                s("stack"),
                Value::Map(vec![
                    (s("kind"), s("dstack")),
                    (
                        s("data"),
                        Value::Map(vec![
                            (s("report_data"), Value::Binary(att.report_data.to_vec())),
                            (s("runtime_events"), Value::Array(events)),
                        ]),
                    ),
                ]),
            ),
        ]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &doc).unwrap();
        match evidence::decode_attestation(&buf) {
            Ok(_) => assert!(ok, "version {version} accepted"),
            Err(e) => {
                assert!(!ok, "version {version}: {e}");
                assert!(e.to_string().contains("version"), "{e}");
            }
        }
    }
}

//! Golden claims: the exact documents policies see, and CLAIMS.md kept in step with them.
//!
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p teesql-verifier --test claims_golden`
//! and review the diff: a change here is a change to every policy's input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use teesql_verifier::backend::BackendConfig;
use teesql_verifier::claims::{Claims, ConnectionClaims};
use teesql_verifier::evidence;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn claims_for(
    ev: &evidence::Evidence,
    collateral: Option<&str>,
    now: u64,
    purpose: &str,
    connection: Option<ConnectionClaims>,
) -> Claims {
    let backend = BackendConfig::recorded(collateral.map(|c| root().join("testdata").join(c)), now)
        .build()
        .unwrap();
    backend
        .appraiser
        .appraise(ev, now, None)
        .await
        .into_claims(purpose, now, connection)
}

/// An RA-TLS certificate in the current form (`.8` V0) carrying the recorded simulator
/// attestation, with every informational extension, signed by a fixed test key so the
/// document is deterministic.
fn ra_tls_cert() -> Vec<u8> {
    let key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(root().join("testdata/fixtures/test-p256-key.pem")).unwrap(),
    )
    .unwrap();
    let blob = std::fs::read(root().join("testdata/dstack/simulator-attestation.bin")).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["db.example".to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "db.example");
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let ext = |n: u64, content: &[u8]| {
        rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 62397, 1, n],
            teesql_devattest::encode::extension_value(content),
        )
    };
    // App info in dstack's compact (positional msgpack array) form.
    let app_info = {
        use rmpv::Value;
        let mut buf = Vec::new();
        let v = Value::Array(vec![
            Value::Binary(vec![0xa1; 20]),
            Value::Binary(vec![0xc1; 32]),
            Value::Binary(vec![0x11; 20]),
            Value::Binary(vec![0xd1; 32]),
            Value::Binary(vec![0x51; 32]),
            Value::Binary(vec![0x62; 32]),
            Value::Binary(vec![0xe1; 32]),
            Value::Binary(br#"{"name":"kms","id":""}"#.to_vec()),
        ]);
        rmpv::encode::write_value(&mut buf, &v).unwrap();
        buf
    };
    params.custom_extensions = vec![
        ext(3, &[0xa1; 20]),
        ext(4, b"app:custom"),
        ext(8, &blob),
        ext(9, &app_info),
    ];
    params.self_signed(&key).unwrap().der().to_vec()
}

fn check_golden(name: &str, claims: &Claims) -> serde_json::Value {
    let path = root().join("verifier/tests/golden").join(name);
    let actual = serde_json::to_string_pretty(claims).unwrap() + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(
        actual,
        expected,
        "claims differ from {}; if intended, regenerate with UPDATE_GOLDEN=1 and update CLAIMS.md",
        path.display()
    );
    serde_json::from_str(&actual).unwrap()
}

#[tokio::test]
async fn claims_documents_match_golden_files_and_claims_md() {
    let quote = evidence::Evidence::from_quote(
        evidence::decode_quote_text(
            &std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap(),
        )
        .unwrap(),
    );
    let quote_claims = claims_for(
        &quote,
        Some("dcap/tdx_quote_collateral.json"),
        1_751_000_000,
        "quote",
        None,
    )
    .await;
    let a = check_golden("claims-tdx-quote.json", &quote_claims);
    // The same quote with Intel's next set beside the standard one (a collateral
    // directory with the early set and the evaluation numbers): TCB-R 20 demotes it.
    // At a time inside both the collateral's window and the evaluation numbers list's
    // (served 2025-05-27, nextUpdate 2025-06-26T18:50:21Z).
    let early_claims = claims_for(&quote, Some("pcs"), LIST_CURRENT, "quote", None).await;
    let e = check_golden("claims-tdx-quote-early.json", &early_claims);
    assert_eq!(e["tdx"]["tcb"]["standard_since"], "2025-03-12T00:00:00Z");
    // A day later the list is past its nextUpdate: the same statuses, no dates.
    let stale = claims_for(&quote, Some("pcs"), 1_751_000_000, "quote", None).await;
    let stale = serde_json::to_value(&stale).unwrap();
    assert_eq!(stale["tdx"]["tcb"]["early"]["status"], "OutOfDate");
    assert!(stale["tdx"]["tcb"]["standard_since"].is_null(), "{stale:#}");
    assert!(stale["tdx"]["tcb"]["days_since_standard"].is_null());
    assert_eq!(e["tdx"]["tcb_status"], "UpToDate");
    assert_eq!(e["tdx"]["tcb"]["eval_data_number"], 17);
    assert_eq!(e["tdx"]["tcb"]["early"]["status"], "OutOfDate");
    assert_eq!(e["tdx"]["tcb"]["early"]["eval_data_number"], 20);
    assert_eq!(e["tdx"]["tcb"]["fix"][3]["component"], "tdx_module");

    let cert = evidence::decode_certificate_der(&[ra_tls_cert()]).unwrap();
    let connection = ConnectionClaims {
        user: "teesql_read".into(),
        database: "app".into(),
        sni: "db.example".into(),
        client_addr: "127.0.0.1:40000".into(),
        alpn: "postgresql".into(),
        expected_mrtds: vec!["91eb2b44".into()],
        expected_compose_hashes: vec![],
        expected_app_ids: vec![],
    };
    let cert_claims = claims_for(&cert, None, 1_760_000_000, "sidecar", Some(connection)).await;
    let b = check_golden("claims-ra-tls-cert.json", &cert_claims);
    assert_eq!(b["app"]["rtmr3_replayed"], true);
    assert_eq!(b["binding"]["ok"], false);

    // dstack's recorded GetQuote (0.5, local-sgx key provider), whose log goes on after
    // system-ready with an event the application emitted.
    let getquote = evidence::decode_getquote_json(
        &std::fs::read(root().join("testdata/dstack/getquote-quote-report.json")).unwrap(),
    )
    .unwrap();
    let getquote_claims = claims_for(&getquote, None, 1_760_000_000, "quote", None).await;
    let g = check_golden("claims-getquote.json", &getquote_claims);
    assert_eq!(g["app"]["rtmr3_replayed"], true);
    assert_eq!(g["app"]["system_ready"], true);
    assert_eq!(g["app"]["runtime_events"][0]["event"], "LIUM_MINER_HOTKEY");
    assert_eq!(g["tdx"]["mr_config"]["form"], "unused");

    // The recorded quote as the `ita` backend reports it (facts as it builds them from a
    // token: see tests/tests/ita.rs for the backend itself against Intel-shaped tokens).
    let mut ita_facts = teesql_verifier::backend::QuoteFacts::new(
        "ita",
        teesql_verifier::backend::TrustRootKind::IntelTrustAuthority,
    );
    ita_facts.verified = true;
    ita_facts.tcb_status = Some("UpToDate".into());
    ita_facts.collateral = Some(teesql_verifier::backend::CollateralWindow {
        not_before: 1_750_999_900,
        not_after: 1_751_000_200,
    });
    ita_facts.token_sha256 = Some("ab".repeat(32));
    ita_facts.ita = Some(teesql_verifier::backend::ItaFacts {
        issuer: "Intel Trust Authority".into(),
        ver: Some("2.0.0".into()),
        jti: Some("304915ef-ec89-48a4-bae0-890c09978d3e".into()),
        attester_tcb_date: Some("2024-03-13T00:00:00Z".into()),
        verifier_instance_ids: vec!["605a1fb4-4831-487b-9422-980c16ae0585".into()],
        policy_ids_required: vec!["b802fff0-eba4-4286-9fdb-7a3cdc04e94d".into()],
        policy_ids_matched: vec!["b802fff0-eba4-4286-9fdb-7a3cdc04e94d".into()],
        policy_ids_unmatched: vec![],
    });
    let ita_claims =
        teesql_verifier::claims::AppraisedEvidence::build(&quote, Some(&ita_facts), None)
            .into_claims("quote", 1_751_000_000, None);
    let i = check_golden("claims-ita.json", &ita_claims);
    assert_eq!(i["tdx"]["ita"]["issuer"], "Intel Trust Authority");

    // A manifest (judged alone) and a sidecar report.
    let key = k256::ecdsa::SigningKey::from_slice(&[0x11; 32]).unwrap();
    let mut m = teesql_verifier::manifest::Manifest::parse(&format!(
        "v=1;cluster=0xbd32b609057a1a4569558a571d535c8f1212b097;leader_instance=ea23198e3419ebbb240571a29d0112d9bcbe69c0;leader_url=https://leader.example:5433;epoch=42;valid_until=1800000000;sig=0x{}",
        "00".repeat(65)
    ))
    .unwrap();
    m.signature = teesql_verifier::manifest::sign(&key, &m).unwrap();
    let mut manifest_claims = claims_for(
        &evidence::Evidence::none(),
        None,
        1_760_000_000,
        "manifest",
        None,
    )
    .await;
    manifest_claims.manifest = Some(teesql_verifier::manifest::Manifest::claims(&m.to_txt()));
    let c = check_golden("claims-manifest.json", &manifest_claims);
    assert_eq!(
        c["manifest"]["signer"],
        "0x19e7e376e7c213b7e7e7e46cc70a5dd086daff2a"
    );

    let report = teesql_verifier::report::AttestationReport {
        app_id: "a1".into(),
        compose_hash: "c1".into(),
        instance_id: "i1".into(),
        quote: hex::encode(std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap()),
        tcb_info: teesql_verifier::report::ReportTcbInfo {
            mrtd: quote_claims.tdx.as_ref().unwrap().mrtd.clone().unwrap(),
            rtmr0: "00".into(),
            rtmr1: "00".into(),
            rtmr2: "00".into(),
            rtmr3: "00".into(),
        },
        postgres_state: teesql_verifier::report::PostgresState {
            wal_lsn: "0/16B3740".into(),
            controldata_hash: "ab".repeat(32),
            pg_version: "17.2".into(),
        },
        timestamp: 1_751_000_000,
        event_log: String::new(),
        vm_config: String::new(),
    };
    let mut report_claims = claims_for(
        &teesql_verifier::report::evidence(&report).unwrap(),
        Some("dcap/tdx_quote_collateral.json"),
        1_751_000_100,
        "report",
        None,
    )
    .await;
    let measured = teesql_verifier::claims::AppraisedEvidence {
        evidence: report_claims.evidence.clone(),
        tdx: report_claims.tdx.clone(),
        snp: report_claims.snp.clone(),
        app: report_claims.app.clone(),
        binding: report_claims.binding.clone(),
    }
    .measured();
    report_claims.report = Some(teesql_verifier::report::claims(&report, &measured));
    let r = check_golden("claims-report.json", &report_claims);
    assert_eq!(r["report"]["consistent"], false);
    assert_eq!(
        r["report"]["inconsistencies"],
        serde_json::json!([
            "tcb_info.rtmr0",
            "tcb_info.rtmr1",
            "tcb_info.rtmr2",
            "tcb_info.rtmr3"
        ])
    );

    // dstack 0.6's SEV-SNP fixture (Milan, ASK and VCEK embedded), appraised offline.
    let snp_claims = claims_for(&sev_snp(), None, SNP_NOW, "quote", None).await;
    let s = check_golden("claims-sev-snp.json", &snp_claims);
    assert_eq!(s["evidence"]["tee"], "sev-snp");
    assert_eq!(s["snp"]["verified"], true);
    assert_eq!(s["snp"]["tcb_status"], "OutOfDate");
    assert_eq!(s["app"]["attested_by"], "host_data");
    assert_eq!(a["evidence"]["tee"], "tdx");
    assert!(a.get("snp").is_none(), "TDX claims have no snp key");

    // A dstack 0.6 boot that checked its GPU: the recorded simulator attestation with a
    // `gpu-attestation` event naming the digest of dstack's nvattest fixture, given beside
    // it. (The event breaks RTMR3 replay; the GPU claims are read all the same.)
    let g06 = claims_for(&with_gpu_event(), None, 1_760_000_000, "quote", None).await;
    let gpu = check_golden("claims-gpu.json", &g06);
    assert_eq!(gpu["app"]["gpu"]["evidence_matches"], true);
    assert_eq!(gpu["app"]["gpu"]["signed"], false);

    // Every path produced is documented, and every documented path is produced.
    let mut produced = BTreeSet::new();
    for doc in [&a, &e, &b, &c, &g, &i, &r, &s, &gpu] {
        paths(doc, "", &mut produced);
    }
    let documented = documented_paths();
    let free_form = [
        "evidence.vm_config",
        "evidence.cert.app_info",
        "app.key_provider",
        "app.gpu_attestation",
    ];
    let undocumented: Vec<_> = produced
        .iter()
        .filter(|p| !documented.contains(*p))
        .filter(|p| !free_form.iter().any(|f| p.starts_with(&format!("{f}."))))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in CLAIMS.md: {undocumented:?}"
    );
    let missing: Vec<_> = documented.difference(&produced).collect();
    assert!(
        missing.is_empty(),
        "in CLAIMS.md but never produced: {missing:?}"
    );
}

/// The VCEK of dstack's SEV-SNP fixture is valid from this second on.
const SNP_NOW: u64 = 1_781_658_304;

/// 2025-06-26T10:13:20Z: inside the recorded collateral's window and before the recorded
/// evaluation numbers list's nextUpdate.
const LIST_CURRENT: u64 = 1_750_932_800;

fn with_gpu_event() -> evidence::Evidence {
    let blob = std::fs::read(root().join("testdata/dstack/simulator-attestation.bin")).unwrap();
    let mut att = evidence::decode_attestation(&blob).unwrap();
    let ready = att
        .runtime_events
        .iter()
        .position(|e| e.event == "system-ready")
        .unwrap();
    att.runtime_events.insert(
        ready,
        teesql_verifier::eventlog::RuntimeEvent::new(
            "gpu-attestation",
            br#"{"version":2,"provider":"nvidia","devices":1,"cc_mode":"on","devtools":false,"evidence_sha256":"b969d546cc3781816167264cccaeff4b720d08012546a7fbd8f00f29e49fd4d7"}"#.to_vec(),
        ),
    );
    let mut ev = att
        .into_evidence(evidence::EvidenceKind::DstackAttestation)
        .unwrap();
    ev.gpu_evidence =
        Some(std::fs::read(root().join("testdata/dstack/gpu-attestation-h100.json")).unwrap());
    ev
}

fn sev_snp() -> evidence::Evidence {
    evidence::decode_attestation_text(
        &std::fs::read(root().join("testdata/dstack/sev-snp-attestation.json")).unwrap(),
    )
    .unwrap()
}

fn paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                if item.is_object() {
                    paths(item, &format!("{prefix}[]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The paths in CLAIMS.md's claims table (the tables before "## Grants").
fn documented_paths() -> BTreeSet<String> {
    let md = std::fs::read_to_string(root().join("verifier/CLAIMS.md")).unwrap();
    let claims = md.split("## Grants").next().unwrap();
    claims
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

/// `policies/teesql/testdata/`: the claims of real evidence that `policy test` gives the
/// profile's tests as `data.testdata.<name>`, kept equal to what the verifier produces
/// (regenerate with UPDATE_GOLDEN=1): dstack's recorded 0.5 GetQuote, and development
/// dstack 0.6 CVMs with an app id their operator chose, without a KMS and under one.
#[tokio::test]
async fn policy_testdata_is_what_the_verifier_makes_of_real_evidence() {
    use teesql_devattest::{AgentConfig, DevAgent, DstackVersion, KeyProviderKind};
    use teesql_verifier::backend::dcap::TrustRoot;
    use teesql_verifier::collateral::CollateralConfig;

    let dir = root().join("policies/teesql/testdata");
    let write = |name: &str, claims: &Claims| {
        let path = dir.join(name);
        let actual = serde_json::to_string_pretty(claims).unwrap() + "\n";
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &actual).unwrap();
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        assert_eq!(actual, expected, "{} differs", path.display());
    };

    let recorded = evidence::decode_getquote_json(
        &std::fs::read(root().join("testdata/dstack/getquote-quote-report.json")).unwrap(),
    )
    .unwrap();
    write(
        "dstack-0.5-getquote.json",
        &claims_for(&recorded, None, 1_760_000_000, "quote", None).await,
    );

    write(
        "dstack-0.6-sev-snp.json",
        &claims_for(&sev_snp(), None, SNP_NOW, "quote", None).await,
    );

    let now = 1_760_000_000;
    for (name, provider) in [
        ("dev-0.6-kms-less.json", KeyProviderKind::None),
        ("dev-0.6-kms.json", KeyProviderKind::Kms),
    ] {
        let mut config = AgentConfig::new([0x21; 32]);
        config.dstack = DstackVersion::V06;
        config.key_provider = provider;
        config.app_id = Some([0x5a; 20]);
        config.collateral_issued_at = Some(now - 86_400);
        let agent = DevAgent::new(config).unwrap();
        let collateral = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            collateral.path(),
            serde_json::to_vec(&agent.collateral().unwrap()).unwrap(),
        )
        .unwrap();
        let backend = BackendConfig::dcap(
            TrustRoot::development("dev-root.der", agent.root_der()).unwrap(),
            CollateralConfig {
                file: Some(collateral.path().to_path_buf()),
                pccs_url: None,
                clock: teesql_verifier::Clock::Fixed(now),
                ..CollateralConfig::default()
            },
        )
        .build()
        .unwrap();
        let att = agent.attestation([0x42; 64]).await.unwrap();
        let ev = att
            .into_evidence(evidence::EvidenceKind::DstackAttestation)
            .unwrap();
        let claims = backend
            .appraiser
            .appraise(&ev, now, None)
            .await
            .into_claims("quote", now, None);
        assert!(claims.tdx.as_ref().unwrap().verified);
        write(name, &claims);
    }
}

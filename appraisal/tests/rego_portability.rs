//! Portability: the shipped policies are standard Rego v1, so a second, independent Rego
//! engine decides as the verifier does. Every purpose of every shipped profile (and of two
//! profiles extending them with pins) is evaluated on recorded claims — the golden claims
//! documents, the profile's `testdata/`, and claims appraised here from the recorded
//! evidence in `testdata/` — and on variations of them that allow and deny for many
//! reasons, by regorus (the verifier's engine, [`PolicySet::evaluate`]) and by rego-cpp
//! through its Python binding, regopy (`tests/regopy/evaluate.py`, which loads the profiles
//! as the verifier does). Both must give the same allow, deny codes, warning codes and
//! grants on every case.
//!
//! The interpreter is `TEESQL_PYTHON` (`.ci/run` sets it to a virtualenv with regopy), or
//! `python3`. Without regopy the test prints a notice and passes, except under CI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::{Value, json};
use teesql_appraisal::backend::{BackendConfig, BackendKind};
use teesql_appraisal::evidence::{self, Evidence};
use teesql_appraisal::policy::{DEFAULT_EVAL_LIMIT, Grants, PolicySet};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn testdata(p: &str) -> PathBuf {
    root().join("testdata").join(p)
}

#[path = "../../tests/python/find.rs"]
mod find;

/// A Python interpreter that can import regopy, and regopy's version
/// (`tests/python/find.rs`: `TEESQL_PYTHON`, `python3`, or the harness's virtualenv);
/// `None` with a visible notice where there is none, a failure under CI.
fn python_with_regopy() -> Option<(String, String)> {
    let python = find::python_with(&["regopy"])?;
    let out = Command::new(&python)
        .args(["-c", "import regopy; print(regopy.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some((python, version))
}

/// What one engine decided on one case.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Outcome {
    allow: bool,
    /// Sorted deny codes; `not_allowed` for a denial without reason, `policy_error` when
    /// the evaluation failed; empty when allowed.
    codes: Vec<String>,
    /// Sorted warning codes of an allowed decision.
    warnings: Vec<String>,
    grants: Option<Grants>,
    /// Why the evaluation failed; not compared (each engine words its own).
    #[serde(default)]
    error: Option<String>,
}

impl Outcome {
    fn decision(&self) -> (bool, &[String], &[String], Option<&Grants>) {
        (
            self.allow,
            &self.codes,
            &self.warnings,
            self.grants.as_ref(),
        )
    }
}

/// The verifier's decision, in the same terms.
fn regorus(set: &PolicySet, purpose: &str, input: &Value) -> Outcome {
    match set.evaluate(purpose, input) {
        Ok(v) => {
            let mut codes: Vec<String> = v.reasons.iter().map(|r| r.code.clone()).collect();
            codes.sort();
            let mut warnings: Vec<String> = v.warnings.iter().map(|r| r.code.clone()).collect();
            warnings.sort();
            Outcome {
                allow: v.allow,
                codes: if v.allow { Vec::new() } else { codes },
                warnings,
                grants: v.grants,
                error: None,
            }
        }
        Err(e) => Outcome {
            allow: false,
            codes: vec!["policy_error".into()],
            warnings: Vec::new(),
            grants: None,
            error: Some(e.to_string()),
        },
    }
}

/// rego-cpp's decisions on `cases` (purpose, input), by `tests/regopy/evaluate.py`.
fn regopy(python: &str, profile: &Path, cases: &[(String, Value)]) -> Vec<Outcome> {
    let job = json!({
        "profile_dirs": [profile],
        "cases": cases
            .iter()
            .map(|(purpose, input)| json!({"purpose": purpose, "input": input}))
            .collect::<Vec<_>>(),
    });
    let mut child = Command::new(python)
        .arg(root().join("tests/regopy/evaluate.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let body = serde_json::to_vec(&job).unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&body));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/regopy/evaluate.py on {}: {}\n{stderr}\n{}",
        profile.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let outcomes: Vec<Outcome> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("evaluate.py printed no decisions ({e}): {stderr}"));
    assert_eq!(outcomes.len(), cases.len(), "{stderr}");
    outcomes
}

/// Claims as the verifier makes them from `evidence` with `backend`, at `now`.
async fn appraised(evidence: &Evidence, backend: BackendConfig, now: u64) -> Value {
    let backend = backend.build().unwrap();
    let claims = backend
        .appraiser
        .appraise(evidence, now, None)
        .await
        .into_claims("quote", now, None);
    serde_json::to_value(&claims).unwrap()
}

fn quote_file(p: &str) -> Evidence {
    Evidence::from_quote(evidence::decode_quote_text(&std::fs::read(testdata(p)).unwrap()).unwrap())
}

/// Claims of recorded evidence, each named: appraised here from `testdata/` (the real
/// pipeline: decode, dcap-qvl, RTMR3 replay), and the recorded claims documents.
async fn recorded_claims() -> Vec<(String, Value)> {
    let tdx = quote_file("dcap/tdx_quote");
    let recorded =
        |collateral: Option<&str>, now| BackendConfig::recorded(collateral.map(testdata), now);
    let simulator = BackendConfig {
        chain: vec![BackendKind::Simulator],
        ..BackendConfig::recorded(None, 1_760_000_000)
    };
    let attestation =
        |p: &str| evidence::decode_attestation_text(&std::fs::read(testdata(p)).unwrap()).unwrap();
    let getquote =
        |p: &str| evidence::decode_getquote_json(&std::fs::read(testdata(p)).unwrap()).unwrap();
    let mut out = vec![
        (
            "dcap tdx_quote".to_string(),
            appraised(
                &tdx,
                recorded(Some("dcap/tdx_quote_collateral.json"), 1_751_000_000),
                1_751_000_000,
            )
            .await,
        ),
        (
            "dcap tdx_quote, collateral expired".into(),
            appraised(
                &tdx,
                recorded(Some("dcap/tdx_quote_collateral.json"), 1_800_000_000),
                1_800_000_000,
            )
            .await,
        ),
        (
            "dcap tdx_quote with Intel's next TCB set".into(),
            appraised(&tdx, recorded(Some("pcs"), 1_751_000_000), 1_751_000_000).await,
        ),
        (
            "dcap tdx_quote under TCB set 20".into(),
            appraised(&tdx, recorded(Some("pcs"), 1_760_000_000), 1_760_000_000).await,
        ),
        (
            "dcap tdx_quote_outdated".into(),
            appraised(
                &quote_file("dcap/tdx_quote_outdated"),
                recorded(
                    Some("dcap/tdx_quote_outdated_collateral.json"),
                    1_772_000_000,
                ),
                1_772_000_000,
            )
            .await,
        ),
        (
            "dcap sgx_quote".into(),
            appraised(
                &quote_file("dcap/sgx_quote"),
                recorded(Some("dcap/sgx_quote_collateral.json"), 1_751_000_000),
                1_751_000_000,
            )
            .await,
        ),
        (
            "dstack-near quote".into(),
            appraised(
                &quote_file("dstack-near/quote.hex"),
                recorded(Some("dstack-near/quote_collateral.json"), 1_757_000_000),
                1_757_000_000,
            )
            .await,
        ),
        (
            "dstack simulator attestation".into(),
            appraised(
                &attestation("dstack/simulator-attestation.bin"),
                simulator,
                1_760_000_000,
            )
            .await,
        ),
        (
            "dstack attestation tdx-lite".into(),
            appraised(
                &attestation("dstack/attestation-tdx-lite.json"),
                recorded(None, 1_760_000_000),
                1_760_000_000,
            )
            .await,
        ),
        (
            "dstack GetQuote tdx-lite".into(),
            appraised(
                &getquote("dstack/getquote-tdx-lite.json"),
                recorded(None, 1_760_000_000),
                1_760_000_000,
            )
            .await,
        ),
    ];
    for dir in ["verifier/tests/golden", "policies/teesql/testdata"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let claims: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let name = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
            out.push((name, claims));
        }
    }
    out
}

fn golden(name: &str) -> Value {
    let path = root().join("verifier/tests/golden").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Set `path` (dot-separated) to `x`; `None` when a parent is not an object.
fn with(base: &Value, changes: &[(&str, Value)]) -> Option<Value> {
    let mut v = base.clone();
    for (path, x) in changes {
        let mut cur = &mut v;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            cur = cur.get_mut(*p).filter(|c| c.is_object())?;
        }
        cur.as_object_mut()?
            .insert(parts[parts.len() - 1].to_string(), x.clone());
    }
    Some(v)
}

const CERT_COMPOSE_HASH: &str = "c143116fef3940e7f776bfc0919c256232ae5338a6e948c96b711e0b2383483a";
const CERT_APP_ID: &str = "5bb4ff9a3837357f19dc176407a5709c62eb6c56";
const CERT_MRTD: &str = "e53236d44a074bc78e784cdfa1a2c858a5f6b53afc1b60d8f079662314978b64241b646d8498dd767d5ea48e1e115822";
const TDX_MRTD: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
const SIGNER: &str = "0x19e7e376e7c213b7e7e7e46cc70a5dd086daff2a";
const CLUSTER: &str = "0xbd32b609057a1a4569558a571d535c8f1212b097";

/// Inputs that allow, made from the recorded documents: the recorded RA-TLS certificate
/// as verified and bound, a consistent report, a manifest alone and with its leader's
/// certificate, and a client without evidence.
fn derived() -> BTreeMap<&'static str, Value> {
    let cert = golden("claims-ra-tls-cert.json");
    assert_eq!(cert["app"]["compose_hash"], CERT_COMPOSE_HASH);
    assert_eq!(cert["app"]["app_id"], CERT_APP_ID);
    assert_eq!(cert["tdx"]["mrtd"], CERT_MRTD);
    let verified = with(
        &cert,
        &[
            ("tdx.verified", json!(true)),
            ("tdx.error", Value::Null),
            ("tdx.error_code", Value::Null),
            ("tdx.tcb_status", json!("UpToDate")),
            ("binding.ok", json!(true)),
            ("connection.expected_mrtds", json!([])),
        ],
    )
    .unwrap();
    let report = with(
        &golden("claims-report.json"),
        &[
            ("report.consistent", json!(true)),
            ("report.inconsistencies", json!([])),
        ],
    )
    .unwrap();
    let manifest = golden("claims-manifest.json");
    assert_eq!(manifest["manifest"]["signer"], SIGNER);
    assert_eq!(manifest["manifest"]["cluster"], CLUSTER);
    let leader = with(
        &verified,
        &[
            ("manifest", manifest["manifest"].clone()),
            (
                "manifest.leader_instance",
                verified["app"]["instance_id"].clone(),
            ),
        ],
    )
    .unwrap();
    let none = with(&manifest, &[("manifest", Value::Null)])
        .and_then(|v| with(&v, &[("connection", verified["connection"].clone())]))
        .unwrap();
    let signing_key = with(
        &verified,
        &[
            ("evidence.kind", json!("getquote")),
            ("evidence.cert", Value::Null),
            (
                "binding",
                json!({"kind": "report_data", "ok": true, "expected": "42"}),
            ),
        ],
    )
    .unwrap();
    BTreeMap::from([
        ("verified certificate", verified),
        ("consistent report", report),
        ("manifest alone", manifest),
        ("manifest with its leader", leader),
        ("no evidence", none),
        ("quote bound to a signing key", signing_key),
    ])
}

/// Single-fact variations (each a set of paths changed together), for the deny reasons.
fn variations() -> Vec<(&'static str, Vec<(&'static str, Value)>)> {
    let failed = |code: &str| {
        vec![
            ("tdx.verified", json!(false)),
            ("tdx.error", json!("recorded failure")),
            ("tdx.error_code", json!(code)),
        ]
    };
    let fix = json!([
        {"component": "tdx_module", "kind": "TDX Module", "have": 6, "needs": 11},
        {"component": "sgx[0]", "kind": null, "have": 3, "needs": 4}
    ]);
    let tcb = |eval: u64, days: Value, early: Value| {
        json!({"platform": null, "eval_data_number": eval, "standard_since": null,
               "days_since_standard": days, "early": early, "fix": fix})
    };
    let early = |from: Value, days: Value| {
        json!({"eval_data_number": 20, "status": "OutOfDate", "standard_from": from,
               "days_until": days})
    };
    vec![
        ("signature invalid", failed("signature_invalid")),
        ("TCB revoked", failed("revoked")),
        ("collateral expired", failed("collateral_expired")),
        ("not TDX", failed("not_tdx")),
        ("ITA token invalid", failed("token_invalid")),
        ("unknown failure class", failed("a_new_class")),
        (
            "simulator quote",
            [
                failed("simulated"),
                vec![
                    ("tdx.root", json!("simulator")),
                    ("tdx.backend", json!("simulator")),
                ],
            ]
            .concat(),
        ),
        ("development root", vec![("tdx.root", json!("dev"))]),
        ("custom root", vec![("tdx.root", json!("custom"))]),
        ("ITA backend", vec![("tdx.backend", json!("ita"))]),
        (
            "simulator backend",
            vec![("tdx.backend", json!("simulator"))],
        ),
        (
            "TCB out of date",
            vec![
                ("tdx.tcb_status", json!("OutOfDate")),
                ("tdx.advisory_ids", json!(["INTEL-SA-00837"])),
                ("tdx.tcb", tcb(18, json!(45), Value::Null)),
            ],
        ),
        (
            "TCB out of date, within grace",
            vec![
                ("tdx.tcb_status", json!("OutOfDateConfigurationNeeded")),
                ("tdx.tcb", tcb(18, json!(3), Value::Null)),
            ],
        ),
        (
            "TCB out of date, no TCB facts",
            vec![
                ("tdx.tcb_status", json!("OutOfDate")),
                ("tdx.tcb", Value::Null),
            ],
        ),
        (
            "TCB configuration needed",
            vec![("tdx.tcb_status", json!("ConfigurationNeeded"))],
        ),
        (
            "refused advisory",
            vec![
                ("tdx.tcb_status", json!("SWHardeningNeeded")),
                (
                    "tdx.advisory_ids",
                    json!(["intel-sa-00837", "INTEL-SA-00615"]),
                ),
            ],
        ),
        (
            "Intel's next set demotes",
            vec![(
                "tdx.tcb",
                tcb(17, Value::Null, early(json!("2026-10-08"), json!(30))),
            )],
        ),
        (
            "Intel's next set demotes, undated",
            vec![(
                "tdx.tcb",
                tcb(17, Value::Null, early(Value::Null, Value::Null)),
            )],
        ),
        (
            "old TCB evaluation data",
            vec![("tdx.tcb", tcb(9, Value::Null, Value::Null))],
        ),
        (
            "ITA policy unmatched",
            vec![("tdx.ita", json!({"policy_ids_unmatched": ["p2", "p1"]}))],
        ),
        ("debug TD", vec![("tdx.debug", json!(true))]),
        ("other MRTD", vec![("tdx.mrtd", json!("AB".repeat(48)))]),
        (
            "other RTMR2",
            vec![("tdx.rtmr2", json!("0x".to_string() + &"cd".repeat(48)))],
        ),
        (
            "MRCONFIGID mismatch",
            vec![(
                "tdx.mr_config",
                json!({"form": "v1", "matches_event_log": false,
                       "mismatches": ["compose_hash", "os_image_hash"]}),
            )],
        ),
        (
            "report data inconsistent",
            vec![("evidence.report_data_consistent", json!(false))],
        ),
        (
            "certificate key not bound",
            vec![(
                "binding",
                json!({"kind": "ra_tls_spki", "ok": false, "expected": "ee"}),
            )],
        ),
        (
            "report data not bound",
            vec![(
                "binding",
                json!({"kind": "report_data", "ok": false, "expected": "ee"}),
            )],
        ),
        (
            "nothing bound",
            vec![(
                "binding",
                json!({"kind": "none", "ok": false, "expected": null}),
            )],
        ),
        (
            "RTMR3 replay fails",
            vec![
                ("app.rtmr3_replayed", json!(false)),
                ("app.replay_error", json!("event log truncated")),
            ],
        ),
        (
            "RTMR3 differs",
            vec![
                ("app.rtmr3_replayed", json!(false)),
                ("app.replay_error", Value::Null),
            ],
        ),
        ("no event log", vec![("app", Value::Null)]),
        (
            "other compose hash",
            vec![("app.compose_hash", json!("ff".repeat(32)))],
        ),
        ("other app id", vec![("app.app_id", json!("ee".repeat(20)))]),
        ("no app id", vec![("app.app_id", Value::Null)]),
        (
            "other instance",
            vec![("app.instance_id", json!("ab".repeat(20)))],
        ),
        (
            "app id from the compose hash",
            vec![("app.app_id_attested_by", json!("compose_hash"))],
        ),
        (
            "app id chosen by the operator",
            vec![
                ("app.app_id_attested_by", json!("none")),
                ("app.key_provider", json!({"name": "none", "id": ""})),
            ],
        ),
        (
            "app id chosen, no key provider",
            vec![
                ("app.app_id_attested_by", json!("none")),
                ("app.key_provider", Value::Null),
            ],
        ),
        ("no quote", vec![("tdx", Value::Null)]),
        ("far future", vec![("now", json!(4_000_000_000u64))]),
        (
            "before the certificate",
            vec![("now", json!(1_700_000_000u64))],
        ),
        (
            "a bare quote",
            vec![
                ("evidence.kind", json!("quote")),
                ("evidence.cert", Value::Null),
            ],
        ),
        (
            "no evidence",
            vec![
                (
                    "evidence",
                    json!({"kind": "none", "cert": null, "report_data_consistent": null,
                           "vm_config": null}),
                ),
                ("tdx", Value::Null),
                ("app", Value::Null),
                (
                    "binding",
                    json!({"kind": "none", "ok": false, "expected": null}),
                ),
            ],
        ),
        (
            "generic user",
            vec![("connection.user", json!("teesql_app"))],
        ),
        (
            "tenant acme's role",
            vec![("connection.user", json!("tenant_acme"))],
        ),
        (
            "tenant beta's role",
            vec![("connection.user", json!("tenant_beta"))],
        ),
        ("superuser", vec![("connection.user", json!("postgres"))]),
        (
            "generic user, known by app id only",
            vec![
                ("connection.user", json!("teesql_app")),
                ("app.compose_hash", json!("ff".repeat(32))),
            ],
        ),
        (
            "client expects another MRTD",
            vec![("connection.expected_mrtds", json!(["0x00"]))],
        ),
        (
            "client expects this MRTD",
            vec![(
                "connection.expected_mrtds",
                json!(["0x".to_string() + &CERT_MRTD.to_uppercase(), TDX_MRTD]),
            )],
        ),
        (
            "client expects another compose hash",
            vec![("connection.expected_compose_hashes", json!(["00"]))],
        ),
        (
            "client expects this compose hash",
            vec![(
                "connection.expected_compose_hashes",
                json!([CERT_COMPOSE_HASH.to_uppercase()]),
            )],
        ),
        (
            "client expects this app id",
            vec![("connection.expected_app_ids", json!([CERT_APP_ID]))],
        ),
        (
            "client expects another app id",
            vec![("connection.expected_app_ids", json!(["0x00"]))],
        ),
        (
            "manifest expired",
            vec![("manifest.valid_until", json!(1_700_000_000u64))],
        ),
        (
            "manifest by another signer",
            vec![(
                "manifest.signer",
                json!("0x".to_string() + &"01".repeat(20)),
            )],
        ),
        (
            "caller trusts the manifest's signer",
            vec![("manifest.expected_signers", json!([SIGNER.to_uppercase()]))],
        ),
        (
            "manifest invalid",
            vec![("manifest.error", json!("bad signature"))],
        ),
        (
            "manifest rolled back",
            vec![("manifest.highest_epoch_seen", json!(43))],
        ),
        (
            "manifest epoch seen",
            vec![("manifest.highest_epoch_seen", json!(42))],
        ),
        (
            "manifest names another leader",
            vec![("manifest.leader_instance", json!("00".repeat(20)))],
        ),
        (
            "manifest of another cluster",
            vec![(
                "manifest.cluster",
                json!("0x".to_string() + &"02".repeat(20)),
            )],
        ),
        (
            "report inconsistent",
            vec![
                ("report.consistent", json!(false)),
                (
                    "report.inconsistencies",
                    json!(["tcb_info.rtmr0", "app_id"]),
                ),
            ],
        ),
        (
            "report stale",
            vec![("report.timestamp", json!(1_750_000_000u64))],
        ),
        (
            "report from the future",
            vec![("report.timestamp", json!(1_752_000_000u64))],
        ),
        ("no report", vec![("report", Value::Null)]),
    ]
}

/// The base each purpose's variations change: an input it allows (in some profile).
fn primary(purpose: &str) -> &'static str {
    match purpose {
        "report" => "consistent report",
        "manifest" => "manifest with its leader",
        _ => "verified certificate",
    }
}

/// Profiles beside the shipped ones: the production profile with pins (tenants, a cluster,
/// signers, a verifier, refused advisories, TCB grace), and one extending that with the
/// recorded certificate's KMS root pinned, so its app id is an identity.
fn derived_profiles(dir: &Path) -> Vec<PathBuf> {
    let teesql = root().join("policies/teesql").canonicalize().unwrap();
    let kms_root = golden("claims-ra-tls-cert.json")["app"]["key_provider"]["id"].clone();
    let profiles = [
        (
            "pinned",
            format!("extends = [{:?}]\n", teesql.display().to_string()),
            json!({"teesql": {
                "pins": {"mrtd": [TDX_MRTD.to_uppercase(), format!("0x{CERT_MRTD}")]},
                "manifest_signers": [SIGNER.to_uppercase()],
                "verifier_pins": {"compose_hash": [format!("0X{CERT_COMPOSE_HASH}")]},
                "tenants": {
                    "acme": {"role": "tenant_acme", "compose_hashes": [CERT_COMPOSE_HASH]},
                    "beta": {"role": "tenant_beta", "app_ids": [CERT_APP_ID.to_uppercase()]}
                },
                "clusters": {CLUSTER.to_uppercase(): {"member_app_ids": [CERT_APP_ID]}},
                "refused_advisory_ids": ["INTEL-SA-00837"],
                "min_tcb_eval_data_number": 17,
                "tcb_grace_days": 30
            }}),
        ),
        (
            "pinned-kms",
            "extends = [\"../pinned\"]\n".to_string(),
            json!({"teesql": {
                "kms_roots": [kms_root],
                "require_tenant": true,
                "warn_early_demotion": false,
                "allow_debug": true,
                "accepted_backends": ["dcap"],
                "pins": {"rtmr2": [golden("claims-ra-tls-cert.json")["tdx"]["rtmr2"].clone()]},
                "verifier_pins": {"compose_hash": [], "app_id": [CERT_APP_ID]}
            }}),
        ),
    ];
    profiles
        .into_iter()
        .map(|(name, toml, data)| {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("profile.toml"), toml).unwrap();
            std::fs::write(p.join("data.json"), data.to_string()).unwrap();
            p
        })
        .collect()
}

#[tokio::test]
async fn a_second_rego_engine_decides_every_purpose_as_the_verifier_does() {
    let Some((python, regopy_version)) = python_with_regopy() else {
        return;
    };
    let recorded = recorded_claims().await;
    let derived = derived();
    let variations = variations();
    let tmp = tempfile::tempdir().unwrap();
    let mut profiles = vec![root().join("policies/teesql"), root().join("policies/dev")];
    profiles.extend(derived_profiles(tmp.path()));

    // The cases of each profile: every purpose it decides, on every recorded and derived
    // document, and on the variations of the purpose's primary input.
    struct Case {
        label: String,
        purpose: String,
        input: Value,
    }
    let mut jobs: Vec<(PathBuf, PolicySet, Vec<Case>)> = Vec::new();
    for profile in &profiles {
        let set = PolicySet::load(std::slice::from_ref(profile), DEFAULT_EVAL_LIMIT)
            .unwrap_or_else(|e| panic!("{}: {e}", profile.display()));
        let mut cases = Vec::new();
        for purpose in set.purposes() {
            let mut inputs: Vec<(String, Value)> = recorded.clone();
            inputs.extend(derived.iter().map(|(k, v)| (k.to_string(), v.clone())));
            let base = &derived[primary(&purpose)];
            for (label, changes) in &variations {
                if let Some(v) = with(base, changes) {
                    inputs.push((format!("{}: {label}", primary(&purpose)), v));
                }
            }
            let mut seen = BTreeSet::new();
            for (label, mut input) in inputs {
                input["purpose"] = json!(purpose);
                if seen.insert(input.to_string()) {
                    cases.push(Case {
                        label,
                        purpose: purpose.clone(),
                        input,
                    });
                }
            }
        }
        jobs.push((profile.clone(), set, cases));
    }

    // rego-cpp, one process per profile, beside regorus.
    let results: Vec<Vec<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(profile, _, cases)| {
                let python = python.as_str();
                s.spawn(move || {
                    let cases: Vec<(String, Value)> = cases
                        .iter()
                        .map(|c| (c.purpose.clone(), c.input.clone()))
                        .collect();
                    regopy(python, profile, &cases)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut mismatches = Vec::new();
    // Per purpose: cases, allowed, denied, granted, deny codes seen, warning codes seen.
    type Tally = (
        usize,
        usize,
        usize,
        usize,
        BTreeSet<String>,
        BTreeSet<String>,
    );
    let mut tally: BTreeMap<String, Tally> = BTreeMap::new();
    let mut total = 0;
    for ((profile, set, cases), theirs) in jobs.iter().zip(&results) {
        let name = profile.file_name().unwrap().to_string_lossy();
        for (case, other) in cases.iter().zip(theirs) {
            let ours = regorus(set, &case.purpose, &case.input);
            total += 1;
            let t = tally.entry(case.purpose.clone()).or_default();
            t.0 += 1;
            if ours.allow {
                t.1 += 1;
            } else {
                t.2 += 1;
            }
            t.3 += usize::from(ours.grants.is_some());
            t.4.extend(ours.codes.iter().cloned());
            t.5.extend(ours.warnings.iter().cloned());
            if ours.decision() != other.decision() {
                mismatches.push(format!(
                    "{name}/{} on {}:\n  regorus: {ours:?}\n  regopy:  {other:?}",
                    case.purpose, case.label
                ));
            }
        }
    }
    for (purpose, (cases, allowed, denied, granted, codes, warnings)) in &tally {
        println!(
            "  {purpose}: {cases} cases, {allowed} allowed ({granted} with grants), {denied} denied; deny codes: {}; warnings: {}",
            codes.iter().cloned().collect::<Vec<_>>().join(" "),
            warnings.iter().cloned().collect::<Vec<_>>().join(" ")
        );
    }
    assert!(
        mismatches.is_empty(),
        "rego-cpp (regopy {regopy_version}) and regorus disagree on {} of {total} cases:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // The comparison covers both outcomes of every purpose, and denials for several
    // reasons: a test that only ever saw denials could not tell the engines apart.
    let purposes: BTreeSet<String> = jobs.iter().flat_map(|(_, set, _)| set.purposes()).collect();
    assert_eq!(purposes, tally.keys().cloned().collect::<BTreeSet<_>>());
    for (purpose, (_, allowed, denied, _, codes, _)) in &tally {
        assert!(
            *allowed > 0 && *denied > 0,
            "{purpose}: {allowed} allowed, {denied} denied"
        );
        assert!(codes.len() >= 5, "{purpose}: only deny codes {codes:?}");
    }
    println!(
        "rego portability: {total} cases over {} purposes ({}) and {} profiles: regorus and rego-cpp (regopy {regopy_version}) agree on allow, deny codes, warnings and grants",
        purposes.len(),
        purposes.iter().cloned().collect::<Vec<_>>().join(", "),
        profiles.len()
    );
}

//! A policy profile with a file missing fails closed: it is refused at load (and at
//! reload, where the set already serving keeps serving), and even a set that somehow
//! lacks its library allows nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use teesql_verifier::Clock;
use teesql_verifier::backend::BackendConfig;
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet};
use teesql_verifier::service::{DecisionLog, DecisionService, LogTarget, Metrics, ServiceOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A copy of the production profile without the files named.
fn production_without(missing: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root().join("policies/teesql")).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        // Files only: testdata/ is for `policy test`, not part of a profile.
        if p.is_file() && !missing.contains(&name.as_str()) && !name.ends_with("_test.rego") {
            std::fs::copy(&p, dir.path().join(&name)).unwrap();
        }
    }
    dir
}

fn load(dir: &Path) -> Result<PolicySet, String> {
    PolicySet::load(&[dir.to_path_buf()], DEFAULT_EVAL_LIMIT).map_err(|e| e.to_string())
}

/// Claims of a client that presented no certificate, and of a self-signed certificate
/// that carries no quote: the two inputs the broken profiles used to allow.
fn no_certificate() -> Value {
    json!({
        "claims_version": 1, "purpose": "sidecar", "now": 1_760_000_000,
        "evidence": {"kind": "none", "cert": null, "report_data_consistent": null, "vm_config": null},
        "tdx": null, "app": null, "binding": {"kind": "none", "ok": false, "expected": null},
        "connection": {"user": "teesql_read", "database": "postgres", "sni": "", "client_addr": "127.0.0.1:1", "alpn": "", "expected_mrtds": [], "expected_compose_hashes": [], "expected_app_ids": []},
        "manifest": null, "report": null,
    })
}

fn self_signed_without_quote() -> Value {
    let mut c = no_certificate();
    c["evidence"] = json!({"kind": "ra_tls_cert", "cert": {"not_before": 1_700_000_000, "not_after": 1_800_000_000, "subject": "x"}, "report_data_consistent": null, "vm_config": null});
    c["binding"] = json!({"kind": "ra_tls_spki", "ok": false, "expected": "aa"});
    c
}

#[test]
fn a_profile_without_its_data_is_refused_at_load() {
    let dir = production_without(&["data.json"]);
    let err = load(dir.path()).unwrap_err();
    assert!(err.contains("incomplete policy set"), "{err}");
    assert!(
        err.contains("data.teesql.require_client_attestation")
            && err.contains("data.teesql.accepted_roots"),
        "{err}"
    );
}

#[test]
fn a_profile_without_its_library_is_refused_at_load() {
    let dir = production_without(&["lib.rego"]);
    let err = load(dir.path()).unwrap_err();
    assert!(
        err.contains("incomplete policy set") && err.contains("data.teesql.lib"),
        "{err}"
    );
}

#[test]
fn complete_profiles_load() {
    for profile in ["teesql", "dev"] {
        load(&root().join("policies").join(profile)).unwrap();
    }
}

/// Belt and braces: even evaluated without the load-time check's help (the library
/// replaced by an empty package, so every reference resolves), nothing is allowed on the
/// strength of "nothing objected".
#[test]
fn without_the_library_nothing_is_allowed() {
    let dir = production_without(&["lib.rego"]);
    std::fs::write(
        dir.path().join("lib.rego"),
        "package teesql.lib\n\nimport rego.v1\n\nquote_problems := set()\n\npeer_problems := set()\n\ncert_problems := set()\n\nnorm(x) := x\n\nnorm_or_empty(x) := x\n\nshown(x) := \"\"\n\npinned(list) := {x | some x in list}\n",
    )
    .unwrap();
    let set = load(dir.path()).unwrap();
    for (purpose, claims) in [
        ("sidecar", self_signed_without_quote()),
        ("client", self_signed_without_quote()),
        ("quote", self_signed_without_quote()),
    ] {
        let v = set.evaluate(purpose, &claims).unwrap();
        assert!(!v.allow, "{purpose}: {v:?}");
    }
    // Production data requires client attestation; only an explicit false lifts it.
    let v = set.evaluate("sidecar", &no_certificate()).unwrap();
    assert!(!v.allow);
}

#[test]
fn a_missing_data_key_makes_client_attestation_required() {
    let dir = production_without(&["data.json"]);
    let mut data: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("policies/teesql/data.json")).unwrap(),
    )
    .unwrap();
    data["teesql"]["require_client_attestation"] = json!(false);
    std::fs::write(dir.path().join("data.json"), data.to_string()).unwrap();
    let set = load(dir.path()).unwrap();
    assert!(set.evaluate("sidecar", &no_certificate()).unwrap().allow);
    data["teesql"]["require_client_attestation"] = json!("no");
    std::fs::write(dir.path().join("data.json"), data.to_string()).unwrap();
    let set = load(dir.path()).unwrap();
    assert!(
        !set.evaluate("sidecar", &no_certificate()).unwrap().allow,
        "anything but false keeps attestation required"
    );
}

#[tokio::test]
async fn a_reload_that_drops_a_file_is_refused_and_the_old_set_keeps_serving() {
    let dir = production_without(&[]);
    let policies = load(dir.path()).unwrap();
    let backend = BackendConfig::recorded(None, 1_760_000_000)
        .build()
        .unwrap();
    let service = DecisionService::new(
        backend.appraiser,
        policies,
        &ServiceOptions {
            clock: Clock::Fixed(1_760_000_000),
            ..ServiceOptions::default()
        },
        DecisionLog::start(&LogTarget::Off).unwrap(),
        Arc::new(Metrics::new()),
    );
    let serving = service.policies().hash().to_string();
    for missing in ["data.json", "lib.rego"] {
        let path = dir.path().join(missing);
        let kept = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = service.reload().await.unwrap_err().to_string();
        assert!(err.contains("incomplete policy set"), "{missing}: {err}");
        assert_eq!(service.policies().hash(), serving);
        std::fs::write(&path, kept).unwrap();
    }
    // A set that no longer decides a purpose the serving set decides is refused too.
    std::fs::remove_file(dir.path().join("report.rego")).unwrap();
    let err = service.reload().await.unwrap_err().to_string();
    assert!(err.contains("report"), "{err}");
    assert_eq!(service.policies().hash(), serving);
}

/// Tenants sharing one Postgres role have only row-level security between them: a
/// profile that does so is refused at load unless each such tenant says `shared_role`.
#[test]
fn tenants_sharing_a_role_are_refused_unless_they_say_so() {
    let dir = production_without(&[]);
    let data_path = dir.path().join("data.json");
    let mut data: Value =
        serde_json::from_str(&std::fs::read_to_string(&data_path).unwrap()).unwrap();
    data["teesql"]["tenants"] = json!({
        "acme": {"role": "tenant_shared", "privileges": "read", "compose_hashes": ["aa"]},
        "globex": {"role": "tenant_shared", "privileges": "read", "compose_hashes": ["bb"]},
    });
    std::fs::write(&data_path, data.to_string()).unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("share the Postgres role tenant_shared"), "{e}");
    assert!(e.contains("acme") && e.contains("globex"), "{e}");
    data["teesql"]["tenants"]["acme"]["shared_role"] = json!(true);
    std::fs::write(&data_path, data.to_string()).unwrap();
    assert!(load(dir.path()).is_err(), "both must say so");
    data["teesql"]["tenants"]["globex"]["shared_role"] = json!(true);
    std::fs::write(&data_path, data.to_string()).unwrap();
    load(dir.path()).unwrap();
}

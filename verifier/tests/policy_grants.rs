//! A policy's `grants`: evaluated with the decision on the VM and on the interpreter
//! alike, kept only for an allowed decision, bounded and checked (a policy that grants
//! something malformed fails to decide, which denies). The shipped `sidecar` policy's
//! grants are tested in `policies/teesql/sidecar_test.rego` and end to end in
//! `tests/tests/tenants.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::json;
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, Grants, PolicyError, PolicySet};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A profile of one package `teesql.sidecar` that allows when `input.ok` and grants
/// whatever `input.grants` is.
fn echo_profile() -> (tempfile::TempDir, PolicySet) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sidecar.rego"),
        "package teesql.sidecar\nimport rego.v1\ndefault allow := false\nallow if input.ok == true\n\
         deny contains {\"code\": \"no\", \"message\": \"no\"} if input.ok == false\n\
         grants := input.grants if input.grants\n",
    )
    .unwrap();
    let set = PolicySet::load(&[dir.path().to_path_buf()], DEFAULT_EVAL_LIMIT).unwrap();
    (dir, set)
}

/// Evaluate on the VM and on the interpreter; they must agree.
fn both(set: &PolicySet, input: &serde_json::Value) -> Result<Option<Grants>, String> {
    let vm = set.evaluate("sidecar", input);
    let interpreted = set.evaluate_interpreted("sidecar", input);
    match (vm, interpreted) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "VM and interpreter differ on {input}");
            Ok(a.grants)
        }
        (Err(a), Err(b)) => {
            assert_eq!(
                std::mem::discriminant(&a),
                std::mem::discriminant(&b),
                "{a} / {b}"
            );
            Err(a.to_string())
        }
        (a, b) => panic!("VM and interpreter differ on {input}: {a:?} / {b:?}"),
    }
}

#[test]
fn grants_come_with_an_allowed_decision_only() {
    let (_dir, set) = echo_profile();
    let grants =
        json!({"roles": ["tenant_acme", "tenant_shared"], "attributes": {"tenant": "acme"}});
    let got = both(&set, &json!({"ok": true, "grants": grants}))
        .unwrap()
        .unwrap();
    assert_eq!(got.roles, ["tenant_acme", "tenant_shared"]);
    assert_eq!(got.attributes["tenant"], "acme");
    // Denied: nothing granted, whatever the policy computed.
    assert_eq!(
        both(&set, &json!({"ok": false, "grants": grants})),
        Ok(None)
    );
    // No grants rule result: none.
    assert_eq!(both(&set, &json!({"ok": true})), Ok(None));
}

#[test]
fn a_package_without_grants_grants_nothing() {
    let set = PolicySet::load(&[root().join("policies/teesql")], DEFAULT_EVAL_LIMIT).unwrap();
    let v = set.evaluate("quote", &json!({})).unwrap();
    assert_eq!(v.grants, None);
}

#[test]
fn malformed_grants_fail_the_decision() {
    let (_dir, set) = echo_profile();
    let too_many: Vec<String> = (0..17).map(|i| format!("r{i}")).collect();
    for (grants, expect) in [
        (
            json!({"roles": ["Tenant-Acme"]}),
            "lowercase SQL identifier",
        ),
        (
            json!({"roles": ["x".repeat(64)]}),
            "lowercase SQL identifier",
        ),
        (json!({"roles": too_many}), "17 roles, at most 16"),
        (
            json!({"attributes": {"Tenant": "a"}}),
            "lowercase identifier",
        ),
        (
            json!({"attributes": {"t": "v".repeat(257)}}),
            "at most 256 bytes",
        ),
        (json!({"attributes": {"t": 7}}), "must be an object"),
        (json!({"roles": "tenant_acme"}), "must be an object"),
        (json!({"role": ["tenant_acme"]}), "must be an object"),
        (json!(["tenant_acme"]), "must be an object"),
    ] {
        let err = both(&set, &json!({"ok": true, "grants": grants})).unwrap_err();
        assert!(err.contains(expect), "{grants}: {err}");
    }
}

#[test]
fn policy_error_is_a_shape_or_eval_error() {
    let (_dir, set) = echo_profile();
    let e = set
        .evaluate("sidecar", &json!({"ok": true, "grants": {"roles": [1]}}))
        .unwrap_err();
    assert!(
        matches!(e, PolicyError::Shape { rule: "grants", .. }),
        "{e}"
    );
}

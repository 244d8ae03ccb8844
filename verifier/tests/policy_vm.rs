//! Decisions run on regorus' VM; its interpreter is the reference. Both must agree on
//! every input, for every purpose and profile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use teesql_verifier::policy::{DEFAULT_EVAL_LIMIT, PolicySet};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden(name: &str) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("verifier/tests/golden").join(name)).unwrap(),
    )
    .unwrap()
}

fn set(v: &mut Value, path: &str, x: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        cur = cur.get_mut(*p).unwrap();
    }
    cur[parts[parts.len() - 1]] = x;
}

/// Claims covering every rule: the golden documents and single-fact variations of them.
fn corpus() -> Vec<Value> {
    let mut out = Vec::new();
    for base in [
        golden("claims-tdx-quote.json"),
        golden("claims-ra-tls-cert.json"),
    ] {
        let variants: Vec<(&str, Value)> = vec![
            ("tdx.verified", json!(false)),
            ("tdx.error_code", json!("signature_invalid")),
            ("tdx.root", json!("dev")),
            ("tdx.root", json!("custom")),
            ("tdx.tcb_status", json!("OutOfDate")),
            ("tdx.debug", json!(true)),
            ("tdx.mrtd", json!("ab")),
            ("binding.ok", json!(true)),
            ("binding.kind", json!("report_data")),
            ("binding.kind", json!("none")),
            ("evidence.kind", json!("none")),
            ("evidence.report_data_consistent", json!(false)),
            ("now", json!(4_000_000_000u64)),
            ("tdx", Value::Null),
            ("app", Value::Null),
        ];
        let variants: Vec<(&str, Value)> = variants
            .into_iter()
            .filter(|(path, _)| {
                // Only vary sections the document has (setting inside a null fails).
                let top = path.split('.').next().unwrap();
                !path.contains('.') || base[top].is_object()
            })
            .collect();
        out.push(base.clone());
        for (path, x) in variants {
            let mut v = base.clone();
            set(&mut v, path, x);
            out.push(v);
        }
        if base["manifest"].is_object() {
            for (path, x) in [
                ("manifest.valid_until", json!(1)),
                ("manifest.signer", json!("0x00")),
                ("manifest.error", json!("bad")),
            ] {
                let mut v = base.clone();
                set(&mut v, path, x);
                out.push(v);
            }
        }
        if base["report"].is_object() {
            for (path, x) in [
                ("report.consistent", json!(true)),
                ("report.timestamp", json!(1)),
                ("report.timestamp", json!(4_000_000_000u64)),
            ] {
                let mut v = base.clone();
                set(&mut v, path, x);
                out.push(v);
            }
        }
        if base["app"].is_object() {
            let mut v = base.clone();
            set(&mut v, "app.rtmr3_replayed", json!(false));
            out.push(v);
        }
        let mut v = base.clone();
        set(&mut v, "tdx.verified", json!(true));
        set(&mut v, "tdx.error", Value::Null);
        set(&mut v, "tdx.error_code", Value::Null);
        set(&mut v, "binding.ok", json!(true));
        out.push(v);
    }
    out
}

fn pinned_profile() -> (tempfile::TempDir, PolicySet) {
    let dir = tempfile::tempdir().unwrap();
    let base = root().join("policies/teesql").canonicalize().unwrap();
    std::fs::write(
        dir.path().join("profile.toml"),
        format!("extends = [{:?}]\n", base.display().to_string()),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("data.json"),
        json!({"teesql": {"pins": {
            "mrtd": ["91EB2B44D141D4ECE09F0C75C2C53D247A3C68EDD7FAFE8A3520C942A604A407DE03AE6DC5F87F27428B2538873118B7"],
            "rtmr2": ["00"],
            "compose_hash": ["c143116fef3940e7f776bfc0919c256232ae5338a6e948c96b711e0b2383483a"],
            "os_image_hash": ["ff"]
        }, "manifest_signers": ["0x19e7e376e7c213b7e7e7e46cc70a5dd086daff2a"]}})
        .to_string(),
    )
    .unwrap();
    let set = PolicySet::load(&[dir.path().to_path_buf()], DEFAULT_EVAL_LIMIT).unwrap();
    (dir, set)
}

#[test]
fn vm_and_interpreter_agree_on_every_input() {
    let production =
        PolicySet::load(&[root().join("policies/teesql")], DEFAULT_EVAL_LIMIT).unwrap();
    let dev = PolicySet::load(&[root().join("policies/dev")], DEFAULT_EVAL_LIMIT).unwrap();
    let (_dir, pinned) = pinned_profile();
    let mut compared = 0;
    let mut denied = 0;
    for (name, set) in [
        ("production", &production),
        ("dev", &dev),
        ("pinned", &pinned),
    ] {
        assert!(set.uses_vm(), "{name} does not compile for the VM");
        for input in corpus() {
            for purpose in ["quote", "sidecar", "client", "manifest", "report"] {
                let vm = set.evaluate(purpose, &input).unwrap();
                let interp = set.evaluate_interpreted(purpose, &input).unwrap();
                assert_eq!(vm, interp, "{name}/{purpose} on {input}");
                compared += 1;
                denied += usize::from(!vm.allow);
            }
        }
    }
    // The corpus exercises both outcomes, not only denials.
    assert!(denied > 0 && denied < compared, "{denied}/{compared}");
}

/// A policy that would run for a very long time is cut off, on the VM and in the
/// interpreter alike: the evaluation fails (and a decision on it denies), it never hangs.
#[test]
fn a_runaway_policy_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("quote.rego"),
        "package teesql.quote\n\nimport rego.v1\n\n\
         default allow := false\n\n\
         allow if {\n\
         \tn := count(input.tdx.mrtd) * 200\n\
         \tcount([1 | some i in numbers.range(1, n); some j in numbers.range(1, n); i * j < 0]) == 0\n\
         }\n",
    )
    .unwrap();
    let set = PolicySet::load(
        &[dir.path().to_path_buf()],
        std::time::Duration::from_millis(200),
    )
    .unwrap();
    let input = golden("claims-tdx-quote.json");
    let vm = set.evaluate("quote", &input);
    assert!(vm.is_err(), "370 million steps finished: {vm:?}");
    let interpreted = set.evaluate_interpreted("quote", &input);
    assert!(interpreted.is_err(), "{interpreted:?}");
    for e in [vm.unwrap_err(), interpreted.unwrap_err()] {
        assert!(e.to_string().contains("limit"), "{e}");
    }
}

//! The `teesql-verifier` binary as a user runs it: exit codes, JSON output, one-line errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn verifier(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_teesql-verifier"))
        .args(args)
        .current_dir(root())
        .env_remove("RUST_LOG")
        .env_remove("PCCS_URL")
        .output()
        .unwrap()
}

fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const QUOTE_ARGS: &[&str] = &[
    "verify",
    "--quote",
    "testdata/dcap/tdx_quote",
    "--collateral",
    "testdata/dcap/tdx_quote_collateral.json",
];

#[test]
fn readme_example_allows_with_an_explained_decision() {
    let mut args = QUOTE_ARGS.to_vec();
    args.extend(["--now", "1751000000"]);
    let out = verifier(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d = stdout_json(&out);
    assert_eq!(d["allow"], true);
    assert_eq!(d["reasons"], serde_json::json!([]));
    assert_eq!(d["policy_id"], "teesql.quote");
    assert!(d["policy_hash"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(d["claims"]["claims_version"], 1);
}

#[test]
fn expired_collateral_denies_with_exit_1_and_a_reason() {
    let out = verifier(QUOTE_ARGS);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = stdout_json(&out);
    assert_eq!(d["allow"], false);
    assert_eq!(d["reasons"][0]["code"], "collateral_expired");
}

#[test]
fn unreachable_pccs_denies_quickly_with_a_specific_reason() {
    // Nothing listens on port 9 of loopback: the fetch fails, the decision denies.
    let out = verifier(&[
        "verify",
        "--quote",
        "testdata/dcap/tdx_quote",
        "--pccs-url",
        "http://127.0.0.1:9",
        "--fetch-timeout",
        "2",
        "--now",
        "1751000000",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = stdout_json(&out);
    assert_eq!(d["reasons"][0]["code"], "collateral_unavailable");
    assert!(
        d["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:9")
    );
}

/// Unusable input: exit 2, nothing on stdout, one line on stderr naming the problem.
fn assert_usage_error(args: &[&str], needle: &str) {
    let out = verifier(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn malformed_inputs_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let quote = std::fs::read(root().join("testdata/dcap/tdx_quote")).unwrap();

    let truncated = write("truncated", &quote[..1000]);
    assert_usage_error(&["verify", "--quote", &truncated], "malformed DCAP quote");

    let tiny = write("tiny", &quote[..10]);
    assert_usage_error(&["verify", "--quote", &tiny], "truncated quote header");

    let bad_hex = write("bad.hex", b"0x0400020081zz\n");
    assert_usage_error(&["verify", "--quote", &bad_hex], "invalid hex");

    let garbage = write("garbage.pem", b"this is not a certificate\n");
    assert_usage_error(
        &["verify", "--cert", &garbage],
        "not a PEM or DER certificate",
    );

    let bad_pem = write(
        "bad.pem",
        b"-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n",
    );
    assert_usage_error(&["verify", "--cert", &bad_pem], "malformed X.509");

    // A certificate whose attestation extension is larger than any real one.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 62397, 1, 8],
            teesql_verifier::evidence::encode_extension_value(&vec![0u8; 2 << 20]),
        ));
    let big = params.self_signed(&key).unwrap();
    let big = write("big.der", big.der());
    assert_usage_error(
        &["verify", "--cert", &big],
        "certificate extension is 2097157 bytes, more than the limit of 1048576",
    );

    let blob = std::fs::read(root().join("testdata/dstack/simulator-attestation.bin")).unwrap();
    let cut = write("cut.bin", &blob[..blob.len() - 1]);
    assert_usage_error(
        &["verify", "--attestation", &cut],
        "exceeds the 552 bytes that remain",
    );

    let not_json = write("gq.json", b"{\"quote\": 5}");
    assert_usage_error(&["verify", "--getquote", &not_json], "GetQuote");

    assert_usage_error(
        &[
            "verify",
            "--quote",
            "testdata/dcap/tdx_quote",
            "--report-data",
            "xyz",
        ],
        "invalid hex in --report-data",
    );
    assert_usage_error(
        &["verify", "--quote", "testdata/does-not-exist"],
        "cannot read",
    );
}

#[test]
fn bad_configuration_exits_2() {
    let mut args = QUOTE_ARGS.to_vec();
    args.extend(["--policy-dir", "no/such/dir"]);
    assert_usage_error(&args, "no/such/dir");

    let mut args = QUOTE_ARGS.to_vec();
    args.extend(["--purpose", "nonsense"]);
    assert_usage_error(&args, "no policy for purpose \"nonsense\"");

    let mut args = QUOTE_ARGS.to_vec();
    args.extend(["--trust-root", "testdata/dcap/tdx_quote"]);
    assert_usage_error(&args, "not an X.509 certificate");
}

#[test]
fn policy_test_runs_the_shipped_tests() {
    let out = verifier(&["policy", "test", "policies"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let last = text.lines().last().unwrap();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 20, "{last}");
}

#[test]
fn policy_test_reports_failures_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("x_test.rego"),
        "package teesql.x_test\n\nimport rego.v1\n\ntest_ok if true\n\ntest_broken if {\n\t1 == 2\n}\n",
    )
    .unwrap();
    let out = verifier(&["policy", "test", dir.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL") && text.contains("test_broken"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("1 passed, 1 failed"), "{text}");
}

#[test]
fn help_explains_exit_status_and_sources() {
    let out = verifier(&["verify", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "Exit status",
        "--collateral-dir",
        "PCCS_URL",
        "--trust-root",
    ] {
        assert!(text.contains(needle), "missing {needle} in help:\n{text}");
    }
}

//! The `teesql-sidecar` binary's command line: bad settings are all reported at once,
//! with exit status 2, and never echo a secret.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn sidecar(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teesql-sidecar"));
    cmd.args(args);
    for v in [
        "TEESQL_READ_SECRET",
        "TEESQL_READWRITE_SECRET",
        "TEESQL_VERIFIER_URL",
        "EXPECTED_MRTD",
        "DSTACK_SIMULATOR_ENDPOINT",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn serve_reports_every_bad_setting_without_secrets() {
    let out = sidecar(
        &[
            "serve",
            "--listen",
            "nowhere",
            "--backend-method",
            "kerberos",
        ],
        &[("TEESQL_READ_SECRET", "not-a-secret-value")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "listen \"nowhere\"",
        "backend.method",
        "auth.read_secret",
        "configuration errors",
    ] {
        assert!(err.contains(needle), "{needle} missing: {err}");
    }
    assert!(!err.contains("not-a-secret-value"), "{err}");
}

#[test]
fn serve_without_any_secret_says_how_to_set_one() {
    let out = sidecar(
        &["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("TEESQL_READ_SECRET"), "{err}");
}

#[test]
fn serve_without_a_guest_agent_explains_it() {
    let secret = "ab".repeat(32);
    let out = sidecar(
        &["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"],
        &[
            ("TEESQL_READ_SECRET", &secret),
            ("DSTACK_SIMULATOR_ENDPOINT", "/nonexistent/dstack.sock"),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("dstack guest agent at /nonexistent/dstack.sock"),
        "{err}"
    );
    assert!(!err.contains(&secret));
}

#[test]
fn forward_checks_its_flags() {
    let out = sidecar(
        &[
            "forward",
            "--to",
            "127.0.0.1:1",
            "--expected-mrtd",
            "abc",
            "--manifest-signer",
            "0x12",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("must be 96 hex digits"), "{err}");
    assert!(err.contains("--manifest-signer"), "{err}");
}

#[test]
fn help_explains_modes_and_environment() {
    let out = sidecar(&["--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["serve", "forward", "provision"] {
        assert!(text.contains(needle), "{text}");
    }
    let out = sidecar(&["forward", "--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["sslmode=disable", "EXPECTED_MRTD", "--manifest-domain"] {
        assert!(text.contains(needle), "{text}");
    }
}

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

/// The `code` of every reason in a printed decision.
fn reason_codes(d: &serde_json::Value) -> Vec<&str> {
    d["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect()
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
            teesql_devattest::encode::extension_value(&vec![0u8; 2 << 20]),
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
        "--dev-trust-root",
    ] {
        assert!(text.contains(needle), "missing {needle} in help:\n{text}");
    }
}

/// The production verifier carries no development code: no agent, nothing that signs
/// quotes. The development PKI lives in teesql-devattest, which it does not depend on.
#[test]
fn the_verifier_has_no_development_agent() {
    let out = verifier(&["agent", "--help"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
    let help = verifier(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(!text.contains("agent"), "{text}");
    let manifest = std::fs::read_to_string(root().join("verifier/Cargo.toml")).unwrap();
    let normal = manifest.split("[dev-dependencies]").next().unwrap();
    for dev_only in ["teesql-devattest", "rcgen", "p256"] {
        assert!(
            !normal.contains(dev_only),
            "{dev_only} in the verifier's dependencies"
        );
    }
}

/// A root is the development root because the operator says so (--dev-trust-root), never
/// because its subject says so: the same development root given as --trust-root is
/// `custom`, which neither profile accepts.
#[test]
fn a_root_is_dev_by_the_operators_word_not_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let pki = teesql_devattest::DevPki::from_seed([5; 32]).unwrap();
    let root = dir.path().join("root.der");
    std::fs::write(&root, pki.root_der()).unwrap();
    assert!(
        String::from_utf8_lossy(pki.root_pem().as_bytes()).contains("CERTIFICATE"),
        "a PEM root"
    );
    let as_custom = teesql_verifier::backend::dcap::TrustRoot::from_file(&root).unwrap();
    assert_eq!(as_custom.kind().as_str(), "custom");
    let as_dev = teesql_verifier::backend::dcap::TrustRoot::development_from_file(&root).unwrap();
    assert_eq!(as_dev.kind().as_str(), "dev");
}

#[test]
fn a_pccs_that_never_answers_denies_within_the_fetch_timeout() {
    // A PCCS that accepts connections and then says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(16) {
            held.push(conn);
        }
    });
    let out = verifier(&[
        "verify",
        "--quote",
        "testdata/dcap/tdx_quote",
        "--pccs-url",
        &url,
        "--fetch-timeout",
        "1",
        "--now",
        "1751000000",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = stdout_json(&out);
    assert_eq!(d["reasons"][0]["code"], "collateral_unavailable");
    let message = d["reasons"][0]["message"].as_str().unwrap();
    assert!(message.contains("timed out"), "{message}");
}

/// The README's two commands for development attestation, run as written (the agent with
/// `cargo run` itself, the verifier's binary for its `cargo run`, a temporary directory for
/// /tmp, a free port for 8090).
#[test]
fn readme_agent_then_verify_as_two_commands() {
    use std::io::BufRead;

    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let block = readme
        .split("<!-- cli-test: agent -->")
        .nth(1)
        .expect("README lost its agent snippet");
    let start = block.find("```sh\n").unwrap() + "```sh\n".len();
    let block = &block[start..start + block[start..].find("```").unwrap()];
    let commands: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(commands.len(), 2, "two commands: {block}");

    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = dir.path().join("agent");
    let local = |line: &str| {
        line.replace("/tmp/teesql-agent", tmp.to_str().unwrap())
            .replace("127.0.0.1:8090", &format!("127.0.0.1:{port}"))
    };
    let args = |line: &str| -> Vec<String> {
        let line = local(line);
        let rest = line
            .strip_prefix("cargo run -q -p teesql-verifier -- ")
            .unwrap_or_else(|| panic!("not a cargo run line: {line}"));
        rest.split_whitespace().map(String::from).collect()
    };

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // The agent is not in the verifier: `teesql-dev agent`, run through cargo as written.
    let agent_line = local(commands[0]);
    assert!(
        agent_line.starts_with("cargo run -q -p teesql-tests --bin teesql-dev -- agent "),
        "{agent_line}"
    );
    let mut agent = Kill(
        Command::new("cargo")
            .args(agent_line.split_whitespace().skip(1))
            .current_dir(root())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Ready once it prints its `try:` line.
    let stdout = std::io::BufReader::new(agent.0.stdout.take().unwrap());
    let mut printed = String::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        printed.push_str(&line);
        printed.push('\n');
        if line.contains("try:") {
            break;
        }
    }
    assert!(
        printed.contains("try:"),
        "the agent exited early:\n{printed}"
    );
    assert!(printed.contains("NOT FOR PRODUCTION"), "{printed}");

    let verify = args(commands[1]);
    let run = |args: &[String]| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        verifier(&refs)
    };
    let out = run(&verify);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d = stdout_json(&out);
    assert_eq!(d["allow"], true, "{d}");
    assert_eq!(d["claims"]["tdx"]["root"], "dev");
    assert_eq!(d["claims"]["binding"]["ok"], true);
    assert_eq!(d["claims"]["app"]["rtmr3_replayed"], true);

    // The production profile refuses the same evidence.
    let production: Vec<String> = verify
        .iter()
        .map(|a| {
            if a == "policies/dev" {
                "policies/teesql".to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let out = run(&production);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = stdout_json(&out);
    let codes = reason_codes(&d);
    assert!(codes.contains(&"dev_root"), "{codes:?}");

    // Without --dev-trust-root the development quote does not verify at all.
    let mut untrusted = Vec::new();
    let mut it = verify.iter();
    while let Some(a) = it.next() {
        if a == "--dev-trust-root" {
            it.next();
        } else {
            untrusted.push(a.clone());
        }
    }
    let out = run(&untrusted);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = stdout_json(&out);
    assert_eq!(d["claims"]["tdx"]["verified"], false, "{d}");
    assert_eq!(d["claims"]["tdx"]["root"], "intel");
    assert_eq!(d["reasons"][0]["code"], "quote_signature_invalid", "{d}");
}

/// dstack's simulator quote (mode D) through `--backend simulator`: read, reported
/// unverified under the `simulator` root, taken by the development profile only.
#[test]
fn the_simulator_backend_reads_a_simulator_quote_for_development_only() {
    let base = [
        "verify",
        "--attestation",
        "testdata/dstack/simulator-attestation.bin",
        "--backend",
        "simulator",
    ];
    let mut dev = base.to_vec();
    dev.extend(["--policy-dir", "policies/dev"]);
    let out = verifier(&dev);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d = stdout_json(&out);
    assert_eq!(d["allow"], true, "{d}");
    let tdx = &d["claims"]["tdx"];
    assert_eq!(tdx["verified"], false);
    assert_eq!(tdx["root"], "simulator");
    assert_eq!(tdx["backend"], "simulator");
    assert_eq!(tdx["error_code"], "simulated");
    assert_eq!(
        tdx["mrtd"].as_str().unwrap().len(),
        96,
        "the TD report is still read"
    );
    assert_eq!(
        d["claims"]["app"]["app_id"],
        "5bb4ff9a3837357f19dc176407a5709c62eb6c56"
    );

    let out = verifier(&base);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = stdout_json(&out);
    assert_eq!(d["allow"], false);
    let codes = reason_codes(&d);
    assert!(codes.contains(&"simulated_quote"), "{codes:?}");
    assert!(codes.contains(&"backend_not_accepted"), "{codes:?}");

    // Without the flag the same blob goes to DCAP, which names no simulator anything.
    let out = verifier(&dev[..3]);
    let d = stdout_json(&out);
    assert_eq!(d["claims"]["tdx"]["backend"], "dcap", "{d}");
    assert_ne!(d["claims"]["tdx"]["root"], "simulator");

    // The simulator never joins a chain: a chain would let a real backend's outage
    // fall through to a quote nobody signed.
    assert_usage_error(
        &[
            "verify",
            "--attestation",
            "testdata/dstack/simulator-attestation.bin",
            "--backend",
            "dcap,simulator",
        ],
        "simulator",
    );
}

/// Every `serve` setting's variable is `TEESQL_VERIFIER_` and its flag (its TOML key):
/// names that drifted from their keys were renamed (the old ones still read, with a
/// notice). The one exception is shared with the sidecar: `TEESQL_PCCS_URL`.
#[test]
fn serve_variables_are_named_after_their_flags() {
    let out = verifier(&["serve", "--help"]);
    // Each option starts a line of its own ("      --flag <VALUE>"); its help follows.
    let mut options: Vec<String> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.trim_start().strip_prefix("--") {
            Some(rest) if line.starts_with("      --") => options.push(rest.to_string()),
            _ => {
                if let Some(last) = options.last_mut() {
                    last.push(' ');
                    last.push_str(line.trim());
                }
            }
        }
    }
    let help = options.join("\n");
    let mut checked = 0;
    for part in &options {
        let flag = part.split([' ', '<']).next().unwrap_or_default();
        // The global log flags are both programs': `--log` (RUST_LOG), `--log-format`
        // (TEESQL_LOG_FORMAT).
        if matches!(flag, "help" | "config" | "log" | "log-format") {
            continue;
        }
        let Some(env) = part
            .split("[env: ")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
        else {
            panic!("--{flag} names no variable");
        };
        let expected = match flag {
            "pccs-url" => "TEESQL_PCCS_URL".to_string(),
            f => format!("TEESQL_VERIFIER_{}", f.to_uppercase().replace('-', "_")),
        };
        assert_eq!(env, expected, "--{flag}");
        checked += 1;
    }
    assert!(checked > 30, "{checked} flags read from:\n{help}");
}

/// `tcb report` on recorded evidence: dcap-qvl's platform under Intel's standard set 17
/// and early set 20 (`testdata/pcs/`, a collateral directory with both), with the fix.
#[test]
fn tcb_report_names_the_platform_its_next_status_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("testdata/dcap/tdx_quote"),
        dir.path().join("tdx_quote"),
    )
    .unwrap();
    let evidence_dir = dir.path().display().to_string();
    let args = [
        "tcb",
        "report",
        "--evidence-dir",
        &evidence_dir,
        "--collateral-dir",
        "testdata/pcs",
        "--offline",
        "--now",
        "1751000000",
    ];
    let out = verifier(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("platform FMSPC B0C06F000000"), "{table}");
    assert!(
        table.contains("now:   UpToDate under standard set 17"),
        "{table}"
    );
    assert!(
        table.contains("next:  OutOfDate under early set 20"),
        "{table}"
    );
    assert!(table.contains("tdx_module (TDX Module) 6 -> 11"), "{table}");
    let out = verifier(&[&args[..], &["--json"]].concat());
    let j = stdout_json(&out);
    assert_eq!(j["platforms"][0]["early"]["eval_data_number"], 20);
    assert_eq!(j["platforms"][0]["fix"][3]["needs"], 11);
    // Something that is not evidence is named.
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    assert_usage_error(&args, "notes.txt: not a quote");
}

/// `policy replay`: the recorded quote is allowed today; as if Intel's set 20 were the
/// standard one it would be refused (exit 3, naming the identity and the code), unless
/// the new profile gives a grace.
#[test]
fn policy_replay_lists_what_a_promotion_would_refuse_and_gates_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("evidence");
    std::fs::create_dir(&evidence).unwrap();
    std::fs::copy(
        root().join("testdata/dcap/tdx_quote"),
        evidence.join("tdx_quote"),
    )
    .unwrap();
    let evidence_dir = evidence.display().to_string();
    let replay = |extra: &[&str]| {
        let mut args = vec![
            "policy",
            "replay",
            "--evidence-dir",
            &evidence_dir,
            "--collateral-dir",
            "testdata/pcs",
            "--offline",
            "--now",
            "1751000000",
        ];
        args.extend_from_slice(extra);
        verifier(&args)
    };
    let same = replay(&["--policy-dir", "policies/teesql"]);
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    let text = String::from_utf8_lossy(&same.stdout).to_string();
    assert!(
        text.contains("1 evidence files; 0 allow -> deny, 0 deny -> allow"),
        "{text}"
    );

    let promoted = replay(&["--policy-dir", "policies/teesql", "--tcb-set", "early"]);
    assert_eq!(promoted.status.code(), Some(3), "{}", stderr(&promoted));
    let text = String::from_utf8_lossy(&promoted.stdout).to_string();
    assert!(text.contains("allow -> deny"), "{text}");
    assert!(text.contains("tdx_quote"), "{text}");
    assert!(text.contains("(tcb_out_of_date)"), "{text}");

    // A new profile with a grace admits it on promotion day (with a warning).
    let graced = dir.path().join("graced");
    std::fs::create_dir(&graced).unwrap();
    std::fs::write(
        graced.join("profile.toml"),
        format!(
            "extends = [{:?}]\n",
            root().join("policies/teesql").display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(
        graced.join("data.json"),
        r#"{"teesql": {"tcb_grace_days": 30}}"#,
    )
    .unwrap();
    let graced = graced.display().to_string();
    let out = replay(&["--policy-dir", &graced, "--tcb-set", "early", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let j = stdout_json(&out);
    assert_eq!(j["allow_to_deny"], 0, "{j}");
    assert_eq!(j["evidence"], 1, "{j}");
}

/// The verifier with `env` added to an environment without any TeeSQL or Intel Trust
/// Authority variable of the test's own.
fn verifier_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teesql-verifier"));
    cmd.args(args).current_dir(root()).env_remove("RUST_LOG");
    for (name, _) in std::env::vars() {
        if name.starts_with("TEESQL_") || name.starts_with("INTEL_TRUST") || name == "PCCS_URL" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

/// A file only its owner may read (as credentials must be).
fn private_file(path: &Path, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// The problems `config check` printed (one per `teesql-verifier:` line; a policy's
/// diagnostic goes on over indented lines), after checking that the last line counts them.
fn config_problems(out: &Output) -> Vec<String> {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("teesql-verifier: "))
        .collect();
    let (count, problems) = lines.split_last().unwrap();
    assert_eq!(*count, format!("{} problem(s)", problems.len()), "{err}");
    problems.iter().map(|p| p.to_string()).collect()
}

/// `config check` on a good configuration: every setting resolved, the secrets as
/// `<set>` and never their values (from a variable or from a file), `configuration OK`.
#[test]
fn config_check_prints_the_resolved_settings_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let api_key = "ita-api-key-d41d8cd98f00b204e9800998ecf8427e";
    let token = "admin-token-9e107d9d372bb6826bd81d3542a419d6";
    let admin_token_file = private_file(&dir.path().join("admin-token"), token);
    let key_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let signing_key = private_file(&dir.path().join("signing.pem"), &key_pem);
    let config = dir.path().join("verifier.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"unix://{}\"\npolicy_dir = [\"policies/dev\"]\nbackend = \"dcap,ita\"\n\
             admin_token_file = \"{admin_token_file}\"\nsigning_key = \"{signing_key}\"\n\
             offline = true\ncollateral_file = \"testdata/dcap/tdx_quote_collateral.json\"\n",
            dir.path().join("verifier.sock").display()
        ),
    )
    .unwrap();
    let out = verifier_with(
        &["config", "check", "--config", config.to_str().unwrap()],
        &[("INTEL_TRUST_AUTHORITY_API_KEY", api_key)],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.trim_end().ends_with("configuration OK"), "{text}");
    for line in [
        format!(
            "listen = \"unix://{}\"",
            dir.path().join("verifier.sock").display()
        ),
        "policy_dir = [\"policies/dev\"]".into(),
        "backend = \"dcap,ita\"".into(),
        "ita_api_key = <set>  # from INTEL_TRUST_AUTHORITY_API_KEY".into(),
        format!("admin_token_file = \"{admin_token_file}\""),
        "admin_token = <set>".into(),
        format!("signing_key = \"{signing_key}\"  # key <set>"),
        "offline = true".into(),
        "pccs_url = <unset>".into(),
        "collateral_file = \"testdata/dcap/tdx_quote_collateral.json\"".into(),
        "tls_key = <unset>".into(),
    ] {
        assert!(text.contains(&line), "{line:?} missing in:\n{text}");
    }
    assert!(text.contains("# policy sha256:"), "{text}");
    let key_body = key_pem.lines().nth(1).unwrap();
    let everything = format!("{text}{}", stderr(&out));
    for secret in [api_key, token, key_body] {
        assert!(
            !everything.contains(secret),
            "{secret} shown:\n{everything}"
        );
    }
}

/// `config check` on a configuration with a mistake in every layer: each one listed (an
/// unknown key does not hide the rest of the file), exit status 2, and no secret shown.
#[test]
fn config_check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad_key = "not a key: it has spaces";
    let garbage = dir.path().join("signing.pem");
    std::fs::write(&garbage, "this is not a PEM key\n").unwrap();
    let config = dir.path().join("verifier.toml");
    std::fs::write(
        &config,
        "listen = \"localhost\"\npolicy_dirr = [\"policies/dev\"]\ncache_max_mib = \"lots\"\n\
         policy_dir = [\"/nonexistent/policies\"]\nbackend = \"dcap,ita\"\n",
    )
    .unwrap();
    let out = verifier_with(
        &[
            "config",
            "check",
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            "9090",
        ],
        &[
            ("INTEL_TRUST_AUTHORITY_API_KEY", bad_key),
            ("TEESQL_VERIFIER_SIGNING_KEY", garbage.to_str().unwrap()),
            ("TEESQL_VERIFIER_OFFLINE", "perhaps"),
        ],
    );
    let problems = config_problems(&out).join("\n");
    let file = config.display();
    for needle in [
        format!("--config {file}: policy_dirr: unknown key (did you mean `policy_dir`?)"),
        format!("--config {file}: cache_max_mib: invalid type: string \"lots\""),
        "listen \"localhost\": invalid socket address syntax".into(),
        "policy_dir /nonexistent/policies: not a directory".into(),
        "backend ita: the Intel Trust Authority API key has characters".into(),
        format!("signing_key {}", garbage.display()),
        "TEESQL_VERIFIER_OFFLINE \"perhaps\"".into(),
        "metrics_listen \"9090\"".into(),
    ] {
        assert!(
            problems.contains(&needle),
            "{needle:?} missing in:\n{problems}"
        );
    }
    assert_eq!(problems.lines().count(), 8, "{problems}");
    assert!(!stderr(&out).contains(bad_key), "{}", stderr(&out));

    // Policies that do not compile are a problem beside the settings' own.
    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(
        broken.join("broken.rego"),
        "package teesql.quote\n\ndeny contains if {\n",
    )
    .unwrap();
    let out = verifier_with(
        &[
            "config",
            "check",
            "--policy-dir",
            broken.to_str().unwrap(),
            "--listen",
            "0.0.0.0:50051",
        ],
        &[],
    );
    let problems = config_problems(&out);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("plaintext gRPC on a non-loopback address"));
    assert!(
        problems[1].contains("broken.rego does not compile"),
        "{problems:?}"
    );
}

/// `config check` shows what `serve` uses: a flag over a variable over the file. `serve`
/// with the same layers listens where `config check` said (the port is taken, so it
/// stops there, naming it).
#[test]
fn config_check_resolves_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("verifier.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\ncache_max_mib = 8\neval_timeout_ms = 100\n",
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let flag = taken.local_addr().unwrap().to_string();
    let env = [
        ("TEESQL_VERIFIER_LISTEN", "127.0.0.1:2"),
        ("TEESQL_VERIFIER_CACHE_MAX_MIB", "16"),
    ];
    let run = |command: &[&str], listen: Option<&str>| {
        let mut args = command.to_vec();
        args.extend(["--config", config.to_str().unwrap()]);
        if let Some(l) = listen {
            args.extend(["--listen", l]);
        }
        verifier_with(&args, &env)
    };
    let check = |listen: Option<&str>| {
        let out = run(&["config", "check"], listen);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let text = check(Some(&flag));
    for line in [
        format!("listen = \"{flag}\""),
        "cache_max_mib = 16".into(),
        "eval_timeout_ms = 100".into(),
    ] {
        assert!(text.contains(&line), "{line:?} missing in:\n{text}");
    }
    assert!(check(None).contains("listen = \"127.0.0.1:2\""));

    let serve = run(&["serve"], Some(&flag));
    assert_eq!(serve.status.code(), Some(2), "{}", stderr(&serve));
    assert!(
        stderr(&serve).contains(&format!("listen {flag}: ")),
        "{}",
        stderr(&serve)
    );
    drop(taken);
}

const SNP_MEASUREMENT: &str = "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d";

/// dstack 0.6's two SEV-SNP fixtures appraised offline at the VCEK's first second: the
/// one with ASK and VCEK embedded verifies (Milan, reported SNP firmware 23 below the
/// committed 24, so OutOfDate); the one with an empty chain has no VCEK. The default
/// profile pins no SEV-SNP measurement, so a TDX-only deployment refuses both.
#[test]
fn sev_snp_fixtures_are_appraised_offline() {
    let verify = |file: &str, extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--attestation",
            file,
            "--now",
            "1781658304",
            "--offline",
        ];
        args.extend(extra);
        verifier(&args)
    };
    let out = verify("testdata/dstack/sev-snp-attestation.json", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = stdout_json(&out);
    let claims = &d["claims"];
    assert_eq!(claims["evidence"]["tee"], "sev-snp");
    assert_eq!(claims["tdx"], serde_json::Value::Null);
    let snp = &claims["snp"];
    assert_eq!(snp["verified"], true, "{snp}");
    assert_eq!(snp["product"], "Milan");
    assert_eq!(snp["measurement"], SNP_MEASUREMENT);
    assert_eq!(
        snp["host_data"],
        "783f0057820acb99249af56cc3b07b4e8d80f65183167cba9cf437bb680f742f"
    );
    assert!(
        snp["chip_id"]
            .as_str()
            .unwrap()
            .starts_with("38d174589d2dff97"),
        "{snp}"
    );
    assert_eq!(snp["tcb_status"], "OutOfDate");
    assert!(
        snp["tcb_behind"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("snp 23 < committed 24")),
        "{snp}"
    );
    assert_eq!(snp["mr_config_bound"], true);
    assert_eq!(snp["revocation_checked"], false);
    assert_eq!(claims["app"]["attested_by"], "host_data");
    assert_eq!(
        claims["app"]["compose_hash"],
        "86e59625be93207bc2351c4d1bba20037cec8e168da6b18f559af5af657b7a23"
    );
    let codes = reason_codes(&d);
    assert!(codes.contains(&"snp_measurement_not_pinned"), "{codes:?}");
    assert!(codes.contains(&"snp_tcb_not_accepted"), "{codes:?}");

    let out = verify("testdata/dstack/sev-snp-attestation.bin", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let d = stdout_json(&out);
    let snp = &d["claims"]["snp"];
    assert_eq!(snp["verified"], false);
    assert_eq!(snp["error_code"], "no_vcek");
    assert!(
        snp["error"]
            .as_str()
            .unwrap()
            .contains("KDS fetch not available offline"),
        "{snp}"
    );
    assert!(reason_codes(&d).contains(&"snp_no_vcek"));

    // A profile that pins the measurement (and takes this host's OutOfDate TCB) allows it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("data.json"),
        serde_json::json!({"teesql": {
            "pins": {"snp_measurement": [SNP_MEASUREMENT]},
            "accepted_tcb_statuses": ["UpToDate", "OutOfDate"],
        }})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("profile.toml"),
        format!(
            "extends = [{:?}]\n",
            root().join("policies/teesql").display().to_string()
        ),
    )
    .unwrap();
    let profile = dir.path().to_str().unwrap();
    let out = verify(
        "testdata/dstack/sev-snp-attestation.json",
        &["--policy-dir", profile],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Still refused without its VCEK.
    let out = verify(
        "testdata/dstack/sev-snp-attestation.bin",
        &["--policy-dir", profile],
    );
    assert_eq!(reason_codes(&stdout_json(&out)), vec!["snp_no_vcek"]);
}

/// `--gpu-evidence`: dstack's nvattest fixture beside an attestation whose
/// `gpu-attestation` event names its digest; other bytes do not match; `signed` is false.
#[test]
fn gpu_evidence_is_compared_with_the_event_and_never_signed() {
    let blob = std::fs::read(root().join("testdata/dstack/simulator-attestation.bin")).unwrap();
    let mut att = teesql_verifier::evidence::decode_attestation(&blob).unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("attestation.bin");
    std::fs::write(&file, teesql_devattest::encode::attestation_v0(&att)).unwrap();
    let other = dir.path().join("other.json");
    std::fs::write(&other, b"{}").unwrap();
    let gpu = |evidence: &str| {
        let out = verifier(&[
            "verify",
            "--attestation",
            file.to_str().unwrap(),
            "--gpu-evidence",
            evidence,
            "--offline",
        ]);
        stdout_json(&out)["claims"]["app"]["gpu"].clone()
    };
    let g = gpu("testdata/dstack/gpu-attestation-h100.json");
    assert_eq!(g["evidence_matches"], true, "{g}");
    assert_eq!(g["signed"], false);
    assert_eq!(g["provider"], "nvidia");
    let g = gpu(other.to_str().unwrap());
    assert_eq!(g["evidence_matches"], false, "{g}");
}

/// `--snp-cert-dir`: the empty-chain fixture verifies from a directory laid out like KDS.
#[test]
fn an_snp_cert_directory_supplies_the_missing_vcek() {
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("testdata/dstack/sev-snp-attestation.json")).unwrap(),
    )
    .unwrap();
    let att = teesql_verifier::evidence::decode_attestation(
        &hex::decode(json["attestation"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let snp = att.snp.unwrap();
    let vcek_pem = &snp.cert_chain[1];
    let vcek = x509_der(vcek_pem);
    let dir = tempfile::tempdir().unwrap();
    let chip_dir = dir
        .path()
        .join("Milan")
        .join(hex::encode(snp.report.chip_id()));
    std::fs::create_dir_all(&chip_dir).unwrap();
    std::fs::write(
        chip_dir.join(format!("{}.der", hex::encode(snp.report.reported_tcb().0))),
        vcek,
    )
    .unwrap();
    std::fs::write(dir.path().join("Milan/cert_chain"), &snp.cert_chain[0]).unwrap();
    let out = verifier(&[
        "verify",
        "--attestation",
        "testdata/dstack/sev-snp-attestation.bin",
        "--now",
        "1781658304",
        "--offline",
        "--snp-cert-dir",
        dir.path().to_str().unwrap(),
    ]);
    let d = stdout_json(&out);
    let snp = &d["claims"]["snp"];
    assert_eq!(snp["verified"], true, "{snp}");
    assert_eq!(snp["vcek"]["source"], "directory");
}

/// The DER of a one-certificate PEM.
fn x509_der(pem: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

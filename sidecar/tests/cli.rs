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

/// `config check` with `env` added to an environment without any TeeSQL variable of the
/// test's own.
fn config_check(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_teesql-sidecar"));
    cmd.args(["config", "check"]).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TEESQL_") || name.starts_with("DSTACK_") || name == "PCCS_URL" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

const READ_SECRET: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

/// `config check` on a good configuration: the settings `serve` would use, every secret
/// as `<set>` with where it came from, never its value; `configuration OK`, exit 0.
#[test]
fn config_check_prints_the_resolved_settings_without_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let role_secret = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let role_file = dir.path().join("tenant-a.secret");
    std::fs::write(&role_file, format!("{role_secret}\n")).unwrap();
    std::fs::set_permissions(&role_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\npostgres = \"127.0.0.1:6543\"\nadmin = \"off\"\n\
             [backend]\nhost = \"/var/run/postgresql\"\nmethod = \"scram-sha-256\"\n\
             [auth]\npassthrough_roles = [\"postgres\"]\n\
             [[auth.roles]]\nname = \"tenant_a\"\ngranted = true\nsecret_file = \"{}\"\n",
            role_file.display()
        ),
    )
    .unwrap();
    let backend_password = "backend-password-correct-horse-battery";
    let out = config_check(
        &["--config", config.to_str().unwrap()],
        &[
            ("TEESQL_READ_SECRET", READ_SECRET),
            ("TEESQL_BACKEND_PASSWORD", backend_password),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}{err}");
    assert!(text.trim_end().ends_with("configuration OK"), "{text}");
    for line in [
        "[listen]\npostgres = \"127.0.0.1:6543\"\nadmin = \"off\"",
        "host = \"/var/run/postgresql\"\nport = 5432\nmethod = \"scram-sha-256\"",
        "password = <set>  # env TEESQL_BACKEND_PASSWORD",
        "admin_password = <unset>",
        "read_secret = <set>  # env TEESQL_READ_SECRET",
        "readwrite_secret = <unset>",
        "passthrough_roles = [\"postgres\"]",
        "tenant_user = \"teesql_app\"",
        "record_identity = true",
        "roles.teesql_read = { privileges = \"read\", secret = <set> }",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
    assert!(
        text.contains(&format!(
            "roles.tenant_a = {{ privileges = \"none\", granted = true, secret = <set> }}  # file {}",
            role_file.display()
        )),
        "{text}"
    );
    for secret in [READ_SECRET, role_secret, backend_password] {
        assert!(
            !text.contains(secret) && !err.contains(secret),
            "{secret} shown"
        );
    }
}

/// `config check` on a configuration with a mistake in every layer: each one listed (an
/// unknown key does not hide the rest of the file), exit status 2, no secret shown.
#[test]
fn config_check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        "[listen]\npostgres = \"nowhere\"\n\
         [verifier]\nurl = \"https://verifier.example:50051\"\n\
         identity_policy_dir = \"/nonexistent/policies\"\n\
         [auth]\nmethd = \"scram-sha-256\"\n\
         [backend]\nport = \"five\"\n",
    )
    .unwrap();
    let malformed = "zz-not-a-hex-secret-zz";
    let out = config_check(
        &[
            "--config",
            config.to_str().unwrap(),
            "--max-connections",
            "0",
        ],
        &[
            ("TEESQL_READ_SECRET", malformed),
            ("TEESQL_READWRITE_SECRET", READ_SECRET),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    let lines: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("teesql-sidecar: "))
        .collect();
    let (count, problems) = lines.split_last().unwrap();
    assert_eq!(*count, format!("{} problem(s)", problems.len()), "{err}");
    let file = config.display();
    for needle in [
        format!("{file}: auth.methd: unknown key (did you mean `method`?)"),
        format!("{file}: backend.port: invalid type: string \"five\""),
        "listen \"nowhere\"".into(),
        "verifier.identity_policy_dir /nonexistent/policies".into(),
        "auth.read_secret: must be 64 hex digits".into(),
        "limits.max_connections: 0 is below the minimum, 1".into(),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing in:\n{err}");
    }
    assert_eq!(problems.len(), 6, "{err}");
    assert!(
        !err.contains(malformed) && !err.contains(READ_SECRET),
        "{err}"
    );
}

/// `config check` shows what `serve` uses: a flag over a variable over the file. `serve`
/// with the same layers binds where `config check` said (the port is taken, so it stops
/// there, naming it).
#[test]
fn config_check_resolves_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sidecar.toml");
    std::fs::write(
        &config,
        "[listen]\npostgres = \"127.0.0.1:1\"\nadmin = \"off\"\n[backend]\nport = 1\n",
    )
    .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let flag = taken.local_addr().unwrap().to_string();
    let env = [
        ("TEESQL_READ_SECRET", READ_SECRET),
        ("TEESQL_SIDECAR_LISTEN", "127.0.0.1:2"),
        ("TEESQL_BACKEND_PORT", "2"),
    ];
    let file = ["--config", config.to_str().unwrap()];
    let out = config_check(
        &[&file[..], &["--listen", flag.as_str()][..]].concat(),
        &env,
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("postgres = \"{flag}\"")), "{text}");
    assert!(text.contains("port = 2\n"), "{text}");
    let out = config_check(&file, &env);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("postgres = \"127.0.0.1:2\""), "{text}");

    let serve = sidecar(
        &[&["serve"][..], &file[..], &["--listen", flag.as_str()][..]].concat(),
        &env,
    );
    let err = String::from_utf8_lossy(&serve.stderr);
    assert_eq!(serve.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("listen {flag}: ")), "{err}");
    drop(taken);
}

#[test]
fn help_names_config_check() {
    let out = sidecar(&["--help"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("config"));
    let out = sidecar(&["config", "check", "--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["exactly as `serve` would", "<set>", "--listen", "--config"] {
        assert!(text.contains(needle), "{needle} missing in:\n{text}");
    }
}

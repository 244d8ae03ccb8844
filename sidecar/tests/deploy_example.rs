//! The deployment example in `deploy/` stays a valid, closed sidecar configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use teesql_sidecar::config::{BackendAddr, BackendMethod, Overrides, SidecarConfig, SidecarFile};

#[test]
fn deploy_sidecar_toml_resolves_with_the_compose_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sidecar.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let file: SidecarFile = toml::from_str(&text).unwrap();
    let compose = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker-compose.yml"),
    )
    .unwrap();
    // The variables deploy/docker-compose.yml passes to the sidecar, and only those.
    let names = [
        "TEESQL_READ_SECRET",
        "TEESQL_READWRITE_SECRET",
        "TEESQL_BACKEND_PASSWORD",
        "TEESQL_BACKEND_ADMIN_PASSWORD",
    ];
    for name in names {
        assert!(
            compose.contains(&format!("{name}: ")),
            "compose lacks {name}"
        );
    }
    let env: BTreeMap<String, String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), format!("{i}{i}").repeat(32)))
        .collect();
    let cfg = SidecarConfig::resolve(file, &env, Overrides::default())
        .map_err(|e| e.join("; "))
        .unwrap();
    match &cfg.backend.addr {
        BackendAddr::Unix(dir, 5432) => {
            // The volume docker-compose.yml shares between postgres and the sidecar.
            assert_eq!(dir, Path::new("/var/run/postgresql"));
            assert!(compose.contains("pgsocket:/var/run/postgresql"));
            // And the verifier's socket, shared with the sidecar.
            assert!(compose.contains("verifier-socket:/run/teesql"));
            assert_eq!(cfg.verifier_url, "unix:///run/teesql/verifier.sock");
            assert!(compose.contains("unix:///run/teesql/verifier.sock"));
        }
        other => panic!("deploy/sidecar.toml backend: {other:?}"),
    }

    // Nobody logs in to Postgres without a password: a passthrough superuser behind a
    // `trust` Postgres would hand any attested client the database.
    assert_ne!(cfg.backend.method, BackendMethod::Trust);
    assert!(cfg.backend.password.is_some() && cfg.backend.admin_password.is_some());
    assert!(
        !compose.contains("trust"),
        "deploy/docker-compose.yml must not use trust authentication"
    );
    assert!(compose.contains("POSTGRES_HOST_AUTH_METHOD: scram-sha-256"));
    // What decides who gets in is in the measured image, not mounted from the host.
    assert!(
        !compose.contains("./"),
        "no host files mounted into the CVM"
    );
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile"))
            .unwrap();
    assert!(dockerfile.contains("COPY deploy/sidecar.toml /etc/teesql/sidecar.toml"));
    assert!(dockerfile.contains("COPY policies /policies"));
}

/// The verifier and the sidecar check their configuration before they serve, with the
/// same settings: a bad one stops the container naming every problem, and the resolved
/// settings are in its log. The sidecar's check passes on `deploy/sidecar.toml` with the
/// variables the compose file passes, and shows none of them.
#[test]
fn deploy_services_run_config_check_before_serve() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let compose = std::fs::read_to_string(deploy.join("docker-compose.yml")).unwrap();
    let command = |binary: &str| -> &str {
        compose
            .lines()
            .find(|l| {
                l.trim_start().starts_with("command:") && l.contains(&format!("{binary} serve"))
            })
            .unwrap_or_else(|| panic!("no command runs {binary} serve"))
    };
    for (binary, args) in [
        ("teesql-verifier", ""),
        ("teesql-sidecar", " --config /etc/teesql/sidecar.toml"),
    ] {
        let expected = format!(
            "[\"sh\", \"-c\", \"{binary} config check{args} && exec {binary} serve{args}\"]"
        );
        assert!(command(binary).contains(&expected), "{}", command(binary));
    }

    let values: Vec<(&str, String)> = [
        "TEESQL_READ_SECRET",
        "TEESQL_READWRITE_SECRET",
        "TEESQL_BACKEND_PASSWORD",
        "TEESQL_BACKEND_ADMIN_PASSWORD",
    ]
    .iter()
    .enumerate()
    .map(|(i, n)| (*n, format!("{:x}{i}", 0xabc_u32).repeat(16)))
    .collect();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_teesql-sidecar"));
    cmd.args(["config", "check", "--config"])
        .arg(deploy.join("sidecar.toml"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TEESQL_") || name.starts_with("DSTACK_") {
            cmd.env_remove(name);
        }
    }
    let out = cmd
        .envs(values.iter().map(|(n, v)| (n, v)))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.trim_end().ends_with("configuration OK"), "{text}");
    assert_eq!(text.matches("<set>  # env TEESQL_").count(), 4, "{text}");
    for (_, v) in &values {
        assert!(!text.contains(v.as_str()), "{text}");
    }
}

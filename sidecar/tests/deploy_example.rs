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

//! The deployment example in `deploy/` stays a valid sidecar configuration.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use teesql_sidecar::config::{BackendAddr, Overrides, SidecarConfig, SidecarFile};

#[test]
fn deploy_sidecar_toml_resolves_with_the_compose_environment() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sidecar.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let file: SidecarFile = toml::from_str(&text).unwrap();
    // The variables deploy/docker-compose.yml passes to the sidecar.
    let env: BTreeMap<String, String> = [
        ("TEESQL_READ_SECRET".to_string(), "11".repeat(32)),
        ("TEESQL_READWRITE_SECRET".to_string(), "22".repeat(32)),
    ]
    .into_iter()
    .collect();
    let cfg = SidecarConfig::resolve(file, &env, Overrides::default())
        .map_err(|e| e.join("; "))
        .unwrap();
    match &cfg.backend.addr {
        BackendAddr::Unix(dir, 5432) => {
            // The volume docker-compose.yml shares between postgres and the sidecar.
            assert_eq!(dir, Path::new("/var/run/postgresql"));
            let compose = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker-compose.yml"),
            )
            .unwrap();
            assert!(compose.contains("pgsocket:/var/run/postgresql"));
        }
        other => panic!("deploy/sidecar.toml backend: {other:?}"),
    }
}

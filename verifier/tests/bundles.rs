//! Policies from OPA bundles (`--policy-bundle`, `--policy-bundle-url`): built here the
//! way `opa build` lays them out (openpolicyagent.org/docs/management-bundles: `.manifest`
//! with `revision` and `roots`, `data.json` at its path, `.rego` modules) and signed the
//! way `opa sign` signs them (`.signatures.json`: one JWT whose `files` list each file's
//! SHA-256, structured files over their canonical JSON — sorted keys, no whitespace).
//! The digests are computed here independently of the verifier's code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use ring::signature::KeyPair;
use sha2::Digest;
use teesql_verifier::service::config::{ServeConfig, ServeSettings};
use teesql_verifier::service::{DecisionService, PeerRequest, TokenRequest};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The production profile's files as bundle entries: `data.json` at the root (its
/// documents start with `teesql`) and every non-test module under `teesql/`.
fn profile_files(revision: &str) -> Vec<(String, Vec<u8>)> {
    let dir = repo().join("policies/teesql");
    let mut files = vec![(
        ".manifest".to_string(),
        serde_json::to_vec(&serde_json::json!({"revision": revision, "roots": ["teesql"]}))
            .unwrap(),
    )];
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        if name == "data.json" {
            files.push(("data.json".into(), std::fs::read(&path).unwrap()));
        } else if name.ends_with(".rego") && !name.ends_with("_test.rego") {
            files.push((format!("teesql/{name}"), std::fs::read(&path).unwrap()));
        }
    }
    files
}

fn tar_gz(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in files {
        // `opa build` writes absolute names (`/data.json`); the tar crate's path setter
        // refuses those (and `..`), so the name goes into the header as raw bytes.
        let mut h = tar::Header::new_gnu();
        let raw = format!("/{name}");
        assert!(raw.len() < 100);
        h.as_old_mut().name[..raw.len()].copy_from_slice(raw.as_bytes());
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, bytes.as_slice()).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// OPA's canonical JSON (v1/bundle/hash.go): keys sorted, no whitespace.
fn canonical(v: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let b: BTreeMap<&String, serde_json::Value> =
                    m.iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::to_value(b).unwrap()
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json writes a BTreeMap-backed object in key order; the re-parse below
    // would reorder nothing (keys are already sorted at every level).
    let mut out = String::new();
    write_sorted(&sorted(v), &mut out);
    out
}

fn write_sorted(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                write_sorted(&m[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
}

fn file_digest(name: &str, bytes: &[u8]) -> String {
    let base = name.rsplit('/').next().unwrap();
    let input = if base == "data.json" || base == ".manifest" {
        canonical(&serde_json::from_slice(bytes).unwrap()).into_bytes()
    } else {
        bytes.to_vec()
    };
    hex::encode(sha2::Sha256::digest(&input))
}

struct Signer {
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl Signer {
    fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        Self { key, rng }
    }

    /// The public key as a PEM SubjectPublicKeyInfo (what `--bundle-verification-key` reads).
    fn public_pem(&self) -> String {
        // SPKI prefix for an uncompressed P-256 point (RFC 5480).
        let mut der = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        der.extend_from_slice(self.key.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// `.signatures.json` over `files` (every one listed), with `scope`.
    fn sign(&self, files: &[(String, Vec<u8>)], scope: Option<&str>) -> (String, Vec<u8>) {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let listed: Vec<serde_json::Value> = files
            .iter()
            .map(|(n, b)| serde_json::json!({"name": n, "hash": file_digest(n, b), "algorithm": "SHA-256"}))
            .collect();
        let mut payload = serde_json::json!({"files": listed});
        if let Some(s) = scope {
            payload["scope"] = serde_json::json!(s);
        }
        let header = b64(br#"{"alg":"ES256","typ":"JWT","kid":"teesql"}"#);
        let message = format!("{header}.{}", b64(&serde_json::to_vec(&payload).unwrap()));
        let sig = self.key.sign(&self.rng, message.as_bytes()).unwrap();
        let jwt = format!("{message}.{}", b64(sig.as_ref()));
        (
            ".signatures.json".into(),
            serde_json::to_vec(&serde_json::json!({"signatures": [jwt]})).unwrap(),
        )
    }
}

fn settings(bundle: &Path, key: Option<&Path>) -> ServeSettings {
    ServeSettings {
        policy_bundle: Some(bundle.to_path_buf()),
        bundle_verification_key: key.map(Path::to_path_buf),
        decision_log: Some("off".into()),
        sign_decisions: Some(false),
        ..ServeSettings::default()
    }
}

fn build(s: ServeSettings) -> Result<Arc<DecisionService>, String> {
    let config = ServeConfig::resolve(s).map_err(|e| e.join("; "))?;
    config.build().map_err(|e| e.join("; "))
}

async fn revision_decided(service: &DecisionService) -> String {
    let d = service
        .verify_peer(PeerRequest {
            purpose: "sidecar".into(),
            chain: vec![],
            connection: Default::default(),
        })
        .await
        .unwrap();
    assert!(!d.allow, "no certificate is never admitted");
    d.policy_revision
}

#[tokio::test]
async fn a_signed_bundle_serves_and_its_revision_goes_with_every_decision() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let key = dir.path().join("bundle-key.pem");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let mut files = profile_files("2026-12-06.1");
    files.push(signer.sign(&files, None));
    let path = dir.path().join("bundle.tar.gz");
    std::fs::write(&path, tar_gz(&files)).unwrap();

    let service = build(settings(&path, Some(&key))).unwrap();
    let policies = service.policies();
    assert_eq!(policies.revision(), Some("2026-12-06.1"));
    assert!(policies.purposes().contains(&"sidecar".to_string()));
    assert_eq!(revision_decided(&service).await, "2026-12-06.1");

    // A signed decision names the revision too (`teesql.policy_revision`).
    let signing = build(ServeSettings {
        sign_decisions: Some(true),
        ..settings(&path, Some(&key))
    })
    .unwrap();
    let d = signing
        .verify_peer_with(
            PeerRequest {
                purpose: "sidecar".into(),
                chain: vec![],
                connection: Default::default(),
            },
            TokenRequest::signed(),
        )
        .await
        .unwrap();
    let payload = d.token.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["teesql"]["policy_revision"], "2026-12-06.1",
        "{claims}"
    );

    // The same profile from its directory decides the same way (only the source differs).
    let from_dir = build(ServeSettings {
        policy_dirs: Some(vec![repo().join("policies/teesql")]),
        decision_log: Some("off".into()),
        sign_decisions: Some(false),
        ..ServeSettings::default()
    })
    .unwrap();
    assert_eq!(revision_decided(&from_dir).await, "");

    // A new revision written over the file is picked up by a reload; a broken one is
    // refused and the last good set keeps serving.
    let mut next = profile_files("2026-12-06.2");
    next.push(signer.sign(&next, None));
    std::fs::write(&path, tar_gz(&next)).unwrap();
    let (_, changed) = service.reload().await.unwrap();
    assert!(changed);
    assert_eq!(revision_decided(&service).await, "2026-12-06.2");
    let mut broken = profile_files("2026-12-06.3");
    broken.push(signer.sign(&broken, None));
    broken[1]
        .1
        .extend_from_slice(b"\n# tampered after signing\n");
    std::fs::write(&path, tar_gz(&broken)).unwrap();
    let e = service.reload().await.unwrap_err().to_string();
    assert!(e.contains("digest mismatch"), "{e}");
    assert_eq!(revision_decided(&service).await, "2026-12-06.2");
}

#[test]
fn bundles_that_are_not_exactly_what_was_signed_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::new();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let write = |name: &str, files: &[(String, Vec<u8>)]| {
        let p = dir.path().join(name);
        std::fs::write(&p, tar_gz(files)).unwrap();
        p
    };
    let base = profile_files("r1");
    let refused = |path: &Path, key: Option<&Path>, want: &str| {
        let e = build(settings(path, key)).unwrap_err();
        assert!(e.contains(want), "{}: {e}", path.display());
    };

    // Unsigned, while a key is configured.
    refused(&write("unsigned.tar.gz", &base), Some(&key), "not signed");
    // Signed, while no key is configured.
    let mut signed = base.clone();
    signed.push(signer.sign(&base, None));
    refused(
        &write("signed.tar.gz", &signed),
        None,
        "no verification key",
    );
    // A file added after signing.
    let mut extra = signed.clone();
    extra.push((
        "teesql/extra.rego".into(),
        b"package teesql.extra\n".to_vec(),
    ));
    refused(&write("extra.tar.gz", &extra), Some(&key), "not signed");
    // A data document changed after signing.
    let mut data = signed.clone();
    let i = data.iter().position(|(n, _)| n == "data.json").unwrap();
    data[i].1 = br#"{"teesql": {}}"#.to_vec();
    refused(&write("data.tar.gz", &data), Some(&key), "digest mismatch");
    // Signed by another key.
    let other = Signer::new();
    let mut foreign = base.clone();
    foreign.push(other.sign(&base, None));
    refused(
        &write("foreign.tar.gz", &foreign),
        Some(&key),
        "does not verify",
    );
    // Signed for another scope.
    let mut scoped = base.clone();
    scoped.push(signer.sign(&base, Some("write")));
    refused(&write("scoped.tar.gz", &scoped), Some(&key), "scope");
    // A module outside the manifest's roots.
    let mut outside = base.clone();
    outside.push(("other/x.rego".into(), b"package other.x\n".to_vec()));
    refused(
        &write("outside.tar.gz", &outside),
        None,
        "outside the manifest's roots",
    );
    // A package that hides from a line-by-line reader (a tab, a decoy in a raw string).
    let mut hidden = base.clone();
    hidden.push((
        "teesql/hidden.rego".into(),
        b"package\tevil\nx := `\npackage teesql.sidecar\n`\n".to_vec(),
    ));
    refused(
        &write("hidden.tar.gz", &hidden),
        None,
        "package evil is outside",
    );
    // A path that climbs out.
    let mut climbing = base.clone();
    climbing.push(("teesql/../../x.rego".into(), b"package teesql.x\n".to_vec()));
    refused(
        &write("climb.tar.gz", &climbing),
        None,
        "not a plain relative path",
    );
    // Not a bundle at all.
    let junk = dir.path().join("junk.tar.gz");
    std::fs::write(&junk, b"not gzip").unwrap();
    refused(&junk, None, "policy bundle");
    // And the good one loads.
    build(settings(&write("good.tar.gz", &signed), Some(&key))).unwrap();
}

/// A bundle server as OPA expects one (docs "Caching"; v1/download/download.go): an
/// ETag on every 200, 304 when If-None-Match names the bundle it has.
#[tokio::test]
async fn a_bundle_url_is_polled_with_if_none_match_and_keeps_the_last_good_bundle() {
    #[derive(Default)]
    struct Server {
        body: std::sync::Mutex<(String, Vec<u8>)>,
        requests: AtomicUsize,
        conditional: AtomicUsize,
    }
    // Plain http is accepted only for signed bundles: sign them.
    let signer = Signer::new();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, signer.public_pem()).unwrap();
    let signed = |revision: &str| {
        let mut files = profile_files(revision);
        files.push(signer.sign(&files, None));
        tar_gz(&files)
    };
    let server = Arc::new(Server::default());
    *server.body.lock().unwrap() = ("\"r1\"".into(), signed("r1"));
    let app = {
        let server = server.clone();
        axum::Router::new().route(
            "/bundles/teesql.tar.gz",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let server = server.clone();
                async move {
                    server.requests.fetch_add(1, Ordering::SeqCst);
                    let (etag, body) = server.body.lock().unwrap().clone();
                    let asked = headers
                        .get("if-none-match")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    if asked.is_some() {
                        server.conditional.fetch_add(1, Ordering::SeqCst);
                    }
                    if asked.as_deref() == Some(etag.as_str()) {
                        return (
                            axum::http::StatusCode::NOT_MODIFIED,
                            [("etag", etag)],
                            Vec::new(),
                        );
                    }
                    (axum::http::StatusCode::OK, [("etag", etag)], body)
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let url = format!("http://{addr}/bundles/teesql.tar.gz");
    let config = ServeConfig::resolve(ServeSettings {
        policy_bundle_url: Some(url),
        bundle_verification_key: Some(key.clone()),
        policy_bundle_poll_secs: Some(1),
        decision_log: Some("off".into()),
        sign_decisions: Some(false),
        ..ServeSettings::default()
    })
    .unwrap();
    let service = tokio::task::spawn_blocking(move || config.build().unwrap())
        .await
        .unwrap();
    assert_eq!(revision_decided(&service).await, "r1");
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    // Unchanged: the poll asks conditionally and gets 304.
    let (_, changed) = service.reload().await.unwrap();
    assert!(!changed);
    assert_eq!(server.conditional.load(Ordering::SeqCst), 1);

    // A new revision is taken; a broken one is refused and r2 keeps serving.
    *server.body.lock().unwrap() = ("\"r2\"".into(), signed("r2"));
    assert!(service.reload().await.unwrap().1);
    assert_eq!(revision_decided(&service).await, "r2");
    *server.body.lock().unwrap() = ("\"r3\"".into(), b"garbage".to_vec());
    assert!(service.reload().await.is_err());
    assert_eq!(revision_decided(&service).await, "r2");
    assert_eq!(server.requests.load(Ordering::SeqCst), 4);

    // The poller (every policy_bundle_poll_secs, here 1) takes r4 by itself.
    // A bundle that compiles but that the reload refuses (it no longer decides
    // `sidecar`) is refused on every poll, not taken for "unchanged" by its ETag.
    let mut dropping = profile_files("r3b");
    dropping.retain(|(n, _)| n != "teesql/sidecar.rego");
    dropping.push(signer.sign(&dropping, None));
    *server.body.lock().unwrap() = ("\"r3b\"".into(), tar_gz(&dropping));
    for _ in 0..2 {
        let e = service.reload().await.unwrap_err().to_string();
        assert!(e.contains("no longer decides sidecar"), "{e}");
    }
    assert_eq!(revision_decided(&service).await, "r2");

    *server.body.lock().unwrap() = ("\"r4\"".into(), signed("r4"));
    let poller = teesql_verifier::service::reload::spawn(service.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while revision_decided(&service).await != "r4" {
        assert!(
            std::time::Instant::now() < deadline,
            "the poller never took r4"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    poller.abort();
}

#[test]
fn bundle_settings_are_checked_together() {
    let e = ServeConfig::resolve(ServeSettings {
        policy_bundle: Some("/nonexistent/b.tar.gz".into()),
        policy_bundle_url: Some("ftp://x".into()),
        ..ServeSettings::default()
    })
    .unwrap_err()
    .join("\n");
    assert!(
        e.contains("policy_bundle and policy_bundle_url: give one"),
        "{e}"
    );
    // Plain http needs signed bundles; the URL's credentials are not shown.
    let e = ServeConfig::resolve(ServeSettings {
        policy_bundle_url: Some("http://user:hunter2@bundles.example/b.tar.gz?sig=abc".into()),
        ..ServeSettings::default()
    })
    .unwrap_err()
    .join("\n");
    assert!(
        e.contains("plain http without bundle_verification_key"),
        "{e}"
    );
    assert!(e.contains("http://bundles.example/b.tar.gz"), "{e}");
    assert!(!e.contains("hunter2") && !e.contains("sig=abc"), "{e}");
    let e = ServeConfig::resolve(ServeSettings {
        policy_bundle: Some("/nonexistent/b.tar.gz".into()),
        policy_dirs: Some(vec![repo().join("policies/teesql")]),
        bundle_verification_key: Some("/nonexistent/key.pem".into()),
        ..ServeSettings::default()
    })
    .unwrap_err()
    .join("\n");
    for want in [
        "policy_bundle /nonexistent/b.tar.gz: not a file",
        "give one source of policies",
        "bundle_verification_key /nonexistent/key.pem",
    ] {
        assert!(e.contains(want), "{want}: {e}");
    }
}

/// The README's bundle example, run as written (in a scratch directory beside a link to
/// `policies/`), makes a bundle the verifier serves.
#[tokio::test]
async fn the_readme_bundle_example_makes_a_bundle_that_serves() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let at = readme
        .find("<!-- bundle-example")
        .expect("README: the bundle example");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").unwrap() + "```sh\n".len();
    let script = &rest[start..start + rest[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("policies"), dir.path().join("policies")).unwrap();
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let service = build(settings(&dir.path().join("teesql.tar.gz"), None)).unwrap();
    assert_eq!(revision_decided(&service).await, "2026-12-06.1");
}

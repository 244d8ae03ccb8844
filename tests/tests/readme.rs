//! The README's connection snippets, run as written against `teesql-dev`: what a newcomer
//! pastes must connect. Each block follows a `<!-- readme-test: NAME -->` marker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};

fn snippets() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(teesql_tests::cluster::repo_root().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut rest = readme.as_str();
    while let Some(i) = rest.find("<!-- readme-test: ") {
        rest = &rest[i + "<!-- readme-test: ".len()..];
        let name = rest[..rest.find(" -->").unwrap()].to_string();
        let start = rest.find("```sh\n").unwrap() + "```sh\n".len();
        let end = start + rest[start..].find("```").unwrap();
        out.push((name, rest[start..end].to_string()));
        rest = &rest[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_snippets_connect_as_written() {
    let blocks = snippets();
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "mode-d",
        "mode-a",
        "mode-a-own",
        "mode-b",
        "health",
        "dstack-agent",
        "backend",
    ] {
        assert!(
            names.contains(&want),
            "README lost its {want} snippet: {names:?}"
        );
    }
    let sidecar_bin = teesql_tests::clients::workspace_bin("teesql-sidecar").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("teesql.env");
    let mut dev = teesql_tests::clients::start_teesql_dev(
        Path::new(env!("CARGO_BIN_EXE_teesql-dev")),
        &env_file,
        Stdio::null(),
    )
    .await
    .unwrap();
    // Every variable the env file holds is used by a snippet this test runs, so what a
    // newcomer sources is documented by something that works.
    let env_text = std::fs::read_to_string(&env_file).unwrap();
    let unused: Vec<&str> = env_text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .filter(|k| {
            !blocks
                .iter()
                .any(|(_, s)| s.contains(&format!("${k}")) || s.contains(&format!("${{{k}")))
        })
        .collect();
    assert!(
        unused.is_empty(),
        "teesql-dev's --env-file writes {unused:?}, which no tested README snippet uses"
    );
    for (name, script) in blocks {
        // The only edits: the env file's location, and the binary cargo already built
        // instead of a nested cargo build.
        let script = script
            .replace("/tmp/teesql.env", &env_file.display().to_string())
            .replace("cargo build -q -p teesql-sidecar", "true")
            .replace(
                "target/debug/teesql-sidecar",
                &sidecar_bin.display().to_string(),
            );
        let out = tokio::task::spawn_blocking(move || {
            Command::new("bash")
                .args(["-e", "-c", &script])
                .env("PGCONNECT_TIMEOUT", "20")
                .env_remove("PGPASSWORD")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "README snippet {name} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(dev.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = dev.wait();
}

/// `(flag, variable)` of each option in a binary's `--help` (options start a line of
/// their own; `[env: NAME]` closes the help of those read from the environment).
fn options_of(help: &str) -> Vec<(String, Option<String>)> {
    let mut options: Vec<String> = Vec::new();
    for line in help.lines() {
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
    options
        .iter()
        .map(|o| {
            let flag = o
                .split([' ', '<', '['])
                .next()
                .unwrap_or_default()
                .to_string();
            let env = o
                .split("[env: ")
                .nth(1)
                .and_then(|r| r.split(']').next())
                .map(str::to_string);
            (flag, env)
        })
        .collect()
}

/// The verifier's settings table in the README has a row for every `serve` flag, naming
/// the variable `--help` names: the README, `--help` and resolution read one list.
#[test]
fn the_readme_lists_every_verifier_setting_with_its_variable() {
    let readme =
        std::fs::read_to_string(teesql_tests::cluster::repo_root().join("README.md")).unwrap();
    let bin = teesql_tests::clients::workspace_bin("teesql-verifier").unwrap();
    let out = Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let mut checked = 0;
    for (flag, env) in options_of(&help) {
        if matches!(flag.as_str(), "help" | "log") {
            continue;
        }
        let row = format!("| `--{flag}` |");
        let line = readme
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("README: no row for --{flag}"));
        if let Some(env) = env {
            assert!(
                line.contains(&format!("`{env}`")),
                "README row of --{flag} names no {env}: {line}"
            );
        }
        checked += 1;
    }
    assert!(checked > 30, "{checked}");
}

/// Every variable the sidecar or `forward` reads is named in the README.
#[test]
fn the_readme_names_every_sidecar_variable() {
    let readme =
        std::fs::read_to_string(teesql_tests::cluster::repo_root().join("README.md")).unwrap();
    let missing: Vec<&str> = teesql_sidecar::config::env::ALL
        .iter()
        .copied()
        .filter(|v| !readme.contains(v))
        .collect();
    assert!(missing.is_empty(), "not in the README: {missing:?}");
}

/// Every Rust source file of the repository, relative to its root, in sorted order.
fn source_files(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                // Build output, fuzzing corpora and VCS metadata are not source.
                if ![
                    "target",
                    ".git",
                    "corpus",
                    "artifacts",
                    "coverage",
                    "node_modules",
                ]
                .contains(&name.as_str())
                    && !name.starts_with('.')
                {
                    walk(root, &path, out);
                }
            } else if name.ends_with(".rs") {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// DESIGN.md gives every source file its room, and names no file that is gone: a newcomer
/// reading it finds everything, and nothing that is not there.
#[test]
fn design_names_every_source_file_and_no_other() {
    let root = teesql_tests::cluster::repo_root();
    let design = std::fs::read_to_string(root.join("DESIGN.md")).unwrap();
    let files = source_files(&root);
    assert!(files.len() > 150, "{} source files found", files.len());
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !design.split_whitespace().any(|w| w == f.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in DESIGN.md: {missing:?}");
    let named: Vec<&str> = design
        .split_whitespace()
        .filter(|w| {
            w.ends_with(".rs")
                && [
                    "proto/",
                    "appraisal/",
                    "verifier/",
                    "sidecar/",
                    "tests/",
                    "fuzz/",
                ]
                .iter()
                .any(|crate_dir| w.starts_with(crate_dir))
        })
        .collect();
    let gone: Vec<&&str> = named
        .iter()
        .filter(|w| !files.iter().any(|f| f == **w))
        .collect();
    assert!(
        gone.is_empty(),
        "in DESIGN.md but not in the tree: {gone:?}"
    );
}

//! The README's table of reason codes is the operator's reference: every code the
//! verifier's Rust code gives and every code a policy in `policies/` can give is in it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use teesql_verifier::policy::reason_codes;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The codes in the first column of the README's reason-code table.
fn readme_codes() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let table = readme
        .split_once("The verifier's reason codes")
        .expect("the README has a table of reason codes")
        .1;
    let mut codes = BTreeSet::new();
    for line in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let first = line.trim_start_matches('|').split('|').next().unwrap_or("");
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                codes.insert(part.to_string());
            }
        }
    }
    assert!(codes.len() > 20, "table not found or too small: {codes:?}");
    codes
}

/// Literal codes in the production policies (`"code": "x"`, and the values of
/// `failure_code`), and the suffixes of codes made with `sprintf("%s_suffix", …)`.
fn policy_codes() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut literal = BTreeSet::new();
    let mut suffixes = BTreeSet::new();
    let dir = root().join("policies");
    let mut files = Vec::new();
    for profile in std::fs::read_dir(&dir).unwrap() {
        for f in std::fs::read_dir(profile.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with(".rego") && !name.ends_with("_test.rego") {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for piece in text.split("\"code\": ").skip(1) {
            if let Some(rest) = piece.strip_prefix('"') {
                literal.insert(rest.split('"').next().unwrap().to_string());
            } else if let Some(rest) = piece.strip_prefix("sprintf(\"%s") {
                suffixes.insert(rest.split('"').next().unwrap().to_string());
            }
        }
        // failure_code := { "backend_code": "reason_code", … } and its default.
        if let Some(map) = text.split("failure_code := {").nth(1) {
            for line in map.split('}').next().unwrap().lines() {
                if let Some((_, v)) = line.split_once(':') {
                    literal.insert(v.trim().trim_end_matches(',').trim_matches('"').to_string());
                }
            }
        }
        for piece in text
            .split("object.get(failure_code, input.tdx.error_code, \"")
            .skip(1)
        {
            literal.insert(piece.split('"').next().unwrap().to_string());
        }
    }
    literal.remove("");
    (literal, suffixes)
}

#[test]
fn every_code_in_rust_and_in_the_policies_is_in_the_readme_table() {
    let table = readme_codes();
    let mut missing: Vec<String> = reason_codes::ALL
        .iter()
        .filter(|c| !table.contains(**c))
        .map(|c| format!("{c} (Rust)"))
        .collect();
    let (literal, suffixes) = policy_codes();
    assert!(
        literal.contains("no_quote") && literal.contains("quote_unverified"),
        "the policy scan finds codes: {literal:?}"
    );
    missing.extend(
        literal
            .iter()
            .filter(|c| !table.contains(*c))
            .map(|c| format!("{c} (policies)")),
    );
    assert!(suffixes.contains("_not_pinned"), "{suffixes:?}");
    for suffix in &suffixes {
        if !table.iter().any(|c| c.ends_with(suffix.as_str())) {
            missing.push(format!("*{suffix} (policies, generated)"));
        }
    }
    assert!(
        missing.is_empty(),
        "reason codes missing from the README's table: {missing:?}"
    );
}

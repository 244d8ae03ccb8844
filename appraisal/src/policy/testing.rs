//! `teesql-verifier policy test`: run the `test_*` rules of `*_test.rego`, like `opa test`.

use std::path::{Path, PathBuf};

use super::PolicyError;
use super::load::load_with_tests;

/// The outcome of one test rule.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// `<profile>/<file>`.
    pub file: String,
    /// `data.<package>.<rule>`.
    pub name: String,
    /// `None` = passed; otherwise why it failed.
    pub failure: Option<String>,
}

/// Every profile under `dir`: `dir` itself if it holds policy files, otherwise each of
/// its subdirectories that does.
pub fn profiles_under(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let err = |detail: String| PolicyError::Load {
        path: dir.display().to_string(),
        detail,
    };
    if is_profile(dir) {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(e.to_string()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir() && is_profile(p))
        .collect();
    subdirs.sort();
    if subdirs.is_empty() {
        return Err(err(
            "no policy profile here (no *.rego, data.json or profile.toml in it or its subdirectories)"
                .into(),
        ));
    }
    Ok(subdirs)
}

fn is_profile(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.ends_with(".rego") || name == "data.json" || name == "profile.toml"
            })
        })
        .unwrap_or(false)
}

/// Run the tests of one profile: its own `*_test.rego` files, against the profile with
/// its bases and data.
pub fn run_profile(profile: &Path) -> Result<Vec<TestResult>, PolicyError> {
    let loaded = load_with_tests(&[profile.to_path_buf()])?;
    let own_dir = profile.canonicalize().map_err(|e| PolicyError::Load {
        path: profile.display().to_string(),
        detail: e.to_string(),
    })?;
    let mut engine = regorus::Engine::new();
    for f in loaded.files.iter().filter(|f| f.is_rego()) {
        engine
            .add_policy(f.display_path.clone(), f.contents.clone())
            .map_err(|e| PolicyError::Compile {
                path: f.display_path.clone(),
                detail: format!("{e:#}"),
            })?;
    }
    let mut data = loaded.data;
    if let (Some(data), serde_json::Value::Object(docs)) =
        (data.as_object_mut(), testdata(&own_dir)?)
    {
        data.extend(docs);
    }
    engine
        .add_data(regorus::Value::from(data))
        .map_err(|e| PolicyError::Data {
            path: "data.json".into(),
            detail: format!("{e:#}"),
        })?;
    engine.set_input(regorus::Value::new_object());

    let mut results = Vec::new();
    for f in loaded
        .files
        .iter()
        .filter(|f| f.is_test() && f.path.parent() == Some(own_dir.as_path()))
    {
        let Some(package) = package_of(&f.contents) else {
            results.push(TestResult {
                file: f.display_path.clone(),
                name: "(package)".into(),
                failure: Some("no package declaration".into()),
            });
            continue;
        };
        for rule in test_rules(&f.contents) {
            let name = format!("data.{package}.{rule}");
            let failure = match engine.clone().eval_rule(name.clone()) {
                Ok(regorus::Value::Bool(true)) => None,
                Ok(regorus::Value::Undefined) => {
                    Some("undefined (a condition did not hold)".into())
                }
                Ok(other) => Some(format!(
                    "evaluated to {}",
                    serde_json::to_string(&other).unwrap_or_default()
                )),
                Err(e) => Some(format!("error: {e:#}")),
            };
            results.push(TestResult {
                file: f.display_path.clone(),
                name,
                failure,
            });
        }
    }
    Ok(results)
}

/// Largest test document read from a profile's `testdata/`.
const MAX_TESTDATA_FILE: u64 = 4 * 1024 * 1024;

/// A profile's `testdata/*.json` for its tests, as `data.testdata.<name>` (the file stem,
/// each character other than a letter or digit made `_`): claims documents of real evidence, so tests can judge what the
/// verifier really produces, not only hand-written inputs.
fn testdata(profile: &Path) -> Result<serde_json::Value, PolicyError> {
    let dir = profile.join("testdata");
    let mut docs = serde_json::Map::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(serde_json::json!({ "testdata": docs }));
    };
    let err = |path: &Path, detail: String| PolicyError::Data {
        path: path.display().to_string(),
        detail,
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let len = std::fs::metadata(&path)
            .map_err(|e| err(&path, e.to_string()))?
            .len();
        if len > MAX_TESTDATA_FILE {
            return Err(err(
                &path,
                format!("{len} bytes, more than {MAX_TESTDATA_FILE}"),
            ));
        }
        let text = std::fs::read(&path).map_err(|e| err(&path, e.to_string()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| err(&path, e.to_string()))?;
        let name = path
            .file_stem()
            .map(|s| {
                s.to_string_lossy()
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect::<String>()
            })
            .unwrap_or_default();
        docs.insert(name, value);
    }
    Ok(serde_json::json!({ "testdata": docs }))
}

/// The package a Rego file declares.
fn package_of(source: &str) -> Option<String> {
    source.lines().find_map(|l| {
        l.trim()
            .strip_prefix("package ")
            .map(|p| p.trim().to_string())
    })
}

/// Names of `test_*` rules: identifiers starting a line (rule heads are not indented).
fn test_rules(source: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in source.lines() {
        if !line.starts_with("test_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_rules_and_package() {
        let src = "package teesql.quote_test\n\nimport rego.v1\n\ntest_a if {\n  true\n}\n\ntest_b if true\ntest_a if false\n  test_indented if true\n";
        assert_eq!(package_of(src).as_deref(), Some("teesql.quote_test"));
        assert_eq!(test_rules(src), vec!["test_a", "test_b"]);
    }
}

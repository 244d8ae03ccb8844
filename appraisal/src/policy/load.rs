//! Reading policy profiles from disk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::PolicyError;

/// Policy files are small; anything bigger is a mistake.
const MAX_FILE: u64 = 1024 * 1024;
const MAX_FILES: usize = 512;
const MAX_EXTENDS_DEPTH: usize = 8;

/// One file of a policy set.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// `<profile>/<file>`, e.g. `teesql/quote.rego`.
    pub display_path: String,
    /// Where it was read from: inside the profile's canonicalized (absolute) directory.
    pub path: PathBuf,
    /// The file's text, as read (at most 1 MiB); hashed into the set's `policy_hash`.
    pub contents: String,
}

impl PolicyFile {
    /// Whether this is a Rego source (`*.rego`, tests included), not `data.json` or
    /// `profile.toml`.
    pub fn is_rego(&self) -> bool {
        self.display_path.ends_with(".rego")
    }

    /// Whether this is a `*_test.rego` file (loaded only for `policy test`).
    pub fn is_test(&self) -> bool {
        self.display_path.ends_with("_test.rego")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileToml {
    /// Profiles this one builds on, relative to its directory.
    #[serde(default)]
    extends: Vec<PathBuf>,
}

#[derive(Debug)]
pub(crate) struct Loaded {
    pub files: Vec<PolicyFile>,
    pub data: serde_json::Value,
    pub hash: String,
}

/// Load profiles (with their bases) for serving: test files are left out.
pub(crate) fn load_profiles(dirs: &[PathBuf]) -> Result<Loaded, PolicyError> {
    load(dirs, false)
}

/// Load profiles including their `*_test.rego` files.
pub(crate) fn load_with_tests(dirs: &[PathBuf]) -> Result<Loaded, PolicyError> {
    load(dirs, true)
}

fn load(dirs: &[PathBuf], tests: bool) -> Result<Loaded, PolicyError> {
    let mut state = State {
        files: Vec::new(),
        data: serde_json::Value::Object(Default::default()),
        seen: HashSet::new(),
        tests,
    };
    if dirs.is_empty() {
        return Err(PolicyError::Load {
            path: "(none)".into(),
            detail: "no policy directory given".into(),
        });
    }
    for dir in dirs {
        state.profile(dir, 0)?;
    }
    let mut h = Sha256::new();
    for f in &state.files {
        h.update((f.display_path.len() as u64).to_le_bytes());
        h.update(f.display_path.as_bytes());
        h.update((f.contents.len() as u64).to_le_bytes());
        h.update(f.contents.as_bytes());
    }
    Ok(Loaded {
        hash: format!("sha256:{}", hex::encode(h.finalize())),
        files: state.files,
        data: state.data,
    })
}

struct State {
    files: Vec<PolicyFile>,
    data: serde_json::Value,
    seen: HashSet<PathBuf>,
    tests: bool,
}

impl State {
    fn profile(&mut self, dir: &Path, depth: usize) -> Result<(), PolicyError> {
        let err = |detail: String| PolicyError::Load {
            path: dir.display().to_string(),
            detail,
        };
        let canonical = dir.canonicalize().map_err(|e| err(e.to_string()))?;
        if !canonical.is_dir() {
            return Err(err("not a directory".into()));
        }
        if !self.seen.insert(canonical.clone()) {
            return Ok(()); // already loaded as a base of another profile
        }
        if depth > MAX_EXTENDS_DEPTH {
            return Err(err(format!(
                "extends is nested deeper than {MAX_EXTENDS_DEPTH}"
            )));
        }
        let name = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "policies".into());

        let profile_toml = canonical.join("profile.toml");
        if profile_toml.is_file() {
            let text = read_small(&profile_toml)?;
            let profile: ProfileToml = toml::from_str(&text).map_err(|e| PolicyError::Load {
                path: profile_toml.display().to_string(),
                detail: e.to_string(),
            })?;
            for base in profile.extends {
                self.profile(&canonical.join(base), depth + 1)?;
            }
            self.push(&name, profile_toml, text)?;
        }

        let mut entries: Vec<PathBuf> = std::fs::read_dir(&canonical)
            .map_err(|e| err(e.to_string()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for path in entries {
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if file_name.ends_with(".rego") {
                if file_name.ends_with("_test.rego") && !self.tests {
                    continue;
                }
                let text = read_small(&path)?;
                self.push(&name, path, text)?;
            } else if file_name == "data.json" {
                let text = read_small(&path)?;
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| PolicyError::Data {
                        path: path.display().to_string(),
                        detail: e.to_string(),
                    })?;
                if !value.is_object() {
                    return Err(PolicyError::Data {
                        path: path.display().to_string(),
                        detail: "must be a JSON object".into(),
                    });
                }
                merge(&mut self.data, value);
                self.push(&name, path, text)?;
            }
        }
        Ok(())
    }

    fn push(&mut self, profile: &str, path: PathBuf, contents: String) -> Result<(), PolicyError> {
        if self.files.len() >= MAX_FILES {
            return Err(PolicyError::Load {
                path: path.display().to_string(),
                detail: format!("more than {MAX_FILES} policy files"),
            });
        }
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.files.push(PolicyFile {
            display_path: format!("{profile}/{file}"),
            path,
            contents,
        });
        Ok(())
    }
}

fn read_small(path: &Path) -> Result<String, PolicyError> {
    let err = |detail: String| PolicyError::Load {
        path: path.display().to_string(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_FILE {
        return Err(err(format!("{} bytes, more than {MAX_FILE}", meta.len())));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

/// Deep-merge `over` into `base`: objects merge key by key, anything else replaces.
pub(crate) fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_deep_and_later_wins() {
        let mut a = json!({"teesql": {"a": [1], "b": {"x": 1, "y": 2}}});
        merge(&mut a, json!({"teesql": {"a": [2], "b": {"y": 3}}}));
        assert_eq!(a, json!({"teesql": {"a": [2], "b": {"x": 1, "y": 3}}}));
    }
}

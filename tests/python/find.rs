//! The Python interpreter for the tests' Python clients, shared by every test crate
//! (`#[path]`-included, so no crate depends on the harness for it).
//!
//! `TEESQL_PYTHON` when set (`.ci/run` sets it); else `python3` when it has what the
//! caller needs; else a virtualenv the harness makes once under the target directory
//! (`target/python-venv`) from `tests/python/requirements.txt`. Only where that cannot
//! work (no `python3 -m venv`, no network to PyPI) is the check skipped, with a notice
//! written to the terminal so that it shows in `cargo test`'s output even though test
//! output is captured; under CI a missing client is a failure.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn can_import(python: &str, modules: &[&str]) -> Result<(), String> {
    match Command::new(python)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("Cargo.lock").exists())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// `target/` of this build: three levels above the test executable (`target/debug/deps/x`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| workspace().join("target"))
}

/// Say something the person running the tests sees even though the output of passing
/// tests is captured: on the terminal when there is one, else on stderr.
pub fn notice(text: &str) {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open("/dev/tty") {
        Ok(mut tty) => {
            let _ = writeln!(tty, "\nNOTICE: {text}");
        }
        Err(_) => eprintln!("NOTICE: {text}"),
    }
}

/// Make (once; other test processes wait on a file lock, which the kernel releases if
/// its holder dies) the harness's virtualenv.
fn provision(venv: &Path) -> Result<String, String> {
    let python = venv.join("bin/python").display().to_string();
    let lock_path = venv.with_extension("lock");
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    let result = (|| {
        let requirements = workspace().join("tests/python/requirements.txt");
        let stamp = venv.join("requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).map_err(|e| e.to_string())?;
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
            return Ok(python.clone());
        }
        let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(
            Command::new("python3").args(["-m", "venv"]).arg(venv),
            "python3 -m venv",
        )?;
        run(
            Command::new(&python)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(["--timeout", "30", "-r"])
                .arg(&requirements),
            "pip install -r tests/python/requirements.txt",
        )?;
        std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
        Ok(python.clone())
    })();
    drop(lock);
    result
}

/// An interpreter that can import `modules` (see the module docs), or `None` after a
/// visible notice; panics under CI when there is none.
pub fn python_with(modules: &[&str]) -> Option<String> {
    let explicit = std::env::var("TEESQL_PYTHON").ok();
    let first = explicit.clone().unwrap_or_else(|| "python3".into());
    let why = match can_import(&first, modules) {
        Ok(()) => return Some(first),
        Err(why) => why,
    };
    let fallback = if explicit.is_none() {
        let venv = target_dir().join("python-venv");
        match provision(&venv).and_then(|p| can_import(&p, modules).map(|()| p)) {
            Ok(p) => return Some(p),
            Err(e) => format!("{why}; the harness could not make {}: {e}", venv.display()),
        }
    } else {
        why
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the Python clients ({first}, {}): {fallback}",
        modules.join(", ")
    );
    notice(&format!(
        "skipping a Python client check: no interpreter with {} ({fallback}); \
         `.ci/run` installs them",
        modules.join(", ")
    ));
    None
}

//! `teesql-verifier policy …`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use teesql_verifier::policy::testing::{profiles_under, run_profile};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Run every `test_*` rule in the `*_test.rego` files of a profile, like `opa test`.
    ///
    /// DIR is a profile (a directory with *.rego / data.json / profile.toml) or a
    /// directory of profiles (e.g. `policies`), each tested with its own bases and data.
    /// Prints each failure and `N passed, N failed`; exits 1 on any failure.
    Test {
        /// Profile, or directory of profiles.
        dir: PathBuf,
        /// Print passing tests too.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Re-appraise recorded evidence under a new profile and/or Intel's early TCB set
    /// (as if it were the standard one today) and list every identity whose decision
    /// changes. Exit status 3 when an allow would become a deny (gate a rollout on it),
    /// 0 otherwise, 2 on unusable input.
    Replay(Box<super::replay::ReplayArgs>),
}

pub async fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Test { dir, verbose } => test(&dir, verbose),
        PolicyCommand::Replay(args) => super::replay::run(*args).await,
    }
}

fn test(dir: &std::path::Path, verbose: bool) -> ExitCode {
    let profiles = match profiles_under(dir) {
        Ok(p) => p,
        Err(e) => return super::usage_error(e),
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    for profile in profiles {
        let results = match run_profile(&profile) {
            Ok(r) => r,
            Err(e) => return super::usage_error(e),
        };
        for r in results {
            match &r.failure {
                None => {
                    passed += 1;
                    if verbose {
                        super::out(&format!("PASS {}: {}\n", r.file, r.name));
                    }
                }
                Some(why) => {
                    failed += 1;
                    super::out(&format!("FAIL {}: {}: {why}\n", r.file, r.name));
                }
            }
        }
    }
    super::out(&format!("{passed} passed, {failed} failed\n"));
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        if passed == 0 && failed == 0 {
            eprintln!(
                "teesql-verifier: no test_* rules found under {}",
                dir.display()
            );
        }
        ExitCode::from(1)
    }
}

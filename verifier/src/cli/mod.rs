//! Command-line interface.

mod config_cmd;
mod policy_cmd;
mod replay;
mod serve;
mod tcb_cmd;
mod token_cmd;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// TeeSQL verifier: appraises TDX quotes, dstack RA-TLS certificates and attestations,
/// and decides with Rego policies.
#[derive(Debug, Parser)]
#[command(name = "teesql-verifier", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (e.g. `info`, `teesql_verifier=debug`); overrides RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    /// Log lines as `text` or `json` (one object per line, for log shippers)
    /// [default: text] [env: TEESQL_LOG_FORMAT]
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    log_format: Option<teesql_proto::runtime::LogFormat>,
}

impl Cli {
    /// The log format: --log-format, else TEESQL_LOG_FORMAT, else text.
    pub fn log_format(
        &self,
    ) -> Result<teesql_proto::runtime::LogFormat, teesql_proto::runtime::UnknownLogFormat> {
        teesql_proto::runtime::LogFormat::resolve(self.log_format)
    }

    /// The log filter: --log, else RUST_LOG, else `info` for the long-running commands
    /// and `warn` for the one-shot ones (whose output is their answer).
    pub fn log_level(&self) -> String {
        let default = match self.command {
            Command::Serve(_) => "info",
            _ => "warn",
        };
        self.log
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| default.into())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Appraise one piece of evidence and print the decision as JSON.
    ///
    /// Exit status: 0 allowed, 1 denied, 2 unusable input or configuration.
    Verify(Box<verify::VerifyArgs>),
    /// Serve the gRPC API (Verifier, PolicyAdmin, health, reflection) with an appraisal
    /// cache, hot-reloaded policies, a decision log and Prometheus metrics.
    ///
    /// Settings come from --config FILE (TOML, keys as the long flags with underscores),
    /// then environment variables, then flags. SIGHUP or a change under the policy
    /// directories reloads the policies; SIGTERM/SIGINT drain and stop. `config check`
    /// takes the same arguments and checks them without serving.
    Serve(Box<serve::ServeArgs>),
    /// Check the configuration `serve` would run with, without serving.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Work with policy profiles.
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Check signed decisions (Decision.token) as a relying party.
    #[command(subcommand)]
    Token(token_cmd::TokenCommand),
    /// TCB recoveries: which platforms Intel's next TCB set demotes, when, and the fix.
    #[command(subcommand)]
    Tcb(tcb_cmd::TcbCommand),
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Verify(args) => verify::run(*args).await,
        Command::Serve(args) => serve::run(*args).await,
        Command::Config(cmd) => config_cmd::run(cmd).await,
        Command::Policy(cmd) => policy_cmd::run(cmd).await,
        Command::Token(cmd) => token_cmd::run(cmd).await,
        Command::Tcb(cmd) => tcb_cmd::run(cmd).await,
    }
}

/// No `--policy-dir`, and no production profile in `./policies/teesql`.
#[derive(Debug, thiserror::Error)]
#[error(
    "no policy profile: pass --policy-dir (e.g. policies/teesql, or policies/dev for development)"
)]
pub struct NoPolicyProfile;

/// The policy profiles to load: the given ones, or the production profile in
/// `./policies/teesql` when it exists.
pub fn policy_dirs(given: Vec<PathBuf>) -> Result<Vec<PathBuf>, NoPolicyProfile> {
    if !given.is_empty() {
        return Ok(given);
    }
    let default = PathBuf::from("policies/teesql");
    if default.is_dir() {
        return Ok(vec![default]);
    }
    Err(NoPolicyProfile)
}

/// Write to stdout. A closed pipe (`… | head`) is not an error worth a panic: the reader
/// has what it wanted.
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Print a one-line error and return exit status 2.
pub fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("teesql-verifier: {msg}");
    ExitCode::from(2)
}

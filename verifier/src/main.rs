//! `teesql-verifier`: appraise attestation evidence and decide with Rego policies.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc, not glibc's malloc: glibc gives each worker thread its own arena and never
/// lends one arena's free space to another, so when the task that fills the appraisal
/// cache moves between workers its evicted entries' memory stays behind and RSS reaches
/// twice the cache's budget. mimalloc returns freed pages to the system after a short
/// delay, so RSS follows what the cache holds (verifier/tests/hostile.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let format = match args.log_format() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("teesql-verifier: {e}");
            return ExitCode::from(2);
        }
    };
    teesql_proto::runtime::init_tracing(&args.log_level(), "warn", format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("teesql-verifier: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(cli::run(args))
}

//! `opampd-load`: see `opampd-load --help` and the README's "Load generator" section.
//!
//! Exit codes: 0 the run passed, 1 it ran but failed (see `failures` in the JSON line), 2 it
//! could not run (bad flags, limits, an unreachable `--server-pid`).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use opampd_load::Args;

/// jemalloc: it spends less CPU per simulated collector than the C library's allocator, and the
/// load generator shares the machine with the server it measures (`docs/performance.md`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("opampd-load: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the load and prints the report; `Ok(ok)` once a report exists.
fn run(args: Args) -> anyhow::Result<bool> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.build().context("cannot start the Tokio runtime")?;
    let report = runtime
        .block_on(opampd_load::run(args))
        .context("cannot run the load")?;
    eprint!("{}", report.human());
    println!("{}", report.json());
    Ok(report.ok)
}

//! `opampd-load`: see `opampd-load --help` and the README's "Load generator" section.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use opampd_load::Args;

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = runtime.build().context("cannot start the Tokio runtime")?;
    let report = runtime.block_on(opampd_load::run(args))?;
    eprint!("{}", report.human());
    println!("{}", report.json());
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

//! The `opampctl` binary: the real process around [`opampctl::run`] (terminal, environment,
//! runtime, exit code).

use std::io::IsTerminal as _;
use std::process::ExitCode;

fn main() -> anyhow::Result<ExitCode> {
    // One thread is plenty for a client, and keeps it light next to a busy server.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let env = |name: &str| std::env::var(name).ok();
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    let progress_bars = err.is_terminal();
    let mut io = opampctl::Io {
        out: &mut out,
        err: &mut err,
        progress_bars,
    };
    let code = runtime.block_on(opampctl::run(std::env::args_os(), &env, &mut io));
    Ok(ExitCode::from(code))
}

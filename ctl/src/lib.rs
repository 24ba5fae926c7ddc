//! opampctl: the command-line client of opampd. It speaks only the public REST API and its event
//! stream. [`run`] is the whole program, given its arguments, environment and output, so tests
//! drive it in-process exactly as the binary does.

mod client;
mod collectors;
mod configs;
mod events;
mod offers;
mod output;
mod rollouts;
mod settings;
mod sse;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, Subcommand};

pub use client::{Client, CtlError};
/// The longest wait of `opampctl events` between attempts to reconnect.
pub use events::MAX_BACKOFF as EVENTS_MAX_BACKOFF;
pub use output::Format;
pub use settings::{DEFAULT_SERVER, Settings};

/// Exit codes, for scripts. Also listed in `opampctl --help`.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// The API answered with an error (the line says which status), or something else failed.
    pub const ERROR: u8 = 1;
    /// The command line is wrong (clap's own code for this).
    pub const USAGE: u8 = 2;
    /// The server could not be reached, or did not answer in time.
    pub const UNREACHABLE: u8 = 3;
    /// `rollout watch` (or `--watch`): the rollout ended paused.
    pub const ROLLOUT_PAUSED: u8 = 4;
    /// `rollout watch`: the rollout completed, and some collectors failed.
    pub const ROLLOUT_FAILED: u8 = 5;
    /// `rollout watch`: the rollout was cancelled.
    pub const ROLLOUT_CANCELLED: u8 = 6;
}

const AFTER_HELP: &str = "\
The server and API key come from --server/--api-key, else OPAMPCTL_SERVER/OPAMPCTL_API_KEY, else
the config file (--config, OPAMPCTL_CONFIG, or ~/.config/opampctl/config.toml with keys `server`
and `api_key`), else http://127.0.0.1:8080 without a key.

Exit codes: 0 done; 1 the API answered with an error, or another failure; 2 bad command line;
3 server unreachable; for rollout watch: 4 ended paused, 5 completed with failures, 6 cancelled.";

#[derive(Debug, Parser)]
#[command(
    name = "opampctl",
    version,
    about = "Command-line client for opampd: collectors, configurations, rollouts and events",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// opampd's REST API, e.g. `http://127.0.0.1:8080`.
    #[arg(short = 's', long, global = true)]
    server: Option<String>,
    /// API key, sent as a Bearer token (prefer `OPAMPCTL_API_KEY`: flags show in `ps`).
    #[arg(long, global = true)]
    api_key: Option<String>,
    /// CA certificates (PEM) to trust for an `https://` server, beside the system's.
    #[arg(long, global = true)]
    ca_cert: Option<PathBuf>,
    /// Configuration file with `server` and `api_key`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Longest wait for one answer from the server.
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List resources.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Show one resource in detail.
    Describe {
        #[command(subcommand)]
        what: DescribeWhat,
    },
    /// A collector's transitions, newest first.
    History(collectors::History),
    /// Set (key=value) or remove (key-) a collector's labels.
    Label(collectors::Label),
    /// Forget a disconnected collector: its record and history are deleted.
    Forget(collectors::CollectorId),
    /// Send the restart command to a connected collector that accepts it.
    Restart(collectors::CollectorId),
    /// How many collectors are in each state.
    Summary(collectors::Summary),
    /// Configurations and their versions.
    Config {
        #[command(subcommand)]
        command: configs::ConfigCommand,
    },
    /// Rollouts of configurations (and upgrades, which are rollouts too).
    Rollout {
        #[command(subcommand)]
        command: rollouts::RolloutCommand,
    },
    /// Package upgrades.
    Upgrade {
        #[command(subcommand)]
        command: rollouts::UpgradeCommand,
    },
    /// Connection settings offers: where collectors connect and send their own telemetry.
    Offer {
        #[command(subcommand)]
        command: offers::OfferCommand,
    },
    /// Send a custom message to a collector, or to the collectors a selector picks.
    Message(offers::Message),
    /// The fleet's transitions as they happen.
    Events(events::Events),
    /// Print a shell completion script, e.g. `opampctl completion bash > /etc/bash_completion.d/opampctl`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum GetWhat {
    /// Collectors, filtered and sorted.
    #[command(visible_alias = "collector")]
    Collectors(collectors::GetCollectors),
}

#[derive(Debug, Subcommand)]
enum DescribeWhat {
    /// One collector: its record and recent transitions.
    Collector(collectors::Describe),
}

/// Where a run writes.
pub struct Io<'a> {
    pub out: &'a mut (dyn Write + Send),
    pub err: &'a mut (dyn Write + Send),
    /// Draw live progress bars on stderr (the binary does when stderr is a terminal); without
    /// them, progress is printed as lines.
    pub progress_bars: bool,
}

/// Runs one command line (`args` includes the program name) and returns the exit code. `env`
/// reads an environment variable.
pub async fn run<I, T>(
    args: I,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    io: &mut Io<'_>,
) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            let text = err.render().to_string();
            // --help and --version are answers, not errors.
            let (sink, code) = if err.use_stderr() {
                (&mut *io.err, exit::USAGE)
            } else {
                (&mut *io.out, exit::OK)
            };
            let _ = write!(sink, "{text}");
            return code;
        }
    };
    match execute(cli, env, io).await {
        Ok(code) => code,
        Err(err) => {
            // A reader that stopped reading (`| head`) needs no message.
            let closed_pipe =
                matches!(&err, CtlError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe);
            if !closed_pipe {
                let _ = writeln!(io.err, "opampctl: {err}");
            }
            match err {
                CtlError::Unreachable { .. } => exit::UNREACHABLE,
                CtlError::Usage(_) => exit::USAGE,
                _ => exit::ERROR,
            }
        }
    }
}

async fn execute(
    cli: Cli,
    env: &(dyn Fn(&str) -> Option<String> + Sync),
    io: &mut Io<'_>,
) -> Result<u8, CtlError> {
    if let Command::Completion { shell } = cli.command {
        // Into memory first: clap_complete panics when its writer fails (a closed pipe), and a
        // write error here is an error line like any other.
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "opampctl", &mut script);
        io.out.write_all(&script)?;
        return Ok(exit::OK);
    }
    let settings = settings::resolve(cli.server, cli.api_key, cli.config.as_deref(), env)?;
    let client = Client::new(
        &settings.server,
        settings.api_key,
        cli.ca_cert.as_deref(),
        cli.timeout,
    )?;
    match cli.command {
        Command::Get {
            what: GetWhat::Collectors(args),
        } => collectors::get(&client, args, io).await,
        Command::Describe {
            what: DescribeWhat::Collector(args),
        } => collectors::describe(&client, args, io).await,
        Command::History(args) => collectors::history(&client, args, io).await,
        Command::Label(args) => collectors::label(&client, args, io).await,
        Command::Forget(args) => collectors::forget(&client, args, io).await,
        Command::Restart(args) => collectors::restart(&client, args, io).await,
        Command::Summary(args) => collectors::summary(&client, args, io).await,
        Command::Config { command } => configs::run(&client, command, io).await,
        Command::Rollout { command } => rollouts::run(&client, command, io).await,
        Command::Upgrade { command } => rollouts::upgrade(&client, command, io).await,
        Command::Offer { command } => offers::run(&client, command, io).await,
        Command::Message(args) => offers::message(&client, args, io).await,
        Command::Events(args) => events::run(&client, args, io).await,
        Command::Completion { .. } => Ok(exit::OK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}

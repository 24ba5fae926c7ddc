//! The `opampd` command: runs the server (the default) and its maintenance commands.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use opampd::config::{Config, FlagOverrides, LogFormat};

/// jemalloc with background purging: freed memory goes back to the system within seconds, so the
/// server's resident memory follows its resident collectors down after they leave (glibc's malloc
/// kept the high-water mark). Measured in docs/performance.md.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    version,
    about = "OpAMP server: tracks and manages OpenTelemetry collectors"
)]
struct Cli {
    /// Configuration file (default: config/opampd.toml when it exists).
    #[arg(long, env = "OPAMPD_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// OpAMP listen address (opamp.listen).
    #[arg(long, global = true)]
    opamp_listen: Option<std::net::SocketAddr>,
    /// REST/operations listen address (api.listen).
    #[arg(long, global = true)]
    api_listen: Option<std::net::SocketAddr>,
    /// Log format (log.format).
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. "info" or "opampd=debug" (log.level).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Database URL, sqlite://… or postgres://… (database.url).
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (what `opampd` does with no command).
    Serve,
    /// Ask a running server's /livez (for container health checks); exit 0 while it is alive.
    Healthcheck {
        /// Ask /readyz instead: exit 0 only while it also takes writes and is not shutting down.
        #[arg(long)]
        ready: bool,
    },
    /// Apply the database migrations and exit (the server also applies them at start-up).
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = FlagOverrides {
        opamp_listen: cli.opamp_listen,
        api_listen: cli.api_listen,
        log_format: cli.log_format,
        log_level: cli.log_level,
        database_url: cli.database_url,
    };
    let config = match Config::load(cli.config.as_deref(), flags) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("opampd: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    opampd::telemetry::init(&config.log);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config),
        Command::Healthcheck { ready } => healthcheck(&config, ready),
        Command::Migrate => migrate(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("opampd: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    // The limit is the process's: raised once here, not by every server `app::start` makes.
    opampd::net::open_files::raise(&config);
    opampd::net::listener::log_backlog(config.opamp.accept_queues);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(opampd::app::run(config))
}

fn migrate(config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = opampd::store::open(config).await?;
        store.migrate().await?;
        tracing::info!(backend = store.backend(), "migrations applied");
        Ok(())
    })
}

/// A dependency-free probe: the runtime image has no curl, and this keeps it that way. Liveness by
/// default, because a container's health check is what orchestrators restart on, and a database
/// outage must not restart every node (each holds the changes it could not write yet).
fn healthcheck(config: &Config, ready: bool) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    use std::time::Duration;
    let mut addr = config.api.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let timeout = Duration::from_secs(2);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let (path, failing) = if ready {
        ("/readyz", "not ready")
    } else {
        ("/livez", "not alive")
    };
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.lines().next().unwrap_or_default();
    anyhow::ensure!(status.contains(" 200 "), "{failing}: {status}");
    Ok(())
}

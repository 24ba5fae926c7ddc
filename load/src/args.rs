//! The command line.

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Simulated OpenTelemetry collectors speaking OpAMP (WebSocket or plain HTTP) to any OpAMP
/// server, with latency, throughput, reconnection and server-cost figures.
///
/// Prints a human summary on stderr and one JSON line with every figure on stdout.
#[allow(clippy::struct_excessive_bools)] // command-line switches
#[derive(Debug, Clone, Parser)]
#[command(name = "opampd-load", version)]
pub struct Args {
    /// The server's OpAMP endpoint: `ws://host:port/v1/opamp` for WebSocket collectors,
    /// `http://host:port/v1/opamp` for plain-HTTP ones.
    #[arg(long)]
    pub url: String,

    /// hold: ramp up, then heartbeat; burst: status changes back to back, one in flight per
    /// collector; storm: drop every connection at once and time the reconnection.
    #[arg(long, value_enum, default_value_t = Mode::Hold)]
    pub mode: Mode,

    /// How many collectors.
    #[arg(short = 'n', long, default_value_t = 100)]
    pub collectors: usize,

    /// Ramp-up rate: new collectors per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,

    /// Heartbeat interval (the polling interval of HTTP collectors).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub heartbeat: Duration,

    /// How long the measurement lasts after the ramp (hold, burst); in storm mode, the longest
    /// wait for every collector to be back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub duration: Duration,

    /// Burst mode: the least time between two status changes of one collector, so that N
    /// collectors send at most N / interval changes per second (each starts at a random point of
    /// its first interval, so they do not all send together). Default: back to back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub change_interval: Duration,

    /// Local addresses to connect from, spread round robin: `127.0.0.1-127.0.0.20`, a comma
    /// list, or both. Each has its own ephemeral ports.
    #[arg(long)]
    pub source_addrs: Option<String>,

    /// An extra request header, `Name: value` (repeatable), e.g. for agent authentication.
    #[arg(long = "header")]
    pub headers: Vec<String>,

    /// Refuse every remote configuration (report FAILED) instead of applying it.
    #[arg(long)]
    pub fail_configs: bool,

    /// Report APPLYING before APPLIED or FAILED.
    #[arg(long)]
    pub report_applying: bool,

    /// Storm mode: send a WebSocket Close frame before dropping each connection (default: close
    /// the TCP socket with no Close frame).
    #[arg(long)]
    pub close_frame: bool,

    /// Storm mode: how long to hold after the ramp before the storm.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub storm_after: Duration,

    /// Hold mode: the server is expected to go away (a restart) during the run. Drops and failed
    /// reconnections are not errors, and the run ends as soon as every collector has been cut
    /// off and is back (`--duration` is then the longest it waits).
    #[arg(long)]
    pub wait_for_server_restart: bool,

    /// After a connection is lost, the collector waits a random delay up to this before it
    /// connects again (storm mode reconnects at once).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub reconnect_jitter: Duration,

    /// The longest wait between two failed connection attempts (the backoff doubles from
    /// 250 ms up to this).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub reconnect_max: Duration,

    /// A message not answered within this counts as a timeout, and its connection is dropped.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub reply_timeout: Duration,

    /// The longest the ramp may take (default: the time the rate needs plus 30 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ramp_timeout: Option<Duration>,

    /// The server's process id, to sample its CPU time and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Exit non-zero when more errors than this were counted.
    #[arg(long, default_value_t = 0)]
    pub max_errors: u64,

    /// Names the collectors `load-<tag>-<n>` (default: random), so runs can be told apart.
    #[arg(long)]
    pub run_tag: Option<String>,

    /// Worker threads of this process (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,

    /// No progress lines on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Hold,
    Burst,
    Storm,
}

impl Args {
    /// The ramp's time limit.
    pub fn ramp_limit(&self) -> Duration {
        self.ramp_timeout.unwrap_or_else(|| {
            Duration::from_secs_f64(self.collectors as f64 / self.rate) + Duration::from_secs(30)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_durations() {
        let args = Args::try_parse_from([
            "opampd-load",
            "--url",
            "ws://127.0.0.1:4320/v1/opamp",
            "--heartbeat",
            "500ms",
            "-n",
            "10",
        ])
        .expect("parses");
        assert_eq!(args.mode, Mode::Hold);
        assert_eq!(args.collectors, 10);
        assert_eq!(args.heartbeat, Duration::from_millis(500));
        assert_eq!(args.duration, Duration::from_mins(1));
        assert_eq!(args.ramp_limit(), Duration::from_secs_f64(30.02));
        assert_eq!(args.change_interval, Duration::ZERO);
        let storm = Args::try_parse_from([
            "opampd-load",
            "--url",
            "http://x/",
            "--mode",
            "storm",
            "--header",
            "A: b",
            "--header",
            "C: d",
        ])
        .expect("parses");
        assert_eq!(storm.mode, Mode::Storm);
        assert_eq!(storm.headers.len(), 2);
        let paced = Args::try_parse_from([
            "opampd-load",
            "--url",
            "ws://x/",
            "--mode",
            "burst",
            "--change-interval",
            "500ms",
        ])
        .expect("parses");
        assert_eq!(paced.change_interval, Duration::from_millis(500));
        assert!(Args::try_parse_from(["opampd-load", "--mode", "hold"]).is_err());
    }
}

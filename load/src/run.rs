//! The coordinator: checks the limits, starts the collectors at the ramp's rate, drives the
//! phases of the chosen mode, samples the server, and puts the report together.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::addrs::{AddrsError, parse_source_addrs};
use crate::agent::Behaviour;
use crate::args::{Args, Mode};
use crate::collector::{self, Control, Phase, Settings, Shared};
use crate::net::{Target, TargetError};
use crate::procfs::{self, MachineTicks, ProcError, Sample};
use crate::report::{Configs, Errors, Machine, Measure, Ramp, Reconnection, Report, Server, Storm};
use crate::stats::{Snapshot, round3};

/// File descriptors kept free for everything but the collectors' sockets.
const SPARE_FDS: u64 = 64;
/// Ephemeral ports one source address offers (Linux's default 32768-60999).
const PORTS_PER_ADDRESS: usize = 28_000;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("--source-addrs")]
    Addrs(#[from] AddrsError),
    #[error("--url")]
    Target(#[from] TargetError),
    #[error(
        "{collectors} collectors need {needed} file descriptors, but this process may open at most \
         {limit} (the hard RLIMIT_NOFILE): run several opampd-load processes, each with fewer \
         collectors and its own --source-addrs"
    )]
    TooManyCollectors {
        collectors: usize,
        needed: u64,
        limit: u64,
    },
    #[error("cannot raise the open-files limit: {0}")]
    Rlimit(std::io::Error),
    #[error("--server-pid")]
    Proc(#[from] ProcError),
    #[error("{0}")]
    Invalid(&'static str),
}

/// Raises the soft open-files limit to the hard one, and checks `collectors` fit under it.
pub fn raise_fd_limit(collectors: usize) -> Result<u64, LoadError> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).map_err(LoadError::Rlimit)?;
    let needed = collectors as u64 + SPARE_FDS;
    if needed > limit {
        return Err(LoadError::TooManyCollectors {
            collectors,
            needed,
            limit,
        });
    }
    Ok(limit)
}

fn validate(args: &Args) -> Result<(), LoadError> {
    if args.collectors == 0 {
        return Err(LoadError::Invalid("--collectors must be at least 1"));
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(LoadError::Invalid("--rate must be a positive number"));
    }
    if args.heartbeat.is_zero() {
        return Err(LoadError::Invalid("--heartbeat must be more than zero"));
    }
    if args.reply_timeout.is_zero() {
        return Err(LoadError::Invalid("--reply-timeout must be more than zero"));
    }
    if args.wait_for_server_restart && args.mode != Mode::Hold {
        return Err(LoadError::Invalid(
            "--wait-for-server-restart goes with --mode hold",
        ));
    }
    Ok(())
}

/// Prints progress on stderr unless quiet.
struct Progress {
    quiet: bool,
}

impl Progress {
    fn say(&self, line: &str) {
        if !self.quiet {
            eprintln!("opampd-load: {line}");
        }
    }
}

/// Where a run is, for those watching it (tests, embedding programs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Starting,
    /// The ramp is over: the measurement (and the storm, if any) is under way.
    Measuring,
    Stopping,
}

/// Optional ways into a run.
#[derive(Debug, Default)]
pub struct Hooks {
    /// Told each stage as it begins.
    pub stage: Option<watch::Sender<Stage>>,
    /// Ends the measurement early when it turns true.
    pub stop: Option<watch::Receiver<bool>>,
}

/// Runs the load as `args` say and returns the report. Must run inside a Tokio runtime.
pub async fn run(args: Args) -> Result<Report, LoadError> {
    run_with(args, Hooks::default()).await
}

/// [`run`], watched or ended early through `hooks`.
#[allow(clippy::too_many_lines)]
pub async fn run_with(args: Args, hooks: Hooks) -> Result<Report, LoadError> {
    let stage = |s: Stage| {
        if let Some(sender) = &hooks.stage {
            sender.send_replace(s);
        }
    };
    let stop_requested = || hooks.stop.as_ref().is_some_and(|r| *r.borrow());
    stage(Stage::Starting);
    validate(&args)?;
    let source_addrs = match &args.source_addrs {
        Some(text) => parse_source_addrs(text)?,
        None => Vec::new(),
    };
    raise_fd_limit(args.collectors)?;
    let progress = Progress { quiet: args.quiet };
    if args.collectors > PORTS_PER_ADDRESS * source_addrs.len().max(1) {
        progress.say(&format!(
            "warning: {} collectors on {} source address(es) may run out of ephemeral ports; \
             give more with --source-addrs",
            args.collectors,
            source_addrs.len().max(1)
        ));
    }
    let target = Target::resolve(
        &args.url,
        &args.headers,
        source_addrs.first().map(std::net::IpAddr::is_ipv6),
    )
    .await?;
    let sample = |pid: Option<u32>| pid.map(procfs::sample).transpose();
    let before = sample(args.server_pid)?;

    let settings = Settings {
        target: target.clone(),
        source_addrs: source_addrs.clone(),
        mode: args.mode,
        heartbeat: args.heartbeat,
        change_interval: args.change_interval,
        behaviour: Behaviour {
            fail_configs: args.fail_configs,
            report_applying: args.report_applying,
        },
        run_tag: args
            .run_tag
            .clone()
            .unwrap_or_else(|| format!("{:06x}", fastrand::u32(..0x0100_0000))),
        close_frame: args.close_frame,
        expect_restart: args.wait_for_server_restart,
        reconnect_jitter: args.reconnect_jitter,
        reconnect_max: args.reconnect_max,
        reply_timeout: args.reply_timeout,
    };
    let shared = Arc::new(Shared::new(settings));
    let (control, control_rx) = watch::channel(Control {
        phase: Phase::Ramp,
        storm: None,
    });

    // Ramp: collector i starts at i / rate.
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..args.collectors {
        let start_at = started + Duration::from_secs_f64(index as f64 / args.rate);
        tasks.spawn(collector::run(
            index,
            start_at,
            Arc::clone(&shared),
            control_rx.clone(),
        ));
    }
    drop(control_rx);
    let n = args.collectors as u64;
    let ramp_deadline = started + args.ramp_limit();
    let mut next_report = started + Duration::from_secs(1);
    loop {
        let connected = shared.counters.snapshot().connected;
        if connected >= n || Instant::now() >= ramp_deadline {
            break;
        }
        if Instant::now() >= next_report {
            progress.say(&format!("ramp: {connected}/{n} connected"));
            next_report += Duration::from_secs(1);
        }
        tokio::select! {
            () = shared.progress.notified() => {}
            () = tokio::time::sleep_until(next_report.min(ramp_deadline)) => {}
        }
    }
    let ramp_seconds = started.elapsed().as_secs_f64();
    let after_ramp = sample(args.server_pid)?;
    let machine_at_ramp = machine_sample();
    let at_ramp = shared.counters.snapshot();
    progress.say(&format!(
        "ramp done in {ramp_seconds:.1} s: {}/{n} connected; measuring ({:?})",
        at_ramp.connected, args.mode
    ));

    control.send_replace(Control {
        phase: Phase::Measure,
        storm: None,
    });
    stage(Stage::Measuring);
    let measure_start = Instant::now();
    let measure_deadline = measure_start + args.duration;
    let mut storm_figures = None;
    match args.mode {
        Mode::Hold | Mode::Burst => {
            let mut last_report = measure_start;
            let mut last = at_ramp;
            loop {
                let now = Instant::now();
                if now >= measure_deadline || stop_requested() {
                    break;
                }
                if args.wait_for_server_restart {
                    // Done when the server has cut every collector off once and all are back
                    // (a collector that comes back quickly must not end the wait for the others).
                    let outage = shared.outage.state();
                    let dropped = shared.counters.snapshot().collectors_dropped;
                    if dropped >= at_ramp.connected && outage.down == 0 {
                        break;
                    }
                }
                if now.duration_since(last_report) >= Duration::from_secs(5) {
                    let current = shared.counters.snapshot();
                    let seconds = now.duration_since(last_report).as_secs_f64();
                    let outage = shared.outage.state();
                    progress.say(&format!(
                        "{:.0} s: {:.0} msg/s, {} errors, {} down",
                        now.duration_since(measure_start).as_secs_f64(),
                        (current.sent - last.sent) as f64 / seconds,
                        current.errors_total(),
                        outage.down
                    ));
                    last = current;
                    last_report = now;
                }
                tokio::time::sleep_until(measure_deadline.min(now + Duration::from_millis(50)))
                    .await;
            }
        }
        Mode::Storm => {
            tokio::time::sleep(args.storm_after).await;
            let dropped = shared.counters.snapshot().connected;
            let storm_start = Instant::now();
            progress.say(&format!("storm: dropping {dropped} connections"));
            control.send_replace(Control {
                phase: Phase::Measure,
                storm: Some((1, storm_start)),
            });
            let deadline = storm_start + args.duration;
            let mut all_back = None;
            loop {
                let back = shared.counters.snapshot().storm_back;
                if back >= dropped {
                    all_back = Some(storm_start.elapsed());
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::select! {
                    () = shared.progress.notified() => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
            storm_figures = Some((dropped, all_back));
        }
    }
    let measure_seconds = measure_start.elapsed().as_secs_f64();
    let at_end = shared.counters.snapshot();
    let end = sample(args.server_pid)?;
    let machine_at_end = machine_sample();

    progress.say("stopping");
    stage(Stage::Stopping);
    control.send_replace(Control {
        phase: Phase::Stop,
        storm: None,
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let last = shared.counters.snapshot();

    Ok(assemble(&Assembly {
        args: &args,
        target: &target,
        source_addrs: source_addrs.len(),
        shared: &shared,
        ramp_seconds,
        measure_seconds,
        at_ramp,
        at_end,
        last,
        storm: storm_figures,
        samples: [before, after_ramp, end],
        machine: [machine_at_ramp, machine_at_end],
    }))
}

struct Assembly<'a> {
    args: &'a Args,
    target: &'a Target,
    source_addrs: usize,
    shared: &'a Shared,
    ramp_seconds: f64,
    measure_seconds: f64,
    at_ramp: Snapshot,
    at_end: Snapshot,
    last: Snapshot,
    storm: Option<(u64, Option<Duration>)>,
    samples: [Option<Sample>; 3],
    /// The machine and this process, at the ramp's end and the measurement's.
    machine: [Option<(MachineTicks, Sample)>; 2],
}

/// The machine's CPU time and this process's; `None` where `/proc` cannot say (the figures are
/// only context, unlike the server's).
fn machine_sample() -> Option<(MachineTicks, Sample)> {
    Some((
        procfs::machine().ok()?,
        procfs::sample(std::process::id()).ok()?,
    ))
}

/// How busy the machine and this load generator were while measuring.
fn machine_figures(a: &Assembly<'_>, sent: u64) -> Option<Machine> {
    let [Some(start), Some(end)] = a.machine else {
        return None;
    };
    Machine::between(start, end, a.measure_seconds, sent)
}

#[allow(clippy::too_many_lines)] // one field after another
fn assemble(a: &Assembly<'_>) -> Report {
    let n = a.args.collectors as u64;
    let per_s = |count: u64| {
        if a.measure_seconds > 0.0 {
            round3(count as f64 / a.measure_seconds)
        } else {
            0.0
        }
    };
    let sent = a.at_end.sent - a.at_ramp.sent;
    let received = a.at_end.received - a.at_ramp.received;
    let changes = a.at_end.changes_acked - a.at_ramp.changes_acked;
    let outage = a.shared.outage.state();
    let storm = a.storm.map(|(dropped, all_back)| Storm {
        dropped,
        back: a.at_end.storm_back,
        all_back_s: all_back.map(|d| round3(d.as_secs_f64())),
        latency: a.shared.storm_latency.summary(),
    });
    let server = match (a.args.server_pid, a.samples) {
        (Some(pid), [Some(before), Some(ramp), Some(end)]) => {
            let mib = |kib: u64| round3(kib as f64 / 1024.0);
            let cpu_measure = end.cpu.saturating_sub(ramp.cpu).as_secs_f64();
            Some(Server {
                pid,
                rss_before_mib: mib(before.rss_kib),
                rss_after_ramp_mib: mib(ramp.rss_kib),
                rss_end_mib: mib(end.rss_kib),
                rss_per_collector_kib: round3(
                    (ramp.rss_kib as f64 - before.rss_kib as f64) / n as f64,
                ),
                cpu_ramp_s: round3(ramp.cpu.saturating_sub(before.cpu).as_secs_f64()),
                cpu_measure_s: round3(cpu_measure),
                cpu_measure_percent: if a.measure_seconds > 0.0 {
                    round3(cpu_measure / a.measure_seconds * 100.0)
                } else {
                    0.0
                },
                cpu_per_message_us: if sent > 0 {
                    round3(cpu_measure / sent as f64 * 1e6)
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    let errors = Errors {
        total: a.last.errors_total(),
        by_kind: a.last.errors_by_kind(),
    };
    let mut failures = Vec::new();
    if a.at_ramp.connected < n {
        failures.push(format!(
            "{} of {n} collectors did not connect during the ramp",
            n - a.at_ramp.connected
        ));
    }
    if errors.total > a.args.max_errors {
        failures.push(format!(
            "{} errors (more than --max-errors {})",
            errors.total, a.args.max_errors
        ));
    }
    if let Some(storm) = &storm
        && storm.all_back_s.is_none()
    {
        failures.push(format!(
            "only {} of {} collectors came back after the storm",
            storm.back, storm.dropped
        ));
    }
    if a.args.wait_for_server_restart {
        if outage.first_drop.is_none() {
            failures.push("the server never went away".to_owned());
        } else if outage.recovery().is_none() {
            failures.push(format!(
                "{} collectors were still away at the end",
                outage.down
            ));
        }
    }
    Report {
        tool: "opampd-load",
        version: env!("CARGO_PKG_VERSION"),
        mode: a.args.mode,
        transport: a.target.transport,
        url: a.target.url.clone(),
        collectors: a.args.collectors,
        source_addrs: a.source_addrs,
        rate_per_s: a.args.rate,
        heartbeat_s: a.args.heartbeat.as_secs_f64(),
        change_interval_s: a.args.change_interval.as_secs_f64(),
        duration_s: a.args.duration.as_secs_f64(),
        ramp: Ramp {
            seconds: round3(a.ramp_seconds),
            connected: a.at_ramp.connected,
            not_connected: n.saturating_sub(a.at_ramp.connected),
            connect_latency: a.shared.connect_latency.summary(),
            handshake_latency: a.shared.handshake_latency.summary(),
        },
        measure: Measure {
            seconds: round3(a.measure_seconds),
            messages_sent: sent,
            received,
            messages_per_s: per_s(sent),
            received_per_s: per_s(received),
            heartbeats_acked: a.at_end.heartbeats_acked - a.at_ramp.heartbeats_acked,
            changes_acked: changes,
            changes_per_s: per_s(changes),
            reply_latency: a.shared.reply_latency.summary(),
        },
        storm,
        reconnection: Reconnection {
            drops: a.last.drops,
            collectors_dropped: a.last.collectors_dropped,
            reconnects: a.last.reconnects,
            reconnect_failures: a.last.reconnect_failures,
            http_reopens: a.last.http_reopens,
            max_down: outage.max_down,
            first_drop_to_all_back_s: outage.recovery().map(|d| round3(d.as_secs_f64())),
            down_at_end: outage.down,
        },
        configs: Configs {
            applied: a.last.configs_applied,
            failed: a.last.configs_failed,
            full_state_requests: a.last.full_state_requests,
            new_instance_uids: a.last.new_uids,
        },
        ok: failures.is_empty(),
        failures,
        errors,
        server,
        machine: machine_figures(a, sent),
    }
}

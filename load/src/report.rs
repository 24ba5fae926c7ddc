//! The run's figures: one struct, printed as a human summary and as one JSON line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::args::Mode;
use crate::net::Transport;
use crate::procfs::{CLOCK_TICKS_PER_SECOND, MachineTicks, Sample};
use crate::stats::{LatencySummary, round3};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub mode: Mode,
    pub transport: Transport,
    pub url: String,
    pub collectors: usize,
    pub source_addrs: usize,
    pub rate_per_s: f64,
    pub heartbeat_s: f64,
    /// Burst mode: the least time between one collector's changes (0: back to back).
    pub change_interval_s: f64,
    pub duration_s: f64,
    pub ramp: Ramp,
    pub measure: Measure,
    /// Storm mode only.
    pub storm: Option<Storm>,
    pub reconnection: Reconnection,
    pub configs: Configs,
    pub errors: Errors,
    /// With `--server-pid` only.
    pub server: Option<Server>,
    /// The whole machine during the measurement (Linux `/proc` only).
    pub machine: Option<Machine>,
    /// Every collector connected, errors within `--max-errors`, and (storm, restart) every
    /// collector back.
    pub ok: bool,
    /// Why `ok` is false.
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ramp {
    pub seconds: f64,
    /// Collectors answered on their first connection.
    pub connected: u64,
    pub not_connected: u64,
    /// First message → its reply.
    pub connect_latency: LatencySummary,
    /// TCP connect (+ WebSocket upgrade), every connection of the run.
    pub handshake_latency: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    pub seconds: f64,
    pub messages_sent: u64,
    /// `ServerToAgent` messages received (replies, and anything the server pushed).
    pub received: u64,
    pub messages_per_s: f64,
    pub received_per_s: f64,
    pub heartbeats_acked: u64,
    /// Health changes answered (burst).
    pub changes_acked: u64,
    pub changes_per_s: f64,
    /// Every reply to one of our messages in the measurement.
    pub reply_latency: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Storm {
    /// Connections dropped at once.
    pub dropped: u64,
    /// Collectors answered on their new connection.
    pub back: u64,
    /// From the drop until the last collector was answered (absent if some never were).
    pub all_back_s: Option<f64>,
    /// Per collector, from the drop to its first reply on the new connection.
    pub latency: LatencySummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reconnection {
    /// Connections lost that we did not drop ourselves.
    pub drops: u64,
    /// Collectors that lost a connection at least once.
    pub collectors_dropped: u64,
    /// Collectors answered again on a new connection (storms, drops, throttling).
    pub reconnects: u64,
    /// Failed connection attempts while the server was expected to be away.
    pub reconnect_failures: u64,
    /// HTTP keep-alive connections the server had closed, opened again.
    pub http_reopens: u64,
    /// The most collectors cut off at once.
    pub max_down: u64,
    /// From the first drop until every collector was back (absent with no drop, or while some
    /// are still away).
    pub first_drop_to_all_back_s: Option<f64>,
    pub down_at_end: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Configs {
    pub applied: u64,
    pub failed: u64,
    pub full_state_requests: u64,
    pub new_instance_uids: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Errors {
    pub total: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    pub pid: u32,
    pub rss_before_mib: f64,
    pub rss_after_ramp_mib: f64,
    pub rss_end_mib: f64,
    /// (RSS after the ramp − RSS before) / collectors.
    pub rss_per_collector_kib: f64,
    pub cpu_ramp_s: f64,
    pub cpu_measure_s: f64,
    /// CPU time in the measurement / its length, in percent of one core.
    pub cpu_measure_percent: f64,
    /// CPU time in the measurement / messages sent in it.
    pub cpu_per_message_us: f64,
}

/// The machine during the measurement: a run whose machine was fully busy measured the machine,
/// not only the server, when both share it.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores that `/proc/stat` counted time for.
    pub cores: f64,
    /// Busy CPU time of every core / their total, in percent.
    pub busy_percent: f64,
    /// Of the busy time, the share spent in softirq (on loopback, most of TCP's delivery), in
    /// percent of the total: a process's own CPU figure does not hold it.
    pub softirq_percent: f64,
    /// Of the busy time, the share the hypervisor gave another guest, in percent of the total: a
    /// slow hour on a shared machine shows here.
    pub steal_percent: f64,
    /// This load generator's CPU time, in percent of one core.
    pub load_generator_cpu_percent: f64,
    /// This load generator's CPU time / messages sent.
    pub load_generator_cpu_per_message_us: f64,
}

impl Machine {
    /// The figures between two readings of the machine and this process, `seconds` and `sent`
    /// messages apart; `None` for an interval with no time in it.
    pub fn between(
        (m0, own0): (MachineTicks, Sample),
        (m1, own1): (MachineTicks, Sample),
        seconds: f64,
        sent: u64,
    ) -> Option<Self> {
        let total = m1.total.saturating_sub(m0.total);
        if total == 0 || seconds <= 0.0 {
            return None;
        }
        let busy = m1.busy.saturating_sub(m0.busy);
        let share = |ticks: u64| round3(ticks as f64 / total as f64 * 100.0);
        let own = own1.cpu.saturating_sub(own0.cpu).as_secs_f64();
        let ticks_per_core = seconds * CLOCK_TICKS_PER_SECOND as f64;
        Some(Self {
            cores: round3(total as f64 / ticks_per_core),
            busy_percent: share(busy),
            softirq_percent: share(m1.softirq.saturating_sub(m0.softirq)),
            steal_percent: share(m1.steal.saturating_sub(m0.steal)),
            load_generator_cpu_percent: round3(own / seconds * 100.0),
            load_generator_cpu_per_message_us: if sent > 0 {
                round3(own / sent as f64 * 1e6)
            } else {
                0.0
            },
        })
    }

    fn human(&self) -> String {
        format!(
            "machine   {:.0} cores {:.0} % busy ({:.0} % softirq, {:.0} % stolen); this load generator {:.0} % of a core ({:.1} µs per message)\n",
            self.cores,
            self.busy_percent,
            self.softirq_percent,
            self.steal_percent,
            self.load_generator_cpu_percent,
            self.load_generator_cpu_per_message_us
        )
    }
}

impl Report {
    /// The multi-line summary for people.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "opampd-load {}: {} {:?} collectors over {:?} to {} ({} source address(es))",
            self.version,
            self.collectors,
            self.mode,
            self.transport,
            self.url,
            self.source_addrs.max(1)
        );
        let _ = writeln!(
            out,
            "ramp      {:.1} s: {} connected, {} not; connect latency {}; handshake {}",
            self.ramp.seconds,
            self.ramp.connected,
            self.ramp.not_connected,
            latency(&self.ramp.connect_latency),
            latency(&self.ramp.handshake_latency)
        );
        let m = &self.measure;
        let _ = writeln!(
            out,
            "measure   {:.1} s: {} sent, {} received ({:.0} msg/s sent, {:.0} received/s)",
            m.seconds, m.messages_sent, m.received, m.messages_per_s, m.received_per_s
        );
        let _ = writeln!(
            out,
            "          heartbeats acked {}, changes acked {} ({:.0}/s); reply latency {}",
            m.heartbeats_acked,
            m.changes_acked,
            m.changes_per_s,
            latency(&m.reply_latency)
        );
        if let Some(storm) = &self.storm {
            let _ = writeln!(
                out,
                "storm     {} dropped, {} back, all back in {}; per collector {}",
                storm.dropped,
                storm.back,
                storm
                    .all_back_s
                    .map_or_else(|| "(not all)".to_owned(), |s| format!("{s:.3} s")),
                latency(&storm.latency)
            );
        }
        let r = &self.reconnection;
        let _ = writeln!(
            out,
            "reconnect {} drops, {} reconnects, {} failed attempts, {} HTTP reopens; max down {}, first drop → all back {}",
            r.drops,
            r.reconnects,
            r.reconnect_failures,
            r.http_reopens,
            r.max_down,
            r.first_drop_to_all_back_s
                .map_or_else(|| "-".to_owned(), |s| format!("{s:.3} s"))
        );
        let c = &self.configs;
        let _ = writeln!(
            out,
            "configs   {} applied, {} failed; {} full-state requests; {} new uids",
            c.applied, c.failed, c.full_state_requests, c.new_instance_uids
        );
        let _ = writeln!(
            out,
            "errors    {} {:?}",
            self.errors.total, self.errors.by_kind
        );
        if let Some(s) = &self.server {
            let _ = writeln!(
                out,
                "server    pid {}: RSS {:.1} → {:.1} → {:.1} MiB ({:.1} KiB per collector); CPU ramp {:.2} s, measure {:.2} s ({:.0} % of a core, {:.1} µs per message)",
                s.pid,
                s.rss_before_mib,
                s.rss_after_ramp_mib,
                s.rss_end_mib,
                s.rss_per_collector_kib,
                s.cpu_ramp_s,
                s.cpu_measure_s,
                s.cpu_measure_percent,
                s.cpu_per_message_us
            );
        }
        if let Some(m) = &self.machine {
            out.push_str(&m.human());
        }
        let _ = writeln!(
            out,
            "result    {}{}",
            if self.ok { "ok" } else { "FAILED" },
            if self.failures.is_empty() {
                String::new()
            } else {
                format!(": {}", self.failures.join("; "))
            }
        );
        out
    }

    /// The JSON line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn latency(s: &LatencySummary) -> String {
    if s.count == 0 {
        return "-".to_owned();
    }
    format!(
        "p50 {:.2} / p99 {:.2} / max {:.2} ms (n={})",
        s.p50_ms, s.p99_ms, s.max_ms, s.count
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reading(busy: u64, total: u64, own_ms: u64) -> (MachineTicks, Sample) {
        let own = Sample {
            cpu: Duration::from_millis(own_ms),
            rss_kib: 1,
        };
        // A tenth of the busy time in softirq, a twentieth stolen.
        let (softirq, steal) = (busy / 10, busy / 20);
        (
            MachineTicks {
                busy,
                total,
                softirq,
                steal,
            },
            own,
        )
    }

    #[test]
    #[allow(clippy::float_cmp)] // figures rounded to three places, from exact inputs
    fn machine_figures_are_shares_of_the_interval() {
        // Two cores for 10 s: 2,000 ticks, 1,500 of them busy; this process 4 s of CPU.
        let m = Machine::between(
            reading(100, 1_000, 500),
            reading(1_600, 3_000, 4_500),
            10.0,
            8_000,
        )
        .expect("an interval");
        assert_eq!(m.cores, 2.0);
        assert_eq!(m.busy_percent, 75.0);
        assert_eq!(m.softirq_percent, 7.5);
        assert_eq!(m.steal_percent, 3.75);
        assert_eq!(m.load_generator_cpu_percent, 40.0);
        assert_eq!(m.load_generator_cpu_per_message_us, 500.0);
        assert!(Machine::between(reading(1, 5, 0), reading(1, 5, 0), 10.0, 1).is_none());
    }
}

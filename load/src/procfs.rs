//! Samples a server process from `/proc`: CPU time (utime + stime from `/proc/PID/stat`) and
//! resident memory (`VmRSS` from `/proc/PID/status`); and the whole machine's busy and total CPU
//! time (`/proc/stat`), which tells whether a run was limited by the machine itself.

use std::time::Duration;

/// `/proc/PID/stat` counts CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100 for
/// every architecture it exports to user space (`sysconf(_SC_CLK_TCK)`).
pub const CLOCK_TICKS_PER_SECOND: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read /proc/{pid}/{file}")]
    Read {
        pid: u32,
        file: &'static str,
        source: std::io::Error,
    },
    #[error("cannot read /proc/stat")]
    Machine(#[source] std::io::Error),
    #[error("/proc/stat has no cpu line")]
    MachineFormat,
    #[error("/proc/{pid}/{file} has no {what}")]
    Format {
        pid: u32,
        file: &'static str,
        what: &'static str,
    },
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
}

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces or parentheses itself:
    // count fields from the last ')'. After it come field 3 (state) onwards.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // utime is field 14 and stime field 15: the 12th and 13th after the parenthesis.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// All cores' CPU time, in clock ticks, from the text of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    /// Every state but idle and iowait.
    pub busy: u64,
    pub total: u64,
    /// Of `busy`: interrupts' deferred work, where loopback TCP is delivered, charged to no
    /// process.
    pub softirq: u64,
    /// Of `busy`: time the hypervisor gave another guest.
    pub steal: u64,
}

/// The first line (`cpu  user nice system idle iowait irq softirq steal …`) of `/proc/stat`.
pub fn machine_ticks(stat: &str) -> Option<MachineTicks> {
    let mut fields = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace();
    // guest and guest_nice are already inside user and nice: only the first eight count.
    let values: Vec<u64> = fields
        .by_ref()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some(MachineTicks {
        busy,
        total: busy + idle + iowait,
        softirq,
        steal,
    })
}

/// Reads `/proc/stat` now.
pub fn machine() -> Result<MachineTicks, ProcError> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(ProcError::Machine)?;
    machine_ticks(&stat).ok_or(ProcError::MachineFormat)
}

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
pub fn rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        _ => None,
    }
}

/// Reads both files of process `pid` now.
pub fn sample(pid: u32) -> Result<Sample, ProcError> {
    let read =
        |file: &'static str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map_err(|source| ProcError::Read { pid, file, source })
        };
    let ticks = cpu_ticks(&read("stat")?).ok_or(ProcError::Format {
        pid,
        file: "stat",
        what: "utime and stime",
    })?;
    let rss = rss_kib(&read("status")?).ok_or(ProcError::Format {
        pid,
        file: "status",
        what: "VmRSS",
    })?;
    Ok(Sample {
        cpu: Duration::from_millis(ticks * 1000 / CLOCK_TICKS_PER_SECOND),
        rss_kib: rss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (opampd (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    350 120 0 0 20 0 9 0 12345 123456789 4567 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(470));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn rss_is_read_from_status() {
        let status = "Name:\topampd\nVmPeak:\t  900 kB\nVmRSS:\t   51234 kB\nThreads:\t9\n";
        assert_eq!(rss_kib(status), Some(51_234));
        assert_eq!(rss_kib("Name:\tx\n"), None);
        assert_eq!(rss_kib("VmRSS:\t 5 MB\n"), None);
    }

    #[test]
    fn machine_time_counts_every_busy_state_and_leaves_out_guests() {
        let stat = "cpu  100 5 50 800 20 3 2 1 40 0\ncpu0 50 2 25 400 10 1 1 0 20 0\n";
        assert_eq!(
            machine_ticks(stat),
            Some(MachineTicks {
                busy: 161,
                total: 981,
                softirq: 2,
                steal: 1,
            })
        );
        assert_eq!(machine_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(machine_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
        assert_eq!(machine_ticks("cpu  1 2 3\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let sample = sample(std::process::id()).expect("own /proc entry");
        assert!(sample.rss_kib > 0);
    }
}

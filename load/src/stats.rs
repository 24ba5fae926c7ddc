//! What the collectors count while they run: counters, errors by kind, latency histograms, and
//! the outage tracker for drops the server caused. Shared by every collector task; each update
//! is an atomic add or a short lock.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Why something went wrong, as counted in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// TCP connect (or bind) failed.
    Connect,
    /// The WebSocket upgrade failed (not a throttle).
    Handshake,
    /// 503/429, or `error_response` UNAVAILABLE.
    Throttled,
    /// Another non-200 HTTP status.
    HttpStatus,
    /// Reading or writing the connection failed.
    Io,
    /// The server closed a connection (Close frame or end of stream) we did not expect to lose.
    Closed,
    /// A reply that is not an OpAMP `ServerToAgent`.
    Decode,
    /// `error_response` `BAD_REQUEST`.
    BadRequest,
    /// Any other `error_response`, or a malformed `new_instance_uid`.
    ServerError,
    /// No reply within `--reply-timeout`.
    Timeout,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Connect,
        ErrorKind::Handshake,
        ErrorKind::Throttled,
        ErrorKind::HttpStatus,
        ErrorKind::Io,
        ErrorKind::Closed,
        ErrorKind::Decode,
        ErrorKind::BadRequest,
        ErrorKind::ServerError,
        ErrorKind::Timeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Handshake => "handshake",
            ErrorKind::Throttled => "throttled",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Io => "io",
            ErrorKind::Closed => "closed",
            ErrorKind::Decode => "decode",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Timeout => "timeout",
        }
    }
}

/// Latencies in microseconds, 1 µs to 1 hour, 3 significant digits.
pub struct Latency(Mutex<Histogram<u64>>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        #[allow(clippy::expect_used)] // constant bounds, always valid
        let histogram = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Self(Mutex::new(histogram))
    }

    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.lock().saturating_record(micros);
    }

    pub fn summary(&self) -> LatencySummary {
        LatencySummary::of(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        // A panic while recording leaves a usable histogram; keep counting.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            mean_ms: round3(histogram.mean() / 1000.0),
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Counters every collector adds to.
#[derive(Default)]
pub struct Counters {
    /// `AgentToServer` messages written.
    pub sent: AtomicU64,
    /// `ServerToAgent` messages read.
    pub received: AtomicU64,
    /// Heartbeats (or HTTP polls) answered.
    pub heartbeats_acked: AtomicU64,
    /// Health changes answered.
    pub changes_acked: AtomicU64,
    pub configs_applied: AtomicU64,
    pub configs_failed: AtomicU64,
    pub full_state_requests: AtomicU64,
    pub new_uids: AtomicU64,
    /// Collectors answered on their first connection.
    pub connected: AtomicU64,
    /// Connections that ended for a reason other than our own stop or storm.
    pub drops: AtomicU64,
    /// Collectors that lost a connection at least once.
    pub collectors_dropped: AtomicU64,
    /// Collectors answered on a new connection after a drop, a throttle or a storm.
    pub reconnects: AtomicU64,
    /// Failed attempts to connect again after a drop (not errors while the server restarts).
    pub reconnect_failures: AtomicU64,
    /// HTTP keep-alive connections the server closed while idle, opened again unnoticed.
    pub http_reopens: AtomicU64,
    /// Collectors answered on their new connection after the storm.
    pub storm_back: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
}

impl Counters {
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            sent: get(&self.sent),
            received: get(&self.received),
            heartbeats_acked: get(&self.heartbeats_acked),
            changes_acked: get(&self.changes_acked),
            configs_applied: get(&self.configs_applied),
            configs_failed: get(&self.configs_failed),
            full_state_requests: get(&self.full_state_requests),
            new_uids: get(&self.new_uids),
            connected: get(&self.connected),
            drops: get(&self.drops),
            collectors_dropped: get(&self.collectors_dropped),
            reconnects: get(&self.reconnects),
            reconnect_failures: get(&self.reconnect_failures),
            http_reopens: get(&self.http_reopens),
            storm_back: get(&self.storm_back),
            errors: ErrorKind::ALL.map(|k| get(&self.errors[k as usize])),
        }
    }
}

/// The counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub sent: u64,
    pub received: u64,
    pub heartbeats_acked: u64,
    pub changes_acked: u64,
    pub configs_applied: u64,
    pub configs_failed: u64,
    pub full_state_requests: u64,
    pub new_uids: u64,
    pub connected: u64,
    pub drops: u64,
    pub collectors_dropped: u64,
    pub reconnects: u64,
    pub reconnect_failures: u64,
    pub http_reopens: u64,
    pub storm_back: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
}

impl Snapshot {
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// The non-zero error counts by name.
    pub fn errors_by_kind(&self) -> BTreeMap<&'static str, u64> {
        ErrorKind::ALL
            .iter()
            .zip(self.errors)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.name(), n))
            .collect()
    }
}

/// Tracks collectors cut off by the server (a restart, a crash): how many are down now, when the
/// first went, and when the last came back.
#[derive(Default)]
pub struct Outage(Mutex<OutageState>);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutageState {
    pub down: u64,
    pub max_down: u64,
    pub first_drop: Option<Instant>,
    /// The last time `down` came back to zero.
    pub all_back: Option<Instant>,
}

impl Outage {
    pub fn down(&self, at: Instant) {
        let mut state = self.lock();
        state.down += 1;
        state.max_down = state.max_down.max(state.down);
        state.first_drop.get_or_insert(at);
    }

    pub fn up(&self, at: Instant) {
        let mut state = self.lock();
        state.down = state.down.saturating_sub(1);
        if state.down == 0 {
            state.all_back = Some(at);
        }
    }

    pub fn state(&self) -> OutageState {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutageState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl OutageState {
    /// From the first drop until every collector was back, when both happened.
    pub fn recovery(&self) -> Option<Duration> {
        match (self.first_drop, self.all_back) {
            (Some(first), Some(back)) if self.down == 0 && back >= first => Some(back - first),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let latency = Latency::new();
        for ms in 1..=100 {
            latency.record(Duration::from_millis(ms));
        }
        let summary = latency.summary();
        assert_eq!(summary.count, 100);
        // Three significant digits: within 0.1 %.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(summary.p50_ms, 50.0), "{summary:?}");
        assert!(close(summary.p90_ms, 90.0), "{summary:?}");
        assert!(close(summary.p99_ms, 99.0), "{summary:?}");
        assert!(close(summary.max_ms, 100.0), "{summary:?}");
        assert!(close(summary.mean_ms, 50.5), "{summary:?}");
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeros() {
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }

    #[test]
    fn tiny_and_huge_latencies_are_kept() {
        let latency = Latency::new();
        latency.record(Duration::ZERO);
        latency.record(Duration::from_secs(100_000));
        let summary = latency.summary();
        assert_eq!(summary.count, 2);
        assert!(summary.max_ms >= 3_600_000.0 * 0.999);
    }

    #[test]
    fn errors_are_counted_by_kind() {
        let counters = Counters::default();
        counters.error(ErrorKind::Timeout);
        counters.error(ErrorKind::Timeout);
        counters.error(ErrorKind::Connect);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.errors_total(), 3);
        assert_eq!(
            snapshot.errors_by_kind().into_iter().collect::<Vec<_>>(),
            [("connect", 1), ("timeout", 2)]
        );
    }

    #[test]
    fn an_outage_ends_when_the_last_collector_is_back() {
        let outage = Outage::default();
        let t0 = Instant::now();
        assert_eq!(outage.state().recovery(), None);
        outage.down(t0);
        outage.down(t0 + Duration::from_millis(5));
        outage.up(t0 + Duration::from_millis(50));
        assert_eq!(outage.state().recovery(), None);
        outage.up(t0 + Duration::from_millis(80));
        let state = outage.state();
        assert_eq!(state.max_down, 2);
        assert_eq!(state.recovery(), Some(Duration::from_millis(80)));
    }
}

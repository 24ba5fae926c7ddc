//! Logging: one `tracing` subscriber, human-readable or JSON.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber, writing to stdout. `RUST_LOG`, when set, wins over the
/// configured level. A second call (tests start several servers in one process) leaves the first
/// subscriber in place.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file, a pipe or journald would keep the escape
    // codes as text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Every metric's name, in one place, and each server's own recorder that renders them.
pub mod metrics {
    use std::collections::HashMap;
    use std::sync::{Arc, PoisonError, RwLock};

    use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder as _};
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

    pub const COLLECTORS: &str = "opampd_collectors";
    pub const COLLECTORS_WITH_FACET: &str = "opampd_collectors_with_facet";
    pub const TRANSITIONS: &str = "opampd_transitions_total";
    pub const MESSAGES: &str = "opampd_opamp_messages_total";
    pub const BYTES: &str = "opampd_opamp_bytes_total";
    pub const CONNECTIONS: &str = "opampd_opamp_connections";
    pub const REJECTED: &str = "opampd_opamp_rejected_total";
    pub const STORE_QUEUE: &str = "opampd_store_queue_depth";
    pub const STORE_PENDING: &str = "opampd_store_pending_transitions";
    pub const STORE_WRITE_SECONDS: &str = "opampd_store_write_seconds";
    pub const STORE_WRITE_FAILURES: &str = "opampd_store_write_failures_total";
    pub const STORE_STALLS: &str = "opampd_store_stalls_total";
    pub const BUS_DROPPED: &str = "opampd_bus_dropped_subscribers_total";
    pub const STORE_QUARANTINED: &str = "opampd_store_quarantined_total";
    pub const STORE_FENCED: &str = "opampd_store_fenced_total";
    pub const STORE_CLAIMS: &str = "opampd_store_claims_total";
    pub const STORE_CLAIMED: &str = "opampd_store_claimed_collectors_total";
    pub const RESIDENT: &str = "opampd_resident_collectors";
    pub const RESIDENT_REFUSED: &str = "opampd_resident_refused_total";
    pub const DUPLICATE_UIDS: &str = "opampd_duplicate_uids_total";
    pub const SOCKETS: &str = "opampd_sockets";
    pub const SOCKETS_PARKED: &str = "opampd_sockets_parked";
    pub const SOCKETS_REFUSED: &str = "opampd_sockets_refused_total";
    pub const SOCKETS_TIMED_OUT: &str = "opampd_sockets_timed_out_total";
    pub const TLS_HANDSHAKES_FAILED: &str = "opampd_tls_handshakes_failed_total";
    pub const TLS_RELOADS: &str = "opampd_tls_reloads_total";
    pub const CUSTOM_MESSAGES_DROPPED: &str = "opampd_custom_messages_dropped_total";

    const WRITE_BUCKETS: [f64; 12] = [
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];

    /// One server's metrics. Each server records into its own recorder rather than the
    /// process-wide one, so `/metrics` shows that server's traffic alone, whatever else runs in
    /// the process (tests start many servers side by side).
    /// One server's metrics. Counters on the hot path (every message, every transition) are
    /// registered once and kept: registering looks the key up in the recorder, which cost more
    /// than the rest of a heartbeat's bookkeeping (measured with callgrind).
    #[derive(Clone)]
    pub struct Metrics {
        recorder: Arc<PrometheusRecorder>,
        cached: Arc<Cached>,
    }

    struct Cached {
        /// Messages and bytes by transport (websocket, http) and direction (in, out).
        messages: [(Counter, Counter); 4],
        transitions: RwLock<HashMap<[&'static str; 3], Counter>>,
    }

    const TRANSPORTS: [&str; 2] = ["websocket", "http"];
    const DIRECTIONS: [&str; 2] = ["in", "out"];

    impl Cached {
        fn new(recorder: &PrometheusRecorder) -> Self {
            let pair = |i: usize| {
                let labels = [
                    ("transport", TRANSPORTS[i / 2]),
                    ("direction", DIRECTIONS[i % 2]),
                ];
                (
                    recorder.register_counter(&key(MESSAGES, &labels), &METADATA),
                    recorder.register_counter(&key(BYTES, &labels), &METADATA),
                )
            };
            Self {
                messages: [pair(0), pair(1), pair(2), pair(3)],
                transitions: RwLock::new(HashMap::new()),
            }
        }
    }

    impl std::fmt::Debug for Metrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Metrics")
        }
    }

    impl Default for Metrics {
        fn default() -> Self {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(STORE_WRITE_SECONDS.to_owned()),
                    &WRITE_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            Self {
                cached: Arc::new(Cached::new(&recorder)),
                recorder: Arc::new(recorder),
            }
        }
    }

    fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
        let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
        Key::from_parts(name, labels)
    }

    const METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

    impl Metrics {
        pub fn counter(
            &self,
            name: &'static str,
            labels: &[(&'static str, &'static str)],
        ) -> Counter {
            self.recorder
                .register_counter(&key(name, labels), &METADATA)
        }

        pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &'static str)]) -> Gauge {
            self.recorder.register_gauge(&key(name, labels), &METADATA)
        }

        pub fn histogram(&self, name: &'static str) -> Histogram {
            self.recorder.register_histogram(&key(name, &[]), &METADATA)
        }

        /// One OpAMP message in or out, by transport.
        pub fn message(&self, transport: &'static str, direction: &'static str, bytes: usize) {
            let t = TRANSPORTS.iter().position(|t| *t == transport);
            let d = DIRECTIONS.iter().position(|d| *d == direction);
            if let (Some(t), Some(d)) = (t, d) {
                let (messages, total) = &self.cached.messages[t * 2 + d];
                messages.increment(1);
                total.increment(bytes as u64);
            }
        }

        /// One transition along `from -> to` for `reason`.
        pub fn transition(&self, from: &'static str, to: &'static str, reason: &'static str) {
            let edge = [from, to, reason];
            let known = self
                .cached
                .transitions
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&edge)
                .cloned();
            let counter = known.unwrap_or_else(|| {
                let labels = [("from", from), ("to", to), ("reason", reason)];
                let counter = self.counter(TRANSITIONS, &labels);
                self.cached
                    .transitions
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(edge, counter.clone());
                counter
            });
            counter.increment(1);
        }

        /// What was recorded, in the Prometheus text format.
        pub fn render(&self) -> String {
            self.recorder.handle().render()
        }
    }
}

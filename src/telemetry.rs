//! Logging: one `tracing` subscriber, human-readable or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured level. A second
/// call (tests start several servers in one process) leaves the first subscriber in place.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Every metric's name, in one place, and the recorder that renders them for `/metrics`.
pub mod metrics {
    use std::sync::OnceLock;

    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

    pub const COLLECTORS: &str = "opampd_collectors";
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
    pub const RESIDENT: &str = "opampd_resident_collectors";
    pub const RESIDENT_REFUSED: &str = "opampd_resident_refused_total";
    pub const DUPLICATE_UIDS: &str = "opampd_duplicate_uids_total";

    /// The process-wide recorder: installed by the first server in the process (tests start many;
    /// they share it, so counters there only ever grow).
    pub fn handle() -> &'static PrometheusHandle {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        HANDLE.get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(STORE_WRITE_SECONDS.to_owned()),
                    &[
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a library user's): ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
    }

    /// One OpAMP message in or out, by transport.
    pub fn message(transport: &'static str, direction: &'static str, bytes: usize) {
        let labels = [("transport", transport), ("direction", direction)];
        metrics::counter!(MESSAGES, &labels).increment(1);
        metrics::counter!(BYTES, &labels).increment(bytes as u64);
    }
}

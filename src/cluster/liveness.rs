//! Node liveness: this node renews its row; a node silent for `cluster.node_timeout` is taken as
//! dead, once, by one surviving node, which marks its collectors Disconnected.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::collector::Reason;
use crate::config::ClusterConfig;
use crate::store::cluster::ClusterStore;

/// Answered commands are kept this long (for whoever reads an answer late), then deleted.
const KEEP_ANSWERS: Duration = Duration::from_hours(1);
/// How often old commands are looked for: they only need to go within the hour, not at every
/// renewal of every node.
const PRUNE_EVERY: Duration = Duration::from_mins(5);

/// Why a dead node's collectors became Disconnected: it said it was stopping (and some of its
/// collectors were not closed in time), or it simply went silent, as a cut connection does.
pub fn takeover_reason(stopped_cleanly: bool) -> (Reason, &'static str) {
    if stopped_cleanly {
        (
            Reason::ServerTermination,
            "the server holding the connection stopped",
        )
    } else {
        (
            Reason::NetworkInterruption,
            "the server holding the connection stopped answering",
        )
    }
}

/// Renews this node and takes over silent ones until `shutdown`; then records the clean stop.
pub async fn keep_alive(store: ClusterStore, settings: ClusterConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(settings.renew_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pruned = SystemTime::UNIX_EPOCH;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = SystemTime::now();
        match store.renew(now).await {
            Ok(true) => {}
            Ok(false) => {
                // Declared dead while alive (a pause, a partition): its collectors' records
                // have moved on and its own writes are refused; it starts a fresh life.
                warn!(
                    node = store.node(),
                    "this node was taken as dead by another; registering again"
                );
                if let Err(err) = store.register(now).await {
                    warn!(%err, "cannot register this node again");
                }
            }
            Err(err) => warn!(%err, "cannot renew this node's liveness"),
        }
        match store
            .take_over_silent(now - settings.node_timeout, now, takeover_reason)
            .await
        {
            Ok(taken) => {
                for t in taken {
                    info!(node = %t.node, clean = t.clean, collectors = t.collectors,
                        "a silent node was taken over: its collectors are marked disconnected");
                }
            }
            Err(err) => warn!(%err, "cannot look for silent nodes"),
        }
        if now.duration_since(pruned).unwrap_or_default() >= PRUNE_EVERY {
            pruned = now;
            if let Err(err) = store.prune(now - KEEP_ANSWERS).await {
                warn!(%err, "cannot delete old commands");
            }
        }
    }
}

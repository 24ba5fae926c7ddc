//! Collectors' custom messages across nodes: the ones collectors send to this node go to the
//! store for the others, and the others' come from it into this node's relay, so that an event
//! stream on any node shows every collector's messages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::notify::Wakers;
use crate::collector::connection::Received;
use crate::collector::custom::CustomRelay;
use crate::store::cluster::ClusterStore;
use crate::store::cluster::relay::Relayed;

/// How far back each read looks: rows are numbered when inserted but seen when committed, so a
/// row may appear after a later-numbered one. Inserts are single statements; this is ample.
const LOOKBACK: Duration = Duration::from_secs(10);
/// How long relayed rows are kept before any node deletes them.
const KEEP: Duration = Duration::from_mins(1);
/// How often old rows are pruned. Rows are read only when a notification wakes this node: the
/// listener wakes every waiter when notifications may have been lost (it reconnected).
const PRUNE: Duration = Duration::from_secs(10);

/// The relayed rows already passed on, so that each is passed on once across overlapping reads.
#[derive(Debug, Default)]
pub struct Seen {
    ids: HashMap<i64, SystemTime>,
}

impl Seen {
    /// The messages of `rows` not passed on before, in order; ids older than the look-back are
    /// forgotten (no read returns them again).
    pub fn fresh(&mut self, rows: Vec<Relayed>, now: SystemTime) -> Vec<Received> {
        let horizon = now
            .checked_sub(LOOKBACK * 2)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.ids.retain(|_, at| *at >= horizon);
        rows.into_iter()
            .filter(|row| self.ids.insert(row.id, row.received.at).is_none())
            .map(|row| row.received)
            .collect()
    }
}

/// Relays until `shutdown`: this node's messages out, the other nodes' in.
pub async fn relay(
    store: ClusterStore,
    wakers: Arc<Wakers>,
    relay: Arc<CustomRelay>,
    shutdown: CancellationToken,
) {
    tokio::join!(
        outgoing(store.clone(), Arc::clone(&relay), shutdown.clone()),
        incoming(store, wakers, relay, shutdown),
    );
}

async fn outgoing(store: ClusterStore, relay: Arc<CustomRelay>, shutdown: CancellationToken) {
    let mut messages = relay.subscribe();
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = messages.recv() => received,
        };
        match received {
            Ok(received) if !received.relayed => {
                if let Err(err) = store.relay_custom(&received).await {
                    warn!(%err, collector_id = %received.collector, "a custom message could not be relayed to the other nodes");
                }
            }
            Ok(_) => {}
            Err(RecvError::Lagged(missed)) => {
                warn!(
                    missed,
                    "custom messages arrived faster than they could be relayed to the other nodes"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn incoming(
    store: ClusterStore,
    wakers: Arc<Wakers>,
    relay: Arc<CustomRelay>,
    shutdown: CancellationToken,
) {
    let mut seen = Seen::default();
    let mut prune = tokio::time::interval(PRUNE);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // What was relayed before this node started is not its streams' to show.
    let started = SystemTime::now();
    loop {
        let woken = tokio::select! {
            () = shutdown.cancelled() => return,
            () = wakers.custom() => true,
            _ = prune.tick() => false,
        };
        let now = SystemTime::now();
        if woken {
            let since = now.checked_sub(LOOKBACK).unwrap_or(started).max(started);
            match store.relayed_since(since).await {
                Ok(rows) => {
                    for received in seen.fresh(rows, now) {
                        relay.publish_relayed(received);
                    }
                }
                Err(err) => debug!(%err, "cannot read the custom messages other nodes relayed"),
            }
        } else if let Some(before) = now.checked_sub(KEEP)
            && let Err(err) = store.prune_relayed(before).await
        {
            debug!(%err, "cannot prune relayed custom messages");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::CollectorId;
    use crate::collector::connection::CustomMessage;

    fn row(id: i64, at: SystemTime) -> Relayed {
        Relayed {
            id,
            received: Received {
                collector: CollectorId(uuid::Uuid::nil()),
                message: CustomMessage {
                    capability: "io.example.ping".into(),
                    kind: "ping".into(),
                    data: Arc::from(&b"x"[..]),
                },
                at,
                relayed: false,
            },
        }
    }

    #[test]
    fn each_row_is_passed_on_once_across_overlapping_reads() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut seen = Seen::default();
        let first = seen.fresh(vec![row(1, t0), row(3, t0)], t0);
        assert_eq!(first.len(), 2);
        // Row 2 committed after row 3 was read: the next, overlapping read finds it, alone.
        let second = seen.fresh(vec![row(1, t0), row(2, t0), row(3, t0)], t0);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].at, t0);
        // Long after, the old ids are forgotten; no read within the look-back returns them.
        let later = t0 + LOOKBACK * 3;
        assert!(seen.fresh(Vec::new(), later).is_empty());
        assert!(seen.ids.is_empty());
    }
}

//! Following the history as it grows: the transitions after a position, in order, read from the
//! store (so every node sees every node's), woken by this node's writes and by other nodes'
//! notifications, with a slow poll behind both.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Event, EventFilter, Store};

/// How often the store is read when nothing woke the reader: a lost wake-up costs this much.
const POLL: Duration = Duration::from_secs(1);
const PAGE: usize = 256;

pub struct Tail {
    store: Arc<dyn Store>,
    filter: EventFilter,
    seq: i64,
    buffer: VecDeque<Event>,
    /// This node's committed writes.
    flushes: watch::Receiver<u64>,
    /// Other nodes' history notifications (none on a single node).
    others: Option<watch::Receiver<u64>>,
    shutdown: CancellationToken,
}

impl Tail {
    /// Transitions after position `seq` matching `filter`.
    pub fn new(
        store: Arc<dyn Store>,
        filter: EventFilter,
        seq: i64,
        flushes: watch::Receiver<u64>,
        others: Option<watch::Receiver<u64>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            filter,
            seq,
            buffer: VecDeque::new(),
            flushes,
            others,
            shutdown,
        }
    }

    /// The next transition, waiting for one; `None` when the server shuts down.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.seq = event.seq;
                return Some(event);
            }
            match self.store.events_after(self.seq, &self.filter, PAGE).await {
                Ok(events) if !events.is_empty() => {
                    self.buffer.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "cannot read the history; retrying"),
            }
            let others = async {
                match &mut self.others {
                    Some(others) => others.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.flushes.changed() => {
                    // The writer is gone only when the server is stopping.
                    if changed.is_err() {
                        return None;
                    }
                }
                alive = others => {
                    if !alive {
                        self.others = None;
                    }
                }
                () = tokio::time::sleep(POLL) => {}
                () = self.shutdown.cancelled() => return None,
            }
        }
    }
}

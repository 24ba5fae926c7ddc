//! Following the history as it grows: the transitions after a position, in order, read from the
//! store (so every node sees every node's), woken by this node's writes and by other nodes'
//! notifications, with a slow poll behind both.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Where the history ended before the last read of a selective filter that came back short:
    /// nothing up to there that it did not return matches, so reading resumes past it once the
    /// buffer is drained. Without it a filter that rarely matches would read the same stretch,
    /// longer each time, after every write.
    read_to: Option<i64>,
    /// This node's committed writes.
    flushes: watch::Receiver<u64>,
    /// Other nodes' history notifications (none on a single node).
    others: Option<watch::Receiver<u64>>,
    /// While this is false, what the history gains is passed over unread (see [`Tail::only_while`]).
    wanted: Option<Arc<AtomicBool>>,
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
            read_to: None,
            flushes,
            others,
            wanted: None,
            shutdown,
        }
    }

    /// Reads the history only while `wanted` holds; while it does not, the transitions stored
    /// meanwhile are passed over. Whoever sets `wanted` must do so before it reads the state those
    /// transitions left in the store: the end of the history is read before `wanted` is looked
    /// at, so everything passed over was committed before that read began. (A selective filter
    /// only: an unselective one never reads where the history ends.)
    #[must_use]
    pub fn only_while(mut self, wanted: Arc<AtomicBool>) -> Self {
        debug_assert!(
            self.filter.is_selective(),
            "an unselective tail never reads where the history ends, so it could not pass over"
        );
        self.wanted = Some(wanted);
        self
    }

    /// Where the next read of the history starts: past every transition handed on or found
    /// not to match.
    pub fn position(&self) -> i64 {
        self.read_to.map_or(self.seq, |end| end.max(self.seq))
    }

    /// Reads the next page after the position into the buffer; whether it brought any. `end`,
    /// where the history ended before the read, is resumed past when the page comes back short.
    async fn read(&mut self, end: Option<i64>) -> bool {
        match self.store.events_after(self.seq, &self.filter, PAGE).await {
            Ok(events) => {
                if events.len() < PAGE {
                    self.read_to = end;
                }
                let any = !events.is_empty();
                self.buffer.extend(events);
                any
            }
            Err(err) => {
                tracing::warn!(%err, "cannot read the history; retrying");
                false
            }
        }
    }

    /// The next transition, waiting for one; `None` when the server shuts down.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.seq = event.seq;
                return Some(event);
            }
            if let Some(end) = self.read_to.take() {
                self.seq = self.seq.max(end);
            }
            let end = if self.filter.is_selective() {
                self.store.last_seq().await.ok()
            } else {
                None
            };
            let unwanted = self
                .wanted
                .as_ref()
                .is_some_and(|wanted| !wanted.load(Ordering::SeqCst));
            if unwanted && end.is_some() {
                // Passed over as a short read's stretch is: resumed past once woken.
                self.read_to = end;
            } else if self.read(end).await {
                continue;
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

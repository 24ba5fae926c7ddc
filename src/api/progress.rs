//! Rollout progress for the event stream: rollouts read back from the store as they are written,
//! so that a stream on any node sees the engine's progress wherever the engine runs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::response::sse::Event as SseEvent;
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use crate::fleet::summary::RolloutSummary;
use crate::store::Store;

/// How often the store is asked for rollouts written since the last look.
const POLL: Duration = Duration::from_millis(500);
/// Writes are looked for this far before the newest one seen: a write that committed after a
/// later one (two transactions in flight) is still found.
const OVERLAP: Duration = Duration::from_secs(5);

struct Follower {
    store: Arc<dyn Store>,
    /// When each rollout was last reported as written.
    seen: HashMap<String, SystemTime>,
    /// The newest write seen (by the writing node's clock, never this one's).
    newest: Option<SystemTime>,
    looked: bool,
    ready: std::collections::VecDeque<RolloutSummary>,
    shutdown: CancellationToken,
}

impl Follower {
    /// The rollouts written since the last look that were not reported at that write. The first
    /// look reports the running and paused ones.
    async fn look(&mut self) {
        let since = self
            .newest
            .map_or(SystemTime::UNIX_EPOCH, |newest| newest - OVERLAP);
        let written = match self.store.rollouts_written_since(since).await {
            Ok(written) => written,
            Err(err) => {
                tracing::debug!(%err, "cannot read rollouts for the event stream; retrying");
                return;
            }
        };
        let first = !self.looked;
        self.looked = true;
        for (summary, at) in written {
            self.newest = Some(self.newest.map_or(at, |n| n.max(at)));
            if self.seen.get(&summary.id) == Some(&at) {
                continue;
            }
            self.seen.insert(summary.id.clone(), at);
            if !first || summary.status.is_active() {
                self.ready.push_back(summary);
            }
        }
    }

    async fn next(&mut self) -> Option<RolloutSummary> {
        loop {
            if let Some(summary) = self.ready.pop_front() {
                return Some(summary);
            }
            if self.looked {
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = self.shutdown.cancelled() => return None,
                }
            }
            self.look().await;
        }
    }
}

/// `event: rollout` for each rollout as it is written, data its summary.
pub fn stream(
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let follower = Follower {
        store,
        seen: HashMap::new(),
        newest: None,
        looked: false,
        ready: std::collections::VecDeque::new(),
        shutdown,
    };
    futures_util::stream::unfold(follower, |mut follower| async move {
        let summary = follower.next().await?;
        let sse = SseEvent::default()
            .event("rollout")
            .json_data(&summary)
            .unwrap_or_else(|_| SseEvent::default().comment("unserialisable rollout"));
        Some((Ok(sse), follower))
    })
}

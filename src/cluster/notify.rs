//! The notifications nodes send each other on the one channel, read by one listener per node and
//! turned into wake-ups: new history, a command for this node, an answer to one of its commands.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::store::cluster::ClusterStore;

/// After a failure to listen, the next attempt comes this much later.
const RETRY: Duration = Duration::from_secs(1);

/// One notification's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice<'a> {
    /// Some node appended to the history.
    History,
    /// A command was queued for `node`.
    Command { node: &'a str },
    /// Command `id`, sent by `node`, has its answer.
    Answer { node: &'a str, id: i64 },
    /// Some node relayed a collector's custom message.
    Custom,
}

impl<'a> Notice<'a> {
    pub fn parse(payload: &'a str) -> Option<Self> {
        let mut words = payload.split(' ');
        let notice = match (words.next()?, words.next(), words.next()) {
            ("ev", None, None) => Notice::History,
            ("cm", None, None) => Notice::Custom,
            ("cmd", Some(node), None) => Notice::Command { node },
            ("ans", Some(node), Some(id)) => Notice::Answer {
                node,
                id: id.parse().ok()?,
            },
            _ => return None,
        };
        words.next().is_none().then_some(notice)
    }
}

/// Who waits for what on this node.
#[derive(Debug)]
pub struct Wakers {
    node: String,
    history: watch::Sender<u64>,
    commands: Notify,
    answers: Mutex<HashMap<i64, oneshot::Sender<()>>>,
    custom: Notify,
}

impl Wakers {
    pub fn new(node: String) -> Self {
        Self {
            node,
            history: watch::Sender::new(0),
            commands: Notify::new(),
            answers: Mutex::new(HashMap::new()),
            custom: Notify::new(),
        }
    }

    /// Changes whenever any node appended to the history (or notifications may have been lost).
    pub fn history(&self) -> watch::Receiver<u64> {
        self.history.subscribe()
    }

    /// Wakes when a command for this node may be waiting.
    pub async fn commands(&self) {
        self.commands.notified().await;
    }

    /// Wakes when another node may have relayed a custom message.
    pub async fn custom(&self) {
        self.custom.notified().await;
    }

    /// Fires when command `id`'s answer may be in (or notifications may have been lost).
    pub fn answer(&self, id: i64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        rx
    }

    pub fn forget_answer(&self, id: i64) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, oneshot::Sender<()>>> {
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self, notice: Notice<'_>) {
        match notice {
            Notice::History => {
                self.history.send_modify(|n| *n = n.wrapping_add(1));
            }
            Notice::Command { node } if node == self.node => self.commands.notify_one(),
            Notice::Answer { node, id } if node == self.node => {
                if let Some(waiter) = self.lock().remove(&id) {
                    let _ = waiter.send(());
                }
            }
            Notice::Custom => self.custom.notify_one(),
            Notice::Command { .. } | Notice::Answer { .. } => {}
        }
    }

    /// Notifications may have been lost (the listening connection dropped): everyone looks.
    fn wake_all(&self) {
        self.history.send_modify(|n| *n = n.wrapping_add(1));
        self.commands.notify_one();
        self.custom.notify_one();
        for (_, waiter) in self.lock().drain() {
            let _ = waiter.send(());
        }
    }
}

/// Listens until `shutdown`, reconnecting as needed.
pub async fn listen(
    store: ClusterStore,
    wakers: std::sync::Arc<Wakers>,
    shutdown: CancellationToken,
) {
    loop {
        let mut listener = match store.listen().await {
            Ok(listener) => listener,
            Err(err) => {
                warn!(%err, "cannot listen for other nodes' notifications; retrying");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        // Anything sent before this connection listened was missed.
        wakers.wake_all();
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = shutdown.cancelled() => return,
            };
            match received {
                Ok(Some(notification)) => {
                    if let Some(notice) = Notice::parse(notification.payload()) {
                        wakers.wake(notice);
                    } else {
                        debug!(payload = notification.payload(), "unknown notification");
                    }
                }
                Ok(None) => {
                    warn!("the notification connection was lost; reconnecting");
                    wakers.wake_all();
                }
                Err(err) => {
                    warn!(%err, "cannot read notifications; listening again");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_read_exactly() {
        assert_eq!(Notice::parse("ev"), Some(Notice::History));
        assert_eq!(Notice::parse("cm"), Some(Notice::Custom));
        assert_eq!(Notice::parse("cmd b"), Some(Notice::Command { node: "b" }));
        assert_eq!(
            Notice::parse("ans a 42"),
            Some(Notice::Answer { node: "a", id: 42 })
        );
        for bad in [
            "",
            "ev x",
            "cmd",
            "ans a",
            "ans a x",
            "ans a 1 2",
            "cm x",
            "what",
        ] {
            assert_eq!(Notice::parse(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn only_this_nodes_commands_and_answers_wake_it() {
        let wakers = Wakers::new("a".into());
        let mut answer = wakers.answer(7);
        wakers.wake(Notice::Answer { node: "b", id: 7 });
        assert!(answer.try_recv().is_err(), "another node's answer");
        wakers.wake(Notice::Answer { node: "a", id: 7 });
        assert!(answer.try_recv().is_ok());
        let history = wakers.history();
        wakers.wake(Notice::History);
        assert!(history.has_changed().unwrap());
    }
}

//! The transition bus: every recorded transition, published in-process for live readers (the
//! event stream and metrics), bounded so that a slow reader can never slow an actor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;

use super::handle::Published;

#[derive(Debug, Clone)]
pub struct Bus {
    sender: broadcast::Sender<Published>,
    dropped: Arc<AtomicU64>,
}

impl Bus {
    /// `capacity` transitions may wait for the slowest subscriber; beyond that it is dropped.
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity).0,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Never waits: with no subscriber the transition is simply not observed live (the
    /// collector's history still has it).
    pub fn publish(&self, published: Published) {
        let _ = self.sender.send(published);
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: Some(self.sender.subscribe()),
            dropped: Arc::clone(&self.dropped),
        }
    }

    /// Subscribers dropped so far for falling too far behind.
    pub fn dropped_subscribers(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One reader's view of the bus, from the moment it subscribed.
#[derive(Debug)]
pub struct Subscription {
    receiver: Option<broadcast::Receiver<Published>>,
    dropped: Arc<AtomicU64>,
}

impl Subscription {
    /// The next transition, or `None` once the bus is closed or this subscriber was dropped for
    /// lagging. A dropped subscriber has lost transitions, so it must not go on as if it had not:
    /// it ends, and its owner resynchronises from the store (or the client reconnects).
    pub async fn recv(&mut self) -> Option<Published> {
        let receiver = self.receiver.as_mut()?;
        match receiver.recv().await {
            Ok(published) => Some(published),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(missed, "transition subscriber fell behind and was dropped");
                self.receiver = None;
                None
            }
            Err(broadcast::error::RecvError::Closed) => {
                self.receiver = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::machine::Transition;
    use crate::collector::{CollectorId, Reason, State};

    fn published(n: u128) -> Published {
        Published {
            collector: CollectorId(uuid::Uuid::from_u128(n)),
            transition: Transition {
                from: None,
                to: State::Connected,
                reason: Reason::Initial,
                message: String::new(),
                at: std::time::SystemTime::UNIX_EPOCH,
                cause: None,
            },
        }
    }

    #[tokio::test]
    async fn a_lagging_subscriber_is_dropped_and_counted_while_others_keep_up() {
        let bus = Bus::new(4);
        let mut slow = bus.subscribe();
        let mut fast = bus.subscribe();
        for n in 0..6 {
            bus.publish(published(n));
            assert_eq!(fast.recv().await.unwrap().collector, published(n).collector);
        }
        assert!(slow.recv().await.is_none());
        assert!(slow.recv().await.is_none(), "stays dropped");
        assert_eq!(bus.dropped_subscribers(), 1);
        bus.publish(published(7));
        assert!(fast.recv().await.is_some());
        assert_eq!(bus.dropped_subscribers(), 1);
    }
}

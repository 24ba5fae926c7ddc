//! Custom messages (OpAMP `CustomMessage`) between operators and collectors: the limits on them
//! (size, and a rate per collector each way), and the relay that publishes collectors' messages
//! in-process for the event stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::CollectorId;
use super::connection::{CustomMessage, Received};
use super::machine::{Collector, Effect, MAX_QUEUED_CUSTOM};

/// Queues an operator's message for a connected collector that declares its capability, up to
/// [`MAX_QUEUED_CUSTOM`] waiting (a plain-HTTP collector takes them with its next poll); anything
/// else is refused at once, so the operator hears it, rather than kept for a collector that is away.
pub(super) fn queue(c: &mut Collector, message: CustomMessage, out: &mut Vec<Effect>) {
    let declared = c
        .custom_capabilities
        .as_deref()
        .is_some_and(|names| names.contains(&message.capability));
    if c.connected && declared && c.outbox.custom_messages.len() < MAX_QUEUED_CUSTOM {
        c.outbox.custom_messages.push_back(message);
        out.push(Effect::Deliver);
    } else {
        out.push(Effect::Refused(
            "collector is away, does not declare the capability, or has too many waiting",
        ));
    }
}

/// Collectors' messages waiting for the slowest event stream; beyond it that stream loses the
/// oldest (it is told how many).
const RELAY_CAPACITY: usize = 1024;

/// Limits on custom messages, the same each way.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomLimits {
    /// The server's own custom capabilities: announced to collectors, and the only ones whose
    /// messages from collectors are relayed.
    pub capabilities: Arc<[String]>,
    /// Largest `data`, in bytes.
    pub max_bytes: usize,
    /// Messages per minute per collector, each way (a burst of as many is allowed).
    pub per_minute: u32,
}

impl Default for CustomLimits {
    fn default() -> Self {
        Self {
            capabilities: Arc::from([]),
            max_bytes: 64 * 1024,
            per_minute: 60,
        }
    }
}

/// A token bucket: `per_minute` tokens, refilled evenly. Pure: the caller says when it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(per_minute: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(per_minute),
            at: now,
        }
    }

    fn refilled(&self, per_minute: u32, now: Instant) -> f64 {
        let rate = f64::from(per_minute.max(1)) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(f64::from(per_minute))
    }

    /// Whether it has refilled to a whole burst: then it says nothing a fresh one would not.
    pub fn is_full(&self, per_minute: u32, now: Instant) -> bool {
        self.refilled(per_minute, now) >= f64::from(per_minute)
    }

    /// Takes one token, or says how long until one is there.
    pub fn take(&mut self, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(per_minute.max(1)) / 60.0;
        self.tokens = self.refilled(per_minute, now);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// Why a custom message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("data is {size} bytes; at most {limit} are allowed")]
    TooLarge { size: usize, limit: usize },
    #[error("at most {per_minute} custom messages a minute per collector; try again in {} s", retry_after.as_secs().max(1))]
    TooFast {
        per_minute: u32,
        retry_after: Duration,
    },
}

/// The limits, the buckets of operators' messages per collector, and the relay of collectors'.
#[derive(Debug)]
pub struct CustomRelay {
    pub limits: CustomLimits,
    sender: broadcast::Sender<Received>,
    /// Operators' messages, per collector, on this node.
    outgoing: Mutex<HashMap<CollectorId, Bucket>>,
}

impl Default for CustomRelay {
    fn default() -> Self {
        Self::new(CustomLimits::default())
    }
}

impl CustomRelay {
    pub fn new(limits: CustomLimits) -> Self {
        Self {
            limits,
            sender: broadcast::channel(RELAY_CAPACITY).0,
            outgoing: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an operator's message of `size` bytes may go to `collector` now (counted when it may).
    pub fn admit_outgoing(&self, collector: CollectorId, size: usize) -> Result<(), Refusal> {
        self.check_size(size)?;
        let now = Instant::now();
        let per_minute = self.limits.per_minute;
        let mut buckets = self.outgoing.lock().unwrap_or_else(PoisonError::into_inner);
        // Full buckets hold nothing worth keeping: forget them, so the map stays small.
        buckets.retain(|_, b| !b.is_full(per_minute, now));
        buckets
            .entry(collector)
            .or_insert_with(|| Bucket::full(per_minute, now))
            .take(per_minute, now)
            .map_err(|retry_after| Refusal::TooFast {
                per_minute,
                retry_after,
            })
    }

    pub fn check_size(&self, size: usize) -> Result<(), Refusal> {
        if size > self.limits.max_bytes {
            return Err(Refusal::TooLarge {
                size,
                limit: self.limits.max_bytes,
            });
        }
        Ok(())
    }

    /// Whether a collector's message is one opampd relays: a capability it supports, within size.
    pub fn relays(&self, message: &CustomMessage) -> bool {
        self.limits.capabilities.contains(&message.capability)
            && self.check_size(message.data.len()).is_ok()
    }

    /// Publishes a collector's message; never waits.
    pub fn publish(&self, collector: CollectorId, message: CustomMessage) {
        let _ = self.sender.send(Received {
            collector,
            message,
            at: SystemTime::now(),
            relayed: false,
        });
    }

    /// Publishes a message another node relayed here (for this node's event streams only).
    pub fn publish_relayed(&self, received: Received) {
        let _ = self.sender.send(Received {
            relayed: true,
            ..received
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Received> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = Bucket::full(2, start);
        assert!(bucket.take(2, start).is_ok());
        assert!(bucket.take(2, start).is_ok());
        let wait = bucket.take(2, start).unwrap_err();
        assert_eq!(wait.as_secs(), 30, "two a minute: one every 30 s");
        assert!(bucket.take(2, start + Duration::from_secs(29)).is_err());
        assert!(bucket.take(2, start + Duration::from_secs(31)).is_ok());
        // Idle for long, it holds no more than a burst.
        let later = start + Duration::from_hours(1);
        assert!(bucket.take(2, later).is_ok() && bucket.take(2, later).is_ok());
        assert!(bucket.take(2, later).is_err());
    }

    #[test]
    fn operators_messages_are_limited_per_collector() {
        let relay = CustomRelay::new(CustomLimits {
            capabilities: Arc::from(["io.example.ping".to_owned()]),
            max_bytes: 4,
            per_minute: 1,
        });
        let (a, b) = (
            CollectorId(uuid::Uuid::from_u128(1)),
            CollectorId(uuid::Uuid::from_u128(2)),
        );
        assert!(matches!(
            relay.admit_outgoing(a, 5),
            Err(Refusal::TooLarge { size: 5, limit: 4 })
        ));
        assert!(relay.admit_outgoing(a, 4).is_ok());
        assert!(matches!(
            relay.admit_outgoing(a, 1),
            Err(Refusal::TooFast { .. })
        ));
        assert!(relay.admit_outgoing(b, 1).is_ok(), "each collector its own");
        let message = |capability: &str, size: usize| CustomMessage {
            capability: capability.into(),
            kind: "t".into(),
            data: vec![0; size].into(),
        };
        assert!(relay.relays(&message("io.example.ping", 4)));
        assert!(!relay.relays(&message("io.example.ping", 5)));
        assert!(!relay.relays(&message("io.example.other", 1)));
    }
}

//! The collector side of persistence: what an actor hands over to be stored, and where it loads a
//! known collector's record from. The store implements [`Records`] and drains [`Change`]s; the
//! collector module never names the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tracing::warn;

use super::CollectorId;
use super::machine::{Collector, Transition};

/// One thing to store, in the order the actor produced it.
#[derive(Debug, Clone)]
pub enum Change {
    /// The latest record (without its history): later ones for the same collector replace it.
    Record(Box<Collector>),
    /// One transition: every one is kept.
    Transition {
        collector: CollectorId,
        transition: Transition,
    },
    /// An operator forgot the collector: delete its record and history.
    Forget(CollectorId),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot load the collector's stored record: {0}")]
pub struct LoadError(pub String);

/// Where a collector seen before (by this server or an earlier run) is found again.
#[async_trait]
pub trait Records: Send + Sync {
    /// The stored record with its most recent `history` transitions, oldest first.
    async fn load(&self, id: CollectorId, history: usize) -> Result<Option<Collector>, LoadError>;
}

/// A store that has nothing: every collector is new. For servers and tests without persistence.
pub struct NoRecords;

#[async_trait]
impl Records for NoRecords {
    async fn load(&self, _: CollectorId, _: usize) -> Result<Option<Collector>, LoadError> {
        Ok(None)
    }
}

/// The actors' way into the store: a bounded queue to the write-behind batcher, and the records.
#[derive(Clone)]
pub struct Persistence {
    changes: mpsc::Sender<Change>,
    records: Arc<dyn Records>,
    stalls: Arc<AtomicU64>,
    saved_records: Arc<AtomicU64>,
}

impl Persistence {
    pub fn new(changes: mpsc::Sender<Change>, records: Arc<dyn Records>) -> Self {
        Self {
            changes,
            records,
            stalls: Arc::new(AtomicU64::new(0)),
            saved_records: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Changes are dropped on the floor: for tests of the pure engine only.
    pub fn discarding() -> Self {
        let (changes, mut rx) = mpsc::channel(64);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        Self::new(changes, Arc::new(NoRecords))
    }

    pub fn records(&self) -> &dyn Records {
        self.records.as_ref()
    }

    /// Hands a change to the batcher. Never waits while the queue has room; when it is full (the
    /// database is down or slow and the batcher's own bound is reached) the actor waits: back-pressure,
    /// said in the log and counted, rather than a silent drop.
    pub async fn save(&self, change: Change) {
        if matches!(change, Change::Record(_)) {
            self.saved_records.fetch_add(1, Ordering::Relaxed);
        }
        match self.changes.try_send(change) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(change)) => {
                let stalls = self.stalls.fetch_add(1, Ordering::Relaxed) + 1;
                if stalls.is_power_of_two() {
                    warn!(stalls, "store queue full: collectors wait for the database");
                }
                // Closed only after every actor has stopped; nothing is left to lose then.
                let _ = self.changes.send(change).await;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                warn!("store queue closed: a change arrived after shutdown");
            }
        }
    }

    /// Records handed to the batcher so far (heartbeats should not add to it).
    pub fn saved_records(&self) -> u64 {
        self.saved_records.load(Ordering::Relaxed)
    }

    /// How often an actor found the store queue full.
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Changes waiting in the queue (not those the batcher already holds).
    pub fn queued(&self) -> usize {
        self.changes.max_capacity() - self.changes.capacity()
    }
}

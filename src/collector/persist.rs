//! The collector side of persistence: what an actor hands over to be stored, how it claims a
//! known collector's record, and how it learns that its writes are committed. The store implements
//! [`Records`] and drains [`Change`]s; the collector module never names the store.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use futures_util::FutureExt as _;
use futures_util::future::Shared;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::facets::{DriftBaseline, Facets};
use super::facts::FactParts;
use super::machine::{Collector, Transition};
use super::{Capabilities, CollectorId, PackageOffer, Reason, State, Transport};

/// How many times a record has been claimed. An actor claims a record when it loads it (the store
/// adds one) and names its epoch in every write; the store applies a write only while the record's
/// epoch is still that one, so an actor that lost its claim, or never loaded the record, cannot
/// overwrite it.
pub type Epoch = i64;

/// A collector the store has never had is created at this epoch by its first actor.
pub const FIRST_EPOCH: Epoch = 1;

/// The part of a record that changes with its state: small, written on every change.
#[derive(Debug, Clone, PartialEq)]
pub struct Hot {
    pub id: CollectorId,
    pub state: State,
    pub state_since: Option<SystemTime>,
    pub state_reason: Option<Reason>,
    pub state_message: String,
    pub connected: bool,
    pub transport: Option<Transport>,
    pub connected_since: Option<SystemTime>,
    pub last_seen: Option<SystemTime>,
    pub capabilities: Capabilities,
    pub sequence_num: Option<u64>,
    /// Searched and sorted on, so kept beside the state although they come from the description.
    pub name: Option<String>,
    pub host_name: Option<String>,
    pub version: Option<String>,
    pub facets: Facets,
    pub control: Control,
}

/// What the server itself tracks about a collector: configurations and packages it sent, and why
/// it is in Error beyond its health.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Control {
    pub config_sent: Option<Vec<u8>>,
    pub config_failed: Option<Vec<u8>>,
    pub config_error: Option<String>,
    pub package_error: Option<String>,
    pub package_offered: Option<PackageOffer>,
    pub rollout: Option<String>,
    pub missing_components: Vec<String>,
    pub reassigned: Option<super::Reassignment>,
    pub drift: Option<DriftBaseline>,
    pub settings_failed: Option<Vec<u8>>,
    pub settings_error: Option<String>,
}

impl Hot {
    /// A fingerprint of the descriptive part (everything but the state part: names, capabilities,
    /// facets, control): a write leaves that part out while its fingerprint is unchanged.
    pub fn about(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::hash::DefaultHasher::new();
        (
            &self.name,
            &self.host_name,
            &self.version,
            self.capabilities,
            self.facets,
            &self.control,
        )
            .hash(&mut hasher);
        hasher.finish()
    }

    /// `None` before the collector's first message: there is nothing worth storing yet.
    pub fn of(c: &Collector) -> Option<Self> {
        Some(Self {
            id: c.id,
            state: c.state?,
            state_since: c.state_since,
            state_reason: c.state_reason,
            state_message: c.state_message.clone(),
            connected: c.connected,
            transport: c.transport,
            connected_since: c.connected_since,
            last_seen: c.last_seen,
            capabilities: c.capabilities,
            sequence_num: c.sequence_num,
            name: c.name(),
            host_name: c.attribute("host.name"),
            version: c.attribute("service.version"),
            facets: c.facets,
            control: Control {
                config_sent: c.config_sent.clone(),
                config_failed: c.config_failed.clone(),
                config_error: c.config_error.clone(),
                package_error: c.package_error.clone(),
                package_offered: c.package_offered.as_deref().cloned(),
                rollout: c.rollout.clone(),
                missing_components: c.missing_components.clone(),
                reassigned: c.reassigned.as_deref().cloned(),
                drift: c.drift.as_deref().cloned(),
                settings_failed: c.settings_failed.clone(),
                settings_error: c.settings_error.clone(),
            },
        })
    }
}

/// One thing to store, in the order the actor produced it.
#[derive(Debug)]
pub enum Change {
    /// The record's hot part, with the facts that changed since the last write. `create` when the
    /// store has never had the collector: the row is inserted, and never over one that exists.
    Record {
        hot: Box<Hot>,
        facts: Box<FactParts>,
        epoch: Epoch,
        create: bool,
        /// The descriptive part changed since the last write (or is not known to be stored):
        /// written with the state part. Otherwise only the state part is (ADR 0084).
        whole: bool,
    },
    /// Only `last_seen` moved (heartbeats): one narrow update, batched with others.
    Touch {
        id: CollectorId,
        epoch: Epoch,
        last_seen: SystemTime,
    },
    /// One transition: every one is kept.
    Transition {
        id: CollectorId,
        epoch: Epoch,
        transition: Transition,
    },
    /// An operator forgot the collector: delete its record, facts and history.
    Forget { id: CollectorId, epoch: Epoch },
    /// Signalled once everything queued before it is committed (or quarantined). A collector's
    /// own barrier names the claim it confirms: when the store refused that claim's writes
    /// (fenced), it is dropped instead, so no reply takes them for committed.
    Barrier {
        done: oneshot::Sender<()>,
        claim: Option<(CollectorId, Epoch)>,
    },
}

/// Resolves once the writes it stands for are committed; cloneable, so every reply that depends on
/// the same writes waits on the same signal.
#[derive(Clone)]
pub struct Confirmation(Shared<Pin<Box<dyn Future<Output = bool> + Send>>>);

impl std::fmt::Debug for Confirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Confirmation")
    }
}

impl Confirmation {
    fn new(signal: oneshot::Receiver<()>) -> Self {
        let future: Pin<Box<dyn Future<Output = bool> + Send>> =
            Box::pin(signal.map(|r| r.is_ok()));
        Self(future.shared())
    }

    /// Already committed (nothing was pending).
    pub fn done() -> Self {
        let future: Pin<Box<dyn Future<Output = bool> + Send>> = Box::pin(std::future::ready(true));
        Self(future.shared())
    }

    /// `true` once committed; `false` if the writer stopped first (shutdown).
    pub async fn committed(self) -> bool {
        self.0.await
    }

    /// Resolves once it has, committed or not; holds only a handle on the shared signal.
    pub fn settled(&self) -> impl Future<Output = ()> + Send + use<> {
        self.0.clone().map(drop)
    }

    /// Whether it has resolved, without waiting.
    pub fn is_settled(&self) -> bool {
        self.0.clone().now_or_never().is_some()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot load the collector's stored record: {0}")]
pub struct LoadError(pub String);

/// A stored record handed to the actor that claimed it.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub record: Collector,
    pub epoch: Epoch,
}

/// Where a collector seen before (by this server, another replica or an earlier run) is found.
#[async_trait]
pub trait Records: Send + Sync {
    /// Claims the stored record for this node (its epoch goes up by one) and returns it, or `None`
    /// for a collector the store has never had.
    async fn claim(&self, id: CollectorId) -> Result<Option<Claimed>, LoadError>;
}

/// A store that has nothing: every collector is new. For tests of the engine alone.
pub struct NoRecords;

#[async_trait]
impl Records for NoRecords {
    async fn claim(&self, _: CollectorId) -> Result<Option<Claimed>, LoadError> {
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

    /// Changes are taken and every barrier signalled at once: for tests of the engine alone.
    pub fn discarding() -> Self {
        let (changes, mut rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                if let Change::Barrier { done, .. } = change {
                    let _ = done.send(());
                }
            }
        });
        Self::new(changes, Arc::new(NoRecords))
    }

    pub fn records(&self) -> &dyn Records {
        self.records.as_ref()
    }

    /// Hands a change to the batcher. Never waits while the queue has room; when it is full (the
    /// database is down or slow and the batcher's own bound is reached) the actor waits: back-pressure,
    /// said in the log and counted, rather than a silent drop.
    pub async fn save(&self, change: Change) {
        if matches!(change, Change::Record { .. }) {
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

    /// Queues a barrier behind everything this caller has queued so far.
    pub async fn barrier(&self) -> Confirmation {
        self.barrier_of(None).await
    }

    /// A barrier confirming the writes of the collector's claim `(id, epoch)`: it resolves as not
    /// committed if the store refused them.
    pub async fn claim_barrier(&self, id: CollectorId, epoch: Epoch) -> Confirmation {
        self.barrier_of(Some((id, epoch))).await
    }

    async fn barrier_of(&self, claim: Option<(CollectorId, Epoch)>) -> Confirmation {
        let (done, signal) = oneshot::channel();
        self.save(Change::Barrier { done, claim }).await;
        Confirmation::new(signal)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Collector {
        let mut c = Collector::new(CollectorId::new_v7());
        c.state = Some(State::Connected);
        c.connected = true;
        c
    }

    #[test]
    fn the_fingerprint_follows_the_descriptive_part_not_the_state() {
        let c = record();
        let about = |c: &Collector| Hot::of(c).map(|hot| hot.about());
        let mut moved = c.clone();
        moved.state = Some(State::Disconnected);
        moved.connected = false;
        moved.last_seen = Some(SystemTime::now());
        moved.sequence_num = Some(9);
        assert_eq!(about(&moved), about(&c), "the state part is not in it");
        let changes: [fn(&mut Collector); 5] = [
            |c| c.capabilities = Capabilities(1),
            |c| c.config_error = Some("bad".into()),
            |c| c.config_sent = Some(vec![1]),
            |c| c.rollout = Some("r1".into()),
            |c| c.missing_components = vec!["receiver/otlp".into()],
        ];
        for change in changes {
            let mut other = c.clone();
            change(&mut other);
            assert_ne!(about(&other), about(&c));
        }
    }
}

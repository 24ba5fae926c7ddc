//! The registry: from collector id to its actor's handle, spawning actors on first contact, and the
//! catalog of component sets shared by every collector that reports the same hash.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::State;
use super::actor::LabelEdit;
use super::actor::{
    ActorGone, ActorSettings, CollectorHandle, Command, ConnectionRef, Ending, Shared,
};
use super::bus::{Bus, Subscription};
use super::machine::{Collector, Event};
use super::persist::Persistence;
use super::{CollectorId, Components, Outbound, Report};

/// Transitions published and not yet read by the slowest subscriber; beyond it, that subscriber
/// lags (loses the oldest) rather than slowing any actor.
const BUS_CAPACITY: usize = 4096;

/// Distinct component sets are few (one per collector build), so the catalog stays small; the cap
/// only guards against a client inventing hashes.
const CATALOG_CAP: usize = 4096;

/// Component sets by the hash collectors announce them with, so a fleet of identical collectors
/// reports the full set once, not once per collector.
#[derive(Debug, Default)]
pub struct ComponentCatalog {
    sets: Mutex<HashMap<Vec<u8>, Arc<Components>>>,
}

impl ComponentCatalog {
    pub fn get(&self, hash: &[u8]) -> Option<Arc<Components>> {
        if hash.is_empty() {
            return None;
        }
        let sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        sets.get(hash).cloned()
    }

    pub fn insert(&self, hash: &[u8], components: &Arc<Components>) {
        if hash.is_empty() {
            return;
        }
        let mut sets = self.sets.lock().unwrap_or_else(PoisonError::into_inner);
        if sets.len() < CATALOG_CAP || sets.contains_key(hash) {
            sets.insert(hash.to_vec(), Arc::clone(components));
        }
    }
}

/// What became of a request to forget a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    Done,
    Unknown,
    /// Only a Disconnected collector may be forgotten; this is the state it is in.
    Refused(State),
}

pub struct Registry {
    actors: Mutex<HashMap<CollectorId, CollectorHandle>>,
    shared: Shared,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Registry {
    /// Actors stop when `shutdown` is cancelled; `tracker` lets the caller wait for them.
    pub fn new(
        settings: ActorSettings,
        persistence: Persistence,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            actors: Mutex::new(HashMap::new()),
            shared: Shared {
                settings,
                catalog: Arc::new(ComponentCatalog::default()),
                bus: Bus::new(BUS_CAPACITY),
                persistence,
            },
            shutdown,
            tracker,
        }
    }

    fn existing(&self, id: CollectorId) -> Option<CollectorHandle> {
        let actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        actors.get(&id).cloned()
    }

    fn get_or_spawn(&self, id: CollectorId) -> CollectorHandle {
        let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        actors
            .entry(id)
            .or_insert_with(|| {
                CollectorHandle::spawn(
                    id,
                    self.shared.clone(),
                    self.shutdown.clone(),
                    &self.tracker,
                )
            })
            .clone()
    }

    /// Hands a collector's report to its actor (starting one for a collector never seen) and
    /// returns what the collector must be sent in reply.
    pub async fn report(
        &self,
        id: CollectorId,
        connection: ConnectionRef,
        report: Report,
    ) -> Result<Outbound, ActorGone> {
        self.get_or_spawn(id).report(id, connection, report).await
    }

    /// Tells the collector's actor its connection is gone, and why.
    pub async fn detached(&self, id: CollectorId, connection_id: u64, ending: Ending) {
        if let Some(handle) = self.existing(id) {
            // A gone actor has nothing left to detach from.
            let _ = handle
                .send(
                    id,
                    Command::Detached {
                        connection_id,
                        ending,
                    },
                )
                .await;
        }
    }

    /// Applies a fleet event (queue, configure, offer a package, restart, ...) to a collector.
    /// Returns `false` for a collector this server has never seen.
    pub async fn apply(&self, id: CollectorId, event: Event) -> Result<bool, ActorGone> {
        match self.existing(id) {
            Some(handle) => handle.send(id, Command::Apply(event)).await.map(|()| true),
            None => Ok(false),
        }
    }

    pub async fn view(&self, id: CollectorId) -> Option<Collector> {
        self.existing(id)?.view(id).await.ok()
    }

    /// The collector's actor, started if only the store knows the collector; `None` if nobody does.
    async fn known(&self, id: CollectorId) -> Option<CollectorHandle> {
        if let Some(handle) = self.existing(id) {
            return Some(handle);
        }
        let stored = self.shared.persistence.records().load(id, 0).await.ok()??;
        drop(stored);
        Some(self.get_or_spawn(id))
    }

    /// Changes an operator's labels on a collector; `None` for a collector nobody knows.
    pub async fn edit_labels(
        &self,
        id: CollectorId,
        edit: LabelEdit,
    ) -> Result<Option<Collector>, ActorGone> {
        let Some(handle) = self.known(id).await else {
            return Ok(None);
        };
        handle
            .ask(id, |reply| Command::Labels { edit, reply })
            .await
            .map(Some)
    }

    /// Forgets a Disconnected collector: its record and history are deleted and its actor stops.
    pub async fn forget(&self, id: CollectorId) -> Result<Forgotten, ActorGone> {
        let Some(handle) = self.known(id).await else {
            return Ok(Forgotten::Unknown);
        };
        match handle.ask(id, Command::Forget).await? {
            Ok(()) => {
                let mut actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
                if actors.get(&id).is_some_and(|h| h.same(&handle)) {
                    actors.remove(&id);
                }
                Ok(Forgotten::Done)
            }
            Err(state) => Ok(Forgotten::Refused(state)),
        }
    }

    /// Every transition from now on, from every collector; see [`Subscription::recv`] for what
    /// happens to a subscriber that falls behind.
    pub fn subscribe(&self) -> Subscription {
        self.shared.bus.subscribe()
    }

    pub fn persistence(&self) -> &Persistence {
        &self.shared.persistence
    }

    /// Subscribers dropped so far for lagging.
    pub fn dropped_subscribers(&self) -> u64 {
        self.shared.bus.dropped_subscribers()
    }

    pub fn ids(&self) -> Vec<CollectorId> {
        let actors = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        actors.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

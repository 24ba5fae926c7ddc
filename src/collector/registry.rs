//! The registry: from collector id to its resident actor, starting actors on contact (up to a cap)
//! and forgetting them when they leave; and the catalog of component sets shared by every
//! collector that reports the same hash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::bus::{Bus, Subscription};
use super::custom::{CustomLimits, CustomRelay};
use super::handle::{
    ActorGone, ActorSettings, Answer, CollectorHandle, Command, ConnectionRef, Ending, Forgotten,
    Reached, Reporting, Unavailable,
};
use super::machine::{Collector, Event};
use super::persist::{Epoch, Persistence};
use super::{CollectorId, Components, Outbound, Report};
use crate::telemetry::metrics::{self, Metrics};

/// Transitions published and not yet read by the slowest subscriber; beyond it, that subscriber
/// lags (loses the oldest) rather than slowing any actor.
const BUS_CAPACITY: usize = 4096;

/// Distinct component sets are few (one per collector build), so the catalog stays small; the cap
/// only guards against a client inventing hashes.
const CATALOG_CAP: usize = 4096;

/// An actor that leaves while a command is on its way hands it back; the next actor takes it. A
/// few rounds settle any race; more mean something is wrong, and the collector comes back later.
const ATTEMPTS: usize = 4;

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

/// The resident actors, by collector. Actors remove themselves when they leave.
#[derive(Debug, Default)]
pub(super) struct Roster {
    actors: Mutex<HashMap<CollectorId, CollectorHandle>>,
}

impl Roster {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CollectorId, CollectorHandle>> {
        self.actors.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the actor `serial` (not a later one for the same collector).
    pub(super) fn remove(&self, id: CollectorId, serial: u64) {
        let mut actors = self.lock();
        if actors.get(&id).is_some_and(|h| h.serial == serial) {
            actors.remove(&id);
        }
    }
}

/// What every actor shares: settings, the component catalog, the transition bus, the store and
/// the roster it leaves.
#[derive(Clone)]
pub(super) struct Shared {
    pub settings: ActorSettings,
    pub catalog: Arc<ComponentCatalog>,
    pub bus: Bus,
    pub persistence: Persistence,
    pub roster: Arc<Roster>,
    pub metrics: Metrics,
    pub custom: Arc<CustomRelay>,
    /// With a CA: renews the certificates it issued as they near their end.
    pub renewer: Option<Arc<dyn super::Renewer>>,
    /// The offers' settings for an arriving collector's first reply.
    pub settings_source: Option<Arc<dyn super::SettingsSource>>,
}

pub struct Registry {
    /// One for every actor: each holds a pointer to it, not a copy of its nine handles.
    shared: Arc<Shared>,
    max_resident: usize,
    next_serial: AtomicU64,
    refused: AtomicU64,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Registry {
    /// Actors stop when `shutdown` is cancelled; `tracker` lets the caller wait for them. At most
    /// `max_resident` collectors are resident at once.
    pub fn new(
        settings: ActorSettings,
        persistence: Persistence,
        max_resident: usize,
        metrics: Metrics,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                settings,
                catalog: Arc::new(ComponentCatalog::default()),
                bus: Bus::new(BUS_CAPACITY),
                persistence,
                roster: Arc::new(Roster::default()),
                metrics,
                custom: Arc::new(CustomRelay::default()),
                renewer: None,
                settings_source: None,
            }),
            max_resident,
            next_serial: AtomicU64::new(1),
            refused: AtomicU64::new(0),
            shutdown,
            tracker,
        }
    }

    /// Custom messages under these limits, announcing these capabilities (before any actor starts).
    #[must_use]
    pub fn with_custom_limits(mut self, limits: CustomLimits) -> Self {
        Arc::make_mut(&mut self.shared).custom = Arc::new(CustomRelay::new(limits));
        self
    }

    /// Certificates the CA issued are renewed by `renewer` (before any actor starts).
    #[must_use]
    pub fn with_renewer(mut self, renewer: Arc<dyn super::Renewer>) -> Self {
        Arc::make_mut(&mut self.shared).renewer = Some(renewer);
        self
    }

    /// Arriving collectors' first replies carry the settings `source` gives them (before any actor
    /// starts).
    #[must_use]
    pub fn with_settings_source(mut self, source: Arc<dyn super::SettingsSource>) -> Self {
        Arc::make_mut(&mut self.shared).settings_source = Some(source);
        self
    }

    /// Custom messages: their limits, and collectors' messages as they arrive on this node.
    pub fn custom(&self) -> &CustomRelay {
        &self.shared.custom
    }

    /// [`Registry::custom`], shared with the task that relays messages between nodes.
    pub fn custom_relay(&self) -> Arc<CustomRelay> {
        Arc::clone(&self.shared.custom)
    }

    fn existing(&self, id: CollectorId) -> Option<CollectorHandle> {
        self.shared.roster.lock().get(&id).cloned()
    }

    /// The collector's actor, started if it is not resident; `None` when the server already holds
    /// `max_resident` collectors.
    fn get_or_spawn(&self, id: CollectorId) -> Option<CollectorHandle> {
        let mut actors = self.shared.roster.lock();
        if let Some(handle) = actors.get(&id) {
            return Some(handle.clone());
        }
        if actors.len() >= self.max_resident {
            drop(actors);
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            self.shared
                .metrics
                .counter(metrics::RESIDENT_REFUSED, &[])
                .increment(1);
            if refused.is_power_of_two() {
                warn!(
                    refused,
                    max_resident = self.max_resident,
                    "resident collector limit reached; new collectors are asked to come back later"
                );
            }
            return None;
        }
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let handle = super::actor::spawn(
            id,
            serial,
            Arc::clone(&self.shared),
            self.shutdown.clone(),
            &self.tracker,
        );
        actors.insert(id, handle.clone());
        Some(handle)
    }

    /// Hands a collector's report to its actor (starting one when it is not resident) and returns
    /// what the collector gets. `reassigned_from` names the collector whose uid this one claimed
    /// before it was given its own.
    pub async fn report(
        &self,
        id: CollectorId,
        connection: ConnectionRef,
        report: Report,
        reassigned_from: Option<CollectorId>,
    ) -> Result<Answer, ActorGone> {
        let mut report = Box::new(report);
        for _ in 0..ATTEMPTS {
            let Some(handle) = self.get_or_spawn(id) else {
                return Ok(Answer::Unavailable(Unavailable::Full));
            };
            let (reply, answer) = oneshot::channel();
            let command = Command::Report(Box::new(Reporting {
                connection: connection.clone(),
                report,
                reassigned_from,
                reply,
            }));
            report = match handle.send(command) {
                Ok(()) => match answer.await {
                    Ok(Ok(answer)) => return Ok(answer),
                    Ok(Err(bounced)) => bounced,
                    Err(_) => return Err(ActorGone(id)),
                },
                Err(Command::Report(reporting)) => reporting.report,
                Err(_) => return Err(ActorGone(id)),
            };
            if self.shutdown.is_cancelled() {
                return Err(ActorGone(id));
            }
        }
        Ok(Answer::Unavailable(Unavailable::Store))
    }

    /// Tells the collector's actor its connection is gone, and why.
    pub fn detached(&self, id: CollectorId, connection_id: u64, ending: Ending) {
        if let Some(handle) = self.existing(id) {
            // An actor that left has nothing to detach from.
            let _ = handle.send(Command::Detached {
                connection_id,
                ending,
            });
        }
    }

    /// A reply whose commit could not be confirmed in time was not sent: what it carried goes
    /// back to the collector's outbox.
    pub fn unsent(&self, id: CollectorId, outbound: Outbound) {
        if outbound.is_empty() {
            return;
        }
        if let Some(handle) = self.existing(id) {
            let _ = handle.send(Command::Unsent(Box::new(outbound)));
        }
    }

    /// The store refused a write of `epoch` for this collector.
    pub fn fenced(&self, id: CollectorId, epoch: Epoch) {
        if let Some(handle) = self.existing(id) {
            let _ = handle.send(Command::Fenced(epoch));
        }
    }

    /// Applies a fleet event (queue, configure, offer a package, restart, ...) to a resident
    /// collector. `false` when it is not resident (away: it hears of it when it returns).
    pub async fn apply(&self, id: CollectorId, event: Event) -> Result<bool, ActorGone> {
        let Some(handle) = self.existing(id) else {
            return Ok(false);
        };
        let (reply, applied) = oneshot::channel();
        if handle.send(Command::Apply(Box::new(event), reply)).is_err() {
            return Ok(false);
        }
        applied.await.map_err(|_| ActorGone(id))
    }

    /// A resident collector's record as its actor holds it (without labels, which the store has).
    pub async fn view(&self, id: CollectorId) -> Option<Collector> {
        let handle = self.existing(id)?;
        let (reply, view) = oneshot::channel();
        handle.send(Command::View(reply)).ok()?;
        view.await.ok()
    }

    /// Forgets a Disconnected collector: its record, facts and history are deleted (committed
    /// before this returns) and its actor leaves. A collector that is not resident gets an actor
    /// for the purpose, so that forgetting and a return at the same moment are put in order.
    pub async fn forget(&self, id: CollectorId) -> Result<Forgotten, ActorGone> {
        for _ in 0..ATTEMPTS {
            let Some(handle) = self.get_or_spawn(id) else {
                return Ok(Forgotten::Unavailable);
            };
            let (reply, answer) = oneshot::channel();
            if handle.send(Command::Forget(reply)).is_ok() {
                match answer.await {
                    Ok(Reached::Answered(forgotten)) => return Ok(forgotten),
                    Ok(Reached::Bounced) => {}
                    Err(_) => return Err(ActorGone(id)),
                }
            }
            if self.shutdown.is_cancelled() {
                return Err(ActorGone(id));
            }
        }
        Ok(Forgotten::Unavailable)
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

    /// New collectors refused so far because `max_resident` were resident.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn ids(&self) -> Vec<CollectorId> {
        self.shared.roster.lock().keys().copied().collect()
    }

    /// Whether the collector has an actor on this node now.
    pub fn is_resident(&self, id: CollectorId) -> bool {
        self.shared.roster.lock().contains_key(&id)
    }

    /// How many collectors have an actor now.
    pub fn resident(&self) -> usize {
        self.shared.roster.lock().len()
    }
}

//! The rollout engine: one task that owns every rollout, starts them, sends each batch when the
//! one before has settled, pauses on too many failures, picks up late and returning collectors,
//! and keeps every rollout's progress in the store so that a restart continues where it stopped.
//! It works from changes: a collector's transition, a verdict's deadline, an operator's command;
//! each costs what it touches, never a pass over the fleet.

mod arrivals;
mod progress;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::live::Live;
use super::offer::{What, offer_of, package_offer};
use super::rollout::{Outcome, Payload, Rollout, RolloutOptions, Status, Target};
use crate::cluster::router::Router;
use crate::collector::encoding::{rfc3339, unhex};
use crate::collector::{CollectorId, Event, State, Transition};
use crate::selector::Selector;
use crate::store::tail::Tail;
use crate::store::{EventFilter, Store, StoreError};

/// How often overdue verdicts and owed withdrawals are looked at.
const TICK: Duration = Duration::from_millis(500);
/// How long changes wait to be stored together: a burst of verdicts is one write.
const SAVE_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts to store changes the store refused.
const SAVE_RETRY_MAX: Duration = Duration::from_secs(5);
const COMMANDS: usize = 32;
/// Transitions read from the history ahead of the engine.
const HISTORY_AHEAD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the rollout engine has stopped")]
    Stopped,
    /// The engine runs on another node, which could not answer (or none runs it now).
    #[error("{0}")]
    Elsewhere(String),
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewRollout {
    pub payload: Payload,
    pub selector: Selector,
    pub options: RolloutOptions,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Pause,
    Resume,
    Cancel,
}

type Reply = oneshot::Sender<Result<Rollout, FleetError>>;

enum Command {
    Start(NewRollout, Reply),
    Control(String, Control, Reply),
}

/// A cloneable way to reach the engine.
#[derive(Clone)]
pub struct Fleet {
    tx: mpsc::Sender<Command>,
}

impl Fleet {
    /// Loads the rollouts from the store and starts the engine; it stops when `shutdown` is
    /// cancelled.
    /// Arrivals are read from the history (`history`, from its current end), so collectors that
    /// arrive on any node are seen.
    pub async fn start(
        router: Arc<Router>,
        store: Arc<dyn Store>,
        flushes: watch::Receiver<u64>,
        default_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Self, FleetError> {
        let from = store.last_seq().await?;
        let rollouts = super::summary::load_all(store.as_ref()).await?;
        let (tx, rx) = mpsc::channel(COMMANDS);
        // Read from the start; the loop says from its first turn whether anything stands.
        let wanted = Arc::new(AtomicBool::new(true));
        let mut engine = Engine {
            events: follow(
                Tail::new(
                    Arc::clone(&store),
                    EventFilter {
                        moves_rollouts: true,
                        ..EventFilter::default()
                    },
                    from,
                    flushes,
                    router.history_notices(),
                    shutdown.clone(),
                )
                .only_while(Arc::clone(&wanted)),
            ),
            wanted,
            router,
            store,
            rollouts: Vec::with_capacity(rollouts.len()),
            open: HashMap::new(),
            offers: HashMap::new(),
            withdrawals: Vec::new(),
            default_timeout,
            deadlines: BinaryHeap::new(),
            unsaved: BTreeSet::new(),
        };
        for rollout in rollouts {
            engine.adopt(Live::stored(rollout));
        }
        tokio::spawn(engine.run(rx, shutdown));
        Ok(Self { tx })
    }

    async fn ask(&self, make: impl FnOnce(Reply) -> Command) -> Result<Rollout, FleetError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| FleetError::Stopped)?;
        answer.await.map_err(|_| FleetError::Stopped)?
    }

    /// Starts a rollout (or, with `dry_run`, answers what it would do).
    pub async fn start_rollout(&self, new: NewRollout) -> Result<Rollout, FleetError> {
        self.ask(|reply| Command::Start(new, reply)).await
    }

    pub async fn control(&self, id: &str, control: Control) -> Result<Rollout, FleetError> {
        let id = id.to_owned();
        self.ask(|reply| Command::Control(id, control, reply)).await
    }
}

/// A target's place: its rollout's, then its own within it.
type Place = (usize, usize);

struct Engine {
    router: Arc<Router>,
    store: Arc<dyn Store>,
    /// Every rollout, oldest first; a rollout keeps its place for the engine's life.
    rollouts: Vec<Live>,
    /// The rollout holding each collector's open target (a newer rollout takes the others over,
    /// so there is at most one).
    open: HashMap<CollectorId, usize>,
    /// What each rollout sends, built when first needed.
    offers: HashMap<usize, What>,
    /// The stored history, read by a task of its own: a read of the store is not cancel-safe,
    /// and the engine's loop gives up waiting on every other wake-up.
    events: mpsc::Receiver<crate::store::Event>,
    /// Cancelled rollouts' offers still to take back from collectors on nodes that did not answer.
    withdrawals: Vec<Withdrawal>,
    /// How long a target's verdict may take when its rollout does not say.
    default_timeout: Duration,
    /// When each target awaiting a verdict is overdue, soonest first. An entry whose target has
    /// since settled, or was sent again, is passed over.
    deadlines: BinaryHeap<Reverse<(SystemTime, usize, usize)>>,
    /// Rollouts with changes not yet stored.
    unsaved: BTreeSet<usize>,
    /// Whether the history is read: only while a transition could move something (ADR 0083).
    wanted: Arc<AtomicBool>,
}

struct Withdrawal {
    rollout: String,
    hash: Vec<u8>,
    collector: CollectorId,
}

impl Engine {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        self.catch_up().await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut save_at: Option<Instant> = None;
        let mut save_delay = SAVE_DELAY;
        // This node's transitions, seen before they are stored: verdicts are read without waiting
        // for the writer. The history stays the source of arrivals and of other nodes' changes,
        // and covers what a dropped subscription missed.
        let mut local = Some(self.router.subscribe());
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                command = commands.recv() => match command {
                    Some(Command::Start(new, reply)) => {
                        let _ = reply.send(self.start(new).await);
                    }
                    Some(Command::Control(id, control, reply)) => {
                        let _ = reply.send(self.control(&id, control).await);
                    }
                    None => break,
                },
                recorded = self.events.recv() => {
                    // The history ends only when the server stops.
                    let Some(recorded) = recorded else { break };
                    self.changed(recorded.collector, &recorded.transition, true).await;
                }
                published = next_local(&mut local) => match published {
                    Some(published) => {
                        self.changed(published.collector, &published.transition, false).await;
                    }
                    // Dropped for lagging (or the server is stopping): taken again on the tick.
                    None => local = None,
                },
                _ = tick.tick() => {
                    if local.is_none() && self.wanted.load(Ordering::SeqCst) {
                        local = Some(self.router.subscribe());
                    }
                    self.withdraw().await;
                    self.expire().await;
                }
                () = crate::deadline::sleep_until_opt(save_at) => {
                    save_at = None;
                    // While the store refuses, tries again less and less often (up to 5 s).
                    save_delay = if self.save_unsaved().await {
                        SAVE_DELAY
                    } else {
                        (save_delay * 2).min(SAVE_RETRY_MAX)
                    };
                }
            }
            if save_at.is_none() && !self.unsaved.is_empty() {
                save_at = Some(Instant::now() + save_delay);
            }
            let wanted = history_wanted(
                !self.open.is_empty(),
                self.rollouts.iter().map(Live::status),
            );
            self.wanted.store(wanted, Ordering::SeqCst);
            if !wanted {
                // Heard again from the tick after something stands; the history covers the gap.
                local = None;
            }
        }
        let _ = self.save_unsaved().await;
    }

    /// Takes a rollout into the engine's keeping: its open targets are indexed by collector and
    /// those awaiting a verdict get their deadline. Its place.
    fn adopt(&mut self, mut live: Live) -> usize {
        let r = self.rollouts.len();
        let now = SystemTime::now();
        for p in 0..live.targets().len() {
            let target = live.target(p);
            if target.outcome.in_flight() && target.sent_at.is_none() {
                // Stored before sending times were kept: its clock starts now.
                live.update(p, |t| t.sent_at = Some(now));
                self.unsaved.insert(r);
            }
            let target = live.target(p);
            if target.outcome.is_open() && live.status() != Status::Cancelled {
                self.open.insert(target.collector, r);
            }
            if let Some(due) = live.due(p, self.default_timeout) {
                self.deadlines.push(Reverse((due, r, p)));
            }
        }
        self.rollouts.push(live);
        r
    }

    /// Changes one target and keeps the indexes true: which rollout holds the collector's open
    /// target, when its verdict is due, and that the rollout is to be stored.
    fn set(&mut self, place: Place, change: impl FnOnce(&mut Target)) {
        self.set_with(place, |live, p| live.update(p, change));
    }

    /// [`Engine::set`], for a change the rollout itself decides.
    fn set_with(&mut self, (r, p): Place, change: impl FnOnce(&mut Live, usize)) {
        let live = &mut self.rollouts[r];
        let due_before = live.due(p, self.default_timeout);
        change(live, p);
        let target = live.target(p);
        let collector = target.collector;
        if target.outcome.is_open() {
            self.open.insert(collector, r);
        } else if self.open.get(&collector) == Some(&r) {
            self.open.remove(&collector);
        }
        if let Some(due) = live.due(p, self.default_timeout)
            && Some(due) != due_before
        {
            self.deadlines.push(Reverse((due, r, p)));
        }
        if live.is_dirty() {
            self.unsaved.insert(r);
        }
    }

    /// A collector's transition: its arrival (read from the history, so each is answered once)
    /// is answered, and its open target, if it has one, looked at again. Entering Pending,
    /// Configuring or Upgrading is the engine's own doing (queueing, sending) and brings no
    /// verdict; the history is read only for what can (`Transition::moves_rollouts`).
    async fn changed(&mut self, id: CollectorId, t: &Transition, from_history: bool) {
        let arrived = t.is_arrival();
        if from_history && arrived {
            self.arrived(id).await;
        }
        if matches!(t.to, State::Pending | State::Configuring | State::Upgrading) && !arrived {
            return;
        }
        let Some(&r) = self.open.get(&id) else {
            return;
        };
        let Some(p) = self.rollouts[r].place(id) else {
            return;
        };
        self.examine((r, p)).await;
        self.advance(r).await;
    }

    /// What `rollout`'s payload sends, built on first use.
    async fn what(&mut self, r: usize) -> Result<&What, FleetError> {
        if !self.offers.contains_key(&r) {
            let payload = self.rollouts[r].rollout().payload.clone();
            let (_, what) = self.build(&payload).await?;
            self.offers.insert(r, what);
        }
        Ok(&self.offers[&r])
    }

    /// What `payload` sends, and its hash as the rollout shows it.
    async fn build(&self, payload: &Payload) -> Result<(String, What), FleetError> {
        match payload {
            Payload::Configuration {
                configuration,
                version,
            } => {
                let found = self
                    .store
                    .configuration_version(configuration, *version)
                    .await?
                    .ok_or_else(|| {
                        FleetError::NotFound(format!(
                            "no version {version} of configuration {configuration:?}"
                        ))
                    })?;
                let what = What::Configuration {
                    offer: offer_of(&found),
                    required: found.components.clone(),
                };
                Ok((found.hash, what))
            }
            Payload::Package { package } => {
                let offer = package_offer(package)?;
                Ok((
                    crate::collector::machine::hex(&offer.hash),
                    What::Package(offer),
                ))
            }
        }
    }

    async fn start(&mut self, new: NewRollout) -> Result<Rollout, FleetError> {
        // Before the plan reads the store: what the history gains from here on is read, and what
        // it passed over was committed before this (see `Tail::only_while`).
        self.wanted.store(true, Ordering::SeqCst);
        let (hash, what) = self.build(&new.payload).await?;
        let mut options = new.options;
        if options.timeout_seconds == 0 {
            options.timeout_seconds = self.default_timeout.as_secs().max(1);
        }
        // Planned from the store, which holds every record as its collector was last answered
        // (replies wait for their commit): one read for the whole selection.
        let targets = crate::store::selected(
            self.store.as_ref(),
            &new.selector,
            &[],
            Some(super::offer::PLANNED_FROM),
        )
        .await?
        .iter()
        .map(|record| what.plan(record))
        .collect();
        let rollout = Rollout {
            id: uuid::Uuid::now_v7().to_string(),
            payload: new.payload,
            hash,
            selector: new.selector.to_string(),
            options,
            status: if new.dry_run {
                Status::DryRun
            } else {
                Status::Running
            },
            reason: String::new(),
            created_at: rfc3339(SystemTime::now()),
            batches_started: 0,
            failures_accepted: 0,
            targets,
        };
        if new.dry_run {
            return Ok(rollout);
        }
        let live = Live::new(rollout);
        self.take_over(&live).await?;
        // Stored before anything is sent: a restart finds it, and sends its batches.
        save(self.store.as_ref(), &live).await?;
        let r = self.adopt(live);
        self.rollouts[r].saved();
        self.offers.insert(r, what);
        self.queue(r).await;
        info!(
            rollout = %self.rollouts[r].id(),
            payload = ?self.rollouts[r].rollout().payload,
            targets = self.rollouts[r].targets().len(),
            "rollout started"
        );
        self.advance(r).await;
        self.save_one(r).await?;
        Ok(self.rollouts[r].rollout().clone())
    }

    /// Collectors queue (Pending) for configurations only: the diagram has no edge from Pending
    /// to Upgrading, so an upgrade's collectors wait in their state for their batch.
    async fn queue(&mut self, r: usize) {
        let Some(What::Configuration { required, .. }) = self.offers.get(&r) else {
            return;
        };
        let live = &self.rollouts[r];
        let queued: Vec<CollectorId> = live
            .targets()
            .iter()
            .filter(|t| matches!(t.outcome, Outcome::Pending | Outcome::Incompatible))
            .map(|t| t.collector)
            .collect();
        let (rollout, required) = (live.id().to_owned(), required.clone());
        for id in queued {
            let event = Event::QueueForRollout {
                rollout: rollout.clone(),
                required: required.clone(),
            };
            // A collector no actor holds is away; its turn will find it Waiting.
            let _ = self.router.apply(id, event).await;
        }
    }

    /// One active rollout per collector: the new one takes over the others' open targets. Each
    /// rollout it takes from is stored before the change is kept.
    async fn take_over(&mut self, new: &Live) -> Result<(), FleetError> {
        let mut taken: HashMap<usize, Vec<usize>> = HashMap::new();
        for target in new.targets() {
            if let Some(&r) = self.open.get(&target.collector)
                && standing_from(self.rollouts[r].status())
                && let Some(p) = self.rollouts[r].place(target.collector)
            {
                taken.entry(r).or_default().push(p);
            }
        }
        for (r, places) in taken {
            let mut updated = self.rollouts[r].clone();
            for &p in &places {
                updated.update(p, |t| {
                    t.outcome = Outcome::Replaced;
                    t.error = format!("taken over by rollout {}", new.id());
                });
            }
            save(self.store.as_ref(), &updated).await?;
            updated.saved();
            for &p in &places {
                let collector = updated.target(p).collector;
                if self.open.get(&collector) == Some(&r) {
                    self.open.remove(&collector);
                }
            }
            self.rollouts[r] = updated;
            self.unsaved.remove(&r);
        }
        Ok(())
    }

    async fn control(&mut self, id: &str, control: Control) -> Result<Rollout, FleetError> {
        let r = self
            .rollouts
            .iter()
            .rposition(|l| l.id() == id)
            .ok_or_else(|| FleetError::NotFound(format!("no rollout {id}")))?;
        if let Control::Cancel = control
            && self.rollouts[r].status().is_active()
        {
            return self.cancel(r).await;
        }
        let status = match (control, self.rollouts[r].status()) {
            (Control::Pause, Status::Running) => Status::Paused,
            (Control::Resume, Status::Paused) => Status::Running,
            (control, status) => {
                return Err(FleetError::Conflict(format!(
                    "cannot {} a rollout that is {}",
                    match control {
                        Control::Pause => "pause",
                        Control::Resume => "resume",
                        Control::Cancel => "cancel",
                    },
                    status.as_str()
                )));
            }
        };
        // Stored before it is kept: an operator's 200 means it holds.
        let mut updated = self.rollouts[r].clone();
        let failures = updated.failures();
        updated.update_rollout(|rollout| {
            rollout.status = status;
            if status == Status::Paused {
                "paused by an operator".clone_into(&mut rollout.reason);
            } else {
                rollout.failures_accepted = failures;
                rollout.reason.clear();
            }
        });
        save(self.store.as_ref(), &updated).await?;
        updated.saved();
        self.rollouts[r] = updated;
        self.unsaved.remove(&r);
        if status == Status::Running {
            self.advance(r).await;
            self.save_one(r).await?;
        }
        info!(rollout = %id, status = status.as_str(), "rollout changed");
        Ok(self.rollouts[r].rollout().clone())
    }

    /// The cancel barrier. The cancelled rollout is stored first, so that no engine (this one,
    /// or the next lease holder) sends its payload again; then every open target's collector has
    /// what it has not been written withdrawn from its outbox, on whichever node holds it. A node
    /// that cannot be reached now is tried again on every tick.
    async fn cancel(&mut self, r: usize) -> Result<Rollout, FleetError> {
        let mut updated = self.rollouts[r].clone();
        let withdraw = updated.cancel().unwrap_or_default();
        save(self.store.as_ref(), &updated).await?;
        updated.saved();
        self.rollouts[r] = updated;
        self.unsaved.remove(&r);
        let hash = unhex(&self.rollouts[r].rollout().hash).unwrap_or_default();
        let rollout = self.rollouts[r].id().to_owned();
        for collector in withdraw {
            if self.open.get(&collector) == Some(&r) {
                self.open.remove(&collector);
            }
            self.withdrawals.push(Withdrawal {
                rollout: rollout.clone(),
                hash: hash.clone(),
                collector,
            });
        }
        self.withdraw().await;
        info!(%rollout, unreached = self.withdrawals.len(), "rollout cancelled");
        Ok(self.rollouts[r].rollout().clone())
    }

    /// Carries out the withdrawals still owed; those whose node did not answer stay owed.
    async fn withdraw(&mut self) {
        let mut owed = Vec::new();
        for w in std::mem::take(&mut self.withdrawals) {
            let event = Event::Withdraw {
                rollout: w.rollout.clone(),
                hash: w.hash.clone(),
            };
            // Not resident anywhere: its outbox went with its actor, and nothing will fill it.
            if let Err(err) = self.router.apply(w.collector, event).await {
                warn!(%err, rollout = %w.rollout, collector_id = %w.collector, "cannot withdraw a cancelled rollout's offer yet; retrying");
                owed.push(w);
            }
        }
        self.withdrawals = owed;
    }

    /// Stores one rollout's changes now.
    async fn save_one(&mut self, r: usize) -> Result<(), FleetError> {
        if !self.rollouts[r].is_dirty() {
            return Ok(());
        }
        save(self.store.as_ref(), &self.rollouts[r]).await?;
        self.rollouts[r].saved();
        self.unsaved.remove(&r);
        Ok(())
    }

    /// Stores every rollout's pending changes; what cannot be stored now is tried again later.
    /// Whether everything was stored.
    async fn save_unsaved(&mut self) -> bool {
        let mut stored = true;
        for r in std::mem::take(&mut self.unsaved) {
            if let Err(err) = self.save_one(r).await {
                warn!(%err, rollout = %self.rollouts[r].id(), "cannot save the rollout's progress; retrying");
                self.unsaved.insert(r);
                stored = false;
            }
        }
        stored
    }
}

/// Reads the history in a task of its own, handing each transition on; ends with the server.
fn follow(mut tail: Tail) -> mpsc::Receiver<crate::store::Event> {
    let (tx, rx) = mpsc::channel(HISTORY_AHEAD);
    tokio::spawn(async move {
        while let Some(event) = tail.next().await {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The next of this node's transitions; never, without a subscription.
async fn next_local(
    local: &mut Option<crate::collector::bus::Subscription>,
) -> Option<crate::collector::Published> {
    match local {
        Some(subscription) => subscription.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes the rollout's row and its targets changed since it was last stored.
async fn save(store: &dyn Store, live: &Live) -> Result<(), FleetError> {
    store
        .save_rollout(&live.summary(), SystemTime::now(), &live.changed())
        .await?;
    Ok(())
}

/// Rollouts whose applied configurations stand: running, paused or completed ones.
fn standing_from(status: Status) -> bool {
    matches!(status, Status::Running | Status::Paused | Status::Completed)
}

/// Whether the history can move anything: a collector's arrival or verdict matters only to an
/// open target, or to a rollout that stands (a returning collector keeps its configuration, a
/// late one joins a completed rollout). With neither, the engine passes the history over.
fn history_wanted(open_targets: bool, mut statuses: impl Iterator<Item = Status>) -> bool {
    open_targets || statuses.any(standing_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_is_read_while_a_target_is_open_or_a_rollout_stands() {
        assert!(!history_wanted(false, std::iter::empty()));
        assert!(!history_wanted(
            false,
            [Status::Cancelled, Status::DryRun].into_iter()
        ));
        assert!(history_wanted(true, [Status::Cancelled].into_iter()));
        for standing in [Status::Running, Status::Paused, Status::Completed] {
            assert!(history_wanted(
                false,
                [Status::Cancelled, standing].into_iter()
            ));
        }
    }
}

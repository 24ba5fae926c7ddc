//! The rollout engine: one task that owns every rollout, starts them, sends each batch when the
//! one before has settled, pauses on too many failures, picks up late and returning collectors,
//! and keeps every rollout's progress in the store so that a restart continues where it stopped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::offer::{Offer, What, offer_of, package_offer};
use super::rollout::{Outcome, Payload, Rollout, RolloutOptions, Status, Target, verdict};
use super::summary::{RolloutSummary, changed};
use crate::cluster::router::Router;
use crate::collector::encoding::{rfc3339, unhex};
use crate::collector::{Collector, CollectorId, Event, Reason, State};
use crate::selector::Selector;
use crate::store::tail::Tail;
use crate::store::{EventFilter, Store, StoreError};

/// How often rollouts look at their collectors even when no transition woke them.
const TICK: Duration = Duration::from_millis(500);
const COMMANDS: usize = 32;

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
        let engine = Engine {
            events: Tail::new(
                Arc::clone(&store),
                EventFilter::default(),
                from,
                flushes,
                router.history_notices(),
                shutdown.clone(),
            ),
            router,
            store,
            rollouts,
            offers: Vec::new(),
            withdrawals: Vec::new(),
            default_timeout,
        };
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

struct Engine {
    router: Arc<Router>,
    store: Arc<dyn Store>,
    /// Every rollout, oldest first.
    rollouts: Vec<Rollout>,
    offers: Vec<Offer>,
    events: Tail,
    /// Cancelled rollouts' offers still to take back from collectors on nodes that did not answer.
    withdrawals: Vec<Withdrawal>,
    /// How long a target's verdict may take when its rollout does not say.
    default_timeout: Duration,
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
                recorded = self.events.next() => {
                    // The history ends only when the server stops.
                    let Some(recorded) = recorded else { break };
                    let t = &recorded.transition;
                    if t.to == State::Connected
                        && matches!(t.reason, Reason::Initial | Reason::ConnectionRestored)
                    {
                        self.arrived(recorded.collector).await;
                    }
                    self.advance().await;
                }
                _ = tick.tick() => {
                    self.withdraw().await;
                    self.advance().await;
                }
            }
        }
    }

    /// Collectors that returned while no engine ran (before this one started, or between two
    /// nodes' engines) are treated as arriving now.
    async fn catch_up(&mut self) {
        let waiting: Vec<CollectorId> = self
            .rollouts
            .iter()
            .flat_map(|r| &r.targets)
            .filter(|t| t.outcome == Outcome::Waiting)
            .map(|t| t.collector)
            .collect();
        for id in waiting {
            if self.record(id).await.is_some_and(|r| r.connected) {
                self.arrived(id).await;
            }
        }
    }

    /// Makes sure the rollout's offer is built; its index in `offers`.
    async fn offer(&mut self, rollout: &str, payload: &Payload) -> Result<usize, FleetError> {
        if let Some(i) = self.offers.iter().position(|o| o.rollout == rollout) {
            return Ok(i);
        }
        let what = self.what(payload).await?.1;
        self.offers.push(Offer {
            rollout: rollout.to_owned(),
            what,
        });
        Ok(self.offers.len() - 1)
    }

    /// What `payload` sends, and its hash as the rollout shows it.
    async fn what(&self, payload: &Payload) -> Result<(String, What), FleetError> {
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

    /// The freshest record: the actor holding it, else the store.
    async fn record(&self, id: CollectorId) -> Option<Collector> {
        match self.router.view(id).await {
            Some(view) => Some(view),
            None => self.store.load(id).await.ok().flatten(),
        }
    }

    async fn start(&mut self, new: NewRollout) -> Result<Rollout, FleetError> {
        let (hash, what) = self.what(&new.payload).await?;
        let mut options = new.options;
        if options.timeout_seconds == 0 {
            options.timeout_seconds = self.default_timeout.as_secs().max(1);
        }
        let mut targets = Vec::new();
        for stored in crate::store::selected(self.store.as_ref(), &new.selector, &[]).await? {
            // Labels are the store's alone (the selector matched them there); the rest of the
            // record is freshest in this server's actor, when it has one.
            let record = self.record(stored.id).await.unwrap_or(stored);
            targets.push(what.plan(&record));
        }
        let mut rollout = Rollout {
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
        self.take_over(&rollout).await?;
        // Collectors queue (Pending) for configurations only: the diagram has no edge from
        // Pending to Upgrading, so an upgrade's collectors wait in their state for their batch.
        if let What::Configuration { required, .. } = &what {
            for target in &rollout.targets {
                if matches!(target.outcome, Outcome::Pending | Outcome::Incompatible) {
                    let event = Event::QueueForRollout {
                        rollout: rollout.id.clone(),
                        required: required.clone(),
                    };
                    // A collector no actor holds is away; its turn will find it Waiting.
                    let _ = self.router.apply(target.collector, event).await;
                }
            }
        }
        self.offers.push(Offer {
            rollout: rollout.id.clone(),
            what,
        });
        info!(
            rollout = %rollout.id,
            payload = ?rollout.payload,
            targets = rollout.targets.len(),
            "rollout started"
        );
        self.step(&mut rollout).await;
        self.save(&rollout).await?;
        self.rollouts.push(rollout.clone());
        Ok(rollout)
    }

    /// One active rollout per collector: the new one takes over the others' open targets.
    async fn take_over(&mut self, new: &Rollout) -> Result<(), FleetError> {
        let taken: std::collections::HashSet<CollectorId> =
            new.targets.iter().map(|t| t.collector).collect();
        for i in 0..self.rollouts.len() {
            let old = &self.rollouts[i];
            let replaced = |t: &Target| t.outcome.is_open() && taken.contains(&t.collector);
            if !standing_from(old.status) || !old.targets.iter().any(replaced) {
                continue;
            }
            let mut updated = old.clone();
            for target in updated.targets.iter_mut().filter(|t| replaced(t)) {
                target.outcome = Outcome::Replaced;
                target.error = format!("taken over by rollout {}", new.id);
            }
            self.save(&updated).await?;
            self.rollouts[i] = updated;
        }
        Ok(())
    }

    async fn control(&mut self, id: &str, control: Control) -> Result<Rollout, FleetError> {
        let i = self
            .rollouts
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| FleetError::NotFound(format!("no rollout {id}")))?;
        let mut rollout = self.rollouts[i].clone();
        if let Control::Cancel = control
            && let Some(withdraw) = rollout.cancel()
        {
            return self.cancel(i, rollout, withdraw).await;
        }
        match (control, rollout.status) {
            (Control::Pause, Status::Running) => {
                rollout.status = Status::Paused;
                "paused by an operator".clone_into(&mut rollout.reason);
            }
            (Control::Resume, Status::Paused) => {
                rollout.status = Status::Running;
                rollout.failures_accepted = rollout.failures();
                rollout.reason.clear();
            }
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
        }
        if rollout.status == Status::Running {
            self.step(&mut rollout).await;
        }
        self.save(&rollout).await?;
        self.rollouts[i] = rollout.clone();
        info!(rollout = %rollout.id, status = rollout.status.as_str(), "rollout changed");
        Ok(rollout)
    }

    /// The cancel barrier. The cancelled document is stored first, so that no engine (this one,
    /// or the next lease holder) sends the rollout's payload again; then every open target's
    /// collector has what it has not been written withdrawn from its outbox, on whichever node
    /// holds it. A node that cannot be reached now is tried again on every tick.
    async fn cancel(
        &mut self,
        i: usize,
        rollout: Rollout,
        withdraw: Vec<CollectorId>,
    ) -> Result<Rollout, FleetError> {
        self.save(&rollout).await?;
        self.rollouts[i] = rollout.clone();
        let hash = unhex(&rollout.hash).unwrap_or_default();
        for collector in withdraw {
            self.withdrawals.push(Withdrawal {
                rollout: rollout.id.clone(),
                hash: hash.clone(),
                collector,
            });
        }
        self.withdraw().await;
        info!(rollout = %rollout.id, unreached = self.withdrawals.len(), "rollout cancelled");
        Ok(rollout)
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

    /// A collector connected (first time or again). If a rollout sent it its configuration and
    /// has no verdict yet, it is sent again: what was queued for it did not survive a restart, and
    /// a collector that had applied it says so in this very report. Otherwise the newest completed
    /// rollout whose selector matches it, and that it is not part of, sends it its configuration.
    async fn arrived(&mut self, id: CollectorId) {
        let Some(record) = self.router.view(id).await else {
            return;
        };
        let open = self.rollouts.iter().rposition(|r| {
            r.targets
                .iter()
                .any(|t| t.collector == id && t.outcome.is_open())
        });
        if let Some(i) = open {
            let mut rollout = self.rollouts[i].clone();
            let hash = unhex(&rollout.hash).unwrap_or_default();
            let sent = rollout.targets.iter().any(|t| {
                t.collector == id && (t.outcome.in_flight() || t.outcome == Outcome::Waiting)
            });
            if !sent
                || verdict(&record, &rollout, &hash).is_some()
                || self.offer(&rollout.id, &rollout.payload).await.is_err()
            {
                return;
            }
            let outcome = self.send(&rollout.id, id).await;
            if let Some(target) = rollout.target_mut(id) {
                // Its clock starts again: the configuration is sent anew.
                target.outcome = Outcome::Waiting;
                target.sent(outcome, SystemTime::now());
            }
            info!(rollout = %rollout.id, collector_id = %id, "configuration sent again to a returning collector");
            if self.save(&rollout).await.is_ok() {
                self.rollouts[i] = rollout;
            }
            return;
        }
        if let Some(offer) = self.standing(id).await {
            // The actor adopts it if it has none, and sends it again if the collector reports
            // another hash (R5).
            let _ = self.router.apply(id, Event::Standing { offer }).await;
        }
        if !self.rollouts.iter().any(|r| r.status == Status::Completed) {
            return;
        }
        // Labels are the store's alone. A collector seen for the first time may not be stored yet
        // (its arrival is published before its record is committed); it has no labels then.
        let Ok(stored) = self.store.load(id).await else {
            return;
        };
        let labels = stored.map(|c| c.labels).unwrap_or_default();
        let Some(i) = self.rollouts.iter().rposition(|r| {
            r.status == Status::Completed
                && Selector::parse(&r.selector).is_ok_and(|s| s.matches(&labels))
        }) else {
            return;
        };
        if self.rollouts[i].targets.iter().any(|t| t.collector == id) {
            return;
        }
        let mut rollout = self.rollouts[i].clone();
        let Ok(o) = self.offer(&rollout.id, &rollout.payload).await else {
            return;
        };
        let mut target = self.offers[o].what.plan(&record);
        if target.outcome == Outcome::Pending {
            target.batch = Some(rollout.batches_started);
            let outcome = self.send(&rollout.id, id).await;
            target.sent(outcome, SystemTime::now());
        }
        info!(rollout = %rollout.id, collector_id = %id, outcome = target.outcome.as_str(), "a late collector joins a completed rollout");
        rollout.targets.push(target);
        if self.save(&rollout).await.is_ok() {
            self.rollouts[i] = rollout;
        }
    }

    /// The configuration the newest rollout that had this collector apply (or already run) one
    /// stands for; a cancelled rollout stands for nothing.
    async fn standing(&mut self, id: CollectorId) -> Option<crate::collector::ConfigOffer> {
        let i = self.rollouts.iter().rposition(|r| {
            matches!(r.payload, Payload::Configuration { .. })
                && standing_from(r.status)
                && r.targets.iter().any(|t| {
                    t.collector == id && matches!(t.outcome, Outcome::Applied | Outcome::Skipped)
                })
        })?;
        let (rollout, payload) = (
            self.rollouts[i].id.clone(),
            self.rollouts[i].payload.clone(),
        );
        let o = self.offer(&rollout, &payload).await.ok()?;
        match &self.offers[o].what {
            What::Configuration { offer, .. } => Some(offer.clone()),
            What::Package(_) => None,
        }
    }

    /// Sends the rollout's configuration to one collector; its outcome as far as known now.
    async fn send(&mut self, rollout_id: &str, id: CollectorId) -> Outcome {
        let Some(offer) = self.offers.iter().find(|o| o.rollout == rollout_id) else {
            return Outcome::Pending;
        };
        let (event, in_flight) = (offer.what.event(rollout_id), offer.what.in_flight());
        match self.router.apply(id, event).await {
            Ok(true) => match self.router.view(id).await {
                Some(view) if view.connected => in_flight,
                _ => Outcome::Waiting,
            },
            // No actor here: the collector is away, and hears of it when it returns.
            Ok(false) | Err(_) => Outcome::Waiting,
        }
    }

    /// Brings every rollout up to date with its collectors and moves the running ones on.
    async fn advance(&mut self) {
        for i in 0..self.rollouts.len() {
            let status = self.rollouts[i].status;
            // A cancelled rollout is over: its targets are settled, and late verdicts are not
            // read into it.
            if status == Status::Cancelled {
                continue;
            }
            let open = self.rollouts[i].targets.iter().any(|t| {
                t.outcome.in_flight()
                    || t.outcome == Outcome::Waiting
                    || (status == Status::Running && t.outcome == Outcome::Pending)
            });
            if !open {
                continue;
            }
            let mut rollout = self.rollouts[i].clone();
            self.step(&mut rollout).await;
            if rollout != self.rollouts[i] {
                if let Err(err) = self.save(&rollout).await {
                    warn!(%err, rollout = %rollout.id, "cannot save the rollout's progress; retrying");
                    continue;
                }
                self.rollouts[i] = rollout;
            }
        }
    }

    /// Reads the verdicts of sent configurations, then, if the rollout runs and its current batch
    /// has settled, sends the next batch, pauses it, or completes it.
    async fn step(&mut self, rollout: &mut Rollout) {
        let Ok(o) = self.offer(&rollout.id, &rollout.payload).await else {
            return;
        };
        let hash = self.offers[o].what.hash().to_vec();
        for i in 0..rollout.targets.len() {
            let target = rollout.targets[i].clone();
            if !(target.outcome.in_flight() || target.outcome == Outcome::Waiting) {
                continue;
            }
            let Some(record) = self.router.view(target.collector).await else {
                continue;
            };
            let found = verdict(&record, rollout, &hash);
            let what = &self.offers[o].what;
            let (awaited, in_flight) = (what.awaited_by(&record), what.in_flight());
            let updated = &mut rollout.targets[i];
            if let Some((outcome, error)) = found {
                updated.outcome = outcome;
                updated.error = error;
                if outcome == Outcome::Incompatible {
                    updated.missing.clone_from(&record.missing_components);
                }
                if outcome == Outcome::Failed && rollout.options.rollback {
                    updated.rolled_back = self.roll_back(&target).await;
                }
            } else if record.connected && awaited {
                updated.sent(in_flight, SystemTime::now());
            } else if !record.connected {
                updated.outcome = Outcome::Waiting;
            }
        }
        let timed_out = rollout.time_out(self.default_timeout, SystemTime::now());
        if !timed_out.is_empty() {
            info!(rollout = %rollout.id, timed_out = timed_out.len(), "targets gave no verdict in time");
            // Their offers stop being sent again (a written one's verdict is still read by the
            // collector's record, not by the rollout); carried out on the next tick.
            for collector in timed_out {
                self.withdrawals.push(Withdrawal {
                    rollout: rollout.id.clone(),
                    hash: hash.clone(),
                    collector,
                });
            }
        }
        if rollout.status != Status::Running {
            return;
        }
        if rollout.too_many_failures() {
            rollout.status = Status::Paused;
            let what = if rollout.count(Outcome::TimedOut) == 0 {
                "failed the configuration"
            } else {
                "failed or gave no verdict in time"
            };
            rollout.reason = format!(
                "{} collectors {what}, more than max_errors ({}) allows",
                rollout.failures() - rollout.failures_accepted,
                rollout.options.max_errors
            );
            info!(rollout = %rollout.id, reason = %rollout.reason, "rollout paused itself");
            return;
        }
        if rollout.targets.iter().any(|t| t.outcome.in_flight()) {
            return;
        }
        let size = rollout.options.batch_size(rollout.batches_started);
        let next: Vec<usize> = rollout
            .targets
            .iter()
            .enumerate()
            .filter(|(_, t)| t.outcome == Outcome::Pending)
            .map(|(i, _)| i)
            .take(size)
            .collect();
        if next.is_empty() {
            rollout.status = Status::Completed;
            info!(rollout = %rollout.id, progress = ?rollout.progress(), "rollout completed");
            return;
        }
        let batch = rollout.batches_started;
        rollout.batches_started += 1;
        for i in next {
            let id = rollout.targets[i].collector;
            rollout.targets[i].batch = Some(batch);
            let outcome = self.send(&rollout.id, id).await;
            rollout.targets[i].sent(outcome, SystemTime::now());
        }
    }

    /// Sends a failed collector the configuration it ran before, when that is known.
    async fn roll_back(&mut self, target: &Target) -> bool {
        let Some(previous) = &target.previous_hash else {
            return false;
        };
        let Ok(Some(version)) = self.store.configuration_by_hash(previous).await else {
            return false;
        };
        let event = Event::SendConfiguration {
            offer: offer_of(&version),
            required: Vec::new(),
            rollout: None,
        };
        matches!(self.router.apply(target.collector, event).await, Ok(true))
    }

    /// Writes the rollout's row and the targets that changed since the engine's copy of it.
    async fn save(&self, rollout: &Rollout) -> Result<(), FleetError> {
        let before = self.rollouts.iter().find(|r| r.id == rollout.id);
        let changed = changed(before, rollout);
        self.store
            .save_rollout(&RolloutSummary::of(rollout), SystemTime::now(), &changed)
            .await?;
        Ok(())
    }
}

/// Rollouts whose applied configurations stand: running, paused or completed ones.
fn standing_from(status: Status) -> bool {
    matches!(status, Status::Running | Status::Paused | Status::Completed)
}

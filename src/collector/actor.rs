//! One task per resident collector: it claims the collector's stored record before acting on
//! anything, applies its events in order through `step`, keeps its liveness and eviction timers,
//! holds the outbound path to its connection, hands its changes to the store and tells replies
//! when those changes are committed.

use std::time::{Duration, SystemTime};

use futures_util::future::Either;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::contest::Contest;
use super::facets::{self, Facets};
use super::facts::Changed;
use super::handle::{
    Answer, CollectorHandle, Command, ConnectionRef, Ending, Forgotten, Mailbox, Published,
    Reached, Reporting, Unavailable,
};
use super::machine::{Collector, Effect, Event, Transition, step};
use super::persist::{Change, Claimed, Confirmation, Epoch, FIRST_EPOCH, Hot};
use super::registry::Shared;
use super::{CloseReason, CollectorId, Delivery, State};

mod serving;
mod timer;

use crate::deadline::sleep_until_opt;
use timer::{Timer, next_timer};

/// How long a new actor keeps trying to claim its record before the collector is told to come
/// back later (UNAVAILABLE): never a blank record in place of one the store could not read. In a
/// reconnect storm claims queue behind each other; waiting here costs a collector less than a
/// second round trip after a retry delay.
const LOAD_BUDGET: Duration = Duration::from_secs(5);
const LOAD_FIRST_RETRY: Duration = Duration::from_millis(50);

/// Late by half an interval: a poll that jitter or a slow network delayed is not.
pub const STALE_INTERVALS: f64 = 1.5;

/// Starts the actor of collector `id`; `serial` tells it from a later one for the same collector.
pub(super) fn spawn(
    id: CollectorId,
    serial: u64,
    shared: std::sync::Arc<Shared>,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> CollectorHandle {
    // Boxed messages: a queued command costs a pointer in the mailbox's node, whatever its kind.
    let (handle, rx) = CollectorHandle::open(serial);
    let actor = Box::new(Actor {
        id,
        serial,
        record: Collector::new(id),
        epoch: FIRST_EPOCH,
        stored: false,
        connection: None,
        silent_deadline: None,
        evict_deadline: None,
        shared,
        unsaved: Vec::new(),
        changed: Changed::default(),
        hot: false,
        about: 0,
        saved_at: None,
        unconfirmed: false,
        confirm: None,
        rare: None,
        labels_at_load: None,
        held_elsewhere: false,
        replying: false,
    });
    tracker.spawn(actor.run(rx, shutdown));
    handle
}

/// Resolves once `confirm` has (committed or not: the writer stopped); never without one. Small:
/// it is part of the actor's wait, held for as long as the collector is resident.
fn settled(confirm: Option<&Confirmation>) -> impl Future<Output = ()> + use<> {
    match confirm {
        Some(confirm) => Either::Left(confirm.settled()),
        None => Either::Right(std::future::pending()),
    }
}

/// The parts of an actor that few collectors ever need.
#[derive(Default)]
struct Rare {
    /// Replacements of its live connection, once there has been one.
    contest: Contest,
    /// The collector's own custom messages, limited per minute, once it has sent one.
    custom_bucket: Option<super::custom::Bucket>,
}

/// Whether the actor goes on after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Leave,
}

// Independent flags of one actor's life (stored, news unsaved, writes unconfirmed, a reply being
// made): a state enum would only spell out their product.
#[allow(clippy::struct_excessive_bools)]
struct Actor {
    id: CollectorId,
    serial: u64,
    record: Collector,
    /// The epoch this actor claimed the record at (or creates it at).
    epoch: Epoch,
    /// The store has the record (else the first write creates it).
    stored: bool,
    connection: Option<ConnectionRef>,
    /// When a plain-HTTP collector that has not polled since counts as gone.
    silent_deadline: Option<Instant>,
    /// When a collector without a connection stops being resident.
    evict_deadline: Option<Instant>,
    shared: std::sync::Arc<Shared>,
    /// Transitions not yet handed to the store.
    unsaved: Vec<Transition>,
    /// Facts parts changed since the last write.
    changed: Changed,
    /// The record has news beyond `last_seen` that the store has not had.
    hot: bool,
    /// The fingerprint of the descriptive part last handed to the store ([`Hot::about`]); 0
    /// before the first write, which carries that part whatever it is.
    about: u64,
    /// When the record was last handed to the store.
    saved_at: Option<Instant>,
    /// Writes queued since the last barrier.
    unconfirmed: bool,
    /// The latest barrier: replies wait on it while it has not resolved.
    confirm: Option<Confirmation>,
    /// What few collectors ever need, in one box: a pointer of every resident collector's actor
    /// rather than one for each.
    rare: Option<Box<Rare>>,
    /// The labels the store held when this actor loaded the record (none for a new collector),
    /// until its first arrival: what its first reply's connection settings are chosen by. Labels
    /// are the store's alone; later ones are read where they are needed.
    // Boxed: held only until the first arrival, it would otherwise be 32 bytes of every
    // resident collector's actor (which fits jemalloc's 1,024-byte class only without them).
    #[allow(clippy::box_collection)]
    labels_at_load: Option<Box<std::collections::BTreeMap<String, String>>>,
    /// The record as claimed counts the collector connected over WebSocket: to another node,
    /// which did not record the loss (it died, and no survivor has marked its collectors yet).
    held_elsewhere: bool,
    /// A report is being answered: connection settings wait for its reply rather than being
    /// pushed, so the reply that greets a collector carries them (conformance N1).
    replying: bool,
}

impl Actor {
    /// Every step is boxed: a task's future is as large as its largest await, and that size is
    /// held for the whole life of every resident collector; boxed, the steps' state exists only
    /// while one runs.
    async fn run(mut self: Box<Self>, mut rx: Mailbox, shutdown: CancellationToken) {
        if !Box::pin(self.load()).await {
            // Nothing was read, so nothing may be written: whoever asked is told to come back.
            Box::pin(self.leave(rx, true)).await;
            return;
        }
        // Resident only as long as it is needed: a contact keeps it, none lets it go.
        self.evict_deadline = Some(Instant::now() + self.shared.settings.grace_period);
        loop {
            let timer = next_timer(self.silent_deadline, self.stale_at(), self.evict_deadline);
            let flow = tokio::select! {
                command = rx.recv() => match command {
                    Ok(command) => Box::pin(self.handle(*command)).await,
                    Err(_) => Flow::Leave,
                },
                // One sleep for the three timers: each is as large as a small record, held
                // while the actor waits, which is nearly always.
                () = sleep_until_opt(timer.map(|(at, _)| at)) => match timer.map(|(_, which)| which) {
                    Some(Timer::Silent) => {
                        debug!(collector_id = %self.id, "plain-HTTP collector went silent");
                        self.detach();
                        self.apply(Event::ConnectionLost);
                        Flow::Continue
                    }
                    Some(Timer::Stale) => {
                        debug!(collector_id = %self.id, "plain-HTTP collector's heartbeats are late");
                        self.refresh_facets(true);
                        Flow::Continue
                    }
                    Some(Timer::Evict) => Box::pin(self.evict()).await,
                    None => Flow::Continue,
                },
                // Let go once committed, rather than held until the next message finds it so.
                // Nothing changed, so nothing is saved.
                () = settled(self.confirm.as_ref()) => {
                    self.confirm = None;
                    continue;
                }
                () = shutdown.cancelled() => {
                    // Collectors still connected now (HTTP ones, or WebSockets that outlived the
                    // shutdown timeout) are disconnected by the server's end.
                    self.apply(Event::ServerTerminating);
                    Box::pin(self.save()).await;
                    return;
                }
            };
            Box::pin(self.save()).await;
            if flow == Flow::Leave {
                break;
            }
        }
        Box::pin(self.leave(rx, false)).await;
    }

    /// Claims the stored record, retrying for a while: the store's answer, or that it has none,
    /// is the only ground an actor may act on.
    async fn load(&mut self) -> bool {
        let deadline = Instant::now() + LOAD_BUDGET;
        let mut wait = LOAD_FIRST_RETRY;
        loop {
            let attempt = self.shared.persistence.records().claim(self.id);
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(Some(Claimed { mut record, epoch }))) => {
                    // Whatever the store says, this actor holds no connection yet; and labels are
                    // the store's alone. A plain-HTTP collector counted connected is one that
                    // polls: its next poll may land on any node, and nothing of it was lost.
                    let connected = std::mem::replace(&mut record.connected, false);
                    self.held_elsewhere =
                        connected && record.transport == Some(super::Transport::WebSocket);
                    self.labels_at_load = Some(Box::new(std::mem::take(&mut record.labels)));
                    self.record = record;
                    self.epoch = epoch;
                    self.stored = true;
                    return true;
                }
                Ok(Ok(None)) => {
                    self.labels_at_load = Some(Box::default());
                    return true;
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("no answer within {LOAD_BUDGET:?}"),
            };
            if Instant::now() + wait >= deadline {
                warn!(collector_id = %self.id, %error, "cannot load the collector's record; it is asked to come back later");
                return false;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }

    /// Stops being resident: out of the registry first (so the next contact starts a new actor,
    /// which claims the record afresh), then every command that still reached this one is handed
    /// back. `unloaded` when the record could not be read: collectors are told to come back later.
    async fn leave(self, mut rx: Mailbox, unloaded: bool) {
        self.shared.roster.remove(self.id, self.serial);
        rx.close();
        // After the close, `recv` still yields every command that got in before it.
        while let Ok(command) = rx.recv().await {
            match *command {
                Command::Report(reporting) => {
                    let Reporting { report, reply, .. } = *reporting;
                    let _ = reply.send(if unloaded {
                        Ok(Answer::Unavailable(Unavailable::Store))
                    } else {
                        Err(report)
                    });
                }
                Command::Forget(reply) => {
                    let _ = reply.send(if unloaded {
                        Reached::Answered(Forgotten::Unavailable)
                    } else {
                        Reached::Bounced
                    });
                }
                Command::Apply(_, reply) => {
                    let _ = reply.send(false);
                }
                Command::View(_)
                | Command::Detached { .. }
                | Command::Unsent(_)
                | Command::Fenced(_) => {}
            }
        }
        debug!(collector_id = %self.id, "collector no longer resident");
    }

    /// Leaves residence if the collector is still away and everything it wrote is committed:
    /// only then may another actor claim the record.
    async fn evict(&mut self) -> Flow {
        if self.connection.is_some() {
            self.evict_deadline = None;
            return Flow::Continue;
        }
        self.save().await;
        if let Some(confirm) = self.confirmation().await {
            let wait = self
                .shared
                .settings
                .grace_period
                .min(Duration::from_secs(5));
            if !matches!(
                tokio::time::timeout(wait, confirm.committed()).await,
                Ok(true)
            ) {
                // The store is not taking writes: stay, and try again later.
                self.evict_deadline = Some(Instant::now() + self.shared.settings.grace_period);
                return Flow::Continue;
            }
        }
        Flow::Leave
    }

    /// Hands transitions and, when it has news (or `last_seen` is old in the store), the record
    /// to the write-behind batcher. Waits only when the store queue is full.
    async fn save(&mut self) {
        if self.record.state.is_none() {
            return;
        }
        let persistence = &self.shared.persistence;
        let create = !self.stored;
        if create || self.hot || self.changed.any() || !self.unsaved.is_empty() {
            let Some(hot) = Hot::of(&self.record) else {
                return;
            };
            let changed = if create { Changed::all() } else { self.changed };
            let about = hot.about();
            let whole = create || about != self.about;
            self.about = about;
            persistence
                .save(Change::Record {
                    hot: Box::new(hot),
                    facts: Box::new(changed.take(&self.record)),
                    epoch: self.epoch,
                    create,
                    whole,
                })
                .await;
            self.stored = true;
            self.hot = false;
            self.changed = Changed::default();
            self.saved_at = Some(Instant::now());
            self.unconfirmed = true;
        } else if let Some(last_seen) = self.record.last_seen
            && self
                .saved_at
                .is_none_or(|at| at.elapsed() >= self.shared.settings.last_seen_interval)
        {
            persistence
                .save(Change::Touch {
                    id: self.id,
                    epoch: self.epoch,
                    last_seen,
                })
                .await;
            self.saved_at = Some(Instant::now());
        }
        // Taken, not drained: a drained vector would keep its buffer for the actor's life.
        for transition in std::mem::take(&mut self.unsaved) {
            persistence
                .save(Change::Transition {
                    id: self.id,
                    epoch: self.epoch,
                    transition,
                })
                .await;
        }
    }

    /// What a reply must wait for: the commit of every write queued so far, if any is pending.
    async fn confirmation(&mut self) -> Option<Confirmation> {
        if self.unconfirmed {
            self.unconfirmed = false;
            let barrier = self.shared.persistence.claim_barrier(self.id, self.epoch);
            self.confirm = Some(barrier.await);
        }
        match &self.confirm {
            Some(confirm) if !confirm.is_settled() => Some(confirm.clone()),
            _ => {
                self.confirm = None;
                None
            }
        }
    }

    async fn handle(&mut self, command: Command) -> Flow {
        match command {
            Command::Report(reporting) => {
                let Reporting {
                    connection,
                    report,
                    reassigned_from,
                    reply,
                } = *reporting;
                let answer = self.on_report(connection, report, reassigned_from).await;
                // The connection may have gone while we worked; its loss arrives as Detached.
                let _ = reply.send(Ok(answer));
                self.flush_outbox();
            }
            Command::Detached {
                connection_id,
                ending,
            } => {
                if self
                    .connection
                    .as_ref()
                    .is_some_and(|c| c.id == connection_id)
                {
                    self.detach();
                    self.apply(match ending {
                        Ending::Lost => Event::ConnectionLost,
                        Ending::ServerClosing => Event::ServerTerminating,
                    });
                }
            }
            Command::Apply(event, reply) => {
                // Fleet events come on every arrival (settings, the standing configuration) and
                // mostly change nothing: only a changed record is written.
                let before = Hot::of(&self.record);
                self.apply(*event);
                if Hot::of(&self.record) != before {
                    self.hot = true;
                }
                let _ = reply.send(true);
            }
            Command::View(reply) => {
                let _ = reply.send(self.record.clone());
            }
            Command::Forget(reply) => return self.forget(reply).await,
            Command::Unsent(outbound) => {
                super::delivery::restore(&mut self.record, *outbound);
                self.flush_outbox();
            }
            Command::Fenced(epoch) if epoch == self.epoch => {
                // Another actor (after a claim elsewhere) owns the record now: this one's view is
                // stale. It writes nothing more; its collector, if still here, reconnects and is
                // served from the stored record.
                warn!(collector_id = %self.id, epoch, "the store refused this actor's write: another claim holds the record");
                self.unsaved.clear();
                self.hot = false;
                self.changed = Changed::default();
                if let Some(push) = self.connection.as_ref().and_then(|c| c.push.as_ref()) {
                    let _ = push.try_push(Box::new(Delivery::Close(CloseReason::Moved)));
                }
                self.stored = false;
                self.record.state = None;
                return Flow::Leave;
            }
            Command::Fenced(_) => {}
        }
        Flow::Continue
    }

    async fn forget(&mut self, reply: oneshot::Sender<Reached<Forgotten>>) -> Flow {
        if !self.stored {
            let _ = reply.send(Reached::Answered(Forgotten::Unknown));
            return Flow::Leave;
        }
        let state = self.record.state.unwrap_or(State::Disconnected);
        if self.record.connected || state != State::Disconnected {
            let _ = reply.send(Reached::Answered(Forgotten::Refused(state)));
            return Flow::Continue;
        }
        self.save().await;
        self.shared
            .persistence
            .save(Change::Forget {
                id: self.id,
                epoch: self.epoch,
            })
            .await;
        self.unconfirmed = true;
        let committed = match self.confirmation().await {
            Some(confirm) => confirm.committed().await,
            None => true,
        };
        // Nothing of this record may be written again: the next contact starts a new one.
        self.stored = false;
        self.record.state = None;
        let _ = reply.send(Reached::Answered(if committed {
            Forgotten::Done
        } else {
            Forgotten::Unavailable
        }));
        Flow::Leave
    }

    /// Runs the rule and carries out its effects.
    fn apply(&mut self, event: Event) {
        for effect in step(&mut self.record, event, SystemTime::now()) {
            match effect {
                Effect::Transitioned(transition) => {
                    self.hot = true;
                    self.unsaved.push(transition.clone());
                    self.publish(transition);
                }
                Effect::Deliver => self.flush_outbox(),
                Effect::Refused(why) => {
                    debug!(collector_id = %self.id, why, "event refused");
                }
            }
        }
        self.evict_deadline = if self.connection.is_none() {
            Some(Instant::now() + self.shared.settings.grace_period)
        } else {
            None
        };
        self.refresh_facets(self.record.facets.contains(Facets::STALE));
    }

    /// Decides the facets again; a change is news for the store.
    fn refresh_facets(&mut self, stale: bool) {
        let now = facets::of(&self.record, stale);
        if now != self.record.facets {
            self.record.facets = now;
            self.hot = true;
        }
    }

    /// When a plain-HTTP collector that keeps silent becomes stale: the same silence as its
    /// liveness deadline, shorter. `None` once stale, or where there is no such deadline.
    fn stale_at(&self) -> Option<Instant> {
        // Only a connected collector becomes stale (`facets::of`): for one that is not, a passed
        // deadline would stay due, and the actor's one sleep would fire on every turn.
        if self.record.facets.contains(Facets::STALE) || !self.record.connected {
            return None;
        }
        let silent = self.silent_deadline?;
        let (window, stale_after) = self.liveness();
        let earlier = window.checked_sub(stale_after)?;
        if earlier.is_zero() {
            return None;
        }
        silent.checked_sub(earlier)
    }

    /// How long a plain-HTTP collector may keep silent before it counts as gone, and before it
    /// counts as stale: from the heartbeat interval it was offered, else the server's.
    fn liveness(&self) -> (Duration, Duration) {
        let settings = &self.shared.settings;
        let interval = super::connection::heartbeat_interval(&self.record)
            .unwrap_or(settings.heartbeat_interval);
        (
            interval.saturating_mul(settings.liveness_intervals.max(1)),
            interval.mul_f64(STALE_INTERVALS),
        )
    }

    fn publish(&self, transition: Transition) {
        self.shared.metrics.transition(
            transition.from.map_or("none", State::as_str),
            transition.to.as_str(),
            transition.reason.as_str(),
        );
        // One line per transition at debug: at info a fleet's churn would be the log's bulk
        // (tens of thousands of lines a second in a storm); the history is in the store.
        debug!(
            collector_id = %self.id,
            from = transition.from.map_or("none", |s| s.as_str()),
            to = %transition.to,
            reason = %transition.reason,
            "collector state changed"
        );
        self.shared.bus.publish(Published {
            collector: self.id,
            transition,
        });
    }
}

#[cfg(test)]
mod tests {
    /// Every resident collector holds one, boxed: past 1,024 bytes it takes jemalloc's next size
    /// class, 1,280 bytes.
    #[test]
    fn an_actor_fits_jemallocs_1024_byte_class() {
        assert!(std::mem::size_of::<super::Actor>() <= 1024);
    }
}

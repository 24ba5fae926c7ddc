//! One task per resident collector: it claims the collector's stored record before acting on
//! anything, applies its events in order through `step`, keeps its liveness and eviction timers,
//! holds the outbound path to its connection, hands its changes to the store and tells replies
//! when those changes are committed.

use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::contest::{Contest, Verdict};
use super::facts::{Changed, Facts};
use super::machine::{Collector, Effect, Event, Transition, step};
use super::persist::{Change, Claimed, Confirmation, Epoch, FIRST_EPOCH, Hot};
use super::registry::Shared;
use super::{
    AvailableComponents, CloseReason, CollectorId, Delivery, Outbound, Reassignment, Report, State,
    Transport,
};

/// Small on purpose: a collector sends one message at a time, so a deep mailbox would only hide a
/// stuck actor.
const MAILBOX: usize = 16;

/// How long a new actor keeps trying to claim its record before the collector is told to come
/// back later (UNAVAILABLE): never a blank record in place of one the store could not read.
const LOAD_BUDGET: Duration = Duration::from_secs(2);
const LOAD_FIRST_RETRY: Duration = Duration::from_millis(50);

/// A connection as an actor sees it: which one it is, and how to reach it (WebSocket only; an HTTP
/// collector is only ever answered).
#[derive(Debug, Clone)]
pub struct ConnectionRef {
    pub id: u64,
    pub transport: Transport,
    pub push: Option<mpsc::Sender<Delivery>>,
}

/// Why a connection ended, as its owner saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Closed, failed or timed out: the collector's side or the network.
    Lost,
    /// Closed by us because the server is shutting down.
    ServerClosing,
}

/// A transition as published on the bus, with whose it is.
#[derive(Debug, Clone)]
pub struct Published {
    pub collector: CollectorId,
    pub transition: Transition,
}

/// What a collector's message gets.
#[derive(Debug)]
pub enum Answer {
    /// The reply's content, and, when the message changed the record, the commit it must wait for.
    Reply {
        outbound: Outbound,
        confirm: Option<Confirmation>,
    },
    /// Nothing was acted on; the collector is to try again later.
    Unavailable(Unavailable),
    /// Another live collector holds this uid: the message belongs to a new collector, `to`.
    Reassign {
        to: CollectorId,
        report: Box<Report>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The store cannot answer for this collector now.
    Store,
    /// The server holds as many collectors as it may (`collectors.max_resident`).
    Full,
}

/// What became of a request to forget a collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgotten {
    Done,
    Unknown,
    /// Only a Disconnected collector may be forgotten; this is the state it is in.
    Refused(State),
    Unavailable,
}

/// An actor's answer, or its refusal because it was leaving (the registry asks a new one).
#[derive(Debug)]
pub(super) enum Reached<T> {
    Answered(T),
    Bounced,
}

#[derive(Debug)]
pub(super) enum Command {
    Report {
        connection: ConnectionRef,
        report: Box<Report>,
        reassigned_from: Option<CollectorId>,
        reply: oneshot::Sender<Result<Answer, Box<Report>>>,
    },
    Detached {
        connection_id: u64,
        ending: Ending,
    },
    /// A fleet event; answers whether it was applied (`false` from a leaving actor).
    Apply(Event, oneshot::Sender<bool>),
    View(oneshot::Sender<Collector>),
    Forget(oneshot::Sender<Reached<Forgotten>>),
    /// A reply that could not be confirmed in time: what it carried goes back to the outbox.
    Unsent(Box<Outbound>),
    /// The store refused a write of this epoch: another actor claimed the record.
    Fenced(Epoch),
}

/// Whether the actor goes on after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Leave,
}

#[derive(Debug, Clone, Copy)]
pub struct ActorSettings {
    /// How long a plain-HTTP collector may stay silent before it counts as disconnected.
    pub liveness_window: Duration,
    /// How often a record whose only news is `last_seen` is written: heartbeats are coalesced.
    pub last_seen_interval: Duration,
    /// How long an actor stays resident after its collector disconnected.
    pub grace_period: Duration,
}

/// A cloneable way to reach one collector's actor.
#[derive(Debug, Clone)]
pub struct CollectorHandle {
    tx: mpsc::Sender<Command>,
    /// Tells this actor from a later one for the same collector.
    pub(super) serial: u64,
}

/// The actor is gone: the server is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("collector {0} is no longer running")]
pub struct ActorGone(pub CollectorId);

impl CollectorHandle {
    pub(super) fn spawn(
        id: CollectorId,
        serial: u64,
        shared: Shared,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let actor = Actor {
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
            saved_at: None,
            unconfirmed: false,
            confirm: None,
            contest: Contest::default(),
        };
        tracker.spawn(actor.run(rx, shutdown));
        Self { tx, serial }
    }

    /// Sends a command; an actor that has left hands it back.
    pub(super) async fn send(&self, command: Command) -> Result<(), Command> {
        self.tx.send(command).await.map_err(|e| e.0)
    }
}

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
    shared: Shared,
    /// Transitions not yet handed to the store.
    unsaved: Vec<Transition>,
    /// Facts parts changed since the last write.
    changed: Changed,
    /// The record has news beyond `last_seen` that the store has not had.
    hot: bool,
    /// When the record was last handed to the store.
    saved_at: Option<Instant>,
    /// Writes queued since the last barrier.
    unconfirmed: bool,
    /// The latest barrier: replies wait on it while it has not resolved.
    confirm: Option<Confirmation>,
    contest: Contest,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        if !self.load().await {
            // Nothing was read, so nothing may be written: whoever asked is told to come back.
            self.leave(rx, true).await;
            return;
        }
        // Resident only as long as it is needed: a contact keeps it, none lets it go.
        self.evict_deadline = Some(Instant::now() + self.shared.settings.grace_period);
        loop {
            let (silent, evict) = (self.silent_deadline, self.evict_deadline);
            let flow = tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => Flow::Leave,
                },
                () = sleep_until_opt(silent) => {
                    debug!(collector_id = %self.id, "plain-HTTP collector went silent");
                    self.detach();
                    self.apply(Event::ConnectionLost);
                    Flow::Continue
                }
                () = sleep_until_opt(evict) => self.evict().await,
                () = shutdown.cancelled() => {
                    // Collectors still connected now (HTTP ones, or WebSockets that outlived the
                    // shutdown timeout) are disconnected by the server's end.
                    self.apply(Event::ServerTerminating);
                    self.save().await;
                    return;
                }
            };
            self.save().await;
            if flow == Flow::Leave {
                break;
            }
        }
        self.leave(rx, false).await;
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
                    // the store's alone.
                    record.connected = false;
                    record.labels.clear();
                    self.record = record;
                    self.epoch = epoch;
                    self.stored = true;
                    return true;
                }
                Ok(Ok(None)) => return true,
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
    async fn leave(self, mut rx: mpsc::Receiver<Command>, unloaded: bool) {
        self.shared.roster.remove(self.id, self.serial);
        rx.close();
        while let Some(command) = rx.recv().await {
            match command {
                Command::Report { report, reply, .. } => {
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
            persistence
                .save(Change::Record {
                    hot: Box::new(hot),
                    facts: Box::new(changed.take(&self.record)),
                    epoch: self.epoch,
                    create,
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
        for transition in self.unsaved.drain(..) {
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
            self.confirm = Some(self.shared.persistence.barrier().await);
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
            Command::Report {
                connection,
                report,
                reassigned_from,
                reply,
            } => {
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
                self.hot = true;
                self.apply(event);
                let _ = reply.send(true);
            }
            Command::View(reply) => {
                let _ = reply.send(self.record.clone());
            }
            Command::Forget(reply) => return self.forget(reply).await,
            Command::Unsent(outbound) => {
                let mut kept = *outbound;
                kept.merge(std::mem::take(&mut self.record.outbox));
                self.record.outbox = kept;
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
                    let _ = push.try_send(Delivery::Close(CloseReason::Moved));
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
    }

    fn publish(&self, transition: Transition) {
        metrics::counter!(
            crate::telemetry::metrics::TRANSITIONS,
            "from" => transition.from.map_or("none", State::as_str),
            "to" => transition.to.as_str(),
            "reason" => transition.reason.as_str(),
        )
        .increment(1);
        info!(
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

    async fn on_report(
        &mut self,
        connection: ConnectionRef,
        report: Box<Report>,
        reassigned_from: Option<CollectorId>,
    ) -> Answer {
        if self.contested_by(&connection) == Verdict::Reassign {
            let to = CollectorId::new_v7();
            warn!(collector_id = %self.id, new_id = %to, "two live collectors share this uid; the newer is given a fresh one");
            metrics::counter!(crate::telemetry::metrics::DUPLICATE_UIDS).increment(1);
            self.record.reassigned = Some(Reassignment::Kept {
                to,
                at: SystemTime::now(),
            });
            self.hot = true;
            return Answer::Reassign { to, report };
        }
        if let Some(from) = reassigned_from {
            self.record.reassigned = Some(Reassignment::Given {
                from,
                at: SystemTime::now(),
            });
            self.hot = true;
        }
        let before = Facts::before(&self.record, &report);
        self.hot |= !report.is_heartbeat() || report.capabilities != self.record.capabilities;
        let asks = self.asks_for(&report);
        let transport = connection.transport;
        self.attach(connection);
        let goodbye = report.disconnect;
        self.apply(Event::Report { report, transport });
        if goodbye {
            self.detach();
            self.evict_deadline = Some(Instant::now() + self.shared.settings.grace_period);
        } else if transport == Transport::Http {
            self.silent_deadline = Some(Instant::now() + self.shared.settings.liveness_window);
        }
        self.changed = self.changed.between(&before, &self.record);
        self.record.outbox.merge(asks);
        let outbound = self.record.outbox.take_sendable();
        self.save().await;
        Answer::Reply {
            outbound,
            confirm: self.confirmation().await,
        }
    }

    /// Whether `connection` takes over from a different live WebSocket, or is a second live
    /// collector with the same uid.
    fn contested_by(&mut self, connection: &ConnectionRef) -> Verdict {
        let live_elsewhere = self
            .connection
            .as_ref()
            .is_some_and(|old| old.id != connection.id && old.push.is_some());
        if live_elsewhere && connection.push.is_some() {
            self.contest.claim(Instant::now())
        } else {
            Verdict::Replace
        }
    }

    /// What the reply must ask of the collector: its full state after a gap or on first contact
    /// (unless this report is already complete), and its component set when the hash is unknown.
    fn asks_for(&mut self, report: &Report) -> Outbound {
        let continuous = self
            .record
            .sequence_num
            .is_some_and(|last| report.sequence_num == last.wrapping_add(1));
        let mut asks = Outbound {
            report_full_state: !continuous && !report.is_full_state(),
            ..Outbound::default()
        };
        if let Some(available) = &report.available_components {
            let catalog = &self.shared.catalog;
            let resolved = available.components.clone().or_else(|| {
                self.record
                    .available_components
                    .as_ref()
                    .filter(|known| known.hash == available.hash)
                    .and_then(|known| known.components.clone())
                    .or_else(|| catalog.get(&available.hash))
            });
            match &resolved {
                Some(components) if available.components.is_some() => {
                    catalog.insert(&available.hash, components);
                }
                Some(_) => {}
                None => asks.report_available_components = true,
            }
            self.record.available_components = Some(AvailableComponents {
                hash: available.hash.clone(),
                components: resolved,
            });
        }
        asks
    }

    /// Makes `connection` the collector's current one, closing a different WebSocket it replaces.
    fn attach(&mut self, connection: ConnectionRef) {
        if let Some(old) = self.connection.as_ref()
            && old.id != connection.id
            && let Some(push) = &old.push
        {
            debug!(collector_id = %self.id, old = old.id, new = connection.id, "connection replaced");
            // If the old connection's queue is full it is stuck anyway; its reader will notice.
            let _ = push.try_send(Delivery::Close(CloseReason::Replaced));
        }
        if connection.transport == Transport::WebSocket {
            self.silent_deadline = None;
        }
        self.evict_deadline = None;
        self.connection = Some(connection);
    }

    fn detach(&mut self) {
        self.connection = None;
        self.silent_deadline = None;
    }

    /// Pushes whatever waits to a WebSocket connection; HTTP collectors get it on their next poll.
    fn flush_outbox(&mut self) {
        let Some(push) = self.connection.as_ref().and_then(|c| c.push.clone()) else {
            return;
        };
        while !self.record.outbox.is_empty() {
            let out = self.record.outbox.take_sendable();
            if let Err(err) = push.try_send(Delivery::Send(self.id, Box::new(out))) {
                if matches!(err, mpsc::error::TrySendError::Full(_)) {
                    warn!(collector_id = %self.id, "connection queue full; message kept for later");
                }
                // Kept, not lost: it goes out with the next reply or on the next connection.
                if let Delivery::Send(_, out) = err.into_inner() {
                    self.record.outbox.merge(*out);
                }
                return;
            }
        }
    }
}

impl Report {
    /// Nothing but "still here": no sub-message, no goodbye. Such a report changes only
    /// `last_seen` and the sequence number, which need not be written every time.
    pub(super) fn is_heartbeat(&self) -> bool {
        self.description.is_none()
            && self.health.is_none()
            && self.effective_config.is_none()
            && self.remote_config_status.is_none()
            && self.package_statuses.is_none()
            && self.available_components.is_none()
            && !self.disconnect
    }

    /// Whether this report is a full state. Clients send the description with every full state and
    /// leave out what they do not have yet (Python's first message has no effective configuration
    /// even though it announces one), so demanding every announced part would only make them send
    /// the same message again.
    fn is_full_state(&self) -> bool {
        self.description.is_some()
    }
}

/// Sleeps until `deadline`, or forever when there is none: a timer that may be switched off.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

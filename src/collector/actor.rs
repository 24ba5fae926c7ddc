//! One task per collector: it owns the collector's record, applies its events in order through
//! `step`, keeps its liveness timer, holds the outbound path to its connection and publishes its
//! transitions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use super::bus::Bus;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::machine::{Collector, Effect, Event, HISTORY_KEPT, Transition, step};
use super::persist::{Change, Persistence};
use super::registry::ComponentCatalog;
use super::{
    AvailableComponents, CloseReason, CollectorId, Delivery, Outbound, Report, State, Transport,
};

/// Small on purpose: a collector sends one message at a time, so a deep mailbox would only hide a
/// stuck actor.
const MAILBOX: usize = 16;

/// How long a new actor waits for the store's record of a collector seen before.
const LOAD_BUDGET: Duration = Duration::from_secs(1);

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

#[derive(Debug)]
pub(super) enum Command {
    Report {
        connection: ConnectionRef,
        report: Box<Report>,
        reply: oneshot::Sender<Outbound>,
    },
    Detached {
        connection_id: u64,
        ending: Ending,
    },
    Apply(Event),
    View(oneshot::Sender<Collector>),
    Labels {
        edit: LabelEdit,
        reply: oneshot::Sender<Collector>,
    },
    /// Delete the collector from the store and stop; refused (with its state) unless Disconnected.
    Forget(oneshot::Sender<Result<(), State>>),
}

/// An operator's change to a collector's labels.
#[derive(Debug, Clone)]
pub enum LabelEdit {
    Replace(BTreeMap<String, String>),
    /// `None` removes the label.
    Merge(BTreeMap<String, Option<String>>),
}

/// Whether the actor goes on after a command.
enum Flow {
    Continue,
    Stop,
}

#[derive(Debug, Clone, Copy)]
pub struct ActorSettings {
    /// How long a plain-HTTP collector may stay silent before it counts as disconnected.
    pub liveness_window: Duration,
    /// How often a record whose only news is `last_seen` is written: heartbeats are coalesced.
    pub last_seen_interval: Duration,
}

/// What every actor shares: settings, the component catalog, the transition bus and the store.
#[derive(Clone)]
pub(super) struct Shared {
    pub settings: ActorSettings,
    pub catalog: Arc<ComponentCatalog>,
    pub bus: Bus,
    pub persistence: Persistence,
}

/// A cloneable way to reach one collector's actor.
#[derive(Debug, Clone)]
pub struct CollectorHandle {
    tx: mpsc::Sender<Command>,
}

/// The actor is gone (shut down); the caller's event could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("collector {0} is no longer running")]
pub struct ActorGone(pub CollectorId);

impl CollectorHandle {
    pub(super) fn spawn(
        id: CollectorId,
        shared: Shared,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let actor = Actor {
            record: Collector::new(id),
            connection: None,
            silent_deadline: None,
            shared,
            unsaved: Vec::new(),
            dirty: false,
            saved_at: None,
        };
        tracker.spawn(actor.run(rx, shutdown));
        Self { tx }
    }

    pub(super) async fn send(&self, id: CollectorId, command: Command) -> Result<(), ActorGone> {
        self.tx.send(command).await.map_err(|_| ActorGone(id))
    }

    pub(super) async fn report(
        &self,
        id: CollectorId,
        connection: ConnectionRef,
        report: Report,
    ) -> Result<Outbound, ActorGone> {
        let (reply, answer) = oneshot::channel();
        self.send(
            id,
            Command::Report {
                connection,
                report: Box::new(report),
                reply,
            },
        )
        .await?;
        answer.await.map_err(|_| ActorGone(id))
    }

    pub(super) async fn view(&self, id: CollectorId) -> Result<Collector, ActorGone> {
        self.ask(id, Command::View).await
    }

    /// Sends the command `make` builds around a reply channel, and waits for the reply.
    pub(super) async fn ask<T>(
        &self,
        id: CollectorId,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ActorGone> {
        let (reply, answer) = oneshot::channel();
        self.send(id, make(reply)).await?;
        answer.await.map_err(|_| ActorGone(id))
    }

    pub(super) fn same(&self, other: &CollectorHandle) -> bool {
        self.tx.same_channel(&other.tx)
    }
}

struct Actor {
    record: Collector,
    connection: Option<ConnectionRef>,
    /// When a plain-HTTP collector that has not polled since counts as gone.
    silent_deadline: Option<Instant>,
    shared: Shared,
    /// Transitions not yet handed to the store.
    unsaved: Vec<Transition>,
    /// The record has news beyond `last_seen` that the store has not had.
    dirty: bool,
    /// When the record was last handed to the store.
    saved_at: Option<Instant>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        self.load().await;
        loop {
            let deadline = self.silent_deadline;
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => {
                        if let Flow::Stop = self.handle(command) {
                            self.save().await;
                            self.shared.persistence.save(Change::Forget(self.record.id)).await;
                            break;
                        }
                    }
                    None => break,
                },
                () = sleep_until_opt(deadline) => {
                    debug!(collector_id = %self.record.id, "plain-HTTP collector went silent");
                    self.detach();
                    self.apply(Event::ConnectionLost);
                }
                () = shutdown.cancelled() => {
                    // Collectors still connected now (HTTP ones, or WebSockets that outlived the
                    // shutdown timeout) are disconnected by the server's end.
                    self.apply(Event::ServerTerminating);
                    self.save().await;
                    break;
                }
            }
            self.save().await;
        }
    }

    /// Picks up where the store left a collector seen before, so its history continues and its
    /// return counts as `connection_restored`, not as a first contact.
    async fn load(&mut self) {
        let id = self.record.id;
        let records = self.shared.persistence.records();
        // The collector waits for this; a store that does not answer soon must not stall it.
        let loaded = tokio::time::timeout(LOAD_BUDGET, records.load(id, HISTORY_KEPT))
            .await
            .unwrap_or_else(|_| {
                Err(super::persist::LoadError(format!(
                    "no answer within {LOAD_BUDGET:?}"
                )))
            });
        match loaded {
            Ok(Some(mut stored)) => {
                // Whatever the store says, this actor holds no connection yet.
                stored.connected = false;
                self.record = stored;
            }
            Ok(None) => {}
            Err(err) => {
                warn!(collector_id = %id, %err, "starting from an empty record");
            }
        }
    }

    /// Hands transitions and, when it has news (or `last_seen` is old in the store), the record
    /// to the write-behind batcher. Waits only when the store queue is full.
    async fn save(&mut self) {
        let persistence = &self.shared.persistence;
        for transition in self.unsaved.drain(..) {
            persistence
                .save(Change::Transition {
                    collector: self.record.id,
                    transition,
                })
                .await;
        }
        let touch_due = self
            .saved_at
            .is_none_or(|at| at.elapsed() >= self.shared.settings.last_seen_interval);
        if self.record.state.is_some() && (self.dirty || touch_due) {
            let record = Collector {
                history: Vec::new(),
                outbox: super::Outbound::default(),
                ..self.record.clone()
            };
            persistence.save(Change::Record(Box::new(record))).await;
            self.dirty = false;
            self.saved_at = Some(Instant::now());
        }
    }

    fn handle(&mut self, command: Command) -> Flow {
        match command {
            Command::Report {
                connection,
                report,
                reply,
            } => {
                self.dirty |=
                    !report.is_heartbeat() || report.capabilities != self.record.capabilities;
                let answer = self.on_report(connection, *report);
                // The connection may have gone while we worked; its loss arrives as Detached.
                let _ = reply.send(answer);
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
            Command::Apply(event) => {
                self.dirty = true;
                self.apply(event);
            }
            Command::View(reply) => {
                let _ = reply.send(self.record.clone());
            }
            Command::Labels { edit, reply } => {
                match edit {
                    LabelEdit::Replace(labels) => self.record.labels = labels,
                    LabelEdit::Merge(changes) => {
                        for (key, value) in changes {
                            match value {
                                Some(value) => self.record.labels.insert(key, value),
                                None => self.record.labels.remove(&key),
                            };
                        }
                    }
                }
                self.dirty = true;
                let _ = reply.send(self.record.clone());
            }
            Command::Forget(reply) => {
                let state = self.record.state.unwrap_or(State::Disconnected);
                if self.record.connected || state != State::Disconnected {
                    let _ = reply.send(Err(state));
                } else {
                    let _ = reply.send(Ok(()));
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    }

    /// Runs the rule and carries out its effects.
    fn apply(&mut self, event: Event) {
        for effect in step(&mut self.record, event, SystemTime::now()) {
            match effect {
                Effect::Transitioned(transition) => {
                    self.dirty = true;
                    self.unsaved.push(transition.clone());
                    self.publish(transition);
                }
                Effect::Deliver => self.flush_outbox(),
                Effect::Refused(why) => {
                    debug!(collector_id = %self.record.id, why, "event refused");
                }
            }
        }
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
            collector_id = %self.record.id,
            from = transition.from.map_or("none", |s| s.as_str()),
            to = %transition.to,
            reason = %transition.reason,
            "collector state changed"
        );
        self.shared.bus.publish(Published {
            collector: self.record.id,
            transition,
        });
    }

    fn on_report(&mut self, connection: ConnectionRef, report: Report) -> Outbound {
        let asks = self.asks_for(&report);
        let transport = connection.transport;
        self.attach(connection);
        let goodbye = report.disconnect;
        self.apply(Event::Report {
            report: Box::new(report),
            transport,
        });
        if goodbye {
            self.detach();
        } else if transport == Transport::Http {
            self.silent_deadline = Some(Instant::now() + self.shared.settings.liveness_window);
        }
        self.record.outbox.merge(asks);
        self.record.outbox.take_sendable()
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
            debug!(collector_id = %self.record.id, old = old.id, new = connection.id, "connection replaced");
            // If the old connection's queue is full it is stuck anyway; its reader will notice.
            let _ = push.try_send(Delivery::Close(CloseReason::Replaced));
        }
        if connection.transport == Transport::WebSocket {
            self.silent_deadline = None;
        }
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
            if let Err(err) = push.try_send(Delivery::Send(self.record.id, Box::new(out))) {
                if matches!(err, mpsc::error::TrySendError::Full(_)) {
                    warn!(collector_id = %self.record.id, "connection queue full; message kept for later");
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
    fn is_heartbeat(&self) -> bool {
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

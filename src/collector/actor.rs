//! One task per collector: it owns the collector's record, applies its events in order, keeps its
//! liveness timer and holds the outbound path to its connection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::registry::ComponentCatalog;
use super::{
    AvailableComponents, Capabilities, CloseReason, CollectorId, ConfigFiles, Delivery,
    Description, Health, Outbound, PackageStatuses, RemoteConfigStatus, Report, Transport,
};

/// Small on purpose: a collector sends one message at a time, so a deep mailbox would only hide a
/// stuck actor.
const MAILBOX: usize = 16;

/// A connection as an actor sees it: which one it is, and how to reach it (WebSocket only; an HTTP
/// collector is only ever answered).
#[derive(Debug, Clone)]
pub struct ConnectionRef {
    pub id: u64,
    pub transport: Transport,
    pub push: Option<mpsc::Sender<Delivery>>,
}

#[derive(Debug)]
pub(super) enum Command {
    Report {
        connection: ConnectionRef,
        report: Box<Report>,
        reply: oneshot::Sender<Outbound>,
    },
    /// The connection closed or failed (WebSocket) without a goodbye.
    Detached {
        connection_id: u64,
    },
    Push(Outbound),
    View(oneshot::Sender<CollectorView>),
}

#[derive(Debug, Clone, Copy)]
pub struct ActorSettings {
    /// How long a plain-HTTP collector may stay silent before it counts as disconnected.
    pub liveness_window: Duration,
}

/// The record of one collector: every fact it reported, and its connection.
#[derive(Debug, Clone, Serialize)]
pub struct CollectorView {
    pub id: CollectorId,
    pub connected: bool,
    pub transport: Option<Transport>,
    pub connected_since: Option<SystemTime>,
    pub last_seen: Option<SystemTime>,
    pub capabilities: Capabilities,
    pub sequence_num: Option<u64>,
    pub description: Option<Description>,
    pub health: Option<Health>,
    pub effective_config: Option<ConfigFiles>,
    pub remote_config_status: Option<RemoteConfigStatus>,
    pub package_statuses: Option<PackageStatuses>,
    #[serde(skip)]
    pub available_components: Option<AvailableComponents>,
    /// Messages waiting for an HTTP collector's next poll.
    #[serde(skip)]
    pub pending: Outbound,
}

impl CollectorView {
    fn new(id: CollectorId) -> Self {
        Self {
            id,
            connected: false,
            transport: None,
            connected_since: None,
            last_seen: None,
            capabilities: Capabilities::default(),
            sequence_num: None,
            description: None,
            health: None,
            effective_config: None,
            remote_config_status: None,
            package_statuses: None,
            available_components: None,
            pending: Outbound::default(),
        }
    }

    /// Takes in one report and says what the collector must be asked in return.
    fn absorb(&mut self, report: Report, catalog: &ComponentCatalog) -> Outbound {
        let continuous = self
            .sequence_num
            .is_some_and(|last| report.sequence_num == last.wrapping_add(1));
        let mut asks = Outbound {
            report_full_state: !continuous && !report.is_full_state(),
            ..Outbound::default()
        };
        self.sequence_num = Some(report.sequence_num);
        self.capabilities = report.capabilities;
        if let Some(description) = report.description {
            self.description = Some(description);
        }
        if let Some(health) = report.health {
            self.health = Some(health);
        }
        if let Some(config) = report.effective_config {
            self.effective_config = Some(config);
        }
        if let Some(status) = report.remote_config_status {
            self.remote_config_status = Some(status);
        }
        if let Some(statuses) = report.package_statuses {
            self.package_statuses = Some(statuses);
        }
        if let Some(available) = report.available_components {
            let resolved = available.components.clone().or_else(|| {
                self.available_components
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
            self.available_components = Some(AvailableComponents {
                hash: available.hash,
                components: resolved,
            });
        }
        asks
    }
}

impl Report {
    /// Whether this report carries everything its capabilities promise, so that asking for the
    /// full state again would only cost the collector a needless message.
    fn is_full_state(&self) -> bool {
        let caps = self.capabilities;
        let promised = |bit, present: bool| !caps.has(bit) || present;
        self.description.is_some()
            && promised(Capabilities::REPORTS_HEALTH, self.health.is_some())
            && promised(
                Capabilities::REPORTS_EFFECTIVE_CONFIG,
                self.effective_config.is_some(),
            )
            && promised(
                Capabilities::REPORTS_REMOTE_CONFIG,
                self.remote_config_status.is_some(),
            )
            && promised(
                Capabilities::REPORTS_PACKAGE_STATUSES,
                self.package_statuses.is_some(),
            )
            && promised(
                Capabilities::REPORTS_AVAILABLE_COMPONENTS,
                self.available_components.is_some(),
            )
    }
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
        settings: ActorSettings,
        catalog: Arc<ComponentCatalog>,
        shutdown: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let (tx, rx) = mpsc::channel(MAILBOX);
        let actor = Actor {
            record: CollectorView::new(id),
            connection: None,
            silent_deadline: None,
            settings,
            catalog,
        };
        tracker.spawn(actor.run(rx, shutdown));
        Self { tx }
    }

    async fn send(&self, id: CollectorId, command: Command) -> Result<(), ActorGone> {
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

    pub(super) async fn detached(&self, id: CollectorId, connection_id: u64) {
        // A gone actor has nothing left to detach from.
        let _ = self.send(id, Command::Detached { connection_id }).await;
    }

    pub(super) async fn push(&self, id: CollectorId, outbound: Outbound) -> Result<(), ActorGone> {
        self.send(id, Command::Push(outbound)).await
    }

    pub(super) async fn view(&self, id: CollectorId) -> Result<CollectorView, ActorGone> {
        let (reply, answer) = oneshot::channel();
        self.send(id, Command::View(reply)).await?;
        answer.await.map_err(|_| ActorGone(id))
    }
}

struct Actor {
    record: CollectorView,
    connection: Option<ConnectionRef>,
    /// When a plain-HTTP collector that has not polled since counts as gone.
    silent_deadline: Option<Instant>,
    settings: ActorSettings,
    catalog: Arc<ComponentCatalog>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        loop {
            let deadline = self.silent_deadline;
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                () = sleep_until_opt(deadline) => {
                    debug!(collector_id = %self.record.id, "plain-HTTP collector went silent");
                    self.disconnect();
                }
                () = shutdown.cancelled() => break,
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Report {
                connection,
                report,
                reply,
            } => {
                let answer = self.on_report(connection, *report);
                // The connection may have gone while we worked; its loss is handled by Detached.
                let _ = reply.send(answer);
                self.flush_pending();
            }
            Command::Detached { connection_id } => {
                if self
                    .connection
                    .as_ref()
                    .is_some_and(|c| c.id == connection_id)
                {
                    self.disconnect();
                }
            }
            Command::Push(outbound) => {
                self.record.pending.merge(outbound);
                self.flush_pending();
            }
            Command::View(reply) => {
                let _ = reply.send(self.record.clone());
            }
        }
    }

    fn on_report(&mut self, connection: ConnectionRef, report: Report) -> Outbound {
        let now = SystemTime::now();
        self.attach(connection);
        self.record.last_seen = Some(now);
        if !self.record.connected {
            self.record.connected = true;
            self.record.connected_since = Some(now);
        }
        let goodbye = report.disconnect;
        let asks = self.record.absorb(report, &self.catalog);
        if goodbye {
            self.disconnect();
        } else if self.record.transport == Some(Transport::Http) {
            self.silent_deadline = Some(Instant::now() + self.settings.liveness_window);
        }
        self.record.pending.merge(asks);
        self.record.pending.take_sendable()
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
        self.record.transport = Some(connection.transport);
        if connection.transport == Transport::WebSocket {
            self.silent_deadline = None;
        }
        self.connection = Some(connection);
    }

    fn disconnect(&mut self) {
        self.record.connected = false;
        self.connection = None;
        self.silent_deadline = None;
    }

    /// Pushes whatever is pending to a WebSocket connection; HTTP collectors get it on their next poll.
    fn flush_pending(&mut self) {
        let Some(push) = self.connection.as_ref().and_then(|c| c.push.clone()) else {
            return;
        };
        while !self.record.pending.is_empty() {
            let out = self.record.pending.take_sendable();
            if let Err(err) = push.try_send(Delivery::Send(self.record.id, out)) {
                if matches!(err, mpsc::error::TrySendError::Full(_)) {
                    warn!(collector_id = %self.record.id, "connection queue full; message kept for later");
                }
                // Kept, not lost: it goes out with the next reply or on the next connection.
                if let Delivery::Send(_, out) = err.into_inner() {
                    self.record.pending.merge(out);
                }
                return;
            }
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none: a timer that may be switched off.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

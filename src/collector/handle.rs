//! How the rest of the server reaches a collector's actor: the handle, the commands it carries, and
//! what the actor answers with.

use std::time::Duration;

use futures_channel::mpsc;
use tokio::sync::oneshot;

use super::machine::{Collector, Event, Transition};
use super::persist::{Confirmation, Epoch};
use std::sync::{Arc, Mutex, PoisonError};

use super::{ClientCertificate, CollectorId, Delivery, Outbound, Report, State, Transport};

/// A connection as an actor sees it: which one it is, and how to reach it (WebSocket only; an HTTP
/// collector is only ever answered).
#[derive(Debug, Clone)]
pub struct ConnectionRef {
    pub id: u64,
    pub transport: Transport,
    pub push: Option<PushTx>,
    /// The verified client certificate the connection was made with (mutual TLS).
    pub client_certificate: Option<Arc<ClientCertificate>>,
}

/// A WebSocket connection's queue of pushes (ADR 0071): bounded, and an actor never waits on it
/// (when it is full the offers stay in the collector's outbox and go with the next message).
/// Every copy of a connection's handle shares its one sender: futures-channel grants each sender
/// a slot beyond the queue's room, so separate senders would never find it full; and a copy is a
/// count, where a sender's clone is an allocation.
#[derive(Debug, Clone)]
pub struct PushTx(Arc<Mutex<mpsc::Sender<Box<Delivery>>>>);

pub type PushRx = mpsc::Receiver<Box<Delivery>>;

impl PushTx {
    /// Queues `delivery`; a full or closed queue hands it back.
    pub fn try_push(
        &self,
        delivery: Box<Delivery>,
    ) -> Result<(), mpsc::TrySendError<Box<Delivery>>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_send(delivery)
    }
}

/// A push queue with room for `room` deliveries (and one more, its sender's own).
pub fn push_queue(room: usize) -> (PushTx, PushRx) {
    let (tx, rx) = mpsc::channel(room);
    (PushTx(Arc::new(Mutex::new(tx))), rx)
}

/// An actor's mailbox (ADR 0071). Unbounded: every command's sender either awaits its answer or
/// is a connection's one notice of its end, so the queue is bounded by the senders themselves.
pub(super) type Mailbox = mpsc::UnboundedReceiver<Box<Command>>;

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
// The reply is what nearly every message gets: boxing it would cost an allocation per message to
// shrink the rare variants.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    /// The reply's content, and, when the message changed the record, the commit it must wait for.
    Reply {
        outbound: Box<Outbound>,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// A collector's message for its actor, and where the answer goes.
#[derive(Debug)]
pub(super) struct Reporting {
    pub connection: ConnectionRef,
    pub report: Box<Report>,
    pub reassigned_from: Option<CollectorId>,
    pub reply: oneshot::Sender<Result<Answer, Box<Report>>>,
}

/// What an actor is asked. Large payloads are boxed: a mailbox allocates room for 32 commands
/// up front, for every resident collector.
#[derive(Debug)]
pub(super) enum Command {
    Report(Box<Reporting>),
    Detached {
        connection_id: u64,
        ending: Ending,
    },
    /// A fleet event; answers whether it was applied (`false` from a leaving actor).
    Apply(Box<Event>, oneshot::Sender<bool>),
    View(oneshot::Sender<Collector>),
    Forget(oneshot::Sender<Reached<Forgotten>>),
    /// A reply that could not be confirmed in time: what it carried goes back to the outbox.
    Unsent(Box<Outbound>),
    /// The store refused a write of this epoch: another actor claimed the record.
    Fenced(Epoch),
}

#[derive(Debug, Clone, Copy)]
pub struct ActorSettings {
    /// The heartbeat interval collectors are expected to keep, unless offered their own.
    pub heartbeat_interval: Duration,
    /// How many heartbeat intervals a plain-HTTP collector may stay silent before it counts as
    /// disconnected (it counts as stale after 1.5).
    pub liveness_intervals: u32,
    /// How often a record whose only news is `last_seen` is written: heartbeats are coalesced.
    pub last_seen_interval: Duration,
    /// How long an actor stays resident after its collector disconnected.
    pub grace_period: Duration,
    /// The largest message a collector is sent (`opamp.max_message_bytes`): offers are fitted
    /// under it.
    pub max_message_bytes: usize,
}

/// A cloneable way to reach one collector's actor.
#[derive(Debug, Clone)]
pub struct CollectorHandle {
    tx: mpsc::UnboundedSender<Box<Command>>,
    /// Tells this actor from a later one for the same collector.
    pub(super) serial: u64,
}

/// The actor is gone: the server is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("collector {0} is no longer running")]
pub struct ActorGone(pub CollectorId);

impl CollectorHandle {
    /// A new actor's handle and the mailbox it reads.
    pub(super) fn open(serial: u64) -> (Self, Mailbox) {
        let (tx, rx) = mpsc::unbounded();
        (Self { tx, serial }, rx)
    }

    /// Sends a command; an actor that has left hands it back.
    pub(super) fn send(&self, command: Command) -> Result<(), Command> {
        self.tx
            .unbounded_send(Box::new(command))
            .map_err(|e| *e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::CloseReason;

    fn close() -> Delivery {
        Delivery::Close(CloseReason::Replaced)
    }

    /// What `flush_outbox` relies on: the copies of a connection's handle share one sender, so
    /// the queue is found full (its room and the sender's own slot used) until the session
    /// reads; a closed queue hands the delivery back.
    #[test]
    fn a_reused_sender_finds_the_push_queue_full_until_it_is_read() {
        let (tx, mut rx) = push_queue(2);
        let mut sent = 0;
        let refused = loop {
            // A fresh copy each time, as each message's `ConnectionRef` carries one.
            match tx.clone().try_push(Box::new(close())) {
                Ok(()) => sent += 1,
                Err(err) => break err,
            }
            assert!(sent <= 3, "the queue never filled");
        };
        assert!(refused.is_full());
        assert_eq!(sent, 3, "room for two, and the sender's own slot");
        assert!(rx.try_recv().is_ok());
        assert!(
            tx.try_push(Box::new(close())).is_ok(),
            "a read makes room again"
        );
        rx.close();
        let refused = tx
            .try_push(Box::new(close()))
            .expect_err("a closed queue takes nothing");
        assert!(!refused.is_full());
        assert!(matches!(
            *refused.into_inner(),
            Delivery::Close(CloseReason::Replaced)
        ));
    }
}

//! The WebSocket transport: one task per connection, reading collectors' messages in order,
//! writing replies and pushes, keeping the connection alive with pings, and closing it properly.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, timeout};
use tracing::{Instrument, debug, field, info_span, warn};

use super::identity::WireUid;
use super::keepalive::{self, Due};
use super::{Opamp, OpampError, Reply, frame, report};
use crate::collector::handle::{self, ConnectionRef, PushRx, PushTx};
use crate::collector::{
    ClientCertificate, CloseReason, CollectorId, Delivery, Outbound, Transport,
};
use crate::net::Connection;
use crate::net::budget::{Meter, OverBudget};

mod handshake;
mod socket;
mod wire;

use socket::{Frame, Message, ReadError};

/// A collector's connection once upgraded.
type Socket = socket::Socket<TokioIo<hyper::upgrade::Upgraded>>;

/// Pushes waiting for one connection; an actor never blocks on it (it keeps the message instead).
const PUSH_QUEUE: usize = 8;
/// How long we wait for the peer's Close after sending ours before dropping TCP.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(3);

pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

pub async fn upgrade(
    State(opamp): State<Arc<Opamp>>,
    socket: Option<Extension<Arc<Connection>>>,
    upgrade: handshake::Upgrade,
) -> Response {
    // The first message is due this long after the upgrade was asked for.
    let first_message_by = Instant::now() + opamp.config.ws_handshake_timeout;
    let connection_id = opamp.connection_id();
    let span = info_span!(
        "opamp_connection",
        transport = "websocket",
        connection = connection_id,
        collector_id = field::Empty
    );
    let response = upgrade.response();
    let on_upgrade = upgrade.on_upgrade;
    let sessions = opamp.sessions.clone();
    let opamp = Arc::clone(&opamp);
    // One task for the connection's life: it waits for hyper to hand the connection over (once
    // the 101 is written), then serves it.
    sessions.spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    debug!(%error, "the upgrade did not complete");
                    return;
                }
            };
            let client_certificate = socket
                .as_ref()
                .and_then(|Extension(socket)| socket.client_certificate());
            // From here on the session reads whole messages itself: every byte read is charged
            // to the budget as it arrives, so a message past it is refused while still arriving.
            let meter = socket.map(|Extension(socket)| {
                let meter = Meter::new(&opamp.budget);
                socket.meter(meter.clone());
                meter
            });
            let limit = opamp.config.max_message_bytes;
            // Boxed, like its steps below: a task's future is as large as its largest await, for
            // as long as the connection lives.
            let session = Box::new(Session::new(
                opamp,
                Socket::new(TokioIo::new(upgraded), limit),
                connection_id,
                first_message_by,
                meter,
                client_certificate,
            ));
            session.run().await;
        }
        .instrument(span),
    );
    response
}

struct Session {
    opamp: Arc<Opamp>,
    socket: Socket,
    connection_id: u64,
    push_tx: PushTx,
    push_rx: PushRx,
    /// Collectors served on this connection (a proxy may carry several), in their wire form.
    collectors: Served,
    /// Until the first message arrives, when it is due.
    first_message_by: Option<Instant>,
    /// The socket's meter: released after each message, which then holds its own bytes.
    meter: Option<Meter>,
    /// The verified client certificate of the socket (mutual TLS).
    client_certificate: Option<Arc<ClientCertificate>>,
    /// Offers a write failed to deliver, given back to their collectors' outboxes at the end.
    unwritten: Vec<(CollectorId, Outbound)>,
}

/// The collectors one connection serves: nearly always one, so a vector grown one at a time (a
/// map's smallest table holds several for the connection's life).
#[derive(Default)]
struct Served(Vec<WireUid>);

impl Served {
    fn get(&self, id: CollectorId) -> Option<&WireUid> {
        self.0.iter().find(|wire| wire.id == id)
    }

    /// Keeps `wire` for its collector, in a copy of its own (not a slice of its message).
    fn insert(&mut self, wire: WireUid) {
        if let Some(known) = self.0.iter_mut().find(|known| known.id == wire.id) {
            if known.bytes != wire.bytes {
                *known = wire.detached();
            }
        } else {
            self.0.reserve_exact(self.0.len().max(1));
            self.0.push(wire.detached());
        }
    }

    fn ids(&self) -> impl Iterator<Item = CollectorId> + '_ {
        self.0.iter().map(|wire| wire.id)
    }
}

/// What woke a session's loop.
enum Wake {
    Shutdown,
    Received(Option<Result<Message, ReadError>>),
    Pushed(Box<Delivery>),
    Timer(Due),
}

/// How a session ends: who closes, and with what.
enum Ending {
    /// The peer closed or the connection failed; nothing more to send.
    ByPeer,
    /// The peer stopped reading: nothing more can be sent, not even a Close.
    Stalled,
    /// We close, with this code and reason.
    Close(u16, &'static str),
    /// The peer closed with a Close frame (and this code): ours answers it.
    Answer(Option<u16>),
}

impl Session {
    fn new(
        opamp: Arc<Opamp>,
        socket: Socket,
        connection_id: u64,
        first_message_by: Instant,
        meter: Option<Meter>,
        client_certificate: Option<Arc<ClientCertificate>>,
    ) -> Self {
        let (push_tx, push_rx) = handle::push_queue(PUSH_QUEUE);
        Self {
            opamp,
            socket,
            connection_id,
            push_tx,
            push_rx,
            collectors: Served::default(),
            first_message_by: Some(first_message_by),
            meter,
            client_certificate,
            unwritten: Vec::new(),
        }
    }

    async fn run(mut self: Box<Self>) {
        debug!("WebSocket connection opened");
        self.opamp.ws_connections.increment(1);
        let ending = Box::pin(self.serve()).await;
        self.opamp.ws_connections.decrement(1);
        // Boxed: the ending's awaits would otherwise size the task for the connection's whole life.
        Box::pin(self.end(ending)).await;
    }

    /// Closes the connection as `ending` says, gives back what was never written, and tells the
    /// collectors' actors they are detached.
    async fn end(&mut self, ending: Ending) {
        let why = if matches!(ending, Ending::Close(close_code::GOING_AWAY, _)) {
            handle::Ending::ServerClosing
        } else {
            handle::Ending::Lost
        };
        match ending {
            Ending::Close(code, reason) => Box::pin(self.close(code, reason)).await,
            Ending::Answer(code) => {
                // RFC 6455, 5.5.1: the Close is answered, echoing its code.
                let code = code.unwrap_or(close_code::NORMAL);
                Box::pin(self.write(&Frame::Close(code, "").encode())).await;
            }
            Ending::ByPeer => Box::pin(self.drain()).await,
            Ending::Stalled => {}
        }
        // Offers that were never written go back to their outboxes before the collectors are
        // detached: they go out on the next connection. Pushes still queued were never written
        // either; closing the queue first makes later ones stay in the actor.
        self.push_rx.close();
        // After the close, `recv` still yields every delivery that got in before it.
        while let Ok(delivery) = self.push_rx.recv().await {
            if let Delivery::Send(id, outbound) = *delivery {
                self.unwritten.push((id, outbound.into_offers()));
            }
        }
        for (id, outbound) in std::mem::take(&mut self.unwritten) {
            self.opamp.registry.unsent(id, outbound);
        }
        for id in self.collectors.ids() {
            self.opamp.registry.detached(id, self.connection_id, why);
        }
        debug!("WebSocket connection closed");
    }

    async fn serve(&mut self) -> Ending {
        let mut next_ping = Instant::now() + self.opamp.config.ws_ping_interval;
        let mut pong_by: Option<Instant> = None;
        // One sleep for the three timers, not one each: this loop's state is held for the
        // connection's whole life. Reset only when the deadline moves, so that a message does
        // not take a timer out of the wheel and put it back.
        let sleep = tokio::time::sleep_until(next_ping);
        tokio::pin!(sleep);
        loop {
            // In a block of its own: the deadline is not kept through the wait.
            let due = {
                let (at, due) = keepalive::due(self.first_message_by, pong_by, next_ping);
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
                due
            };
            let wake = tokio::select! {
                () = self.opamp.shutdown.cancelled() => Wake::Shutdown,
                received = self.socket.recv() => Wake::Received(received),
                Ok(delivery) = self.push_rx.recv() => Wake::Pushed(delivery),
                () = &mut sleep => Wake::Timer(due),
            };
            // Handled in a box of its own, outside the wait: what handling needs is then not
            // part of this loop's state, which every connection holds for its whole life.
            if let Some(ending) = Box::pin(self.on_wake(wake, &mut next_ping, &mut pong_by)).await {
                return ending;
            }
        }
    }

    /// Acts on what woke the session; `Some` ends it.
    async fn on_wake(
        &mut self,
        wake: Wake,
        next_ping: &mut Instant,
        pong_by: &mut Option<Instant>,
    ) -> Option<Ending> {
        match wake {
            Wake::Shutdown => Some(Ending::Close(
                close_code::GOING_AWAY,
                "server shutting down",
            )),
            Wake::Received(received) => match self.received(received) {
                None => Some(Ending::ByPeer),
                Some(Ok(Message::Close(code))) => Some(Ending::Answer(code)),
                Some(Err(err)) => Some(read_error(err)),
                Some(Ok(Message::Binary(data))) => {
                    self.first_message_by = None;
                    self.on_message(data).await
                }
                Some(Ok(Message::Text)) => Some(Ending::Close(
                    close_code::UNSUPPORTED_DATA,
                    "OpAMP uses binary messages",
                )),
                Some(Ok(Message::Pong)) => {
                    *pong_by = None;
                    None
                }
                Some(Ok(Message::Ping(data))) => self.write(&Frame::Pong(&data).encode()).await,
            },
            Wake::Pushed(delivery) => match *delivery {
                Delivery::Send(id, outbound) => self.push(id, outbound).await,
                Delivery::Close(CloseReason::Replaced) => Some(Ending::Close(
                    close_code::POLICY_VIOLATION,
                    "replaced by a newer connection",
                )),
                Delivery::Close(CloseReason::Moved) => Some(Ending::Close(
                    close_code::TRY_AGAIN_LATER,
                    "reconnect: the record is held elsewhere",
                )),
            },
            Wake::Timer(Due::Ping) => {
                if let Some(ending) = self.write(&Frame::Ping.encode()).await {
                    return Some(ending);
                }
                let now = Instant::now();
                *pong_by = Some(now + self.opamp.config.ws_pong_timeout);
                *next_ping = now + self.opamp.config.ws_ping_interval;
                None
            }
            Wake::Timer(Due::FirstMessage) => {
                debug!("no first message in time");
                Some(Ending::Close(
                    close_code::POLICY_VIOLATION,
                    "no message within the handshake timeout",
                ))
            }
            Wake::Timer(Due::Pong) => {
                debug!("no pong in time");
                Some(Ending::Close(
                    close_code::INTERNAL_ERROR,
                    "keep-alive ping timed out",
                ))
            }
        }
    }

    /// Writes what an actor pushed; what could not be written goes back to its outbox at the end.
    async fn push(&mut self, id: CollectorId, outbound: Box<Outbound>) -> Option<Ending> {
        let uid = self.collectors.get(id).map_or_else(
            || Bytes::copy_from_slice(id.0.as_bytes()),
            |wire| wire.bytes.clone(),
        );
        let offered = outbound.offers();
        let message = report::to_server_to_agent(uid, *outbound, self.opamp.capabilities);
        // The wake is handled in a box of its own, so the send lives in it.
        let ending = self.send(&Reply::new(message)).await;
        if ending.is_some() {
            self.unwritten.push((id, offered));
        }
        ending
    }

    /// A frame has been read whole: the bytes the socket's meter charged for it are given back
    /// (the message, if kept, takes its own hold).
    fn received(
        &self,
        received: Option<Result<Message, ReadError>>,
    ) -> Option<Result<Message, ReadError>> {
        if let Some(meter) = &self.meter {
            meter.message_done();
        }
        received
    }

    /// Handles one collector message; `Some` ends the session.
    async fn on_message(&mut self, data: Bytes) -> Option<Ending> {
        let mut held = self.opamp.budget.hold();
        if held.cover(data.len()).is_err() {
            // Nothing was acted on: the collector may send it again on this connection.
            let retry_after = super::jittered(self.opamp.config.retry_after);
            self.opamp
                .metrics
                .counter(
                    crate::telemetry::metrics::REJECTED,
                    &[("reason", "over_budget")],
                )
                .increment(1);
            drop(data);
            return self
                .send(&Reply::new(report::unavailable(Bytes::new(), retry_after)))
                .await;
        }
        let connection = ConnectionRef {
            id: self.connection_id,
            transport: Transport::WebSocket,
            push: Some(self.push_tx.clone()),
            client_certificate: self.client_certificate.clone(),
        };
        let mut offered = None;
        let reply = match self
            .opamp
            .process(frame::strip_header(data), connection)
            .await
        {
            Ok(processed) => {
                let collector = processed.collector;
                offered = Some((collector.id, processed.offered));
                self.collectors.insert(collector);
                processed.reply
            }
            // A malformed message gets BAD_REQUEST; the connection stays usable.
            Err(OpampError::BadRequest { uid, message }) => {
                debug!(%message, "malformed message");
                Reply::new(report::bad_request(uid, message))
            }
            // Nothing was acted on: the collector is told when to try again, and may, on this
            // connection.
            Err(OpampError::Unavailable { uid, retry_after }) => {
                Reply::new(report::unavailable(uid, retry_after))
            }
            Err(_) => {
                return Some(Ending::Close(
                    close_code::GOING_AWAY,
                    "server shutting down",
                ));
            }
        };
        let ending = self.send(&reply).await;
        if ending.is_some()
            && let Some(offered) = offered
        {
            self.unwritten.push(offered);
        }
        ending
    }

    async fn send(&mut self, reply: &Reply) -> Option<Ending> {
        if self.opamp.check_outgoing(reply).is_err() {
            return None;
        }
        let framed = wire::binary(frame::HEADER_LEN + reply.len, |out| {
            frame::put_with_header(&reply.message, out);
        });
        self.write(&framed).await
    }

    /// Sends one encoded frame, waiting at most the write timeout for a peer that does not read.
    async fn write(&mut self, frame: &[u8]) -> Option<Ending> {
        match timeout(self.opamp.config.ws_write_timeout, self.socket.send(frame)).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(Ending::ByPeer),
            Err(_) => {
                debug!("peer stopped reading: send timed out");
                self.opamp
                    .metrics
                    .counter(
                        crate::telemetry::metrics::SOCKETS_TIMED_OUT,
                        &[("listener", "opamp"), ("stage", "ws_write")],
                    )
                    .increment(1);
                Some(Ending::Stalled)
            }
        }
    }

    /// Sends our Close and waits, briefly, for the peer's, as RFC 6455 asks.
    async fn close(&mut self, code: u16, reason: &'static str) {
        if self
            .write(&Frame::Close(code, reason).encode())
            .await
            .is_none()
        {
            self.drain().await;
        }
    }

    /// Reads until the peer's Close has been seen and ours flushed, or the handshake times out.
    async fn drain(&mut self) {
        let drained = timeout(CLOSE_HANDSHAKE, async {
            while let Some(Ok(_)) = self.socket.recv().await {}
        })
        .await;
        if drained.is_err() {
            warn!("peer did not complete the close handshake in time");
        }
    }
}

/// A read error: an over-limit message gets 1009, a broken frame 1002; anything else means the
/// connection is gone.
fn read_error(err: ReadError) -> Ending {
    match err {
        ReadError::Io(io)
            if io
                .get_ref()
                .is_some_and(<dyn std::error::Error + Send + Sync>::is::<OverBudget>) =>
        {
            Ending::Close(
                close_code::TRY_AGAIN_LATER,
                "over the server's message budget; try again later",
            )
        }
        ReadError::TooBig { .. } => Ending::Close(close_code::MESSAGE_TOO_BIG, "message too big"),
        ReadError::Protocol(what) => {
            debug!(what, "WebSocket protocol error");
            Ending::Close(close_code::PROTOCOL_ERROR, what)
        }
        ReadError::Io(err) => {
            debug!(error = %err, "WebSocket read failed");
            Ending::ByPeer
        }
    }
}

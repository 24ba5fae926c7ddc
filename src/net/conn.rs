//! One accepted socket: its place among the listener's connections, the clock of what it is doing
//! (the pure rule that says when it has taken too long), and the byte stream that keeps that clock.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::budget::Meter;
use crate::collector::ClientCertificate;

/// Marks "never" in the atomics below.
const UNSET: u64 = u64::MAX;

/// The stage a connection is in when nothing is being handled, each with its own allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// From accept (TLS handshake included) until the first request's head is read, or from the
    /// first byte of a later request until its head is read.
    Header,
    /// Between requests on a kept-alive connection, before the next one's first byte.
    Idle,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Header => "header_read",
            Stage::Idle => "idle",
        }
    }
}

/// How long each stage may last.
#[derive(Debug, Clone, Copy)]
pub struct Allowances {
    pub header_read: Duration,
    pub idle: Duration,
}

/// What a connection is doing, as offsets from its accept: the input of [`deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Requests being handled (their response not yet fully sent).
    pub in_flight: u32,
    /// Requests answered so far.
    pub answered: u64,
    /// When the last response was sent (the idle stage began).
    pub idle_since: Option<Duration>,
    /// The first byte read while no request was in flight: a request head has begun.
    pub head_begun: Option<Duration>,
}

/// When the connection has overstayed its stage, and which stage that is; `None` while a request
/// is being handled (the handler bounds its own work: body reads, replies) — the pure rule.
pub fn deadline(clock: Clock, allow: Allowances) -> Option<(Duration, Stage)> {
    if clock.in_flight > 0 {
        return None;
    }
    if let Some(begun) = clock.head_begun {
        return Some((begun + allow.header_read, Stage::Header));
    }
    match clock.idle_since {
        Some(idle) if clock.answered > 0 => Some((idle + allow.idle, Stage::Idle)),
        // Nothing answered yet: the first head is due a header-read allowance after accept.
        _ => Some((allow.header_read, Stage::Header)),
    }
}

/// One accepted socket, shared by its byte stream, its requests, and (once upgraded) its
/// WebSocket session. Its place among the listener's connections is given back when the last of
/// them lets go, that is when the socket is closed.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub peer: SocketAddr,
    accepted: Instant,
    in_flight: AtomicU32,
    answered: AtomicU64,
    idle_since: AtomicU64,
    head_begun: AtomicU64,
    /// Woken when the clock changes in a way that can move the deadline.
    changed: Notify,
    /// Once set (a WebSocket session), every byte read is charged to the message budget.
    meter: OnceLock<Meter>,
    /// The verified client certificate, set once after the TLS handshake.
    client_certificate: OnceLock<Arc<ClientCertificate>>,
    /// Cleared for good once hyper means to close the socket or hand it to a WebSocket.
    parkable: AtomicBool,
    _place: OwnedSemaphorePermit,
}

impl Connection {
    pub fn new(id: u64, peer: SocketAddr, place: OwnedSemaphorePermit) -> Self {
        Self {
            id,
            peer,
            accepted: Instant::now(),
            in_flight: AtomicU32::new(0),
            answered: AtomicU64::new(0),
            idle_since: AtomicU64::new(UNSET),
            head_begun: AtomicU64::new(UNSET),
            changed: Notify::new(),
            meter: OnceLock::new(),
            client_certificate: OnceLock::new(),
            parkable: AtomicBool::new(true),
            _place: place,
        }
    }

    fn now(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    pub fn clock(&self) -> Clock {
        let at = |v: u64| (v != UNSET).then(|| Duration::from_millis(v));
        Clock {
            in_flight: self.in_flight.load(Ordering::Acquire),
            answered: self.answered.load(Ordering::Acquire),
            idle_since: at(self.idle_since.load(Ordering::Acquire)),
            head_begun: at(self.head_begun.load(Ordering::Acquire)),
        }
    }

    /// The instant `offset` after accept.
    pub fn instant(&self, offset: Duration) -> Instant {
        self.accepted + offset
    }

    /// A request's head has been read; the guard marks it answered when dropped (once its response
    /// body has been sent or abandoned).
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_begun.store(UNSET, Ordering::Release);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    /// Resolves when the clock has changed since the last call (or was never waited on).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// From now on, bytes read are charged to `meter` (a session that reads whole messages from
    /// the socket itself, where no handler sees them arrive).
    pub fn meter(&self, meter: Meter) {
        let _ = self.meter.set(meter);
    }

    /// Whether the socket may be parked between requests (ADR 0069).
    pub fn parkable(&self) -> bool {
        self.parkable.load(Ordering::Acquire)
    }

    /// Something was asked or answered after which hyper closes the socket, or hands it to a
    /// WebSocket: it is never parked.
    pub fn never_park(&self) {
        self.parkable.store(false, Ordering::Release);
    }

    pub fn client_certificate(&self) -> Option<Arc<ClientCertificate>> {
        self.client_certificate.get().cloned()
    }

    pub(super) fn verified(&self, certificate: ClientCertificate) {
        let _ = self.client_certificate.set(Arc::new(certificate));
    }

    fn read(&self, bytes: usize) -> io::Result<()> {
        if let Some(meter) = self.meter.get() {
            meter.read(bytes).map_err(io::Error::other)?;
        }
        if bytes > 0
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_begun.load(Ordering::Acquire) == UNSET
        {
            self.head_begun.store(self.now(), Ordering::Release);
            self.changed.notify_one();
        }
        Ok(())
    }
}

/// A request being handled on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since.store(conn.now(), Ordering::Release);
        conn.answered.fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        conn.changed.notify_one();
    }
}

/// The socket's byte stream, telling its connection when bytes arrive.
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    conn: Arc<Connection>,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, conn: Arc<Connection>) -> Self {
        Self { inner, conn }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.conn.meter.get().is_some_and(Meter::tripped) {
            return self.discard(cx);
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            // Over the budget: the read fails, and the session answers "try again later".
            self.conn.read(buf.filled().len() - before)?;
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> Tracked<S> {
    /// Reads and drops whatever the peer still sends, so that closing the socket sends a FIN its
    /// reader can see after our Close frame, not a reset that would discard it.
    fn discard(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut scratch = [0u8; 8192];
        loop {
            let mut sink = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut sink) {
                Poll::Ready(Ok(())) if sink.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    forward_writes!();

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOW: Allowances = Allowances {
        header_read: Duration::from_secs(10),
        idle: Duration::from_mins(1),
    };
    const S: fn(u64) -> Duration = Duration::from_secs;

    fn clock() -> Clock {
        Clock {
            in_flight: 0,
            answered: 0,
            idle_since: None,
            head_begun: None,
        }
    }

    #[test]
    fn a_new_connection_has_a_header_allowance_from_accept() {
        assert_eq!(deadline(clock(), ALLOW), Some((S(10), Stage::Header)));
        let begun = Clock {
            head_begun: Some(S(3)),
            ..clock()
        };
        // Its first bytes do not buy it more time.
        assert_eq!(deadline(begun, ALLOW), Some((S(13), Stage::Header)));
    }

    #[test]
    fn a_request_in_flight_has_no_deadline_here() {
        let busy = Clock {
            in_flight: 1,
            head_begun: None,
            ..clock()
        };
        assert_eq!(deadline(busy, ALLOW), None);
    }

    #[test]
    fn after_an_answer_the_connection_idles_then_reads_a_head() {
        let idle = Clock {
            answered: 1,
            idle_since: Some(S(5)),
            ..clock()
        };
        assert_eq!(deadline(idle, ALLOW), Some((S(65), Stage::Idle)));
        let next = Clock {
            head_begun: Some(S(40)),
            ..idle
        };
        assert_eq!(deadline(next, ALLOW), Some((S(50), Stage::Header)));
    }
}

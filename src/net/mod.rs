//! The sockets under both listeners: accept, count each against the listener's limit from the
//! moment it is accepted, close those that overstay a stage, and serve HTTP/1.1 on the rest.
//!
//! axum's own `serve` holds a socket for as long as its peer likes: no header-read timer, no idle
//! limit, and no count of sockets that have not yet sent a request. This loop owns those.

/// The writes of a stream wrapper that passes them to its `inner` stream unchanged; the wrapper
/// writes its own `poll_shutdown`, the one write that wrappers here change.
macro_rules! forward_writes {
    () => {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
    };
}

mod body;
pub mod budget;
mod conn;
pub mod listener;
pub mod open_files;
mod park;
pub mod reload;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::metrics::Gauge;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{debug, warn};

pub use conn::{Allowances, Clock, Connection, Stage, Tracked, deadline};

use crate::telemetry::metrics::{self, Metrics};

/// Sockets over the limit still get their 503 (with `Retry-After`), but only this many at once;
/// beyond that they are closed as soon as they are accepted.
const OVERFLOW_ANSWERS: usize = 64;

/// A listener's limits and where it counts what it refuses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `opamp` or `api`: the `listener` label of its metrics.
    pub name: &'static str,
    pub max_connections: usize,
    pub allow: Allowances,
    /// Base of the jittered `Retry-After` sent to sockets over the limit.
    pub retry_after: Duration,
    /// TLS, when the listener has it: every socket's first bytes are a TLS handshake.
    pub tls: Option<tls::Acceptor>,
}

/// Accepts until `shutdown`, then waits for the connections it is still serving to finish their
/// requests (WebSocket sessions, once upgraded, are their owner's to close).
pub async fn serve(
    mut listener: listener::Listeners,
    router: Router,
    settings: Settings,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let places = Arc::new(Semaphore::new(settings.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_ANSWERS));
    let next_id = AtomicU64::new(1);
    let tasks = TaskTracker::new();
    let labels = [("listener", settings.name)];
    let refused = metrics.counter(metrics::SOCKETS_REFUSED, &labels);
    // Registered once here: registering looks the key up, which every accept would repeat.
    let instruments = Instruments {
        open: metrics.gauge(metrics::SOCKETS, &labels),
        parked: metrics.gauge(metrics::SOCKETS_PARKED, &labels),
        metrics: metrics.clone(),
    };
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: accepting again at once would spin.
                    warn!(listener = settings.name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(place) = Arc::clone(&places).try_acquire_owned() else {
            refused.increment(1);
            if let Ok(answering) = Arc::clone(&overflow).try_acquire_owned() {
                let retry_after = crate::opamp::jittered(settings.retry_after);
                let allowance = settings.allow.header_read;
                let tls = settings.tls.as_ref().map(tls::Acceptor::tokio);
                tasks.spawn(async move {
                    refuse(stream, retry_after, allowance, tls).await;
                    drop(answering);
                });
            }
            continue;
        };
        let conn = Arc::new(Connection::new(
            next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            place,
        ));
        tasks.spawn(serve_connection(
            stream,
            conn,
            router.clone(),
            settings.clone(),
            instruments.clone(),
            shutdown.clone(),
        ));
    }
    // Closed now, not after the wait: connections the kernel would go on completing into queues
    // nobody accepts from would only be reset at the end.
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// A listener's metrics, with its socket gauges (open, and parked between requests) registered.
#[derive(Clone)]
struct Instruments {
    metrics: Metrics,
    open: Gauge,
    parked: Gauge,
}

/// Serves one socket: its TLS handshake first where the listener has TLS, within the header-read
/// allowance from accept, then its requests.
async fn serve_connection(
    stream: TcpStream,
    conn: Arc<Connection>,
    router: Router,
    settings: Settings,
    instruments: Instruments,
    shutdown: CancellationToken,
) {
    instruments.open.increment(1);
    let _ = stream.set_nodelay(true);
    let stream = Tracked::new(stream, Arc::clone(&conn));
    match settings.tls.as_ref().map(tls::Acceptor::tokio) {
        None => serve_http(stream, conn, router, &settings, &instruments, shutdown).await,
        // Boxed: a plain socket's task would otherwise be sized for the TLS state too.
        Some(acceptor) => {
            Box::pin(serve_tls(
                acceptor,
                stream,
                conn,
                router,
                &settings,
                &instruments,
                shutdown,
            ))
            .await;
        }
    }
    instruments.open.decrement(1);
}

/// A TLS socket: its handshake, within the header-read allowance from accept, then its requests.
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: Tracked<TcpStream>,
    conn: Arc<Connection>,
    router: Router,
    settings: &Settings,
    instruments: &Instruments,
    shutdown: CancellationToken,
) {
    let metrics = &instruments.metrics;
    let labels = [("listener", settings.name)];
    let due = conn.instant(settings.allow.header_read);
    let handshake = tokio::select! {
        done = tokio::time::timeout_at(due, acceptor.accept(stream)) => done,
        () = shutdown.cancelled() => Ok(Err(std::io::ErrorKind::Interrupted.into())),
    };
    match handshake {
        Ok(Ok(stream)) => {
            let verified = stream.get_ref().1.peer_certificates();
            if let Some(certificate) = verified
                .and_then(<[_]>::first)
                .and_then(tls::client_certificate)
            {
                conn.verified(certificate);
            }
            serve_http(stream, conn, router, settings, instruments, shutdown).await;
        }
        Ok(Err(err)) => {
            debug!(listener = settings.name, connection = conn.id, error = %err, "TLS handshake failed");
            metrics
                .counter(metrics::TLS_HANDSHAKES_FAILED, &labels)
                .increment(1);
        }
        Err(_) => {
            debug!(
                listener = settings.name,
                connection = conn.id,
                "socket closed: TLS handshake timed out"
            );
            metrics
                .counter(
                    metrics::SOCKETS_TIMED_OUT,
                    &[
                        ("listener", settings.name),
                        ("stage", Stage::Header.as_str()),
                    ],
                )
                .increment(1);
        }
    }
}

/// Serves one socket's requests until it closes, is upgraded, overstays a stage, or the server
/// shuts down (requests in flight finish; an idle socket is closed at once). Between requests a
/// plain socket is parked without its HTTP connection ([`park`]).
async fn serve_http<S>(
    stream: S,
    conn: Arc<Connection>,
    router: Router,
    settings: &Settings,
    instruments: &Instruments,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + park::Readiness + Unpin + Send + 'static,
{
    let service = {
        let conn = Arc::clone(&conn);
        tower::service_fn(move |mut request: Request<Incoming>| {
            let in_flight = conn.request();
            if !park::keeps_alive(request.version(), request.headers())
                || request.headers().contains_key(header::UPGRADE)
            {
                conn.never_park();
            }
            request.extensions_mut().insert(ConnectInfo(conn.peer));
            request.extensions_mut().insert(Arc::clone(&conn));
            let router = router.clone();
            let conn = Arc::clone(&conn);
            async move {
                let request = request.map(|b| Body::new(body::Watched::new(b, Arc::clone(&conn))));
                let response = router.oneshot(request).await?;
                if !park::keeps_alive(response.version(), response.headers()) {
                    conn.never_park();
                }
                // The request counts as in flight until its body is sent: an event stream is
                // a request that lasts, not an idle socket.
                Ok::<_, Infallible>(response.map(|b| Body::new(body::Guarded::new(b, in_flight))))
            }
        })
    };
    let mut builder = http1::Builder::new();
    // Our watchdog below bounds the head; hyper's own timer would also cut idle keep-alives.
    builder.header_read_timeout(None).max_buf_size(64 * 1024);
    let mut io = park::Reusable::new(stream);
    let mut stopping = false;
    'socket: loop {
        let answered_before = conn.clock().answered;
        let parking = io.parking();
        let mut to_park = false;
        // Boxed, so that a parked socket's task holds none of it.
        let mut connection = Box::new(
            builder
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service.clone()))
                .with_upgrades(),
        );
        loop {
            let due = deadline(conn.clock(), settings.allow);
            tokio::select! {
                served = &mut *connection => {
                    if let Err(err) = served {
                        debug!(listener = settings.name, error = %err, "connection ended with an error");
                        break 'socket;
                    }
                    break;
                }
                () = conn.changed() => {
                    if S::PARKS
                        && !stopping
                        && !to_park
                        && park::due(conn.clock(), answered_before, conn.parkable())
                    {
                        to_park = true;
                        parking.store(true, Ordering::Release);
                        Pin::new(&mut *connection).graceful_shutdown();
                    }
                }
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    Pin::new(&mut *connection).graceful_shutdown();
                }
                () = crate::deadline::sleep_until_opt(due.map(|(at, _)| conn.instant(at))) => {
                    if overstayed(&conn, settings, &instruments.metrics) {
                        break 'socket;
                    }
                }
            }
        }
        if stopping || !to_park {
            break;
        }
        let Some(parts) = connection.into_parts() else {
            break;
        };
        io = parts.io.into_inner().resume(&parts.read_buf);
        // Those bytes share hyper's whole read buffer, which must not outlive the connection.
        drop(parts.read_buf);
        if io.has_unread() {
            continue;
        }
        instruments.parked.increment(1);
        let resumed = wait_parked(&io, &conn, settings, &instruments.metrics, &shutdown).await;
        instruments.parked.decrement(1);
        if !resumed {
            break;
        }
    }
}

/// Waits, with no HTTP connection, until a parked socket has bytes to read (true), or until it
/// overstays its stage or the server shuts down (false: the socket is to be closed).
async fn wait_parked<S: park::Readiness>(
    io: &park::Reusable<S>,
    conn: &Connection,
    settings: &Settings,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let due = deadline(conn.clock(), settings.allow);
        tokio::select! {
            ready = io.readable() => return ready.is_ok(),
            () = shutdown.cancelled() => return false,
            () = crate::deadline::sleep_until_opt(due.map(|(at, _)| conn.instant(at))) => {
                if overstayed(conn, settings, metrics) {
                    return false;
                }
            }
        }
    }
}

/// Whether the connection has overstayed its stage now (the clock may have moved on while its
/// watchdog slept: bytes arrived, a request began); counted and logged when it has.
fn overstayed(conn: &Connection, settings: &Settings, metrics: &Metrics) -> bool {
    let Some((at, stage)) = deadline(conn.clock(), settings.allow) else {
        return false;
    };
    if conn.instant(at) > tokio::time::Instant::now() {
        return false;
    }
    debug!(
        listener = settings.name,
        connection = conn.id,
        stage = stage.as_str(),
        "socket closed: stage timed out"
    );
    metrics
        .counter(
            metrics::SOCKETS_TIMED_OUT,
            &[("listener", settings.name), ("stage", stage.as_str())],
        )
        .increment(1);
    true
}

/// Answers a socket over the limit with 503 and `Retry-After`, once its request head is read
/// (answering before could be lost to a reset), within the header-read allowance; on a TLS
/// listener after the handshake, so that the client can read the answer at all.
async fn refuse(
    stream: TcpStream,
    retry_after: u64,
    allowance: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let answered = async move {
        match tls {
            None => answer_refused(stream, retry_after).await,
            Some(acceptor) => {
                if let Ok(stream) = acceptor.accept(stream).await {
                    answer_refused(stream, retry_after).await;
                }
            }
        }
    };
    let _ = tokio::time::timeout(allowance, answered).await;
}

async fn answer_refused<S>(stream: S, retry_after: u64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::service_fn(move |_: Request<Incoming>| async move {
        let mut response = Response::new(Body::from("server is at its connection limit"));
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        Ok::<_, Infallible>(response)
    });
    let mut builder = http1::Builder::new();
    builder.header_read_timeout(None).keep_alive(false);
    let _ = builder
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
        .await;
}

/// The peer address of a request served by [`serve`].
pub fn peer(request: &Request<Body>) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<Arc<Connection>>()
        .map(|c| c.peer)
}

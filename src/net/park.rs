//! Kept-alive sockets between requests: parked with no HTTP/1 connection of their own, so an idle
//! plain-HTTP collector holds its socket and nothing of hyper's (ADR 0069).
//!
//! hyper's HTTP/1 connection keeps an 8 KiB write buffer from its start and an 8 KiB read buffer
//! from its first read, for as long as the socket lives. A collector polling every few seconds is
//! idle nearly all that time. Once a response is sent and nothing else is asked, the connection
//! is ended without closing the socket; a new one is started when the socket has bytes to read.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::http::{HeaderMap, Version, header};
use bytes::{Buf as _, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::conn::{Clock, Tracked};

/// A byte stream whose socket can be waited on without reading it.
pub trait Readiness {
    /// Whether [`Readiness::readable`] can be trusted: a TLS stream cannot be parked, as rustls
    /// may hold bytes already read from the socket that no readiness event will announce.
    const PARKS: bool;

    /// Resolves when the socket has bytes, or its end, to read.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_;
}

impl Readiness for Tracked<TcpStream> {
    const PARKS: bool = true;

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        self.get_ref().readable()
    }
}

impl<S: Send + Sync> Readiness for tokio_rustls::server::TlsStream<S> {
    const PARKS: bool = false;

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        std::future::pending()
    }
}

/// Whether a connection that has served `answered_before` requests when its HTTP state was made
/// should give that state up now: it has answered since, nothing is in flight, no new request
/// has begun, and the socket is still `parkable` (nothing asked to close or upgrade it, every
/// request body was read to its end) — the pure rule.
pub fn due(clock: Clock, answered_before: u64, parkable: bool) -> bool {
    parkable
        && clock.in_flight == 0
        && clock.head_begun.is_none()
        && clock.answered > answered_before
}

/// Whether a request or response with this version and these headers leaves its socket kept
/// alive: HTTP/1.1 without `Connection: close`.
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && !headers.get_all(header::CONNECTION).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case("close"))
            })
        })
}

/// The socket as one HTTP/1 connection after another sees it: bytes a connection read but did
/// not use are read first by the next, and a connection ended to park leaves the socket open.
#[derive(Debug)]
pub struct Reusable<S> {
    inner: S,
    unread: Bytes,
    parking: Arc<AtomicBool>,
}

impl<S> Reusable<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            unread: Bytes::new(),
            parking: Arc::new(AtomicBool::new(false)),
        }
    }

    /// From now on, a shutdown of the stream leaves the socket open for the next connection.
    pub fn parking(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.parking)
    }

    /// The stream given back by an ended connection, with the bytes it had read and not used.
    pub fn resume(mut self, unread: &[u8]) -> Self {
        // Those bytes share the connection's whole read buffer: keep a copy of them alone.
        self.unread = Bytes::copy_from_slice(unread);
        self.parking.store(false, Ordering::Release);
        self
    }

    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }
}

impl<S: Readiness> Reusable<S> {
    pub fn readable(&self) -> impl Future<Output = io::Result<()>> + Send + '_ {
        self.inner.readable()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Reusable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.unread.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread[..n]);
        self.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Reusable<S> {
    forward_writes!();

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parking.load(Ordering::Acquire) {
            // hyper ends every connection with a shutdown; this one only hands the socket back.
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::HeaderValue;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn idle(answered: u64) -> Clock {
        Clock {
            in_flight: 0,
            answered,
            idle_since: Some(Duration::from_secs(1)),
            head_begun: None,
        }
    }

    #[test]
    fn a_connection_parks_once_it_has_answered_and_nothing_else_is_asked() {
        assert!(due(idle(1), 0, true));
        // A connection just made for bytes that arrived has answered nothing yet.
        assert!(!due(idle(1), 1, true));
        let busy = Clock {
            in_flight: 1,
            ..idle(1)
        };
        assert!(!due(busy, 0, true));
        let next_begun = Clock {
            head_begun: Some(Duration::from_secs(2)),
            ..idle(1)
        };
        assert!(!due(next_begun, 0, true));
        assert!(!due(idle(1), 0, false));
    }

    #[test]
    fn only_http_1_1_without_connection_close_keeps_a_socket_alive() {
        let mut headers = HeaderMap::new();
        assert!(keeps_alive(Version::HTTP_11, &headers));
        assert!(!keeps_alive(Version::HTTP_10, &headers));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Close"),
        );
        assert!(!keeps_alive(Version::HTTP_11, &headers));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        assert!(keeps_alive(Version::HTTP_11, &headers));
    }

    #[tokio::test]
    async fn unused_bytes_are_read_first_and_a_parking_shutdown_leaves_the_stream_open() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = Reusable::new(near).resume(b"GET ");
        far.write_all(b"/ HTTP/1.1").await.unwrap();
        let mut read = vec![0; 14];
        stream.read_exact(&mut read).await.unwrap();
        assert_eq!(read, b"GET / HTTP/1.1");

        stream.parking().store(true, Ordering::Release);
        stream.shutdown().await.unwrap();
        stream.write_all(b"still open").await.unwrap();
        let mut echoed = vec![0; 10];
        far.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"still open");

        let mut stream = stream.resume(&[]);
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "a shutdown once resumed ends the stream");
    }
}

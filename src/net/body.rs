//! The bodies the listener wraps: a response's, which keeps its request counted as in flight until
//! it has been sent, and a request's, which tells whether it was read to its end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use super::conn::{Connection, InFlight};

pub struct Guarded {
    inner: Body,
    _in_flight: InFlight,
}

impl Guarded {
    pub fn new(inner: Body, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that, dropped before its end, marks its socket as not to be parked: hyper
/// drains or closes such a socket itself, and must see its own close through (ADR 0069).
pub struct Watched {
    inner: Incoming,
    ended: bool,
    conn: Arc<Connection>,
}

impl Watched {
    pub fn new(inner: Incoming, conn: Arc<Connection>) -> Self {
        Self {
            inner,
            ended: false,
            conn,
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.ended && !self.inner.is_end_stream() {
            self.conn.never_park();
        }
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

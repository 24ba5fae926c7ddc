//! The two OpAMP transports as one `Link`: a WebSocket (binary messages, `0x00` header, full
//! duplex) or a plain-HTTP connection (one `POST` per `AgentToServer`, the reply in the response).
//! Every connection is bound to its collector's source address before it connects.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use opampd::proto;
use prost::Message as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::stats::ErrorKind;

/// Which OpAMP transport a run uses, from its URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[serde(rename = "websocket")]
    WebSocket,
    Http,
}

/// Where the collectors connect, resolved once.
#[derive(Debug, Clone)]
pub struct Target {
    pub transport: Transport,
    /// As given (`ws://host:port/v1/opamp` or `http://...`).
    pub url: String,
    pub addr: SocketAddr,
    /// `host:port`, for the `Host` header.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// Extra request headers (authentication, ...), on the upgrade or on every POST.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}` is not a URL")]
    Url(String),
    #[error("`{0}`: the scheme must be ws:// or http:// (TLS is not supported)")]
    Scheme(String),
    #[error("cannot resolve `{host}`")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("`{0}` resolves to no address")]
    NoAddress(String),
    #[error("header `{0}`: expected `Name: value`")]
    Header(String),
}

impl Target {
    /// Parses the URL and headers and resolves the host (the first address of the family of
    /// the source addresses, if any are given).
    pub async fn resolve(
        url: &str,
        headers: &[String],
        prefer_v6: Option<bool>,
    ) -> Result<Self, TargetError> {
        let uri: http::Uri = url.parse().map_err(|_| TargetError::Url(url.to_owned()))?;
        let transport = match uri.scheme_str() {
            Some("ws") => Transport::WebSocket,
            Some("http") => Transport::Http,
            _ => return Err(TargetError::Scheme(url.to_owned())),
        };
        let host = uri
            .host()
            .ok_or_else(|| TargetError::Url(url.to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| TargetError::Resolve {
                host: host.clone(),
                source,
            })?
            .collect();
        let addr = prefer_v6
            .and_then(|v6| addrs.iter().find(|a| a.is_ipv6() == v6))
            .or(addrs.first())
            .copied()
            .ok_or_else(|| TargetError::NoAddress(host.clone()))?;
        let authority = uri
            .authority()
            .map_or_else(|| format!("{host}:{port}"), ToString::to_string);
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), ToString::to_string);
        let headers = headers
            .iter()
            .map(|h| parse_header(h).ok_or_else(|| TargetError::Header(h.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            transport,
            url: url.to_owned(),
            addr,
            authority,
            path,
            headers,
        })
    }
}

fn parse_header(text: &str) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = text.split_once(':')?;
    Some((
        HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
        HeaderValue::from_str(value.trim()).ok()?,
    ))
}

/// What went wrong on a link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("WebSocket upgrade: {0}")]
    Handshake(Box<tungstenite::Error>),
    #[error("HTTP {status}: throttled")]
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("HTTP {0}")]
    HttpStatus(u16),
    #[error("WebSocket: {0}")]
    Ws(Box<tungstenite::Error>),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("closed by the server")]
    Closed,
    #[error("not an OpAMP message: {0}")]
    Decode(String),
}

impl LinkError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            LinkError::Connect(_) => ErrorKind::Connect,
            LinkError::Handshake(_) => ErrorKind::Handshake,
            LinkError::Throttled { .. } => ErrorKind::Throttled,
            LinkError::HttpStatus(_) => ErrorKind::HttpStatus,
            LinkError::Ws(_) | LinkError::Http(_) => ErrorKind::Io,
            LinkError::Closed => ErrorKind::Closed,
            LinkError::Decode(_) => ErrorKind::Decode,
        }
    }

    /// How long the server asked us to stay away, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LinkError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A TCP connection from `source` (port chosen by the kernel) to `to`.
pub async fn tcp_connect(to: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(to).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The WebSocket framing: a varint header, which must be 0, then the protobuf. A first byte
/// other than 0 is a legacy headerless message.
pub fn decode_ws(data: &[u8]) -> Result<proto::ServerToAgent, LinkError> {
    let body = if data.first() == Some(&0) {
        &data[1..]
    } else {
        data
    };
    proto::ServerToAgent::decode(body).map_err(|e| LinkError::Decode(e.to_string()))
}

pub fn encode_ws(message: &proto::AgentToServer) -> Bytes {
    let mut bytes = Vec::with_capacity(1 + message.encoded_len());
    bytes.push(0);
    // Writing into a Vec cannot run out of room.
    let _ = message.encode(&mut bytes);
    Bytes::from(bytes)
}

/// `Retry-After` in seconds (an HTTP date is not read: the caller backs off instead).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn throttle_status(status: StatusCode) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
}

/// One collector's connection to the server.
pub enum Link {
    Ws(Box<WebSocketStream<TcpStream>>),
    Http(Box<HttpLink>),
}

impl Link {
    /// Connects (and upgrades, for WebSocket). `idle_close_is_drop`: over HTTP, the server
    /// closing the idle keep-alive connection ends the link (as when the server restarts)
    /// instead of a new connection being opened quietly for the next request.
    pub async fn open(
        target: &Target,
        source: Option<IpAddr>,
        idle_close_is_drop: bool,
    ) -> Result<Self, LinkError> {
        match target.transport {
            Transport::WebSocket => {
                let stream = tcp_connect(target.addr, source)
                    .await
                    .map_err(LinkError::Connect)?;
                let mut request = target
                    .url
                    .as_str()
                    .into_client_request()
                    .map_err(|e| LinkError::Handshake(Box::new(e)))?;
                for (name, value) in &target.headers {
                    request.headers_mut().insert(name.clone(), value.clone());
                }
                // Small buffers: thousands of collectors live in this process, and OpAMP
                // messages are small.
                let config = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0);
                match tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                    .await
                {
                    Ok((socket, _)) => Ok(Link::Ws(Box::new(socket))),
                    Err(tungstenite::Error::Http(response))
                        if throttle_status(response.status()) =>
                    {
                        Err(LinkError::Throttled {
                            status: response.status().as_u16(),
                            retry_after: retry_after(response.headers()),
                        })
                    }
                    Err(tungstenite::Error::Io(e)) => Err(LinkError::Connect(e)),
                    Err(e) => Err(LinkError::Handshake(Box::new(e))),
                }
            }
            Transport::Http => Ok(Link::Http(Box::new(
                HttpLink::open(target.clone(), source, idle_close_is_drop).await?,
            ))),
        }
    }

    /// Writes one message (over HTTP: queues it for the next `recv`, which posts it).
    pub async fn send(&mut self, message: &proto::AgentToServer) -> Result<(), LinkError> {
        match self {
            Link::Ws(socket) => socket
                .send(Message::Binary(encode_ws(message)))
                .await
                .map_err(ws_error),
            Link::Http(link) => {
                link.queue(message);
                Ok(())
            }
        }
    }

    /// The next `ServerToAgent`. Cancel-safe: dropping the future loses nothing (an HTTP
    /// request in flight goes on at the next call).
    pub async fn recv(&mut self) -> Result<proto::ServerToAgent, LinkError> {
        match self {
            Link::Ws(socket) => loop {
                match socket.next().await {
                    Some(Ok(Message::Binary(data))) => return decode_ws(&data),
                    Some(Ok(Message::Text(_))) => {
                        return Err(LinkError::Decode("a text frame".to_owned()));
                    }
                    Some(Ok(Message::Close(_))) | None => return Err(LinkError::Closed),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Err(e)) => return Err(ws_error(e)),
                }
            },
            Link::Http(link) => link.recv().await,
        }
    }

    /// HTTP only: whether the last `recv` had to open a new connection because the server had
    /// closed the idle one.
    pub fn take_reopened(&mut self) -> bool {
        match self {
            Link::Ws(_) => false,
            Link::Http(link) => std::mem::take(&mut link.reopened),
        }
    }

    /// Drops the connection. With `close_frame`, a WebSocket first sends a Close frame (not
    /// waiting for the server's); without, the TCP socket is simply closed.
    pub async fn drop_connection(self, close_frame: bool) {
        if let (Link::Ws(mut socket), true) = (self, close_frame) {
            let _ = tokio::time::timeout(Duration::from_secs(1), socket.close()).await;
        }
    }

    /// A collector that stops: waits for the reply to the message in flight if there is one,
    /// sends `last` (its `agent_disconnect`), waits for the reply, then closes properly
    /// (WebSocket: Close frame, and the server's Close), all within `limit`.
    pub async fn goodbye(mut self, in_flight: bool, last: &proto::AgentToServer, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            if in_flight {
                let _ = self.recv().await;
            }
            if self.send(last).await.is_ok() {
                let _ = self.recv().await;
            }
            if let Link::Ws(socket) = &mut self {
                let _ = socket.close().await;
                while let Some(Ok(_)) = socket.next().await {}
            }
        })
        .await;
    }
}

fn ws_error(error: tungstenite::Error) -> LinkError {
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            LinkError::Closed
        }
        other => LinkError::Ws(Box::new(other)),
    }
}

type Exchange = Pin<Box<dyn Future<Output = Result<proto::ServerToAgent, LinkError>> + Send>>;

/// One collector's plain-HTTP connection (kept alive, opened again when the server closes it),
/// with at most one request in flight.
pub struct HttpLink {
    target: Target,
    source: Option<IpAddr>,
    sender: http1::SendRequest<Full<Bytes>>,
    connection: tokio::task::JoinHandle<()>,
    /// Encoded message and its uid, waiting to be posted.
    queued: Option<(Bytes, HeaderValue)>,
    in_flight: Option<Exchange>,
    reopened: bool,
    idle_close_is_drop: bool,
}

impl Drop for HttpLink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl HttpLink {
    async fn open(
        target: Target,
        source: Option<IpAddr>,
        idle_close_is_drop: bool,
    ) -> Result<Self, LinkError> {
        let (sender, connection) = Self::connect(&target, source).await?;
        Ok(Self {
            target,
            source,
            sender,
            connection,
            queued: None,
            in_flight: None,
            reopened: false,
            idle_close_is_drop,
        })
    }

    async fn connect(
        target: &Target,
        source: Option<IpAddr>,
    ) -> Result<(http1::SendRequest<Full<Bytes>>, tokio::task::JoinHandle<()>), LinkError> {
        let stream = tcp_connect(target.addr, source)
            .await
            .map_err(LinkError::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((sender, connection))
    }

    fn queue(&mut self, message: &proto::AgentToServer) {
        let uid = uuid::Uuid::from_slice(&message.instance_uid).map_or_else(
            |_| HeaderValue::from_static(""),
            |u| {
                HeaderValue::from_str(&u.hyphenated().to_string())
                    .unwrap_or(HeaderValue::from_static(""))
            },
        );
        self.queued = Some((Bytes::from(message.encode_to_vec()), uid));
    }

    async fn recv(&mut self) -> Result<proto::ServerToAgent, LinkError> {
        loop {
            if let Some(exchange) = &mut self.in_flight {
                let result = exchange.await;
                self.in_flight = None;
                return result;
            }
            if self.queued.is_none() {
                if self.idle_close_is_drop {
                    // The connection task ends when the server closes the connection.
                    let _ = (&mut self.connection).await;
                    return Err(LinkError::Closed);
                }
                return std::future::pending().await;
            }
            if self.sender.ready().await.is_err() {
                // The server closed the idle keep-alive connection: open another.
                let (sender, connection) = Self::connect(&self.target, self.source).await?;
                self.connection.abort();
                self.sender = sender;
                self.connection = connection;
                self.reopened = true;
                continue;
            }
            let Some((body, uid)) = self.queued.take() else {
                continue;
            };
            let mut request = http::Request::post(self.target.path.as_str())
                .header(HOST, self.target.authority.as_str())
                .header(CONTENT_TYPE, "application/x-protobuf");
            if !uid.is_empty() {
                request = request.header("OpAMP-Instance-UID", uid);
            }
            for (name, value) in &self.target.headers {
                request = request.header(name, value);
            }
            let request = match request.body(Full::new(body)) {
                Ok(request) => request,
                Err(e) => return Err(LinkError::Decode(format!("bad request: {e}"))),
            };
            let response = self.sender.send_request(request);
            self.in_flight = Some(Box::pin(async move {
                let response = response.await?;
                let status = response.status();
                if throttle_status(status) {
                    return Err(LinkError::Throttled {
                        status: status.as_u16(),
                        retry_after: retry_after(response.headers()),
                    });
                }
                if status != StatusCode::OK {
                    return Err(LinkError::HttpStatus(status.as_u16()));
                }
                let gzip = response
                    .headers()
                    .get(CONTENT_ENCODING)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
                let body = response.into_body().collect().await?.to_bytes();
                let body = if gzip { gunzip(&body)? } else { body };
                proto::ServerToAgent::decode(body).map_err(|e| LinkError::Decode(e.to_string()))
            }));
        }
    }
}

fn gunzip(data: &[u8]) -> Result<Bytes, LinkError> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| LinkError::Decode(format!("gzip: {e}")))?;
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_messages_carry_a_zero_header() {
        let message = proto::AgentToServer {
            sequence_num: 5,
            ..Default::default()
        };
        let bytes = encode_ws(&message);
        assert_eq!(bytes[0], 0);
        assert_eq!(
            proto::AgentToServer::decode(&bytes[1..]).expect("decodes"),
            message
        );
    }

    #[test]
    fn replies_decode_with_or_without_the_header() {
        let reply = proto::ServerToAgent {
            flags: 1,
            capabilities: 7,
            ..Default::default()
        };
        let mut framed = vec![0];
        framed.extend(reply.encode_to_vec());
        assert_eq!(decode_ws(&framed).expect("framed"), reply);
        assert_eq!(decode_ws(&reply.encode_to_vec()).expect("legacy"), reply);
        assert_eq!(
            decode_ws(&[0]).expect("empty"),
            proto::ServerToAgent::default()
        );
        assert!(matches!(decode_ws(&[0, 0xff]), Err(LinkError::Decode(_))));
    }

    #[test]
    fn headers_parse_as_name_colon_value() {
        let (name, value) = parse_header("Authorization: Bearer abc:def").expect("header");
        assert_eq!(name, "authorization");
        assert_eq!(value, "Bearer abc:def");
        assert!(parse_header("no colon").is_none());
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[tokio::test]
    async fn targets_are_parsed_from_the_url() {
        let ws = Target::resolve("ws://127.0.0.1:4320/v1/opamp", &[], None)
            .await
            .expect("ws target");
        assert_eq!(ws.transport, Transport::WebSocket);
        assert_eq!(ws.addr, "127.0.0.1:4320".parse().unwrap());
        assert_eq!(ws.path, "/v1/opamp");
        assert_eq!(ws.authority, "127.0.0.1:4320");
        let http = Target::resolve("http://127.0.0.1/x?y=1", &["X-Token: t".to_owned()], None)
            .await
            .expect("http target");
        assert_eq!(http.transport, Transport::Http);
        assert_eq!(http.addr.port(), 80);
        assert_eq!(http.path, "/x?y=1");
        assert_eq!(http.headers.len(), 1);
        assert!(matches!(
            Target::resolve("wss://127.0.0.1/", &[], None).await,
            Err(TargetError::Scheme(_))
        ));
        assert!(matches!(
            Target::resolve("ws://127.0.0.1/", &["bad".to_owned()], None).await,
            Err(TargetError::Header(_))
        ));
    }
}

//! The OpAMP listener: WebSocket and plain-HTTP transports on one path, agent authentication,
//! admission control, and the message handling both transports share.

pub mod ca;
mod frame;
mod http;
mod identity;
mod keepalive;
pub mod report;
mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::handler::Handler as _;
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use prost::Message as _;
use rand::RngExt as _;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tracing::{Span, debug};

use crate::collector::handle::ConnectionRef;
use crate::collector::{Answer, CollectorId, IssuedCertificate, Registry, Report, Unavailable};
use crate::config::OpampConfig;
use crate::net::budget::Budget;
use crate::proto;
use crate::telemetry::metrics::{self, Metrics};
pub use http::decode_request;
pub use identity::WireUid;

/// Everything an OpAMP request needs, shared by all connections.
pub struct Opamp {
    config: OpampConfig,
    registry: Arc<Registry>,
    metrics: Metrics,
    /// Message bytes in flight across all connections.
    budget: Arc<Budget>,
    next_connection: AtomicU64,
    shutdown: CancellationToken,
    /// WebSocket sessions outlive the HTTP request that opened them; shutdown waits on these.
    sessions: TaskTracker,
    /// Signs collectors' certificate requests, when configured.
    ca: Option<Arc<ca::Authority>>,
    /// What this server does (`ServerToAgent.capabilities`): with a CA, it also signs
    /// certificate requests.
    capabilities: u64,
    /// Open WebSocket connections, registered once: registering looks the key up, which every
    /// connection would repeat.
    ws_connections: ::metrics::Gauge,
}

impl Opamp {
    pub fn new(
        config: OpampConfig,
        registry: Arc<Registry>,
        metrics: Metrics,
        shutdown: CancellationToken,
        sessions: TaskTracker,
        ca: Option<Arc<ca::Authority>>,
    ) -> Arc<Self> {
        let csr = proto::ServerCapabilities::AcceptsConnectionSettingsRequest as u64;
        Arc::new(Self {
            capabilities: report::SERVER_CAPABILITIES | if ca.is_some() { csr } else { 0 },
            ca,
            budget: Budget::new(config.message_budget_bytes, config.connection_reserve_bytes),
            config,
            registry,
            ws_connections: metrics.gauge(metrics::CONNECTIONS, &[("transport", "websocket")]),
            metrics,
            next_connection: AtomicU64::new(1),
            shutdown,
            sessions,
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(
                &self.config.path,
                get(ws::upgrade).post(
                    http::handle.layer(
                        ServiceBuilder::new()
                            .layer(http::decompression())
                            // Every reply is compressed when the client accepts it, as opamp-go
                            // does: the spec says SHOULD, and clients must cope either way.
                            .layer(CompressionLayer::new().gzip(true).compress_when(
                                |_: StatusCode, _: Version, _: &HeaderMap, _: &Extensions| true,
                            )),
                    ),
                ),
            )
            .layer(middleware::from_fn_with_state(
                Arc::clone(self),
                authenticate,
            ))
            .with_state(Arc::clone(self))
    }

    /// Issues a certificate for the request a message carried, for `collector`; a request that
    /// cannot be signed is the collector's error (`BAD_REQUEST`), and the message is not taken.
    fn issue(
        &self,
        csr: Option<&Bytes>,
        collector: CollectorId,
        uid: &Bytes,
    ) -> Result<Option<Arc<IssuedCertificate>>, OpampError> {
        let (Some(ca), Some(csr)) = (&self.ca, csr) else {
            return Ok(None);
        };
        let heartbeat = self.config.heartbeat_interval;
        ca.current()
            .issue(csr, collector, std::time::SystemTime::now(), heartbeat)
            .map(|issued| Some(Arc::new(issued)))
            .map_err(|message| OpampError::BadRequest {
                uid: uid.clone(),
                message,
            })
    }

    fn connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Decodes one `AgentToServer`, hands it to the collector's actor and builds the reply, sent
    /// only once what the message changed is committed.
    async fn process(
        &self,
        payload: Bytes,
        connection: ConnectionRef,
    ) -> Result<Processed, OpampError> {
        let transport = connection.transport.as_str();
        self.metrics.message(transport, "in", payload.len());
        let Decoded {
            sent,
            wants_new_uid,
            mut report,
            csr,
        } = decode(payload)?;
        let (mut known_as, mut identification) = if wants_new_uid {
            let new = sent.reassigned(CollectorId::new_v7());
            let identification = report::identification(new.bytes.clone());
            (new, Some(identification))
        } else {
            (sent.clone(), None)
        };
        report
            .client_certificate
            .clone_from(&connection.client_certificate);
        // Issued before the report is taken, so the record keeps it with the report and the reply
        // offers it like any connection settings.
        report.issued_certificate = self.issue(csr.as_ref(), known_as.id, &sent.bytes)?;
        let mut reassigned_from = None;
        loop {
            Span::current().record("collector_id", tracing::field::display(known_as.id));
            let answer = self
                .registry
                .report(known_as.id, connection.clone(), report, reassigned_from)
                .await
                .map_err(|_| OpampError::ShuttingDown)?;
            match answer {
                Answer::Reply { outbound, confirm } => {
                    if let Some(confirm) = confirm {
                        let wait = self.config.commit_timeout;
                        if !matches!(timeout(wait, confirm.committed()).await, Ok(true)) {
                            // Not stored yet: the collector must not take this reply as a
                            // receipt. What it carried goes back to wait for the next one.
                            self.registry.unsent(known_as.id, *outbound);
                            let retry_after = jittered(self.config.store_retry_after);
                            self.metrics
                                .counter(metrics::REJECTED, &[("reason", "not_committed")])
                                .increment(1);
                            return Ok(Processed {
                                reply: Reply::new(report::unavailable(sent.bytes, retry_after)),
                                offered: crate::collector::Outbound::default(),
                                collector: known_as,
                                retry_after: Some(retry_after),
                            });
                        }
                    }
                    // Kept to give back if a WebSocket write fails; a plain-HTTP reply's offers
                    // stay in the outbox until the next report shows them received.
                    let offered = if connection.transport == crate::collector::Transport::WebSocket
                    {
                        outbound.offers()
                    } else {
                        crate::collector::Outbound::default()
                    };
                    let mut reply =
                        report::to_server_to_agent(sent.bytes, *outbound, self.capabilities);
                    if reply.command.is_none() {
                        reply.agent_identification = identification;
                    }
                    let reply = Reply::new(reply);
                    self.metrics.message(transport, "out", reply.len);
                    return Ok(Processed {
                        collector: known_as,
                        reply,
                        offered,
                        retry_after: None,
                    });
                }
                Answer::Unavailable(why) => {
                    let retry_after = jittered(match why {
                        Unavailable::Store => self.config.store_retry_after,
                        Unavailable::Full => self.config.retry_after,
                    });
                    return Err(OpampError::Unavailable {
                        uid: sent.bytes,
                        retry_after,
                    });
                }
                Answer::Reassign { to, report: again } if reassigned_from.is_none() => {
                    reassigned_from = Some(known_as.id);
                    known_as = sent.reassigned(to);
                    identification = Some(report::identification(known_as.bytes.clone()));
                    report = *again;
                }
                Answer::Reassign { .. } => {
                    return Err(OpampError::Unavailable {
                        uid: sent.bytes,
                        retry_after: jittered(self.config.store_retry_after),
                    });
                }
            }
        }
    }

    /// Refuses to send what the collector would have to refuse: the spec forbids over-limit
    /// messages.
    fn check_outgoing(&self, reply: &Reply) -> Result<(), OpampError> {
        let len = reply.len + frame::HEADER_LEN;
        if len > self.config.max_message_bytes {
            tracing::warn!(
                len,
                limit = self.config.max_message_bytes,
                "reply over the message limit dropped"
            );
            return Err(OpampError::ReplyTooLarge);
        }
        Ok(())
    }
}

impl Opamp {
    /// "Try again later" for a message the budget cannot take now.
    fn over_budget(&self) -> OpampError {
        OpampError::OverBudget {
            retry_after: jittered(self.config.retry_after),
        }
    }
}

/// One `AgentToServer` as the server takes it in, before any collector is involved.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The `instance_uid`, in the form the client holds it.
    pub sent: WireUid,
    /// The collector asked for a new uid (`RequestInstanceUid`).
    pub wants_new_uid: bool,
    pub report: Report,
    /// A certificate signing request (PEM) it sent for its OpAMP connection.
    pub csr: Option<Bytes>,
}

/// Decodes one message body (the WebSocket frame header already stripped): the protobuf, the
/// `instance_uid`, and the translation into the collector's report. Everything the untrusted bytes
/// reach before an actor does, as one pure function, so that the fuzz targets (docs/fuzzing.md)
/// exercise the code the transports run rather than a copy of it.
pub fn decode(payload: Bytes) -> Result<Decoded, OpampError> {
    let message = proto::AgentToServer::decode(payload).map_err(|e| OpampError::BadRequest {
        uid: Bytes::new(),
        message: format!("undecodable AgentToServer: {e}"),
    })?;
    let sent =
        WireUid::parse(message.instance_uid.clone()).map_err(|e| OpampError::BadRequest {
            uid: message.instance_uid.clone(),
            message: e.to_string(),
        })?;
    let csr = message
        .connection_settings_request
        .as_ref()
        .and_then(|r| r.opamp.as_ref())
        .and_then(|o| o.certificate_request.as_ref())
        .map(|c| c.csr.clone())
        .filter(|csr| !csr.is_empty());
    Ok(Decoded {
        sent,
        wants_new_uid: report::wants_new_uid(&message),
        report: report::to_report(message),
        csr,
    })
}

/// [`decode`] of a whole WebSocket message, header and all, as the WebSocket transport reads it.
pub fn decode_ws_message(message: Bytes) -> Result<Decoded, OpampError> {
    decode(frame::strip_header(message))
}

/// Between 1x and 1.5x the base, so refused collectors do not all come back at the same moment.
pub(crate) fn jittered(base: Duration) -> u64 {
    let secs = base.as_secs().max(1);
    secs + rand::rng().random_range(0..=secs / 2)
}

/// A reply with its encoded length (without a WebSocket header), measured once: the traffic
/// metric, the size check and the transport's buffer all need it, and measuring walks the whole
/// message.
pub(crate) struct Reply {
    message: proto::ServerToAgent,
    len: usize,
}

impl Reply {
    fn new(message: proto::ServerToAgent) -> Self {
        let len = message.encoded_len();
        Self { message, len }
    }
}

/// A message handled: the collector it is about from now on, the reply, and, when the reply says
/// to come back later (its changes were not committed in time), after how many seconds.
pub(crate) struct Processed {
    collector: WireUid,
    reply: Reply,
    /// The offers and command the reply carries, to give back to the outbox if it is not written.
    offered: crate::collector::Outbound,
    retry_after: Option<u64>,
}

/// Everything that can go wrong with an OpAMP request, each mapped once to its answer.
#[derive(Debug, thiserror::Error)]
pub enum OpampError {
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The message would take the server past its budget of bytes in flight.
    #[error("server is busy with other large messages; try again in {retry_after} s")]
    OverBudget { retry_after: u64 },
    #[error("unsupported content type or encoding")]
    UnsupportedMediaType,
    #[error("message larger than the {0}-byte limit")]
    TooLarge(usize),
    #[error("{message}")]
    BadRequest { uid: Bytes, message: String },
    #[error("reply larger than the message limit")]
    ReplyTooLarge,
    #[error("server is shutting down")]
    ShuttingDown,
    /// Nothing was acted on: the store cannot answer for the collector now, or the server holds
    /// as many collectors as it may.
    #[error("try again in {retry_after} s")]
    Unavailable { uid: Bytes, retry_after: u64 },
}

impl OpampError {
    /// The `reason` label it is counted under.
    fn reason(&self) -> &'static str {
        match self {
            OpampError::Unauthorized => "unauthorized",
            OpampError::BodyTimeout => "body_timeout",
            OpampError::OverBudget { .. } => "over_budget",
            OpampError::UnsupportedMediaType => "unsupported_media_type",
            OpampError::TooLarge(_) => "too_large",
            OpampError::BadRequest { .. } => "bad_request",
            OpampError::ReplyTooLarge => "reply_too_large",
            OpampError::ShuttingDown => "shutting_down",
            OpampError::Unavailable { .. } => "unavailable",
        }
    }
}

impl Opamp {
    /// The answer to a refused request, counted by why.
    fn refuse(&self, error: OpampError) -> Response {
        self.metrics
            .counter(metrics::REJECTED, &[("reason", error.reason())])
            .increment(1);
        error.into_response()
    }
}

impl IntoResponse for OpampError {
    fn into_response(self) -> Response {
        debug!(error = %self, "OpAMP request refused");
        match self {
            OpampError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                self.to_string(),
            )
                .into_response(),
            // The rest of the body may still be on its way: the socket is not reused.
            OpampError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                self.to_string(),
            )
                .into_response(),
            OpampError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, self.to_string()).into_response()
            }
            OpampError::TooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()).into_response()
            }
            // The body says why in OpAMP's own terms, for clients that read it.
            OpampError::BadRequest { uid, message } => (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, http::PROTOBUF)],
                report::bad_request(uid, message).encode_to_vec(),
            )
                .into_response(),
            OpampError::ReplyTooLarge => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
            OpampError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, HeaderValue::from(5))],
                self.to_string(),
            )
                .into_response(),
            OpampError::Unavailable { uid, retry_after } => unavailable(uid, retry_after),
            OpampError::OverBudget { retry_after } => unavailable(Bytes::new(), retry_after),
        }
    }
}

/// 503 with `Retry-After`, and the same in OpAMP's own terms in the body for clients that read it.
fn unavailable(uid: Bytes, retry_after: u64) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::RETRY_AFTER, HeaderValue::from(retry_after)),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(http::PROTOBUF),
            ),
        ],
        report::unavailable(uid, retry_after).encode_to_vec(),
    )
        .into_response()
}

/// Agent authentication, before the body is read or the connection upgraded (the spec's rule).
async fn authenticate(State(opamp): State<Arc<Opamp>>, request: Request, next: Next) -> Response {
    let tokens = &opamp.config.auth.tokens;
    if tokens.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("secret-key"))
                .then(|| token.trim())
        });
    let accepted = presented.is_some_and(|presented| {
        // Checks every token, in constant time per token, so timing does not tell which matched.
        tokens.iter().fold(false, |found, token| {
            constant_time_eq::constant_time_eq(token.as_bytes(), presented.as_bytes()) | found
        })
    });
    if accepted {
        next.run(request).await
    } else {
        opamp.refuse(OpampError::Unauthorized)
    }
}

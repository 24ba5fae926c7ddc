//! The plain-HTTP transport: one `AgentToServer` per POST, one `ServerToAgent` in the response;
//! gzip both ways; the body limit measured after decompression.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prost::Message as _;
use tower::{Layer as _, ServiceExt as _};
use tower_http::decompression::{DecompressionBody, RequestDecompressionLayer};
use tracing::{Instrument, debug, field, info_span};

use super::{Opamp, OpampError};
use crate::collector::handle::ConnectionRef;
use crate::collector::{ClientCertificate, Transport};
use crate::net::Connection;
use crate::net::budget::{Budget, Held};

pub const PROTOBUF: &str = "application/x-protobuf";

pub async fn handle(
    State(opamp): State<Arc<Opamp>>,
    socket: Option<Extension<Arc<Connection>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let client_certificate = socket.and_then(|Extension(socket)| socket.client_certificate());
    match answer(&opamp, &headers, body, client_certificate).await {
        Ok(response) => response,
        Err(error) => opamp.refuse(error),
    }
}

async fn answer(
    opamp: &Arc<Opamp>,
    headers: &HeaderMap,
    body: Body,
    client_certificate: Option<Arc<ClientCertificate>>,
) -> Result<Response, OpampError> {
    if !is_protobuf(headers) {
        return Err(OpampError::UnsupportedMediaType);
    }
    let connection_id = opamp.connection_id();
    // The header lets us name the collector in logs before the body is decoded; the body decides.
    let announced = headers
        .get("opamp-instance-uid")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v).ok());
    let span = info_span!(
        "opamp_request",
        transport = "http",
        connection = connection_id,
        collector_id = field::Empty
    );
    if let Some(id) = announced {
        span.record("collector_id", field::display(id));
    }
    async move {
        // Held until the reply is built: the body, and what decoding it makes of it.
        let mut held = opamp.budget.hold();
        let payload = tokio::time::timeout(
            opamp.config.body_read_timeout,
            read_body(body, opamp.config.max_message_bytes, &mut held),
        )
        .await
        .map_err(|_| OpampError::BodyTimeout)?
        .map_err(|e| match e {
            BodyError::OverBudget => opamp.over_budget(),
            BodyError::Opamp(e) => e,
        })?;
        let connection = ConnectionRef {
            id: connection_id,
            transport: Transport::Http,
            push: None,
            client_certificate,
        };
        let processed = opamp.process(payload, connection).await?;
        opamp.check_outgoing(&processed.reply)?;
        let mut body = Vec::with_capacity(processed.reply.len);
        processed.reply.message.encode_raw(&mut body);
        debug!(
            bytes = body.len(),
            retry_after = processed.retry_after,
            "OpAMP request answered"
        );
        Ok(match processed.retry_after {
            None => ([(header::CONTENT_TYPE, PROTOBUF)], body).into_response(),
            Some(retry_after) => (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                [
                    (header::RETRY_AFTER, retry_after.to_string()),
                    (header::CONTENT_TYPE, PROTOBUF.to_owned()),
                ],
                body,
            )
                .into_response(),
        })
    }
    .instrument(span)
    .await
}

/// The request decompression in front of [`handle`]: gzip, undone as the body is read, so that
/// the body limit applies to the decompressed bytes.
pub(super) fn decompression() -> RequestDecompressionLayer {
    RequestDecompressionLayer::new().gzip(true)
}

/// The plain-HTTP transport's handling of a request before any collector is involved: its
/// `Content-Encoding` undone by [`decompression`], the body read up to `limit` bytes under
/// `budget`, then [`decode`](super::decode)d. Refusals come back as the answer the listener would
/// send. An entry point for the fuzz targets (docs/fuzzing.md), built from the same parts as
/// [`handle`] so that they exercise the transport's code rather than a copy.
pub async fn decode_request(
    request: Request<Body>,
    limit: usize,
    budget: &Arc<Budget>,
) -> Result<super::Decoded, Response> {
    // The layer wraps a service that answers with a response: the decoded message travels back
    // in the response's extensions.
    let read = tower::service_fn(|request: Request<DecompressionBody<Body>>| async move {
        let mut held = budget.hold();
        let response = match read_body(Body::new(request.into_body()), limit, &mut held).await {
            Ok(payload) => match super::decode(payload) {
                Ok(decoded) => {
                    let mut response = Response::default();
                    response.extensions_mut().insert(decoded);
                    response
                }
                Err(e) => e.into_response(),
            },
            Err(BodyError::OverBudget) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
            Err(BodyError::Opamp(e)) => e.into_response(),
        };
        Ok::<_, Infallible>(response)
    });
    let response = match decompression().layer(read).oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let mut response = response.map(Body::new);
    // Otherwise refused, by `read` or by the layer itself (an encoding it cannot undo).
    response
        .extensions_mut()
        .remove::<super::Decoded>()
        .ok_or(response)
}

/// `application/x-protobuf`, in any case, with or without parameters.
fn is_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(PROTOBUF))
}

enum BodyError {
    OverBudget,
    Opamp(OpampError),
}

/// Reads the (already decompressed) body up to `limit` bytes, each chunk covered by `held` as it
/// arrives: more than the limit is 413, a broken gzip stream 400, past the budget 503.
async fn read_body(body: Body, limit: usize, held: &mut Held) -> Result<Bytes, BodyError> {
    let mut body = Limited::new(body, limit);
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            BodyError::Opamp(if err.is::<LengthLimitError>() {
                OpampError::TooLarge(limit)
            } else {
                OpampError::BadRequest {
                    uid: Bytes::new(),
                    message: format!("unreadable request body: {err}"),
                }
            })
        })?;
        if let Ok(data) = frame.into_data() {
            held.cover(collected.len() + data.len())
                .map_err(|_| BodyError::OverBudget)?;
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_matching() {
        let check = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            is_protobuf(&headers)
        };
        assert!(check("application/x-protobuf"));
        assert!(check("Application/X-Protobuf; charset=binary"));
        assert!(!check("application/json"));
        assert!(!check("application/x-protobufs"));
        assert!(!is_protobuf(&HeaderMap::new()));
    }
}

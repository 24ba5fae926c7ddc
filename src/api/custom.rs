//! Custom messages from operators: to one collector, or to every connected collector a selector
//! picks, each only if it declares the message's custom capability; bounded in size and rate.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Caller;
use super::collectors::json_body;
use super::error::{ApiError, ErrorBody};
use super::view::rfc3339;
use crate::collector::connection::{CustomMessage, Received};
use crate::collector::custom::Refusal;
use crate::collector::{Collector, Event};
use crate::config::Role;
use crate::selector::Selector;

/// Most collectors one message to a selector may reach.
const MAX_SELECTED: usize = 10_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCustomMessage {
    /// The custom capability it belongs to (`io.example.ping`); the collector must declare it.
    pub capability: String,
    /// What kind of message it is, within the capability.
    #[serde(rename = "type")]
    pub kind: String,
    /// The message's bytes, base64 (standard alphabet, padded).
    #[serde(default)]
    pub data: String,
    /// Only for `/api/v1/custom-messages`: the collectors it goes to.
    #[serde(default)]
    pub selector: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomMessageSent {
    /// The collectors it is on its way to.
    pub sent: Vec<String>,
    /// Connected collectors the selector picked that it does not go to, with why.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Skipped {
    pub id: String,
    pub reason: String,
}

/// A collector's custom message as the event stream carries it (`event: custom_message`).
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomMessageView {
    pub collector_id: String,
    pub capability: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Base64.
    pub data: String,
    pub at: String,
}

impl CustomMessageView {
    pub fn new(received: &Received) -> Self {
        Self {
            collector_id: received.collector.to_string(),
            capability: received.message.capability.clone(),
            kind: received.message.kind.clone(),
            data: base64::engine::general_purpose::STANDARD.encode(&received.message.data),
            at: rfc3339(received.at),
        }
    }
}

/// The message as sent, once its form and size are checked.
fn message(api: &ApiState, new: NewCustomMessage) -> Result<CustomMessage, ApiError> {
    if new.capability.is_empty() {
        return Err(ApiError::BadRequest("capability must not be empty".into()));
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(new.data.as_bytes())
        .map_err(|e| ApiError::BadRequest(format!("data must be base64: {e}")))?;
    api.registry
        .custom()
        .check_size(data.len())
        .map_err(refused)?;
    Ok(CustomMessage {
        capability: new.capability,
        kind: new.kind,
        data: data.into(),
    })
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::TooLarge { .. } => ApiError::PayloadTooLarge(refusal.to_string()),
        Refusal::TooFast { retry_after, .. } => ApiError::TooManyRequests {
            message: refusal.to_string(),
            retry_after: retry_after.as_secs().max(1),
        },
    }
}

/// Why `message` cannot go to `c`, if it cannot.
fn unreachable(c: &Collector, message: &CustomMessage) -> Option<String> {
    if !c.connected {
        return Some("not connected".into());
    }
    let declared = c
        .custom_capabilities
        .as_deref()
        .is_some_and(|names| names.contains(&message.capability));
    (!declared).then(|| format!("does not declare {}", message.capability))
}

/// Sends it to one collector, within that collector's rate; the reason when it cannot.
async fn send(
    api: &ApiState,
    c: &Collector,
    message: &CustomMessage,
) -> Result<Result<(), String>, ApiError> {
    if let Some(why) = unreachable(c, message) {
        return Ok(Err(why));
    }
    api.registry
        .custom()
        .admit_outgoing(c.id, message.data.len())
        .map_err(refused)?;
    let event = Event::SendCustomMessage(message.clone());
    Ok(if api.router.apply(c.id, event).await? {
        Ok(())
    } else {
        Err("went away, or has too many messages waiting".into())
    })
}

/// Sends a custom message to one connected collector that declares its capability.
#[utoipa::path(post, path = "/api/v1/collectors/{id}/custom-messages", tag = "collectors",
    params(("id" = String, Path, description = "Collector id (UUID)")),
    request_body = NewCustomMessage,
    responses((status = 202, description = "On its way"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Not connected, or does not declare the capability"),
        (status = 413, body = ErrorBody, description = "Data over custom_messages.max_bytes"),
        (status = 429, body = ErrorBody, description = "Over custom_messages.per_minute for this collector; Retry-After says when")))]
pub async fn to_one(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Result<Json<NewCustomMessage>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let id = super::collectors::collector_id(&id)?;
    let new = json_body(body)?;
    if new.selector.is_some() {
        return Err(ApiError::BadRequest(
            "selector goes to /api/v1/custom-messages".into(),
        ));
    }
    let message = message(&api, new)?;
    let c = match api.router.view(id).await {
        Some(c) => c,
        None => api
            .store
            .load(id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no collector {id}")))?,
    };
    match send(&api, &c, &message).await? {
        Ok(()) => Ok(StatusCode::ACCEPTED),
        Err(why) => Err(ApiError::Conflict(format!("collector {id} {why}"))),
    }
}

/// Sends a custom message to every connected collector the selector picks that declares its
/// capability; the answer lists who it went to and who it did not, with why.
#[utoipa::path(post, path = "/api/v1/custom-messages", tag = "fleet",
    request_body = NewCustomMessage,
    responses((status = 202, body = CustomMessageSent),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody, description = "Data over custom_messages.max_bytes")))]
pub async fn to_selected(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewCustomMessage>, JsonRejection>,
) -> Result<(StatusCode, Json<CustomMessageSent>), ApiError> {
    caller.require(Role::Operator)?;
    let mut new = json_body(body)?;
    let selector = Selector::parse(new.selector.take().as_deref().unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(format!("selector: {e}")))?;
    let message = message(&api, new)?;
    let mut answer = CustomMessageSent {
        sent: Vec::new(),
        skipped: Vec::new(),
    };
    let picked = crate::store::selected(
        api.store.as_ref(),
        &selector,
        std::slice::from_ref(&message.capability),
        None,
    )
    .await?;
    for c in picked.iter().filter(|c| c.connected).take(MAX_SELECTED) {
        let outcome = match send(&api, c, &message).await {
            Ok(outcome) => outcome,
            Err(ApiError::TooManyRequests { message, .. }) => Err(message),
            Err(other) => return Err(other),
        };
        match outcome {
            Ok(()) => answer.sent.push(c.id.to_string()),
            Err(reason) => answer.skipped.push(Skipped {
                id: c.id.to_string(),
                reason,
            }),
        }
    }
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

//! The live event stream: Server-Sent Events of transitions, read from the store's history so that
//! every replica sees the whole fleet, every event has its history position as its id, and a
//! client that reconnects with `Last-Event-ID` misses nothing.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Extension, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt as _};
use tokio::sync::broadcast::error::RecvError;

use super::ApiState;
use super::auth::Caller;
use super::collectors::{last, query_pairs, selector, states};
use super::custom::CustomMessageView;
use super::error::{ApiError, ErrorBody};
use super::view::EventView;
use crate::config::Role;
use crate::store::EventFilter;
use crate::store::tail::Tail;

/// Transitions as they happen: `event: transition`, `id:` the position in the history, data a
/// JSON object with the collector id and the transition. Filter with `state` (the state entered)
/// and `selector` (the collector's labels); resume with `Last-Event-ID`. With
/// `custom_messages=true`, collectors' custom messages too (`event: custom_message`, no id: they
/// are not kept, and only those of collectors connected to this server are seen). With
/// `rollouts=true`, rollout progress too (`event: rollout`, no id, data the rollout's summary:
/// status, reason, batches started and counts per outcome): every running or paused rollout as
/// it stands when the stream opens, then each rollout written since the last look (every half
/// second), as it stands, whichever node wrote it.
#[utoipa::path(get, path = "/api/v1/events", tag = "fleet",
    params(
        ("state" = Option<Vec<String>>, Query, description = "Transitions into any of these states"),
        ("selector" = Option<String>, Query, description = "Label selector on the collectors"),
        ("custom_messages" = Option<bool>, Query, description = "Also collectors' custom messages"),
        ("rollouts" = Option<bool>, Query, description = "Also rollout progress"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event"),
    ),
    responses((status = 200, content_type = "text/event-stream", body = EventView),
        (status = 400, body = ErrorBody),
        (status = 503, description = "api.max_event_streams are open; Retry-After says when to try again", body = ErrorBody)))]
pub async fn events(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    caller.require(Role::Viewer)?;
    // Held by the stream for as long as it is open.
    let place = Arc::clone(&api.event_streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams)?;
    let StreamQuery {
        filter,
        custom_messages: with_custom,
        rollouts: with_rollouts,
    } = stream_query(raw.as_deref())?;
    let selector = filter.selector.clone();
    // Subscribed before the stream starts, so nothing sent from now on is missed.
    let custom = with_custom.then(|| api.registry.custom().subscribe());
    let seq = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v >= 0)
            .ok_or_else(|| ApiError::BadRequest("Last-Event-ID must be an event id".into()))?,
        None => api.store.last_seq().await?,
    };
    let tail = Tail::new(
        Arc::clone(&api.store),
        filter,
        seq,
        api.store_health.flushes(),
        api.router.history_notices(),
        api.shutdown.clone(),
    );
    // The stream's place among `api.max_event_streams` goes with it, given back when it ends.
    let tail = (tail, place);
    let transitions = futures_util::stream::unfold(tail, |(mut tail, place)| async move {
        let event = tail.next().await?;
        let sse = SseEvent::default()
            .id(event.seq.to_string())
            .event("transition")
            .json_data(EventView::new(&event))
            .unwrap_or_else(|_| SseEvent::default().comment("unserialisable event"));
        Some((Ok(sse), (tail, place)))
    });
    let custom = futures_util::stream::unfold(
        (custom, api.store.clone(), selector),
        |(receiver, store, selector)| async move {
            let mut receiver = receiver?;
            loop {
                let sse = match receiver.recv().await {
                    Ok(message) => {
                        if !selector.is_empty() {
                            let labels = store
                                .load(message.collector)
                                .await
                                .ok()
                                .flatten()
                                .map(|c| c.labels)
                                .unwrap_or_default();
                            if !selector.matches(&labels) {
                                continue;
                            }
                        }
                        SseEvent::default()
                            .event("custom_message")
                            .json_data(CustomMessageView::new(&message))
                            .unwrap_or_else(|_| SseEvent::default().comment("unserialisable"))
                    }
                    Err(RecvError::Lagged(missed)) => {
                        SseEvent::default().comment(format!("{missed} custom messages missed"))
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok(sse), (Some(receiver), store, selector)));
            }
        },
    );
    let rollouts = with_rollouts
        .then(|| super::progress::stream(Arc::clone(&api.store), api.shutdown.clone()));
    let rollouts = futures_util::stream::iter(rollouts).flatten();
    let stream =
        futures_util::stream::select(futures_util::stream::select(transitions, custom), rollouts);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// A `name=true` (or `false`, the default) parameter.
fn flag(pairs: &[(String, String)], name: &str) -> Result<bool, ApiError> {
    match last(pairs, name) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{name} is true or false, not {other:?}"
        ))),
    }
}

const KNOWN: &[&str] = &["state", "selector", "custom_messages", "rollouts"];

/// The event stream's query string, read once.
struct StreamQuery {
    filter: EventFilter,
    custom_messages: bool,
    rollouts: bool,
}

fn stream_query(raw: Option<&str>) -> Result<StreamQuery, ApiError> {
    let pairs = query_pairs(raw, KNOWN)?;
    Ok(StreamQuery {
        filter: EventFilter {
            states: states(&pairs)?,
            selector: selector(&pairs)?,
            ..EventFilter::default()
        },
        custom_messages: flag(&pairs, "custom_messages")?,
        rollouts: flag(&pairs, "rollouts")?,
    })
}

/// The event stream's query string: which transitions it wants (the flags checked too).
pub fn event_filter(raw: Option<&str>) -> Result<EventFilter, ApiError> {
    stream_query(raw).map(|q| q.filter)
}

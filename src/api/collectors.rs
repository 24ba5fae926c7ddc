//! The collectors' endpoints: list with filters and cursor pages, one collector, its history,
//! its labels, forgetting it; the fleet summary and the state machine itself.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::view::{CollectorView, TransitionView};
use crate::cluster::orders::Restarted;
use crate::collector::Forgotten;
use crate::collector::facets::Facets;
use crate::collector::state::{EDGES, EXTENSIONS};
use crate::collector::{CollectorId, State as CollectorState};
use crate::config::Role;
use crate::selector::{Selector, valid_label_text};
use crate::store::{After, CollectorQuery, LabelEdit, SortKey};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

/// Query parameters as pairs, so `state` may repeat; anything not in `known` is refused.
pub fn query_pairs(raw: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?;
    if let Some((key, _)) = pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(ApiError::BadRequest(format!(
            "unknown query parameter {key:?} (known: {})",
            known.join(", ")
        )));
    }
    Ok(pairs)
}

/// `state=a&state=b` or `state=a,b`.
/// The values of a parameter that may repeat and may list several values separated by commas.
fn listed<'a>(pairs: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> {
    pairs
        .iter()
        .filter(move |(k, _)| k == name)
        .flat_map(|(_, v)| v.split(','))
        .filter(|s| !s.is_empty())
}

pub fn states(pairs: &[(String, String)]) -> Result<Vec<CollectorState>, ApiError> {
    listed(pairs, "state")
        .map(|s| {
            CollectorState::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown state {s:?} (one of: {})",
                    CollectorState::ALL.map(CollectorState::as_str).join(", ")
                ))
            })
        })
        .collect()
}

fn facets(pairs: &[(String, String)]) -> Result<Facets, ApiError> {
    listed(pairs, "facet").try_fold(Facets::default(), |set, name| {
        let facet = Facets::parse(name).ok_or_else(|| {
            let known: Vec<_> = Facets::each().map(|(_, n)| n).collect();
            ApiError::BadRequest(format!(
                "unknown facet {name:?} (one of: {})",
                known.join(", ")
            ))
        })?;
        Ok(set | facet)
    })
}

pub fn selector(pairs: &[(String, String)]) -> Result<Selector, ApiError> {
    match last(pairs, "selector") {
        Some(text) => Selector::parse(text).map_err(|e| ApiError::BadRequest(e.to_string())),
        None => Ok(Selector::default()),
    }
}

pub fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(super) fn limit(pairs: &[(String, String)]) -> Result<usize, ApiError> {
    match last(pairs, "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_LIMIT}"))),
    }
}

pub(super) fn collector_id(text: &str) -> Result<CollectorId, ApiError> {
    text.parse()
        .map(CollectorId)
        .map_err(|_| ApiError::BadRequest(format!("{text:?} is not a collector id (a UUID)")))
}

/// What a collectors cursor carries: the sort it belongs to and where the page ended.
#[derive(Serialize, Deserialize)]
struct ListCursor {
    sort: String,
    value: String,
    id: String,
}

pub(super) fn encode_cursor<T: Serialize>(cursor: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(cursor).unwrap_or_default())
}

pub(super) fn decode_cursor<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, ApiError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))
}

/// A collectors list request, its query string read: what to ask the store for, and what the
/// next page's cursor must carry.
#[derive(Debug)]
pub struct ListRequest {
    /// Asks for one more than `limit`, to tell whether there is a next page.
    pub query: CollectorQuery,
    /// The `sort` parameter as given (`-name`), which the cursor carries.
    pub sort_text: String,
    pub limit: usize,
}

/// Reads the collectors list's query string; no store is involved, so every malformed query is
/// the caller's 400 before anything is looked up.
pub fn list_query(raw: Option<&str>) -> Result<ListRequest, ApiError> {
    let pairs = query_pairs(
        raw,
        &[
            "state",
            "facet",
            "custom_capability",
            "selector",
            "q",
            "sort",
            "limit",
            "cursor",
        ],
    )?;
    let sort_text = last(&pairs, "sort").unwrap_or("id");
    let (descending, key) = match sort_text.strip_prefix('-') {
        Some(key) => (true, key),
        None => (false, sort_text),
    };
    let sort = SortKey::parse(key).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "cannot sort by {key:?} (id, name, state, last_seen, state_since)"
        ))
    })?;
    let after = match last(&pairs, "cursor") {
        Some(text) => {
            let cursor: ListCursor = decode_cursor(text)?;
            if cursor.sort != sort_text {
                return Err(ApiError::BadRequest(
                    "the cursor belongs to another sort order".into(),
                ));
            }
            if sort.is_time() {
                // Checked here so that a bad cursor is the caller's error, not the store's.
                time::OffsetDateTime::parse(
                    &cursor.value,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|_| ApiError::BadRequest("invalid cursor".into()))?;
            }
            Some(After {
                value: cursor.value,
                id: cursor.id,
            })
        }
        None => None,
    };
    let limit = limit(&pairs)?;
    Ok(ListRequest {
        query: CollectorQuery {
            states: states(&pairs)?,
            facets: facets(&pairs)?,
            custom_capabilities: listed(&pairs, "custom_capability")
                .map(str::to_owned)
                .collect(),
            selector: selector(&pairs)?,
            text: last(&pairs, "q").map(str::to_owned),
            sort,
            descending,
            after,
            limit: limit + 1,
            parts: None,
        },
        sort_text: sort_text.to_owned(),
        limit,
    })
}

/// The cursor a list page ends with, as [`list_query`] reads it back: for the fuzz targets'
/// round trip (docs/fuzzing.md) as much as for [`list`].
pub fn list_cursor(sort_text: &str, value: String, id: String) -> String {
    encode_cursor(&ListCursor {
        sort: sort_text.to_owned(),
        value,
        id,
    })
}

/// `limit` and `cursor` of a collector's transitions: the page size and the position to go on
/// before.
pub fn transitions_query(raw: Option<&str>) -> Result<(usize, Option<i64>), ApiError> {
    let pairs = query_pairs(raw, &["limit", "cursor"])?;
    let limit = limit(&pairs)?;
    let before = last(&pairs, "cursor")
        .map(decode_cursor::<i64>)
        .transpose()?;
    Ok((limit, before))
}

/// Whether one collector's view includes its effective configuration (`include`).
pub fn include_query(raw: Option<&str>) -> Result<bool, ApiError> {
    let pairs = query_pairs(raw, &["include"])?;
    match last(&pairs, "include") {
        None | Some("") => Ok(false),
        Some("effective_config") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "cannot include {other:?} (only effective_config)"
        ))),
    }
}

#[derive(Serialize, ToSchema)]
pub struct CollectorPage {
    pub items: Vec<CollectorView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Documentation of the list parameters (they are parsed by hand: `state` repeats).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListParams {
    /// Any of these states (repeat, or separate with commas).
    state: Option<Vec<String>>,
    /// Collectors with any of these facets: `drifted`, `stale`, `degraded` (repeat, or
    /// separate with commas).
    facet: Option<Vec<String>>,
    /// Collectors that declare any of these custom capabilities (repeat, or separate with
    /// commas), e.g. `io.opentelemetry.pprof`.
    custom_capability: Option<Vec<String>>,
    /// Label selector: `env=prod,region!=eu,tier in (a,b),gpu,!legacy`.
    selector: Option<String>,
    /// Case-insensitive text in the id, name, host name or version.
    q: Option<String>,
    /// `id` (default), `name`, `state`, `last_seen`, `state_since`; a leading `-` sorts descending.
    sort: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<usize>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/collectors", tag = "collectors", params(ListParams),
    responses((status = 200, body = CollectorPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub async fn list(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<CollectorPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let ListRequest {
        query,
        sort_text,
        limit,
    } = list_query(raw.as_deref())?;
    let sort = query.sort;
    let mut found = api.store.list(&query).await?;
    let next_cursor = if found.len() > limit {
        found.truncate(limit);
        found
            .last()
            .map(|c| list_cursor(&sort_text, sort.value_of(c), c.id.to_string()))
    } else {
        None
    };
    Ok(Json(CollectorPage {
        items: found.iter().map(|c| CollectorView::new(c, false)).collect(),
        next_cursor,
    }))
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct OneParams {
    /// `effective_config` adds the effective configuration's files.
    include: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/collectors/{id}", tag = "collectors",
    params(("id" = String, Path, description = "Collector id (UUID)"), OneParams),
    responses((status = 200, body = CollectorView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn one(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<CollectorView>, ApiError> {
    caller.require(Role::Viewer)?;
    let include = include_query(raw.as_deref())?;
    let id = collector_id(&id)?;
    let record = api.store.load(id).await?.ok_or_else(|| not_found(id))?;
    Ok(Json(CollectorView::new(&record, include)))
}

fn not_found(id: CollectorId) -> ApiError {
    ApiError::NotFound(format!("no collector {id}"))
}

#[derive(Serialize, ToSchema)]
pub struct TransitionPage {
    /// Newest first.
    pub items: Vec<TransitionView>,
    pub next_cursor: Option<String>,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    limit: Option<usize>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/collectors/{id}/transitions", tag = "collectors",
    params(("id" = String, Path, description = "Collector id (UUID)"), PageParams),
    responses((status = 200, body = TransitionPage), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn transitions(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<TransitionPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let (limit, before) = transitions_query(raw.as_deref())?;
    let id = collector_id(&id)?;
    if api.store.load(id).await?.is_none() {
        return Err(not_found(id));
    }
    let mut events = api.store.history(id, before, limit + 1).await?;
    let next_cursor = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|e| encode_cursor(&e.seq))
    } else {
        None
    };
    Ok(Json(TransitionPage {
        items: events
            .iter()
            .map(|e| TransitionView::new(&e.transition))
            .collect(),
        next_cursor,
    }))
}

fn check_label(key: &str, value: Option<&str>) -> Result<(), ApiError> {
    if !valid_label_text(key) || value.is_some_and(|v| !valid_label_text(v)) {
        return Err(ApiError::BadRequest(format!(
            "label {key:?}: keys and values are 1 to 253 letters, digits or ._-/"
        )));
    }
    Ok(())
}

pub fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(v)| v).map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        _ => ApiError::BadRequest(e.body_text()),
    })
}

/// Labels are the operators' own and live in the store alone: the edit is one statement,
/// committed before the answer, so the next read anywhere shows it.
async fn edit_labels(
    api: &ApiState,
    id: &str,
    edit: LabelEdit,
) -> Result<Json<CollectorView>, ApiError> {
    let id = collector_id(id)?;
    let labels = api
        .store
        .edit_labels(id, &edit)
        .await?
        .ok_or_else(|| not_found(id))?;
    super::settings::labels_changed(api, id);
    let mut record = api.store.load(id).await?.ok_or_else(|| not_found(id))?;
    record.labels = labels;
    Ok(Json(CollectorView::new(&record, false)))
}

/// Replaces all of a collector's labels.
#[utoipa::path(put, path = "/api/v1/collectors/{id}/labels", tag = "collectors",
    params(("id" = String, Path, description = "Collector id (UUID)")),
    request_body(content = BTreeMap<String, String>, description = "The new labels"),
    responses((status = 200, body = CollectorView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn replace_labels(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    labels: Result<Json<BTreeMap<String, String>>, JsonRejection>,
) -> Result<Json<CollectorView>, ApiError> {
    caller.require(Role::Operator)?;
    let labels = json_body(labels)?;
    for (k, v) in &labels {
        check_label(k, Some(v))?;
    }
    edit_labels(&api, &id, LabelEdit::Replace(labels)).await
}

/// Changes some labels (a JSON merge patch: `{"tier": "gold", "legacy": null}` sets one and
/// removes another), leaving the others.
#[utoipa::path(patch, path = "/api/v1/collectors/{id}/labels", tag = "collectors",
    params(("id" = String, Path, description = "Collector id (UUID)")),
    request_body(content = BTreeMap<String, Option<String>>, description = "Labels to set; null removes"),
    responses((status = 200, body = CollectorView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn merge_labels(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    changes: Result<Json<BTreeMap<String, Option<String>>>, JsonRejection>,
) -> Result<Json<CollectorView>, ApiError> {
    caller.require(Role::Operator)?;
    let changes = json_body(changes)?;
    for (k, v) in &changes {
        check_label(k, v.as_deref())?;
    }
    edit_labels(&api, &id, LabelEdit::Merge(changes)).await
}

/// Forgets a Disconnected collector: its record and history are deleted.
#[utoipa::path(delete, path = "/api/v1/collectors/{id}", tag = "collectors",
    params(("id" = String, Path, description = "Collector id (UUID)")),
    responses((status = 204, description = "Forgotten"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn forget(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Admin)?;
    let id = collector_id(&id)?;
    match api.router.forget(id).await? {
        Forgotten::Done => Ok(StatusCode::NO_CONTENT),
        Forgotten::Unknown => Err(not_found(id)),
        Forgotten::Refused(state) => Err(ApiError::Conflict(format!(
            "collector {id} is {state}; only a disconnected collector can be forgotten"
        ))),
        Forgotten::Unavailable => Err(ApiError::Unavailable),
    }
}

/// Sends the restart command to a connected collector that accepts it.
#[utoipa::path(post, path = "/api/v1/collectors/{id}/restart", tag = "collectors",
    params(("id" = String, Path, description = "Collector id (UUID)")),
    responses((status = 202, description = "The command is on its way"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Not connected, or does not accept restarts")))]
pub async fn restart(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let id = collector_id(&id)?;
    // Carried out by the node holding the connection, wherever that is.
    match api.router.restart(id).await? {
        Restarted::Sent => Ok(StatusCode::ACCEPTED),
        Restarted::Unknown => Err(not_found(id)),
        Restarted::NotConnected => Err(ApiError::Conflict(format!(
            "collector {id} is not connected to any server"
        ))),
        Restarted::NotAccepted => Err(ApiError::Conflict(format!(
            "collector {id} does not accept the restart command"
        ))),
    }
}

#[derive(Serialize, ToSchema)]
pub struct Summary {
    pub total: u64,
    /// Every one of the seven states, zero included.
    #[schema(value_type = BTreeMap<String, u64>)]
    pub by_state: BTreeMap<&'static str, u64>,
    /// Collectors with each facet (`drifted`, `stale`, `degraded`), zero included; a collector
    /// may have several.
    #[schema(value_type = BTreeMap<String, u64>)]
    pub by_facet: BTreeMap<&'static str, u64>,
}

#[utoipa::path(get, path = "/api/v1/summary", tag = "fleet",
    responses((status = 200, body = Summary)))]
pub async fn summary(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Summary>, ApiError> {
    caller.require(Role::Viewer)?;
    let counts = api.store.census().await?;
    let by_state: BTreeMap<&'static str, u64> = CollectorState::ALL
        .iter()
        .map(|s| (s.as_str(), counts.states.get(s).copied().unwrap_or(0)))
        .collect();
    Ok(Json(Summary {
        total: by_state.values().sum(),
        by_state,
        by_facet: counts.facets.into_iter().collect(),
    }))
}

#[derive(Serialize, ToSchema)]
pub struct EdgeView {
    /// `null` is the diagram's initial `[*]`.
    pub from: Option<&'static str>,
    pub to: &'static str,
    pub reasons: Vec<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct ExtensionView {
    #[serde(flatten)]
    pub edge: EdgeView,
    pub why: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct StateMachine {
    pub states: Vec<&'static str>,
    pub edges: Vec<EdgeView>,
    /// Edges the diagram lacks that the product needs, each with why.
    pub extensions: Vec<ExtensionView>,
}

fn edge(e: &crate::collector::state::Edge) -> EdgeView {
    EdgeView {
        from: e.from.map(CollectorState::as_str),
        to: e.to.as_str(),
        reasons: e.reasons.iter().map(|r| r.as_str()).collect(),
    }
}

#[utoipa::path(get, path = "/api/v1/state-machine", tag = "fleet",
    responses((status = 200, body = StateMachine)))]
pub async fn state_machine(
    Extension(caller): Extension<Caller>,
) -> Result<Json<StateMachine>, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(Json(StateMachine {
        states: CollectorState::ALL.iter().map(|s| s.as_str()).collect(),
        edges: EDGES.iter().map(edge).collect(),
        extensions: EXTENSIONS
            .iter()
            .map(|x| ExtensionView {
                edge: edge(&x.edge),
                why: x.why,
            })
            .collect(),
    }))
}

//! Rollouts through the API: start one (or ask what it would do), follow its progress, pause,
//! resume and cancel it. The engine does the work; these handlers translate.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Caller;
use super::collectors::{
    PageParams, collector_id, decode_cursor, encode_cursor, json_body, last, limit, query_pairs,
};
use super::error::{ApiError, ErrorBody};
use crate::config::Role;
use crate::fleet::engine::{Control, FleetError, NewRollout};
use crate::fleet::rollout::{Outcome, PackageSpec, Payload, Rollout, RolloutOptions, Target};
use crate::fleet::summary::RolloutSummary;
use crate::selector::Selector;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRolloutBody {
    pub configuration: String,
    pub version: i64,
    /// Label selector of the collectors to configure; empty means all.
    #[serde(default)]
    pub selector: String,
    /// Collectors in the first batch (default 3).
    pub initial_batch: Option<usize>,
    /// Each batch is this many times the one before (default 5)…
    pub multiplier: Option<usize>,
    /// …up to this many (default 100).
    pub max_batch: Option<usize>,
    /// Failures tolerated before the rollout pauses itself (default 0).
    pub max_errors: Option<usize>,
    /// Send collectors that fail back to the configuration they ran before (default false).
    pub rollback: Option<bool>,
    /// Seconds a collector sent the configuration has to report its verdict before its target
    /// ends `timed_out`, a failure (default three heartbeat intervals, `opamp.heartbeat_interval`).
    pub timeout_seconds: Option<u64>,
    /// Answer which collectors would be queued, which are Incompatible and why, changing nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Targets in `GET /api/v1/rollouts/{id}`: the first page of them.
const FIRST_TARGETS: usize = 100;

#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutView {
    #[serde(flatten)]
    pub summary: RolloutSummary,
    /// Its targets by collector id: every one in the answer to a start (a dry run's plan) or a
    /// control; the first 100 in `GET /api/v1/rollouts/{id}`, the rest paged under
    /// `/api/v1/rollouts/{id}/targets`.
    pub targets: Vec<Target>,
    /// Pass as `cursor` to `/api/v1/rollouts/{id}/targets` for the targets after these; `null`
    /// when there are no more.
    pub targets_next_cursor: Option<String>,
}

impl From<Rollout> for RolloutView {
    fn from(rollout: Rollout) -> Self {
        Self {
            summary: RolloutSummary::of(&rollout),
            targets: rollout.targets,
            targets_next_cursor: None,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutList {
    /// Newest first, without their targets.
    pub items: Vec<RolloutSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetPage {
    /// By collector id.
    pub items: Vec<Target>,
    /// Pass as `cursor` (with the same `outcome`) for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Documentation of the targets' parameters (parsed by hand, like the other pages).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct TargetParams {
    /// Only targets with this outcome (`pending`, `applied`, `timed_out`, …).
    outcome: Option<String>,
    /// Page size, 1 to 500 (default 50).
    limit: Option<usize>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

impl From<FleetError> for ApiError {
    fn from(err: FleetError) -> Self {
        match err {
            FleetError::NotFound(m) => ApiError::NotFound(m),
            FleetError::Conflict(m) => ApiError::Conflict(m),
            FleetError::Invalid(m) => ApiError::BadRequest(m),
            FleetError::Store(e) => ApiError::Store(e),
            FleetError::Stopped => ApiError::ShuttingDown,
            FleetError::Elsewhere(m) => ApiError::Elsewhere(m),
        }
    }
}

/// Starts a rollout: every matched collector is queued (Pending) or found Incompatible, and the
/// configuration goes out batch by batch. With `dry_run`, nothing changes.
#[utoipa::path(post, path = "/api/v1/rollouts", tag = "rollouts",
    request_body = NewRolloutBody,
    responses((status = 201, body = RolloutView, description = "Started"),
        (status = 200, body = RolloutView, description = "The dry run's plan"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewRolloutBody>, JsonRejection>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    caller.require(Role::Operator)?;
    let body = json_body(body)?;
    let selector =
        Selector::parse(&body.selector).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let options = options(
        [
            body.initial_batch,
            body.multiplier,
            body.max_batch,
            body.max_errors,
        ],
        body.rollback,
        body.timeout_seconds,
    )?;
    let payload = Payload::Configuration {
        configuration: body.configuration,
        version: body.version,
    };
    start(&api, payload, selector, options, body.dry_run).await
}

/// The batching options, defaults filled in.
fn options(
    [initial_batch, multiplier, max_batch, max_errors]: [Option<usize>; 4],
    rollback: Option<bool>,
    timeout_seconds: Option<u64>,
) -> Result<RolloutOptions, ApiError> {
    let defaults = RolloutOptions::default();
    let options = RolloutOptions {
        initial_batch: initial_batch.unwrap_or(defaults.initial_batch),
        multiplier: multiplier.unwrap_or(defaults.multiplier),
        max_batch: max_batch.unwrap_or(defaults.max_batch),
        max_errors: max_errors.unwrap_or(defaults.max_errors),
        rollback: rollback.unwrap_or(defaults.rollback),
        // 0 asks the engine for its default.
        timeout_seconds: timeout_seconds.unwrap_or(0),
    };
    if timeout_seconds == Some(0) {
        return Err(ApiError::BadRequest(
            "timeout_seconds must be at least 1".into(),
        ));
    }
    if options.initial_batch == 0 || options.multiplier == 0 || options.max_batch == 0 {
        return Err(ApiError::BadRequest(
            "initial_batch, multiplier and max_batch must be at least 1".into(),
        ));
    }
    Ok(options)
}

async fn start(
    api: &ApiState,
    payload: Payload,
    selector: Selector,
    options: RolloutOptions,
    dry_run: bool,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let rollout = api
        .router
        .start_rollout(NewRollout {
            payload,
            selector,
            options,
            dry_run,
        })
        .await?;
    let status = if dry_run {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(rollout.into())))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUpgradeBody {
    /// The package's name, as the collector reports it in its package statuses.
    pub name: String,
    pub version: String,
    pub download_url: String,
    /// SHA-256 of the file, 64 hex digits.
    pub sha256: String,
    /// Signature of the file, hex (optional).
    #[serde(default)]
    pub signature: String,
    /// Label selector of the collectors to upgrade; empty means all.
    #[serde(default)]
    pub selector: String,
    /// Collectors in the first batch (default 3).
    pub initial_batch: Option<usize>,
    /// Each batch is this many times the one before (default 5)…
    pub multiplier: Option<usize>,
    /// …up to this many (default 100).
    pub max_batch: Option<usize>,
    /// Failures tolerated before the upgrade pauses itself (default 0).
    pub max_errors: Option<usize>,
    /// Seconds a collector offered the package has to report its verdict before its target ends
    /// `timed_out`, a failure (default three heartbeat intervals, `opamp.heartbeat_interval`).
    pub timeout_seconds: Option<u64>,
    /// Answer which collectors would be offered the package, and which refused, changing nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// Offers a package to the collectors a selector matches, batch by batch like a rollout (it is
/// one: follow, pause, resume and cancel it under `/api/v1/rollouts/{id}`). Collectors without
/// `AcceptsPackages` are refused and listed (outcome `unsupported`).
#[utoipa::path(post, path = "/api/v1/upgrades", tag = "rollouts",
    request_body = NewUpgradeBody,
    responses((status = 201, body = RolloutView, description = "Started"),
        (status = 200, body = RolloutView, description = "The dry run's plan"),
        (status = 400, body = ErrorBody)))]
pub async fn upgrade(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewUpgradeBody>, JsonRejection>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    caller.require(Role::Operator)?;
    let body = json_body(body)?;
    let selector =
        Selector::parse(&body.selector).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let options = options(
        [
            body.initial_batch,
            body.multiplier,
            body.max_batch,
            body.max_errors,
        ],
        Some(false),
        body.timeout_seconds,
    )?;
    let payload = Payload::Package {
        package: PackageSpec {
            name: body.name,
            version: body.version,
            download_url: body.download_url,
            sha256: body.sha256.to_ascii_lowercase(),
            signature: body.signature.to_ascii_lowercase(),
        },
    };
    start(&api, payload, selector, options, body.dry_run).await
}

/// Rollouts without their targets, newest first, a page at a time.
#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts",
    params(PageParams),
    responses((status = 200, body = RolloutList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<RolloutList>, ApiError> {
    caller.require(Role::Viewer)?;
    let pairs = query_pairs(raw.as_deref(), &["limit", "cursor"])?;
    let limit = limit(&pairs)?;
    let after = last(&pairs, "cursor")
        .map(decode_cursor::<String>)
        .transpose()?;
    let mut items = api
        .store
        .rollout_summaries(after.as_deref(), limit + 1)
        .await?;
    let next_cursor = next(&mut items, limit, |s| encode_cursor(&s.id));
    Ok(Json(RolloutList { items, next_cursor }))
}

/// Keeps `limit` of `items` (asked for one more); the cursor after the last kept, if more follow.
fn next<T>(items: &mut Vec<T>, limit: usize, cursor: impl Fn(&T) -> String) -> Option<String> {
    if items.len() <= limit {
        return None;
    }
    items.truncate(limit);
    items.last().map(cursor)
}

/// The rollout with its progress, and its first targets.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorBody)))]
pub async fn one(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    caller.require(Role::Viewer)?;
    let summary = api
        .store
        .rollout(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let mut targets = api
        .store
        .rollout_targets(&id, None, FIRST_TARGETS + 1, None)
        .await?;
    let targets_next_cursor = next(&mut targets, FIRST_TARGETS, target_cursor);
    Ok(Json(RolloutView {
        summary,
        targets,
        targets_next_cursor,
    }))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no rollout {id}"))
}

fn target_cursor(target: &Target) -> String {
    encode_cursor(&target.collector.to_string())
}

/// A rollout's targets by collector id, a page at a time, those with one `outcome` if given.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/targets", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id"), TargetParams),
    responses((status = 200, body = TargetPage), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn targets(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<TargetPage>, ApiError> {
    caller.require(Role::Viewer)?;
    let pairs = query_pairs(raw.as_deref(), &["outcome", "limit", "cursor"])?;
    let limit = limit(&pairs)?;
    let outcome = last(&pairs, "outcome")
        .map(|text| {
            Outcome::parse(text).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown outcome {text:?} (one of: {})",
                    Outcome::ALL.map(Outcome::as_str).join(", ")
                ))
            })
        })
        .transpose()?;
    let after = last(&pairs, "cursor")
        .map(|text| collector_id(&decode_cursor::<String>(text)?))
        .transpose()?;
    let mut items = api
        .store
        .rollout_targets(&id, after, limit + 1, outcome)
        .await?;
    // An empty page may be an unknown rollout: only then is the rollout itself looked up.
    if items.is_empty() && api.store.rollout(&id).await?.is_none() {
        return Err(not_found(&id));
    }
    let next_cursor = next(&mut items, limit, target_cursor);
    Ok(Json(TargetPage { items, next_cursor }))
}

/// `pause`, `resume` (failures so far are accepted; new ones count again) or `cancel` (queued
/// collectors go back to their previous state).
#[utoipa::path(post, path = "/api/v1/rollouts/{id}/{action}", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id"),
        ("action" = String, Path, description = "pause, resume or cancel")),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "Not possible in the rollout's status")))]
pub async fn control(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<RolloutView>, ApiError> {
    caller.require(Role::Operator)?;
    let control = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "cancel" => Control::Cancel,
        other => return Err(ApiError::NotFound(format!("no rollout action {other:?}"))),
    };
    Ok(Json(api.router.control_rollout(&id, control).await?.into()))
}

//! Rollouts through the API: start one (or ask what it would do), follow its progress, pause,
//! resume and cancel it. The engine does the work; these handlers translate.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Caller;
use super::collectors::json_body;
use super::error::{ApiError, ErrorBody};
use crate::config::Role;
use crate::fleet::engine::{Control, FleetError, NewRollout};
use crate::fleet::rollout::{PackageSpec, Payload, Rollout, RolloutOptions};
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

#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutView {
    #[serde(flatten)]
    pub rollout: Rollout,
    /// How many targets have each outcome.
    #[schema(value_type = BTreeMap<String, usize>)]
    pub progress: BTreeMap<&'static str, usize>,
}

impl From<Rollout> for RolloutView {
    fn from(rollout: Rollout) -> Self {
        Self {
            progress: rollout.progress(),
            rollout,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RolloutList {
    /// Newest first, without the per-collector outcomes.
    pub items: Vec<RolloutView>,
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

fn read(document: serde_json::Value) -> Result<Rollout, ApiError> {
    serde_json::from_value(document)
        .map_err(|e| ApiError::Store(crate::store::StoreError::Corrupt(format!("rollout: {e}"))))
}

#[utoipa::path(get, path = "/api/v1/rollouts", tag = "rollouts",
    responses((status = 200, body = RolloutList)))]
pub async fn list(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<RolloutList>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut items = Vec::new();
    for document in api.store.rollouts().await?.into_iter().rev() {
        let mut view = RolloutView::from(read(document)?);
        view.rollout.targets.clear();
        items.push(view);
    }
    Ok(Json(RolloutList { items }))
}

#[utoipa::path(get, path = "/api/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = RolloutView), (status = 404, body = ErrorBody)))]
pub async fn one(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    caller.require(Role::Viewer)?;
    let document = api
        .store
        .rollout(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {id}")))?;
    Ok(Json(read(document)?.into()))
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

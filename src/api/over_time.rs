//! `GET /api/v1/summary/history`: the fleet's counts per state at evenly spaced points of the
//! last hours, derived from the history (ADR 0061).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Extension, RawQuery, State};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::auth::Caller;
use super::collectors::{last, query_pairs};
use super::error::{ApiError, ErrorBody};
use super::view::rfc3339;
use crate::config::Role;
use crate::store::over_time::{Window, counts_over_time};

const DEFAULT_HOURS: i64 = 6;
const MAX_HOURS: i64 = 7 * 24;
const MIN_STEP: i64 = 60;
/// Points a window may hold: enough for a chart as wide as a screen, few enough to stay small.
const MAX_STEPS: i64 = 1_000;
/// Steps in a window when `step` is not given.
const DEFAULT_STEPS: i64 = 60;

/// Documentation of the query (read by hand, so unknown parameters are refused).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HistoryParams {
    /// How far back, in hours: 1 to 168 (default 6).
    hours: Option<i64>,
    /// Seconds between points: at least 60, at most the window, and at most 1000 steps in it
    /// (default: the window in 60 steps).
    step: Option<i64>,
}

/// `hours` and `step` (seconds) of the query, checked.
pub fn history_query(raw: Option<&str>) -> Result<(i64, i64), ApiError> {
    let pairs = query_pairs(raw, &["hours", "step"])?;
    let number = |key: &str| -> Result<Option<i64>, ApiError> {
        last(&pairs, key)
            .map(|text| {
                text.parse::<i64>()
                    .map_err(|_| ApiError::BadRequest(format!("{key} must be a whole number")))
            })
            .transpose()
    };
    let hours = number("hours")?.unwrap_or(DEFAULT_HOURS);
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(ApiError::BadRequest(format!(
            "hours must be 1 to {MAX_HOURS}"
        )));
    }
    let seconds = hours * 3600;
    let step = number("step")?.unwrap_or(seconds / DEFAULT_STEPS);
    let least = MIN_STEP.max((seconds + MAX_STEPS - 1) / MAX_STEPS);
    if !(least..=seconds).contains(&step) {
        return Err(ApiError::BadRequest(format!(
            "step must be {least} to {seconds} seconds for {hours} hours"
        )));
    }
    Ok((hours, step))
}

#[derive(Serialize, ToSchema)]
pub struct CountsPoint {
    /// The instant (RFC 3339); the counts are those just before it, the last point's are now's.
    pub at: String,
    /// Every one of the seven states, zero included.
    #[schema(value_type = BTreeMap<String, u64>)]
    pub by_state: BTreeMap<&'static str, u64>,
}

#[derive(Serialize, ToSchema)]
pub struct SummaryHistory {
    pub hours: i64,
    /// Seconds between points.
    pub step: i64,
    /// Oldest first; the last is now, the first at most `hours` before.
    pub points: Vec<CountsPoint>,
}

/// The counts per state over the last hours, derived from the collectors' transitions: exact
/// for collectors still known; forgotten ones are absent from every point (their history
/// went with them).
#[utoipa::path(get, path = "/api/v1/summary/history", tag = "fleet", params(HistoryParams),
    responses((status = 200, body = SummaryHistory),
              (status = 400, description = "bad hours or step", body = ErrorBody)))]
pub async fn summary_history(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    RawQuery(raw): RawQuery,
) -> Result<Json<SummaryHistory>, ApiError> {
    caller.require(Role::Viewer)?;
    let (hours, step) = history_query(raw.as_deref())?;
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let window = Window::ending(now, hours * 3600, step);
    let (census, changes) = api.store.counts_over_time(window).await?;
    let series = counts_over_time(&census.states, window, &changes);
    let points = series
        .into_iter()
        .enumerate()
        .map(|(k, counts)| CountsPoint {
            at: rfc3339(UNIX_EPOCH + Duration::from_secs(window.at(k).cast_unsigned())),
            // Every one of the seven: the series already holds each, zero included.
            by_state: counts.into_iter().map(|(s, n)| (s.as_str(), n)).collect(),
        })
        .collect();
    Ok(Json(SummaryHistory {
        hours,
        step,
        points,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_and_step_are_bounded() {
        assert_eq!(history_query(None).unwrap(), (6, 360));
        assert_eq!(history_query(Some("hours=1&step=60")).unwrap(), (1, 60));
        for bad in [
            "hours=0",
            "hours=169",
            "hours=x",
            "step=59",
            "hours=1&step=3601",
            "hours=168&step=60",
            "hours=2&steps=3",
        ] {
            assert!(
                matches!(history_query(Some(bad)), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
    }
}

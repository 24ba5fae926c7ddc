//! The operations listener: the REST API under `/api/v1`, its OpenAPI document, live events,
//! Prometheus metrics, and the liveness and readiness probes.

pub mod auth;
mod collectors;
mod configurations;
mod console;
mod custom;
pub mod error;
mod events;
pub mod keyfile;
pub mod openapi;
mod over_time;
pub mod probe;
mod progress;
mod rollouts;
mod settings;
pub mod view;

/// The query strings of the endpoints read as pure functions, before any store is asked: what the
/// handlers call, public for the fuzz targets (docs/fuzzing.md).
pub mod query {
    pub use super::collectors::{
        ListRequest, include_query, list_cursor, list_query, transitions_query,
    };
    pub use super::configurations::diff_query;
    pub use super::events::event_filter;
    pub use super::over_time::history_query;
}

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;

use crate::collector::Registry;
use crate::config::{ApiConfig, Role};
use crate::store::Store;
use crate::store::writer::StoreHealth;
use crate::telemetry::metrics;
use auth::Caller;
use error::ApiError;

#[derive(Clone)]
pub struct ApiState {
    /// Cancelled when shutdown begins: from then on the server is alive but not ready.
    pub shutdown: CancellationToken,
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    pub store_health: Arc<StoreHealth>,
    pub config: Arc<ApiConfig>,
    /// Where orders are carried out: this node, or the node holding the collector (or running
    /// the rollout engine).
    pub router: Arc<crate::cluster::router::Router>,
    /// Who may call, decided at start-up (the configured keys, or the generated admin key).
    pub access: Arc<auth::Access>,
    /// The store's reachability and the fleet's counts, read in the background.
    pub probe: Arc<probe::Probe>,
    /// Places for open event streams (`api.max_event_streams`).
    pub event_streams: Arc<tokio::sync::Semaphore>,
    /// This server's own metrics.
    pub metrics: metrics::Metrics,
    /// Tells collectors the connection settings offers give them (shared with the arrivals').
    pub settings: crate::fleet::settings::Distributor,
}

pub fn router(state: ApiState) -> Router {
    let timeout = state.config.request_timeout;
    let rest = Router::new()
        .route("/api/v1/collectors", get(collectors::list))
        .route(
            "/api/v1/collectors/{id}",
            get(collectors::one).delete(collectors::forget),
        )
        .route(
            "/api/v1/collectors/{id}/transitions",
            get(collectors::transitions),
        )
        .route(
            "/api/v1/collectors/{id}/restart",
            axum::routing::post(collectors::restart),
        )
        .route(
            "/api/v1/collectors/{id}/labels",
            axum::routing::put(collectors::replace_labels).patch(collectors::merge_labels),
        )
        .route(
            "/api/v1/configurations",
            get(configurations::list).post(configurations::create),
        )
        .route(
            "/api/v1/configurations/{name}",
            get(configurations::history),
        )
        .route(
            "/api/v1/configurations/{name}/versions/{version}",
            get(configurations::version),
        )
        .route(
            "/api/v1/configurations/{name}/diff",
            get(configurations::diff),
        )
        .route(
            "/api/v1/rollouts",
            get(rollouts::list).post(rollouts::create),
        )
        .route("/api/v1/rollouts/{id}", get(rollouts::one))
        .route("/api/v1/rollouts/{id}/targets", get(rollouts::targets))
        .route("/api/v1/upgrades", axum::routing::post(rollouts::upgrade))
        .route(
            "/api/v1/rollouts/{id}/{action}",
            axum::routing::post(rollouts::control),
        )
        .route(
            "/api/v1/collectors/{id}/custom-messages",
            axum::routing::post(custom::to_one),
        )
        .route(
            "/api/v1/custom-messages",
            axum::routing::post(custom::to_selected),
        )
        .route(
            "/api/v1/connection-settings",
            get(settings::list).post(settings::create),
        )
        .route(
            "/api/v1/connection-settings/{name}",
            get(settings::one).delete(settings::delete),
        )
        .route("/api/v1/summary", get(collectors::summary))
        .route("/api/v1/summary/history", get(over_time::summary_history))
        .route("/api/v1/state-machine", get(collectors::state_machine))
        .route("/api/v1/whoami", get(auth::whoami))
        .route("/api/openapi.json", get(openapi))
        .fallback(unknown_route)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ));
    // Event streams stay open; the request timeout would cut them.
    let streams = Router::new().route("/api/v1/events", get(events::events));
    let api = rest
        .merge(streams)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state.access),
            auth::authenticate,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes));
    Router::new()
        .route("/livez", get(livez))
        // The older name of /livez, kept for the probes already pointed at it.
        .route("/healthz", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .merge(console::router())
        .merge(api)
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", MatchedPath::as_str);
                tracing::info_span!("api", method = %request.method(), route)
            }),
        )
        .with_state(state)
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn openapi(
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(axum::Json(openapi::ApiDoc::openapi()))
}

/// Prometheus text: what this server recorded, then what it reads from its own state at this
/// moment. The second part is rendered here rather than written into the recorder first, so two
/// scrapes at once cannot mix their readings. The fleet's counts come from the store (as of the
/// last background reading), so every replica reports the same ones.
async fn prometheus(State(state): State<ApiState>) -> impl IntoResponse {
    let mut text = state.metrics.render();
    // From the last background reading: a scrape never loads the database. While the database
    // is down, only the fleet's counts are missing.
    if let Some(counts) = state.probe.last().counts {
        let values = crate::collector::State::ALL.map(|s| {
            let n = counts.states.get(&s).copied().unwrap_or(0);
            (Some(("state", s.as_str())), n)
        });
        sample_lines(&mut text, metrics::COLLECTORS, "gauge", &values);
        let facets: Vec<_> = counts
            .facets
            .iter()
            .map(|(name, n)| (Some(("facet", *name)), *n))
            .collect();
        sample_lines(&mut text, metrics::COLLECTORS_WITH_FACET, "gauge", &facets);
    }
    let persistence = state.registry.persistence();
    let registry = &state.registry;
    for (name, kind, value) in [
        (metrics::STORE_QUEUE, "gauge", persistence.queued() as u64),
        (
            metrics::STORE_PENDING,
            "gauge",
            state.store_health.pending_transitions() as u64,
        ),
        (metrics::STORE_STALLS, "counter", persistence.stalls()),
        (
            metrics::BUS_DROPPED,
            "counter",
            registry.dropped_subscribers(),
        ),
        (metrics::RESIDENT, "gauge", registry.resident() as u64),
    ] {
        sample_lines(&mut text, name, kind, &[(None, value)]);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Appends one metric family in the Prometheus text format.
fn sample_lines(text: &mut String, name: &str, kind: &str, values: &[(Option<(&str, &str)>, u64)]) {
    use std::fmt::Write as _;
    let _ = writeln!(text, "# TYPE {name} {kind}");
    for (label, value) in values {
        let _ = match label {
            Some((key, label)) => writeln!(text, "{name}{{{key}=\"{label}\"}} {value}"),
            None => writeln!(text, "{name} {value}"),
        };
    }
    text.push('\n');
}

/// Liveness: the process answers HTTP. It asks nothing of the store, and stays 200 while the
/// database is down and during shutdown, since restarting the process would help neither and would
/// lose the changes it holds for the database. Readiness (`/readyz`) is what reports those.
async fn livez() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready once both listeners are bound (they are, or this router would not be served), while the
/// store takes writes, and until shutdown begins (so a load balancer stops sending new collectors
/// before connections close). A degraded store still serves collectors, keeping their changes for
/// later, but says so here.
async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let health = &state.store_health;
    let pending = health.pending_transitions();
    // The batcher only learns of an outage when it writes; the background probe pings the store
    // every api.probe_interval, so an idle server notices too without each probe loading it.
    let unreachable = state.probe.last().unreachable;
    if state.shutdown.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting_down"})),
        )
    } else if let Some(error) = health.degraded().or(unreachable) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "degraded",
                "store": {"status": "degraded", "error": error, "pending_transitions": pending},
                "collectors": state.registry.resident(),
            })),
        )
    } else {
        (
            StatusCode::OK,
            axum::Json(json!({
                "status": "ready",
                "store": {"status": "ok", "pending_transitions": pending},
                "collectors": state.registry.resident(),
            })),
        )
    }
}

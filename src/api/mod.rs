//! The operations listener: liveness and readiness now, the REST API later.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub struct ApiState {
    /// Cancelled when shutdown begins: from then on the server is alive but not ready.
    pub shutdown: CancellationToken,
    pub registry: Arc<crate::collector::Registry>,
    pub store_health: Arc<crate::store::writer::StoreHealth>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Ready once both listeners are bound (they are, or this router would not be served), while the
/// store takes writes, and until shutdown begins (so a load balancer stops sending new collectors
/// before connections close). A degraded store still serves collectors, keeping their changes for
/// later, but says so here.
async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    let health = &state.store_health;
    let pending = health.pending_transitions();
    if state.shutdown.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting_down"})),
        )
    } else if let Some(error) = health.degraded() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "degraded",
                "store": {"status": "degraded", "error": error, "pending_transitions": pending},
                "collectors": state.registry.len(),
            })),
        )
    } else {
        (
            StatusCode::OK,
            axum::Json(json!({
                "status": "ready",
                "store": {"status": "ok", "pending_transitions": pending},
                "collectors": state.registry.len(),
            })),
        )
    }
}

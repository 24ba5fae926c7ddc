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

/// Ready once both listeners are bound (they are, or this router would not be served) and until
/// shutdown begins, so a load balancer stops sending new collectors before connections close.
async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    if state.shutdown.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "shutting_down"})),
        )
    } else {
        (
            StatusCode::OK,
            axum::Json(json!({"status": "ready", "collectors": state.registry.len()})),
        )
    }
}

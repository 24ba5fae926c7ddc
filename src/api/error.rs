//! The API's one error shape, `{"error": {"code", "message"}}`, and the status each error maps to.
//! Server-side failures answer generically; their detail goes to the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("authentication required")]
    Unauthorized,
    #[error("this needs the {0} role")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("the request body is larger than api.max_body_bytes allows")]
    TooLarge,
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("{0}")]
    Conflict(String),
    #[error("the store is unavailable")]
    Store(#[from] crate::store::StoreError),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the store cannot answer for this collector now; try again")]
    Unavailable,
    /// Another node must carry this out and could not now (its message says which and why).
    #[error("{0}")]
    Elsewhere(String),
    #[error("as many event streams are open as api.max_event_streams allows; try again later")]
    TooManyStreams,
    /// Something in the request is over a limit other than the body's.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Over a rate; come back after `retry_after` seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`, `too_large`,
    /// `too_many_requests`, `unsupported_media_type`, `unavailable`.
    pub code: &'static str,
    pub message: String,
}

impl From<crate::cluster::router::RouteError> for ApiError {
    fn from(err: crate::cluster::router::RouteError) -> Self {
        use crate::cluster::router::RouteError;
        match err {
            RouteError::Store(e) => ApiError::Store(e),
            RouteError::ShuttingDown => ApiError::ShuttingDown,
            RouteError::Elsewhere(m) => ApiError::Elsewhere(m),
        }
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::TooLarge | ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
            }
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Store(_)
            | ApiError::ShuttingDown
            | ApiError::Unavailable
            | ApiError::Elsewhere(_)
            | ApiError::TooManyStreams => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Store(err) = &self {
            tracing::error!(error = %err, "API request failed on the store");
        }
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code,
                    message: self.to_string(),
                },
            }),
        )
            .into_response();
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(*retry_after),
            );
        }
        if matches!(self, ApiError::TooManyStreams) {
            // Streams end when their clients go; a few seconds is a fair wait.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

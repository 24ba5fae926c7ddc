//! API authentication: who is calling (by `Authorization: Bearer <key>`) and what their role
//! allows. With no keys configured, loopback callers are admins and others are refused, unless
//! the operator chose to serve everyone.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::config::{ApiConfig, Role};

/// The caller's role, put in the request's extensions by [`authenticate`].
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Role);

impl Caller {
    pub fn require(self, role: Role) -> Result<(), ApiError> {
        if self.0 >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(match role {
                Role::Viewer => "viewer",
                Role::Operator => "operator",
                Role::Admin => "admin",
            }))
        }
    }
}

pub async fn authenticate(
    State(config): State<Arc<ApiConfig>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    match identify(&config, peer, request.headers()) {
        Ok(role) => {
            request.extensions_mut().insert(Caller(role));
            next.run(request).await
        }
        Err(err) => err.into_response(),
    }
}

fn identify(
    config: &ApiConfig,
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
) -> Result<Role, ApiError> {
    if config.keys.is_empty() {
        return if peer.ip().is_loopback() || config.allow_unauthenticated {
            Ok(Role::Admin)
        } else {
            Err(ApiError::Unauthorized)
        };
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    // Every key is compared, so the time taken does not say which one nearly matched.
    let mut role = None;
    for key in &config.keys {
        if constant_time_eq::constant_time_eq(key.key.as_bytes(), presented.trim().as_bytes()) {
            role = Some(key.role);
        }
    }
    role.ok_or(ApiError::Unauthorized)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn peer(ip: [u8; 4]) -> SocketAddr {
        SocketAddr::from((ip, 40_000))
    }

    #[test]
    fn without_keys_only_loopback_is_served_unless_opened() {
        let mut config = ApiConfig::default();
        let none = axum::http::HeaderMap::new();
        assert_eq!(
            identify(&config, peer([127, 0, 0, 1]), &none).ok(),
            Some(Role::Admin)
        );
        assert!(matches!(
            identify(&config, peer([10, 1, 2, 3]), &none),
            Err(ApiError::Unauthorized)
        ));
        config.allow_unauthenticated = true;
        assert_eq!(
            identify(&config, peer([10, 1, 2, 3]), &none).ok(),
            Some(Role::Admin)
        );
    }

    #[test]
    fn with_keys_loopback_needs_one_too() {
        let config = ApiConfig {
            keys: vec![ApiKey {
                name: "ops".into(),
                key: "0123456789abcdef-ops".into(),
                role: Role::Operator,
            }],
            ..ApiConfig::default()
        };
        let mut headers = axum::http::HeaderMap::new();
        assert!(identify(&config, peer([127, 0, 0, 1]), &headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            "Bearer 0123456789abcdef-ops".parse().unwrap(),
        );
        assert_eq!(
            identify(&config, peer([10, 1, 2, 3]), &headers).ok(),
            Some(Role::Operator)
        );
        assert!(Caller(Role::Operator).require(Role::Admin).is_err());
        assert!(Caller(Role::Operator).require(Role::Viewer).is_ok());
    }
}

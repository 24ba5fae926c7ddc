//! API authentication: who is calling (by `Authorization: Bearer <key>`) and what their role
//! allows. Keys are kept only as SHA-256 digests, so a key given hashed in the configuration and
//! one given in clear are checked the same way. With no keys configured, callers without a key
//! may read from loopback (or from anywhere, when the operator opened the API); every write needs
//! a key, and the admin key generated into the data directory on first start is one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

use super::error::ApiError;
use crate::config::{ApiConfig, Role};

/// The caller's role, put in the request's extensions by [`authenticate`]. `anonymous` callers
/// presented no key: what their role does not allow is refused with 401 (a key would help), not 403.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub role: Role,
    pub anonymous: bool,
}

/// Who the caller is to the API.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    /// `viewer`, `operator` or `admin`.
    pub role: &'static str,
    /// No key was presented (a loopback reader where no keys are configured).
    pub anonymous: bool,
}

/// The caller's role, so that a client (the console) shows only what it may do; the API still
/// decides each request.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "fleet",
    responses((status = 200, body = WhoAmI), (status = 401, body = super::error::ErrorBody)))]
pub async fn whoami(
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
) -> axum::Json<WhoAmI> {
    let role = match caller.role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    };
    axum::Json(WhoAmI {
        role,
        anonymous: caller.anonymous,
    })
}

impl Caller {
    pub fn require(self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else if self.anonymous {
            Err(ApiError::Unauthorized)
        } else {
            Err(ApiError::Forbidden(match role {
                Role::Viewer => "viewer",
                Role::Operator => "operator",
                Role::Admin => "admin",
            }))
        }
    }
}

/// One accepted key: its holder's name, its digest, its role.
#[derive(Debug, Clone)]
pub struct Credential {
    pub name: String,
    pub digest: [u8; 32],
    pub role: Role,
}

impl Credential {
    pub fn plain(name: &str, key: &str, role: Role) -> Self {
        Self {
            name: name.to_owned(),
            digest: Sha256::digest(key.as_bytes()).into(),
            role,
        }
    }
}

/// Who may call the API, decided once at start-up.
#[derive(Debug, Clone)]
pub struct Access {
    keys: Vec<Credential>,
    /// No keys were configured: callers without one may read (from loopback, or from anywhere
    /// with `allow_unauthenticated`).
    keyless_reads: bool,
    allow_unauthenticated: bool,
}

impl Access {
    /// The configured keys; when there are none, `generated` (the data directory's admin key)
    /// and reads without a key.
    pub fn new(config: &ApiConfig, generated: Option<Credential>) -> Self {
        let configured: Vec<Credential> = config
            .keys
            .iter()
            .filter_map(|k| {
                let digest = if k.key.is_empty() {
                    hex_digest(&k.key_sha256)?
                } else {
                    Sha256::digest(k.key.as_bytes()).into()
                };
                Some(Credential {
                    name: k.name.clone(),
                    digest,
                    role: k.role,
                })
            })
            .collect();
        let keyless_reads = configured.is_empty();
        Self {
            keys: if keyless_reads {
                generated.into_iter().collect()
            } else {
                configured
            },
            keyless_reads,
            allow_unauthenticated: config.allow_unauthenticated,
        }
    }

    fn identify(
        &self,
        peer: SocketAddr,
        headers: &axum::http::HeaderMap,
    ) -> Result<Caller, ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(presented) = presented else {
            return if self.keyless_reads && (peer.ip().is_loopback() || self.allow_unauthenticated)
            {
                Ok(Caller {
                    role: Role::Viewer,
                    anonymous: true,
                })
            } else {
                Err(ApiError::Unauthorized)
            };
        };
        let key = presented
            .strip_prefix("Bearer ")
            .ok_or(ApiError::Unauthorized)?;
        let digest: [u8; 32] = Sha256::digest(key.trim().as_bytes()).into();
        // Every key is compared, so the time taken does not say which one nearly matched.
        let mut role = None;
        for credential in &self.keys {
            if constant_time_eq::constant_time_eq(&credential.digest, &digest) {
                role = Some(credential.role);
            }
        }
        role.map(|role| Caller {
            role,
            anonymous: false,
        })
        .ok_or(ApiError::Unauthorized)
    }
}

/// 64 hex digits as a digest; `None` otherwise (configuration validation refuses it first).
pub fn hex_digest(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

pub async fn authenticate(
    State(access): State<Arc<Access>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    match access.identify(peer, request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKey;

    fn peer(ip: [u8; 4]) -> SocketAddr {
        SocketAddr::from((ip, 40_000))
    }

    fn bearer(key: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        headers
    }

    const GENERATED: &str = "generated-admin-key-0123456789";

    #[test]
    fn without_keys_loopback_reads_and_writes_need_the_generated_key() {
        let mut config = ApiConfig::default();
        let access = Access::new(
            &config,
            Some(Credential::plain("generated", GENERATED, Role::Admin)),
        );
        let none = axum::http::HeaderMap::new();
        let caller = access.identify(peer([127, 0, 0, 1]), &none).unwrap();
        assert!(caller.require(Role::Viewer).is_ok());
        assert!(matches!(
            caller.require(Role::Operator),
            Err(ApiError::Unauthorized)
        ));
        assert!(matches!(
            access.identify(peer([10, 1, 2, 3]), &none),
            Err(ApiError::Unauthorized)
        ));
        let admin = access
            .identify(peer([10, 1, 2, 3]), &bearer(GENERATED))
            .unwrap();
        assert!(admin.require(Role::Admin).is_ok());
        assert!(
            access
                .identify(peer([127, 0, 0, 1]), &bearer("wrong-key-0123456789"))
                .is_err()
        );
        config.allow_unauthenticated = true;
        let open = Access::new(&config, None);
        let anyone = open.identify(peer([10, 1, 2, 3]), &none).unwrap();
        assert!(anyone.require(Role::Viewer).is_ok());
        assert!(
            anyone.require(Role::Operator).is_err(),
            "opened for reads only"
        );
    }

    #[test]
    fn with_keys_loopback_needs_one_too_and_hashed_keys_count() {
        let hashed = "operator-key-0123456789";
        let config = ApiConfig {
            keys: vec![
                ApiKey {
                    name: "ops".into(),
                    key: String::new(),
                    key_sha256: crate::collector::machine::hex(&Sha256::digest(hashed.as_bytes())),
                    role: Role::Operator,
                },
                ApiKey {
                    name: "dash".into(),
                    key: "viewer-key-0123456789".into(),
                    key_sha256: String::new(),
                    role: Role::Viewer,
                },
            ],
            ..ApiConfig::default()
        };
        let access = Access::new(
            &config,
            Some(Credential::plain("generated", GENERATED, Role::Admin)),
        );
        let none = axum::http::HeaderMap::new();
        assert!(access.identify(peer([127, 0, 0, 1]), &none).is_err());
        assert!(
            access
                .identify(peer([127, 0, 0, 1]), &bearer(GENERATED))
                .is_err(),
            "the generated key is not used once keys are configured"
        );
        let ops = access
            .identify(peer([10, 1, 2, 3]), &bearer(hashed))
            .unwrap();
        assert_eq!(ops.role, Role::Operator);
        assert!(ops.require(Role::Admin).is_err());
        assert!(ops.require(Role::Viewer).is_ok());
        let dash = access
            .identify(peer([10, 1, 2, 3]), &bearer("viewer-key-0123456789"))
            .unwrap();
        assert!(matches!(
            dash.require(Role::Operator),
            Err(ApiError::Forbidden(_))
        ));
    }
}

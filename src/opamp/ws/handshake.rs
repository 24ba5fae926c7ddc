//! The WebSocket opening handshake, server side (RFC 6455, 4.2): checks the upgrade request and
//! answers 101, handing the connection to the session once hyper has written that answer.

use axum::extract::FromRequestParts;
use axum::http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;

/// A valid upgrade request: the connection to take over, and the key to answer.
pub struct Upgrade {
    pub on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

/// Why an upgrade request is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("a WebSocket upgrade is a GET")]
    NotGet,
    #[error("a WebSocket upgrade needs HTTP/1.1")]
    NotHttp11,
    #[error("`Connection` does not include `upgrade`")]
    NoConnectionUpgrade,
    #[error("`Upgrade` is not `websocket`")]
    NotWebSocket,
    #[error("only WebSocket version 13 is spoken")]
    Version,
    #[error("`Sec-WebSocket-Key` is missing")]
    NoKey,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Refused::NotGet => StatusCode::METHOD_NOT_ALLOWED,
            Refused::Version | Refused::NotUpgradable | Refused::NotHttp11 => {
                StatusCode::UPGRADE_REQUIRED
            }
            Refused::NoConnectionUpgrade | Refused::NotWebSocket | Refused::NoKey => {
                StatusCode::BAD_REQUEST
            }
        };
        let mut response = (status, self.to_string()).into_response();
        if matches!(self, Refused::Version) {
            // RFC 6455, 4.4: the versions this server speaks.
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        response
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let key = check(&parts.method, parts.version, &parts.headers)?;
        let accept = HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key))
            .map_err(|_| Refused::NoKey)?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(Refused::NotUpgradable)?;
        Ok(Self { on_upgrade, accept })
    }
}

impl Upgrade {
    /// The 101 that accepts the upgrade: no subprotocol and no extension is taken up.
    pub fn response(&self) -> Response {
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, self.accept.clone());
        response
    }
}

/// Checks an upgrade request's method, version and headers; its key when all is well.
fn check<'a>(
    method: &Method,
    version: Version,
    headers: &'a HeaderMap,
) -> Result<&'a [u8], Refused> {
    if method != Method::GET {
        return Err(Refused::NotGet);
    }
    if version != Version::HTTP_11 {
        return Err(Refused::NotHttp11);
    }
    if !has_token(headers, CONNECTION, "upgrade") {
        return Err(Refused::NoConnectionUpgrade);
    }
    if !has_token(headers, UPGRADE, "websocket") {
        return Err(Refused::NotWebSocket);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(Refused::Version);
    }
    match headers.get(SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => Ok(key.as_bytes()),
        _ => Err(Refused::NoKey),
    }
}

/// Whether a comma-separated header holds `token`, in any case.
fn has_token(headers: &HeaderMap, name: axum::http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    axum::http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect()
    }

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_proper_request_gives_its_key() {
        let headers = headers(GOOD);
        let key = check(&Method::GET, Version::HTTP_11, &headers).unwrap();
        // RFC 6455's own example.
        assert_eq!(
            tungstenite::handshake::derive_accept_key(key),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn each_missing_part_is_named() {
        let without = |name: &str| {
            let pairs: Vec<_> = GOOD.iter().copied().filter(|(n, _)| *n != name).collect();
            check(&Method::GET, Version::HTTP_11, &headers(&pairs)).err()
        };
        assert!(matches!(
            without("connection"),
            Some(Refused::NoConnectionUpgrade)
        ));
        assert!(matches!(without("upgrade"), Some(Refused::NotWebSocket)));
        assert!(matches!(
            without("sec-websocket-version"),
            Some(Refused::Version)
        ));
        assert!(matches!(without("sec-websocket-key"), Some(Refused::NoKey)));
        let all = headers(GOOD);
        assert!(matches!(
            check(&Method::POST, Version::HTTP_11, &all),
            Err(Refused::NotGet)
        ));
        assert!(matches!(
            check(&Method::GET, Version::HTTP_10, &all),
            Err(Refused::NotHttp11)
        ));
        let old = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert!(matches!(
            check(&Method::GET, Version::HTTP_11, &old),
            Err(Refused::Version)
        ));
    }
}

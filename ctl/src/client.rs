//! The HTTP side: one client for opampd's REST API, its answers kept as the exact text the server
//! sent (so `-o json` can print it unchanged), and its errors as one line each.

use std::path::Path;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// How long connecting may take; a server that does not accept within this is unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence on an open connection. The event stream sends a keep-alive comment every 15 s,
/// so a stream silent for this long is dead and is opened again.
const READ_TIMEOUT: Duration = Duration::from_mins(1);

/// Everything that can go wrong, each shown to the user as one line.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The API answered with an error: its status and its own message.
    #[error("{status} ({code}): {message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// No answer at all: refused, unresolvable, or too slow.
    #[error("cannot reach {server}: {detail}")]
    Unreachable { server: String, detail: String },
    /// The command line asked for something that cannot be done (bad label syntax, say).
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    File {
        what: String,
        source: std::io::Error,
    },
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

/// A successful answer: its status, the exact text, and that text parsed.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub text: String,
    pub value: Value,
}

pub struct Client {
    http: reqwest::Client,
    base: Url,
    key: Option<String>,
    timeout: Duration,
}

/// The TLS settings for an `https://` server: the system's certificate authorities where it has
/// any (a minimal container has none, and plain `http://` must work there all the same), and
/// those of `ca_cert`. Built here rather than by reqwest, whose own verifier refuses to start on
/// a machine without a certificate store.
fn tls(ca_cert: Option<&Path>) -> Result<rustls::ClientConfig, CtlError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let (_, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path).map_err(|e| {
            CtlError::Usage(format!("cannot read --ca-cert {}: {e}", path.display()))
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CtlError::Usage(format!("--ca-cert {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(CtlError::Usage(format!(
                "--ca-cert {}: no PEM certificate in it",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| CtlError::Usage(format!("--ca-cert {}: {e}", path.display())))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CtlError::Usage(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The innermost cause of an error: "Connection refused (os error 111)" says more than
/// reqwest's "error sending request for url".
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

impl Client {
    /// A client of the API at `server`; for `https://`, trusting the system's roots and, if
    /// given, the CA certificates (PEM) in `ca_cert`.
    pub fn new(
        server: &str,
        key: Option<String>,
        ca_cert: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, CtlError> {
        let mut base = Url::parse(server)
            .map_err(|e| CtlError::Usage(format!("server URL {server:?}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(CtlError::Usage(format!(
                "server URL {server:?}: scheme {:?} is neither http nor https",
                base.scheme()
            )));
        }
        // "http://host:8080/prefix" and "http://host:8080/prefix/" mean the same base.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls(ca_cert)?)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("opampctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CtlError::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            key,
            timeout,
        })
    }

    /// `path` (starting with `/api/...`) under the server's base, with `query` encoded.
    pub fn url(&self, path: &str, query: &[(&str, String)]) -> Result<Url, CtlError> {
        let mut url = self
            .base
            .join(path.trim_start_matches('/'))
            .map_err(|e| CtlError::Usage(format!("bad path {path:?}: {e}")))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
        }
        Ok(url)
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, url)
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        match &self.key {
            Some(key) => request.header(AUTHORIZATION, format!("Bearer {key}")),
            None => request,
        }
    }

    fn unreachable(&self, err: &reqwest::Error) -> CtlError {
        let detail = if err.is_timeout() {
            format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )
        } else {
            root_cause(err)
        };
        CtlError::Unreachable {
            server: self.base.as_str().trim_end_matches('/').to_owned(),
            detail,
        }
    }

    /// Sends one request and reads the whole answer; an error status becomes [`CtlError::Api`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Answer, CtlError> {
        let url = self.url(path, query)?;
        let mut request = self.request(method, url).timeout(self.timeout);
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(api_error(status, &text));
        }
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .map_err(|e| CtlError::Protocol(format!("{status}: not JSON ({e})")))?
        };
        Ok(Answer {
            status,
            text,
            value,
        })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Answer, CtlError> {
        self.send(Method::GET, path, query, None).await
    }

    /// Opens the event stream; the answer's body is read by the caller as it comes. No overall
    /// time limit (the stream stays open), only the read timeout between chunks.
    pub async fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, CtlError> {
        let url = self.url(path, query)?;
        let mut request = self
            .request(Method::GET, url)
            .header(ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(api_error(status, &text));
        }
        Ok(response)
    }
}

/// The API's error shape, `{"error": {"code", "message"}}`; anything else is shown as it came.
fn api_error(status: StatusCode, text: &str) -> CtlError {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v["error"][name].as_str())
            .map(str::to_owned)
    };
    match (field("code"), field("message")) {
        (Some(code), Some(message)) => CtlError::Api {
            status,
            code,
            message,
        },
        _ => CtlError::Api {
            status,
            code: "unknown".to_owned(),
            message: text.trim().chars().take(200).collect(),
        },
    }
}

impl CtlError {
    /// Whether trying again later may help (the server is away or briefly unable).
    pub fn is_transient(&self) -> bool {
        match self {
            CtlError::Unreachable { .. } => true,
            CtlError::Api { status, .. } => status.is_server_error(),
            _ => false,
        }
    }
}

//! TLS on a listener: the server certificate and the client-certificate policy read from files,
//! read again when the files change (no restart), and the identity of a client's certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::reload::{self, Files, Reloads};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::collector::ClientCertificate;
use crate::collector::machine::hex;
use crate::telemetry::metrics::{self, Metrics};

/// The TLS settings of one listener (`[opamp.tls]`, `[api.tls]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the certificate authorities that sign client certificates; set, clients are
    /// asked for a certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `required` refuses a client without a valid certificate at the
    /// handshake; `optional` lets it in without one (a certificate it does present must verify).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// How often the files are read again; a change takes effect for new connections, and open
    /// connections keep the certificate they were made with.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate authorities: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The files' contents as last read: compared to tell a change.
#[derive(Debug, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(config: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            cert: read(&config.cert)?,
            key: read(&config.key)?,
            client_ca: config.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The server configuration the files describe. The key must match the certificate, so a pair
/// caught half-replaced is refused rather than served.
fn build(config: &TlsConfig, contents: &Contents) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = certificates(&config.cert, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|e| TlsError::Pem {
        path: config.key.clone(),
        message: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match (&config.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(path, pem)? {
                roots.add(ca)?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let verifier = match config.client_auth {
                ClientAuth::Required => verifier.build()?,
                ClientAuth::Optional => verifier.allow_unauthenticated().build()?,
            };
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider)?;
    let mut server =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    // Both listeners speak HTTP/1.1 only (WebSocket upgrades need it).
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The listener's current server configuration; each new connection takes the latest.
#[derive(Debug, Clone)]
pub struct Acceptor {
    current: watch::Receiver<Arc<ServerConfig>>,
}

impl Acceptor {
    /// Reads the files (failing start-up if they are unusable) and keeps reading them every
    /// `reload_interval` until `shutdown`.
    pub fn start(
        name: &'static str,
        config: &TlsConfig,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Result<Self, TlsError> {
        let contents = Contents::read(config)?;
        let (sender, current) = watch::channel(build(config, &contents)?);
        let outcome = |result| {
            metrics.counter(
                metrics::TLS_RELOADS,
                &[("listener", name), ("result", result)],
            )
        };
        let counted = Reloads {
            ok: outcome("ok"),
            refused: outcome("refused"),
        };
        let files = {
            let (read_config, build_config) = (config.clone(), config.clone());
            Files {
                what: format!("TLS files of the {name} listener"),
                interval: config.reload_interval,
                read: Box::new(move || Contents::read(&read_config)),
                build: Box::new(move |contents| build(&build_config, contents)),
            }
        };
        tokio::spawn(reload::poll(files, contents, sender, counted, shutdown));
        Ok(Self { current })
    }

    pub fn tokio(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.current.borrow()))
    }
}

/// The identity in a client certificate that rustls has already verified; `None` if it cannot
/// be parsed as X.509 (then it would not have verified).
pub fn client_certificate(der: &CertificateDer<'_>) -> Option<ClientCertificate> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(n) => Some(format!("DNS:{n}")),
                    GeneralName::URI(u) => Some(format!("URI:{u}")),
                    GeneralName::RFC822Name(e) => Some(format!("email:{e}")),
                    GeneralName::IPAddress(ip) => ip_address(ip).map(|ip| format!("IP:{ip}")),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(ClientCertificate {
        subject: cert.subject().to_string(),
        names,
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        sha256: hex(&Sha256::digest(der.as_ref())),
        not_after: cert.validity().not_after.to_datetime().into(),
    })
}

fn ip_address(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

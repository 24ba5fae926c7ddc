//! Certificates the tests make for themselves (a CA, server and client certificates, with rcgen),
//! the files a server reads them from, and clients that trust that CA: WebSocket, HTTP, REST.

use std::path::PathBuf;
use std::sync::Arc;

use opampd::config::{ClientAuth, TlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{DEADLINE, WsClient, within};

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Issued {
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert.as_bytes()).unwrap()
    }
}

/// A certificate authority of the test's own, and a directory for the files made from it.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    /// The CA's private key, PEM (for a server that signs with this CA).
    pub ca_key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca_pem: ca.pem(),
            ca_key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        };
        pki.write("ca.pem", &pki.ca_pem);
        pki
    }

    /// A server certificate for loopback (`127.0.0.1`, `localhost`); `serial` tells versions apart.
    pub fn server(&self, serial: u64) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "opampd");
        params.serial_number = Some(serial.into());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(&params)
    }

    /// A collector's client certificate naming `name`, with a SPIFFE-style URI.
    pub fn client(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "fleet");
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://fleet.test/collector/{name}")
                .try_into()
                .unwrap(),
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(&params)
    }

    fn issue(&self, params: &CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Writes `server` as `server.pem` + `server.key` and returns a listener's TLS settings for
    /// them, with client certificates from this CA when `clients` says so.
    pub fn serve(&self, server: &Issued, clients: Option<ClientAuth>) -> TlsConfig {
        TlsConfig {
            cert: self.write("server.pem", &server.cert),
            key: self.write("server.key", &server.key),
            client_ca: clients.map(|_| self.path("ca.pem")),
            client_auth: clients.unwrap_or_default(),
            reload_interval: std::time::Duration::from_millis(100),
        }
    }

    /// A client configuration trusting this CA, presenting `identity` if given.
    pub fn client_config(&self, identity: Option<&Issued>) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(
                    vec![id.der()],
                    PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap(),
                )
                .unwrap(),
        }
    }

    /// An HTTP client trusting this CA (for `https://` OpAMP and REST).
    pub fn http_client(&self, identity: Option<&Issued>) -> reqwest::Client {
        super::install_crypto();
        reqwest::Client::builder()
            .timeout(DEADLINE)
            .tls_backend_preconfigured(self.client_config(identity))
            .build()
            .unwrap()
    }

    /// A TLS connection to `addr`, checked against this CA: the handshake's result as is.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        identity: Option<&Issued>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(self.client_config(identity)));
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(addr.ip().into());
        within("a TLS handshake", Box::pin(connector.connect(name, tcp))).await
    }

    /// A `wss://` OpAMP connection to the server at `addr`, presenting `identity` if given; the
    /// TLS or upgrade failure as is (a server that refuses the certificate fails it here).
    pub async fn ws(
        &self,
        addr: std::net::SocketAddr,
        identity: Option<&Issued>,
    ) -> Result<WsClient<TlsStream<TcpStream>>, String> {
        let stream = self
            .connect(addr, identity)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("wss://{addr}/v1/opamp")
            .into_client_request()
            .unwrap();
        let (socket, _) = within(
            "the WebSocket upgrade",
            Box::pin(tokio_tungstenite::client_async(request, stream)),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(WsClient { socket })
    }
}

/// The certificate a TLS server at `addr` presents now.
pub async fn served_certificate(pki: &Pki, addr: std::net::SocketAddr) -> CertificateDer<'static> {
    let stream = pki.connect(addr, None).await.expect("TLS handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

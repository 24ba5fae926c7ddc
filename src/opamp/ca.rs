//! The certificate authority that signs collectors' certificate requests (OpAMP's CSR flow,
//! `ConnectionSettingsRequest`): its files, what a request may ask for, and the certificate it
//! issues (which the collector's record keeps, and its connection offers carry).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::collector::{CollectorId, IssuedCertificate};
use crate::net::reload::{self, Reloads};
use crate::telemetry::metrics::Metrics;

/// `[opamp.ca]`: with it, opampd signs the certificate requests collectors send.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// PEM file with the CA's certificate.
    pub cert: PathBuf,
    /// PEM file with the CA's private key.
    pub key: PathBuf,
    /// How long an issued certificate is valid.
    #[serde(default = "default_validity", with = "humantime_serde")]
    pub validity: Duration,
    /// A certificate issued here that a collector connects with (mutual TLS) is renewed, by an
    /// offer with a new certificate and key, once it expires within this; unset, a third of
    /// `validity`; zero, never (no private key is then ever made or kept here).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub renew_before: Option<Duration>,
    /// How often the files are read again: a changed CA signs from then on.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
    /// The OpAMP URL collectors use (`wss://opamp.example.com:4320/v1/opamp`): an answer with a
    /// certificate is an OpAMP connection offer, which must name where to connect.
    pub endpoint: String,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_validity() -> Duration {
    Duration::from_hours(24 * 30)
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opamp.ca: {0}")]
    Invalid(String),
}

/// The loaded CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
    validity: Duration,
    renew_before: Duration,
    endpoint: String,
}

fn read(path: &PathBuf) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.clone(),
        source,
    })
}

/// The CA's files as last read: compared to tell a change.
#[derive(Debug, PartialEq, Eq)]
struct Files {
    cert: String,
    key: String,
}

impl Files {
    fn read(config: &CaConfig) -> Result<Self, CaError> {
        Ok(Self {
            cert: read(&config.cert)?,
            key: read(&config.key)?,
        })
    }
}

/// The CA as its files last read (`opamp.ca`), read again every `reload_interval`: a changed CA
/// signs from then on, one that cannot be used is logged and the previous one kept.
pub struct Authority {
    current: watch::Receiver<Arc<Ca>>,
}

impl Authority {
    /// Reads the files (failing start-up if they are unusable) and keeps reading them until
    /// `shutdown`.
    pub fn start(
        config: &CaConfig,
        metrics: &Metrics,
        shutdown: CancellationToken,
    ) -> Result<Self, CaError> {
        let files = Files::read(config)?;
        let (sender, current) = watch::channel(Arc::new(Ca::build(config, &files)?));
        let outcome = |result| {
            metrics.counter(
                crate::telemetry::metrics::TLS_RELOADS,
                &[("listener", "ca"), ("result", result)],
            )
        };
        let counted = Reloads {
            ok: outcome("ok"),
            refused: outcome("refused"),
        };
        let watched = {
            let (read_config, build_config) = (config.clone(), config.clone());
            reload::Files {
                what: "the CA's files (opamp.ca)".to_owned(),
                interval: config.reload_interval,
                read: Box::new(move || Files::read(&read_config)),
                build: Box::new(move |files| Ca::build(&build_config, files).map(Arc::new)),
            }
        };
        tokio::spawn(reload::poll(watched, files, sender, counted, shutdown));
        Ok(Self { current })
    }

    /// The CA as now.
    pub fn current(&self) -> Arc<Ca> {
        Arc::clone(&self.current.borrow())
    }
}

impl Ca {
    fn build(config: &CaConfig, files: &Files) -> Result<Self, CaError> {
        let key =
            KeyPair::from_pem(&files.key).map_err(|e| CaError::Invalid(format!("key: {e}")))?;
        // rcgen would sign with any key under the certificate's name: a pair caught
        // half-replaced must be refused, not issue certificates nothing can verify.
        let unreadable = |e: String| CaError::Invalid(format!("certificate: {e}"));
        let (_, pem) = x509_parser::pem::parse_x509_pem(files.cert.as_bytes())
            .map_err(|e| unreadable(e.to_string()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
            .map_err(|e| unreadable(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Invalid(
                "the key is not the certificate's".to_owned(),
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(&files.cert, key)
            .map_err(|e| CaError::Invalid(format!("certificate: {e}")))?;
        if config.endpoint.is_empty() {
            return Err(CaError::Invalid("endpoint must not be empty".into()));
        }
        Ok(Self {
            issuer,
            certificate_pem: files.cert.clone(),
            validity: config.validity,
            renew_before: config.renew_before.unwrap_or(config.validity / 3),
            endpoint: config.endpoint.clone(),
        })
    }

    /// Signs `csr` (PEM) for `collector`: a client certificate with the subject and names it asks
    /// for, valid from `now` for the configured time, kept on the collector's record and offered
    /// with its OpAMP connection settings (`heartbeat` when no operator's offer sets one). Refused
    /// (with why, for the collector) when it is not a request, or names another collector's uid as
    /// its common name.
    pub fn issue(
        &self,
        csr: &[u8],
        collector: CollectorId,
        now: SystemTime,
        heartbeat: Duration,
    ) -> Result<IssuedCertificate, String> {
        let text = std::str::from_utf8(csr).map_err(|_| "the CSR is not PEM text".to_owned())?;
        let request = read_request(text)?;
        if let Some(named) = request
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .map(dn_text)
            && let Ok(uid) = named.parse::<uuid::Uuid>()
            && uid != collector.0
        {
            return Err(format!(
                "the CSR names instance_uid {uid}, not this collector's {collector}"
            ));
        }
        let CertificateSigningRequestParams { params, public_key } = request;
        let certificate = self.sign(params, &public_key, now)?;
        self.issued(&certificate, text.to_owned(), None, now, heartbeat)
    }

    /// A new certificate for what `current` names, on a key made here (OpAMP has no way to ask a
    /// collector for a new request, so the key travels in the offer, which goes only over mutual
    /// TLS). Its request is the one `current` was issued for.
    pub fn renew(
        &self,
        current: &IssuedCertificate,
        now: SystemTime,
    ) -> Result<IssuedCertificate, String> {
        let request = read_request(&current.request_pem)?;
        let key = KeyPair::generate().map_err(|e| format!("no key could be made: {e}"))?;
        let certificate = self.sign(request.params, &key, now)?;
        let heartbeat = Duration::from_secs(current.heartbeat_interval_seconds);
        let private_key = Some(key.serialize_pem());
        self.issued(
            &certificate,
            current.request_pem.clone(),
            private_key,
            now,
            heartbeat,
        )
    }

    /// Whether `certificate`, issued here, should be renewed at `now`: it expires within the
    /// renewal window (none: `renew_before` zero turns renewal off).
    pub fn due(&self, certificate: &IssuedCertificate, now: SystemTime) -> bool {
        !self.renew_before.is_zero()
            && certificate
                .identity
                .not_after
                .duration_since(now)
                .map_or(true, |left| left < self.renew_before)
    }

    /// A client certificate for `subject_key`, with what `params` names, from `now` for the
    /// configured time.
    fn sign(
        &self,
        mut params: CertificateParams,
        subject_key: &impl PublicKeyData,
        now: SystemTime,
    ) -> Result<rcgen::Certificate, String> {
        params.not_before = time::OffsetDateTime::from(now);
        params.not_after = time::OffsetDateTime::from(now + self.validity);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from_slice(&uuid::Uuid::now_v7().into_bytes()));
        params
            .signed_by(subject_key, &self.issuer)
            .map_err(|e| format!("the CSR cannot be signed: {e}"))
    }

    fn issued(
        &self,
        certificate: &rcgen::Certificate,
        request_pem: String,
        private_key_pem: Option<String>,
        now: SystemTime,
        heartbeat: Duration,
    ) -> Result<IssuedCertificate, String> {
        let identity = crate::net::tls::client_certificate(certificate.der())
            .ok_or_else(|| "the signed certificate cannot be read back".to_owned())?;
        Ok(IssuedCertificate {
            identity,
            issued_at: now,
            cert_pem: certificate.pem(),
            ca_pem: self.certificate_pem.clone(),
            endpoint: self.endpoint.clone(),
            heartbeat_interval_seconds: heartbeat.as_secs().max(1),
            request_pem,
            private_key_pem,
        })
    }
}

impl crate::collector::Renewer for Authority {
    fn due(&self, certificate: &IssuedCertificate, now: SystemTime) -> bool {
        self.current().due(certificate, now)
    }

    fn renew(
        &self,
        certificate: &IssuedCertificate,
        now: SystemTime,
    ) -> Result<IssuedCertificate, String> {
        self.current().renew(certificate, now)
    }
}

fn read_request(pem: &str) -> Result<CertificateSigningRequestParams, String> {
    CertificateSigningRequestParams::from_pem(pem)
        .map_err(|e| format!("the CSR cannot be read: {e}"))
}

fn dn_text(value: &DnValue) -> String {
    match value {
        DnValue::Utf8String(s) => s.clone(),
        DnValue::PrintableString(s) => s.as_str().to_owned(),
        DnValue::Ia5String(s) => s.as_str().to_owned(),
        DnValue::TeletexString(s) => s.as_str().to_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams};

    use super::*;

    fn ca() -> Ca {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test-ca");
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Ca {
            issuer: Issuer::new(params, key),
            certificate_pem: certificate.pem(),
            validity: Duration::from_hours(1),
            renew_before: Duration::from_mins(20),
            endpoint: "wss://opamp.example.com/v1/opamp".into(),
        }
    }

    fn request(common_name: &str) -> String {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let key = KeyPair::generate().unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn requests_are_signed_for_their_own_collector_only() {
        let ca = ca();
        let me = CollectorId(uuid::Uuid::now_v7());
        let now = SystemTime::now();
        let hour = Duration::from_hours(1);
        let issued = ca
            .issue(request(&me.to_string()).as_bytes(), me, now, hour)
            .unwrap();
        let der = der_of(&issued.cert_pem);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(parsed.subject().to_string(), format!("CN={me}"));
        let lifetime =
            parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600);
        assert_eq!(issued.identity.subject, format!("CN={me}"));
        assert_eq!(issued.identity.issuer, "CN=test-ca");
        assert_eq!(issued.heartbeat_interval_seconds, 3600);
        assert_eq!(issued.ca_pem, ca.certificate_pem);
        assert!(
            ca.issue(request("any name").as_bytes(), me, now, hour)
                .is_ok()
        );
        let other = CollectorId(uuid::Uuid::now_v7()).to_string();
        assert!(ca.issue(request(&other).as_bytes(), me, now, hour).is_err());
        assert!(ca.issue(b"not a request", me, now, hour).is_err());

        // Renewed on a key made here, naming the same, valid from its own start.
        assert!(!ca.due(&issued, now));
        let late = now + Duration::from_mins(41);
        assert!(ca.due(&issued, late));
        let renewed = ca.renew(&issued, late).unwrap();
        assert_eq!(renewed.identity.subject, issued.identity.subject);
        assert_ne!(renewed.identity.serial, issued.identity.serial);
        assert!(!ca.due(&renewed, late));
        let key = KeyPair::from_pem(renewed.private_key_pem.as_deref().unwrap()).unwrap();
        let der = der_of(&renewed.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw(),
            "the key offered is the certificate's"
        );
        assert!(
            issued.private_key_pem.is_none(),
            "a requested one has none here"
        );
    }

    fn der_of(pem: &str) -> Vec<u8> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        block.contents
    }
}

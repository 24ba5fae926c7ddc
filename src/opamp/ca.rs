//! The certificate authority that signs collectors' certificate requests (OpAMP's CSR flow,
//! `ConnectionSettingsRequest`): its files, what a request may ask for, and the certificate it
//! issues (which the collector's record keeps, and its connection offers carry).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, DnValue, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use serde::{Deserialize, Serialize};

use crate::collector::{CollectorId, IssuedCertificate};

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
    /// `validity`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub renew_before: Option<Duration>,
    /// The OpAMP URL collectors use (`wss://opamp.example.com:4320/v1/opamp`): an answer with a
    /// certificate is an OpAMP connection offer, which must name where to connect.
    pub endpoint: String,
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

impl Ca {
    pub fn load(config: &CaConfig) -> Result<Self, CaError> {
        let certificate_pem = read(&config.cert)?;
        let key = KeyPair::from_pem(&read(&config.key)?)
            .map_err(|e| CaError::Invalid(format!("key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key)
            .map_err(|e| CaError::Invalid(format!("certificate: {e}")))?;
        if config.endpoint.is_empty() {
            return Err(CaError::Invalid("endpoint must not be empty".into()));
        }
        Ok(Self {
            issuer,
            certificate_pem,
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
    /// renewal window.
    pub fn due(&self, certificate: &IssuedCertificate, now: SystemTime) -> bool {
        certificate
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

impl crate::collector::Renewer for Ca {
    fn due(&self, certificate: &IssuedCertificate, now: SystemTime) -> bool {
        Ca::due(self, certificate, now)
    }

    fn renew(
        &self,
        certificate: &IssuedCertificate,
        now: SystemTime,
    ) -> Result<IssuedCertificate, String> {
        Ca::renew(self, certificate, now)
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

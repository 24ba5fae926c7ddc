//! Connection settings (OpAMP `ConnectionSettingsOffers`): what a collector is offered, its hash,
//! which classes of it a collector may be sent, what it said of them, and how they change the
//! record (an offer that failed is an error it explains; an offered heartbeat interval sets how
//! long a plain-HTTP collector may keep silent).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use super::machine::{Collector, Effect, hex};
use super::{Capabilities, IssuedCertificate, Outbound};

pub const REPORTS_OWN_TRACES: u64 = 0x20;
pub const REPORTS_OWN_METRICS: u64 = 0x40;
pub const REPORTS_OWN_LOGS: u64 = 0x80;
pub const ACCEPTS_OPAMP_CONNECTION_SETTINGS: u64 = 0x100;
pub const ACCEPTS_OTHER_CONNECTION_SETTINGS: u64 = 0x200;

/// Everything a collector can be offered about its connections. A class left out is not offered
/// (OpAMP reads it as "unchanged").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSettings {
    /// The OpAMP connection itself: sent only to collectors with `AcceptsOpAMPConnectionSettings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opamp: Option<OpampConnection>,
    /// Where the collector sends its own metrics (`ReportsOwnMetrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_metrics: Option<TelemetryConnection>,
    /// Where it sends its own traces (`ReportsOwnTraces`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_traces: Option<TelemetryConnection>,
    /// Where it sends its own logs (`ReportsOwnLogs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_logs: Option<TelemetryConnection>,
    /// Other named destinations (`AcceptsOtherConnectionSettings`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other_connections: BTreeMap<String, OtherConnection>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpampConnection {
    /// A `ws://`, `wss://`, `http://` or `https://` URL; never empty.
    pub destination_endpoint: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// How often the collector reports (polls, over plain HTTP). Always sent: OpAMP reads zero as
    /// "no heartbeats", so it is at least 1 and 30 when not given.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySettings>,
}

fn default_heartbeat() -> u64 {
    30
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConnection {
    /// A full OTLP/HTTP URL, path included (`https://otlp.example.com/v1/metrics`).
    pub destination_endpoint: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySettings>,
}

impl TelemetryConnection {
    /// To `url`, with nothing else set.
    pub fn to(url: &str) -> Self {
        Self {
            destination_endpoint: url.into(),
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OtherConnection {
    pub destination_endpoint: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other_settings: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySettings>,
}

/// OpAMP `TLSConnectionSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// CA certificates (PEM) to trust for the destination.
    pub ca_pem_contents: String,
    pub include_system_ca_certs_pool: bool,
    pub insecure_skip_verify: bool,
    pub min_version: String,
    pub max_version: String,
    pub cipher_suites: Vec<String>,
}

/// OpAMP `ProxyConnectionSettings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// Never empty.
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connect_headers: BTreeMap<String, String>,
}

/// Settings as sent to one collector, with their hash, and the certificate opampd's CA issued it
/// (sent in the OpAMP connection settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsOffer {
    pub settings: ConnectionSettings,
    pub hash: Vec<u8>,
    pub certificate: Option<Arc<IssuedCertificate>>,
}

/// What a collector says of connection settings: the states and fields of a configuration's status
/// (OpAMP's two status messages have the same shape and values), kept under their own names.
pub type SettingsState = super::RemoteConfigState;

/// What a collector last said of the connection settings it was offered
/// (OpAMP `ConnectionSettingsStatus`).
pub type ConnectionSettingsStatus = super::RemoteConfigStatus;

impl ConnectionSettings {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The classes a collector declaring `can` may be sent: OpAMP offers each class only to a
    /// collector with its capability.
    #[must_use]
    pub fn for_capabilities(&self, can: Capabilities) -> Self {
        Self {
            opamp: self
                .opamp
                .clone()
                .filter(|_| can.has(ACCEPTS_OPAMP_CONNECTION_SETTINGS)),
            own_metrics: self
                .own_metrics
                .clone()
                .filter(|_| can.has(REPORTS_OWN_METRICS)),
            own_traces: self
                .own_traces
                .clone()
                .filter(|_| can.has(REPORTS_OWN_TRACES)),
            own_logs: self.own_logs.clone().filter(|_| can.has(REPORTS_OWN_LOGS)),
            other_connections: if can.has(ACCEPTS_OTHER_CONNECTION_SETTINGS) {
                self.other_connections.clone()
            } else {
                BTreeMap::new()
            },
        }
    }

    /// The offer a collector declaring `can` is sent; `None` when none of it is for it.
    pub fn offer_for(&self, can: Capabilities) -> Option<SettingsOffer> {
        let settings = self.for_capabilities(can);
        (!settings.is_empty()).then(|| SettingsOffer {
            hash: hash(&settings),
            settings,
            certificate: None,
        })
    }
}

/// The offer for a collector given `settings` (if any) and issued `certificate` (if any): the
/// certificate goes in the OpAMP connection class, to the destination the settings name or else
/// to the one it was issued for, and only to a collector that accepts OpAMP connection settings
/// (it asked for it, so it does). Its hash covers the certificate too.
pub fn offer(
    settings: Option<&ConnectionSettings>,
    certificate: Option<&Arc<IssuedCertificate>>,
    can: Capabilities,
) -> Option<SettingsOffer> {
    let Some(certificate) = certificate.filter(|_| can.has(ACCEPTS_OPAMP_CONNECTION_SETTINGS))
    else {
        return settings.and_then(|s| s.offer_for(can));
    };
    let mut settings = settings
        .map(|s| s.for_capabilities(can))
        .unwrap_or_default();
    settings.opamp.get_or_insert_with(|| OpampConnection {
        destination_endpoint: certificate.endpoint.clone(),
        heartbeat_interval_seconds: certificate.heartbeat_interval_seconds.max(1),
        ..OpampConnection::default()
    });
    let mut digest = Sha256::new();
    digest.update(hash(&settings));
    digest.update(certificate.cert_pem.as_bytes());
    digest.update(certificate.ca_pem.as_bytes());
    Some(SettingsOffer {
        hash: digest.finalize().to_vec(),
        settings,
        certificate: Some(Arc::clone(certificate)),
    })
}

/// SHA-256 over the settings' canonical JSON (every object's keys sorted, no spaces; classes not
/// offered and empty maps left out), as the API shows them. It covers every setting sent, so it
/// changes exactly when they do, and anyone can compute it from the API's view. Keys come out
/// sorted because `serde_json`'s map is ordered (its `preserve_order` feature is off).
pub fn hash(settings: &ConnectionSettings) -> Vec<u8> {
    // Plain structs and string maps always serialise.
    let canonical = serde_json::to_value(settings)
        .and_then(|value| serde_json::to_vec(&value))
        .unwrap_or_default();
    Sha256::digest(&canonical).to_vec()
}

/// The offer this collector is to be sent now, from the settings it is given and the certificate
/// it was issued.
fn current_offer(c: &Collector) -> Option<SettingsOffer> {
    offer(
        c.connection_settings.as_deref(),
        c.issued_certificate.as_ref(),
        c.capabilities,
    )
}

/// Puts the collector's offer in its outbox unless it already has it: the collector reported its
/// hash, or it went out on this connection. `resend` when the collector reported another hash:
/// then it is sent whatever went before (OpAMP says the server must).
pub(super) fn offer_if_needed(c: &mut Collector, resend: bool, out: &mut Vec<Effect>) {
    if let Some(offer) = current_offer(c) {
        send_if_needed(c, offer, resend, out);
    }
}

/// [`offer_if_needed`] with the offer already made.
fn send_if_needed(c: &mut Collector, offer: SettingsOffer, resend: bool, out: &mut Vec<Effect>) {
    let reported = c.connection_settings_status.as_ref().map(|s| &s.hash);
    if reported == Some(&offer.hash) {
        c.settings_sent = Some(offer.hash);
        return;
    }
    if !resend && c.settings_sent.as_ref() == Some(&offer.hash) {
        return;
    }
    c.settings_sent = Some(offer.hash.clone());
    c.outbox.merge(Outbound {
        connection_settings: Some(Box::new(offer)),
        ..Outbound::default()
    });
    out.push(Effect::Deliver);
}

/// New settings for the collector (`None`: nothing is offered to it any more; what it has, it
/// keeps, since OpAMP cannot take settings back). Settings other than the ones it failed end the
/// error that failure caused.
pub(super) fn given(
    c: &mut Collector,
    settings: Option<ConnectionSettings>,
    out: &mut Vec<Effect>,
) {
    c.connection_settings = settings.filter(|s| !s.is_empty()).map(Box::new);
    let offer = current_offer(c);
    if c.settings_failed.is_some() && c.settings_failed.as_ref() != offer.as_ref().map(|o| &o.hash)
    {
        c.settings_failed = None;
        c.settings_error = None;
    }
    if let Some(offer) = offer.filter(|_| c.connected) {
        send_if_needed(c, offer, false, out);
    }
}

/// A report's status of the settings: only a verdict on the offer we sent counts as ours. Failed,
/// it is an error the record explains until the collector applies it or it is replaced; another
/// hash than ours means the collector lacks our settings, which go out again.
pub(super) fn on_status(
    c: &mut Collector,
    status: &ConnectionSettingsStatus,
    out: &mut Vec<Effect>,
) {
    let Some(offer) = current_offer(c) else {
        return;
    };
    if status.hash != offer.hash {
        send_if_needed(c, offer, true, out);
        return;
    }
    c.settings_sent = Some(offer.hash.clone());
    match status.status {
        SettingsState::Failed => {
            c.settings_failed = Some(offer.hash);
            c.settings_error = Some(failure_message(&status.hash, &status.error_message));
        }
        SettingsState::Applied | SettingsState::Applying => {
            c.settings_failed = None;
            c.settings_error = None;
        }
        SettingsState::Unset | SettingsState::Unknown(_) => {}
    }
}

/// The record's explanation of a failed offer.
fn failure_message(hash: &[u8], error: &str) -> String {
    let hash = hex(hash);
    let short = hash.get(..12).unwrap_or(&hash);
    if error.is_empty() {
        format!("connection settings {short} failed")
    } else {
        format!("connection settings {short} failed: {error}")
    }
}

/// The heartbeat interval the collector was offered and has not refused: it polls at that pace,
/// so opampd waits for it accordingly. `None`: nothing offered, so the server's default holds.
pub fn heartbeat_interval(c: &Collector) -> Option<Duration> {
    // Read on every turn of the actor: the offer (and its hash) is made only to check it against
    // a failed one.
    if !c.capabilities.has(ACCEPTS_OPAMP_CONNECTION_SETTINGS) {
        return None;
    }
    let seconds = c
        .connection_settings
        .as_deref()?
        .opamp
        .as_ref()?
        .heartbeat_interval_seconds;
    if seconds == 0 {
        return None;
    }
    if let Some(failed) = &c.settings_failed
        && current_offer(c).is_some_and(|o| &o.hash == failed)
    {
        return None;
    }
    Some(Duration::from_secs(seconds))
}

/// A custom message either way (OpAMP `CustomMessage`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomMessage {
    pub capability: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "super::encoding::base64")]
    pub data: std::sync::Arc<[u8]>,
}

/// A collector's custom message as the event stream shows it.
#[derive(Debug, Clone)]
pub struct Received {
    pub collector: super::CollectorId,
    pub message: CustomMessage,
    pub at: SystemTime,
    /// It came from another node (which relays its own to the others).
    pub relayed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::CollectorId;

    fn everything() -> ConnectionSettings {
        ConnectionSettings {
            opamp: Some(OpampConnection {
                destination_endpoint: "wss://opamp.example.com/v1/opamp".into(),
                heartbeat_interval_seconds: 5,
                ..OpampConnection::default()
            }),
            own_metrics: Some(TelemetryConnection::to("https://otlp/v1/metrics")),
            own_traces: Some(TelemetryConnection::to("https://otlp/v1/traces")),
            own_logs: Some(TelemetryConnection::to("https://otlp/v1/logs")),
            other_connections: BTreeMap::from([(
                "kafka".to_owned(),
                OtherConnection {
                    destination_endpoint: "kafka:9092".into(),
                    ..OtherConnection::default()
                },
            )]),
        }
    }

    #[test]
    fn each_class_goes_only_with_its_capability() {
        let all = everything();
        assert!(all.offer_for(Capabilities(0x1)).is_none());
        let metrics_only = all.for_capabilities(Capabilities(REPORTS_OWN_METRICS));
        assert_eq!(metrics_only.own_metrics, all.own_metrics);
        assert!(metrics_only.opamp.is_none() && metrics_only.own_logs.is_none());
        assert!(metrics_only.other_connections.is_empty());
        let opamp = all.for_capabilities(Capabilities(ACCEPTS_OPAMP_CONNECTION_SETTINGS));
        assert_eq!(opamp.opamp, all.opamp);
        let others = all.for_capabilities(Capabilities(ACCEPTS_OTHER_CONNECTION_SETTINGS));
        assert_eq!(others.other_connections.len(), 1);
        assert_eq!(all.for_capabilities(Capabilities(u64::MAX)), all);
    }

    #[test]
    fn the_hash_follows_every_setting_and_nothing_else() {
        let all = everything();
        assert_eq!(hash(&all), hash(&all.clone()));
        assert_eq!(hash(&all).len(), 32);
        let mut changed = all.clone();
        changed
            .own_logs
            .as_mut()
            .unwrap()
            .headers
            .insert("authorization".into(), "Bearer x".into());
        assert_ne!(hash(&all), hash(&changed));
        let mut tls = all.clone();
        tls.opamp.as_mut().unwrap().tls = Some(TlsSettings {
            insecure_skip_verify: true,
            ..TlsSettings::default()
        });
        assert_ne!(hash(&all), hash(&tls));
        // Map order is the key order, however the maps were filled.
        let mut a = TelemetryConnection::to("u");
        a.headers.insert("b".into(), "2".into());
        a.headers.insert("a".into(), "1".into());
        let mut b = TelemetryConnection::to("u");
        b.headers.insert("a".into(), "1".into());
        b.headers.insert("b".into(), "2".into());
        let with = |t: TelemetryConnection| ConnectionSettings {
            own_logs: Some(t),
            ..ConnectionSettings::default()
        };
        assert_eq!(hash(&with(a)), hash(&with(b)));
        // Keys sorted at every level: the JSON an outsider writes from the API's view.
        let expected = r#"{"own_logs":{"destination_endpoint":"u","headers":{"a":"1","b":"2"}}}"#;
        assert_eq!(
            hash(&with({
                let mut t = TelemetryConnection::to("u");
                t.headers.insert("b".into(), "2".into());
                t.headers.insert("a".into(), "1".into());
                t
            })),
            Sha256::digest(expected.as_bytes()).to_vec()
        );
        // What a collector cannot be sent does not enter its hash.
        let metrics = Capabilities(REPORTS_OWN_METRICS);
        assert_eq!(
            all.offer_for(metrics).unwrap().hash,
            hash(&ConnectionSettings {
                own_metrics: all.own_metrics.clone(),
                ..ConnectionSettings::default()
            })
        );
    }

    fn collector(can: u64) -> Collector {
        let mut c = Collector::new(CollectorId(uuid::Uuid::nil()));
        c.connected = true;
        c.capabilities = Capabilities(can);
        c
    }

    fn status(hash: &[u8], state: SettingsState) -> ConnectionSettingsStatus {
        ConnectionSettingsStatus {
            hash: hash.to_vec(),
            status: state,
            error_message: "no route".into(),
        }
    }

    #[test]
    fn an_offer_goes_once_again_when_the_collector_reports_another_hash() {
        let mut c = collector(u64::MAX);
        let mut out = Vec::new();
        given(&mut c, Some(everything()), &mut out);
        let offer = c.outbox.connection_settings.take().expect("offered");
        given(&mut c, Some(everything()), &mut out);
        assert!(c.outbox.connection_settings.is_none(), "not twice");
        on_status(&mut c, &status(b"old", SettingsState::Applied), &mut out);
        assert_eq!(c.outbox.connection_settings.take(), Some(offer.clone()));
        let offer = *offer;
        c.connection_settings_status = Some(Box::new(status(&offer.hash, SettingsState::Applied)));
        on_status(
            &mut c,
            &status(&offer.hash, SettingsState::Applied),
            &mut out,
        );
        assert!(c.outbox.connection_settings.is_none());
        // A collector that reports holding it is not sent it on its next connection.
        c.settings_sent = None;
        offer_if_needed(&mut c, false, &mut out);
        assert!(c.outbox.connection_settings.is_none());
    }

    #[test]
    fn a_failed_offer_is_an_error_until_applied_or_replaced() {
        let mut c = collector(u64::MAX);
        let mut out = Vec::new();
        given(&mut c, Some(everything()), &mut out);
        let hash = c.outbox.connection_settings.take().unwrap().hash;
        assert_eq!(heartbeat_interval(&c), Some(Duration::from_secs(5)));
        on_status(&mut c, &status(&hash, SettingsState::Failed), &mut out);
        let error = c.settings_error.clone().expect("explained");
        assert!(error.ends_with("failed: no route"), "{error}");
        assert_eq!(heartbeat_interval(&c), None, "it polls as it did");
        given(&mut c, Some(everything()), &mut out);
        assert!(
            c.settings_error.is_some(),
            "the same settings fail the same"
        );
        on_status(&mut c, &status(&hash, SettingsState::Applied), &mut out);
        assert!(c.settings_error.is_none());
        on_status(&mut c, &status(&hash, SettingsState::Failed), &mut out);
        let mut other = everything();
        other.own_logs = None;
        given(&mut c, Some(other), &mut out);
        assert!(c.settings_error.is_none(), "replaced");
        given(&mut c, None, &mut out);
        assert_eq!(heartbeat_interval(&c), None);
    }

    fn issued() -> Arc<IssuedCertificate> {
        Arc::new(IssuedCertificate {
            identity: crate::collector::ClientCertificate {
                subject: "CN=me".into(),
                names: Vec::new(),
                issuer: "CN=fleet-ca".into(),
                serial: "01".into(),
                sha256: "ab".into(),
                not_after: SystemTime::UNIX_EPOCH,
            },
            issued_at: SystemTime::UNIX_EPOCH,
            cert_pem: "-----BEGIN CERTIFICATE-----".into(),
            ca_pem: "-----BEGIN CERTIFICATE----- ca".into(),
            endpoint: "wss://issued.example.com/v1/opamp".into(),
            heartbeat_interval_seconds: 30,
            request_pem: String::new(),
            private_key_pem: None,
        })
    }

    #[test]
    fn an_issued_certificate_goes_with_every_opamp_offer() {
        // OpAMP: an OpAMP connection offer without a certificate tells the collector to stop
        // using one, so once issued it goes with each offer of that class.
        let mut c = collector(u64::MAX);
        let mut out = Vec::new();
        c.issued_certificate = Some(issued());
        offer_if_needed(&mut c, false, &mut out);
        let alone = c.outbox.connection_settings.take().expect("offered");
        assert_eq!(alone.certificate, c.issued_certificate);
        let opamp = alone.settings.opamp.as_ref().expect("the OpAMP class");
        assert_eq!(
            opamp.destination_endpoint,
            "wss://issued.example.com/v1/opamp"
        );
        assert_eq!(opamp.heartbeat_interval_seconds, 30);

        given(&mut c, Some(everything()), &mut out);
        let with_settings = c.outbox.connection_settings.take().expect("offered again");
        assert_eq!(with_settings.certificate, c.issued_certificate);
        assert_eq!(with_settings.settings.opamp, everything().opamp);
        assert_ne!(
            with_settings.hash,
            hash(&everything()),
            "the hash covers the certificate"
        );
        assert_ne!(with_settings.hash, alone.hash);

        // A renewed certificate is a new offer.
        let mut renewed = (*issued()).clone();
        renewed.cert_pem.push_str(" renewed");
        c.issued_certificate = Some(Arc::new(renewed));
        offer_if_needed(&mut c, false, &mut out);
        let again = c
            .outbox
            .connection_settings
            .take()
            .expect("the renewed one");
        assert_ne!(again.hash, with_settings.hash);

        // Without the capability nothing of it goes, and the other classes go as they are.
        let mut telemetry_only = collector(REPORTS_OWN_LOGS);
        telemetry_only.issued_certificate = Some(issued());
        given(&mut telemetry_only, Some(everything()), &mut out);
        let offer = telemetry_only.outbox.connection_settings.take().unwrap();
        assert!(offer.certificate.is_none() && offer.settings.opamp.is_none());
        assert_eq!(offer.hash, hash(&offer.settings));
    }

    #[test]
    fn a_verdict_on_other_settings_is_not_ours() {
        let mut c = collector(REPORTS_OWN_LOGS);
        let mut out = Vec::new();
        given(&mut c, Some(everything()), &mut out);
        let _ = c.outbox.connection_settings.take();
        on_status(&mut c, &status(b"theirs", SettingsState::Failed), &mut out);
        assert!(c.settings_error.is_none());
        assert_eq!(
            heartbeat_interval(&c),
            None,
            "not offered an OpAMP connection"
        );
    }
}

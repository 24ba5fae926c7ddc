//! What the API answers with: the collector record and its history as operators read them (ids as
//! UUID strings, times as RFC 3339, capabilities by name, hashes as hex).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;
use utoipa::ToSchema;

use crate::collector::machine::hex;
use crate::collector::{Collector, ConfigFiles, Health, State, Transition, state};
use crate::store::Event;

pub use crate::collector::encoding::rfc3339;

#[derive(Debug, Serialize, ToSchema)]
pub struct CollectorView {
    /// The OpAMP `instance_uid` as a canonical UUID.
    pub id: String,
    /// The `display-name` label, else `service.instance.name`, else `host.name`, else
    /// `service.name` with the id's last eight hex digits.
    pub name: Option<String>,
    /// One of the seven states.
    pub state: Option<&'static str>,
    pub state_reason: Option<&'static str>,
    pub state_message: String,
    pub state_since: Option<String>,
    /// What explains the state without being one: `drifted` (its effective configuration is no
    /// longer the one it ran once ours was applied), `stale` (connected, heartbeats late),
    /// `degraded` (healthy, but some component is not).
    pub facets: Vec<&'static str>,
    pub connected: bool,
    /// `websocket` or `http`.
    pub transport: Option<&'static str>,
    pub connected_since: Option<String>,
    pub last_seen: Option<String>,
    /// `service.version`.
    pub version: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Set when this collector's uid was also claimed by another live collector and one of the
    /// two was given a fresh uid: `{"kept": {"to": id, "at": time}}` on the one that kept it,
    /// `{"given": {"from": id, "at": time}}` on the newcomer.
    #[schema(value_type = Option<Object>)]
    pub reassigned: Option<serde_json::Value>,
    pub description: DescriptionView,
    pub capabilities: Vec<&'static str>,
    pub health: Option<HealthView>,
    pub remote_config: Option<RemoteConfigView>,
    pub effective_config: Option<EffectiveConfigView>,
    pub packages: Option<PackagesView>,
    pub available_components: Option<AvailableComponentsView>,
    /// The custom capabilities it declares (OpAMP `CustomCapabilities`), sorted.
    pub custom_capabilities: Vec<String>,
    /// The verified client certificate its latest connection was made with (mutual TLS).
    pub client_certificate: Option<ClientCertificateView>,
    /// The certificate opampd's CA last issued it (OpAMP's CSR flow), as soon as it is issued;
    /// every OpAMP connection offer to it carries this certificate again.
    pub issued_certificate: Option<IssuedCertificateView>,
    /// What it last said of the connection settings it was offered, and, while the offer it
    /// failed is still the one it is given, why (an error the state also shows).
    pub connection_settings: Option<ConnectionSettingsView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionSettingsView {
    /// The hash of the settings it last received, hex.
    pub hash: String,
    /// `unset`, `applied`, `applying`, `failed`.
    pub status: String,
    pub error_message: String,
    /// Set while the settings it failed to apply are still the ones it is offered.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClientCertificateView {
    /// The subject's distinguished name.
    pub subject: String,
    /// Subject alternative names: `DNS:…`, `URI:…`, `email:…`, `IP:…`.
    pub names: Vec<String>,
    pub issuer: String,
    pub serial: String,
    /// SHA-256 of the certificate, hex.
    pub sha256: String,
    pub not_after: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedCertificateView {
    #[serde(flatten)]
    pub certificate: ClientCertificateView,
    pub issued_at: String,
}

impl ClientCertificateView {
    fn of(cert: &crate::collector::ClientCertificate) -> Self {
        Self {
            subject: cert.subject.clone(),
            names: cert.names.clone(),
            issuer: cert.issuer.clone(),
            serial: cert.serial.clone(),
            sha256: cert.sha256.clone(),
            not_after: rfc3339(cert.not_after),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DescriptionView {
    #[schema(value_type = Object)]
    pub identifying: crate::collector::Attributes,
    #[schema(value_type = Object)]
    pub non_identifying: crate::collector::Attributes,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    pub healthy: bool,
    pub status: String,
    pub last_error: String,
    pub start_time_unix_nano: u64,
    pub status_time_unix_nano: u64,
    #[schema(no_recursion)]
    pub components: BTreeMap<String, HealthView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RemoteConfigView {
    pub hash: String,
    /// `unset`, `applied`, `applying`, `failed`.
    pub status: String,
    pub error_message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EffectiveConfigView {
    /// SHA-256 over the file names, content types and bodies: changes when the config does.
    pub hash: String,
    /// Only with `?include=effective_config`.
    pub files: Option<BTreeMap<String, ConfigFileView>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigFileView {
    pub content_type: String,
    /// The body as text when it is UTF-8.
    pub body: Option<String>,
    /// The body in base64 when it is not.
    pub body_base64: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PackagesView {
    pub all_packages_hash: String,
    pub error_message: String,
    pub packages: BTreeMap<String, PackageView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PackageView {
    pub version: String,
    pub offered_version: String,
    /// `installed`, `install_pending`, `installing`, `install_failed`, `downloading`.
    pub status: String,
    pub error_message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AvailableComponentsView {
    pub hash: String,
    /// Component types by kind; absent when the collector sent only the hash and it is unknown.
    pub components: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransitionView {
    /// `null` for the first contact.
    pub from: Option<&'static str>,
    pub to: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub at: String,
    /// A configuration hash, rollout id or package version, when there is one.
    pub cause: Option<String>,
}

/// A transition on the event stream: the transition and whose it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub collector_id: String,
    #[serde(flatten)]
    pub transition: TransitionView,
}

/// The serde name of a value (`snake_case` enums), for enums that have no `as_str`.
fn serde_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(o)) => o.keys().next().cloned().unwrap_or_default(),
        _ => String::new(),
    }
}

fn reassignment(r: &crate::collector::Reassignment) -> serde_json::Value {
    use crate::collector::Reassignment;
    match r {
        Reassignment::Kept { to, at } => {
            serde_json::json!({"kept": {"to": to.to_string(), "at": rfc3339(*at)}})
        }
        Reassignment::Given { from, at } => {
            serde_json::json!({"given": {"from": from.to_string(), "at": rfc3339(*at)}})
        }
    }
}

fn health(h: &Health) -> HealthView {
    HealthView {
        healthy: h.healthy,
        status: h.status.clone(),
        last_error: h.last_error.clone(),
        start_time_unix_nano: h.start_time_unix_nano,
        status_time_unix_nano: h.status_time_unix_nano,
        components: h
            .components
            .iter()
            .map(|(k, v)| (k.clone(), health(v)))
            .collect(),
    }
}

fn effective_config(files: &ConfigFiles, include: bool) -> EffectiveConfigView {
    EffectiveConfigView {
        hash: hex(&crate::collector::facets::config_digest(files)),
        files: include.then(|| {
            files
                .iter()
                .map(|(name, file)| {
                    let text = std::str::from_utf8(&file.body).ok().map(str::to_owned);
                    let view = ConfigFileView {
                        content_type: file.content_type.clone(),
                        body_base64: text
                            .is_none()
                            .then(|| base64::engine::general_purpose::STANDARD.encode(&file.body)),
                        body: text,
                    };
                    (name.clone(), view)
                })
                .collect()
        }),
    }
}

impl CollectorView {
    pub fn new(c: &Collector, include_effective_config: bool) -> Self {
        Self {
            id: c.id.to_string(),
            name: c.display_name(),
            state: c.state.map(State::as_str),
            state_reason: c.state_reason.map(state::Reason::as_str),
            state_message: c.state_message.clone(),
            state_since: c.state_since.map(rfc3339),
            facets: c.facets.names(),
            connected: c.connected,
            transport: c.transport.map(crate::collector::Transport::as_str),
            connected_since: c.connected_since.map(rfc3339),
            last_seen: c.last_seen.map(rfc3339),
            version: c.attribute("service.version"),
            labels: c.labels.clone(),
            reassigned: c.reassigned.as_deref().map(reassignment),
            description: DescriptionView {
                identifying: c
                    .description
                    .as_ref()
                    .map(|d| d.identifying.clone())
                    .unwrap_or_default(),
                non_identifying: c
                    .description
                    .as_ref()
                    .map(|d| d.non_identifying.clone())
                    .unwrap_or_default(),
            },
            capabilities: c.capabilities.names(),
            health: c.health.as_ref().map(health),
            remote_config: c.remote_config_status.as_ref().map(|s| RemoteConfigView {
                hash: hex(&s.hash),
                status: serde_name(&s.status),
                error_message: s.error_message.clone(),
            }),
            effective_config: c
                .effective_config
                .as_ref()
                .map(|files| effective_config(files, include_effective_config)),
            packages: c.package_statuses.as_ref().map(|p| PackagesView {
                all_packages_hash: hex(&p.server_provided_all_packages_hash),
                error_message: p.error_message.clone(),
                packages: p
                    .packages
                    .iter()
                    .map(|(name, s)| {
                        let view = PackageView {
                            version: s.agent_has_version.clone(),
                            offered_version: s.server_offered_version.clone(),
                            status: serde_name(&s.status),
                            error_message: s.error_message.clone(),
                        };
                        (name.clone(), view)
                    })
                    .collect(),
            }),
            available_components: c.available_components.as_ref().map(|a| {
                AvailableComponentsView {
                    hash: hex(&a.hash),
                    components: a.components.as_ref().map(|c| c.0.clone()),
                }
            }),
            custom_capabilities: c
                .custom_capabilities
                .as_deref()
                .map(<[String]>::to_vec)
                .unwrap_or_default(),
            client_certificate: c
                .client_certificate
                .as_deref()
                .map(ClientCertificateView::of),
            issued_certificate: c.issued_certificate.as_deref().map(|issued| {
                IssuedCertificateView {
                    certificate: ClientCertificateView::of(&issued.identity),
                    issued_at: rfc3339(issued.issued_at),
                }
            }),
            connection_settings: c.connection_settings_status.as_ref().map(|s| {
                ConnectionSettingsView {
                    hash: hex(&s.hash),
                    status: serde_name(&s.status),
                    error_message: s.error_message.clone(),
                    error: c.settings_error.clone(),
                }
            }),
        }
    }
}

impl TransitionView {
    pub fn new(t: &Transition) -> Self {
        Self {
            from: t.from.map(State::as_str),
            to: t.to.as_str(),
            reason: t.reason.as_str(),
            message: t.message.clone(),
            at: rfc3339(t.at),
            cause: t.cause.clone(),
        }
    }
}

impl EventView {
    pub fn new(event: &Event) -> Self {
        Self {
            collector_id: event.collector.to_string(),
            transition: TransitionView::new(&event.transition),
        }
    }
}

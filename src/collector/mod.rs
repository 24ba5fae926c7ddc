//! The collector domain: who a collector is, what it reports, what the server asks of it, and the
//! actor and registry that own each collector's record.

pub mod actor;
pub mod bus;
pub mod connection;
pub mod contest;
pub mod custom;
pub mod delivery;
pub mod encoding;
pub mod facets;
pub mod facts;
pub mod handle;
pub mod machine;
pub mod packages;
pub mod persist;
pub mod registry;
pub mod resend;
pub mod state;
pub mod verdicts;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use handle::{Answer, CollectorHandle, Forgotten, Published, Unavailable};
pub use machine::{Collector, DISPLAY_NAME_LABEL, Event, Transition};
pub use registry::Registry;
pub use state::{Reason, State};

/// A collector's identity: its OpAMP `instance_uid`, as a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CollectorId(pub Uuid);

impl CollectorId {
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
}

impl fmt::Display for CollectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    WebSocket,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Http => "http",
        }
    }

    pub fn parse(text: &str) -> Option<Transport> {
        [Transport::WebSocket, Transport::Http]
            .into_iter()
            .find(|t| t.as_str() == text)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a collector says it can do: OpAMP's agent capability bits. Unknown bits are kept, never
/// rejected, and simply have no name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capabilities(pub u64);

impl Capabilities {
    pub const REPORTS_STATUS: u64 = 0x1;
    pub const ACCEPTS_REMOTE_CONFIG: u64 = 0x2;
    pub const REPORTS_EFFECTIVE_CONFIG: u64 = 0x4;
    pub const ACCEPTS_PACKAGES: u64 = 0x8;
    pub const REPORTS_PACKAGE_STATUSES: u64 = 0x10;
    pub const ACCEPTS_RESTART_COMMAND: u64 = 0x400;
    pub const REPORTS_HEALTH: u64 = 0x800;
    pub const REPORTS_REMOTE_CONFIG: u64 = 0x1000;
    pub const REPORTS_HEARTBEAT: u64 = 0x2000;
    pub const REPORTS_AVAILABLE_COMPONENTS: u64 = 0x4000;

    const NAMES: [(u64, &'static str); 16] = [
        (0x1, "reports_status"),
        (0x2, "accepts_remote_config"),
        (0x4, "reports_effective_config"),
        (0x8, "accepts_packages"),
        (0x10, "reports_package_statuses"),
        (0x20, "reports_own_traces"),
        (0x40, "reports_own_metrics"),
        (0x80, "reports_own_logs"),
        (0x100, "accepts_opamp_connection_settings"),
        (0x200, "accepts_other_connection_settings"),
        (0x400, "accepts_restart_command"),
        (0x800, "reports_health"),
        (0x1000, "reports_remote_config"),
        (0x2000, "reports_heartbeat"),
        (0x4000, "reports_available_components"),
        (0x8000, "reports_connection_settings_status"),
    ];

    pub fn has(self, bit: u64) -> bool {
        self.0 & bit == bit
    }

    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(bit, _)| self.has(*bit))
            .map(|(_, name)| *name)
            .collect()
    }
}

/// Attribute values as JSON: OpAMP's `AnyValue` maps onto it without loss except for bytes,
/// which become base64-free arrays of numbers (rare in descriptions).
/// A flat sorted vector, not a `BTreeMap`: a collector's few attributes are held for as long as
/// it is resident, and a B-tree leaf is allocated for 11 entries (two maps of 600 bytes each for
/// a typical four attributes). Same API and the same JSON.
pub type Attributes = litemap::LiteMap<String, serde_json::Value>;

/// A flat map of `entries` with no spare room. A collected map has room for at least four
/// entries (a vector's smallest growth), and a resident collector keeps that room for its life.
pub fn trimmed<K: Ord, V>(entries: impl IntoIterator<Item = (K, V)>) -> litemap::LiteMap<K, V> {
    let mut entries = entries
        .into_iter()
        .collect::<litemap::LiteMap<K, V>>()
        .into_tuple_vec();
    entries.shrink_to_fit();
    litemap::LiteMap::from_sorted_store_unchecked(entries)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Description {
    pub identifying: Attributes,
    pub non_identifying: Attributes,
}

/// A health tree, as the collector reports it; the root is the collector as a whole.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub healthy: bool,
    pub start_time_unix_nano: u64,
    pub last_error: String,
    pub status: String,
    pub status_time_unix_nano: u64,
    /// Flat and sorted, as [`Attributes`]: a report's maps are mostly of one to a few entries.
    pub components: litemap::LiteMap<String, Health>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub content_type: String,
    #[serde(with = "encoding::base64")]
    pub body: Arc<[u8]>,
}

/// A set of named configuration files; a single-file configuration uses the name `""`. Flat and
/// sorted, as [`Attributes`]: a collector's effective configuration is held while it is resident,
/// mostly one file, and a B-tree leaf is 720 bytes whatever it holds.
pub type ConfigFiles = litemap::LiteMap<String, ConfigFile>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteConfigState {
    Unset,
    Applied,
    Applying,
    Failed,
    /// A value this server does not know; kept so the fact is not lost.
    Unknown(i32),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteConfigStatus {
    #[serde(with = "encoding::hex")]
    pub hash: Vec<u8>,
    pub status: RemoteConfigState,
    pub error_message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PackageState {
    Installed,
    InstallPending,
    Installing,
    InstallFailed,
    Downloading,
    Unknown(i32),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageStatus {
    pub agent_has_version: String,
    /// The hash of the package the collector has (`agent_has_hash`).
    #[serde(default, with = "encoding::hex")]
    pub agent_has_hash: Vec<u8>,
    pub server_offered_version: String,
    pub status: PackageState,
    pub error_message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PackageStatuses {
    pub packages: BTreeMap<String, PackageStatus>,
    #[serde(with = "encoding::hex")]
    pub server_provided_all_packages_hash: Vec<u8>,
    pub error_message: String,
}

/// Component types the collector binary contains, by kind (`receivers`, …) and type (`otlp`, …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Components(pub BTreeMap<String, Vec<String>>);

/// `AvailableComponents` as sent: often only the hash, the full map only when asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AvailableComponents {
    #[serde(with = "encoding::hex")]
    pub hash: Vec<u8>,
    pub components: Option<Arc<Components>>,
}

/// One `AgentToServer`, translated. `None` sub-messages mean "unchanged", never "empty".
/// Who the verified client certificate of a collector's connection names (mutual TLS): a fact of
/// its connection, kept like a reported one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientCertificate {
    /// The subject's distinguished name (`CN=…, O=…`).
    pub subject: String,
    /// Subject alternative names: `DNS:…`, `URI:…` (a SPIFFE id), `email:…`, `IP:…`.
    #[serde(default)]
    pub names: Vec<String>,
    pub issuer: String,
    pub serial: String,
    /// SHA-256 of the certificate's DER bytes, hex.
    pub sha256: String,
    #[serde(with = "humantime_serde")]
    pub not_after: std::time::SystemTime,
}

/// A certificate opampd's CA issued to the collector (OpAMP's CSR flow, or renewed here): who it
/// names, and what every later OpAMP connection offer to the collector carries again, since an
/// offer without a certificate tells the collector to stop using one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCertificate {
    #[serde(flatten)]
    pub identity: ClientCertificate,
    #[serde(with = "humantime_serde")]
    pub issued_at: std::time::SystemTime,
    pub cert_pem: String,
    pub ca_pem: String,
    /// The OpAMP destination offered with it when no operator's offer names one.
    pub endpoint: String,
    pub heartbeat_interval_seconds: u64,
    /// The request it was issued for (what a renewal names again).
    #[serde(default)]
    pub request_pem: String,
    /// Set only for a renewal, whose key was made here: it goes with the certificate in every
    /// offer (a collector keeps its own for a requested one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
}

/// The connection settings operators' offers give a collector with these labels (implemented
/// where the offers are; an actor asks on its collector's first arrival, for its first reply).
pub trait SettingsSource: Send + Sync {
    fn settings_for(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Option<connection::ConnectionSettings>;
}

/// Renews the certificates opampd's CA issued (implemented where the CA is; actors only decide
/// when).
pub trait Renewer: Send + Sync {
    /// Whether `certificate` expires soon enough at `now` to be renewed.
    fn due(&self, certificate: &IssuedCertificate, now: std::time::SystemTime) -> bool;
    /// A new certificate naming what `certificate` names, on a new key.
    fn renew(
        &self,
        certificate: &IssuedCertificate,
        now: std::time::SystemTime,
    ) -> Result<IssuedCertificate, String>;
}

/// Never the private key, in logs.
impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("identity", &self.identity)
            .field("issued_at", &self.issued_at)
            .field("endpoint", &self.endpoint)
            .field("with_key", &self.private_key_pem.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub sequence_num: u64,
    pub capabilities: Capabilities,
    pub description: Option<Description>,
    pub health: Option<Health>,
    pub effective_config: Option<ConfigFiles>,
    pub remote_config_status: Option<RemoteConfigStatus>,
    pub package_statuses: Option<PackageStatuses>,
    pub available_components: Option<AvailableComponents>,
    /// The client certificate of the connection the report came on, where mutual TLS is on.
    pub client_certificate: Option<Arc<ClientCertificate>>,
    /// The certificate opampd's CA signed for the request this report's message carried.
    pub issued_certificate: Option<Arc<IssuedCertificate>>,
    /// The custom capabilities it declares (OpAMP `CustomCapabilities`), sorted, no repeats.
    pub custom_capabilities: Option<Arc<[String]>>,
    /// What became of the connection settings it was offered.
    pub connection_settings_status: Option<connection::ConnectionSettingsStatus>,
    /// A custom message from it: relayed, never part of its record.
    pub custom_message: Option<connection::CustomMessage>,
    /// The collector said goodbye (`agent_disconnect`).
    pub disconnect: bool,
}

/// A configuration offered to a collector (OpAMP `AgentRemoteConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigOffer {
    pub files: ConfigFiles,
    #[serde(with = "encoding::hex")]
    pub hash: Vec<u8>,
}

/// A package offered to a collector (OpAMP `PackagesAvailable` with one top-level package).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackageOffer {
    pub name: String,
    pub version: String,
    pub download_url: String,
    /// SHA-256 of the file.
    #[serde(with = "encoding::hex")]
    pub content_hash: Vec<u8>,
    #[serde(with = "encoding::hex")]
    pub signature: Vec<u8>,
    /// Over every field above: the package's own hash.
    #[serde(with = "encoding::hex")]
    pub hash: Vec<u8>,
    /// The other packages the collector is to keep, listed beside the offered one: a collector
    /// removes every package an offer does not list (`packages::listing`).
    #[serde(default)]
    pub kept: Vec<KeptPackage>,
    /// Over every package listed: the offer's `all_packages_hash` (`packages::all_packages_hash`).
    /// Empty in offers made before it was computed, which listed one package and used its hash.
    #[serde(default, with = "encoding::hex")]
    pub all_hash: Vec<u8>,
}

impl PackageOffer {
    /// The offer's `all_packages_hash`.
    pub fn all_packages_hash(&self) -> &[u8] {
        if self.all_hash.is_empty() {
            &self.hash
        } else {
            &self.all_hash
        }
    }
}

/// A package a collector reported it has from a server, listed in an offer so that it keeps it:
/// at the version and with the hash it reported.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeptPackage {
    pub name: String,
    pub version: String,
    #[serde(with = "encoding::hex")]
    pub hash: Vec<u8>,
}

/// What the server asks of a collector in one message. For HTTP collectors, which cannot be pushed
/// to, offers wait here (the latest of each kind) until the next poll.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outbound {
    pub report_full_state: bool,
    pub report_available_components: bool,
    pub remote_config: Option<Box<ConfigOffer>>,
    pub package: Option<Box<PackageOffer>>,
    pub restart: bool,
    pub connection_settings: Option<Box<connection::SettingsOffer>>,
    /// Operators' custom messages, oldest first: one travels per message.
    pub custom_messages: std::collections::VecDeque<connection::CustomMessage>,
    /// The server's own custom capabilities, declared when the collector connects or declares its.
    pub custom_capabilities: Option<Arc<[String]>>,
}

impl Outbound {
    pub fn is_empty(&self) -> bool {
        !self.restart && !self.carries_more_than_restart()
    }

    fn carries_more_than_restart(&self) -> bool {
        self.report_full_state
            || self.report_available_components
            || self.remote_config.is_some()
            || self.package.is_some()
            || self.connection_settings.is_some()
            || !self.custom_messages.is_empty()
            || self.custom_capabilities.is_some()
    }

    /// The offers and the command alone, without the flags: what a message that was not written
    /// gives back.
    #[must_use]
    pub fn offers(&self) -> Outbound {
        Outbound {
            remote_config: self.remote_config.clone(),
            package: self.package.clone(),
            restart: self.restart,
            ..Outbound::default()
        }
    }

    /// [`Outbound::offers`], taken out of a message that will not be written.
    #[must_use]
    pub fn into_offers(self) -> Outbound {
        Outbound {
            remote_config: self.remote_config,
            package: self.package,
            restart: self.restart,
            ..Outbound::default()
        }
    }

    /// Folds a newer message into this one: flags accumulate, offers are replaced by the newer.
    pub fn merge(&mut self, newer: Outbound) {
        self.report_full_state |= newer.report_full_state;
        self.report_available_components |= newer.report_available_components;
        if newer.remote_config.is_some() {
            self.remote_config = newer.remote_config;
        }
        if newer.package.is_some() {
            self.package = newer.package;
        }
        self.restart |= newer.restart;
        if newer.connection_settings.is_some() {
            self.connection_settings = newer.connection_settings;
        }
        self.custom_messages.extend(newer.custom_messages);
        if newer.custom_capabilities.is_some() {
            self.custom_capabilities = newer.custom_capabilities;
        }
    }

    /// Splits off what can travel in one message to a collector that declares `can` now:
    /// OpAMP says a restart command goes alone, so everything else is sent first and the command
    /// waits for the next message; and an offer or command whose capability the collector has
    /// since dropped is not sent but kept, until it declares it again (or the offer is withdrawn).
    #[must_use]
    pub fn take_sendable(&mut self, can: Capabilities) -> Outbound {
        let mut out = std::mem::take(self);
        if !can.has(Capabilities::ACCEPTS_REMOTE_CONFIG) {
            self.remote_config = out.remote_config.take();
        }
        if !can.has(Capabilities::ACCEPTS_PACKAGES) {
            self.package = out.package.take();
        }
        if !can.has(Capabilities::ACCEPTS_RESTART_COMMAND) {
            self.restart = std::mem::take(&mut out.restart);
        }
        // One custom message per message; the rest wait their turn.
        if out.custom_messages.len() > 1 {
            self.custom_messages = out.custom_messages.split_off(1);
        }
        if out.restart && out.carries_more_than_restart() {
            out.restart = false;
            self.restart = true;
        }
        out
    }
}

/// Two live collectors claimed one uid (a cloned machine, say) and kept replacing each other's
/// connection; the newest was given a fresh uid. Both records say so.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reassignment {
    /// This record kept the uid; the other collector now has `to`.
    Kept {
        to: CollectorId,
        at: std::time::SystemTime,
    },
    /// This collector claimed the uid of `from` and was given this record's uid instead.
    Given {
        from: CollectorId,
        at: std::time::SystemTime,
    },
}

/// Why the server closes a collector's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection for the same collector replaced this one.
    Replaced,
    /// Another claim holds the collector's record now (this server's view of it is stale): the
    /// collector is to reconnect and be served from the stored record.
    Moved,
}

/// What an actor can ask of a connection it does not own.
#[derive(Debug)]
pub enum Delivery {
    Send(CollectorId, Box<Outbound>),
    Close(CloseReason),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_collector_no_longer_accepts_is_kept_not_sent() {
        let offer = ConfigOffer {
            files: ConfigFiles::new(),
            hash: vec![1],
        };
        let mut outbox = Outbound {
            remote_config: Some(Box::new(offer.clone())),
            restart: true,
            report_full_state: true,
            ..Outbound::default()
        };
        let status_only = Capabilities(Capabilities::REPORTS_STATUS);
        let sent = outbox.take_sendable(status_only);
        assert!(sent.report_full_state, "a flag needs no capability");
        assert!(sent.remote_config.is_none() && !sent.restart);
        assert_eq!(outbox.remote_config.as_deref(), Some(&offer), "kept");
        assert!(outbox.restart, "kept");
        // Declared again: the configuration goes, and the command after it, alone.
        let all = Capabilities(u64::MAX);
        let sent = outbox.take_sendable(all);
        assert_eq!(sent.remote_config.as_deref(), Some(&offer));
        assert!(!sent.restart);
        let sent = outbox.take_sendable(all);
        assert!(sent.restart && outbox.is_empty());
    }
}

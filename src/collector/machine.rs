//! The rule: `step(&mut Collector, Event, now) -> Vec<Effect>`. Pure (no tokio, no I/O), so every
//! edge can be tested directly; the actor carries out the effects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::connection::{self, ConnectionSettings, ConnectionSettingsStatus, CustomMessage};
use super::delivery::{TooLarge, acknowledge};
use super::facets::{DriftBaseline, Facets};
use super::state::{Reason, State, target};
pub use super::verdicts::{WITHDRAWN_CONFIGURATION, WITHDRAWN_PACKAGE};
use super::verdicts::{
    mark_incompatible, on_config_status, on_package_statuses, send_configuration, settle_withdrawn,
    undeliverable, withdraw,
};
use super::{
    AvailableComponents, Capabilities, ClientCertificate, CollectorId, Components, ConfigFiles,
    ConfigOffer, Description, Health, IssuedCertificate, Outbound, PackageOffer, PackageStatuses,
    Reassignment, RemoteConfigStatus, Report, Transport,
};
use super::{custom, resend};

/// One recorded move along an edge of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// `None` for the diagram's `[*]`: the collector's first contact.
    pub from: Option<State>,
    pub to: State,
    pub reason: Reason,
    pub message: String,
    pub at: SystemTime,
    /// What caused it, where there is one: a config hash, a rollout id, a package version.
    pub cause: Option<String>,
}

impl Transition {
    /// The collector came, or came back: its first message ever, or its first after a loss.
    pub fn is_arrival(&self) -> bool {
        self.to == State::Connected
            && matches!(self.reason, Reason::Initial | Reason::ConnectionRestored)
    }

    /// What can move a rollout: an arrival (a returning collector may be waited for, or owed its
    /// configuration), a move out of Pending, Configuring or Upgrading (a verdict or a
    /// departure), or into Incompatible (the verdict of a collector sent a configuration it
    /// cannot run, whatever it was in). Entering the first three is the rollout's own doing.
    pub fn moves_rollouts(&self) -> bool {
        self.is_arrival()
            || self.to == State::Incompatible
            || matches!(
                self.from,
                Some(State::Pending | State::Configuring | State::Upgrading)
            )
    }
}

/// The record of one collector: its state and every fact behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Collector {
    pub id: CollectorId,
    /// `None` only before the first message.
    pub state: Option<State>,
    pub state_since: Option<SystemTime>,
    pub state_reason: Option<Reason>,
    pub state_message: String,
    pub connected: bool,
    pub transport: Option<Transport>,
    pub connected_since: Option<SystemTime>,
    pub last_seen: Option<SystemTime>,
    pub capabilities: Capabilities,
    pub sequence_num: Option<u64>,
    pub description: Option<Description>,
    pub health: Option<Health>,
    pub effective_config: Option<ConfigFiles>,
    pub remote_config_status: Option<RemoteConfigStatus>,
    pub package_statuses: Option<Box<PackageStatuses>>,
    #[serde(skip)]
    pub available_components: Option<AvailableComponents>,
    /// The verified client certificate of its latest connection, where mutual TLS is on.
    pub client_certificate: Option<Arc<ClientCertificate>>,
    /// The certificate opampd's CA last issued it; every OpAMP connection offer carries it.
    pub issued_certificate: Option<Arc<IssuedCertificate>>,
    /// The custom capabilities it declares, sorted.
    pub custom_capabilities: Option<Arc<[String]>>,
    /// What it last said of the connection settings it was offered.
    pub connection_settings_status: Option<Box<ConnectionSettingsStatus>>,
    /// The connection settings the offers that select it give it (before its capabilities
    /// narrow them): known while it is resident, told again whenever it arrives.
    #[serde(skip)]
    pub connection_settings: Option<Box<ConnectionSettings>>,
    /// The hash of the settings offer sent on its current connection.
    #[serde(skip)]
    pub settings_sent: Option<Vec<u8>>,
    /// The settings offer the collector failed to apply, and why: an error until replaced.
    #[serde(skip)]
    pub settings_failed: Option<Vec<u8>>,
    pub settings_error: Option<String>,
    /// What explains its state beyond the state itself: drifted, stale, degraded.
    #[serde(skip)]
    pub facets: Facets,
    /// What drift is judged against (boxed: most collectors never have one).
    #[serde(skip)]
    pub drift: Option<Box<DriftBaseline>>,
    /// Operators' labels as the store holds them, filled by the store's reads. Labels belong to
    /// operators and live in the store alone: an actor never holds or writes them.
    pub labels: BTreeMap<String, String>,
    /// Set when this collector's uid was found shared with another live collector and one of them
    /// was given a fresh uid.
    pub reassigned: Option<Box<Reassignment>>,
    /// The configuration we sent and await a verdict on.
    #[serde(skip)]
    pub config_sent: Option<Vec<u8>>,
    /// The last configuration the collector failed to apply: never resent on its own.
    #[serde(skip)]
    pub config_failed: Option<Vec<u8>>,
    /// Why the collector is in Error beyond its health, until a new configuration or package fixes it.
    pub config_error: Option<String>,
    pub package_error: Option<String>,
    pub package_offered: Option<Box<PackageOffer>>,
    /// The rollout this collector is queued in or being configured by.
    pub rollout: Option<String>,
    /// Component types a configuration needs and this collector lacks (Incompatible).
    pub missing_components: Vec<String>,
    /// What waits to be sent: pushed at once over WebSocket, or on an HTTP collector's next poll.
    #[serde(skip)]
    pub outbox: Outbound,
    /// Offers written into a plain-HTTP reply that the collector has not yet shown it received:
    /// its next report either acknowledges them or they are sent again (`delivery::acknowledge`).
    #[serde(skip)]
    pub unacknowledged: super::delivery::Unacknowledged,
    /// The configuration opampd last offered this collector (or, after a restart, the one its
    /// newest rollout had it apply): what a report of another hash is answered with (R5).
    #[serde(skip)]
    pub standing: Option<Box<ConfigOffer>>,
    /// The standing configuration was sent again on this connection and the collector has not
    /// reported its hash since: it is not sent a third time (no resend loop).
    #[serde(skip)]
    pub standing_resent: bool,
    /// The awaited package offer was sent again on this connection (P6) and the collector has not
    /// shown it received it since: it is not sent a third time.
    #[serde(skip)]
    pub package_resent: bool,
    /// The hash of the offer a cancel last withdrew: a write of it that fails afterwards does not
    /// bring it back (`delivery::restore`), though its verdict, if it was written, is awaited.
    #[serde(skip)]
    pub withdrawn: Option<Vec<u8>>,
}

/// Something that happened to a collector, from OpAMP or from the fleet layer. The fleet's events
/// travel between nodes (to the node holding the collector); the connection's never leave it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A message from the collector.
    #[serde(skip)]
    Report {
        report: Box<Report>,
        transport: Transport,
    },
    /// Its connection closed or failed, or a plain-HTTP collector went silent.
    #[serde(skip)]
    ConnectionLost,
    /// The server is shutting down while the collector is connected.
    #[serde(skip)]
    ServerTerminating,
    /// Queue it in a rollout whose configuration needs `required` component types (`kind/type`).
    QueueForRollout {
        rollout: String,
        required: Vec<String>,
    },
    /// Send it a configuration (its turn in a rollout has come, or an operator sent one).
    SendConfiguration {
        offer: ConfigOffer,
        required: Vec<String>,
        rollout: Option<String>,
    },
    OfferPackage(PackageOffer),
    RemoveFromRollout {
        rollout: String,
    },
    /// The rollout was cancelled: what of its payload (`hash`, a configuration's or a package
    /// offer's) has not been delivered is taken back, and the collector leaves the rollout.
    Withdraw {
        rollout: String,
        #[serde(with = "crate::collector::encoding::hex")]
        hash: Vec<u8>,
    },
    Restart,
    /// The configuration the collector should run, as the newest rollout that had it apply one
    /// says: adopted when the actor has none (it was not resident when it was sent), and sent
    /// again if the collector reports another hash.
    Standing {
        offer: ConfigOffer,
    },
    /// An offer that can never fit in a message under the limit: it is refused as failed.
    #[serde(skip)]
    Undeliverable {
        offer: TooLarge,
        limit: usize,
    },
    /// The connection settings the offers selecting it now give it (`None`: none do).
    ConnectionSettings {
        settings: Option<Box<ConnectionSettings>>,
    },
    /// An operator's custom message for it.
    SendCustomMessage(CustomMessage),
}

/// Custom messages that may wait for a plain-HTTP collector's next poll; beyond, more are refused.
pub const MAX_QUEUED_CUSTOM: usize = 32;

/// What the actor must do after a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Record and publish this transition.
    Transitioned(Transition),
    /// The outbox has something new: push it (WebSocket) or keep it for the next poll (HTTP).
    Deliver,
    /// An event the collector's capabilities or state did not allow; nothing changed but this fact.
    Refused(&'static str),
}

/// The label an operator sets to name a collector; it wins over every attribute.
pub const DISPLAY_NAME_LABEL: &str = "display-name";

impl Collector {
    /// A description attribute's text, identifying attributes first.
    pub fn attribute(&self, key: &str) -> Option<String> {
        let d = self.description.as_ref()?;
        d.identifying
            .get(key)
            .or_else(|| d.non_identifying.get(key))
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    /// What tells the collector apart from the rest of its fleet, whose `service.name` is usually
    /// shared (`otelcol-contrib`): its `service.instance.name`, else its host name, else its
    /// `service.name` with the last eight hex digits of its id (the random ones of a UUID).
    pub fn name(&self) -> Option<String> {
        self.attribute("service.instance.name")
            .or_else(|| self.attribute("host.name"))
            .or_else(|| {
                let id = self.id.0.simple().to_string();
                let short = &id[id.len().saturating_sub(8)..];
                self.attribute("service.name")
                    .map(|service| format!("{service} {short}"))
            })
    }

    /// The name shown for the collector: the operator's `display-name` label, else [`name`].
    ///
    /// [`name`]: Collector::name
    pub fn display_name(&self) -> Option<String> {
        self.labels
            .get(DISPLAY_NAME_LABEL)
            .cloned()
            .or_else(|| self.name())
    }

    pub fn new(id: CollectorId) -> Self {
        Self {
            id,
            state: None,
            state_since: None,
            state_reason: None,
            state_message: String::new(),
            connected: false,
            transport: None,
            connected_since: None,
            last_seen: None,
            capabilities: Capabilities::default(),
            sequence_num: None,
            description: None,
            health: None,
            effective_config: None,
            remote_config_status: None,
            package_statuses: None,
            available_components: None,
            client_certificate: None,
            issued_certificate: None,
            custom_capabilities: None,
            connection_settings_status: None,
            connection_settings: None,
            settings_sent: None,
            settings_failed: None,
            settings_error: None,
            facets: Facets::default(),
            drift: None,
            labels: BTreeMap::new(),
            reassigned: None,
            config_sent: None,
            config_failed: None,
            config_error: None,
            package_error: None,
            package_offered: None,
            rollout: None,
            missing_components: Vec::new(),
            outbox: Outbound::default(),
            unacknowledged: super::delivery::Unacknowledged::default(),
            standing: None,
            standing_resent: false,
            package_resent: false,
            withdrawn: None,
        }
    }

    /// The component types `required` names that this collector is known to lack. A collector
    /// that never reported its components is taken as compatible.
    pub fn missing(&self, required: &[String]) -> Vec<String> {
        let Some(components) = self
            .available_components
            .as_ref()
            .and_then(|a| a.components.as_deref())
        else {
            return Vec::new();
        };
        required
            .iter()
            .filter(|needed| !has_component(components, needed))
            .cloned()
            .collect()
    }
}

/// `needed` is `kind/type`, e.g. `receivers/otlp`.
fn has_component(components: &Components, needed: &str) -> bool {
    let (kind, kind_type) = needed.split_once('/').unwrap_or(("", needed));
    components
        .0
        .get(kind)
        .is_some_and(|types| types.iter().any(|t| t == kind_type))
}

/// Applies one event to the record. `asks` for a report (flags the reply must carry) are put in the
/// outbox by the caller, which knows about component catalogs; here only state and facts change.
pub fn step(c: &mut Collector, event: Event, now: SystemTime) -> Vec<Effect> {
    let mut out = Vec::new();
    match event {
        Event::Report { report, transport } => on_report(c, *report, transport, now, &mut out),
        Event::ConnectionLost => lose_connection(c, Reason::NetworkInterruption, now, &mut out),
        Event::ServerTerminating => lose_connection(c, Reason::ServerTermination, now, &mut out),
        Event::QueueForRollout { rollout, required } => {
            let missing = c.missing(&required);
            if missing.is_empty() {
                c.rollout = Some(rollout.clone());
                go(
                    c,
                    Reason::QueuedForRollout,
                    "",
                    Some(rollout),
                    now,
                    &mut out,
                );
            } else {
                mark_incompatible(c, missing, Some(rollout), now, &mut out);
            }
        }
        Event::SendConfiguration {
            offer,
            required,
            rollout,
        } => send_configuration(c, offer, &required, rollout, now, &mut out),
        Event::OfferPackage(package) => {
            if !c.capabilities.has(Capabilities::ACCEPTS_PACKAGES) {
                out.push(Effect::Refused("collector does not accept packages"));
                return out;
            }
            if !c.capabilities.has(Capabilities::REPORTS_PACKAGE_STATUSES) {
                out.push(Effect::Refused(
                    "collector does not report package statuses",
                ));
                return out;
            }
            let package = Box::new(super::packages::listing(
                package,
                c.package_statuses.as_deref(),
            ));
            c.package_resent = false;
            c.withdrawn = None;
            let cause = Some(format!("{} {}", package.name, package.version));
            c.package_offered = Some(package.clone());
            c.outbox.merge(Outbound {
                package: Some(package),
                ..Outbound::default()
            });
            out.push(Effect::Deliver);
            go(c, Reason::PackageUpgradeInitiated, "", cause, now, &mut out);
        }
        Event::RemoveFromRollout { rollout } => {
            if c.rollout.as_deref() == Some(rollout.as_str()) {
                c.rollout = None;
                if c.state == Some(State::Pending) {
                    go(
                        c,
                        Reason::RemovedFromRollout,
                        "",
                        Some(rollout),
                        now,
                        &mut out,
                    );
                    settle_errors(c, now, &mut out);
                }
            }
        }
        Event::Withdraw { rollout, hash } => withdraw(c, rollout, &hash, now, &mut out),
        Event::Standing { offer } => {
            if c.standing.is_none() {
                c.standing = Some(Box::new(offer));
                resend::standing(c, now, &mut out);
            }
        }
        Event::Undeliverable { offer, limit } => undeliverable(c, &offer, limit, now, &mut out),
        Event::ConnectionSettings { settings } => {
            connection::given(c, settings.map(|s| *s), &mut out);
            settle_errors(c, now, &mut out);
        }
        Event::SendCustomMessage(message) => custom::queue(c, message, &mut out),
        Event::Restart => {
            if c.capabilities.has(Capabilities::ACCEPTS_RESTART_COMMAND) {
                c.outbox.restart = true;
                out.push(Effect::Deliver);
            } else {
                out.push(Effect::Refused(
                    "collector does not accept the restart command",
                ));
            }
        }
    }
    out
}

/// Moves along the table's edge for `reason` from the current state, if there is one. When there
/// is none the state stays: the facts that prompted the event are already in the record.
pub(super) fn go(
    c: &mut Collector,
    reason: Reason,
    message: &str,
    cause: Option<String>,
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    let Some(to) = target(c.state, reason) else {
        return;
    };
    let transition = Transition {
        from: c.state,
        to,
        reason,
        message: message.to_owned(),
        at: now,
        cause,
    };
    c.state = Some(to);
    c.state_since = Some(now);
    c.state_reason = Some(reason);
    c.state_message.clone_from(&transition.message);
    out.push(Effect::Transitioned(transition));
}

fn on_report(
    c: &mut Collector,
    report: Report,
    transport: Transport,
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    c.last_seen = Some(now);
    c.transport = Some(transport);
    let arrived = !c.connected;
    if !c.connected {
        c.settings_sent = None;
        c.connected = true;
        c.connected_since = Some(now);
        c.standing_resent = false;
        c.package_resent = false;
        let reason = if c.state.is_none() {
            Reason::Initial
        } else {
            Reason::ConnectionRestored
        };
        go(c, reason, "", None, now, out);
        // A configuration sent while it was away goes out with this reply (as does one written
        // into a plain-HTTP reply it may never have read, unless this report shows it has it).
        let waiting = c.outbox.remote_config.as_ref();
        if let Some(hash) = waiting
            .or(c.unacknowledged.remote_config.as_ref())
            .map(|o| hex(&o.hash))
        {
            go(c, Reason::NewConfiguration, "", Some(hash), now, out);
        }
    }
    let goodbye = report.disconnect;
    let status = report.remote_config_status.clone();
    let packages = report.package_statuses.clone();
    let settings_status = report.connection_settings_status.clone();
    let new_capabilities = report.capabilities != c.capabilities;
    let issued = report.issued_certificate.is_some();
    absorb(c, report);
    acknowledge(c);
    if let Some(status) = status {
        on_config_status(c, &status, now, out);
    }
    match settings_status {
        Some(status) => connection::on_status(c, &status, out),
        None if arrived || new_capabilities || issued => {
            connection::offer_if_needed(c, false, out);
        }
        None => {}
    }
    if let Some(packages) = packages {
        on_package_statuses(c, &packages, now, out);
    }
    settle_withdrawn(c, now, out);
    settle_errors(c, now, out);
    resend::standing(c, now, out);
    resend::package(c, out);
    if goodbye {
        lose_connection(c, Reason::CollectorStopped, now, out);
    }
}

/// Copies every reported sub-message into the record; absent ones mean unchanged.
fn absorb(c: &mut Collector, report: Report) {
    c.sequence_num = Some(report.sequence_num);
    c.capabilities = report.capabilities;
    if let Some(description) = report.description {
        c.description = Some(description);
    }
    if let Some(health) = report.health {
        c.health = Some(health);
    }
    if let Some(config) = report.effective_config {
        c.effective_config = Some(config);
    }
    if let Some(status) = report.remote_config_status {
        c.remote_config_status = Some(status);
    }
    if let Some(certificate) = report.client_certificate {
        c.client_certificate = Some(certificate);
    }
    if let Some(certificate) = report.issued_certificate {
        c.issued_certificate = Some(certificate);
    }
    if let Some(capabilities) = report.custom_capabilities {
        c.custom_capabilities = Some(capabilities);
    }
    if let Some(status) = report.connection_settings_status {
        c.connection_settings_status = Some(Box::new(status));
    }
    if let Some(statuses) = report.package_statuses {
        c.package_statuses = Some(Box::new(statuses));
    }
}

/// Error when something is wrong, Connected once nothing is: bad health, a failed configuration
/// or a failed package each keep a collector in Error until fixed. Where the current state has no
/// edge for the problem (Pending, Upgrading, Configuring) it stays, and the fact is in the record.
pub(super) fn settle_errors(c: &mut Collector, now: SystemTime, out: &mut Vec<Effect>) {
    let problem = if let Some(health) = c.health.as_ref().filter(|h| !h.healthy) {
        Some((Reason::RuntimeError, health.last_error.clone()))
    } else if let Some(message) = &c.config_error {
        Some((Reason::ConfigError, message.clone()))
    } else if let Some(message) = &c.settings_error {
        // The diagram's "config error": its connection settings are configuration it failed to
        // apply (docs/adr/0050).
        Some((Reason::ConfigError, message.clone()))
    } else {
        c.package_error
            .as_ref()
            .map(|message| (Reason::UpdateError, message.clone()))
    };
    match problem {
        Some((reason, message)) => go(c, reason, &message, None, now, out),
        None if c.state == Some(State::Error) => go(c, Reason::ErrorResolved, "", None, now, out),
        None => {}
    }
}

fn lose_connection(c: &mut Collector, reason: Reason, now: SystemTime, out: &mut Vec<Effect>) {
    if !c.connected {
        return;
    }
    c.connected = false;
    go(c, reason, "", None, now, out);
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;
    use crate::collector::state::is_allowed;
    use crate::collector::{PackageState, PackageStatus, RemoteConfigState, RemoteConfigStatus};

    const HASHES: [&[u8]; 2] = [b"h1", b"h2"];

    #[test]
    fn what_moves_rollouts_is_arrivals_verdicts_departures_and_incompatibility() {
        use State::{Configuring, Connected, Disconnected, Error, Incompatible, Pending};
        let t = |from: Option<State>, to: State, reason: Reason| Transition {
            from,
            to,
            reason,
            message: String::new(),
            at: UNIX_EPOCH,
            cause: None,
        };
        let moving = [
            t(None, Connected, Reason::Initial),
            t(Some(Disconnected), Connected, Reason::ConnectionRestored),
            t(Some(Configuring), Connected, Reason::ConfigApplied),
            t(Some(Pending), Disconnected, Reason::NetworkInterruption),
            t(Some(Connected), Incompatible, Reason::UnsupportedComponents),
            t(Some(Error), Incompatible, Reason::UnsupportedComponents),
        ];
        let still = [
            t(Some(Connected), Error, Reason::RuntimeError),
            t(Some(Error), Connected, Reason::ErrorResolved),
            t(Some(Connected), Pending, Reason::QueuedForRollout),
            t(Some(Connected), Configuring, Reason::NewConfiguration),
            t(Some(Connected), Disconnected, Reason::NetworkInterruption),
        ];
        assert!(moving.iter().all(Transition::moves_rollouts));
        assert!(!still.iter().any(Transition::moves_rollouts));
    }

    fn report(
        healthy: Option<bool>,
        config: Option<(usize, RemoteConfigState)>,
        package: Option<(bool, PackageState)>,
        disconnect: bool,
    ) -> Report {
        Report {
            capabilities: Capabilities(0xffff),
            health: healthy.map(|healthy| Health {
                healthy,
                last_error: if healthy {
                    String::new()
                } else {
                    "boom".into()
                },
                ..Health::default()
            }),
            remote_config_status: config.map(|(i, status)| RemoteConfigStatus {
                hash: HASHES[i].to_vec(),
                status,
                error_message: "failed".into(),
            }),
            package_statuses: package.map(|(new, status)| PackageStatuses {
                packages: [(
                    "otelcol".to_owned(),
                    PackageStatus {
                        agent_has_version: if new { "2" } else { "1" }.into(),
                        agent_has_hash: Vec::new(),
                        server_offered_version: "2".into(),
                        status,
                        error_message: "failed".into(),
                    },
                )]
                .into(),
                ..PackageStatuses::default()
            }),
            disconnect,
            ..Report::default()
        }
    }

    fn config_state() -> impl Strategy<Value = RemoteConfigState> {
        prop_oneof![
            Just(RemoteConfigState::Applied),
            Just(RemoteConfigState::Applying),
            Just(RemoteConfigState::Failed),
            Just(RemoteConfigState::Unset),
            (4..100i32).prop_map(RemoteConfigState::Unknown),
        ]
    }

    fn package_state() -> impl Strategy<Value = PackageState> {
        prop_oneof![
            Just(PackageState::Installed),
            Just(PackageState::Installing),
            Just(PackageState::InstallFailed),
            Just(PackageState::Downloading),
            (5..100i32).prop_map(PackageState::Unknown),
        ]
    }

    fn event() -> impl Strategy<Value = Event> {
        let required = prop_oneof![
            Just(Vec::new()),
            Just(vec!["receivers/otlp".to_owned()]),
            Just(vec!["receivers/kafka".to_owned()]),
        ];
        prop_oneof![
            4 => (
                proptest::option::of(any::<bool>()),
                proptest::option::of((0..2usize, config_state())),
                proptest::option::of((any::<bool>(), package_state())),
                proptest::bool::weighted(0.1),
                prop_oneof![Just(Transport::Http), Just(Transport::WebSocket)],
            )
                .prop_map(|(h, c, p, d, transport)| Event::Report {
                    report: Box::new(report(h, c, p, d)),
                    transport,
                }),
            1 => Just(Event::ConnectionLost),
            1 => Just(Event::ServerTerminating),
            1 => required.clone().prop_map(|required| Event::QueueForRollout {
                rollout: "r".into(),
                required,
            }),
            1 => (0..2usize, required).prop_map(|(i, required)| Event::SendConfiguration {
                offer: ConfigOffer { files: ConfigFiles::new(), hash: HASHES[i].to_vec() },
                required,
                rollout: Some("r".into()),
            }),
            1 => Just(Event::OfferPackage(PackageOffer {
                name: "otelcol".into(),
                version: "2".into(),
                download_url: String::new(),
                content_hash: vec![],
                signature: vec![],
                hash: vec![1],
                kept: Vec::new(),
                all_hash: Vec::new(),
            })),
            1 => Just(Event::RemoveFromRollout { rollout: "r".into() }),
            1 => (0..2usize).prop_map(|i| Event::Withdraw { rollout: "r".into(), hash: HASHES[i].to_vec() }),
            1 => (0..2usize).prop_map(|i| Event::Standing { offer: ConfigOffer { files: ConfigFiles::new(), hash: HASHES[i].to_vec() } }),
            1 => (0..2usize).prop_map(|i| Event::Undeliverable {
                offer: TooLarge::Configuration { hash: HASHES[i].to_vec(), size: 2 },
                limit: 1,
            }),
            1 => Just(Event::Restart),
        ]
    }

    fn offer(hash: &[u8]) -> ConfigOffer {
        ConfigOffer {
            files: ConfigFiles::new(),
            hash: hash.to_vec(),
        }
    }

    fn connected(transport: Transport) -> Collector {
        let mut c = Collector::new(CollectorId(uuid::Uuid::nil()));
        let at = UNIX_EPOCH;
        step(
            &mut c,
            Event::Report {
                report: Box::new(report(None, None, None, false)),
                transport,
            },
            at,
        );
        c
    }

    fn reasons(effects: &[Effect]) -> Vec<Reason> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Transitioned(t) => Some(t.reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_withdrawal_takes_an_unsent_configuration_back_and_configuring_ends_on_the_next_report() {
        let now = UNIX_EPOCH + Duration::from_secs(1);
        let rollout = Some("r".to_owned());
        // A plain-HTTP collector: the configuration waits in the outbox for its next poll.
        let mut c = connected(Transport::Http);
        step(
            &mut c,
            Event::QueueForRollout {
                rollout: "r".into(),
                required: vec![],
            },
            now,
        );
        step(
            &mut c,
            Event::SendConfiguration {
                offer: offer(b"h1"),
                required: vec![],
                rollout,
            },
            now,
        );
        assert_eq!(c.state, Some(State::Configuring));
        assert!(c.outbox.remote_config.is_some());
        let effects = step(
            &mut c,
            Event::Withdraw {
                rollout: "r".into(),
                hash: b"h1".to_vec(),
            },
            now,
        );
        assert!(effects.is_empty(), "no edge now: {effects:?}");
        assert!(c.outbox.is_empty(), "nothing of it is left to send");
        assert_eq!(
            (c.config_sent.as_deref(), c.rollout.as_deref()),
            (None, None)
        );
        let effects = step(
            &mut c,
            Event::Report {
                report: Box::new(report(None, None, None, false)),
                transport: Transport::Http,
            },
            now,
        );
        assert_eq!(reasons(&effects), [Reason::ConfigApplied]);
        assert_eq!(c.state, Some(State::Connected));
        assert_eq!(c.state_message, WITHDRAWN_CONFIGURATION);
    }

    #[test]
    fn a_withdrawal_leaves_a_delivered_configuration_awaited_and_releases_pending_ones() {
        let now = UNIX_EPOCH + Duration::from_secs(1);
        let mut c = connected(Transport::WebSocket);
        step(
            &mut c,
            Event::SendConfiguration {
                offer: offer(b"h1"),
                required: vec![],
                rollout: Some("r".into()),
            },
            now,
        );
        let _written = c.outbox.take_sendable(c.capabilities);
        step(
            &mut c,
            Event::Withdraw {
                rollout: "r".into(),
                hash: b"h1".to_vec(),
            },
            now,
        );
        assert_eq!(
            c.config_sent.as_deref(),
            Some(&b"h1"[..]),
            "its verdict is still ours"
        );
        let effects = step(
            &mut c,
            Event::Report {
                report: Box::new(report(None, None, None, false)),
                transport: Transport::WebSocket,
            },
            now,
        );
        assert!(
            reasons(&effects).is_empty(),
            "still Configuring, awaiting the verdict"
        );
        assert_eq!(c.state, Some(State::Configuring));

        let mut p = connected(Transport::WebSocket);
        step(
            &mut p,
            Event::QueueForRollout {
                rollout: "r".into(),
                required: vec![],
            },
            now,
        );
        let effects = step(
            &mut p,
            Event::Withdraw {
                rollout: "r".into(),
                hash: b"h1".to_vec(),
            },
            now,
        );
        assert_eq!(reasons(&effects), [Reason::RemovedFromRollout]);
        assert_eq!(p.state, Some(State::Connected));
    }

    #[test]
    fn a_withdrawal_forgets_what_an_away_collector_was_sent() {
        let now = UNIX_EPOCH + Duration::from_secs(1);
        let mut c = connected(Transport::WebSocket);
        step(&mut c, Event::ConnectionLost, now);
        step(
            &mut c,
            Event::SendConfiguration {
                offer: offer(b"h1"),
                required: vec![],
                rollout: Some("r".into()),
            },
            now,
        );
        step(
            &mut c,
            Event::Withdraw {
                rollout: "r".into(),
                hash: b"h1".to_vec(),
            },
            now,
        );
        assert!(c.outbox.is_empty() && c.config_sent.is_none());
        let effects = step(
            &mut c,
            Event::Report {
                report: Box::new(report(None, None, None, false)),
                transport: Transport::WebSocket,
            },
            now,
        );
        assert_eq!(
            reasons(&effects),
            [Reason::ConnectionRestored],
            "no configuration on return"
        );
        assert!(c.outbox.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// From every reachable state, any sequence of events: every recorded transition is an
        /// edge of the table or a declared extension, the record's state is the last transition's
        /// target, the facts match the last reported values, and nothing panics.
        #[test]
        fn every_transition_is_an_edge(events in proptest::collection::vec(event(), 1..60)) {
            let mut c = Collector::new(CollectorId(uuid::Uuid::nil()));
            c.available_components = Some(AvailableComponents {
                hash: b"c".to_vec(),
                components: Some(Arc::new(Components(BTreeMap::from([(
                    "receivers".to_owned(),
                    vec!["otlp".to_owned()],
                )])))),
            });
            let mut last_health = None;
            let mut last_status = None;
            for (i, event) in events.into_iter().enumerate() {
                let now = UNIX_EPOCH + Duration::from_secs(i as u64);
                if let Event::Report { report, .. } = &event {
                    if let Some(h) = &report.health { last_health = Some(h.clone()); }
                    if let Some(s) = &report.remote_config_status { last_status = Some(s.clone()); }
                }
                let before = c.state;
                let effects = step(&mut c, event, now);
                let mut state = before;
                for effect in effects {
                    if let Effect::Transitioned(t) = effect {
                        prop_assert!(is_allowed(t.from, t.to, t.reason), "not an edge: {t:?}");
                        prop_assert_eq!(t.from, state);
                        state = Some(t.to);
                    }
                }
                prop_assert_eq!(c.state, state);
                prop_assert_eq!(&c.health, &last_health);
                prop_assert_eq!(&c.remote_config_status, &last_status);
                if c.state == Some(State::Disconnected) {
                    prop_assert!(!c.connected);
                }
                if c.connected {
                    prop_assert!(c.state.is_some() && c.state != Some(State::Disconnected));
                }
            }
        }
    }
}

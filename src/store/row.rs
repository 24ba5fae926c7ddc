//! A collector record, its facts and a transition as table rows, shared by both databases: the
//! hot part of the record in columns of `collectors`, what the server tracks as one JSON document
//! beside it, its health (which nearly every status change carries) in a JSON column beside
//! that, and the other reported facts one row per part in `collector_facts`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::types::Json;
use time::OffsetDateTime;

use super::StoreError;
use crate::collector::encoding::unhex;
use crate::collector::facets::{DriftBaseline, Facets};
use crate::collector::facts::FactParts;
use crate::collector::machine::hex;
use crate::collector::persist::{Control, Epoch, Hot};
use crate::collector::{
    Capabilities, Collector, CollectorId, Health, PackageOffer, Reason, Reassignment, State,
    Transition, Transport,
};

/// A transition with its place in the store's history (the event id of the live stream).
#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    #[sqlx(flatten)]
    pub transition: TransitionRow,
}

/// What the server tracks about a collector (`collectors.control`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct ControlDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    config_sent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_failed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_offered: Option<PackageOffer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing_components: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reassigned: Option<Reassignment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drift: Option<DriftDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings_failed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings_error: Option<String>,
}

/// A drift baseline in the control document: hex digests.
#[derive(Debug, Serialize, Deserialize)]
struct DriftDoc {
    config: String,
    effective: Option<String>,
}

impl DriftDoc {
    fn of(b: &DriftBaseline) -> Self {
        Self {
            config: hex(&b.config),
            effective: b.effective.as_ref().map(|e| hex(e)),
        }
    }

    /// `None` for a document that is not hex: the baseline is then taken again.
    fn baseline(&self) -> Option<DriftBaseline> {
        let effective = match &self.effective {
            Some(e) => Some(<[u8; 32]>::try_from(unhex(e)?).ok()?),
            None => None,
        };
        Some(DriftBaseline {
            config: unhex(&self.config)?,
            effective,
        })
    }
}

impl ControlDoc {
    fn of(c: &Control) -> Self {
        Self {
            config_sent: c.config_sent.as_deref().map(hex),
            config_failed: c.config_failed.as_deref().map(hex),
            config_error: c.config_error.clone(),
            package_error: c.package_error.clone(),
            package_offered: c.package_offered.clone(),
            rollout: c.rollout.clone(),
            missing_components: c.missing_components.clone(),
            reassigned: c.reassigned.clone(),
            drift: c.drift.as_ref().map(DriftDoc::of),
            settings_failed: c.settings_failed.as_deref().map(hex),
            settings_error: c.settings_error.clone(),
        }
    }
}

/// The collectors row as it is read.
#[derive(Debug, sqlx::FromRow)]
pub struct RecordRow {
    pub id: String,
    pub epoch: i64,
    pub state: String,
    pub state_since: Option<OffsetDateTime>,
    pub state_reason: Option<String>,
    pub state_message: String,
    pub connected: bool,
    pub transport: Option<String>,
    pub connected_since: Option<OffsetDateTime>,
    pub last_seen: Option<OffsetDateTime>,
    pub capabilities: i64,
    pub sequence_num: Option<i64>,
    pub facets: i64,
    pub labels: Json<BTreeMap<String, String>>,
    pub control: Json<serde_json::Value>,
    pub health: Option<Json<serde_json::Value>>,
}

/// The state part of a record as it is written: what every state change rewrites.
#[derive(Debug)]
pub struct StateRow {
    pub id: String,
    pub epoch: i64,
    pub state: &'static str,
    pub state_since: Option<OffsetDateTime>,
    pub state_reason: Option<&'static str>,
    pub state_message: String,
    pub connected: bool,
    pub transport: Option<&'static str>,
    pub connected_since: Option<OffsetDateTime>,
    pub last_seen: Option<OffsetDateTime>,
    pub sequence_num: Option<i64>,
}

/// The hot part of a record as it is written whole: its state part and its descriptive part.
#[derive(Debug)]
pub struct HotRow {
    pub state: StateRow,
    pub name: Option<String>,
    pub host_name: Option<String>,
    pub version: Option<String>,
    pub capabilities: i64,
    pub facets: i64,
    pub control: Json<Box<RawValue>>,
    /// The health the write brings; `None` keeps the stored one (health, like every reported
    /// part, is replaced, never removed).
    pub health: Option<Json<Box<RawValue>>>,
}

/// One reported part of a collector's facts, as it is read.
#[derive(Debug, sqlx::FromRow)]
pub struct FactRow {
    pub id: String,
    pub part: String,
    pub value: Json<serde_json::Value>,
}

/// One reported part to write: it replaces the stored one.
#[derive(Debug)]
pub struct FactWrite {
    pub id: String,
    pub epoch: i64,
    pub part: &'static str,
    pub value: Json<Box<RawValue>>,
}

/// A transition as it is written, in the order it happened (`ord`).
#[derive(Debug)]
pub struct TransitionWrite {
    pub ord: i64,
    pub epoch: i64,
    pub id: String,
    pub from: Option<&'static str>,
    pub to: &'static str,
    pub reason: &'static str,
    pub message: String,
    pub at: OffsetDateTime,
    pub cause: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct TransitionRow {
    pub collector_id: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: String,
    pub message: String,
    pub at: OffsetDateTime,
    pub cause: Option<String>,
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("unknown {what} {value:?}"))
}

/// A stored state's name read back; anything else is a corrupt row.
pub(super) fn parse_state(name: &str) -> Result<State, StoreError> {
    State::parse(name).ok_or_else(|| corrupt("state", name))
}

/// Serialised once, straight to text: no JSON tree in between. Plain data always serialises.
fn raw<T: Serialize + ?Sized>(value: &T) -> Json<Box<RawValue>> {
    Json(serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()))
}

fn part<T: Serialize + ?Sized>(value: Option<&T>) -> Option<Json<Box<RawValue>>> {
    value.map(raw)
}

fn time(at: Option<SystemTime>) -> Option<OffsetDateTime> {
    at.map(OffsetDateTime::from)
}

/// A stored part: SQL NULL and JSON null both mean "never reported".
fn read_part<T: for<'de> Deserialize<'de>>(
    id: &str,
    what: &str,
    value: Option<Json<serde_json::Value>>,
) -> Result<Option<T>, StoreError> {
    match value {
        None | Some(Json(serde_json::Value::Null)) => Ok(None),
        Some(Json(v)) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{what} of {id}: {e}"))),
    }
}

impl StateRow {
    pub fn new(hot: &Hot, epoch: Epoch) -> Self {
        Self {
            id: hot.id.to_string(),
            epoch,
            state: hot.state.as_str(),
            state_since: time(hot.state_since),
            state_reason: hot.state_reason.map(Reason::as_str),
            state_message: hot.state_message.clone(),
            connected: hot.connected,
            transport: hot.transport.map(Transport::as_str),
            connected_since: time(hot.connected_since),
            last_seen: time(hot.last_seen),
            sequence_num: hot.sequence_num.map(u64::cast_signed),
        }
    }
}

/// Every record row starts with its state part: what its update is keyed and fenced by.
impl AsRef<StateRow> for StateRow {
    fn as_ref(&self) -> &StateRow {
        self
    }
}

impl AsRef<StateRow> for HotRow {
    fn as_ref(&self) -> &StateRow {
        &self.state
    }
}

impl HotRow {
    /// `facts` are those the write brings: the row takes their health.
    pub fn new(hot: &Hot, facts: &FactParts, epoch: Epoch) -> Self {
        Self {
            state: StateRow::new(hot, epoch),
            name: hot.name.clone(),
            host_name: hot.host_name.clone(),
            version: hot.version.clone(),
            capabilities: hot.capabilities.0.cast_signed(),
            facets: i64::from(hot.facets.bits()),
            control: raw(&ControlDoc::of(&hot.control)),
            health: facts.health.as_ref().map(Self::health_of),
        }
    }

    /// A health as the `health` column holds it.
    pub fn health_of(health: &Health) -> Json<Box<RawValue>> {
        raw(health)
    }
}

impl FactWrite {
    /// The parts `facts` carries, one row each; its health goes in the record's row instead
    /// ([`HotRow::health`]).
    pub fn rows(id: CollectorId, epoch: Epoch, facts: &FactParts) -> Vec<Self> {
        let id = id.to_string();
        let parts = [
            ("description", part(facts.description.as_ref())),
            ("effective_config", part(facts.effective_config.as_ref())),
            (
                "remote_config_status",
                part(facts.remote_config_status.as_ref()),
            ),
            ("package_statuses", part(facts.package_statuses.as_ref())),
            (
                "available_components",
                part(facts.available_components.as_ref()),
            ),
            (
                "client_certificate",
                part(facts.client_certificate.as_deref()),
            ),
            (
                "custom_capabilities",
                part(facts.custom_capabilities.as_deref()),
            ),
            (
                "connection_settings_status",
                part(facts.connection_settings_status.as_ref()),
            ),
            (
                "issued_certificate",
                part(facts.issued_certificate.as_deref()),
            ),
        ];
        parts
            .into_iter()
            .filter_map(|(name, value)| {
                Some(Self {
                    id: id.clone(),
                    epoch,
                    part: name,
                    value: value?,
                })
            })
            .collect()
    }
}

impl TransitionWrite {
    pub fn new(ord: usize, id: CollectorId, epoch: Epoch, t: &Transition) -> Self {
        Self {
            ord: i64::try_from(ord).unwrap_or(i64::MAX),
            epoch,
            id: id.to_string(),
            from: t.from.map(State::as_str),
            to: t.to.as_str(),
            reason: t.reason.as_str(),
            message: t.message.clone(),
            at: OffsetDateTime::from(t.at),
            cause: t.cause.clone(),
        }
    }
}

impl RecordRow {
    pub fn collector_id(&self) -> Result<CollectorId, StoreError> {
        self.id
            .parse()
            .map(CollectorId)
            .map_err(|_| corrupt("collector id", &self.id))
    }

    /// The record, with the facts parts the store has for it.
    pub fn into_record(self, facts: Vec<FactRow>) -> Result<Collector, StoreError> {
        let id = self.collector_id()?;
        let control: ControlDoc = serde_json::from_value(self.control.0)
            .map_err(|e| StoreError::Corrupt(format!("control of {id}: {e}")))?;
        let mut c = Collector::new(id);
        c.state = Some(parse_state(&self.state)?);
        c.state_since = self.state_since.map(SystemTime::from);
        c.state_reason = match self.state_reason.as_deref() {
            Some(r) => Some(Reason::parse(r).ok_or_else(|| corrupt("reason", r))?),
            None => None,
        };
        c.state_message = self.state_message;
        c.connected = self.connected;
        c.transport = match self.transport.as_deref() {
            Some(t) => Some(Transport::parse(t).ok_or_else(|| corrupt("transport", t))?),
            None => None,
        };
        c.connected_since = self.connected_since.map(SystemTime::from);
        c.last_seen = self.last_seen.map(SystemTime::from);
        c.capabilities = Capabilities(self.capabilities.cast_unsigned());
        c.sequence_num = self.sequence_num.map(i64::cast_unsigned);
        c.labels = self.labels.0;
        c.config_sent = control.config_sent.as_deref().and_then(unhex);
        c.config_failed = control.config_failed.as_deref().and_then(unhex);
        c.config_error = control.config_error;
        c.package_error = control.package_error;
        c.package_offered = control.package_offered.map(Box::new);
        c.rollout = control.rollout;
        c.missing_components = control.missing_components;
        c.reassigned = control.reassigned.map(Box::new);
        c.settings_failed = control.settings_failed.as_deref().and_then(unhex);
        c.settings_error = control.settings_error;
        c.drift = control
            .drift
            .as_ref()
            .and_then(DriftDoc::baseline)
            .map(Box::new);
        c.facets = Facets::from_bits(self.facets);
        let mut parts = FactParts {
            health: read_part(&self.id, "health", self.health)?,
            ..FactParts::default()
        };
        for f in facts {
            let id = &f.id;
            let value = Some(f.value);
            match f.part.as_str() {
                "description" => parts.description = read_part(id, "description", value)?,
                "effective_config" => {
                    parts.effective_config = read_part(id, "effective config", value)?;
                }
                "remote_config_status" => {
                    parts.remote_config_status = read_part(id, "remote config status", value)?;
                }
                "package_statuses" => {
                    parts.package_statuses = read_part(id, "package statuses", value)?;
                }
                "available_components" => {
                    parts.available_components = read_part(id, "available components", value)?;
                }
                "client_certificate" => {
                    parts.client_certificate = read_part(id, "client certificate", value)?;
                }
                "custom_capabilities" => {
                    parts.custom_capabilities = read_part(id, "custom capabilities", value)?;
                }
                "connection_settings_status" => {
                    parts.connection_settings_status =
                        read_part(id, "connection settings status", value)?;
                }
                "issued_certificate" => {
                    parts.issued_certificate = read_part(id, "issued certificate", value)?;
                }
                // A part this version does not know is left alone, not refused.
                _ => {}
            }
        }
        parts.apply_to(&mut c);
        Ok(c)
    }
}

impl EventRow {
    pub fn into_event(self) -> Result<super::Event, StoreError> {
        let collector = CollectorId(
            self.transition
                .collector_id
                .parse()
                .map_err(|_| corrupt("collector id", &self.transition.collector_id))?,
        );
        Ok(super::Event {
            seq: self.seq,
            collector,
            transition: self.transition.into_transition()?,
        })
    }
}

impl TransitionRow {
    pub fn into_transition(self) -> Result<Transition, StoreError> {
        let state = parse_state;
        Ok(Transition {
            from: match self.from_state.as_deref() {
                Some(s) => Some(state(s)?),
                None => None,
            },
            to: state(&self.to_state)?,
            reason: Reason::parse(&self.reason).ok_or_else(|| corrupt("reason", &self.reason))?,
            message: self.message,
            at: SystemTime::from(self.at),
            cause: self.cause,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct ConfigurationRow {
    pub name: String,
    pub version: i64,
    pub hash: String,
    pub files: Json<BTreeMap<String, super::ConfigurationFile>>,
    pub components: Json<Vec<String>>,
    pub created_at: OffsetDateTime,
}

impl ConfigurationRow {
    pub fn into_version(self) -> super::ConfigurationVersion {
        super::ConfigurationVersion {
            name: self.name,
            version: self.version,
            hash: self.hash,
            files: self.files.0,
            components: self.components.0,
            created_at: SystemTime::from(self.created_at),
        }
    }
}

//! A collector record and a transition as table rows, shared by both databases: the queried
//! facts in columns, the rest of the record as one JSON document.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use time::OffsetDateTime;

use super::StoreError;
use crate::collector::encoding::unhex;
use crate::collector::machine::hex;
use crate::collector::{
    AvailableComponents, Capabilities, Collector, CollectorId, ConfigFiles, Description, Health,
    PackageOffer, PackageStatuses, Reason, RemoteConfigStatus, State, Transition, Transport,
};

/// A transition with its place in the store's history (the event id of the live stream).
#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    #[sqlx(flatten)]
    pub transition: TransitionRow,
}

/// The parts of the record nobody filters on.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Facts {
    description: Option<Description>,
    health: Option<Health>,
    effective_config: Option<ConfigFiles>,
    remote_config_status: Option<RemoteConfigStatus>,
    package_statuses: Option<PackageStatuses>,
    available_components: Option<AvailableComponents>,
    config_sent: Option<String>,
    config_failed: Option<String>,
    config_error: Option<String>,
    package_error: Option<String>,
    package_offered: Option<PackageOffer>,
    rollout: Option<String>,
    missing_components: Vec<String>,
}

#[derive(Debug, sqlx::FromRow)]
pub struct RecordRow {
    pub id: String,
    pub node: String,
    pub state: String,
    pub state_since: Option<OffsetDateTime>,
    pub state_reason: Option<String>,
    pub state_message: String,
    pub connected: bool,
    pub transport: Option<String>,
    pub connected_since: Option<OffsetDateTime>,
    pub last_seen: Option<OffsetDateTime>,
    pub name: Option<String>,
    pub host_name: Option<String>,
    pub version: Option<String>,
    pub capabilities: i64,
    pub sequence_num: Option<i64>,
    pub labels: Json<BTreeMap<String, String>>,
    pub facts: Json<serde_json::Value>,
    pub updated_at: OffsetDateTime,
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

fn time(at: Option<SystemTime>) -> Option<OffsetDateTime> {
    at.map(OffsetDateTime::from)
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("unknown {what} {value:?}"))
}

impl RecordRow {
    /// `None` for a collector that has not sent its first message (nothing worth storing).
    pub fn from_record(c: &Collector, node: &str, now: SystemTime) -> Option<Self> {
        let state = c.state?;
        let facts = Facts {
            description: c.description.clone(),
            health: c.health.clone(),
            effective_config: c.effective_config.clone(),
            remote_config_status: c.remote_config_status.clone(),
            package_statuses: c.package_statuses.clone(),
            available_components: c.available_components.clone(),
            config_sent: c.config_sent.as_deref().map(hex),
            config_failed: c.config_failed.as_deref().map(hex),
            config_error: c.config_error.clone(),
            package_error: c.package_error.clone(),
            package_offered: c.package_offered.clone(),
            rollout: c.rollout.clone(),
            missing_components: c.missing_components.clone(),
        };
        Some(Self {
            id: c.id.to_string(),
            node: node.to_owned(),
            state: state.as_str().to_owned(),
            state_since: time(c.state_since),
            state_reason: c.state_reason.map(|r| r.as_str().to_owned()),
            state_message: c.state_message.clone(),
            connected: c.connected,
            transport: c.transport.map(|t| t.to_string()),
            connected_since: time(c.connected_since),
            last_seen: time(c.last_seen),
            name: c.name(),
            host_name: c.attribute("host.name"),
            version: c.attribute("service.version"),
            capabilities: c.capabilities.0.cast_signed(),
            sequence_num: c.sequence_num.map(u64::cast_signed),
            labels: Json(c.labels.clone()),
            // Serialising plain data into a JSON value cannot fail.
            facts: Json(serde_json::to_value(facts).unwrap_or_default()),
            updated_at: OffsetDateTime::from(now),
        })
    }

    pub fn into_record(self) -> Result<Collector, StoreError> {
        let id = CollectorId(
            self.id
                .parse()
                .map_err(|_| corrupt("collector id", &self.id))?,
        );
        let facts: Facts = serde_json::from_value(self.facts.0)
            .map_err(|e| StoreError::Corrupt(format!("facts of {id}: {e}")))?;
        let mut c = Collector::new(id);
        c.state = Some(State::parse(&self.state).ok_or_else(|| corrupt("state", &self.state))?);
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
        c.description = facts.description;
        c.health = facts.health;
        c.effective_config = facts.effective_config;
        c.remote_config_status = facts.remote_config_status;
        c.package_statuses = facts.package_statuses;
        c.available_components = facts.available_components;
        c.config_sent = facts.config_sent.as_deref().and_then(unhex);
        c.config_failed = facts.config_failed.as_deref().and_then(unhex);
        c.config_error = facts.config_error;
        c.package_error = facts.package_error;
        c.package_offered = facts.package_offered;
        c.rollout = facts.rollout;
        c.missing_components = facts.missing_components;
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
    pub fn new(collector: CollectorId, t: &Transition) -> Self {
        Self {
            collector_id: collector.to_string(),
            from_state: t.from.map(|s| s.as_str().to_owned()),
            to_state: t.to.as_str().to_owned(),
            reason: t.reason.as_str().to_owned(),
            message: t.message.clone(),
            at: OffsetDateTime::from(t.at),
            cause: t.cause.clone(),
        }
    }

    pub fn into_transition(self) -> Result<Transition, StoreError> {
        let state = |s: &str| State::parse(s).ok_or_else(|| corrupt("state", s));
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

//! Persistence: one [`Store`] trait with its SQLite and PostgreSQL implementations, their
//! migrations, the write-behind batcher that carries the actors' changes to the database, and the
//! loader that claims records for actors in batches.

pub mod batch;
pub mod cluster;
mod loader;
pub mod over_time;
mod row;
mod sql;
pub mod tail;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::collector::facets::Facets;
use crate::collector::persist::Claimed;
use crate::collector::{Collector, CollectorId, State, Transition};
use crate::config::Config;
use crate::fleet::rollout::{Outcome, Target};
use crate::fleet::summary::RolloutSummary;
use crate::selector::Selector;

pub use sql::{PostgresStore, SqliteStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data cannot be read: {0}")]
    Corrupt(String),
    #[error("cannot prepare the database: {0}")]
    Setup(String),
}

impl StoreError {
    /// Whether the database refused the data itself (a value it cannot store, a constraint), as
    /// opposed to being unreachable or busy: retrying the same rows cannot help, finding them can.
    pub fn is_data_error(&self) -> bool {
        let StoreError::Database(err) = self else {
            return false;
        };
        match err {
            sqlx::Error::Encode(_) => true,
            sqlx::Error::Database(db) => {
                let Some(code) = db.code() else {
                    return false;
                };
                if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                {
                    // SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation).
                    code.starts_with("22") || code.starts_with("23")
                } else {
                    // SQLite's primary result codes 18 (too big), 19 (constraint), 20 (mismatch).
                    code.parse::<i64>()
                        .is_ok_and(|n| matches!(n & 0xff, 18..=20))
                }
            }
            _ => false,
        }
    }
}

pub use batch::Batch;
pub use loader::StoreRecords;

/// An operator's change to a collector's labels.
#[derive(Debug, Clone)]
pub enum LabelEdit {
    Replace(BTreeMap<String, String>),
    /// A JSON merge patch: `None` removes the label.
    Merge(BTreeMap<String, Option<String>>),
}

/// A row the database refused for its data, kept aside with the error so the rest could land.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub collector: CollectorId,
    /// `record`, `facts`, `transition` or `forget`.
    pub kind: &'static str,
    pub error: String,
    /// What the row held, as the server's own debug rendering (bytes the database refused included).
    pub payload: Vec<u8>,
    pub at: SystemTime,
}

/// What collectors can be sorted by; `id` breaks ties, so pages never overlap or skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Id,
    Name,
    State,
    LastSeen,
    StateSince,
}

impl SortKey {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "id" => Self::Id,
            "name" => Self::Name,
            "state" => Self::State,
            "last_seen" => Self::LastSeen,
            "state_since" => Self::StateSince,
            _ => return None,
        })
    }

    pub fn is_time(self) -> bool {
        matches!(self, Self::LastSeen | Self::StateSince)
    }

    /// The record's value for this key, as the cursor carries it (times as RFC 3339).
    pub fn value_of(self, c: &Collector) -> String {
        let time = |t: Option<std::time::SystemTime>| {
            t.map(time::OffsetDateTime::from)
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default()
        };
        match self {
            Self::Id => c.id.to_string(),
            Self::Name => c.display_name().unwrap_or_default(),
            Self::State => c.state.map(State::as_str).unwrap_or_default().to_owned(),
            Self::LastSeen => time(c.last_seen),
            Self::StateSince => time(c.state_since),
        }
    }
}

/// Where the previous page ended: the last item's sort value and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    pub value: String,
    pub id: String,
}

/// The fleet counted: per state (states with none are absent) and per facet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Census {
    pub states: BTreeMap<State, u64>,
    /// Each facet's count, every facet present (zero included), in `Facets::each` order.
    pub facets: Vec<(&'static str, u64)>,
}

impl Census {
    /// From `(state, facets, count)` groups.
    pub fn of(groups: impl IntoIterator<Item = (State, Facets, u64)>) -> Self {
        let mut census = Self {
            states: BTreeMap::new(),
            facets: Facets::each().map(|(_, name)| (name, 0)).collect(),
        };
        for (state, facets, n) in groups {
            *census.states.entry(state).or_default() += n;
            for ((facet, _), (_, count)) in Facets::each().zip(census.facets.iter_mut()) {
                if facets.contains(facet) {
                    *count += n;
                }
            }
        }
        census
    }
}

#[derive(Debug, Clone)]
pub struct CollectorQuery {
    /// Any of these states; empty means all.
    pub states: Vec<State>,
    /// Collectors with any of these facets; empty means all.
    pub facets: Facets,
    /// Collectors that declare any of these custom capabilities; empty means all.
    pub custom_capabilities: Vec<String>,
    pub selector: Selector,
    /// Case-insensitive substring of id, name, host name or version.
    pub text: Option<String>,
    pub sort: SortKey,
    pub descending: bool,
    pub after: Option<After>,
    pub limit: usize,
    /// Only these fact parts are read (`None`: every part); a reader that needs a few of a
    /// fleet's records' facts need not parse them all.
    pub parts: Option<&'static [&'static str]>,
}

/// Which transitions an event stream wants.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Transitions into any of these states; empty means all.
    pub states: Vec<State>,
    /// Transitions of collectors whose labels match.
    pub selector: Selector,
    /// Only transitions that [move rollouts](crate::collector::Transition::moves_rollouts):
    /// what the rollout engine reads the history for. A burst of health changes is none.
    pub moves_rollouts: bool,
}

impl EventFilter {
    /// Whether the filter leaves transitions out (so a reader may find none in a stretch).
    pub fn is_selective(&self) -> bool {
        !self.states.is_empty() || !self.selector.is_empty() || self.moves_rollouts
    }
}

/// One file of a configuration version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigurationFile {
    pub content_type: String,
    pub body: String,
}

/// A configuration version as stored: immutable once written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigurationVersion {
    pub name: String,
    pub version: i64,
    /// SHA-256 hex: the OpAMP `config_hash` collectors are sent.
    pub hash: String,
    pub files: BTreeMap<String, ConfigurationFile>,
    /// `kind/type` the version needs.
    pub components: Vec<String>,
    pub created_at: SystemTime,
}

/// A transition with its place in the store's history.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: i64,
    pub collector: CollectorId,
    pub transition: Transition,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;
    /// Applies the migrations not yet applied; running it again changes nothing.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Writes the batch in one transaction. A write names the epoch of the claim it was made
    /// under; where the record's epoch has moved on (or the record is gone, or a record to create
    /// exists), nothing of that collector is applied, and its key is returned: fenced.
    async fn write(&self, batch: &Batch) -> Result<Vec<batch::Key>, StoreError>;
    /// How many [`write`](Store::write)s of disjoint collectors may run at once to good effect.
    fn write_lanes(&self) -> usize {
        1
    }
    /// Keeps rows the database refused, with their errors.
    async fn quarantine(&self, rows: &[Quarantined]) -> Result<(), StoreError>;
    /// What is in quarantine, oldest first.
    async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError>;
    /// Claims these collectors' records for this node: each found record's epoch goes up by one
    /// and it is returned with that epoch (records not found are left out).
    async fn claim(&self, ids: &[CollectorId]) -> Result<Vec<Claimed>, StoreError>;
    /// Changes a collector's labels, committed before it returns; `None` for an unknown collector.
    async fn edit_labels(
        &self,
        id: CollectorId,
        edit: &LabelEdit,
    ) -> Result<Option<BTreeMap<String, String>>, StoreError>;
    /// One collector's record, with its labels.
    async fn load(&self, id: CollectorId) -> Result<Option<Collector>, StoreError> {
        self.load_parts(id, None).await
    }
    /// [`Store::load`] reading only these fact parts (`None`: every part; `Some(&[])`: none, for a
    /// reader of the record's columns such as its labels).
    async fn load_parts(
        &self,
        id: CollectorId,
        parts: Option<&'static [&'static str]>,
    ) -> Result<Option<Collector>, StoreError>;
    /// Every stored record, without history.
    async fn collectors(&self) -> Result<Vec<Collector>, StoreError>;
    /// One collector's whole history, oldest first.
    async fn transitions(&self, id: CollectorId) -> Result<Vec<Transition>, StoreError>;
    /// One page of collectors.
    async fn list(&self, query: &CollectorQuery) -> Result<Vec<Collector>, StoreError>;
    /// How many collectors are in each state (states with none are absent).
    /// How many collectors are in each state, and how many have each facet.
    async fn census(&self) -> Result<Census, StoreError>;
    /// The census now and the transitions of `window` counted per step, read at one moment
    /// (what [`over_time::counts_over_time`] walks back from).
    async fn counts_over_time(
        &self,
        window: over_time::Window,
    ) -> Result<(Census, Vec<over_time::StepChanges>), StoreError>;
    /// One collector's history, newest first, before `before` (a seq) when given.
    async fn history(
        &self,
        id: CollectorId,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// Transitions after `after` (a seq), oldest first, as the event stream sends them.
    async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;
    /// The newest transition's seq (0 when there is none): where a new live stream starts.
    async fn last_seq(&self) -> Result<i64, StoreError>;
    /// Stores a new version of configuration `name` (version 1 for a new name), unless its hash
    /// equals the latest version's: then that one is returned. `true` when a version was created.
    async fn add_configuration(
        &self,
        name: &str,
        hash: &str,
        files: &BTreeMap<String, ConfigurationFile>,
        components: &[String],
        at: SystemTime,
    ) -> Result<(ConfigurationVersion, bool), StoreError>;
    /// The latest version of every configuration, by name.
    async fn configurations(&self) -> Result<Vec<ConfigurationVersion>, StoreError>;
    /// Every version of one configuration, oldest first (empty for an unknown name).
    async fn configuration_versions(
        &self,
        name: &str,
    ) -> Result<Vec<ConfigurationVersion>, StoreError>;
    async fn configuration_version(
        &self,
        name: &str,
        version: i64,
    ) -> Result<Option<ConfigurationVersion>, StoreError>;
    /// Writes a rollout's row (inserted or replaced) and the targets given (each inserted or
    /// replaced), in one transaction: a step passes only the targets it changed.
    async fn save_rollout(
        &self,
        rollout: &RolloutSummary,
        created_at: SystemTime,
        targets: &[&Target],
    ) -> Result<(), StoreError>;
    /// Rollouts without their targets, newest first (ids are UUIDv7: in creation order), after
    /// the rollout `after` when given.
    async fn rollout_summaries(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RolloutSummary>, StoreError>;
    /// One rollout without its targets.
    async fn rollout(&self, id: &str) -> Result<Option<RolloutSummary>, StoreError>;
    /// Rollouts without their targets that were written at or after `since`, each with when it
    /// was last written, oldest write first: what the event stream reports as progress.
    async fn rollouts_written_since(
        &self,
        since: SystemTime,
    ) -> Result<Vec<(RolloutSummary, SystemTime)>, StoreError>;
    /// One page of a rollout's targets by collector id, after `after` when given, only those with
    /// `outcome` when given.
    async fn rollout_targets(
        &self,
        id: &str,
        after: Option<CollectorId>,
        limit: usize,
        outcome: Option<Outcome>,
    ) -> Result<Vec<Target>, StoreError>;
    /// The configuration version with this hash, if any (the last good one, for rollbacks).
    async fn configuration_by_hash(
        &self,
        hash: &str,
    ) -> Result<Option<ConfigurationVersion>, StoreError>;
    /// Writes a connection settings offer's document (inserted, or replacing the one of that
    /// name); `true` when it is new.
    async fn save_settings_offer(
        &self,
        name: &str,
        document: &serde_json::Value,
    ) -> Result<bool, StoreError>;
    /// Every connection settings offer's document, by name.
    async fn settings_offers(&self) -> Result<Vec<serde_json::Value>, StoreError>;
    /// Deletes an offer; `false` when there was none of that name.
    async fn delete_settings_offer(&self, name: &str) -> Result<bool, StoreError>;
    /// After an unclean stop: marks every collector this node held and the store still shows as
    /// not Disconnected as Disconnected (`server_termination`), with the transition recorded.
    /// Returns how many were marked.
    async fn recover(&self, at: SystemTime) -> Result<usize, StoreError>;

    /// At the end of a clean stop, after the last write: closes the connections. (SQLite copies
    /// its log back and removes it when the last one closes, so the next start has none to read.)
    async fn close(&self) {}
}

/// Every collector `selector` picks (among those declaring any of `custom_capabilities`, when
/// given), in id order, read page by page, with the fact `parts` asked for (`None`: all).
pub async fn selected(
    store: &dyn Store,
    selector: &Selector,
    custom_capabilities: &[String],
    parts: Option<&'static [&'static str]>,
) -> Result<Vec<Collector>, StoreError> {
    const PAGE: usize = 500;
    let mut found = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(&CollectorQuery {
                states: Vec::new(),
                facets: Facets::default(),
                custom_capabilities: custom_capabilities.to_vec(),
                selector: selector.clone(),
                text: None,
                sort: SortKey::Id,
                descending: false,
                after: after.take(),
                limit: PAGE,
                parts,
            })
            .await?;
        let full = page.len() == PAGE;
        after = page.last().map(|c| After {
            value: c.id.to_string(),
            id: c.id.to_string(),
        });
        found.extend(page);
        if !full {
            return Ok(found);
        }
    }
}

/// For SQLite, the lock that keeps a second server off the same file while it is held (see
/// [`sql::lock_sqlite`]); nothing for PostgreSQL, where nodes coordinate through the database.
pub fn lock(config: &Config) -> Result<Option<std::fs::File>, StoreError> {
    let url = config.database_url();
    if is_postgres(&url) {
        Ok(None)
    } else {
        sql::lock_sqlite(&url)
    }
}

/// Whether `url` names a PostgreSQL database (anything else is SQLite).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the store `config` names (creating the SQLite file and its directory when missing).
/// Migrations are not applied here; call [`Store::migrate`].
pub async fn open(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let url = config.database_url();
    let node = config.server.node_id.clone();
    let pool_size = config.database.max_connections;
    if is_postgres(&url) {
        Ok(Arc::new(
            PostgresStore::connect(&url, node, pool_size).await?,
        ))
    } else {
        Ok(Arc::new(SqliteStore::connect(&url, node, pool_size).await?))
    }
}

//! Persistence: one [`Store`] trait with its SQLite and PostgreSQL implementations, their
//! migrations, and the write-behind batcher that carries the actors' changes to the database.

mod row;
mod sql;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::collector::persist::{LoadError, Records};
use crate::collector::{Collector, CollectorId, Transition};
use crate::config::Config;

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

/// What the batcher writes in one transaction: the latest record of each collector that changed,
/// and every transition, in the order they happened.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: HashMap<CollectorId, Box<Collector>>,
    pub transitions: Vec<(CollectorId, Transition)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.transitions.is_empty()
    }

    /// Adds `later` on top: its records replace ours, its transitions follow ours.
    pub fn absorb(&mut self, later: Batch) {
        self.records.extend(later.records);
        self.transitions.extend(later.transitions);
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;
    /// Applies the migrations not yet applied; running it again changes nothing.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Upserts the records and appends the transitions, all in one transaction.
    async fn write(&self, batch: &Batch) -> Result<(), StoreError>;
    /// One collector's record with its latest `history` transitions (oldest first).
    async fn load(&self, id: CollectorId, history: usize) -> Result<Option<Collector>, StoreError>;
    /// Every stored record, without history.
    async fn collectors(&self) -> Result<Vec<Collector>, StoreError>;
    /// One collector's whole history, oldest first.
    async fn transitions(&self, id: CollectorId) -> Result<Vec<Transition>, StoreError>;
    /// After an unclean stop: marks every collector this node held and the store still shows as
    /// not Disconnected as Disconnected (`server_termination`), with the transition recorded.
    /// Returns how many were marked.
    async fn recover(&self, at: SystemTime) -> Result<usize, StoreError>;
}

/// Opens the store `config` names (creating the SQLite file and its directory when missing).
/// Migrations are not applied here; call [`Store::migrate`].
pub async fn open(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    let url = config.database_url();
    let node = config.server.node_id.clone();
    let pool_size = config.database.max_connections;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            PostgresStore::connect(&url, node, pool_size).await?,
        ))
    } else {
        Ok(Arc::new(SqliteStore::connect(&url, node, pool_size).await?))
    }
}

/// The actors find known collectors here.
pub struct StoreRecords(pub Arc<dyn Store>);

#[async_trait]
impl Records for StoreRecords {
    async fn load(&self, id: CollectorId, history: usize) -> Result<Option<Collector>, LoadError> {
        self.0
            .load(id, history)
            .await
            .map_err(|e| LoadError(e.to_string()))
    }
}

//! The two SQL stores. Their code is one body instantiated for each database: the statements are
//! built with `QueryBuilder`, which writes each database's placeholders, and the column types
//! (`OffsetDateTime`, `Json`, `bool`, `i64`) map onto both. Only the migrations differ, and the
//! few spellings in [`Dialect`].

mod cache;
mod over_time;
mod rollouts;
mod upkeep;
mod write;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, QueryBuilder, Sqlite};
use time::OffsetDateTime;

use super::batch::{Entry, Key};
use super::over_time::{StepChanges, Window};
use super::row::{
    ConfigurationRow, EventRow, FactRow, FactWrite, HotRow, RecordRow, StateRow, TransitionRow,
    TransitionWrite,
};
use super::{
    After, Batch, Census, CollectorQuery, ConfigurationFile, ConfigurationVersion, Event,
    EventFilter, LabelEdit, Quarantined, SortKey, Store, StoreError,
};
use crate::collector::facets::Facets;
use crate::collector::persist::Claimed;
use crate::collector::{Collector, CollectorId, Reason, State, Transition};
use crate::fleet::rollout::{Outcome, Target};
use crate::fleet::summary::{RolloutSummary, split_legacy};
use crate::selector::{Requirement, Selector};
use over_time::sql_over_time;
use rollouts::{TARGET_COLUMNS, TargetRow, sql_rollouts};
use upkeep::{checkpoint, close_fully, close_last};
use write::{Written, push_hot, push_state, push_transition, sql_writes, update_rows};

/// What the two databases spell differently.
struct Dialect {
    /// Case-insensitive `LIKE`.
    like: &'static str,
    /// A time column as something that sorts chronologically (`{}` is the column).
    time: &'static str,
    /// A label's value is `label_prefix <key> label_suffix`, NULL when absent.
    label_prefix: &'static str,
    label_suffix: &'static str,
    /// The labels with a JSON merge patch (the bound value) applied: null removes a label.
    merge_labels: (&'static str, &'static str),
    /// A value is one of a JSON array of strings: `<value> open <array> close`. On PostgreSQL
    /// an `= ANY` of an array, which an index answers as a lookup; an `IN` of a set-returning
    /// function is planned as a join, which read the whole table or index when it looked small
    /// at planning (ADR 0077).
    in_list: (&'static str, &'static str),
    /// Begins a transaction that reads and then writes. SQLite must take the write lock at once:
    /// a deferred transaction that read first is refused its write, at once and without the busy
    /// wait (`SQLITE_BUSY_SNAPSHOT`), whenever another connection committed in between.
    begin_read_then_write: &'static str,
    /// Run before and after appending to the history (PostgreSQL: the history lock, and the
    /// notification that wakes every node's readers; see [`super::cluster::HISTORY_LOCK`]).
    history_begin: Option<&'static str>,
    history_end: Option<&'static str>,
    /// How a batch's multi-row inserts and updates begin. On SQLite they stop at a refused row
    /// without undoing their own earlier rows (`OR FAIL`), since the batch's transaction is
    /// rolled back on any error anyway (and the writer splits the batch to find the row). Under
    /// SQLite's default (`ABORT`) each such statement first copied every page it changed into a
    /// statement journal: in a profile of a burst, a tenth of SQLite's write thread went to that
    /// copy and its allocations.
    batch_insert: &'static str,
    batch_update: &'static str,
    /// Transactions a large batch may be written in at once ([`Store::write_lanes`]).
    write_lanes: usize,
}

/// SQLite keeps times as RFC 3339 text, whose fractions do not sort as text; `julianday` does.
const SQLITE: Dialect = Dialect {
    like: "LIKE",
    time: "julianday({})",
    label_prefix: "json_extract(labels, '$.\"' || ",
    label_suffix: " || '\"')",
    merge_labels: ("json_patch(labels, ", ")"),
    in_list: (" IN (SELECT value FROM json_each(", "))"),
    begin_read_then_write: "BEGIN IMMEDIATE",
    // One writer: positions are committed in order already.
    history_begin: None,
    history_end: None,
    batch_insert: "INSERT OR FAIL INTO",
    batch_update: "UPDATE OR FAIL",
    // One write connection: SQLite takes one writer at a time.
    write_lanes: 1,
};

const POSTGRES: Dialect = Dialect {
    like: "ILIKE",
    time: "{}",
    label_prefix: "(labels ->> ",
    label_suffix: ")",
    // Labels never hold nulls, so stripping them removes exactly the labels the patch removed.
    merge_labels: ("jsonb_strip_nulls(labels || ", ")"),
    begin_read_then_write: "BEGIN",
    in_list: (" = ANY(ARRAY(SELECT jsonb_array_elements_text(", ")))"),
    history_begin: Some(super::cluster::HISTORY_LOCK),
    history_end: Some(super::cluster::HISTORY_NOTIFY),
    // A failed statement fails the whole transaction already.
    batch_insert: "INSERT INTO",
    batch_update: "UPDATE",
    // Two backends share the statements' work; the history lock still orders their commits.
    write_lanes: 2,
};

impl Dialect {
    /// The operator's display-name label, in SQL (a constant key, so written in place).
    fn display_name(&self) -> String {
        let key = crate::collector::DISPLAY_NAME_LABEL;
        format!("{}'{key}'{}", self.label_prefix, self.label_suffix)
    }

    fn sort_expression(&self, key: SortKey) -> String {
        match key {
            SortKey::Id => "id".to_owned(),
            SortKey::Name => format!("COALESCE({}, name, '')", self.display_name()),
            SortKey::State => "state".to_owned(),
            SortKey::LastSeen => self.time.replace("{}", "last_seen"),
            SortKey::StateSince => self.time.replace("{}", "state_since"),
        }
    }
}

/// `%` and `_` in the user's text match themselves.
fn like_pattern(text: &str) -> String {
    let escaped = text
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

fn parse_time(text: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| StoreError::Corrupt(format!("cursor time {text:?}: {e}")))
}

/// The fleet counted per state and facets, as [`census_of`] reads it.
const CENSUS: &str = "SELECT state, facets, COUNT(*) FROM collectors GROUP BY state, facets";

fn census_of(rows: Vec<(String, i64, i64)>) -> Result<Census, StoreError> {
    let groups = rows
        .into_iter()
        .map(|(state, facets, n)| {
            let state = super::row::parse_state(&state)?;
            Ok((state, Facets::from_bits(facets), n.cast_unsigned()))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Census::of(groups))
}

/// Rows per statement: far below both databases' bind-parameter limits (16 columns × 1000).
const CHUNK: usize = 1000;

/// A pooled connection that cannot be had within this is an outage, not a wait.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The collectors row as it is read.
const RECORD_COLUMNS: &str = "id, epoch, state, state_since, state_reason, state_message, \
     connected, transport, connected_since, last_seen, capabilities, sequence_num, facets, labels, control, \
     health";

/// The hot part as it is written (the row source's column `v_c` into the table's `c`): its state
/// part first ([`STATE`]), then its descriptive part.
const HOT: &[&str] = &[
    "id",
    "epoch",
    "state",
    "state_since",
    "state_reason",
    "state_message",
    "connected",
    "transport",
    "connected_since",
    "last_seen",
    "sequence_num",
    "name",
    "host_name",
    "version",
    "capabilities",
    "facets",
    "control",
    "health",
];

/// The state part of [`HOT`]: all that a write whose descriptive part is unchanged carries
/// (ADR 0084).
const STATE: &[&str] = HOT.split_at(11).0;

const TRANSITIONS: &[&str] = &[
    "ord", "epoch", "id", "from", "to", "reason", "message", "at", "cause",
];

/// Statement sizes, largest first: a batch goes out as chunks of these many rows, so each
/// statement has a few texts, each prepared once per connection. Every statement of a batch is a
/// hand-off between the batcher's thread and the connection's (SQLite's worker thread): with 256
/// rows at most, a burst's writer thread waited on the scheduler for a fifth of each batch.
/// SQLite allows 32,766 bound values, PostgreSQL 65,535: 1,024 rows of 20 columns is 20,480.
const SIZES: [usize; 6] = [1024, 256, 64, 16, 4, 1];

/// `rows` in chunks of the [`SIZES`], largest first.
fn fixed_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        let size = SIZES.into_iter().find(|s| *s <= rest.len())?;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

/// `c1, c2, …` (table columns) and `v_c1, v_c2, …` (the row source's) for `columns`, leaving out
/// `skip`.
fn column_lists(columns: &[&str], skip: &[&str]) -> (String, String) {
    let kept: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| !skip.contains(c))
        .collect();
    (
        kept.join(", "),
        kept.iter()
            .map(|c| format!("v_{c}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// The quarantine's kinds, as stored text back to the names the code uses.
fn quarantine_kind(kind: &str) -> &'static str {
    ["record", "facts", "transition", "forget"]
        .into_iter()
        .find(|k| *k == kind)
        .unwrap_or("unknown")
}

const TRANSITION_COLUMNS: &str = "collector_id, from_state, to_state, reason, message, at, cause";

/// [`TRANSITION_COLUMNS`] of the history aliased `t`.
static T_TRANSITION_COLUMNS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("t.{}", TRANSITION_COLUMNS.replace(", ", ", t.")));

/// The bucket of the history's index a transition's position falls in (ADR 0081): its index is on
/// `(seq >> 12, collector_id, seq)`, written exactly so in [`in_buckets`], the one join that
/// uses it.
const HISTORY_BUCKET: &str = "(t.seq >> 12)";

/// The shift of [`HISTORY_BUCKET`], for buckets computed here rather than in SQL.
const HISTORY_BUCKET_BITS: u32 = 12;

/// `SELECT select` of the history (aliased `t`) in the buckets `b(n)` that `buckets` lists, for
/// the collector (or collectors) the caller appends a comparison for: one seek of the history's
/// index a bucket.
fn in_buckets(buckets: &str, select: &str) -> String {
    format!(
        "{buckets} SELECT {select} FROM b JOIN transitions t \
         ON {HISTORY_BUCKET} = b.n AND t.collector_id"
    )
}

/// `b(n)`: every bucket from a first one to the newest the history holds, oldest first. The
/// caller binds the first bucket between the two texts: the collectors' own first bucket (ADR
/// 0082), or NULL for the history's oldest. (One NULL row, which joins nothing, when the history
/// is empty.)
const BUCKETS_FROM: (&str, &str) = (
    "WITH RECURSIVE b(n) AS (SELECT COALESCE(",
    ", (SELECT MIN(seq) FROM transitions) >> 12) \
     UNION ALL SELECT n + 1 FROM b WHERE n < (SELECT MAX(seq) FROM transitions) >> 12)",
);

/// A collector's history is read newest first, this many buckets in the first statement and twice
/// as many in each next one, until a page is full: a page sorts only the rows of the buckets it
/// needed (and their like), and a page that does not fill (the last of a history) reaches the
/// oldest bucket in a few statements.
const BUCKETS_A_READ: i64 = 64;

/// The most buckets one statement reads.
const BUCKETS_A_READ_AT_MOST: i64 = 4096;

/// The windows of buckets `[low, high]` to read, newest first, from bucket `top` down to `bottom`:
/// [`BUCKETS_A_READ`] buckets, then twice as many each time, up to [`BUCKETS_A_READ_AT_MOST`].
fn bucket_windows(bottom: i64, top: i64) -> impl Iterator<Item = (i64, i64)> {
    let mut high = top;
    let mut width = BUCKETS_A_READ;
    std::iter::from_fn(move || {
        if high < bottom {
            return None;
        }
        let low = high.saturating_sub(width - 1).max(bottom);
        let window = (low, high);
        high = low.saturating_sub(1);
        width = (width * 2).min(BUCKETS_A_READ_AT_MOST);
        Some(window)
    })
}

/// Below this many pooled connections, writes take one lane whatever the database allows.
const MIN_POOL_FOR_LANES: usize = 4;

/// `Transition::moves_rollouts`, in SQL over `transitions`. PostgreSQL's partial index
/// `transitions_moving_rollouts` (migration 0013) has this predicate, word for word, so the
/// rollout engine's tail reads the few rows that match, not every transition since its last read.
fn moves_rollouts_predicate() -> String {
    format!(
        "from_state IN ('{}', '{}', '{}') OR to_state = '{}' \
         OR (to_state = '{}' AND reason IN ('{}', '{}'))",
        State::Pending.as_str(),
        State::Configuring.as_str(),
        State::Upgrading.as_str(),
        State::Incompatible.as_str(),
        State::Connected.as_str(),
        Reason::Initial.as_str(),
        Reason::ConnectionRestored.as_str(),
    )
}

const CONFIGURATION_COLUMNS: &str = "name, version, hash, files, components, created_at";

const RECOVERED_MESSAGE: &str = "the server stopped without shutting down";

/// The writer still checkpoints past this many log pages (64 MiB), so the log stays bounded if
/// the background checkpoints fall behind or stop.
const SQLITE_WRITER_AUTOCHECKPOINT_PAGES: u32 = 16 * 1024;

/// A log file that grew past this is cut back to it once checkpointed.
const SQLITE_JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;

pub struct SqliteStore {
    pool: SqlitePool,
    /// One connection for the collectors' batches and claims. SQLite has one writer anyway; on a
    /// connection of its own its page cache stays valid between batches (a connection's cache is
    /// dropped whenever another connection has written), and writers queue in the pool instead
    /// of spinning on the file lock.
    writer: SqlitePool,
    /// The write connection's page cache, sized by its writes (none for an in-memory database,
    /// whose pages are the database).
    cache: Option<std::sync::Mutex<cache::Sizing>>,
    node: String,
    /// Stops the background checkpoints when the store goes.
    _checkpoints: Option<tokio_util::sync::DropGuard>,
}

/// Begins a claim's transaction: a plan that scans `collectors` (or their facts) is never
/// chosen in it, whatever the table's size was when the statement was planned.
const CLAIM_BEGIN: &str = "BEGIN; SET LOCAL enable_seqscan = off";

pub struct PostgresStore {
    pool: PgPool,
    node: String,
}

impl PostgresStore {
    /// A transaction for the collectors' batches and claims: from the one pool, since PostgreSQL
    /// has no single-writer cache to keep warm, and its caches are its own.
    async fn begin_write(
        &self,
        _rows: usize,
    ) -> Result<sqlx::Transaction<'_, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// A transaction for a claim, in which PostgreSQL looks collectors up by their key only
    /// (ADR 0077). The claim's statement is prepared once per connection, and after five runs
    /// PostgreSQL keeps one plan for all later ones. Planned while the table was nearly empty (a
    /// new database filling up), that plan read the whole table on every later claim, until the
    /// table was next analysed: 9 to 17 s of PostgreSQL's time in a ramp of 10,000 new collectors.
    async fn begin_claim(
        &self,
        _rows: usize,
    ) -> Result<sqlx::Transaction<'_, Postgres>, StoreError> {
        Ok(self.pool.begin_with(CLAIM_BEGIN).await?)
    }

    async fn close_pools(&self) {
        close_fully(&self.pool).await;
    }
}

impl SqliteStore {
    /// A transaction for the collectors' batches and claims, on the one write connection, its
    /// page cache first sized for the `rows` about to be written (ADR 0073). A resize that fails
    /// is logged and the write goes on: the size is only a matter of speed, and a broken
    /// connection fails the write's own statements.
    async fn begin_write(&self, rows: usize) -> Result<sqlx::Transaction<'_, Sqlite>, StoreError> {
        let mut tx = self.writer.begin().await?;
        // A panic cannot leave the sizing half-changed: its one field is set whole.
        let resize = self.cache.as_ref().and_then(|cache| {
            cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .before_write(rows, std::time::Instant::now())
        });
        if let Some(kib) = resize
            && let Err(error) = sqlx::query(&format!("PRAGMA cache_size = -{kib}"))
                .execute(&mut *tx)
                .await
        {
            tracing::warn!(%error, cache_kib = kib, "cannot resize SQLite's write cache");
        }
        Ok(tx)
    }

    /// SQLite plans a lookup by key the same whatever the table holds.
    async fn begin_claim(&self, rows: usize) -> Result<sqlx::Transaction<'_, Sqlite>, StoreError> {
        self.begin_write(rows).await
    }

    async fn close_pools(&self) {
        close_fully(&self.writer).await;
        close_fully(&self.pool).await;
        close_last(&self.pool).await;
    }

    pub async fn connect(url: &str, node: String, pool_size: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // Temporary structures (sorts, and the statement journals of statements other than
            // the batch's, which need none: ADR 0068) stay in memory rather than in files.
            .pragma("temp_store", "memory")
            // The read connections' page caches: a commit by the writer empties a reader's cache
            // before its next read, so under writes a cache holds only what the last read took
            // (a tail of the history, a page of collectors), kept until the next (ADR 0073).
            .pragma("cache_size", format!("-{}", cache::READ_KIB))
            .pragma("journal_size_limit", SQLITE_JOURNAL_SIZE_LIMIT.to_string())
            .busy_timeout(Duration::from_secs(10));
        let file = options.get_filename();
        create_parent(file)?;
        let in_memory = is_in_memory(file);
        let writer_options = options
            .clone()
            .pragma("cache_size", format!("-{}", cache::SMALL_KIB))
            .pragma(
                "wal_autocheckpoint",
                SQLITE_WRITER_AUTOCHECKPOINT_PAGES.to_string(),
            );
        let pool = SqlitePoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        // An in-memory database is shared-cache: a second pool would only add table locks.
        let (writer, checkpoints) = if in_memory {
            (pool.clone(), None)
        } else {
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(writer_options)
                .await?;
            let stop = tokio_util::sync::CancellationToken::new();
            tokio::spawn(checkpoint(pool.clone(), stop.clone()));
            (writer, Some(stop.drop_guard()))
        };
        Ok(Self {
            pool,
            writer,
            cache: (!in_memory).then(|| std::sync::Mutex::new(cache::Sizing::default())),
            node,
            _checkpoints: checkpoints,
        })
    }
}

/// Takes `<file>.lock` for this server alone while the returned file is open, or says who holds
/// it: SQLite coordinates nothing between servers, so a second one on the same file is refused.
/// `None` for an in-memory database, which is this process's alone anyway.
pub fn lock_sqlite(url: &str) -> Result<Option<std::fs::File>, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?;
    let file = options.get_filename();
    if is_in_memory(file) {
        return Ok(None);
    }
    create_parent(file)?;
    lock_exclusively(file).map(Some)
}

/// sqlx names an in-memory database (`sqlite::memory:`) this way, shared-cache.
fn is_in_memory(file: &std::path::Path) -> bool {
    file.to_str()
        .is_some_and(|f| f.starts_with("file:sqlx-in-memory"))
}

fn create_parent(file: &std::path::Path) -> Result<(), StoreError> {
    match file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Setup(format!("cannot create directory {}: {e}", dir.display()))
        }),
        None => Ok(()),
    }
}

/// The file SQLite (or opampd) keeps beside the database `file`: its name with `suffix` added.
fn beside(file: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut path = file.as_os_str().to_owned();
    path.push(suffix);
    path.into()
}

fn lock_exclusively(file: &std::path::Path) -> Result<std::fs::File, StoreError> {
    let path = beside(file, ".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Setup(format!("cannot open {}: {e}", path.display())))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Setup(format!(
            "another opampd is using {} (it holds {}); SQLite serves one node only, \
             run several nodes on PostgreSQL",
            file.display(),
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Setup(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

impl PostgresStore {
    pub async fn connect(url: &str, node: String, pool_size: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(Self { pool, node })
    }
}

macro_rules! sql_store {
    ($store:ty, $db:ty, $backend:literal, $migrations:literal, $dialect:expr) => {
        sql_writes!($store, $db, $dialect);
        sql_rollouts!($store, $db);
        sql_over_time!($store, $db, $backend);

        impl $store {
            /// Appends ` AND <requirement>` for each part of the selector.
            fn push_selector(q: &mut QueryBuilder<'_, $db>, selector: &Selector) {
                let d: &Dialect = &$dialect;
                for requirement in &selector.0 {
                    let label = |q: &mut QueryBuilder<'_, $db>, key: &str| {
                        q.push(d.label_prefix)
                            .push_bind(key.to_owned())
                            .push(d.label_suffix);
                    };
                    q.push(" AND ");
                    match requirement {
                        Requirement::Equals(k, v) => {
                            label(q, k);
                            q.push(" = ").push_bind(v.clone());
                        }
                        Requirement::NotEquals(k, v) => {
                            q.push("(");
                            label(q, k);
                            q.push(" IS NULL OR ");
                            label(q, k);
                            q.push(" <> ").push_bind(v.clone()).push(")");
                        }
                        Requirement::In(k, vs) | Requirement::NotIn(k, vs) => {
                            let negated = matches!(requirement, Requirement::NotIn(..));
                            q.push("(");
                            if negated {
                                label(q, k);
                                q.push(" IS NULL OR ");
                            }
                            label(q, k);
                            q.push(if negated { " NOT IN (" } else { " IN (" });
                            let mut list = q.separated(", ");
                            for v in vs {
                                list.push_bind(v.clone());
                            }
                            q.push("))");
                        }
                        Requirement::Exists(k) => {
                            label(q, k);
                            q.push(" IS NOT NULL");
                        }
                        Requirement::Absent(k) => {
                            label(q, k);
                            q.push(" IS NULL");
                        }
                    }
                }
            }

            fn push_states(q: &mut QueryBuilder<'_, $db>, column: &str, states: &[State]) {
                if states.is_empty() {
                    return;
                }
                q.push(format!(" AND {column} IN ("));
                let mut list = q.separated(", ");
                for state in states {
                    list.push_bind(state.as_str());
                }
                q.push(")");
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            fn write_lanes(&self) -> usize {
                // A lane holds a pooled connection for a whole write; with too few, the second
                // would wait for the first, and the API's reads behind both.
                let pooled = usize::try_from(self.pool.options().get_max_connections())
                    .unwrap_or(usize::MAX);
                if pooled >= MIN_POOL_FOR_LANES {
                    $dialect.write_lanes
                } else {
                    1
                }
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                sqlx::migrate!($migrations).run(&self.pool).await?;
                self.split_legacy_rollouts().await
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn write(&self, batch: &Batch) -> Result<Vec<Key>, StoreError> {
                let mut tx = self
                    .begin_write(batch.entries.len() + batch.transitions.len())
                    .await?;
                let fenced = Self::write_in(&mut tx, &self.node, batch).await?;
                tx.commit().await?;
                Ok(fenced)
            }

            async fn quarantine(&self, rows: &[Quarantined]) -> Result<(), StoreError> {
                self.quarantine_rows(rows).await
            }

            async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
                self.quarantine_rows_read().await
            }

            async fn claim(&self, ids: &[CollectorId]) -> Result<Vec<Claimed>, StoreError> {
                let mut tx = self.begin_claim(ids.len()).await?;
                let claimed = Self::claim_in(&mut tx, &self.node, ids).await?;
                tx.commit().await?;
                Ok(claimed)
            }

            async fn edit_labels(
                &self,
                id: CollectorId,
                edit: &LabelEdit,
            ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
                self.labels_edited(id, edit).await
            }

            async fn load_parts(
                &self,
                id: CollectorId,
                parts: Option<&'static [&'static str]>,
            ) -> Result<Option<Collector>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT {RECORD_COLUMNS} FROM collectors WHERE id = "
                ));
                q.push_bind(id.to_string());
                let rows = q
                    .build_query_as::<RecordRow>()
                    .fetch_all(&self.pool)
                    .await?;
                Ok(self.read_records(rows, parts).await?.pop())
            }

            async fn collectors(&self) -> Result<Vec<Collector>, StoreError> {
                let rows = sqlx::query_as::<_, RecordRow>(&format!(
                    "SELECT {RECORD_COLUMNS} FROM collectors ORDER BY id"
                ))
                .fetch_all(&self.pool)
                .await?;
                self.read_records(rows, None).await
            }

            async fn transitions(&self, id: CollectorId) -> Result<Vec<Transition>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(BUCKETS_FROM.0);
                q.push("(SELECT first_bucket FROM collectors WHERE id = ")
                    .push_bind(id.to_string())
                    .push(")")
                    .push(in_buckets(BUCKETS_FROM.1, &T_TRANSITION_COLUMNS))
                    .push(" = ")
                    .push_bind(id.to_string());
                q.push(" ORDER BY t.seq");
                let rows = q
                    .build_query_as::<TransitionRow>()
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter()
                    .map(TransitionRow::into_transition)
                    .collect()
            }

            async fn list(&self, query: &CollectorQuery) -> Result<Vec<Collector>, StoreError> {
                let d: &Dialect = &$dialect;
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT {RECORD_COLUMNS} FROM collectors WHERE 1 = 1"
                ));
                Self::push_states(&mut q, "state", &query.states);
                if !query.facets.is_empty() {
                    q.push(" AND (facets & ")
                        .push_bind(i64::from(query.facets.bits()))
                        .push(") <> 0");
                }
                if !query.custom_capabilities.is_empty() {
                    // The stored part is a JSON array of names: any of those asked for.
                    q.push(
                        " AND EXISTS (SELECT 1 FROM collector_facts p \
                         WHERE p.id = collectors.id AND p.part = 'custom_capabilities' AND (",
                    );
                    let mut any = q.separated(" OR ");
                    for name in &query.custom_capabilities {
                        any.push_bind(name.clone());
                        any.push_unseparated(d.in_list.0);
                        any.push_unseparated("p.value");
                        any.push_unseparated(d.in_list.1);
                    }
                    q.push("))");
                }
                Self::push_selector(&mut q, &query.selector);
                if let Some(text) = query.text.as_deref().filter(|t| !t.is_empty()) {
                    let pattern = like_pattern(text);
                    q.push(" AND (");
                    let mut any = q.separated(" OR ");
                    let display_name = d.display_name();
                    for column in ["id", "name", "host_name", "version", &display_name] {
                        any.push(format!("{column} {} ", d.like));
                        any.push_bind_unseparated(pattern.clone());
                        any.push_unseparated(" ESCAPE '\\'");
                    }
                    q.push(")");
                }
                let sort = d.sort_expression(query.sort);
                let (direction, compare) = if query.descending {
                    ("DESC", "<")
                } else {
                    ("ASC", ">")
                };
                if let Some(After { value, id }) = &query.after {
                    if query.sort == SortKey::Id {
                        q.push(format!(" AND id {compare} ")).push_bind(id.clone());
                    } else {
                        q.push(format!(" AND ({sort}, id) {compare} ("));
                        if query.sort.is_time() {
                            // The bound time goes through the same expression as the column.
                            let (open, close) = d.time.split_once("{}").unwrap_or(("", ""));
                            q.push(open).push_bind(parse_time(value)?).push(close);
                        } else {
                            q.push_bind(value.clone());
                        }
                        q.push(", ").push_bind(id.clone()).push(")");
                    }
                }
                if query.sort == SortKey::Id {
                    q.push(format!(" ORDER BY id {direction}"));
                } else {
                    q.push(format!(" ORDER BY {sort} {direction}, id {direction}"));
                }
                q.push(" LIMIT ")
                    .push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
                let rows = q
                    .build_query_as::<RecordRow>()
                    .fetch_all(&self.pool)
                    .await?;
                self.read_records(rows, query.parts).await
            }

            async fn census(&self) -> Result<Census, StoreError> {
                let rows = sqlx::query_as(CENSUS).fetch_all(&self.pool).await?;
                census_of(rows)
            }

            async fn counts_over_time(
                &self,
                window: Window,
            ) -> Result<(Census, Vec<StepChanges>), StoreError> {
                self.read_counts_over_time(window).await
            }

            async fn history(
                &self,
                id: CollectorId,
                before: Option<i64>,
                limit: usize,
            ) -> Result<Vec<Event>, StoreError> {
                // The collector's first bucket (ADR 0082) bounds the walk: a page that does not
                // fill stops there, not at the oldest bucket of the whole history.
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT (SELECT MIN(seq) FROM transitions), (SELECT MAX(seq) FROM transitions), \
                     (SELECT first_bucket FROM collectors WHERE id = ",
                );
                q.push_bind(id.to_string()).push(")");
                let (first, last, first_bucket): (Option<i64>, Option<i64>, Option<i64>) =
                    q.build_query_as().fetch_one(&self.pool).await?;
                let (Some(first), Some(mut last)) = (first, last) else {
                    return Ok(Vec::new());
                };
                if let Some(before) = before {
                    // A client's cursor: any number at all.
                    last = last.min(before.saturating_sub(1));
                }
                let bottom = (first >> HISTORY_BUCKET_BITS).max(first_bucket.unwrap_or(i64::MIN));
                let select = format!("t.seq, {}", *T_TRANSITION_COLUMNS);
                let mut events = Vec::new();
                for (low, high) in bucket_windows(bottom, last >> HISTORY_BUCKET_BITS) {
                    let wanted = limit.saturating_sub(events.len());
                    if wanted == 0 {
                        break;
                    }
                    let mut q = QueryBuilder::<$db>::new("WITH RECURSIVE b(n) AS (SELECT ");
                    q.push_bind(high)
                        .push(" UNION ALL SELECT n - 1 FROM b WHERE n > ")
                        .push_bind(low)
                        .push(in_buckets(")", &select))
                        .push(" = ")
                        .push_bind(id.to_string())
                        .push(" AND t.seq <= ")
                        .push_bind(last)
                        .push(" ORDER BY t.seq DESC LIMIT ")
                        .push_bind(i64::try_from(wanted).unwrap_or(i64::MAX));
                    let rows = q.build_query_as::<EventRow>().fetch_all(&self.pool).await?;
                    for row in rows {
                        events.push(row.into_event()?);
                    }
                }
                Ok(events)
            }

            async fn events_after(
                &self,
                after: i64,
                filter: &EventFilter,
                limit: usize,
            ) -> Result<Vec<Event>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT t.seq, {} FROM transitions t WHERE t.seq > ",
                    *T_TRANSITION_COLUMNS
                ));
                q.push_bind(after);
                Self::push_states(&mut q, "t.to_state", &filter.states);
                if filter.moves_rollouts {
                    q.push(format!(" AND ({})", moves_rollouts_predicate()));
                }
                if !filter.selector.is_empty() {
                    // The collectors' labels as they are now.
                    q.push(" AND t.collector_id IN (SELECT id FROM collectors WHERE 1 = 1");
                    Self::push_selector(&mut q, &filter.selector);
                    q.push(")");
                }
                q.push(" ORDER BY t.seq LIMIT ")
                    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
                let rows = q.build_query_as::<EventRow>().fetch_all(&self.pool).await?;
                rows.into_iter().map(EventRow::into_event).collect()
            }

            async fn last_seq(&self) -> Result<i64, StoreError> {
                let (seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM transitions")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(seq.unwrap_or(0))
            }

            async fn add_configuration(
                &self,
                name: &str,
                hash: &str,
                files: &BTreeMap<String, ConfigurationFile>,
                components: &[String],
                at: SystemTime,
            ) -> Result<(ConfigurationVersion, bool), StoreError> {
                let d: &Dialect = &$dialect;
                let mut tx = self.pool.begin_with(d.begin_read_then_write).await?;
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT {CONFIGURATION_COLUMNS} FROM configuration_versions WHERE name = "
                ));
                q.push_bind(name.to_owned())
                    .push(" ORDER BY version DESC LIMIT 1");
                let latest = q
                    .build_query_as::<ConfigurationRow>()
                    .fetch_optional(&mut *tx)
                    .await?;
                let next = match latest {
                    Some(latest) if latest.hash == hash => {
                        return Ok((latest.into_version(), false));
                    }
                    Some(latest) => latest.version + 1,
                    None => 1,
                };
                let row = ConfigurationRow {
                    name: name.to_owned(),
                    version: next,
                    hash: hash.to_owned(),
                    files: sqlx::types::Json(files.clone()),
                    components: sqlx::types::Json(components.to_vec()),
                    created_at: OffsetDateTime::from(at),
                };
                let mut q = QueryBuilder::<$db>::new(format!(
                    "INSERT INTO configuration_versions ({CONFIGURATION_COLUMNS}) "
                ));
                q.push_values([&row], |mut b, r| {
                    b.push_bind(&r.name)
                        .push_bind(r.version)
                        .push_bind(&r.hash)
                        .push_bind(&r.files)
                        .push_bind(&r.components)
                        .push_bind(r.created_at);
                });
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
                Ok((row.into_version(), true))
            }

            async fn configurations(&self) -> Result<Vec<ConfigurationVersion>, StoreError> {
                let rows = sqlx::query_as::<_, ConfigurationRow>(&format!(
                    "SELECT {CONFIGURATION_COLUMNS} FROM configuration_versions v \
                     WHERE version = (SELECT MAX(version) FROM configuration_versions \
                     WHERE name = v.name) ORDER BY name"
                ))
                .fetch_all(&self.pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(ConfigurationRow::into_version)
                    .collect())
            }

            async fn configuration_versions(
                &self,
                name: &str,
            ) -> Result<Vec<ConfigurationVersion>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT {CONFIGURATION_COLUMNS} FROM configuration_versions WHERE name = "
                ));
                q.push_bind(name.to_owned()).push(" ORDER BY version");
                let rows = q
                    .build_query_as::<ConfigurationRow>()
                    .fetch_all(&self.pool)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(ConfigurationRow::into_version)
                    .collect())
            }

            async fn configuration_version(
                &self,
                name: &str,
                version: i64,
            ) -> Result<Option<ConfigurationVersion>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT {CONFIGURATION_COLUMNS} FROM configuration_versions WHERE name = "
                ));
                q.push_bind(name.to_owned())
                    .push(" AND version = ")
                    .push_bind(version);
                let row = q
                    .build_query_as::<ConfigurationRow>()
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(ConfigurationRow::into_version))
            }

            async fn save_rollout(
                &self,
                rollout: &RolloutSummary,
                created_at: SystemTime,
                targets: &[&Target],
            ) -> Result<(), StoreError> {
                let mut tx = self.pool.begin().await?;
                Self::save_rollout_in(&mut tx, rollout, created_at, targets).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn rollout_summaries(
                &self,
                after: Option<&str>,
                limit: usize,
            ) -> Result<Vec<RolloutSummary>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("SELECT document FROM rollouts");
                if let Some(after) = after {
                    q.push(" WHERE id < ").push_bind(after.to_owned());
                }
                q.push(" ORDER BY id DESC LIMIT ")
                    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
                let rows: Vec<(sqlx::types::Json<RolloutSummary>,)> =
                    q.build_query_as().fetch_all(&self.pool).await?;
                Ok(rows.into_iter().map(|(d,)| d.0).collect())
            }

            async fn rollout(&self, id: &str) -> Result<Option<RolloutSummary>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("SELECT document FROM rollouts WHERE id = ");
                q.push_bind(id.to_owned());
                let row: Option<(sqlx::types::Json<RolloutSummary>,)> =
                    q.build_query_as().fetch_optional(&self.pool).await?;
                Ok(row.map(|(d,)| d.0))
            }

            async fn rollouts_written_since(
                &self,
                since: SystemTime,
            ) -> Result<Vec<(RolloutSummary, SystemTime)>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT document, updated_at FROM rollouts WHERE updated_at >= ",
                );
                q.push_bind(OffsetDateTime::from(since))
                    .push(" ORDER BY updated_at, id");
                let rows: Vec<(sqlx::types::Json<RolloutSummary>, OffsetDateTime)> =
                    q.build_query_as().fetch_all(&self.pool).await?;
                Ok(rows
                    .into_iter()
                    .map(|(d, at)| (d.0, SystemTime::from(at)))
                    .collect())
            }

            async fn rollout_targets(
                &self,
                id: &str,
                after: Option<CollectorId>,
                limit: usize,
                outcome: Option<Outcome>,
            ) -> Result<Vec<Target>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT {TARGET_COLUMNS} FROM rollout_targets WHERE rollout_id = "
                ));
                q.push_bind(id.to_owned());
                if let Some(outcome) = outcome {
                    q.push(" AND outcome = ").push_bind(outcome.as_str());
                }
                if let Some(after) = after {
                    q.push(" AND collector_id > ").push_bind(after.to_string());
                }
                q.push(" ORDER BY collector_id LIMIT ")
                    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
                let rows = q
                    .build_query_as::<TargetRow>()
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter().map(TargetRow::into_target).collect()
            }

            async fn configuration_by_hash(
                &self,
                hash: &str,
            ) -> Result<Option<ConfigurationVersion>, StoreError> {
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT {CONFIGURATION_COLUMNS} FROM configuration_versions WHERE hash = "
                ));
                q.push_bind(hash.to_owned())
                    .push(" ORDER BY version DESC LIMIT 1");
                let row = q
                    .build_query_as::<ConfigurationRow>()
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(ConfigurationRow::into_version))
            }

            async fn save_settings_offer(
                &self,
                name: &str,
                document: &serde_json::Value,
            ) -> Result<bool, StoreError> {
                let d: &Dialect = &$dialect;
                let mut tx = self.pool.begin_with(d.begin_read_then_write).await?;
                let mut q = QueryBuilder::<$db>::new(
                    "SELECT COUNT(*) FROM connection_settings_offers WHERE name = ",
                );
                q.push_bind(name.to_owned());
                let (existing,): (i64,) = q.build_query_as().fetch_one(&mut *tx).await?;
                let mut q = QueryBuilder::<$db>::new(
                    "INSERT INTO connection_settings_offers (name, document, updated_at) VALUES (",
                );
                q.push_bind(name.to_owned())
                    .push(", ")
                    .push_bind(sqlx::types::Json(document))
                    .push(", ")
                    .push_bind(OffsetDateTime::now_utc())
                    .push(
                        ") ON CONFLICT (name) DO UPDATE SET document = excluded.document, \
                         updated_at = excluded.updated_at",
                    );
                q.build().execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(existing == 0)
            }

            async fn settings_offers(&self) -> Result<Vec<serde_json::Value>, StoreError> {
                let rows: Vec<(sqlx::types::Json<serde_json::Value>,)> = sqlx::query_as(
                    "SELECT document FROM connection_settings_offers ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?;
                Ok(rows.into_iter().map(|(d,)| d.0).collect())
            }

            async fn delete_settings_offer(&self, name: &str) -> Result<bool, StoreError> {
                let mut q =
                    QueryBuilder::<$db>::new("DELETE FROM connection_settings_offers WHERE name = ");
                q.push_bind(name.to_owned());
                Ok(q.build().execute(&self.pool).await?.rows_affected() > 0)
            }

            async fn close(&self) {
                self.close_pools().await;
            }

            async fn recover(&self, at: SystemTime) -> Result<usize, StoreError> {
                let disconnected = State::Disconnected.as_str();
                let reason = Reason::ServerTermination.as_str();
                let at = OffsetDateTime::from(at);
                let d: &Dialect = &$dialect;
                let mut tx = self.pool.begin().await?;
                if let Some(begin) = d.history_begin {
                    sqlx::query(begin).execute(&mut *tx).await?;
                }
                // The history first, from the states the rows still show, then the rows.
                let mut q = QueryBuilder::<$db>::new(format!(
                    "INSERT INTO transitions ({TRANSITION_COLUMNS}) \
                     SELECT id, state, "
                ));
                q.push_bind(disconnected)
                    .push(", ")
                    .push_bind(reason)
                    .push(", ")
                    .push_bind(RECOVERED_MESSAGE)
                    .push(", ")
                    .push_bind(at)
                    .push(", NULL FROM collectors WHERE node = ")
                    .push_bind(&self.node)
                    .push(" AND state <> ")
                    .push_bind(disconnected)
                    .push(" ORDER BY id");
                let marked = q.build().execute(&mut *tx).await?.rows_affected();
                let mut q = QueryBuilder::<$db>::new("UPDATE collectors SET state = ");
                q.push_bind(disconnected)
                    .push(", state_reason = ")
                    .push_bind(reason)
                    .push(", state_message = ")
                    .push_bind(RECOVERED_MESSAGE)
                    .push(", state_since = ")
                    .push_bind(at)
                    .push(", connected = ")
                    .push_bind(false)
                    .push(format!(", facets = facets & ~{}", Facets::STALE.bits()))
                    .push(", epoch = epoch + 1, updated_at = ")
                    .push_bind(at)
                    .push(" WHERE node = ")
                    .push_bind(&self.node)
                    .push(" AND state <> ")
                    .push_bind(disconnected);
                q.build().execute(&mut *tx).await?;
                if let (Some(end), true) = (d.history_end, marked > 0) {
                    sqlx::query(end).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(usize::try_from(marked).unwrap_or(usize::MAX))
            }
        }
    };
}

sql_store!(SqliteStore, Sqlite, "sqlite", "migrations/sqlite", SQLITE);
sql_store!(
    PostgresStore,
    Postgres,
    "postgres",
    "migrations/postgres",
    POSTGRES
);

#[cfg(test)]
mod tests {
    /// The history's reads name the bucket exactly as both migrations index it, or the databases
    /// cannot use the index and scan the history.
    #[test]
    fn history_reads_use_the_indexed_bucket_expression() {
        let bucket = super::HISTORY_BUCKET.replace("t.", "");
        for migration in [
            include_str!("../../../migrations/sqlite/0014_history_index_by_bucket.sql"),
            include_str!("../../../migrations/postgres/0018_history_index_by_bucket.sql"),
        ] {
            assert!(migration.contains(&format!("({bucket}, collector_id, seq)")));
        }
        let shift = format!(">> {})", super::HISTORY_BUCKET_BITS);
        assert!(super::HISTORY_BUCKET.ends_with(&shift));
        let bits = format!(">> {}", super::HISTORY_BUCKET_BITS);
        assert_eq!(super::BUCKETS_FROM.1.matches(&bits).count(), 2);
    }

    #[test]
    fn the_first_bucket_migration_takes_the_history_lock() {
        // Without the lock, a node still on the old version could commit a position the
        // migration's reads did not see, and its record's bound would hide it (ADR 0082).
        let migration = include_str!("../../../migrations/postgres/0019_first_history_bucket.sql");
        let lock = super::super::cluster::HISTORY_LOCK.trim_start_matches("SELECT ");
        assert!(migration.contains(&format!("SELECT {lock};")));
    }

    #[test]
    fn bucket_windows_cover_every_bucket_once_newest_first() {
        let windows: Vec<_> = super::bucket_windows(3, 400).collect();
        assert_eq!(windows, [(337, 400), (209, 336), (3, 208)]);
        assert_eq!(super::bucket_windows(5, 5).collect::<Vec<_>>(), [(5, 5)]);
        assert_eq!(super::bucket_windows(6, 5).count(), 0);
        // Wide histories: the windows stop growing, and still cover every bucket once.
        let wide: Vec<_> = super::bucket_windows(0, 100_000).collect();
        assert_eq!(wide.first(), Some(&(99_937, 100_000)));
        assert!(wide.iter().all(|(low, high)| high - low < 4096));
        assert!(wide.windows(2).all(|w| w[1].1 == w[0].0 - 1));
        assert_eq!(wide.last().map(|w| w.0), Some(0));
        // A cursor at the very bottom of the numbers reads nothing rather than overflowing.
        assert_eq!(super::bucket_windows(0, i64::MIN >> 12).count(), 0);
    }

    /// The tail's filter and the index built for it must stay the same predicate, or PostgreSQL
    /// cannot prove the index covers the query and scans the history again.
    #[test]
    fn the_rollout_tail_filter_is_the_partial_index_predicate() {
        let migration =
            include_str!("../../../migrations/postgres/0013_transitions_moving_rollouts.sql");
        let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let predicate = format!("WHERE {};", super::moves_rollouts_predicate());
        assert!(
            words(migration).contains(&words(&predicate)),
            "migration 0013 does not hold {predicate}"
        );
    }
}

//! What several nodes on one PostgreSQL share beyond the collectors' records: which nodes are
//! alive, commands addressed to the node holding a collector, leases, collectors' custom messages
//! on their way to other nodes, and the notifications
//! (`LISTEN`/`NOTIFY` on one channel) that wake each of them. PostgreSQL only: SQLite serves one
//! node.

use std::time::{Duration, SystemTime};

use serde_json::Value;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use time::OffsetDateTime;

use super::StoreError;
use crate::collector::{CollectorId, Reason, State};

pub mod relay;

/// The one notification channel; payloads are [`Notice`](crate::cluster::notify::Notice)s.
pub const CHANNEL: &str = "opampd";

/// Taken (transaction-scoped) by every transaction that appends to the history, so that history
/// positions are committed in the order they are handed out: a reader that has seen position n
/// never later finds a smaller one appear (event streams resume by position on any node).
/// The key is "opampd" in ASCII.
pub const HISTORY_LOCK: &str = "SELECT pg_advisory_xact_lock(122528461582436)";

/// Sent, on commit, by every transaction that appended to the history: wakes event streams and
/// the rollout engine on every node.
pub const HISTORY_NOTIFY: &str = "SELECT pg_notify('opampd', 'ev')";

/// Its own few connections, so that liveness and commands are not starved by a busy writer.
const POOL: u32 = 4;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A node that went silent and whose collectors this node marked Disconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenOver {
    pub node: String,
    /// It had recorded a clean stop.
    pub clean: bool,
    pub collectors: u64,
}

/// Where a collector's record is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub connected: bool,
    /// The node renews its liveness and has not stopped.
    pub alive: bool,
}

/// A command waiting for this node.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenCommand {
    pub id: i64,
    pub origin: String,
    pub body: Value,
}

#[derive(Clone)]
pub struct ClusterStore {
    pool: PgPool,
    node: String,
}

fn at(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

impl ClusterStore {
    pub async fn connect(url: &str, node: String) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        Ok(Self { pool, node })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// A connection that receives the channel's notifications (reconnecting on its own).
    pub async fn listen(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(listener)
    }

    /// Starts this node's life: alive from `now`, neither stopped nor taken over.
    pub async fn register(&self, now: SystemTime) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes (id, started_at, renewed_at) VALUES ($1, $2, $2) \
             ON CONFLICT (id) DO UPDATE SET started_at = $2, renewed_at = $2, \
             stopped_at = NULL, taken_over_at = NULL, taken_over_by = NULL",
        )
        .bind(&self.node)
        .bind(at(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Says this node is alive at `now`. `false` when another node has taken it over meanwhile
    /// (it was silent too long): its collectors' records have moved on.
    pub async fn renew(&self, now: SystemTime) -> Result<bool, StoreError> {
        let row: Option<(Option<OffsetDateTime>,)> = sqlx::query_as(
            "UPDATE nodes SET renewed_at = $2 WHERE id = $1 RETURNING taken_over_at",
        )
        .bind(&self.node)
        .bind(at(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(matches!(row, Some((None,))))
    }

    pub async fn stopped(&self, now: SystemTime) -> Result<(), StoreError> {
        sqlx::query("UPDATE nodes SET stopped_at = $2, renewed_at = $2 WHERE id = $1")
            .bind(&self.node)
            .bind(at(now))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes over every other node last renewed before `silent_since` and not yet taken over:
    /// each such node is taken by exactly one caller, and its collectors still shown present are
    /// marked Disconnected with their transitions (their epochs go up, fencing the node should it
    /// come back).
    /// `reason` says why, given whether the node had recorded a clean stop.
    pub async fn take_over_silent(
        &self,
        silent_since: SystemTime,
        now: SystemTime,
        reason: fn(bool) -> (Reason, &'static str),
    ) -> Result<Vec<TakenOver>, StoreError> {
        let mut taken = Vec::new();
        loop {
            let mut tx = self.pool.begin().await?;
            let node: Option<(String, bool)> = sqlx::query_as(
                "UPDATE nodes SET taken_over_at = $3, taken_over_by = $1 WHERE id = \
                 (SELECT id FROM nodes WHERE id <> $1 AND taken_over_at IS NULL \
                  AND renewed_at < $2 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, stopped_at IS NOT NULL",
            )
            .bind(&self.node)
            .bind(at(silent_since))
            .bind(at(now))
            .fetch_optional(&mut *tx)
            .await?;
            let Some((node, clean)) = node else {
                tx.commit().await?;
                return Ok(taken);
            };
            let (reason, message) = reason(clean);
            let collectors = disconnect_node(&mut tx, &node, reason, message, now).await?;
            tx.commit().await?;
            taken.push(TakenOver {
                node,
                clean,
                collectors,
            });
        }
    }

    /// Where collector `id`'s record is held; a node counts as alive when it renewed after
    /// `alive_since`.
    pub async fn owner(
        &self,
        id: CollectorId,
        alive_since: SystemTime,
    ) -> Result<Option<Owner>, StoreError> {
        let row: Option<(String, bool, bool)> = sqlx::query_as(
            "SELECT c.node, c.connected, COALESCE(n.renewed_at > $2 AND n.stopped_at IS NULL \
             AND n.taken_over_at IS NULL, FALSE) \
             FROM collectors c LEFT JOIN nodes n ON n.id = c.node WHERE c.id = $1",
        )
        .bind(id.to_string())
        .bind(at(alive_since))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(node, connected, alive)| Owner {
            node,
            connected,
            alive,
        }))
    }

    /// Queues a command for `node` and wakes it; its id.
    pub async fn send(&self, node: &str, body: &Value, now: SystemTime) -> Result<i64, StoreError> {
        let (id,): (i64,) = sqlx::query_as(
            "WITH c AS (INSERT INTO commands (node, origin, body, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING id) \
             SELECT id FROM c, LATERAL (SELECT pg_notify($5, 'cmd ' || $1)) n",
        )
        .bind(node)
        .bind(&self.node)
        .bind(body)
        .bind(at(now))
        .bind(CHANNEL)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// Commands waiting for this node, oldest first.
    pub async fn open_commands(&self) -> Result<Vec<OpenCommand>, StoreError> {
        let rows: Vec<(i64, String, Value)> = sqlx::query_as(
            "SELECT id, origin, body FROM commands WHERE node = $1 AND answer IS NULL \
             ORDER BY id LIMIT 256",
        )
        .bind(&self.node)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, origin, body)| OpenCommand { id, origin, body })
            .collect())
    }

    /// Records the answer to command `id` and wakes its origin; `false` when it already had one
    /// (it expired while it was carried out).
    pub async fn answer(
        &self,
        id: i64,
        answer: &Value,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(
            "WITH a AS (UPDATE commands SET answer = $2, answered_at = $3 \
             WHERE id = $1 AND answer IS NULL RETURNING origin, id) \
             SELECT origin FROM a, LATERAL (SELECT pg_notify($4, 'ans ' || origin || ' ' || id)) n",
        )
        .bind(id)
        .bind(answer)
        .bind(at(now))
        .bind(CHANNEL)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    pub async fn answer_of(&self, id: i64) -> Result<Option<Value>, StoreError> {
        let row: Option<(Option<Value>,)> =
            sqlx::query_as("SELECT answer FROM commands WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(answer,)| answer))
    }

    /// Gives up on command `id` unless it was answered: `true` when it will never be carried out
    /// from now on; `false` when its answer came first (read it).
    pub async fn expire(&self, id: i64, now: SystemTime) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE commands SET answer = '{\"expired\": true}', answered_at = $2 \
             WHERE id = $1 AND answer IS NULL",
        )
        .bind(id)
        .bind(at(now))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes commands answered before `before`.
    pub async fn prune(&self, before: SystemTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM commands WHERE answered_at < $1")
            .bind(at(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Takes or keeps lease `name` until `now + ttl`: its term when this node holds it, `None`
    /// when another node does.
    pub async fn lease(
        &self,
        name: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO leases (name, node, term, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (name) DO UPDATE SET \
             term = CASE WHEN leases.node = EXCLUDED.node AND leases.expires_at >= $4 \
                    THEN leases.term ELSE leases.term + 1 END, \
             node = EXCLUDED.node, expires_at = EXCLUDED.expires_at \
             WHERE leases.node = EXCLUDED.node OR leases.expires_at < $4 \
             RETURNING term",
        )
        .bind(name)
        .bind(&self.node)
        .bind(at(now + ttl))
        .bind(at(now))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(term,)| term))
    }

    /// Lets lease `name` go at once (a clean stop), if this node holds it.
    pub async fn release(&self, name: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE leases SET expires_at = 'epoch' WHERE name = $1 AND node = $2")
            .bind(name)
            .bind(&self.node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The node holding lease `name` at `now`, if any.
    pub async fn lease_holder(
        &self,
        name: &str,
        now: SystemTime,
    ) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT node FROM leases WHERE name = $1 AND expires_at > $2")
                .bind(name)
                .bind(at(now))
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(node,)| node))
    }
}

/// Marks every collector `node` holds and the store still shows present as Disconnected, with
/// the transitions, under the history lock; how many.
async fn disconnect_node(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    node: &str,
    reason: Reason,
    message: &str,
    now: SystemTime,
) -> Result<u64, StoreError> {
    sqlx::query(HISTORY_LOCK).execute(&mut **tx).await?;
    let disconnected = State::Disconnected.as_str();
    // A disconnected collector is not stale (bit 2: `Facets::STALE`).
    let done = sqlx::query(
        "WITH old AS (SELECT id, state FROM collectors \
            WHERE node = $1 AND state <> $2 FOR UPDATE), \
         marked AS (UPDATE collectors c SET state = $2, state_reason = $3, state_message = $4, \
            state_since = $5, connected = FALSE, facets = c.facets & ~2, \
            epoch = c.epoch + 1, updated_at = $5 \
            FROM old WHERE c.id = old.id RETURNING c.id, old.state AS from_state) \
         INSERT INTO transitions (collector_id, from_state, to_state, reason, message, at, cause) \
         SELECT id, from_state, $2, $3, $4, $5, NULL FROM marked ORDER BY id",
    )
    .bind(node)
    .bind(disconnected)
    .bind(reason.as_str())
    .bind(message)
    .bind(at(now))
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() > 0 {
        sqlx::query(HISTORY_NOTIFY).execute(&mut **tx).await?;
    }
    Ok(done.rows_affected())
}

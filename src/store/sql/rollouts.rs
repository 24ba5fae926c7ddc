//! Rollouts in both databases: a row per rollout holding its own fields and counts as a document,
//! a row per target, written together; the pages the API and the engine read; and the split of
//! documents stored before targets were rows.

use sqlx::types::Json;
use time::OffsetDateTime;

use crate::collector::CollectorId;
use crate::fleet::rollout::{Outcome, Target};
use crate::store::StoreError;

/// The target columns, as written and read.
pub(super) const TARGET_COLUMNS: &str = "rollout_id, collector_id, batch, outcome, error, missing, \
     components_unknown, previous_hash, rolled_back, sent_at, updated_at";

/// A target as it is read.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct TargetRow {
    collector_id: String,
    batch: Option<i64>,
    outcome: String,
    error: String,
    missing: Json<Vec<String>>,
    components_unknown: bool,
    previous_hash: Option<String>,
    rolled_back: bool,
    sent_at: Option<OffsetDateTime>,
}

impl TargetRow {
    pub(super) fn into_target(self) -> Result<Target, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("rollout target: {what}"));
        Ok(Target {
            collector: self
                .collector_id
                .parse()
                .map(CollectorId)
                .map_err(|_| corrupt(&format!("collector id {:?}", self.collector_id)))?,
            outcome: Outcome::parse(&self.outcome)
                .ok_or_else(|| corrupt(&format!("outcome {:?}", self.outcome)))?,
            batch: self
                .batch
                .map(usize::try_from)
                .transpose()
                .map_err(|_| corrupt("batch"))?,
            missing: self.missing.0,
            error: self.error,
            components_unknown: self.components_unknown,
            previous_hash: self.previous_hash,
            rolled_back: self.rolled_back,
            sent_at: self.sent_at.map(std::time::SystemTime::from),
        })
    }
}

/// Generates `impl $store { ... }` with the rollouts' statements.
macro_rules! sql_rollouts {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Upserts the rollout's row and `targets` inside `tx`.
            async fn save_rollout_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                rollout: &RolloutSummary,
                created_at: SystemTime,
                targets: &[&Target],
            ) -> Result<(), StoreError> {
                let now = OffsetDateTime::now_utc();
                let mut q = QueryBuilder::<$db>::new(
                    "INSERT INTO rollouts (id, status, document, created_at, updated_at) VALUES (",
                );
                q.push_bind(rollout.id.clone())
                    .push(", ")
                    .push_bind(rollout.status.as_str())
                    .push(", ")
                    .push_bind(sqlx::types::Json(rollout))
                    .push(", ")
                    .push_bind(OffsetDateTime::from(created_at))
                    .push(", ")
                    .push_bind(now)
                    .push(
                        ") ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
                         document = excluded.document, updated_at = excluded.updated_at",
                    );
                q.build().execute(&mut **tx).await?;
                for chunk in fixed_chunks(targets) {
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO rollout_targets ({TARGET_COLUMNS}) "
                    ));
                    q.push_values(chunk, |mut b, t| {
                        b.push_bind(rollout.id.clone())
                            .push_bind(t.collector.to_string())
                            .push_bind(t.batch.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
                            .push_bind(t.outcome.as_str())
                            .push_bind(t.error.clone())
                            .push_bind(sqlx::types::Json(t.missing.clone()))
                            .push_bind(t.components_unknown)
                            .push_bind(t.previous_hash.clone())
                            .push_bind(t.rolled_back)
                            .push_bind(t.sent_at.map(OffsetDateTime::from))
                            .push_bind(now);
                    });
                    q.push(
                        " ON CONFLICT (rollout_id, collector_id) DO UPDATE SET \
                         batch = excluded.batch, outcome = excluded.outcome, \
                         error = excluded.error, missing = excluded.missing, \
                         components_unknown = excluded.components_unknown, \
                         previous_hash = excluded.previous_hash, \
                         rolled_back = excluded.rolled_back, sent_at = excluded.sent_at, \
                         updated_at = excluded.updated_at",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }


            /// Splits every document stored with its targets (before they were rows) into its
            /// row and its targets' rows; a document that cannot be read is left as it is.
            async fn split_legacy_rollouts(&self) -> Result<(), StoreError> {
                let rows: Vec<(sqlx::types::Json<serde_json::Value>, OffsetDateTime)> =
                    sqlx::query_as(
                        "SELECT document, created_at FROM rollouts \
                         WHERE document -> 'targets' IS NOT NULL",
                    )
                    .fetch_all(&self.pool)
                    .await?;
                for (document, created_at) in rows {
                    let (summary, targets) = match split_legacy(&document.0) {
                        Ok(Some(split)) => split,
                        Ok(None) => continue,
                        Err(err) => {
                            tracing::warn!(%err, "a stored rollout cannot be read; it is left alone");
                            continue;
                        }
                    };
                    let targets: Vec<&Target> = targets.iter().collect();
                    let mut tx = self.pool.begin().await?;
                    Self::save_rollout_in(&mut tx, &summary, created_at.into(), &targets).await?;
                    tx.commit().await?;
                }
                Ok(())
            }
        }
    };
}

pub(super) use sql_rollouts;

//! Collectors' custom messages relayed between nodes: written by the node a collector sent one
//! to, with a notification, and read by the others for their event streams.

use std::sync::Arc;
use std::time::SystemTime;

use time::OffsetDateTime;

use super::{CHANNEL, ClusterStore, at};
use crate::collector::CollectorId;
use crate::collector::connection::{CustomMessage, Received};
use crate::store::StoreError;

/// One relayed message, with its row's id (what a reader has already seen).
#[derive(Debug, Clone)]
pub struct Relayed {
    pub id: i64,
    pub received: Received,
}

impl ClusterStore {
    /// Hands a collector's message to the other nodes, and wakes them.
    pub async fn relay_custom(&self, received: &Received) -> Result<(), StoreError> {
        let message = &received.message;
        sqlx::query(
            "WITH r AS (INSERT INTO relayed_custom_messages \
             (node, collector_id, capability, kind, data, at) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id) \
             SELECT pg_notify($7, 'cm') FROM r",
        )
        .bind(&self.node)
        .bind(received.collector.to_string())
        .bind(&message.capability)
        .bind(&message.kind)
        .bind(&message.data[..])
        .bind(at(received.at))
        .bind(CHANNEL)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Other nodes' messages relayed at or after `since`, oldest first. A row the store holds
    /// that names no collector is left out.
    pub async fn relayed_since(&self, since: SystemTime) -> Result<Vec<Relayed>, StoreError> {
        type Row = (i64, String, String, String, Vec<u8>, OffsetDateTime);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, collector_id, capability, kind, data, at FROM relayed_custom_messages \
             WHERE at >= $1 AND node <> $2 ORDER BY id",
        )
        .bind(at(since))
        .bind(&self.node)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, collector, capability, kind, data, at)| {
                let collector = collector.parse().ok().map(CollectorId)?;
                Some(Relayed {
                    id,
                    received: Received {
                        collector,
                        message: CustomMessage {
                            capability,
                            kind,
                            data: Arc::from(data),
                        },
                        at: at.into(),
                        relayed: true,
                    },
                })
            })
            .collect())
    }

    /// Deletes messages relayed before `before`.
    pub async fn prune_relayed(&self, before: SystemTime) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM relayed_custom_messages WHERE at < $1")
            .bind(at(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

//! The collectors' writes, for both databases: a batch in one transaction (forgets, creates, hot
//! updates, `last_seen` touches, facts parts, transitions), every statement fenced by the epoch the
//! writing actor claimed; claims; operators' label edits; the quarantine.
//!
//! Rows travel as one bound JSON array per statement ([`Dialect::rows`]), so every statement has
//! one text whatever the number of rows: prepared once per connection and kept. (Multi-row
//! `VALUES` lists made a new statement for every size: measured, SQLite spent a fifth of a burst's
//! CPU parsing and planning them, and each size stayed in every connection's statement cache.)

/// Generates `impl $store { ... }` with the collector write paths.
macro_rules! sql_writes {
    ($store:ty, $db:ty, $dialect:expr) => {
        impl $store {
            /// Writes `batch` inside `tx`; returns the keys whose writes were fenced.
            async fn write_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                node: &str,
                batch: &Batch,
            ) -> Result<Vec<Key>, StoreError> {
                let now = OffsetDateTime::now_utc();
                Self::forgets_in(tx, batch).await?;
                let fenced = Self::records_in(tx, node, batch, now).await?;
                Self::facts_in(tx, batch, now).await?;
                Self::transitions_in(tx, batch).await?;
                Ok(fenced)
            }

            /// Forgets first: a record deleted here takes its facts and history with it.
            async fn forgets_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                batch: &Batch,
            ) -> Result<(), StoreError> {
                let d: &Dialect = &$dialect;
                let forgets: Vec<KeyRow> = batch
                    .entries
                    .iter()
                    .filter(|(_, e)| matches!(e, Entry::Forget))
                    .map(|((id, epoch), _)| KeyRow {
                        id: id.to_string(),
                        epoch: *epoch,
                    })
                    .collect();
                for chunk in forgets.chunks(CHUNK) {
                    let (open, close) = d.rows(KEYS);
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "DELETE FROM collectors WHERE (id, epoch) IN \
                         (SELECT v_id, v_epoch FROM {open}"
                    ));
                    q.push_bind(sqlx::types::Json(chunk))
                        .push(format!("{close} AS v) RETURNING id"));
                    let deleted: Vec<(String,)> =
                        q.build_query_as().fetch_all(&mut **tx).await?;
                    if deleted.is_empty() {
                        continue;
                    }
                    let ids: Vec<String> = deleted.into_iter().map(|(id,)| id).collect();
                    for table in ["transitions WHERE collector_id", "collector_facts WHERE id"] {
                        let (open, close) = d.id_list;
                        let mut q =
                            QueryBuilder::<$db>::new(format!("DELETE FROM {table} IN {open}"));
                        q.push_bind(sqlx::types::Json(&ids)).push(close);
                        q.build().execute(&mut **tx).await?;
                    }
                }
                Ok(())
            }

            /// Records: created (never over an existing row), updated under their epoch, or only
            /// their `last_seen` moved. Returns the keys fenced.
            async fn records_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                node: &str,
                batch: &Batch,
                now: OffsetDateTime,
            ) -> Result<Vec<Key>, StoreError> {
                let d: &Dialect = &$dialect;
                let mut creates = Vec::new();
                let mut updates = Vec::new();
                let mut touches = Vec::new();
                for ((id, epoch), entry) in &batch.entries {
                    let Entry::Write(write) = entry else {
                        continue;
                    };
                    match (&write.hot, write.create) {
                        (Some(hot), true) => creates.push(HotRow::new(hot, *epoch)),
                        (Some(hot), false) => updates.push(HotRow::new(hot, *epoch)),
                        (None, _) => {
                            if let Some(seen) = write.touch {
                                touches.push(TouchRow {
                                    id: id.to_string(),
                                    epoch: *epoch,
                                    last_seen: crate::collector::encoding::rfc3339(seen),
                                });
                            }
                        }
                    }
                }
                let (open, close) = d.rows(HOT);
                let mut applied: std::collections::HashSet<String> =
                    std::collections::HashSet::new();
                let (columns, picks) = column_lists(HOT, &[]);
                for chunk in creates.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO collectors (node, updated_at, {columns}) SELECT "
                    ));
                    q.push_bind(node)
                        .push(", ")
                        .push_bind(now)
                        .push(format!(", {picks} FROM {open}"))
                        .push_bind(sqlx::types::Json(chunk))
                        .push(format!(
                            "{close} AS v WHERE 1 = 1 ON CONFLICT (id) DO NOTHING RETURNING id"
                        ));
                    let rows: Vec<(String,)> = q.build_query_as().fetch_all(&mut **tx).await?;
                    applied.extend(rows.into_iter().map(|(id,)| id));
                }
                let assignments: String = HOT
                    .iter()
                    .map(|(c, _)| *c)
                    .filter(|c| *c != "id" && *c != "epoch")
                    .map(|c| format!("{c} = v_{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                for chunk in updates.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(format!("WITH v AS {open}"));
                    q.push_bind(sqlx::types::Json(chunk))
                        .push(format!(
                            "{close} UPDATE collectors SET {assignments}, updated_at = "
                        ))
                        .push_bind(now)
                        .push(" FROM v WHERE id = v_id AND epoch = v_epoch RETURNING id");
                    let rows: Vec<(String,)> = q.build_query_as().fetch_all(&mut **tx).await?;
                    applied.extend(rows.into_iter().map(|(id,)| id));
                }
                let fenced = creates
                    .iter()
                    .chain(&updates)
                    .filter(|row| !applied.contains(&row.id))
                    .filter_map(|row| Some((CollectorId(row.id.parse().ok()?), row.epoch)))
                    .collect();
                let (open, close) = d.rows(TOUCHES);
                for chunk in touches.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(format!("WITH v AS {open}"));
                    q.push_bind(sqlx::types::Json(chunk)).push(format!(
                        "{close} UPDATE collectors SET last_seen = v_last_seen FROM v \
                         WHERE id = v_id AND epoch = v_epoch"
                    ));
                    q.build().execute(&mut **tx).await?;
                }
                Ok(fenced)
            }

            /// The facts parts that changed, only for records this batch may write.
            async fn facts_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                batch: &Batch,
                now: OffsetDateTime,
            ) -> Result<(), StoreError> {
                let d: &Dialect = &$dialect;
                let facts: Vec<FactsWrite> = batch
                    .entries
                    .iter()
                    .filter_map(|((id, epoch), entry)| match entry {
                        Entry::Write(w) if !w.facts.is_empty() => {
                            Some(FactsWrite::new(*id, *epoch, &w.facts))
                        }
                        _ => None,
                    })
                    .collect();
                let (open, close) = d.rows(FACTS);
                let (columns, picks) = column_lists(FACTS, &["id", "epoch"]);
                let updates = columns
                    .split(", ")
                    .map(|c| format!("{c} = COALESCE(excluded.{c}, collector_facts.{c})"))
                    .collect::<Vec<_>>()
                    .join(", ");
                for chunk in facts.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO collector_facts (id, {columns}, updated_at) \
                         SELECT v_id, {picks}, "
                    ));
                    q.push_bind(now)
                        .push(format!(" FROM {open}"))
                        .push_bind(sqlx::types::Json(chunk))
                        .push(format!(
                            "{close} AS v JOIN collectors ON id = v_id AND epoch = v_epoch \
                             WHERE 1 = 1 ON CONFLICT (id) DO UPDATE SET {updates}, \
                             updated_at = excluded.updated_at"
                        ));
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// The history, in order, only for records this batch may write.
            async fn transitions_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                batch: &Batch,
            ) -> Result<(), StoreError> {
                let d: &Dialect = &$dialect;
                let transitions: Vec<TransitionWrite> = batch
                    .transitions
                    .iter()
                    .enumerate()
                    .map(|(i, t)| TransitionWrite::new(i, t.id, t.epoch, &t.transition))
                    .collect();
                let (open, close) = d.rows(TRANSITIONS);
                for chunk in transitions.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "INSERT INTO transitions ({TRANSITION_COLUMNS}) \
                         SELECT v_id, v_from, v_to, v_reason, v_message, v_at, v_cause FROM {open}"
                    ));
                    q.push_bind(sqlx::types::Json(chunk)).push(format!(
                        "{close} AS v JOIN collectors ON id = v_id AND epoch = v_epoch \
                         ORDER BY v_ord"
                    ));
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            async fn claim_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                node: &str,
                ids: &[CollectorId],
            ) -> Result<Vec<Claimed>, StoreError> {
                let d: &Dialect = &$dialect;
                let mut claimed = Vec::new();
                for chunk in ids.chunks(CHUNK) {
                    let ids: Vec<String> = chunk.iter().map(ToString::to_string).collect();
                    let (open, close) = d.id_list;
                    let mut q = QueryBuilder::<$db>::new(
                        "UPDATE collectors SET epoch = epoch + 1, node = ",
                    );
                    q.push_bind(node.to_owned())
                        .push(format!(" WHERE id IN {open}"))
                        .push_bind(sqlx::types::Json(ids))
                        .push(format!("{close} RETURNING {RECORD_COLUMNS}"));
                    let rows = q
                        .build_query_as::<RecordRow>()
                        .fetch_all(&mut **tx)
                        .await?;
                    let records = Self::with_facts(&mut **tx, rows).await?;
                    claimed.extend(records.into_iter().map(|(record, epoch)| Claimed {
                        record,
                        epoch,
                    }));
                }
                Ok(claimed)
            }

            /// Reads the facts of `rows` and builds their records (with their epochs).
            async fn with_facts<'c, E>(
                executor: E,
                rows: Vec<RecordRow>,
            ) -> Result<Vec<(Collector, i64)>, StoreError>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let d: &Dialect = &$dialect;
                let (columns, _) = column_lists(FACTS, &["id", "epoch"]);
                let (open, close) = d.id_list;
                let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT id, {columns} FROM collector_facts WHERE id IN {open}"
                ));
                q.push_bind(sqlx::types::Json(ids)).push(close);
                let facts = q.build_query_as::<FactsRow>().fetch_all(executor).await?;
                let mut facts: std::collections::HashMap<String, FactsRow> =
                    facts.into_iter().map(|f| (f.id.clone(), f)).collect();
                rows.into_iter()
                    .map(|row| {
                        let epoch = row.epoch;
                        let f = facts.remove(&row.id);
                        row.into_record(f).map(|r| (r, epoch))
                    })
                    .collect()
            }

            /// The records of `rows`, with their facts.
            async fn read_records(
                &self,
                mut rows: Vec<RecordRow>,
            ) -> Result<Vec<Collector>, StoreError> {
                let mut records = Vec::with_capacity(rows.len());
                while !rows.is_empty() {
                    let rest = rows.split_off(rows.len().min(CHUNK));
                    let chunk = std::mem::replace(&mut rows, rest);
                    records.extend(
                        Self::with_facts(&self.pool, chunk)
                            .await?
                            .into_iter()
                            .map(|(r, _)| r),
                    );
                }
                Ok(records)
            }

            async fn labels_edited(
                &self,
                id: CollectorId,
                edit: &LabelEdit,
            ) -> Result<Option<BTreeMap<String, String>>, StoreError> {
                let d: &Dialect = &$dialect;
                let mut q = QueryBuilder::<$db>::new("UPDATE collectors SET labels = ");
                match edit {
                    LabelEdit::Replace(labels) => {
                        q.push_bind(sqlx::types::Json(labels.clone()));
                    }
                    LabelEdit::Merge(patch) => {
                        let (open, close) = d.merge_labels;
                        q.push(open)
                            .push_bind(sqlx::types::Json(patch.clone()))
                            .push(close);
                    }
                }
                q.push(" WHERE id = ")
                    .push_bind(id.to_string())
                    .push(" RETURNING labels");
                let row: Option<(sqlx::types::Json<BTreeMap<String, String>>,)> =
                    q.build_query_as().fetch_optional(&self.pool).await?;
                Ok(row.map(|(labels,)| labels.0))
            }

            async fn quarantine_rows(&self, rows: &[Quarantined]) -> Result<(), StoreError> {
                for chunk in rows.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO quarantine (collector_id, kind, error, payload, at) ",
                    );
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(r.collector.to_string())
                            .push_bind(r.kind)
                            .push_bind(crate::collector::encoding::storable(&r.error, crate::collector::encoding::MAX_TEXT)
                                .into_owned())
                            .push_bind(r.payload.clone())
                            .push_bind(OffsetDateTime::from(r.at));
                    });
                    q.build().persistent(false).execute(&self.pool).await?;
                }
                Ok(())
            }

            async fn quarantine_rows_read(&self) -> Result<Vec<Quarantined>, StoreError> {
                let rows: Vec<(String, String, String, Vec<u8>, OffsetDateTime)> = sqlx::query_as(
                    "SELECT collector_id, kind, error, payload, at FROM quarantine ORDER BY seq",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(id, kind, error, payload, at)| {
                        let collector = id
                            .parse()
                            .map(CollectorId)
                            .map_err(|_| StoreError::Corrupt(format!("quarantined id {id:?}")))?;
                        Ok(Quarantined {
                            collector,
                            kind: quarantine_kind(&kind),
                            error,
                            payload,
                            at: SystemTime::from(at),
                        })
                    })
                    .collect()
            }
        }
    };
}

pub(super) use sql_writes;

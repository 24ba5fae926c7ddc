//! The collectors' writes, for both databases: a batch in one transaction (forgets, creates, hot
//! updates, `last_seen` touches, facts parts, transitions), every statement fenced by the epoch the
//! writing actor claimed; claims; operators' label edits; the quarantine.
//!
//! Rows go in multi-row `VALUES` lists of a few fixed sizes ([`fixed_chunks`]), so each statement
//! has a handful of texts, each prepared once per connection and kept. (One list per batch size
//! was a new statement every time: SQLite spent a fifth of a burst's CPU parsing and planning
//! them, and every size stayed in the statement caches. One bound JSON array of rows was worse on
//! SQLite: extracting each column re-reads the row's JSON, half the instructions of a burst.)

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
                let (fenced, written) = Self::records_in(tx, node, batch, now).await?;
                Self::facts_in(tx, batch, now, &written).await?;
                Self::transitions_in(tx, batch, &written).await?;
                Ok(fenced)
            }

            /// Forgets first: a record deleted here takes its facts and history with it.
            async fn forgets_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                batch: &Batch,
            ) -> Result<(), StoreError> {
                let d: &Dialect = &$dialect;
                let forgets: Vec<(String, i64)> = batch
                    .entries
                    .iter()
                    .filter(|(_, e)| matches!(e, Entry::Forget))
                    .map(|((id, epoch), _)| (id.to_string(), *epoch))
                    .collect();
                for chunk in fixed_chunks(&forgets) {
                    let mut q = QueryBuilder::<$db>::new("WITH v(v_id, v_epoch) AS (");
                    q.push_values(chunk, |mut b, (id, epoch)| {
                        b.push_bind(id).push_bind(*epoch);
                    });
                    q.push(
                        ") DELETE FROM collectors WHERE (id, epoch) IN \
                         (SELECT v_id, v_epoch FROM v) RETURNING id, first_bucket",
                    );
                    let deleted: Vec<(String, Option<i64>)> =
                        q.build_query_as().fetch_all(&mut **tx).await?;
                    if deleted.is_empty() {
                        continue;
                    }
                    // Their histories start no lower than the lowest of their first buckets; one
                    // unknown (NULL) means the history's oldest.
                    let first_bucket = deleted
                        .iter()
                        .map(|(_, bucket)| *bucket)
                        .min_by_key(|bucket| bucket.unwrap_or(i64::MIN))
                        .flatten();
                    let ids: Vec<String> = deleted.into_iter().map(|(id, _)| id).collect();
                    let (open, close) = d.in_list;
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "DELETE FROM transitions WHERE seq IN ({}",
                        BUCKETS_FROM.0
                    ));
                    q.push_bind(first_bucket)
                        .push(in_buckets(BUCKETS_FROM.1, "t.seq"))
                        .push(open)
                        .push_bind(sqlx::types::Json(&ids))
                        .push(close)
                        .push(")");
                    q.build().execute(&mut **tx).await?;
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "DELETE FROM collector_facts WHERE id{open}"
                    ));
                    q.push_bind(sqlx::types::Json(&ids)).push(close);
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Records: created (never over an existing row), updated under their epoch, or only
            /// their `last_seen` moved. Returns the keys fenced, and those whose create or update
            /// this transaction made (their epoch is now known to hold: what else the batch
            /// writes for them needs no check of its own).
            async fn records_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                node: &str,
                batch: &Batch,
                now: OffsetDateTime,
            ) -> Result<(Vec<Key>, Written), StoreError> {
                let d: &Dialect = &$dialect;
                let mut creates = Vec::new();
                let mut updates = Vec::new();
                let mut states = Vec::new();
                let mut touches = Vec::new();
                for ((id, epoch), entry) in &batch.entries {
                    let Entry::Write(write) = entry else {
                        continue;
                    };
                    match (&write.hot, write.create) {
                        (Some(hot), true) => {
                            creates.push(HotRow::new(hot, &write.facts, *epoch));
                        }
                        // The descriptive part unchanged and no health: the state part alone.
                        (Some(hot), false) if !write.whole && write.facts.health.is_none() => {
                            states.push(StateRow::new(hot, *epoch));
                        }
                        (Some(hot), false) => {
                            updates.push(HotRow::new(hot, &write.facts, *epoch));
                        }
                        (None, _) => {
                            if let Some(seen) = write.touch {
                                touches.push((id.to_string(), *epoch, OffsetDateTime::from(seen)));
                            }
                        }
                    }
                }
                let mut written = Written::default();
                let (columns, _) = column_lists(HOT, &[]);
                // A new record's history starts after every transition stored now: its own get
                // later positions, in this transaction or a later one (a record's transitions
                // never land before it does). Its pages stop at this bucket (ADR 0082).
                let first_bucket = if creates.is_empty() {
                    0
                } else {
                    let (newest,): (Option<i64>,) =
                        sqlx::query_as("SELECT MAX(seq) FROM transitions")
                            .fetch_one(&mut **tx)
                            .await?;
                    newest.unwrap_or(0) >> HISTORY_BUCKET_BITS
                };
                for chunk in fixed_chunks(&creates) {
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "{} collectors (node, updated_at, first_bucket, {columns}) ",
                        d.batch_insert
                    ));
                    q.push_values(chunk, |mut b, r| {
                        b.push_bind(node).push_bind(now).push_bind(first_bucket);
                        push_hot!(b, r);
                    });
                    q.push(" ON CONFLICT (id) DO NOTHING RETURNING id, epoch");
                    let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(&mut **tx).await?;
                    written.extend(rows);
                }
                update_rows!(tx, d, now, written, &updates, HOT, |b, r| push_hot!(b, r));
                update_rows!(tx, d, now, written, &states, STATE, |b, r| push_state!(
                    b, r
                ));
                let fenced = creates
                    .iter()
                    .chain(&updates)
                    .map(AsRef::as_ref)
                    .chain(&states)
                    .filter(|row| !written.holds(&row.id, row.epoch))
                    .filter_map(|row| Some((CollectorId(row.id.parse().ok()?), row.epoch)))
                    .collect();
                for chunk in fixed_chunks(&touches) {
                    let mut q = QueryBuilder::<$db>::new("WITH v(v_id, v_epoch, v_last_seen) AS (");
                    q.push_values(chunk, |mut b, (id, epoch, seen)| {
                        b.push_bind(id).push_bind(*epoch).push_bind(*seen);
                    });
                    q.push(format!(
                        ") {} collectors SET last_seen = v_last_seen FROM v \
                         WHERE id = v_id AND epoch = v_epoch",
                        d.batch_update
                    ));
                    q.build().execute(&mut **tx).await?;
                }
                Ok((fenced, written))
            }

            /// Healths without their records (`(id, epoch, health)`), each under its epoch.
            async fn healths_alone_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                healths: &[(
                    String,
                    i64,
                    sqlx::types::Json<Box<serde_json::value::RawValue>>,
                )],
            ) -> Result<(), StoreError> {
                let d: &Dialect = &$dialect;
                for chunk in fixed_chunks(healths) {
                    let mut q = QueryBuilder::<$db>::new("WITH v(v_id, v_epoch, v_health) AS (");
                    q.push_values(chunk, |mut b, (id, epoch, health)| {
                        b.push_bind(id).push_bind(*epoch).push_bind(health);
                    });
                    q.push(format!(
                        ") {} collectors SET health = v_health FROM v \
                         WHERE id = v_id AND epoch = v_epoch",
                        d.batch_update
                    ));
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Which of `keys` (a chunk's worth) the stored records hold now.
            async fn holding_in<'k>(
                tx: &mut sqlx::Transaction<'_, $db>,
                keys: impl Iterator<Item = (&'k str, i64)>,
            ) -> Result<Vec<(String, i64)>, StoreError> {
                let mut q = QueryBuilder::<$db>::new("WITH v(v_id, v_epoch) AS (");
                q.push_values(keys, |mut b, (id, epoch)| {
                    b.push_bind(id).push_bind(epoch);
                });
                q.push(
                    ") SELECT id, epoch FROM collectors JOIN v ON id = v_id AND epoch = v_epoch",
                );
                Ok(q.build_query_as()
                    .persistent(false)
                    .fetch_all(&mut **tx)
                    .await?)
            }

            /// The facts parts that changed, one row each, only for records this batch may write.
            async fn facts_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                batch: &Batch,
                now: OffsetDateTime,
                written: &Written,
            ) -> Result<(), StoreError> {
                let d: &Dialect = &$dialect;
                let mut facts = Vec::new();
                let mut healths = Vec::new();
                for ((id, epoch), entry) in &batch.entries {
                    let Entry::Write(w) = entry else {
                        continue;
                    };
                    facts.extend(FactWrite::rows(*id, *epoch, &w.facts));
                    // Health rides in the record's row. Without the record it is a piece of a
                    // refused batch (the record went as a piece of its own), so that a health the
                    // database refuses is quarantined alone.
                    if w.hot.is_none()
                        && let Some(health) = &w.facts.health
                    {
                        healths.push((id.to_string(), *epoch, HotRow::health_of(health)));
                    }
                }
                // Each row checks its record's epoch, unless this batch's own write of the record
                // already did (the usual case: a report changes the record and its facts).
                let checked = facts.iter().all(|f| written.holds(&f.id, f.epoch));
                for chunk in fixed_chunks(&facts) {
                    let mut q = if checked {
                        let mut q = QueryBuilder::<$db>::new(format!(
                            "{} collector_facts (id, part, value, updated_at) ",
                            d.batch_insert
                        ));
                        q.push_values(chunk, |mut b, f| {
                            b.push_bind(&f.id)
                                .push_bind(f.part)
                                .push_bind(&f.value)
                                .push_bind(now);
                        });
                        q
                    } else {
                        let mut q =
                            QueryBuilder::<$db>::new("WITH v(v_id, v_epoch, v_part, v_value) AS (");
                        q.push_values(chunk, |mut b, f| {
                            b.push_bind(&f.id)
                                .push_bind(f.epoch)
                                .push_bind(f.part)
                                .push_bind(&f.value);
                        });
                        q.push(format!(
                            ") {} collector_facts (id, part, value, updated_at) \
                             SELECT v_id, v_part, v_value, ",
                            d.batch_insert
                        ));
                        q.push_bind(now);
                        q.push(
                            " FROM v JOIN collectors ON id = v_id AND epoch = v_epoch WHERE 1 = 1",
                        );
                        q
                    };
                    q.push(
                        " ON CONFLICT (id, part) DO UPDATE SET value = excluded.value, \
                         updated_at = excluded.updated_at",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                Self::healths_alone_in(tx, &healths).await
            }

            /// The history, in order, only for records this batch may write.
            async fn transitions_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                batch: &Batch,
                written: &Written,
            ) -> Result<(), StoreError> {
                let transitions: Vec<TransitionWrite> = batch
                    .transitions
                    .iter()
                    .enumerate()
                    .map(|(i, t)| TransitionWrite::new(i, t.id, t.epoch, &t.transition))
                    .collect();
                let d: &Dialect = &$dialect;
                if transitions.is_empty() {
                    return Ok(());
                }
                if let Some(begin) = d.history_begin {
                    sqlx::query(begin).execute(&mut **tx).await?;
                }
                // As for facts: one statement shape for the whole batch, so the history keeps the
                // batch's order.
                let checked = transitions.iter().all(|t| written.holds(&t.id, t.epoch));
                let (_, aliases) = column_lists(TRANSITIONS, &[]);
                for chunk in fixed_chunks(&transitions) {
                    let mut q = if checked {
                        let mut q = QueryBuilder::<$db>::new(format!(
                            "{} transitions ({TRANSITION_COLUMNS}) ",
                            d.batch_insert
                        ));
                        q.push_values(chunk, |mut b, t| {
                            push_transition!(b, t);
                        });
                        q
                    } else {
                        let mut q = QueryBuilder::<$db>::new(format!("WITH v({aliases}) AS ("));
                        q.push_values(chunk, |mut b, t| {
                            b.push_bind(t.ord).push_bind(t.epoch);
                            push_transition!(b, t);
                        });
                        q.push(format!(
                            ") {} transitions ({TRANSITION_COLUMNS}) \
                             SELECT v_id, v_from, v_to, v_reason, v_message, v_at, v_cause \
                             FROM v JOIN collectors ON id = v_id AND epoch = v_epoch \
                             ORDER BY v_ord",
                            d.batch_insert
                        ));
                        q
                    };
                    q.build().execute(&mut **tx).await?;
                }
                if let Some(end) = d.history_end {
                    sqlx::query(end).execute(&mut **tx).await?;
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
                    let (open, close) = d.in_list;
                    let mut q = QueryBuilder::<$db>::new(
                        "UPDATE collectors SET epoch = epoch + 1, node = ",
                    );
                    q.push_bind(node.to_owned())
                        .push(format!(" WHERE id{open}"))
                        .push_bind(sqlx::types::Json(ids))
                        .push(format!("{close} RETURNING {RECORD_COLUMNS}"));
                    let rows = q.build_query_as::<RecordRow>().fetch_all(&mut **tx).await?;
                    let records = Self::with_facts(&mut **tx, rows, None).await?;
                    claimed.extend(
                        records
                            .into_iter()
                            .map(|(record, epoch)| Claimed { record, epoch }),
                    );
                }
                Ok(claimed)
            }

            /// Reads the facts of `rows` and builds their records (with their epochs).
            async fn with_facts<'c, E>(
                executor: E,
                mut rows: Vec<RecordRow>,
                parts: Option<&[&str]>,
            ) -> Result<Vec<(Collector, i64)>, StoreError>
            where
                E: sqlx::Executor<'c, Database = $db>,
            {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                // Health is read with the row; a reader that did not ask for it does not get it.
                if parts.is_some_and(|parts| !parts.contains(&"health")) {
                    for row in &mut rows {
                        row.health = None;
                    }
                }
                let d: &Dialect = &$dialect;
                let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
                let (open, close) = d.in_list;
                let mut q = QueryBuilder::<$db>::new(format!(
                    "SELECT id, part, value FROM collector_facts WHERE id{open}"
                ));
                q.push_bind(sqlx::types::Json(ids)).push(close);
                if let Some(parts) = parts {
                    if parts.is_empty() {
                        return rows
                            .into_iter()
                            .map(|row| {
                                let epoch = row.epoch;
                                row.into_record(Vec::new()).map(|r| (r, epoch))
                            })
                            .collect();
                    }
                    q.push(format!(" AND part{open}"))
                        .push_bind(sqlx::types::Json(parts.to_vec()))
                        .push(close);
                }
                let found = q.build_query_as::<FactRow>().fetch_all(executor).await?;
                let mut facts: std::collections::HashMap<String, Vec<FactRow>> =
                    std::collections::HashMap::new();
                for f in found {
                    facts.entry(f.id.clone()).or_default().push(f);
                }
                rows.into_iter()
                    .map(|row| {
                        let epoch = row.epoch;
                        let parts = facts.remove(&row.id).unwrap_or_default();
                        row.into_record(parts).map(|r| (r, epoch))
                    })
                    .collect()
            }

            /// The records of `rows`, with their facts.
            async fn read_records(
                &self,
                mut rows: Vec<RecordRow>,
                parts: Option<&[&str]>,
            ) -> Result<Vec<Collector>, StoreError> {
                let mut records = Vec::with_capacity(rows.len());
                while !rows.is_empty() {
                    let rest = rows.split_off(rows.len().min(CHUNK));
                    let chunk = std::mem::replace(&mut rows, rest);
                    records.extend(
                        Self::with_facts(&self.pool, chunk, parts)
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
                            .push_bind(
                                crate::collector::encoding::storable(
                                    &r.error,
                                    crate::collector::encoding::MAX_TEXT,
                                )
                                .into_owned(),
                            )
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

/// The records a batch's transaction created or updated itself, with their epoch (a stored
/// record has one).
#[derive(Debug, Default)]
pub(super) struct Written(std::collections::HashMap<String, i64>);

impl Extend<(String, i64)> for Written {
    fn extend<I: IntoIterator<Item = (String, i64)>>(&mut self, keys: I) {
        self.0.extend(keys);
    }
}

impl Written {
    pub(super) fn holds(&self, id: &str, epoch: i64) -> bool {
        self.0.get(id) == Some(&epoch)
    }
}

/// Binds a [`StateRow`]'s values in `STATE` order.
macro_rules! push_state {
    ($b:ident, $r:expr) => {
        $b.push_bind(&$r.id)
            .push_bind($r.epoch)
            .push_bind($r.state)
            .push_bind($r.state_since)
            .push_bind($r.state_reason)
            .push_bind(&$r.state_message)
            .push_bind($r.connected)
            .push_bind($r.transport)
            .push_bind($r.connected_since)
            .push_bind($r.last_seen)
            .push_bind($r.sequence_num)
    };
}

/// Binds a [`HotRow`]'s values in `HOT` order.
macro_rules! push_hot {
    ($b:ident, $r:ident) => {
        push_state!($b, $r.state)
            .push_bind(&$r.name)
            .push_bind(&$r.host_name)
            .push_bind(&$r.version)
            .push_bind($r.capabilities)
            .push_bind($r.facets)
            .push_bind(&$r.control)
            .push_bind(&$r.health)
    };
}

/// Updates stored records from `$rows` (each `AsRef<StateRow>`: its id and epoch), writing
/// `$columns` bound by `$push`, under their epochs; every row updated goes into `$written`, and
/// those that were not are asked for (fenced, or gone).
macro_rules! update_rows {
    ($tx:ident, $d:ident, $now:ident, $written:ident, $rows:expr, $columns:expr, |$b:ident, $r:ident| $push:expr) => {
        let (_, aliases) = column_lists($columns, &[]);
        let assignments: String = $columns
            .iter()
            .copied()
            .filter(|c| *c != "id" && *c != "epoch")
            .map(|c| match c {
                // Written when the batch brings it, else kept.
                "health" => "health = COALESCE(v_health, health)".to_owned(),
                c => format!("{c} = v_{c}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        for chunk in fixed_chunks($rows) {
            let mut q = QueryBuilder::new(format!("WITH v({aliases}) AS ("));
            q.push_values(chunk, |mut $b, $r| {
                $push;
            });
            q.push(format!(
                ") {} collectors SET {assignments}, updated_at = ",
                $d.batch_update
            ));
            q.push_bind($now);
            q.push(" FROM v WHERE id = v_id AND epoch = v_epoch");
            // No RETURNING: a row per update crossed the connection's channel (a tenth of
            // SQLite's thread in a burst). All updated is the rule; which ones were fenced is
            // asked only when some were.
            let updated = q.build().execute(&mut **$tx).await?.rows_affected();
            let keys = chunk.iter().map(|row| {
                let row: &StateRow = row.as_ref();
                (row.id.as_str(), row.epoch)
            });
            if usize::try_from(updated).is_ok_and(|n| n == chunk.len()) {
                $written.extend(keys.map(|(id, epoch)| (id.to_owned(), epoch)));
            } else {
                $written.extend(Self::holding_in($tx, keys).await?);
            }
        }
    };
}

/// Binds a [`TransitionWrite`]'s values in `TRANSITION_COLUMNS` order.
macro_rules! push_transition {
    ($b:ident, $t:ident) => {
        $b.push_bind(&$t.id)
            .push_bind($t.from)
            .push_bind($t.to)
            .push_bind($t.reason)
            .push_bind(&$t.message)
            .push_bind($t.at)
            .push_bind(&$t.cause)
    };
}

pub(super) use {push_hot, push_state, push_transition, sql_writes, update_rows};

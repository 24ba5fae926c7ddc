//! The reads behind the counts over time, for both databases: the census and a window's
//! transitions counted per (step, from, to), in one snapshot, the scan bounded by `seq`.
//!
//! Nothing indexes the history by time (migration 0006 dropped `transitions (at)`: every
//! transition pays for an index on its write path). `seq` grows with time, so the window's first
//! `seq` is found by bisecting the primary key, a few indexed lookups, and the scan reads from
//! there, filtered by `at` since the two orders can differ by a little.

/// How far out of time order a transition may be written (a write held back while the store
/// was down, a node's clock): the bisection looks for this much before the window.
pub(super) const SLACK_SECONDS: i64 = 15 * 60;

/// Each database's Unix seconds of `at`, truncated alike.
pub(super) fn epoch_seconds(backend: &str) -> &'static str {
    if backend == "postgres" {
        "CAST(FLOOR(EXTRACT(EPOCH FROM at)) AS BIGINT)"
    } else {
        "unixepoch(at)"
    }
}

macro_rules! sql_over_time {
    ($store:ty, $db:ty, $backend:literal) => {
        impl $store {
            async fn read_counts_over_time(
                &self,
                window: Window,
            ) -> Result<(Census, Vec<StepChanges>), StoreError> {
                let epoch = over_time::epoch_seconds($backend);
                let mut tx = self.pool.begin().await?;
                if $backend == "postgres" {
                    // The census and the history as of one moment, or a transition between the
                    // two reads would be undone from counts that never held it.
                    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        .execute(&mut *tx)
                        .await?;
                }
                let census = census_of(sqlx::query_as(CENSUS).fetch_all(&mut *tx).await?)?;
                let first =
                    Self::first_seq_from(&mut tx, epoch, window.start - over_time::SLACK_SECONDS)
                        .await?;
                let mut q = QueryBuilder::<$db>::new(format!("SELECT ({epoch} - "));
                q.push_bind(window.start)
                    .push(") / ")
                    .push_bind(window.step)
                    .push(
                        ", from_state, to_state, COUNT(*) FROM transitions \
                         WHERE seq >= ",
                    )
                    .push_bind(first)
                    .push(format!(" AND {epoch} >= "))
                    .push_bind(window.start)
                    .push(" GROUP BY 1, 2, 3");
                let rows: Vec<(i64, Option<String>, String, i64)> =
                    q.build_query_as().fetch_all(&mut *tx).await?;
                tx.commit().await?;
                let state = super::row::parse_state;
                let changes = rows
                    .into_iter()
                    .map(|(bucket, from, to, count)| {
                        Ok(StepChanges {
                            bucket,
                            from: from.as_deref().map(state).transpose()?,
                            to: state(&to)?,
                            count: count.cast_unsigned(),
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok((census, changes))
            }

            /// The first `seq` whose transition is at `since` or later, bisecting over `seq`
            /// (one primary-key lookup a step) as if `at` grew with it.
            async fn first_seq_from(
                tx: &mut sqlx::Transaction<'_, $db>,
                epoch: &str,
                since: i64,
            ) -> Result<i64, StoreError> {
                let (low, high): (Option<i64>, Option<i64>) =
                    sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM transitions")
                        .fetch_one(&mut **tx)
                        .await?;
                let (Some(mut low), Some(mut high)) = (low, high) else {
                    return Ok(0);
                };
                // Invariant: everything before `low` is older than `since`; `high + 1` is not.
                high += 1;
                while low < high {
                    let middle = low + (high - low) / 2;
                    let mut q = QueryBuilder::<$db>::new(format!(
                        "SELECT seq, {epoch} FROM transitions WHERE seq >= "
                    ));
                    q.push_bind(middle).push(" ORDER BY seq LIMIT 1");
                    let found: Option<(i64, i64)> =
                        q.build_query_as().fetch_optional(&mut **tx).await?;
                    match found {
                        Some((seq, at)) if at < since => low = seq + 1,
                        _ => high = middle,
                    }
                }
                Ok(low)
            }
        }
    };
}

pub(super) use sql_over_time;

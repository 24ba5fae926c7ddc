//! The pools' upkeep over their life: SQLite's background checkpoints, and a close that leaves
//! no connection open.

use std::time::Duration;

use sqlx::{ConnectOptions, Connection, Database, Pool, SqlitePool};
use tokio::time::Instant;

/// How often a read connection copies the write-ahead log back into the database file. SQLite
/// does it by default inside the commit that takes the log past 1,000 pages: on the one write
/// connection, where it was a tenth of that thread's time in a burst and every batch waited for
/// it. In the background it runs beside the writer (SQLite allows one checkpoint next to one
/// writer) and copies a page rewritten by many batches once.
const SQLITE_CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Checkpoints the write-ahead log every [`SQLITE_CHECKPOINT_EVERY`] until `stop`. PASSIVE: it
/// never waits for readers or the writer, and copies what it can.
pub(super) async fn checkpoint(pool: SqlitePool, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(SQLITE_CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(every.tick()).await.is_some() {
        let done = stop
            .run_until_cancelled(sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool))
            .await;
        if pool.is_closed() {
            return;
        }
        if let Some(Err(error)) = done {
            tracing::warn!(%error, "checkpointing the SQLite log failed; the writer will");
        }
    }
}

/// How long closing keeps trying ([`close_fully`], [`close_last`]) before it gives up on a
/// connection that will not come back (the process is stopping anyway; SQLite then replays its
/// log at the next start).
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// How often closing tries again.
const CLOSE_POLL: Duration = Duration::from_millis(5);

/// Runs `attempt` every [`CLOSE_POLL`] until it gives an outcome; `None` if [`CLOSE_DEADLINE`]
/// passed first.
async fn until_done<T, F: Future<Output = Option<T>>>(mut attempt: impl FnMut() -> F) -> Option<T> {
    let deadline = Instant::now() + CLOSE_DEADLINE;
    loop {
        if let Some(outcome) = attempt().await {
            return Some(outcome);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(CLOSE_POLL).await;
    }
}

/// Closes `pool` and returns once it holds no connection, or after [`CLOSE_DEADLINE`].
///
/// sqlx's `Pool::close` alone can return with a connection still open (sqlx issue 3217): a
/// dropped connection goes back to the pool in a spawned task, which can park it in the idle
/// queue after `close` drained that queue for the last time, or free the permit `close` waits
/// on before the connection itself is closed. Such a connection then closes only when the
/// process exits, and SQLite keeps its log file, because the last connection to close is the
/// one that folds the log in and removes it. Calling `close` again drains what arrived since.
pub(super) async fn close_fully<DB: Database>(pool: &Pool<DB>) {
    let emptied = until_done(move || async move {
        pool.close().await;
        (pool.size() == 0).then_some(())
    })
    .await;
    if emptied.is_none() {
        tracing::warn!(
            open = pool.size(),
            "database connections still open after closing the pool"
        );
    }
}

/// Opens one connection like `pool`'s and closes it, once every other is closed, so that it is
/// the last; again while the log is still there, until [`CLOSE_DEADLINE`]. Nothing to do for an
/// in-memory database, which goes with its last connection.
///
/// SQLite folds the log into the database file and removes it (and the shared-memory index)
/// when the last connection closes: the closing connection takes an exclusive lock to know it is
/// the last. Two that close at once each still see the other and both leave the log, and a pool
/// closes connections at once: those coming back from a query close on their own tasks, beside
/// the idle ones `close` closes. An empty pool does not mean every connection is closed either:
/// sqlx counts a connection dropped without `close` as gone at once, while its worker thread
/// closes SQLite's handle later (CI saw the log left behind so). One that finds the log still
/// there after closing was not the last, so the next try waits for the straggler to finish.
pub(super) async fn close_last(pool: &SqlitePool) {
    let options = pool.connect_options();
    let file = options.get_filename();
    if super::is_in_memory(file) {
        return;
    }
    let (options, log) = (&*options, &super::beside(file, "-wal"));
    let closed = until_done(move || async move {
        let closed = match options.connect().await {
            Ok(connection) => connection.close().await,
            Err(error) => Err(error),
        };
        // Closed but the log is still there: this one was not the last.
        (closed.is_err() || !log.exists()).then_some(closed)
    })
    .await;
    match closed {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            tracing::warn!(%error, "cannot fold SQLite's log in; the next start will");
        }
        None => {
            tracing::warn!("SQLite's log is still there after closing; the next start folds it in");
        }
    }
}

//! The write-behind batcher: drains the actors' changes, keeps only the latest record of each
//! collector and every transition, and writes them in one transaction per flush window. While the
//! database is down it keeps everything and retries with backoff; it never drops a change.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Batch, Store};
use crate::collector::persist::Change;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// A write that takes longer is treated as failed (and retried), so a hung database shows up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    pub flush_interval: Duration,
    /// Transitions held before the batcher stops taking changes (and the actors wait).
    pub max_pending: usize,
}

/// What the batcher is going through, for `/readyz`, logs and metrics.
#[derive(Debug)]
pub struct StoreHealth {
    degraded: AtomicBool,
    last_error: Mutex<Option<String>>,
    pending_transitions: AtomicUsize,
    written_transitions: AtomicU64,
    failed_writes: AtomicU64,
    /// Bumped after every write that landed: live readers of the store wake on it.
    flushes: tokio::sync::watch::Sender<u64>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        Self {
            degraded: AtomicBool::new(false),
            last_error: Mutex::new(None),
            pending_transitions: AtomicUsize::new(0),
            written_transitions: AtomicU64::new(0),
            failed_writes: AtomicU64::new(0),
            flushes: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl StoreHealth {
    /// `None` while writes succeed; the last error while they fail.
    pub fn degraded(&self) -> Option<String> {
        if !self.degraded.load(Ordering::Relaxed) {
            return None;
        }
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Some(last.clone().unwrap_or_default())
    }

    pub fn pending_transitions(&self) -> usize {
        self.pending_transitions.load(Ordering::Relaxed)
    }

    pub fn written_transitions(&self) -> u64 {
        self.written_transitions.load(Ordering::Relaxed)
    }

    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }

    /// Changes after every write that landed.
    pub fn flushes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.flushes.subscribe()
    }
}

/// The running batcher.
pub struct Writer {
    task: JoinHandle<()>,
    finish: CancellationToken,
    pub health: Arc<StoreHealth>,
}

impl Writer {
    pub fn spawn(
        store: Arc<dyn Store>,
        changes: mpsc::Receiver<Change>,
        settings: WriterSettings,
    ) -> Self {
        let finish = CancellationToken::new();
        let health = Arc::new(StoreHealth::default());
        let batcher = Batcher {
            store,
            changes,
            settings,
            pending: Batch::default(),
            finish: finish.clone(),
            health: Arc::clone(&health),
        };
        Self {
            task: tokio::spawn(batcher.run()),
            finish,
            health,
        }
    }

    /// Writes everything queued so far and stops; call it once no actor can produce more. Gives up
    /// after `deadline`, saying how much was not written.
    pub async fn finish(self, deadline: Duration) {
        self.finish.cancel();
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
            error!(
                transitions = self.health.pending_transitions(),
                "the database did not take the last writes before the shutdown timeout; they are lost"
            );
        }
    }
}

struct Batcher {
    store: Arc<dyn Store>,
    changes: mpsc::Receiver<Change>,
    settings: WriterSettings,
    pending: Batch,
    finish: CancellationToken,
    health: Arc<StoreHealth>,
}

impl Batcher {
    async fn run(mut self) {
        loop {
            if self.pending.is_empty() {
                tokio::select! {
                    change = self.changes.recv() => match change {
                        Some(change) => self.take(change),
                        None => return,
                    },
                    () = self.finish.cancelled() => {
                        self.take_queued();
                        if self.pending.is_empty() {
                            return;
                        }
                    }
                }
            }
            self.gather_until(Instant::now() + self.settings.flush_interval)
                .await;
            self.write_until_written().await;
            if self.finish.is_cancelled() {
                self.take_queued();
                if self.pending.is_empty() {
                    return;
                }
            }
        }
    }

    fn has_room(&self) -> bool {
        self.pending.transitions.len() < self.settings.max_pending
    }

    fn take(&mut self, change: Change) {
        match change {
            Change::Record(record) => {
                self.pending.records.insert(record.id, record);
            }
            Change::Transition {
                collector,
                transition,
            } => self.pending.transitions.push((collector, transition)),
            Change::Forget(id) => self.pending.forget(id),
        }
        self.health
            .pending_transitions
            .store(self.pending.transitions.len(), Ordering::Relaxed);
    }

    /// Everything already queued, without waiting (for the last flush at shutdown).
    fn take_queued(&mut self) {
        while let Ok(change) = self.changes.try_recv() {
            self.take(change);
        }
    }

    /// Takes changes until `deadline` (or shutdown), while the bound allows.
    async fn gather_until(&mut self, deadline: Instant) {
        loop {
            if !self.has_room() {
                tokio::time::sleep_until(deadline).await;
                return;
            }
            tokio::select! {
                change = self.changes.recv() => match change {
                    Some(change) => self.take(change),
                    None => return,
                },
                () = tokio::time::sleep_until(deadline) => return,
                () = self.finish.cancelled() => {
                    self.take_queued();
                    return;
                }
            }
        }
    }

    /// Writes the pending batch, retrying with backoff (and gathering meanwhile) until it lands.
    async fn write_until_written(&mut self) {
        let mut retry = FIRST_RETRY;
        loop {
            let batch = std::mem::take(&mut self.pending);
            let written = batch.transitions.len();
            let started = std::time::Instant::now();
            let result = tokio::time::timeout(WRITE_TIMEOUT, self.store.write(&batch)).await;
            metrics::histogram!(crate::telemetry::metrics::STORE_WRITE_SECONDS)
                .record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(Ok(())) => {
                    self.health
                        .written_transitions
                        .fetch_add(written as u64, Ordering::Relaxed);
                    self.health
                        .pending_transitions
                        .store(self.pending.transitions.len(), Ordering::Relaxed);
                    self.health.flushes.send_modify(|n| *n += 1);
                    if self.health.degraded.swap(false, Ordering::Relaxed) {
                        info!("the database is back; pending writes have landed");
                    }
                    return;
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("write took longer than {WRITE_TIMEOUT:?}"),
            };
            // Nothing is lost: the failed batch goes back under whatever came meanwhile.
            let mut restored = batch;
            restored.absorb(std::mem::take(&mut self.pending));
            self.pending = restored;
            self.health
                .pending_transitions
                .store(self.pending.transitions.len(), Ordering::Relaxed);
            self.health.failed_writes.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::telemetry::metrics::STORE_WRITE_FAILURES).increment(1);
            if !self.health.degraded.swap(true, Ordering::Relaxed) {
                warn!(%error, "database write failed; keeping every change and retrying");
            }
            *self
                .health
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(error);
            if !self.has_room() {
                warn!(
                    pending = self.pending.transitions.len(),
                    "store backlog full: collectors now wait for the database"
                );
            }
            self.gather_until(Instant::now() + retry).await;
            retry = (retry * 2).min(LAST_RETRY);
        }
    }
}

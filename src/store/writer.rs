//! The write-behind batcher: drains the actors' changes into batches (group commit: what came
//! during one write is the next) and writes each in one transaction (a large one, where the store
//! allows, as two at once: one per half of its collectors), then signals the barriers
//! queued with it (a reply that waits on one is sent only once its changes are committed; the
//! barrier of a claim whose writes the store refused is dropped instead). While the database is
//! down it keeps everything and retries with backoff. A batch the database refuses for its data
//! is split until the refused rows are found; those go to the quarantine, and every other row
//! lands. Writes the store fenced (their actor's claim was superseded) are reported back.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::batch::{Entry, Key};
use super::{Batch, Quarantined, Store, StoreError};
use crate::collector::CollectorId;
use crate::collector::persist::Change;
use crate::telemetry::metrics::{self, Metrics};

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// A write that takes longer is treated as failed (and retried), so a hung database shows up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Fenced writes waiting to be told to their actors; beyond it they are only logged.
const FENCED_QUEUE: usize = 1024;
/// Fenced claims remembered for their barriers. A fenced actor leaves as soon as it hears, so
/// only recent ones can still have a barrier coming; the bound keeps a long run's memory flat.
const FENCED_KEPT: usize = 4096;
/// How many collectors with a quarantined record write are remembered (`Batcher::stale`).
const STALE_KEPT: usize = 4096;

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
    quarantined: AtomicU64,
    fenced: AtomicU64,
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
            quarantined: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
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

    /// Rows the database refused for their data, kept in the quarantine table.
    pub fn quarantined(&self) -> u64 {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Writes refused because their actor's claim on the record was superseded.
    pub fn fenced(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
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
    /// The batcher's own runtime (see [`own_runtime`]); `None` if it could not be made.
    runtime: Option<tokio::runtime::Runtime>,
}

/// A runtime of one thread for the batcher alone. A write is a dozen statements, each a round
/// trip to the database and back to the batcher's task; on the server's runtime every return
/// waited behind thousands of connection tasks, so under load a batch took twice its database
/// time and the write path idled. Database connections made on the other runtime work here too:
/// a socket stays with the runtime that opened it, which outlives this one.
fn own_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("opampd-writer")
        .enable_all()
        .build()
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async context forbids; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Writer {
    /// Starts the batcher. Fenced writes are reported on the returned receiver.
    pub fn spawn(
        store: Arc<dyn Store>,
        changes: mpsc::Receiver<Change>,
        settings: WriterSettings,
        metrics: Metrics,
    ) -> (Self, mpsc::Receiver<Key>) {
        let finish = CancellationToken::new();
        let health = Arc::new(StoreHealth::default());
        let (fenced, fenced_rx) = mpsc::channel(FENCED_QUEUE);
        let batcher = Batcher {
            store,
            changes,
            settings,
            pending: Batch::default(),
            barriers: Vec::new(),
            refused: Refused::default(),
            stale: BTreeSet::new(),
            finish: finish.clone(),
            health: Arc::clone(&health),
            fenced,
            metrics,
        };
        let (task, runtime) = match own_runtime() {
            Ok(runtime) => (runtime.spawn(batcher.run()), Some(runtime)),
            Err(err) => {
                warn!(error = %err, "no thread of its own for the store writer; sharing the server's");
                (tokio::spawn(batcher.run()), None)
            }
        };
        let writer = Self {
            task,
            finish,
            health,
            runtime,
        };
        (writer, fenced_rx)
    }

    /// Writes everything queued so far and stops; call it once no actor can produce more. Gives up
    /// after `deadline`, saying how much was not written.
    pub async fn finish(mut self, deadline: Duration) {
        self.finish.cancel();
        if tokio::time::timeout(deadline, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
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
    /// Signalled once everything taken so far has landed, each with the claim it confirms.
    barriers: Vec<(oneshot::Sender<()>, Option<Key>)>,
    /// Claims whose writes the store refused.
    refused: Refused,
    /// Collectors a record write of which was quarantined: their next record write is written
    /// whole, since the stored descriptive part may be older than their actor believes
    /// (ADR 0084). At most [`STALE_KEPT`].
    stale: BTreeSet<CollectorId>,
    finish: CancellationToken,
    health: Arc<StoreHealth>,
    fenced: mpsc::Sender<Key>,
    metrics: Metrics,
}

/// Why a batch did not land, and what of it is still to be written.
struct Unlanded {
    error: String,
    rest: Batch,
}

impl Batcher {
    async fn run(mut self) {
        // Group commit: changes that arrived while a write ran have already waited that long, so
        // they go at once; only a first change after an idle spell waits out the window for
        // company. Under load the write itself is the window, and no time is spent idle.
        let mut backlog = false;
        loop {
            if self.is_idle() {
                tokio::select! {
                    change = self.changes.recv() => match change {
                        Some(change) => self.take(change),
                        None => return,
                    },
                    () = self.finish.cancelled() => {
                        self.take_queued();
                        if self.is_idle() {
                            return;
                        }
                    }
                }
            }
            if !backlog {
                self.gather_until(Instant::now() + self.settings.flush_interval)
                    .await;
            }
            self.write_until_written().await;
            if self.finish.is_cancelled() {
                self.take_queued();
                if self.is_idle() {
                    return;
                }
            }
            self.take_waiting();
            backlog = !self.is_idle();
        }
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.barriers.is_empty()
    }

    fn has_room(&self) -> bool {
        self.pending.transition_count() < self.settings.max_pending
    }

    fn take(&mut self, change: Change) {
        match change {
            Change::Barrier { done, claim } => self.barriers.push((done, claim)),
            change => self.pending.take(change),
        }
        self.health
            .pending_transitions
            .store(self.pending.transition_count(), Ordering::Relaxed);
    }

    /// Everything already queued, without waiting (for the last flush at shutdown).
    fn take_queued(&mut self) {
        while let Ok(change) = self.changes.try_recv() {
            self.take(change);
        }
    }

    /// What is already queued, while the bound allows, without waiting.
    fn take_waiting(&mut self) {
        while self.has_room() {
            match self.changes.try_recv() {
                Ok(change) => self.take(change),
                Err(_) => return,
            }
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
            let mut batch = std::mem::take(&mut self.pending);
            batch.write_whole(&mut self.stale);
            let barriers = std::mem::take(&mut self.barriers);
            let started = std::time::Instant::now();
            let landed = self.land(batch).await;
            self.metrics
                .histogram(metrics::STORE_WRITE_SECONDS)
                .record(started.elapsed().as_secs_f64());
            let Unlanded { error, rest } = match landed {
                Ok(()) => {
                    for (done, claim) in barriers {
                        if claim.is_some_and(|c| self.refused.contains(&c)) {
                            // Not committed: the reply waiting on it must not say so.
                            drop(done);
                        } else {
                            let _ = done.send(());
                        }
                    }
                    self.health
                        .pending_transitions
                        .store(self.pending.transition_count(), Ordering::Relaxed);
                    self.health.flushes.send_modify(|n| *n += 1);
                    if self.health.degraded.swap(false, Ordering::Relaxed) {
                        info!("the database is back; pending writes have landed");
                    }
                    return;
                }
                Err(unlanded) => unlanded,
            };
            // Nothing is lost: what did not land goes back under whatever came meanwhile, and the
            // barriers wait for all of it.
            let mut restored = rest;
            restored.absorb(std::mem::take(&mut self.pending));
            self.pending = restored;
            let newer = std::mem::replace(&mut self.barriers, barriers);
            self.barriers.extend(newer);
            self.health
                .pending_transitions
                .store(self.pending.transition_count(), Ordering::Relaxed);
            self.health.failed_writes.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .counter(metrics::STORE_WRITE_FAILURES, &[])
                .increment(1);
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
                    pending = self.pending.transition_count(),
                    "store backlog full: collectors now wait for the database"
                );
            }
            self.gather_until(Instant::now() + retry).await;
            retry = next_retry(retry);
        }
    }

    /// Writes `batch`. A large batch on a store with several write lanes is first tried as two
    /// transactions at once, one per half of its collectors (ADR 0075). When the database refuses
    /// its data, the piece is split until the refused rows are found; they are quarantined and
    /// the rest lands. Any other failure returns what has not landed yet.
    async fn land(&mut self, batch: Batch) -> Result<(), Unlanded> {
        // Each piece with its attempt, when one was already made.
        let mut queue = VecDeque::new();
        match spread(batch, self.store.write_lanes()) {
            Ok((a, b)) => {
                let (first, second) = tokio::join!(self.attempt(&a), self.attempt(&b));
                // A half that landed is counted first: a failure returns whatever is still
                // queued, which must not hold it.
                let mut tried = [(a, first), (b, second)];
                tried.sort_by_key(|(_, attempt)| !matches!(attempt, Attempt::Landed(_)));
                queue.extend(tried.map(|(piece, attempt)| (piece, Some(attempt))));
            }
            Err(whole) => queue.push_back((whole, None)),
        }
        while let Some((piece, tried)) = queue.pop_front() {
            let attempt = match tried {
                Some(attempt) => attempt,
                None => self.attempt(&piece).await,
            };
            let err = match attempt {
                Attempt::Landed(fenced) => {
                    self.landed(&piece, fenced);
                    continue;
                }
                Attempt::Refused(err) => err,
                Attempt::Failed(error) => return Err(unlanded(error, piece, queue)),
            };
            match piece.split() {
                Ok((first, second)) => {
                    queue.push_front((second, None));
                    queue.push_front((first, None));
                }
                Err(single) => {
                    let mut pieces = single.pieces();
                    if pieces.len() > 1 {
                        for piece in pieces.drain(..).rev() {
                            queue.push_front((piece, None));
                        }
                        continue;
                    }
                    let Some(refused) = pieces.pop() else {
                        continue;
                    };
                    // A record that could not be created takes its dependants with it: nothing
                    // of that collector can be stored without the record.
                    let mut refused = vec![refused];
                    if refused[0].creates() {
                        let id = refused[0].collector();
                        while queue.front().is_some_and(|(p, _)| p.collector() == id) {
                            refused.extend(queue.pop_front().map(|(p, _)| p));
                        }
                    }
                    if let Err(failure) = self.quarantine(&refused, &err).await {
                        let mut rest = Batch::default();
                        for piece in refused {
                            rest.absorb(piece);
                        }
                        return Err(unlanded(failure.to_string(), rest, queue));
                    }
                    for id in refused.iter().flat_map(Batch::record_writers) {
                        if self.stale.len() < STALE_KEPT {
                            self.stale.insert(id);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One transaction for `piece`, within [`WRITE_TIMEOUT`].
    async fn attempt(&self, piece: &Batch) -> Attempt {
        match tokio::time::timeout(WRITE_TIMEOUT, self.store.write(piece)).await {
            Ok(Ok(fenced)) => Attempt::Landed(fenced),
            Ok(Err(err)) if err.is_data_error() => Attempt::Refused(err),
            Ok(Err(err)) => Attempt::Failed(err.to_string()),
            Err(_) => Attempt::Failed(format!("write took longer than {WRITE_TIMEOUT:?}")),
        }
    }

    fn landed(&mut self, piece: &Batch, fenced: Vec<Key>) {
        self.health
            .written_transitions
            .fetch_add(piece.transition_count() as u64, Ordering::Relaxed);
        self.report_fenced(fenced);
    }

    async fn quarantine(&self, refused: &[Batch], err: &StoreError) -> Result<(), StoreError> {
        let at = SystemTime::now();
        let rows: Vec<Quarantined> = refused
            .iter()
            .filter_map(|piece| {
                Some(Quarantined {
                    collector: piece.collector()?,
                    kind: kind_of(piece),
                    error: err.to_string(),
                    payload: format!("{piece:?}").into_bytes(),
                    at,
                })
            })
            .collect();
        self.store.quarantine(&rows).await?;
        for row in &rows {
            error!(collector_id = %row.collector, kind = row.kind, error = %row.error,
                "the database refused a row for its data; it is kept in the quarantine table");
        }
        self.health
            .quarantined
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.metrics
            .counter(metrics::STORE_QUARANTINED, &[])
            .increment(rows.len() as u64);
        Ok(())
    }

    /// Counts and reports each refused claim once: its writes may span several batches, and the
    /// actor leaves on the first report.
    fn report_fenced(&mut self, fenced: Vec<Key>) {
        for key in fenced {
            if !self.refused.insert(key) {
                continue;
            }
            self.health.fenced.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .counter(metrics::STORE_FENCED, &[])
                .increment(1);
            warn!(collector_id = %key.0, epoch = key.1,
                "a write under a superseded claim was refused");
            // A full queue only delays the actor's discovery to its next write.
            let _ = self.fenced.try_send(key);
        }
    }
}

/// The most recent claims the store refused writes of.
#[derive(Default)]
struct Refused {
    order: VecDeque<Key>,
    keys: HashSet<Key>,
}

impl Refused {
    /// `false` if the claim was already refused.
    fn insert(&mut self, key: Key) -> bool {
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > FENCED_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.keys.remove(&oldest);
            }
        }
        true
    }

    fn contains(&self, key: &Key) -> bool {
        self.keys.contains(key)
    }
}

/// How one transaction went.
enum Attempt {
    /// Committed; these keys were fenced.
    Landed(Vec<Key>),
    /// The database refused the data: split to find the rows.
    Refused(StoreError),
    /// Anything else (the database down, the write too slow): keep it all and retry.
    Failed(String),
}

/// Below this many collectors' records a batch goes in one transaction: a second one would cost
/// a commit for little work shared.
const SPREAD_FROM: usize = 256;

/// The two halves of `batch` to write at once, when the store has the lanes and the batch is
/// large enough; else the batch back, whole. Pure, so it is tested directly.
fn spread(batch: Batch, lanes: usize) -> Result<(Batch, Batch), Batch> {
    if lanes < 2 || batch.entries.len() < SPREAD_FROM {
        return Err(batch);
    }
    batch.split()
}

/// The wait before the next attempt: twice the last, up to [`LAST_RETRY`].
fn next_retry(last: Duration) -> Duration {
    (last * 2).min(LAST_RETRY)
}

fn unlanded(
    error: String,
    mut piece: Batch,
    queue: VecDeque<(Batch, Option<Attempt>)>,
) -> Unlanded {
    for (later, _) in queue {
        piece.absorb(later);
    }
    Unlanded { error, rest: piece }
}

/// What a single-row piece holds, as the quarantine names it.
fn kind_of(piece: &Batch) -> &'static str {
    match piece.entries.values().next() {
        Some(Entry::Forget) => "forget",
        Some(Entry::Write(w)) if w.hot.is_some() || w.create || w.touch.is_some() => "record",
        Some(Entry::Write(_)) => "facts",
        None => "transition",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 ms doubling to 5 s, then 5 s for as long as the database is away (the waits
    /// themselves are shown in `tests/it/persistence.rs`).
    #[test]
    fn retries_back_off_from_100_ms_doubling_to_5_s() {
        let waits: Vec<u128> = std::iter::successors(Some(FIRST_RETRY), |w| Some(next_retry(*w)))
            .take(9)
            .map(|w| w.as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    fn forgetting(collectors: u128) -> Batch {
        let mut batch = Batch::default();
        for n in 0..collectors {
            let id = crate::collector::CollectorId(uuid::Uuid::from_u128(n));
            batch.entries.insert((id, 1), Entry::Forget);
        }
        batch
    }

    /// Two transactions only where a second lane exists and the batch is worth the second commit.
    #[test]
    fn a_large_batch_is_spread_over_two_lanes_and_a_small_one_is_not() {
        let large = SPREAD_FROM as u128;
        let (a, b) = spread(forgetting(large), 2).expect("spread");
        assert_eq!(a.entries.len() + b.entries.len(), SPREAD_FROM);
        assert!(a.entries.keys().all(|k| !b.entries.contains_key(k)));
        assert_eq!(a.entries.len(), SPREAD_FROM / 2);
        assert!(spread(forgetting(large), 1).is_err(), "one lane");
        assert!(spread(forgetting(large - 1), 2).is_err(), "too small");
    }
}

//! Claims for actors, in batches: each collector's actor asks for its record alone, and the loader
//! answers all the questions that arrived while the previous claim ran, or within a few
//! milliseconds of the first, with one statement, so a fleet connecting at once costs a few
//! round trips, not one each.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::Store;
use crate::collector::CollectorId;
use crate::collector::persist::{Claimed, LoadError, Records};
use crate::telemetry::metrics::{self, Metrics};

/// Most records claimed by one statement.
const MOST: usize = 500;
/// Claims running at once: enough to keep the pool busy, few enough to leave it for writes.
const CONCURRENT: usize = 4;
const QUEUE: usize = 4096;
/// How long a question that finds the loader idle waits for others to share its claim (ADR
/// 0078). A claim that takes a millisecond carried one collector each in a ramp of 1,000 a
/// second: on PostgreSQL, 11 statements per new collector from claims and the small writes that
/// followed them, against 2.8 with this wait.
const GATHER: Duration = Duration::from_millis(5);

type Reply = oneshot::Sender<Result<Option<Claimed>, LoadError>>;

struct Request {
    id: CollectorId,
    reply: Reply,
}

/// The actors find known collectors here.
pub struct StoreRecords {
    requests: mpsc::Sender<Request>,
}

impl StoreRecords {
    /// Starts the loader; it stops when this is dropped. It counts its statements, and the
    /// collectors they asked for, in `metrics`: their ratio is how well claims are shared.
    pub fn spawn(store: Arc<dyn Store>, metrics: &Metrics) -> Self {
        let (requests, rx) = mpsc::channel(QUEUE);
        let counted = Counted {
            statements: metrics.counter(metrics::STORE_CLAIMS, &[]),
            collectors: metrics.counter(metrics::STORE_CLAIMED, &[]),
        };
        tokio::spawn(run(store, rx, counted));
        Self { requests }
    }
}

#[async_trait]
impl Records for StoreRecords {
    async fn claim(&self, id: CollectorId) -> Result<Option<Claimed>, LoadError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { id, reply })
            .await
            .map_err(|_| LoadError("the loader has stopped".into()))?;
        answer
            .await
            .map_err(|_| LoadError("the loader has stopped".into()))?
    }
}

/// The claim statements made, and the collectors they asked for.
struct Counted {
    statements: ::metrics::Counter,
    collectors: ::metrics::Counter,
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Request>, counted: Counted) {
    let permits = Arc::new(Semaphore::new(CONCURRENT));
    let mut held: Vec<Request> = Vec::new();
    loop {
        if held.is_empty() {
            match rx.recv().await {
                Some(first) => held.push(first),
                None => return,
            }
            let until = Instant::now() + GATHER;
            while held.len() < MOST {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(request)) => held.push(request),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        while held.len() < MOST {
            match rx.try_recv() {
                Ok(request) => held.push(request),
                Err(_) => break,
            }
        }
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        // One claim per collector per statement; a second question for the same collector waits
        // for the next round (it cannot share the first one's epoch).
        let mut seen = HashSet::new();
        let (batch, rest): (Vec<Request>, Vec<Request>) =
            held.drain(..).partition(|r| seen.insert(r.id));
        held = rest;
        counted.statements.increment(1);
        counted.collectors.increment(batch.len() as u64);
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let ids: Vec<CollectorId> = batch.iter().map(|r| r.id).collect();
            let result = store.claim(&ids).await;
            drop(permit);
            match result {
                Ok(claimed) => {
                    let mut claimed: std::collections::HashMap<CollectorId, Claimed> =
                        claimed.into_iter().map(|c| (c.record.id, c)).collect();
                    for request in batch {
                        let _ = request.reply.send(Ok(claimed.remove(&request.id)));
                    }
                }
                Err(err) => {
                    let err = LoadError(err.to_string());
                    for request in batch {
                        let _ = request.reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

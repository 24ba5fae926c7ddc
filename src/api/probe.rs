//! What `/readyz` and `/metrics` say about the store, read in the background: a probe or a scrape
//! answers from memory, so however often they are called the database sees one ping and one
//! count per `api.probe_interval`.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Census, Store};

/// How long one reading waits for the store.
const BUDGET: Duration = Duration::from_secs(2);

#[derive(Debug, Default, Clone)]
pub struct Reading {
    /// Why the store did not answer the last ping, if it did not.
    pub unreachable: Option<String>,
    /// Collectors per state and per facet at the last count; `None` when the count failed.
    pub counts: Option<Census>,
}

#[derive(Debug, Default)]
pub struct Probe {
    last: RwLock<Reading>,
}

impl Probe {
    /// Takes a first reading, then keeps reading every `interval` until `stop`.
    pub async fn start(
        store: Arc<dyn Store>,
        interval: Duration,
        stop: CancellationToken,
    ) -> Arc<Self> {
        let probe = Arc::new(Self::default());
        probe.read(store.as_ref()).await;
        let task = Arc::clone(&probe);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(interval) => task.read(store.as_ref()).await,
                }
            }
        });
        probe
    }

    async fn read(&self, store: &dyn Store) {
        let unreachable = match tokio::time::timeout(BUDGET, store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(_) => Some(format!("no answer within {BUDGET:?}")),
        };
        let counts = match unreachable {
            None => tokio::time::timeout(BUDGET, store.census())
                .await
                .ok()
                .and_then(Result::ok),
            Some(_) => None,
        };
        *self.last.write().unwrap_or_else(PoisonError::into_inner) = Reading {
            unreachable,
            counts,
        };
    }

    pub fn last(&self) -> Reading {
        self.last
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

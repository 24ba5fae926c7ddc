//! The rollout engine runs on one node at a time: the one holding the `rollouts` lease. It starts
//! the engine (from the stored progress) when it takes the lease and stops it before the lease
//! could pass to another node.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::router::ROLLOUTS;
use crate::config::ClusterConfig;
use crate::fleet::engine::{Fleet, FleetError};
use crate::store::cluster::ClusterStore;

/// Whether an engine whose last renewal was at `renewed` must stop at `now`: another node may
/// take the lease once it expires (`ttl` after renewal), so the engine stops one renewal
/// interval before that.
pub fn must_yield(renewed: Instant, now: Instant, ttl: Duration, interval: Duration) -> bool {
    now.duration_since(renewed) + interval >= ttl
}

/// Holds or waits for the lease until `shutdown`, running the engine (made by `start`) while it
/// is held and publishing it in `slot`.
pub async fn lead<S, F>(
    store: ClusterStore,
    settings: ClusterConfig,
    start: S,
    slot: watch::Sender<Option<Fleet>>,
    shutdown: CancellationToken,
) where
    S: Fn(CancellationToken) -> F,
    F: Future<Output = Result<Fleet, FleetError>>,
{
    let ttl = settings.node_timeout;
    let interval = settings.renew_interval;
    let mut running: Option<CancellationToken> = None;
    let mut renewed = Instant::now();
    loop {
        let asked = Instant::now();
        match store.lease(ROLLOUTS, ttl, SystemTime::now()).await {
            Ok(Some(term)) => {
                renewed = asked;
                if running.is_none() {
                    let token = shutdown.child_token();
                    match start(token.clone()).await {
                        Ok(fleet) => {
                            info!(term, "this node runs the rollout engine");
                            slot.send_replace(Some(fleet));
                            running = Some(token);
                        }
                        Err(err) => {
                            warn!(%err, "cannot start the rollout engine; letting the lease go");
                            token.cancel();
                            let _ = store.release(ROLLOUTS).await;
                        }
                    }
                }
            }
            Ok(None) => {
                if let Some(token) = running.take() {
                    warn!("another node holds the rollout lease; this node's engine stops");
                    slot.send_replace(None);
                    token.cancel();
                }
            }
            Err(err) => {
                warn!(%err, "cannot renew the rollout lease");
                if running.is_some() && must_yield(renewed, Instant::now(), ttl, interval) {
                    warn!("the rollout lease may pass to another node; this node's engine stops");
                    slot.send_replace(None);
                    if let Some(token) = running.take() {
                        token.cancel();
                    }
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => break,
        }
    }
    slot.send_replace(None);
    if let Some(token) = running.take() {
        token.cancel();
        if let Err(err) = store.release(ROLLOUTS).await {
            warn!(%err, "cannot let the rollout lease go; it expires on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_stops_a_renewal_before_the_lease_can_pass() {
        let t0 = Instant::now();
        let (ttl, every) = (Duration::from_secs(10), Duration::from_secs(2));
        assert!(!must_yield(t0, t0 + Duration::from_secs(7), ttl, every));
        assert!(must_yield(t0, t0 + Duration::from_secs(8), ttl, every));
        assert!(must_yield(t0, t0 + Duration::from_secs(30), ttl, every));
    }
}

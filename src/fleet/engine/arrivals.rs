//! Collectors that arrive (first contact, or back): a target sent while they were away is sent
//! again, a collector whose configuration stands gets it to keep, and a late collector joins the
//! newest completed rollout whose selector matches it.

use std::time::SystemTime;

use tracing::info;

use super::Engine;
use super::standing_from;
use crate::collector::{CollectorId, ConfigOffer, Event};
use crate::fleet::offer::What;
use crate::fleet::rollout::{Outcome, Payload, Status, verdict};

impl Engine {
    /// Collectors that returned while no engine ran (before this one started, or between two
    /// nodes' engines) are treated as arriving now; targets sent before are looked at again, in
    /// case their verdict came while no engine watched.
    pub(super) async fn catch_up(&mut self) {
        let open: Vec<(CollectorId, usize)> = self.open.iter().map(|(c, r)| (*c, *r)).collect();
        let mut touched = std::collections::BTreeSet::new();
        for (id, r) in open {
            let Some(p) = self.rollouts[r].place(id) else {
                continue;
            };
            match self.rollouts[r].target(p).outcome {
                Outcome::Waiting => {
                    if self.router.view(id).await.is_some_and(|c| c.connected) {
                        self.arrived(id).await;
                    }
                }
                outcome if outcome.in_flight() => {
                    self.examine((r, p)).await;
                }
                _ => continue,
            }
            touched.insert(r);
        }
        for r in touched {
            self.advance(r).await;
        }
    }

    /// A collector connected (first time or again). If a rollout sent it its payload and has no
    /// verdict yet, it is sent again: what was queued for it did not survive a restart, and a
    /// collector that had applied it says so in this very report. Otherwise the newest completed
    /// rollout whose selector matches it, and that it is not part of, sends it its configuration.
    pub(super) async fn arrived(&mut self, id: CollectorId) {
        if let Some(&r) = self.open.get(&id) {
            let Some(p) = self.rollouts[r].place(id) else {
                return;
            };
            let outcome = self.rollouts[r].target(p).outcome;
            let sent = outcome.in_flight() || outcome == Outcome::Waiting;
            if !sent || self.what(r).await.is_err() {
                return;
            }
            let Some(record) = self.router.view(id).await else {
                return;
            };
            let hash = self.offers[&r].hash().to_vec();
            if verdict(&record, self.rollouts[r].rollout(), &hash).is_some() {
                return;
            }
            let outcome = self.send(r, id).await;
            let now = SystemTime::now();
            // Its clock starts again: the payload is sent anew.
            self.set((r, p), |t| {
                t.outcome = Outcome::Waiting;
                t.sent(outcome, now);
            });
            info!(rollout = %self.rollouts[r].id(), collector_id = %id, "configuration sent again to a returning collector");
            return;
        }
        if let Some(offer) = self.standing(id).await {
            // The actor adopts it if it has none, and sends it again if the collector reports
            // another hash (R5).
            let _ = self.router.apply(id, Event::Standing { offer }).await;
        }
        self.join_late(id).await;
    }

    /// A collector that no completed rollout has seen joins the newest whose selector matches.
    async fn join_late(&mut self, id: CollectorId) {
        // Most arrivals are collectors every completed rollout already has: no read for them.
        if !self
            .rollouts
            .iter()
            .any(|l| l.status() == Status::Completed && l.place(id).is_none())
        {
            return;
        }
        // Labels are the store's alone. A collector seen for the first time may not be stored yet
        // (its arrival is published before its record is committed); it has no labels then.
        let Ok(stored) = self.store.load(id).await else {
            return;
        };
        let labels = stored.map(|c| c.labels).unwrap_or_default();
        let Some(r) = self.rollouts.iter().rposition(|l| {
            l.status() == Status::Completed && l.selector().is_some_and(|s| s.matches(&labels))
        }) else {
            return;
        };
        if self.rollouts[r].place(id).is_some() {
            return;
        }
        let Some(record) = self.router.view(id).await else {
            return;
        };
        let Ok(what) = self.what(r).await else {
            return;
        };
        let mut target = what.plan(&record);
        let pending = target.outcome == Outcome::Pending;
        if pending {
            target.batch = Some(self.rollouts[r].rollout().batches_started);
        }
        // Stored (and indexed) as it stands, then sent.
        target.outcome = if pending {
            Outcome::Waiting
        } else {
            target.outcome
        };
        let p = self.rollouts[r].push(target);
        self.unsaved.insert(r);
        if pending {
            let outcome = self.send(r, id).await;
            let now = SystemTime::now();
            self.set((r, p), |t| t.sent(outcome, now));
        }
        let outcome = self.rollouts[r].target(p).outcome;
        info!(rollout = %self.rollouts[r].id(), collector_id = %id, outcome = outcome.as_str(), "a late collector joins a completed rollout");
    }

    /// The configuration the newest rollout that had this collector apply (or already run) one
    /// stands for; a cancelled rollout stands for nothing.
    async fn standing(&mut self, id: CollectorId) -> Option<ConfigOffer> {
        let r = self.rollouts.iter().rposition(|l| {
            matches!(l.rollout().payload, Payload::Configuration { .. })
                && standing_from(l.status())
                && l.place(id).is_some_and(|p| {
                    matches!(l.target(p).outcome, Outcome::Applied | Outcome::Skipped)
                })
        })?;
        match self.what(r).await.ok()? {
            What::Configuration { offer, .. } => Some(offer.clone()),
            What::Package(_) => None,
        }
    }
}

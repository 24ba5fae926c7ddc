//! A rollout moving on: reading one target's verdict from its collector's record, ending targets
//! whose verdict is overdue, and, when a running rollout's batch has settled, sending the next
//! batch, pausing it, or completing it.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::time::SystemTime;

use tracing::info;

use super::{Engine, Place, Withdrawal};
use crate::collector::{CollectorId, Event};
use crate::fleet::live::Step;
use crate::fleet::offer::offer_of;
use crate::fleet::rollout::{Outcome, Status, Target, verdict};

impl Engine {
    /// Reads the verdict of one sent target from its collector's record.
    pub(super) async fn examine(&mut self, (r, p): Place) {
        let target = self.rollouts[r].target(p).clone();
        if !(target.outcome.in_flight() || target.outcome == Outcome::Waiting) {
            return;
        }
        let Some(record) = self.router.view(target.collector).await else {
            return;
        };
        let Ok(what) = self.what(r).await else {
            return;
        };
        let (awaited, in_flight) = (what.awaited_by(&record), what.in_flight());
        let hash = what.hash().to_vec();
        let live = &self.rollouts[r];
        let rollback = live.rollout().options.rollback;
        if let Some((outcome, error)) = verdict(&record, live.rollout(), &hash) {
            let rolled_back =
                outcome == Outcome::Failed && rollback && self.roll_back(&target).await;
            self.set((r, p), |t| {
                t.outcome = outcome;
                t.error = error;
                if outcome == Outcome::Incompatible {
                    t.missing.clone_from(&record.missing_components);
                }
                t.rolled_back |= rolled_back;
            });
        } else if record.connected && awaited {
            let now = SystemTime::now();
            self.set((r, p), |t| t.sent(in_flight, now));
        } else if !record.connected {
            self.set((r, p), |t| t.outcome = Outcome::Waiting);
        }
    }

    /// Ends the targets whose verdict is overdue as `timed_out` (after one last look at their
    /// record), and moves their rollouts on.
    pub(super) async fn expire(&mut self) {
        let now = SystemTime::now();
        let mut touched = BTreeSet::new();
        while let Some(&Reverse((due, r, p))) = self.deadlines.peek() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            // Settled, or sent again since (a later deadline stands for it).
            if self.rollouts[r].due(p, self.default_timeout) != Some(due)
                || self.rollouts[r].status() == Status::Cancelled
            {
                continue;
            }
            self.examine((r, p)).await;
            if !self.rollouts[r].target(p).outcome.in_flight() {
                touched.insert(r);
                continue;
            }
            let default = self.default_timeout;
            let mut ended = false;
            self.set_with((r, p), |live, p| ended = live.time_out(p, default, now));
            if !ended {
                continue;
            }
            // Its offer stops being sent again (a written one's verdict is still read by the
            // collector's record, not by the rollout); carried out on the next tick.
            let hash = self
                .offers
                .get(&r)
                .map(|w| w.hash().to_vec())
                .unwrap_or_default();
            let live = &self.rollouts[r];
            info!(rollout = %live.id(), collector_id = %live.target(p).collector, "a target gave no verdict in time");
            self.withdrawals.push(Withdrawal {
                rollout: live.id().to_owned(),
                hash,
                collector: live.target(p).collector,
            });
            touched.insert(r);
        }
        for r in touched {
            self.advance(r).await;
        }
    }

    /// Moves a running rollout on as far as it goes now ([`Live::step`]). Batches whose
    /// collectors are all away settle at once, so the next is sent in the same turn.
    pub(super) async fn advance(&mut self, r: usize) {
        loop {
            let step = self.rollouts[r].step();
            let live = &self.rollouts[r];
            match step {
                Step::Wait => return,
                Step::Paused(reason) => {
                    info!(rollout = %live.id(), %reason, "rollout paused itself");
                    self.unsaved.insert(r);
                    return;
                }
                Step::Completed => {
                    info!(rollout = %live.id(), progress = ?live.summary().progress, "rollout completed");
                    self.unsaved.insert(r);
                    return;
                }
                Step::Send { batch, places } => {
                    self.unsaved.insert(r);
                    for p in places {
                        let id = self.rollouts[r].target(p).collector;
                        let outcome = self.send(r, id).await;
                        let now = SystemTime::now();
                        self.set((r, p), |t| {
                            t.batch = Some(batch);
                            t.sent(outcome, now);
                        });
                    }
                }
            }
        }
    }

    /// Sends the rollout's payload to one collector; its outcome as far as known now.
    pub(super) async fn send(&mut self, r: usize, id: CollectorId) -> Outcome {
        let rollout = self.rollouts[r].id().to_owned();
        let Ok(what) = self.what(r).await else {
            return Outcome::Pending;
        };
        let (event, in_flight) = (what.event(&rollout), what.in_flight());
        match self.router.apply(id, event).await {
            Ok(true) => match self.router.view(id).await {
                Some(view) if view.connected => in_flight,
                _ => Outcome::Waiting,
            },
            // No actor here: the collector is away, and hears of it when it returns.
            Ok(false) | Err(_) => Outcome::Waiting,
        }
    }

    /// Sends a failed collector the configuration it ran before, when that is known.
    async fn roll_back(&self, target: &Target) -> bool {
        let Some(previous) = &target.previous_hash else {
            return false;
        };
        let Ok(Some(version)) = self.store.configuration_by_hash(previous).await else {
            return false;
        };
        let event = Event::SendConfiguration {
            offer: offer_of(&version),
            required: Vec::new(),
            rollout: None,
        };
        matches!(self.router.apply(target.collector, event).await, Ok(true))
    }
}

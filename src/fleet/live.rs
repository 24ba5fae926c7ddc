//! A rollout as the engine holds it: its targets indexed by collector, counts per outcome kept as
//! targets change, where the next batch starts, and what changed since it was last stored, so
//! that every step costs what it touches, not the size of the rollout.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use super::rollout::{Outcome, Rollout, Status, Target};
use super::summary::RolloutSummary;
use crate::collector::CollectorId;
use crate::selector::Selector;

#[derive(Debug, Clone)]
pub struct Live {
    rollout: Rollout,
    index: HashMap<CollectorId, usize>,
    counts: [usize; Outcome::ALL.len()],
    /// No target before this place is Pending: batches are taken in order.
    next_pending: usize,
    /// Targets changed since the rollout was last stored.
    dirty: BTreeSet<usize>,
    /// Its own fields changed since it was last stored.
    summary_dirty: bool,
    /// Parsed once: late collectors are matched against it.
    selector: Option<Selector>,
}

impl Live {
    /// A rollout read back from the store: nothing to write yet.
    pub fn stored(rollout: Rollout) -> Self {
        let mut counts = [0; Outcome::ALL.len()];
        let mut index = HashMap::with_capacity(rollout.targets.len());
        for (i, target) in rollout.targets.iter().enumerate() {
            counts[target.outcome.index()] += 1;
            index.insert(target.collector, i);
        }
        let selector = Selector::parse(&rollout.selector).ok();
        Self {
            rollout,
            index,
            counts,
            next_pending: 0,
            dirty: BTreeSet::new(),
            summary_dirty: false,
            selector,
        }
    }

    /// A rollout just planned: all of it is to be written.
    pub fn new(rollout: Rollout) -> Self {
        let mut live = Self::stored(rollout);
        live.dirty = (0..live.rollout.targets.len()).collect();
        live.summary_dirty = true;
        live
    }

    pub fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    pub fn id(&self) -> &str {
        &self.rollout.id
    }

    pub fn status(&self) -> Status {
        self.rollout.status
    }

    pub fn selector(&self) -> Option<&Selector> {
        self.selector.as_ref()
    }

    /// The place of `collector`'s target, if the rollout has one.
    pub fn place(&self, collector: CollectorId) -> Option<usize> {
        self.index.get(&collector).copied()
    }

    pub fn target(&self, place: usize) -> &Target {
        &self.rollout.targets[place]
    }

    pub fn targets(&self) -> &[Target] {
        &self.rollout.targets
    }

    /// Changes one target; counts follow, and it is written with the next save if it changed.
    pub fn update(&mut self, place: usize, change: impl FnOnce(&mut Target)) {
        let target = &mut self.rollout.targets[place];
        let before = target.clone();
        change(target);
        if *target != before {
            self.counts[before.outcome.index()] -= 1;
            self.counts[target.outcome.index()] += 1;
            self.dirty.insert(place);
            self.summary_dirty = true;
        }
    }

    /// Changes the rollout's own fields (status, reason, batches, accepted failures).
    pub fn update_rollout(&mut self, change: impl FnOnce(&mut Rollout)) {
        let targets = std::mem::take(&mut self.rollout.targets);
        change(&mut self.rollout);
        self.rollout.targets = targets;
        self.summary_dirty = true;
    }

    /// Adds a late collector's target; its place.
    pub fn push(&mut self, target: Target) -> usize {
        let place = self.rollout.targets.len();
        self.counts[target.outcome.index()] += 1;
        self.index.insert(target.collector, place);
        self.rollout.targets.push(target);
        self.dirty.insert(place);
        self.summary_dirty = true;
        place
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.counts[outcome.index()]
    }

    /// Targets sent to a connected collector whose verdict has not come.
    pub fn in_flight(&self) -> usize {
        self.count(Outcome::Configuring) + self.count(Outcome::Upgrading)
    }

    pub fn failures(&self) -> usize {
        self.count(Outcome::Failed) + self.count(Outcome::TimedOut)
    }

    pub fn too_many_failures(&self) -> bool {
        self.failures()
            .saturating_sub(self.rollout.failures_accepted)
            > self.rollout.options.max_errors
    }

    /// The places of the next `size` Pending targets, in order.
    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        if self.count(Outcome::Pending) == 0 {
            return Vec::new();
        }
        let targets = &self.rollout.targets;
        let mut batch = Vec::new();
        let mut place = self.next_pending;
        while place < targets.len() && batch.len() < size {
            if targets[place].outcome == Outcome::Pending {
                batch.push(place);
            }
            place += 1;
        }
        self.next_pending = place;
        if batch.is_empty() {
            // Counted but not found after the cursor: look again from the start once.
            self.next_pending = 0;
            return self.next_batch_from_start(size);
        }
        batch
    }

    fn next_batch_from_start(&mut self, size: usize) -> Vec<usize> {
        let batch: Vec<usize> = (0..self.rollout.targets.len())
            .filter(|&p| self.rollout.targets[p].outcome == Outcome::Pending)
            .take(size)
            .collect();
        self.next_pending = batch.last().map_or(0, |p| p + 1);
        batch
    }

    /// What a running rollout does next, its own part done: pauses itself on too many failures,
    /// waits while verdicts are awaited, completes when nothing is left to send, or starts its
    /// next batch (counted started; the targets are the engine's to send).
    pub fn step(&mut self) -> Step {
        if self.status() != Status::Running {
            return Step::Wait;
        }
        if self.too_many_failures() {
            let what = if self.count(Outcome::TimedOut) == 0 {
                "failed the configuration"
            } else {
                "failed or gave no verdict in time"
            };
            let reason = format!(
                "{} collectors {what}, more than max_errors ({}) allows",
                self.failures() - self.rollout.failures_accepted,
                self.rollout.options.max_errors
            );
            self.update_rollout(|r| {
                r.status = Status::Paused;
                r.reason.clone_from(&reason);
            });
            return Step::Paused(reason);
        }
        if self.in_flight() > 0 {
            return Step::Wait;
        }
        let batch = self.rollout.batches_started;
        let places = self.next_batch(self.rollout.options.batch_size(batch));
        if places.is_empty() {
            self.update_rollout(|r| r.status = Status::Completed);
            return Step::Completed;
        }
        self.update_rollout(|r| r.batches_started += 1);
        Step::Send { batch, places }
    }

    /// Cancels an active rollout: every open target ends `cancelled`. Answers the collectors that
    /// must have the rollout's payload withdrawn, or `None` when it is not running or paused.
    pub fn cancel(&mut self) -> Option<Vec<CollectorId>> {
        if !self.status().is_active() {
            return None;
        }
        let mut withdraw = Vec::new();
        for place in 0..self.rollout.targets.len() {
            if self.target(place).outcome.is_open() {
                withdraw.push(self.target(place).collector);
                self.update(place, |t| t.outcome = Outcome::Cancelled);
            }
        }
        self.update_rollout(|r| {
            r.status = Status::Cancelled;
            "cancelled by an operator".clone_into(&mut r.reason);
        });
        Some(withdraw)
    }

    /// Ends the target at `place` as `timed_out` if its verdict is still awaited at `now`;
    /// whether it did.
    pub fn time_out(&mut self, place: usize, default: Duration, now: SystemTime) -> bool {
        if self.due(place, default).is_none_or(|due| due > now) {
            return false;
        }
        let timeout = self.timeout(default);
        self.update(place, |t| {
            t.outcome = Outcome::TimedOut;
            t.error = format!("no verdict within {} s", timeout.as_secs());
        });
        true
    }

    /// The rollout's timeout for verdicts, `default` where it has none of its own.
    pub fn timeout(&self, default: Duration) -> Duration {
        self.rollout.timeout(default)
    }

    /// When the target at `place` is overdue, if it awaits a verdict.
    pub fn due(&self, place: usize, default: Duration) -> Option<SystemTime> {
        let target = self.target(place);
        if !target.outcome.in_flight() {
            return None;
        }
        Some(target.sent_at? + self.timeout(default))
    }

    /// What is stored as the rollout's own row: its fields and its counts.
    pub fn summary(&self) -> RolloutSummary {
        let progress = Outcome::ALL
            .iter()
            .map(|o| (o.as_str().to_owned(), self.count(*o)))
            .collect();
        RolloutSummary::with_progress(&self.rollout, progress)
    }

    /// Whether anything is to be written.
    pub fn is_dirty(&self) -> bool {
        self.summary_dirty || !self.dirty.is_empty()
    }

    /// The targets to write with the next save.
    pub fn changed(&self) -> Vec<&Target> {
        self.dirty
            .iter()
            .map(|&p| &self.rollout.targets[p])
            .collect()
    }

    /// Everything was written.
    pub fn saved(&mut self) {
        self.dirty.clear();
        self.summary_dirty = false;
    }
}

/// What a running rollout does next ([`Live::step`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing now: not running, or verdicts are awaited.
    Wait,
    /// It paused itself, for this reason.
    Paused(String),
    Completed,
    /// Batch `batch` is to be sent to these targets.
    Send {
        batch: usize,
        places: Vec<usize>,
    },
}

impl Outcome {
    /// Its place in [`Outcome::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::rollout::tests::{rollout, target};

    fn live(outcomes: &[Outcome]) -> Live {
        let targets = (0u128..)
            .zip(outcomes)
            .map(|(n, o)| target(n, *o))
            .collect();
        Live::stored(rollout(Status::Running, targets))
    }

    #[test]
    fn outcome_indexes_follow_all() {
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
    }

    #[test]
    fn counts_follow_every_change_and_only_changes_are_written() {
        let mut l = live(&[Outcome::Pending, Outcome::Pending, Outcome::Applied]);
        assert!(!l.is_dirty(), "as stored");
        assert_eq!(l.count(Outcome::Pending), 2);
        l.update(0, |t| t.outcome = Outcome::Pending);
        assert!(!l.is_dirty(), "no change, nothing to write");
        l.update(1, |t| t.outcome = Outcome::Configuring);
        assert_eq!((l.count(Outcome::Pending), l.in_flight()), (1, 1));
        let late = l.push(target(9, Outcome::Waiting));
        assert_eq!(l.place(CollectorId(uuid::Uuid::from_u128(9))), Some(late));
        let written: Vec<u128> = l
            .changed()
            .iter()
            .map(|t| t.collector.0.as_u128())
            .collect();
        assert_eq!(written, [1, 9]);
        assert_eq!(l.summary().progress["waiting"], 1);
        assert_eq!(l.summary().progress["configuring"], 1);
        l.saved();
        assert!(!l.is_dirty());
        assert_eq!(
            l.summary(),
            RolloutSummary::of(l.rollout()),
            "counted as a full count would"
        );
    }

    #[test]
    fn batches_are_taken_in_order_and_each_target_once() {
        let mut l = live(&[
            Outcome::Skipped,
            Outcome::Pending,
            Outcome::Pending,
            Outcome::Incompatible,
            Outcome::Pending,
        ]);
        let first = l.next_batch(2);
        assert_eq!(first, [1, 2]);
        for p in first {
            l.update(p, |t| t.outcome = Outcome::Configuring);
        }
        assert_eq!(l.next_batch(10), [4]);
        l.update(4, |t| t.outcome = Outcome::Configuring);
        assert!(l.next_batch(10).is_empty());
        // A target made Pending behind the cursor is still found.
        l.update(0, |t| t.outcome = Outcome::Pending);
        assert_eq!(l.next_batch(10), [0]);
    }

    #[test]
    fn a_running_rollout_sends_batches_until_done_and_pauses_on_failures() {
        let mut l = live(&[Outcome::Pending; 5]);
        l.update_rollout(|r| {
            r.options.initial_batch = 2;
            r.batches_started = 0;
        });
        let Step::Send { batch, places } = l.step() else {
            panic!("the first batch")
        };
        assert_eq!((batch, places.as_slice()), (0, [0, 1].as_slice()));
        for p in places {
            l.update(p, |t| t.outcome = Outcome::Configuring);
        }
        assert_eq!(l.step(), Step::Wait, "verdicts awaited");
        l.update(0, |t| t.outcome = Outcome::Applied);
        l.update(1, |t| t.outcome = Outcome::Failed);
        let Step::Paused(reason) = l.step() else {
            panic!("max_errors 0: one failure pauses")
        };
        assert_eq!(
            reason,
            "1 collectors failed the configuration, more than max_errors (0) allows"
        );
        assert_eq!(l.step(), Step::Wait, "paused: nothing moves");
        l.update_rollout(|r| {
            r.status = Status::Running;
            r.failures_accepted = 1;
        });
        let Step::Send { batch, places } = l.step() else {
            panic!("resumed: the next batch")
        };
        assert_eq!(
            (batch, places.len()),
            (1, 3),
            "2 × 5, capped by what is left"
        );
        for p in places {
            l.update(p, |t| t.outcome = Outcome::Applied);
        }
        assert_eq!(l.step(), Step::Completed);
        assert_eq!(l.status(), Status::Completed);
    }

    #[test]
    fn a_cancel_ends_every_open_target_and_names_them_for_withdrawal() {
        // Every outcome up to Skipped: the four open ones first.
        let outcomes = &Outcome::ALL[..8];
        for status in [Status::Running, Status::Paused] {
            let mut l = live(outcomes);
            l.update_rollout(|r| r.status = status);
            let withdraw = l.cancel().expect("an active rollout cancels");
            assert_eq!(l.status(), Status::Cancelled);
            assert_eq!(
                withdraw,
                (0u128..4)
                    .map(|n| CollectorId(uuid::Uuid::from_u128(n)))
                    .collect::<Vec<_>>()
            );
            assert_eq!(l.count(Outcome::Cancelled), 4);
            assert_eq!(l.count(Outcome::Applied), 1, "settled targets keep theirs");
            assert!(l.targets().iter().all(|t| !t.outcome.is_open()));
        }
        for status in [Status::Completed, Status::Cancelled, Status::DryRun] {
            let mut l = live(outcomes);
            l.update_rollout(|r| r.status = status);
            assert_eq!(l.cancel(), None);
            assert_eq!(l.status(), status, "unchanged");
        }
    }

    #[test]
    fn a_target_without_a_verdict_times_out_when_due() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut l = live(&[
            Outcome::Configuring,
            Outcome::Upgrading,
            Outcome::Waiting,
            Outcome::Applied,
        ]);
        l.update_rollout(|r| r.options.timeout_seconds = 60);
        l.update(0, |t| t.sent_at = Some(t0));
        l.update(1, |t| t.sent_at = Some(t0 + Duration::from_secs(50)));
        let default = Duration::from_secs(5);
        assert_eq!(l.due(0, default), Some(t0 + Duration::from_mins(1)));
        assert!(!l.time_out(0, default, t0 + Duration::from_secs(59)));
        assert!(l.time_out(0, default, t0 + Duration::from_mins(1)));
        assert_eq!(l.target(0).outcome, Outcome::TimedOut);
        assert_eq!(l.target(0).error, "no verdict within 60 s");
        assert!(
            !l.time_out(1, default, t0 + Duration::from_mins(1)),
            "sent later"
        );
        assert!(
            !l.time_out(2, default, t0 + Duration::from_hours(1)),
            "never sent to a connected collector: no clock"
        );
        assert!(
            !l.time_out(3, default, t0 + Duration::from_hours(1)),
            "settled"
        );
        assert_eq!(l.failures(), 1);
    }

    #[test]
    fn failures_beyond_those_accepted_pause() {
        let mut l = live(&[Outcome::Failed, Outcome::TimedOut, Outcome::Applied]);
        assert_eq!(l.failures(), 2);
        assert!(l.too_many_failures());
        l.update_rollout(|r| r.failures_accepted = 2);
        assert!(!l.too_many_failures());
        assert_eq!(l.targets().len(), 3, "its targets stay");
    }
}

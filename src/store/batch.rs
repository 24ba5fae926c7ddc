//! What the batcher writes in one transaction, and how changes fold into it: the latest hot part
//! of each record, the facts parts that changed, the newest `last_seen`, and every transition in
//! order. Pure, so the folding and the splitting (to find a row the database refuses) are tested
//! directly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use crate::collector::facts::FactParts;
use crate::collector::persist::{Change, Epoch, Hot};
use crate::collector::{CollectorId, Transition};

/// Whose write it is: a collector, at the epoch of the claim the write was made under.
pub type Key = (CollectorId, Epoch);

/// What one collector's actor wants stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Write(Box<Write>),
    /// Delete the record, its facts and its history.
    Forget,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Write {
    /// The store has never had the record: insert it (and never over one that exists).
    pub create: bool,
    /// The hot part's descriptive part is written too, not only its state part: some write
    /// folded in changed it (ADR 0084).
    pub whole: bool,
    pub hot: Option<Box<Hot>>,
    pub facts: FactParts,
    /// A newer `last_seen` with nothing else new.
    pub touch: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub id: CollectorId,
    pub epoch: Epoch,
    pub transition: Transition,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub entries: BTreeMap<Key, Entry>,
    /// In the order they happened.
    pub transitions: Vec<Logged>,
}

fn later(a: Option<SystemTime>, b: SystemTime) -> SystemTime {
    a.map_or(b, |a| a.max(b))
}

impl Write {
    fn fold(&mut self, newer: Write) {
        self.create |= newer.create;
        self.whole |= newer.whole;
        if let Some(hot) = newer.hot {
            self.hot = Some(hot);
            self.touch = None;
        }
        self.facts.merge(newer.facts);
        if let Some(seen) = newer.touch {
            match &mut self.hot {
                // A heartbeat after the record was queued: the record carries the newer time.
                Some(hot) => hot.last_seen = Some(later(hot.last_seen, seen)),
                None => self.touch = Some(later(self.touch, seen)),
            }
        }
    }
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.transitions.is_empty()
    }

    /// Folds one change in. Barriers are the batcher's business, not the batch's.
    pub fn take(&mut self, change: Change) {
        match change {
            Change::Record {
                hot,
                facts,
                epoch,
                create,
                whole,
            } => self.write(
                (hot.id, epoch),
                Write {
                    create,
                    whole,
                    hot: Some(hot),
                    facts: *facts,
                    touch: None,
                },
            ),
            Change::Touch {
                id,
                epoch,
                last_seen,
            } => self.write(
                (id, epoch),
                Write {
                    touch: Some(last_seen),
                    ..Write::default()
                },
            ),
            Change::Transition {
                id,
                epoch,
                transition,
            } => self.transitions.push(Logged {
                id,
                epoch,
                transition,
            }),
            Change::Forget { id, epoch } => self.forget((id, epoch)),
            Change::Barrier { .. } => {}
        }
    }

    fn write(&mut self, key: Key, write: Write) {
        match self.entries.get_mut(&key) {
            Some(Entry::Write(pending)) => pending.fold(write),
            // Nothing is written after a forget under the same claim.
            Some(Entry::Forget) => {}
            None => {
                self.entries.insert(key, Entry::Write(Box::new(write)));
            }
        }
    }

    /// What is pending for the record goes, its history with it.
    fn forget(&mut self, key: Key) {
        self.transitions.retain(|t| (t.id, t.epoch) != key);
        self.entries.insert(key, Entry::Forget);
    }

    /// Adds `later` on top: its writes fold over ours, its transitions follow ours.
    pub fn absorb(&mut self, later: Batch) {
        for (key, entry) in later.entries {
            match entry {
                Entry::Write(write) => self.write(key, *write),
                Entry::Forget => self.forget(key),
            }
        }
        self.transitions.extend(later.transitions);
    }

    /// Transitions and records in the batch, for the backlog gauge and logs.
    pub fn transition_count(&self) -> usize {
        self.transitions.len()
    }

    /// Two halves by collector: each collector's rows, under every epoch, stay in one half, in
    /// their order. For the writer to find by bisection the rows a database refuses, and to
    /// write a large batch in two transactions at once. `Err` when the batch holds a single
    /// collector.
    pub fn split(self) -> Result<(Batch, Batch), Batch> {
        let mut ids: BTreeSet<CollectorId> = self.entries.keys().map(|(id, _)| *id).collect();
        ids.extend(self.transitions.iter().map(|t| t.id));
        if ids.len() < 2 {
            return Err(self);
        }
        let half = ids.len() / 2;
        let first: BTreeSet<CollectorId> = ids.into_iter().take(half).collect();
        let mut a = Batch::default();
        let mut b = Batch::default();
        for ((id, epoch), entry) in self.entries {
            let half = if first.contains(&id) { &mut a } else { &mut b };
            half.entries.insert((id, epoch), entry);
        }
        for t in self.transitions {
            let half = if first.contains(&t.id) {
                &mut a
            } else {
                &mut b
            };
            half.transitions.push(t);
        }
        Ok((a, b))
    }

    /// A single collector's batch as its separate rows, in the order they must be written: the
    /// record, its facts, then each transition.
    pub fn pieces(self) -> Vec<Batch> {
        let mut pieces = Vec::new();
        for (key, entry) in self.entries {
            match entry {
                Entry::Write(mut write) => {
                    let facts = std::mem::take(&mut write.facts);
                    if write.create || write.hot.is_some() || write.touch.is_some() {
                        pieces.push(Batch {
                            entries: BTreeMap::from([(key, Entry::Write(write))]),
                            transitions: Vec::new(),
                        });
                    }
                    if !facts.is_empty() {
                        pieces.push(Batch {
                            entries: BTreeMap::from([(
                                key,
                                Entry::Write(Box::new(Write {
                                    facts,
                                    ..Write::default()
                                })),
                            )]),
                            transitions: Vec::new(),
                        });
                    }
                }
                Entry::Forget => pieces.push(Batch {
                    entries: BTreeMap::from([(key, Entry::Forget)]),
                    transitions: Vec::new(),
                }),
            }
        }
        for t in self.transitions {
            pieces.push(Batch {
                entries: BTreeMap::new(),
                transitions: vec![t],
            });
        }
        pieces
    }

    /// The collectors this batch writes a record for.
    pub fn record_writers(&self) -> impl Iterator<Item = CollectorId> + '_ {
        self.entries
            .iter()
            .filter_map(|((id, _), entry)| match entry {
                Entry::Write(write) if write.hot.is_some() => Some(*id),
                _ => None,
            })
    }

    /// Marks whole the record write of every collector in `stale`, and takes it out: a
    /// collector whose record write was refused may have a stored descriptive part older than
    /// its actor believes (ADR 0084).
    pub fn write_whole(&mut self, stale: &mut BTreeSet<CollectorId>) {
        if stale.is_empty() {
            return;
        }
        for ((id, _), entry) in &mut self.entries {
            if let Entry::Write(write) = entry
                && write.hot.is_some()
                && stale.remove(id)
            {
                write.whole = true;
            }
        }
    }

    /// Whether this batch creates a record (a piece others depend on).
    pub fn creates(&self) -> bool {
        self.entries
            .values()
            .any(|e| matches!(e, Entry::Write(w) if w.create))
    }

    /// The collector a single-collector batch is about.
    pub fn collector(&self) -> Option<CollectorId> {
        self.entries
            .keys()
            .next()
            .map(|(id, _)| *id)
            .or_else(|| self.transitions.first().map(|t| t.id))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::collector::persist::Control;
    use crate::collector::{Capabilities, Health, Reason, State};

    fn id(n: u128) -> CollectorId {
        CollectorId(uuid::Uuid::from_u128(n))
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn hot(n: u128, state: State, seen: u64) -> Box<Hot> {
        Box::new(Hot {
            id: id(n),
            state,
            state_since: Some(at(0)),
            state_reason: None,
            state_message: String::new(),
            connected: true,
            transport: None,
            connected_since: None,
            last_seen: Some(at(seen)),
            capabilities: Capabilities(0),
            sequence_num: None,
            name: None,
            host_name: None,
            version: None,
            facets: crate::collector::facets::Facets::default(),
            control: Control::default(),
        })
    }

    fn record(n: u128, state: State, seen: u64, create: bool) -> Change {
        record_as(n, state, seen, create, create)
    }

    fn record_as(n: u128, state: State, seen: u64, create: bool, whole: bool) -> Change {
        Change::Record {
            hot: hot(n, state, seen),
            facts: Box::default(),
            epoch: 1,
            create,
            whole,
        }
    }

    fn transition(n: u128, to: State) -> Change {
        Change::Transition {
            id: id(n),
            epoch: 1,
            transition: Transition {
                from: None,
                to,
                reason: Reason::Initial,
                message: String::new(),
                at: at(0),
                cause: None,
            },
        }
    }

    fn write(batch: &Batch, n: u128) -> &Write {
        match &batch.entries[&(id(n), 1)] {
            Entry::Write(w) => w,
            Entry::Forget => panic!("forgotten"),
        }
    }

    #[test]
    fn a_state_only_write_after_a_whole_one_is_whole_and_a_stale_collector_is_written_whole() {
        let state_only = |n, state| record_as(n, state, 1, false, false);
        let mut batch = Batch::default();
        batch.take(state_only(1, State::Connected));
        assert!(!write(&batch, 1).whole);
        batch.take(record_as(1, State::Error, 2, false, true));
        batch.take(state_only(1, State::Connected));
        assert!(
            write(&batch, 1).whole,
            "a whole write folded in stays whole"
        );

        let mut batch = Batch::default();
        batch.take(state_only(2, State::Connected));
        batch.take(state_only(3, State::Connected));
        batch.take(transition(4, State::Connected));
        let mut stale = BTreeSet::from([id(2), id(4)]);
        batch.write_whole(&mut stale);
        assert!(write(&batch, 2).whole);
        assert!(!write(&batch, 3).whole);
        assert_eq!(
            stale,
            BTreeSet::from([id(4)]),
            "kept until a record write of its own"
        );
        assert_eq!(batch.record_writers().collect::<Vec<_>>(), [id(2), id(3)]);
    }

    #[test]
    fn the_latest_record_wins_a_create_stays_a_create_and_transitions_all_stay() {
        let mut batch = Batch::default();
        batch.take(record(1, State::Connected, 1, true));
        batch.take(transition(1, State::Connected));
        batch.take(record(1, State::Error, 2, false));
        batch.take(transition(1, State::Error));
        let w = write(&batch, 1);
        assert!(w.create, "the row still has to be inserted");
        assert_eq!(w.hot.as_ref().unwrap().state, State::Error);
        assert_eq!(batch.transitions.len(), 2);
    }

    #[test]
    fn a_heartbeat_after_a_record_moves_its_last_seen_and_never_back() {
        let mut batch = Batch::default();
        batch.take(record(1, State::Connected, 5, false));
        for seen in [9, 7] {
            batch.take(Change::Touch {
                id: id(1),
                epoch: 1,
                last_seen: at(seen),
            });
        }
        let w = write(&batch, 1);
        assert_eq!(w.hot.as_ref().unwrap().last_seen, Some(at(9)));
        assert_eq!(w.touch, None);
        let mut touches = Batch::default();
        touches.take(Change::Touch {
            id: id(2),
            epoch: 1,
            last_seen: at(3),
        });
        assert_eq!(write(&touches, 2).touch, Some(at(3)));
        assert!(
            write(&touches, 2).hot.is_none(),
            "a touch writes nothing else"
        );
    }

    #[test]
    fn facts_fold_part_by_part() {
        let mut batch = Batch::default();
        let health = |e: &str| Health {
            last_error: e.into(),
            ..Health::default()
        };
        for e in ["a", "b"] {
            batch.take(Change::Record {
                hot: hot(1, State::Error, 1),
                facts: Box::new(FactParts {
                    health: Some(health(e)),
                    ..FactParts::default()
                }),
                epoch: 1,
                create: false,
                whole: false,
            });
        }
        assert_eq!(write(&batch, 1).facts.health, Some(health("b")));
    }

    #[test]
    fn forgetting_drops_what_was_pending_and_nothing_follows_it() {
        let mut batch = Batch::default();
        batch.take(record(1, State::Disconnected, 1, false));
        batch.take(transition(1, State::Disconnected));
        batch.take(transition(2, State::Connected));
        batch.take(Change::Forget {
            id: id(1),
            epoch: 1,
        });
        batch.take(record(1, State::Connected, 2, false));
        assert_eq!(batch.entries[&(id(1), 1)], Entry::Forget);
        assert_eq!(batch.transitions.len(), 1);
        assert_eq!(batch.transitions[0].id, id(2));
    }

    #[test]
    fn splitting_keeps_each_collectors_rows_together_and_pieces_come_in_order() {
        let mut batch = Batch::default();
        for n in 1..=5 {
            batch.take(record(n, State::Connected, 1, true));
            batch.take(transition(n, State::Connected));
        }
        let (a, b) = batch.clone().split().unwrap();
        assert_eq!(a.entries.len() + b.entries.len(), 5);
        for half in [&a, &b] {
            for t in &half.transitions {
                assert!(half.entries.contains_key(&(t.id, t.epoch)));
            }
        }
        let mut whole = a;
        whole.absorb(b);
        assert_eq!(whole.entries, batch.entries);

        // A collector claimed again within the batch has rows under two epochs: they stay
        // together, so two halves written at once never touch one collector.
        let at_epoch_2 = |change: Change| match change {
            Change::Transition { id, transition, .. } => Change::Transition {
                id,
                epoch: 2,
                transition,
            },
            Change::Record {
                hot,
                facts,
                create,
                whole,
                ..
            } => Change::Record {
                hot,
                facts,
                epoch: 2,
                create,
                whole,
            },
            other => other,
        };
        let mut reclaimed = batch.clone();
        // Collector 3, in the middle: halves by claim key would part its two epochs.
        reclaimed.take(at_epoch_2(transition(3, State::Error)));
        reclaimed.take(at_epoch_2(record(3, State::Error, 2, false)));
        let (a, b) = reclaimed.split().unwrap();
        let holds_3 = |h: &Batch| h.entries.keys().any(|(n, _)| *n == id(3));
        assert!(holds_3(&a) != holds_3(&b), "collector 3 in one half only");
        for half in [&a, &b] {
            assert_eq!(
                half.transitions.iter().any(|t| t.id == id(3)),
                holds_3(half),
                "collector 3's transitions with its records"
            );
        }

        let mut single = Batch::default();
        single.take(Change::Record {
            hot: hot(9, State::Error, 1),
            facts: Box::new(FactParts {
                health: Some(Health::default()),
                ..FactParts::default()
            }),
            epoch: 1,
            create: true,
            whole: true,
        });
        single.take(transition(9, State::Connected));
        single.take(transition(9, State::Error));
        let single = single.split().unwrap_err();
        let pieces = single.pieces();
        assert_eq!(pieces.len(), 4, "record, facts, two transitions");
        assert!(pieces[0].creates() && write(&pieces[0], 9).facts.is_empty());
        assert!(write(&pieces[1], 9).hot.is_none() && !pieces[1].creates());
        assert_eq!(pieces[3].transitions[0].transition.to, State::Error);
    }
}

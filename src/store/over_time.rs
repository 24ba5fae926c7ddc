//! The fleet's counts per state over a past window, derived from the history rather than
//! sampled: the current counts are exact, and each transition A→B at time t says the collector
//! was in A just before t (in no state at all when A is absent: it did not exist yet). Walking
//! back from now over the window's transitions gives the counts at every earlier point.

use std::collections::BTreeMap;

use crate::collector::State;

/// The seven states, one slot each.
const STATES: usize = State::ALL.len();

/// A window of `steps` equal steps of `step` seconds, ending now: points `0..=steps`, point `k`
/// at `start + k * step` (Unix seconds), the last one being now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: i64,
    pub step: i64,
    pub steps: usize,
}

impl Window {
    /// The window of whole `step`s that fits in `seconds` before `now` (all in Unix seconds).
    pub fn ending(now: i64, seconds: i64, step: i64) -> Self {
        let steps = (seconds / step.max(1)).max(1);
        Self {
            start: now - steps * step,
            step,
            steps: usize::try_from(steps).unwrap_or(usize::MAX),
        }
    }

    /// The time of point `k`, in Unix seconds.
    pub fn at(&self, k: usize) -> i64 {
        self.start + i64::try_from(k).unwrap_or(i64::MAX) * self.step
    }
}

/// How many transitions `from` → `to` happened in step `bucket` of a window: at a time `t` with
/// `start + bucket * step <= t < start + (bucket + 1) * step` (later ones in the last step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepChanges {
    pub bucket: i64,
    pub from: Option<State>,
    pub to: State,
    pub count: u64,
}

/// The counts per state at each point of `window`, oldest first, from the counts `now` and the
/// window's transitions. A point's counts are those just before its instant (a transition at
/// exactly that time is not yet counted), except the last point, which is `now` itself.
///
/// When part of the history is missing (a collector forgotten takes its history with it, and
/// leaves the current counts too, so it is absent from every point), a count that would go
/// below zero is shown as zero rather than wrapping.
pub fn counts_over_time(
    now: &BTreeMap<State, u64>,
    window: Window,
    changes: &[StepChanges],
) -> Vec<BTreeMap<State, u64>> {
    let index = |s: State| State::ALL.iter().position(|&x| x == s).unwrap_or(0);
    let mut running = [0i64; STATES];
    for (state, n) in now {
        running[index(*state)] = i64::try_from(*n).unwrap_or(i64::MAX);
    }
    // Per step, the net change its transitions made to each state.
    let last = i64::try_from(window.steps).unwrap_or(i64::MAX) - 1;
    let mut per_step = vec![[0i64; STATES]; window.steps];
    for change in changes {
        if change.bucket < 0 {
            continue;
        }
        let Ok(step) = usize::try_from(change.bucket.min(last)) else {
            continue;
        };
        let n = i64::try_from(change.count).unwrap_or(i64::MAX);
        let delta = &mut per_step[step];
        delta[index(change.to)] += n;
        if let Some(from) = change.from {
            delta[index(from)] -= n;
        }
    }
    let shown = |counts: &[i64; STATES]| -> BTreeMap<State, u64> {
        State::ALL
            .iter()
            .zip(counts)
            .map(|(s, n)| (*s, u64::try_from(*n).unwrap_or(0)))
            .collect()
    };
    let mut points = vec![shown(&running)];
    for delta in per_step.iter().rev() {
        for (count, d) in running.iter_mut().zip(delta) {
            *count -= d;
        }
        points.push(shown(&running));
    }
    points.reverse();
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(pairs: &[(State, u64)]) -> BTreeMap<State, u64> {
        let mut all: BTreeMap<State, u64> = State::ALL.iter().map(|s| (*s, 0)).collect();
        all.extend(pairs.iter().copied());
        all
    }

    #[test]
    fn a_window_holds_whole_steps_ending_now() {
        let w = Window::ending(10_000, 3_600, 700);
        assert_eq!(w.steps, 5);
        assert_eq!(w.at(0), 10_000 - 3_500);
        assert_eq!(w.at(5), 10_000);
    }

    #[test]
    fn walking_back_undoes_each_step_s_transitions() {
        use State::*;
        let window = Window {
            start: 0,
            step: 10,
            steps: 3,
        };
        // One collector appeared in step 0 and failed in step 2; another appeared in step 1.
        let changes = [
            StepChanges {
                bucket: 0,
                from: None,
                to: Connected,
                count: 1,
            },
            StepChanges {
                bucket: 1,
                from: None,
                to: Connected,
                count: 1,
            },
            StepChanges {
                bucket: 2,
                from: Some(Connected),
                to: Error,
                count: 1,
            },
        ];
        let now = counts(&[(Connected, 1), (Error, 1)]);
        let points = counts_over_time(&now, window, &changes);
        assert_eq!(
            points,
            [
                counts(&[]),
                counts(&[(Connected, 1)]),
                counts(&[(Connected, 2)]),
                now.clone(),
            ]
        );
    }

    #[test]
    fn missing_history_shows_zero_not_a_wrapped_count() {
        let window = Window {
            start: 0,
            step: 10,
            steps: 1,
        };
        let changes = [StepChanges {
            bucket: 7,
            from: Some(State::Pending),
            to: State::Connected,
            count: 2,
        }];
        let points = counts_over_time(&counts(&[]), window, &changes);
        assert_eq!(points[0], counts(&[(State::Pending, 2)]));
    }

    fn state() -> impl Strategy<Value = State> {
        (0..7usize).prop_map(|i| State::ALL[i])
    }

    proptest! {
        /// Against the plain reading: each collector's state at each point, from its own
        /// history, counted.
        #[test]
        fn matches_each_collector_s_state_at_each_point(
            histories in prop::collection::vec(
                prop::collection::vec((0..100i64, state()), 1..6), 0..12),
            step in 1..30i64,
        ) {
            let window = Window::ending(100, 100, step);
            let mut now = BTreeMap::new();
            let mut truth = vec![counts(&[]); window.steps + 1];
            let mut buckets: BTreeMap<(i64, Option<State>, State), u64> = BTreeMap::new();
            for history in &histories {
                let mut history = history.clone();
                history.sort_by_key(|(t, _)| *t);
                let mut from = None;
                for &(t, to) in &history {
                    if t >= window.start {
                        let bucket = (t - window.start) / window.step;
                        *buckets.entry((bucket, from, to)).or_default() += 1;
                    }
                    from = Some(to);
                }
                *now.entry(history[history.len() - 1].1).or_default() += 1;
                for (k, point) in truth.iter_mut().enumerate().take(window.steps) {
                    let before = history.iter().take_while(|(t, _)| *t < window.at(k)).last();
                    if let Some((_, s)) = before {
                        *point.entry(*s).or_default() += 1;
                    }
                }
            }
            truth[window.steps] = counts(&now.clone().into_iter().collect::<Vec<_>>());
            let changes: Vec<_> = buckets
                .into_iter()
                .map(|((bucket, from, to), count)| StepChanges { bucket, from, to, count })
                .collect();
            prop_assert_eq!(counts_over_time(&now, window, &changes), truth);
        }
    }
}

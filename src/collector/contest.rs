//! Duplicate uids: when a second live WebSocket connection claims a collector's uid, the newer
//! one replaces the older (a half-open connection is the usual cause). Two live processes with one
//! uid (a cloned machine) would replace each other for ever; when replacements come this often,
//! the newcomer is given a fresh uid instead, as the specification allows.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Replacements within [`WINDOW`] tolerated before the next claimant is given a fresh uid. A
/// collector that reconnects after a network blip replaces its old connection once, not thrice.
pub const REPLACEMENTS: usize = 3;
pub const WINDOW: Duration = Duration::from_mins(1);

/// What to do with a new connection that claims a uid another live connection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Close the older connection; the newer one is the collector.
    Replace,
    /// Both are live collectors: leave the older one, give the newer a uid of its own.
    Reassign,
}

/// Recent replacements of one uid's connection.
#[derive(Debug, Default)]
pub struct Contest {
    replaced_at: VecDeque<Instant>,
}

impl Contest {
    pub fn claim(&mut self, now: Instant) -> Verdict {
        while self
            .replaced_at
            .front()
            .is_some_and(|at| now.duration_since(*at) > WINDOW)
        {
            self.replaced_at.pop_front();
        }
        if self.replaced_at.len() >= REPLACEMENTS {
            return Verdict::Reassign;
        }
        self.replaced_at.push_back(now);
        Verdict::Replace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_replacements_are_replacements_then_the_next_claimant_is_reassigned() {
        let start = Instant::now();
        let mut contest = Contest::default();
        for i in 0..REPLACEMENTS {
            let at = start + Duration::from_secs(i as u64);
            assert_eq!(contest.claim(at), Verdict::Replace);
        }
        assert_eq!(
            contest.claim(start + Duration::from_secs(10)),
            Verdict::Reassign
        );
    }

    #[test]
    fn replacements_spread_out_never_reassign() {
        let start = Instant::now();
        let mut contest = Contest::default();
        for i in 0..20u64 {
            let at = start + WINDOW.mul_f64(0.5) * u32::try_from(i).unwrap();
            assert_eq!(contest.claim(at), Verdict::Replace, "claim {i}");
        }
    }
}

//! An actor's timers (liveness and residence) and which of them is due first: the actor waits on
//! one sleep for all of them.

use tokio::time::Instant;

use crate::deadline::earliest;

/// An actor's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// A plain-HTTP collector has not polled in time: it counts as gone.
    Silent,
    /// Its polls are late: it is marked stale.
    Stale,
    /// No connection for the grace period: the actor stops being resident.
    Evict,
}

/// The timer due first, and when; on a tie, the earlier in `Timer`'s order (the others fire on
/// the next turn).
pub(super) fn next_timer(
    silent: Option<Instant>,
    stale: Option<Instant>,
    evict: Option<Instant>,
) -> Option<(Instant, Timer)> {
    earliest([
        (silent, Timer::Silent),
        (stale, Timer::Stale),
        (evict, Timer::Evict),
    ])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_earliest_timer_is_due_and_a_tie_goes_to_the_first() {
        let now = Instant::now();
        let at = |s| Some(now + Duration::from_secs(s));
        assert_eq!(next_timer(None, None, None), None);
        assert_eq!(
            next_timer(None, None, at(9)),
            Some((now + Duration::from_secs(9), Timer::Evict))
        );
        assert_eq!(
            next_timer(at(5), at(3), at(9)),
            Some((now + Duration::from_secs(3), Timer::Stale))
        );
        assert_eq!(
            next_timer(at(3), at(3), None),
            Some((now + Duration::from_secs(3), Timer::Silent))
        );
        assert_eq!(
            next_timer(None, at(4), at(4)),
            Some((now + Duration::from_secs(4), Timer::Stale))
        );
    }
}

//! Waiting on deadlines: one that may be switched off, and the earliest of several, for a task
//! that waits on one sleep for all its timers.

use tokio::time::Instant;

/// Sleeps until `deadline`, or forever when there is none: a timer that may be switched off.
pub async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The earliest of the deadlines that are set, and what it is for; on a tie, the first listed.
/// A task that waits on one sleep for several timers asks this which one it is.
pub fn earliest<T: Copy, const N: usize>(
    deadlines: [(Option<Instant>, T); N],
) -> Option<(Instant, T)> {
    deadlines
        .into_iter()
        .filter_map(|(at, what)| Some((at?, what)))
        .min_by_key(|&(at, _)| at)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_earliest_set_deadline_wins_and_a_tie_goes_to_the_first_listed() {
        let now = Instant::now();
        let at = |s| Some(now + Duration::from_secs(s));
        assert_eq!(earliest::<u8, 0>([]), None);
        assert_eq!(earliest([(None, 1), (None, 2)]), None);
        assert_eq!(
            earliest([(at(5), 1), (at(3), 2)]),
            Some((now + Duration::from_secs(3), 2))
        );
        assert_eq!(
            earliest([(at(3), 1), (at(3), 2)]),
            Some((now + Duration::from_secs(3), 1))
        );
    }
}

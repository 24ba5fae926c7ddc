//! How large SQLite's write connection keeps its page cache: large while writes are large, small
//! once they have not been for a while.
//!
//! The writer alone touches every row a burst or a reconnect storm changes, and a cache that holds
//! those rows is what keeps such writes off the kernel (ADR 0063). A fleet at rest writes a few
//! rows at a time and needs little of it, and a full 16 MiB cache is memory the server holds for
//! as long as it runs (ADR 0073).

use std::time::{Duration, Instant};

/// Each read connection's cache, for good.
pub(super) const READ_KIB: u32 = 512;
/// The write connection's cache while writes are small: SQLite's own default.
pub(super) const SMALL_KIB: u32 = 2 * 1024;
/// The cache while writes are large (ADR 0063's size).
pub(super) const LARGE_KIB: u32 = 16 * 1024;
/// A write of at least this many rows (a batch's changes, or the collectors of one claim) is
/// large. A fleet at rest, or ramping up at a thousand new collectors a second, writes tens.
const LARGE_WRITE: usize = 256;
/// How long the cache stays large after the last large write.
const QUIET: Duration = Duration::from_mins(1);

/// The sizing's state: until when the cache stays large, if it is large.
#[derive(Debug, Default)]
pub(super) struct Sizing {
    large_until: Option<Instant>,
}

impl Sizing {
    /// The size (KiB) to give the cache before a write of `rows` at `now`, if any. Every large
    /// write asks for the large cache, not only the first: the pool may have opened the
    /// connection again since (it starts small), and the same size again costs SQLite nothing.
    pub(super) fn before_write(&mut self, rows: usize, now: Instant) -> Option<u32> {
        if rows >= LARGE_WRITE {
            self.large_until = Some(now + QUIET);
            return Some(LARGE_KIB);
        }
        match self.large_until {
            Some(until) if now >= until => {
                self.large_until = None;
                Some(SMALL_KIB)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_writes_keep_the_cache_small() {
        let mut sizing = Sizing::default();
        let now = Instant::now();
        for i in 0..100 {
            assert_eq!(sizing.before_write(LARGE_WRITE - 1, now + QUIET * i), None);
        }
    }

    #[test]
    fn large_writes_ask_for_the_large_cache_and_small_ones_between_them_leave_it() {
        let mut sizing = Sizing::default();
        let now = Instant::now();
        assert_eq!(sizing.before_write(LARGE_WRITE, now), Some(LARGE_KIB));
        assert_eq!(sizing.before_write(1, now + QUIET / 2), None);
        assert_eq!(sizing.before_write(5_000, now + QUIET / 2), Some(LARGE_KIB));
    }

    #[test]
    fn the_cache_shrinks_after_a_quiet_spell_and_not_before() {
        let mut sizing = Sizing::default();
        let start = Instant::now();
        sizing.before_write(LARGE_WRITE, start);
        let last_large = start + QUIET / 2;
        sizing.before_write(LARGE_WRITE, last_large);
        assert_eq!(
            sizing.before_write(1, last_large + QUIET.mul_f64(0.999)),
            None
        );
        assert_eq!(sizing.before_write(1, last_large + QUIET), Some(SMALL_KIB));
        assert_eq!(sizing.before_write(1, last_large + QUIET * 3), None);
        assert_eq!(
            sizing.before_write(LARGE_WRITE, last_large + QUIET * 4),
            Some(LARGE_KIB)
        );
    }
}

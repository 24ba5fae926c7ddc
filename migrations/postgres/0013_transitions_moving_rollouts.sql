-- The rollout engine follows the history for the transitions that can move a rollout: arrivals,
-- moves out of Pending, Configuring or Upgrading, and Incompatible. Most transitions are none of
-- these (a health flip, a heartbeat's lapse), and reading them by `seq` alone meant walking every
-- transition since the last read, or, when the table's statistics were stale, all of them.
-- The predicate is the tail's filter word for word (`moves_rollouts_predicate`), so PostgreSQL
-- can prove this index covers it.
CREATE INDEX transitions_moving_rollouts ON transitions (seq)
    WHERE from_state IN ('pending', 'configuring', 'upgrading') OR to_state = 'incompatible'
        OR (to_state = 'connected' AND reason IN ('initial', 'connection_restored'));

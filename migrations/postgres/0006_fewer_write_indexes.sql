-- Indexes every status change paid for and no query needs:
-- * collectors (last_seen): last_seen moves on every write of a record; sorting a page by it scans
--   (on SQLite the sort is on julianday(last_seen), which never used the index anyway).
-- * collectors (node, state): read once at start-up (crash recovery); the state index serves it.
-- * transitions (at): nothing reads the history by time; the event stream and histories go by seq.
DROP INDEX collectors_last_seen;
DROP INDEX collectors_node_state;
DROP INDEX transitions_at;

-- A status change rewrites a collector's row. PostgreSQL can do that in place (a HOT update: no
-- new index entries) only when no indexed column changes and the row's page has room. `state`
-- changes with almost every status change, and two indexes covered it: every update added an
-- entry to each of the table's four indexes. Without them, and with room left in each page,
-- a status change touches the row's page alone.
--
-- Finding a silent node's collectors (a rare takeover) reads the node's rows and checks their
-- state; listing collectors in one state reads the list's own order and checks theirs.
DROP INDEX collectors_state;
DROP INDEX collectors_node_present;
CREATE INDEX collectors_node ON collectors (node);
ALTER TABLE collectors SET (fillfactor = 70);

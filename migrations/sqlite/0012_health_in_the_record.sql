-- Health rides in the collector's own row. A status change almost always carries new health,
-- and as its own row in `collector_facts` it was a second B-tree write per change, on a page
-- that other changes of the same write rarely shared (a collector's parts are stored together):
-- a fifth of SQLite's time per status change, and a quarter of what it wrote. In the record's
-- row, which every status change rewrites anyway, it costs a few bytes.
ALTER TABLE collectors ADD COLUMN health TEXT;
UPDATE collectors SET health = (
    SELECT value FROM collector_facts WHERE collector_facts.id = collectors.id AND part = 'health'
);
DELETE FROM collector_facts WHERE part = 'health';

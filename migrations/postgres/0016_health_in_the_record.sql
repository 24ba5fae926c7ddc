-- Health rides in the collector's own row. A status change almost always carries new health,
-- and as its own row in `collector_facts` it was a second row version (and key entry) per
-- change. In the record's row, which every status change updates in place anyway, it costs a
-- few more bytes there.
ALTER TABLE collectors ADD COLUMN health JSONB;
UPDATE collectors SET health = f.value
FROM collector_facts f WHERE f.id = collectors.id AND f.part = 'health';
DELETE FROM collector_facts WHERE part = 'health';

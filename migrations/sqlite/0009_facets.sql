-- Facets (drifted, stale, degraded): what explains a collector's state without being one, a bit
-- each, filtered on by the API's list.
ALTER TABLE collectors ADD COLUMN facets INTEGER NOT NULL DEFAULT 0;

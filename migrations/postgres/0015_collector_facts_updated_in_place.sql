-- A report rewrites the facts parts it changed; with room left in each page, PostgreSQL keeps
-- the new version beside the old and adds no index entry (a HOT update).
ALTER TABLE collector_facts SET (fillfactor = 70);

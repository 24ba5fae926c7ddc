-- Columns the operators' text search looks at, next to id and name.
ALTER TABLE collectors ADD COLUMN host_name TEXT;
ALTER TABLE collectors ADD COLUMN version TEXT;
CREATE INDEX collectors_name ON collectors (name);
CREATE INDEX collectors_last_seen ON collectors (last_seen);

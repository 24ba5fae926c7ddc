-- Rollouts: each one's whole progress as a document, rewritten as it advances, so that the engine
-- picks up where it stopped after a restart.
CREATE TABLE rollouts (
    id         TEXT PRIMARY KEY NOT NULL,
    status     TEXT NOT NULL,
    document   TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX rollouts_status ON rollouts (status);

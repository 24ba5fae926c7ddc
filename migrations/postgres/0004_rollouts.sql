-- Rollouts: each one's whole progress as a document, rewritten as it advances, so that the engine
-- picks up where it stopped after a restart.
CREATE TABLE rollouts (
    id         TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    document   JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX rollouts_status ON rollouts (status);

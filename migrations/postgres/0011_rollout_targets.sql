-- Rollout targets as rows: a step writes the targets it changed, not the rollout's whole
-- document, and the API pages them. The rollout's document keeps its own fields and its counts
-- per outcome; documents that still hold their targets are split by the server after migrating.
CREATE TABLE rollout_targets (
    rollout_id         TEXT NOT NULL,
    collector_id       TEXT NOT NULL,
    batch              BIGINT,
    outcome            TEXT NOT NULL,
    error              TEXT NOT NULL,
    missing            JSONB NOT NULL,
    components_unknown BOOLEAN NOT NULL,
    previous_hash      TEXT,
    rolled_back        BOOLEAN NOT NULL,
    sent_at            TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (rollout_id, collector_id)
);
-- Paging one outcome's targets, by collector.
CREATE INDEX rollout_targets_outcome ON rollout_targets (rollout_id, outcome, collector_id);

-- Several nodes on one database: who is alive, commands addressed to the node holding a
-- collector, and leases (the rollout engine runs on one node at a time).

CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    started_at    TIMESTAMPTZ NOT NULL,
    renewed_at    TIMESTAMPTZ NOT NULL,
    -- Set by a clean stop.
    stopped_at    TIMESTAMPTZ,
    -- Set, once, by the node that marked this one's collectors Disconnected after it went silent.
    taken_over_at TIMESTAMPTZ,
    taken_over_by TEXT
);

CREATE TABLE commands (
    id          BIGSERIAL PRIMARY KEY,
    -- The node that must carry it out, and the node waiting for the answer.
    node        TEXT NOT NULL,
    origin      TEXT NOT NULL,
    body        JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    answer      JSONB,
    answered_at TIMESTAMPTZ
);

CREATE INDEX commands_open ON commands (node, id) WHERE answer IS NULL;
CREATE INDEX commands_answered ON commands (answered_at) WHERE answer IS NOT NULL;

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    node       TEXT NOT NULL,
    -- Goes up each time the lease changes hands.
    term       BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

-- Finding a silent node's collectors.
CREATE INDEX collectors_node_present ON collectors (node) WHERE state <> 'disconnected';

-- Every collector's latest record, and the append-only history of its transitions.

CREATE TABLE collectors (
    id              TEXT PRIMARY KEY,
    node            TEXT NOT NULL,
    state           TEXT NOT NULL,
    state_since     TIMESTAMPTZ,
    state_reason    TEXT,
    state_message   TEXT NOT NULL DEFAULT '',
    connected       BOOLEAN NOT NULL DEFAULT FALSE,
    transport       TEXT,
    connected_since TIMESTAMPTZ,
    last_seen       TIMESTAMPTZ,
    name            TEXT,
    capabilities    BIGINT NOT NULL DEFAULT 0,
    sequence_num    BIGINT,
    labels          JSONB NOT NULL DEFAULT '{}',
    facts           JSONB NOT NULL DEFAULT '{}',
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE INDEX collectors_state ON collectors (state);
CREATE INDEX collectors_node_state ON collectors (node, state);

CREATE TABLE transitions (
    seq          BIGSERIAL PRIMARY KEY,
    collector_id TEXT NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    message      TEXT NOT NULL DEFAULT '',
    at           TIMESTAMPTZ NOT NULL,
    cause        TEXT
);

CREATE INDEX transitions_collector ON transitions (collector_id, seq);
CREATE INDEX transitions_at ON transitions (at);

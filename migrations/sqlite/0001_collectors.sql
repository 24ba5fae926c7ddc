-- Every collector's latest record, and the append-only history of its transitions.
-- Timestamps are RFC 3339 text (what sqlx writes for OffsetDateTime); JSON columns are text.

CREATE TABLE collectors (
    id              TEXT PRIMARY KEY NOT NULL,
    node            TEXT NOT NULL,
    state           TEXT NOT NULL,
    state_since     TEXT,
    state_reason    TEXT,
    state_message   TEXT NOT NULL DEFAULT '',
    connected       INTEGER NOT NULL DEFAULT 0,
    transport       TEXT,
    connected_since TEXT,
    last_seen       TEXT,
    name            TEXT,
    capabilities    INTEGER NOT NULL DEFAULT 0,
    sequence_num    INTEGER,
    labels          TEXT NOT NULL DEFAULT '{}',
    facts           TEXT NOT NULL DEFAULT '{}',
    updated_at      TEXT NOT NULL
);

CREATE INDEX collectors_state ON collectors (state);
CREATE INDEX collectors_node_state ON collectors (node, state);

CREATE TABLE transitions (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    collector_id TEXT NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    reason       TEXT NOT NULL,
    message      TEXT NOT NULL DEFAULT '',
    at           TEXT NOT NULL,
    cause        TEXT
);

CREATE INDEX transitions_collector ON transitions (collector_id, seq);
CREATE INDEX transitions_at ON transitions (at);

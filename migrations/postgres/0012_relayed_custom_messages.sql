-- Collectors' custom messages, on their way from the node a collector sent one to, to the event
-- streams of the other nodes. Kept about a minute; never part of a collector's record.
CREATE TABLE relayed_custom_messages (
    id           BIGSERIAL PRIMARY KEY,
    node         TEXT NOT NULL,
    collector_id TEXT NOT NULL,
    capability   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    data         BYTEA NOT NULL,
    at           TIMESTAMPTZ NOT NULL
);

CREATE INDEX relayed_custom_messages_at ON relayed_custom_messages (at);

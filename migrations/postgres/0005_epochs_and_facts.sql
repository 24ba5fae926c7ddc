-- Records that cannot be overwritten blind, and writes as narrow as the news:
-- * `epoch` counts the claims on a record. An actor claims the record (epoch + 1) when it loads it,
--   and every write it makes names that epoch: a write from an actor whose claim was superseded (or
--   that never loaded the record) matches no row and is refused.
-- * The collector's reported facts move to their own table, one column per part, so a heartbeat or
--   a state change never rewrites them, and a part is written only when it changed.
-- * `control` holds what the server tracks for a collector (configuration sent, failed, rollout).
-- * `quarantine` keeps, with its error, a row the database refused for its data, so the rows
--   around it can land.
ALTER TABLE collectors ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE collectors ADD COLUMN control JSONB NOT NULL DEFAULT '{}';

CREATE TABLE collector_facts (
    id                   TEXT PRIMARY KEY,
    description          JSONB,
    health               JSONB,
    effective_config     JSONB,
    remote_config_status JSONB,
    package_statuses     JSONB,
    available_components JSONB,
    updated_at           TIMESTAMPTZ NOT NULL
);

INSERT INTO collector_facts (id, description, health, effective_config, remote_config_status,
                             package_statuses, available_components, updated_at)
SELECT id, facts -> 'description', facts -> 'health', facts -> 'effective_config',
       facts -> 'remote_config_status', facts -> 'package_statuses',
       facts -> 'available_components', updated_at
FROM collectors;

UPDATE collectors SET control = jsonb_strip_nulls(jsonb_build_object(
    'config_sent', facts -> 'config_sent',
    'config_failed', facts -> 'config_failed',
    'config_error', facts -> 'config_error',
    'package_error', facts -> 'package_error',
    'package_offered', facts -> 'package_offered',
    'rollout', facts -> 'rollout',
    'missing_components', facts -> 'missing_components'));

ALTER TABLE collectors DROP COLUMN facts;

CREATE TABLE quarantine (
    seq          BIGSERIAL PRIMARY KEY,
    collector_id TEXT NOT NULL,
    kind         TEXT NOT NULL,
    error        TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX quarantine_collector ON quarantine (collector_id);

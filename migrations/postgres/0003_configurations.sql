-- Configuration versions: immutable once written; a configuration is the set of its versions.
CREATE TABLE configuration_versions (
    name       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    files      JSONB NOT NULL,
    components JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX configuration_versions_hash ON configuration_versions (hash);

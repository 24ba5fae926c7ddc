-- Configuration versions: immutable once written; a configuration is the set of its versions.
CREATE TABLE configuration_versions (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    files      TEXT NOT NULL,
    components TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE INDEX configuration_versions_hash ON configuration_versions (hash);

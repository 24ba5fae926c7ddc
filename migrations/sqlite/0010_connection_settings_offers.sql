-- Connection settings offers: each operator's named offer (selector and settings) as a document,
-- replaced whole when the operator changes it.
CREATE TABLE connection_settings_offers (
    name       TEXT PRIMARY KEY NOT NULL,
    document   TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

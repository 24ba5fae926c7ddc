-- Connection settings offers: each operator's named offer (selector and settings) as a document,
-- replaced whole when the operator changes it.
CREATE TABLE connection_settings_offers (
    name       TEXT PRIMARY KEY,
    document   JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

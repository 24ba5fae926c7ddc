-- One row per reported part, so that writing one part (health changes far more often than the
-- effective configuration) rewrites that part alone: a database rewrites a whole row on update.
CREATE TABLE collector_fact_parts (
    id         TEXT NOT NULL,
    part       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (id, part)
) WITHOUT ROWID;

INSERT INTO collector_fact_parts (id, part, value, updated_at)
SELECT id, part, value, updated_at FROM (
    SELECT id, 'description' AS part, description AS value, updated_at FROM collector_facts
    UNION ALL SELECT id, 'health', health, updated_at FROM collector_facts
    UNION ALL SELECT id, 'effective_config', effective_config, updated_at FROM collector_facts
    UNION ALL SELECT id, 'remote_config_status', remote_config_status, updated_at FROM collector_facts
    UNION ALL SELECT id, 'package_statuses', package_statuses, updated_at FROM collector_facts
    UNION ALL SELECT id, 'available_components', available_components, updated_at FROM collector_facts
)
WHERE value IS NOT NULL AND value <> 'null';

DROP TABLE collector_facts;
ALTER TABLE collector_fact_parts RENAME TO collector_facts;

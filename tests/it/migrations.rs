//! Upgrading opampd keeps what was stored: a database written by the first schema (the record's
//! facts and server-side fields in one JSON document) is migrated by today's `migrate`, and every
//! fact, label and field reads back the same; and the records of a long history learn where their
//! own history starts.

use std::borrow::Cow;

use opampd::collector::{CollectorId, RemoteConfigState, State};

use crate::support::{
    Backend, first_bucket, fresh_database, open_existing_store, open_store, raw_sql, with_pool,
};

const FACTS: &str = r#"{
    "description": {"identifying": {"service.name": "otelcol"}, "non_identifying": {"host.name": "node-1"}},
    "health": {"healthy": false, "start_time_unix_nano": 1, "last_error": "exporter down", "status": "", "status_time_unix_nano": 2, "components": {}},
    "effective_config": null,
    "remote_config_status": {"hash": "c0ffee", "status": "failed", "error_message": "bad"},
    "package_statuses": null,
    "available_components": null,
    "config_sent": "abcd",
    "config_failed": "c0ffee",
    "config_error": "bad",
    "package_error": null,
    "package_offered": null,
    "rollout": "rollout-1",
    "missing_components": ["exporters/kafka"]
}"#;

/// Migrates the database at `url` up to, not including, the migration described as `stop`.
async fn schema_before(backend: Backend, url: &str, stop: &str) {
    let mut migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    let before = migrator
        .migrations
        .iter()
        .position(|m| m.description == stop)
        .expect("the migration exists");
    migrator.migrations = Cow::Owned(migrator.migrations[..before].to_vec());
    with_pool!(backend, url, |pool| migrator.run(&pool).await.unwrap());
}

async fn insert_old_row(backend: Backend, url: &str, id: CollectorId) {
    let (cast, now) = match backend {
        Backend::Sqlite => ("", "'2026-01-01T00:00:00Z'"),
        Backend::Postgres => ("::jsonb", "now()"),
    };
    let insert = format!(
        "INSERT INTO collectors (id, node, state, state_message, connected, capabilities, labels, \
         facts, updated_at, name) VALUES ('{id}', 'opampd', 'error', 'exporter down', false, 3, \
         '{{\"env\": \"prod\"}}'{cast}, '{}'{cast}, {now}, 'otelcol')",
        FACTS.replace('\n', " ")
    );
    raw_sql(backend, url, &insert).await;
}

async fn a_database_of_the_first_schema_migrates_with_everything_kept(backend: Backend) {
    let database = fresh_database(backend).await;
    let url = database.url.clone();
    // The store creates the SQLite file; opening it without migrating leaves it empty.
    drop(open_existing_store(&url, "opampd").await);
    // The schema as it was before records had epochs and their facts a table of their own.
    schema_before(backend, &url, "epochs and facts").await;
    let id = CollectorId::new_v7();
    insert_old_row(backend, &url, id).await;

    let store = open_store(&url, "opampd").await;
    let c = store.load(id).await.unwrap().expect("the record survives");
    assert_eq!(c.state, Some(State::Error));
    assert_eq!(c.labels["env"], "prod");
    assert_eq!(
        c.name().as_deref(),
        Some("node-1"),
        "the host tells it apart"
    );
    assert_eq!(c.attribute("host.name").as_deref(), Some("node-1"));
    let health = c.health.expect("health");
    assert_eq!(health.last_error, "exporter down");
    let status = c.remote_config_status.expect("remote config status");
    assert_eq!(
        (status.hash, status.status),
        (vec![0xc0, 0xff, 0xee], RemoteConfigState::Failed)
    );
    assert!(c.effective_config.is_none(), "null stays absent");
    assert_eq!(c.config_sent, Some(vec![0xab, 0xcd]));
    assert_eq!(c.config_failed, Some(vec![0xc0, 0xff, 0xee]));
    assert_eq!(c.config_error.as_deref(), Some("bad"));
    assert_eq!(c.rollout.as_deref(), Some("rollout-1"));
    assert_eq!(c.missing_components, ["exporters/kafka"]);
    // And it can be claimed and written under today's rules.
    let claimed = store.claim(&[id]).await.unwrap();
    assert_eq!(claimed[0].epoch, 1, "the first claim of a migrated record");
}

/// Records stored before ADR 0082 learn their first bucket from the history they have; a record
/// with none yet, the bucket the history has reached. Their pages still show all of it.
async fn records_of_a_long_history_learn_their_first_bucket(backend: Backend) {
    let database = fresh_database(backend).await;
    let url = database.url.clone();
    drop(open_existing_store(&url, "opampd").await);
    schema_before(backend, &url, "first history bucket").await;
    let (early, quiet, late) = (
        CollectorId::new_v7(),
        CollectorId::new_v7(),
        CollectorId::new_v7(),
    );
    let now = match backend {
        Backend::Sqlite => "'2026-01-01T00:00:00Z'",
        Backend::Postgres => "now()",
    };
    let records = [early, quiet, late].map(|id| {
        format!(
            "INSERT INTO collectors (id, node, state, updated_at) \
             VALUES ('{id}', 'opampd', 'error', {now})"
        )
    });
    let history = [(5_000, early), (9_000, early), (20_000, late)].map(|(seq, id)| {
        format!(
            "INSERT INTO transitions (seq, collector_id, to_state, reason, message, at) \
             VALUES ({seq}, '{id}', 'error', 'initial', '', {now})"
        )
    });
    raw_sql(backend, &url, &[records, history].concat().join(";")).await;

    let store = open_store(&url, "opampd").await;
    let bucket = |id: CollectorId| first_bucket(backend, &url, id);
    assert_eq!(bucket(early).await, Some(5_000 >> 12));
    assert_eq!(bucket(late).await, Some(20_000 >> 12));
    assert_eq!(
        bucket(quiet).await,
        Some(20_000 >> 12),
        "the history's newest bucket"
    );
    for (id, seqs) in [(early, vec![9_000, 5_000]), (late, vec![20_000])] {
        let page = store.history(id, None, 10).await.unwrap();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
    }
}

crate::on_both_stores!(
    a_database_of_the_first_schema_migrates_with_everything_kept,
    records_of_a_long_history_learn_their_first_bucket,
);

//! Upgrading opampd keeps what was stored: a database written by the first schema (the record's
//! facts and server-side fields in one JSON document) is migrated by today's `migrate`, and every
//! fact, label and field reads back the same.

use std::borrow::Cow;

use opampd::collector::{CollectorId, RemoteConfigState, State};
use sqlx::migrate::Migrator;

use crate::support::{Backend, fresh_database, open_existing_store, open_store};

/// The schema as it was before records had epochs and their facts a table of their own.
const BEFORE_EPOCHS: usize = 4;

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

async fn old_schema(backend: Backend, url: &str) {
    let pool_migrate = |migrator: Migrator| async move {
        match backend {
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(url).await.unwrap();
                migrator.run(&pool).await.unwrap();
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                migrator.run(&pool).await.unwrap();
            }
        }
    };
    let mut migrator = match backend {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    migrator.migrations = Cow::Owned(migrator.migrations[..BEFORE_EPOCHS].to_vec());
    pool_migrate(migrator).await;
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
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query(&insert).execute(&pool).await.unwrap();
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(&insert).execute(&pool).await.unwrap();
        }
    }
}

async fn a_database_of_the_first_schema_migrates_with_everything_kept(backend: Backend) {
    let database = fresh_database(backend).await;
    let url = database.url.clone();
    // The store creates the SQLite file; opening it without migrating leaves it empty.
    drop(open_existing_store(&url, "opampd").await);
    old_schema(backend, &url).await;
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

crate::on_both_stores!(a_database_of_the_first_schema_migrates_with_everything_kept);

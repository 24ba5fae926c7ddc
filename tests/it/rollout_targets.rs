//! Rollout targets as rows: a step writes only what it changed, the API pages rollouts and their
//! targets, and a rollout stored before (one document holding every target) reads back whole.

use std::time::SystemTime;

use opampd::collector::CollectorId;
use opampd::fleet::rollout::{Outcome, Payload, Rollout, RolloutOptions, Status, Target};
use opampd::fleet::summary::{RolloutSummary, all_targets, load_all};
use opampd::store::Store;
use serde_json::Value;

use crate::support::api::{Api, assert_error};
use crate::support::{Backend, TestServer, fresh_database, open_store};

fn target(n: u128, outcome: Outcome) -> Target {
    Target {
        collector: CollectorId(uuid::Uuid::from_u128(n)),
        outcome,
        batch: outcome.in_flight().then_some(0),
        missing: if outcome == Outcome::Incompatible {
            vec!["exporters/kafka".into()]
        } else {
            Vec::new()
        },
        error: String::new(),
        components_unknown: n.is_multiple_of(2),
        previous_hash: Some(format!("{n:04x}")),
        rolled_back: false,
        sent_at: None,
    }
}

/// A rollout of `n` targets, every third applied, the rest pending.
pub(crate) fn rollout(n: u128) -> Rollout {
    Rollout {
        id: uuid::Uuid::now_v7().to_string(),
        payload: Payload::Configuration {
            configuration: "base".into(),
            version: 1,
        },
        hash: "ab".repeat(32),
        selector: "env=prod".into(),
        options: RolloutOptions::default(),
        status: Status::Running,
        reason: String::new(),
        created_at: "2026-01-01T00:00:00Z".into(),
        batches_started: 1,
        failures_accepted: 0,
        targets: (1..=n)
            .map(|i| {
                target(
                    i,
                    if i.is_multiple_of(3) {
                        Outcome::Applied
                    } else {
                        Outcome::Pending
                    },
                )
            })
            .collect(),
    }
}

pub(crate) async fn save(store: &dyn Store, rollout: &Rollout, targets: &[&Target]) {
    store
        .save_rollout(&RolloutSummary::of(rollout), SystemTime::now(), targets)
        .await
        .unwrap();
}

async fn targets_are_rows_written_as_they_change(backend: Backend) {
    let database = fresh_database(backend).await;
    let store = open_store(&database.url, "opampd").await;
    let mut r = rollout(10);
    save(store.as_ref(), &r, &r.targets.iter().collect::<Vec<_>>()).await;
    assert_eq!(all_targets(store.as_ref(), &r.id).await.unwrap(), r.targets);

    // A step that moved two targets writes those two, and the counts with the row.
    r.targets[0].outcome = Outcome::Configuring;
    r.targets[0].sent_at = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7));
    r.targets[1].outcome = Outcome::Failed;
    r.targets[1].error = "bad".into();
    save(store.as_ref(), &r, &[&r.targets[0], &r.targets[1]]).await;
    let loaded = load_all(store.as_ref()).await.unwrap();
    assert_eq!(loaded, [r.clone()]);
    let summary = store.rollout(&r.id).await.unwrap().unwrap();
    assert_eq!(summary.progress["failed"], 1);
    assert_eq!(summary.progress["applied"], 3);
    assert_eq!(summary.progress["pending"], 5);

    // Pages by collector, with and without an outcome.
    let first = store.rollout_targets(&r.id, None, 4, None).await.unwrap();
    assert_eq!(first, r.targets[..4]);
    let rest = store
        .rollout_targets(&r.id, Some(first[3].collector), 100, None)
        .await
        .unwrap();
    assert_eq!(rest, r.targets[4..]);
    let applied = store
        .rollout_targets(&r.id, None, 100, Some(Outcome::Applied))
        .await
        .unwrap();
    let ids: Vec<u128> = applied.iter().map(|t| t.collector.0.as_u128()).collect();
    assert_eq!(ids, [3, 6, 9]);
}

async fn a_rollout_stored_as_one_document_reads_back_whole(backend: Backend) {
    let database = fresh_database(backend).await;
    drop(open_store(&database.url, "opampd").await);
    let mut old = rollout(5);
    old.status = Status::Cancelled;
    old.targets[4].outcome = Outcome::Cancelled;
    // As it was stored before targets were rows: the whole rollout, targets included, one of them
    // under the outcome's older name.
    let mut document = serde_json::to_value(&old).unwrap();
    document["targets"][4]["outcome"] = "removed".into();
    let insert = |cast: &str, now: &str| {
        format!(
            "INSERT INTO rollouts (id, status, document, created_at, updated_at) VALUES \
             ('{}', 'cancelled', '{}'{cast}, {now}, {now})",
            old.id,
            document.to_string().replace('\'', "''")
        )
    };
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&database.url).await.unwrap();
            let now = "'2026-01-01T00:00:00Z'";
            sqlx::query(&insert("", now)).execute(&pool).await.unwrap();
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
            sqlx::query(&insert("::jsonb", "now()"))
                .execute(&pool)
                .await
                .unwrap();
        }
    }

    // The next start migrates it.
    let store = open_store(&database.url, "opampd").await;
    assert_eq!(load_all(store.as_ref()).await.unwrap(), [old.clone()]);
    let summary = store.rollout(&old.id).await.unwrap().unwrap();
    assert_eq!(summary.progress["cancelled"], 1);
    assert_eq!(summary.progress["applied"], 1);
    let summaries = store.rollout_summaries(None, 10).await.unwrap();
    assert_eq!(summaries, [summary]);
    // And again: nothing left to split, nothing changes.
    let store = open_store(&database.url, "opampd").await;
    assert_eq!(load_all(store.as_ref()).await.unwrap(), [old]);
}

/// Every page of `path`, following `next_cursor`; the pages' sizes.
async fn pages(api: &Api, path: &str, limit: usize) -> (Vec<Value>, Vec<usize>) {
    let (mut items, mut sizes) = (Vec::new(), Vec::new());
    let mut cursor: Option<String> = None;
    loop {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{separator}limit={limit}");
        if let Some(cursor) = &cursor {
            url = format!("{url}&cursor={cursor}");
        }
        let page = api.ok(&url).await;
        let got = page["items"].as_array().unwrap();
        sizes.push(got.len());
        items.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (items, sizes),
        }
    }
}

async fn the_api_pages_rollouts_and_their_targets(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let mut ids = Vec::new();
    for n in [3, 4, 250] {
        let r = rollout(n);
        save(server.store(), &r, &r.targets.iter().collect::<Vec<_>>()).await;
        ids.push(r.id);
    }

    let (listed, sizes) = pages(&api, "/api/v1/rollouts", 2).await;
    assert_eq!(sizes, [2, 1]);
    let listed: Vec<&str> = listed.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    let whole = api.ok("/api/v1/rollouts").await;
    assert!(whole["items"][0].get("targets").is_none(), "no targets");
    assert_eq!(whole["items"][0]["progress"]["applied"], 83);
    assert!(whole["next_cursor"].is_null());

    // One rollout: its counts and the first page of its targets.
    let big = &ids[2];
    let one = api.ok(&format!("/api/v1/rollouts/{big}")).await;
    assert_eq!(one["progress"]["pending"], 167);
    assert_eq!(one["targets"].as_array().unwrap().len(), 100);
    let rest = one["targets_next_cursor"].as_str().unwrap();
    let after = api
        .ok(&format!(
            "/api/v1/rollouts/{big}/targets?limit=500&cursor={rest}"
        ))
        .await;
    assert_eq!(after["items"].as_array().unwrap().len(), 150);
    assert_eq!(after["items"][0]["collector"], uuid(101));

    let (all, sizes) = pages(&api, &format!("/api/v1/rollouts/{big}/targets"), 100).await;
    assert_eq!(sizes, [100, 100, 50]);
    assert_eq!(all[249]["collector"], uuid(250));
    let (applied, _) = pages(
        &api,
        &format!("/api/v1/rollouts/{big}/targets?outcome=applied"),
        50,
    )
    .await;
    assert_eq!(applied.len(), 83);
    assert!(applied.iter().all(|t| t["outcome"] == "applied"));
    assert_eq!(applied[1]["collector"], uuid(6));

    let targets = format!("/api/v1/rollouts/{big}/targets");
    for bad in [
        "/api/v1/rollouts?limit=0".to_owned(),
        "/api/v1/rollouts?limit=501".to_owned(),
        "/api/v1/rollouts?cursor=%21".to_owned(),
        format!("{targets}?limit=0"),
        format!("{targets}?limit=501"),
        format!("{targets}?outcome=lost"),
        format!("{targets}?cursor=bm90LWEtY29sbGVjdG9y"),
        format!("{targets}?page=2"),
    ] {
        assert_error(&api.get(&bad).await, 400, "bad_request");
    }
    assert_error(
        &api.get("/api/v1/rollouts/nope/targets").await,
        404,
        "not_found",
    );
}

fn uuid(n: u128) -> String {
    uuid::Uuid::from_u128(n).to_string()
}

crate::on_both_stores!(
    targets_are_rows_written_as_they_change,
    a_rollout_stored_as_one_document_reads_back_whole,
    the_api_pages_rollouts_and_their_targets,
);

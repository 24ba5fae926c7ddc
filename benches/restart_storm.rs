//! The restart storm: N WebSocket collectors connected to the real `opampd` binary, each
//! labelled through the REST API; the server is stopped with SIGTERM and started again, every
//! collector reconnects at once, and the store is read to count the labels kept and the
//! histories that started again (a second `initial`). Run on SQLite, then on a PostgreSQL with
//! fsync on (started for the run from the machine's binaries, or `DATABASE_URL`'s server).
//!
//! `cargo bench --bench restart_storm` (15,000 collectors; `STORM_COLLECTORS` to change it,
//! `STORM_BACKENDS=sqlite` or `postgres` for one store only). Prints a human summary and one JSON
//! line per store.

// A measuring tool: a failure should stop it loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    dead_code
)]

mod support;
use support::{database, load, server};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser as _;
use opampd::collector::Reason;
use opampd::config::Config;
use opampd_load::Args;
use serde_json::{Value, json};
use server::{Server, free_port};

/// Every collector the API lists, by id.
async fn all_ids(client: &reqwest::Client, api: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("http://{api}/api/v1/collectors?limit=500&cursor={c}"),
            None => format!("http://{api}/api/v1/collectors?limit=500"),
        };
        let page: Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            ids.push(item["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return ids,
        }
    }
}

async fn label_all(client: &reqwest::Client, api: &str, ids: &[String]) -> Duration {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (chunk_no, chunk) in ids.chunks(ids.len().div_ceil(16).max(1)).enumerate() {
        let (client, api, chunk) = (client.clone(), api.to_owned(), chunk.to_vec());
        tasks.spawn(async move {
            for (i, id) in chunk.iter().enumerate() {
                let response = client
                    .put(format!("http://{api}/api/v1/collectors/{id}/labels"))
                    .json(&json!({"bench": "restart", "n": format!("{chunk_no}-{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200, "labelling {id}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    started.elapsed()
}

async fn run(backend: &str, database: String, collectors: usize) -> Value {
    let data = tempfile::tempdir().unwrap();
    let (opamp, api) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let client = server::http_client();
    let mut server = Server::start(data.path(), &database, &opamp, &api, &[]);
    server.ready(&client).await;

    let args = Args::try_parse_from([
        "opampd-load",
        "--url",
        &format!("ws://{opamp}/v1/opamp"),
        "-n",
        &collectors.to_string(),
        "--rate",
        "3000",
        "--heartbeat",
        "30s",
        "--duration",
        "600s",
        "--ramp-timeout",
        "300s",
        "--reply-timeout",
        "60s",
        "--wait-for-server-restart",
        "--source-addrs",
        "127.0.0.1-127.0.0.40",
        "--quiet",
    ])
    .unwrap();
    let load = load::measuring(args, None).await;
    let ids = all_ids(&client, &api).await;
    assert_eq!(ids.len(), collectors, "every collector is listed");
    let labelling = label_all(&client, &api, &ids).await;

    let (stopping, clean) = server.stop();
    let restarted = Instant::now();
    let mut server = Server::start(data.path(), &database, &opamp, &api, &[]);
    let ready = server.ready(&client).await;
    let report = load.await.unwrap().expect("the load generator runs");
    let back_after_start = restarted.elapsed();

    // What the store says, read directly.
    let mut config = Config::default();
    config.database.url = database.clone();
    let store = opampd::store::open(&config).await.unwrap();
    let records = store.collectors().await.unwrap();
    let labelled = records
        .iter()
        .filter(|c| c.labels.get("bench").map(String::as_str) == Some("restart"))
        .count();
    let mut second_initials = 0;
    let mut restored = 0;
    let mut histories = BTreeMap::<String, usize>::new();
    for c in &records {
        let history = store.transitions(c.id).await.unwrap();
        let reasons: Vec<Reason> = history.iter().map(|t| t.reason).collect();
        if reasons.iter().filter(|r| **r == Reason::Initial).count() > 1 {
            second_initials += 1;
        }
        if reasons.starts_with(&[
            Reason::Initial,
            Reason::ServerTermination,
            Reason::ConnectionRestored,
        ]) {
            restored += 1;
        }
        let shape: Vec<&str> = history.iter().map(|t| t.reason.as_str()).collect();
        *histories.entry(shape.join(" > ")).or_default() += 1;
    }
    let rss_kib = server.rss_kib();
    let (final_stop, _) = server.stop();
    let figures = json!({
        "bench": "restart_storm",
        "store": backend,
        "collectors": collectors,
        "records": records.len(),
        "labels_kept": labelled,
        "second_initials": second_initials,
        "histories_continued": restored,
        "histories": histories,
        "labelling_s": labelling.as_secs_f64(),
        "sigterm_to_exit_s": stopping.as_secs_f64(),
        "clean_exit": clean,
        "start_to_ready_s": ready.as_secs_f64(),
        "start_to_all_back_s": back_after_start.as_secs_f64(),
        "first_drop_to_all_back_s": report.reconnection.first_drop_to_all_back_s,
        "reconnect_failures": report.reconnection.reconnect_failures,
        "load_errors": report.errors.total,
        "load_errors_by_kind": report.errors.by_kind,
        "load_failures": report.failures,
        "load_ok": report.ok,
        "server_rss_after_storm_kib": rss_kib,
        "final_stop_s": final_stop.as_secs_f64(),
    });
    eprintln!(
        "{backend}: {collectors} WebSocket collectors labelled in {:.1} s; SIGTERM to exit {:.1} s \
         (clean: {clean}); start to ready {:.2} s; every collector back {:.1} s after the start \
         ({:?} s from the first drop); labels kept {labelled} of {}; second initials \
         {second_initials}; histories initial > server_termination > connection_restored: \
         {restored}",
        labelling.as_secs_f64(),
        stopping.as_secs_f64(),
        ready.as_secs_f64(),
        back_after_start.as_secs_f64(),
        report.reconnection.first_drop_to_all_back_s,
        records.len(),
    );
    figures
}

fn main() {
    server::runtime().block_on(async {
        let collectors: usize = server::setting("STORM_COLLECTORS", 15_000);
        let backends = std::env::var("STORM_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
        let mut results = Vec::new();
        if backends.contains("sqlite") {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("storm.db").display());
            results.push(run("sqlite", url, collectors).await);
        }
        if backends.contains("postgres") {
            let (url, own) = database::postgres("storm").await;
            results.push(run("postgres", url, collectors).await);
            drop(own);
        }
        let mut kept = true;
        for figures in &results {
            println!("{figures}");
            kept &= figures["labels_kept"] == figures["collectors"]
                && figures["histories_continued"] == figures["collectors"]
                && figures["second_initials"] == 0;
        }
        assert!(kept, "a label was lost or a history started again");
    });
}

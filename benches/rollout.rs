//! A configuration rollout over a fleet of simulated collectors, from the start to every target
//! `applied`: how long it takes with the default batching, the server CPU it costs, and how fast
//! the API answers for the rollout while it runs.
//!
//! The real `opampd` binary (SQLite by default; `ROLLOUT_BACKEND=postgres` for PostgreSQL, with
//! `DATABASE_URL` or a throwaway server with fsync on) and the load generator holding
//! `ROLLOUT_COLLECTORS` (default 15,000) WebSocket collectors, each applying what it is sent
//! (APPLYING, then APPLIED with the new effective configuration). Once all are connected a
//! configuration is stored and rolled out to every collector (empty selector, default batches);
//! `GET /api/v1/rollouts/{id}` is asked every `ROLLOUT_POLL_MS` (default 200) until the rollout is
//! completed, each answer timed. Prints a human summary and one JSON line.
//!
//! `cargo build --release -p opampd-load && cargo bench --bench rollout`

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

use std::time::{Duration, Instant};

use clap::Parser as _;
use opampd_load::Args;
use serde_json::{Value, json};
use server::{Server, free_port};

const KEY: &str = "rollout-bench-admin-key-0123456789";

/// The `q`-quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let response = client
        .post(url)
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    body
}

async fn run(backend: &str, database: String, collectors: usize, poll: Duration) -> Value {
    let data = tempfile::tempdir().unwrap();
    let (opamp, api) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let client = server::http_client();
    let keys = format!("[{{name=\"bench\",key=\"{KEY}\",role=\"admin\"}}]");
    let mut server = Server::start(
        data.path(),
        &database,
        &opamp,
        &api,
        &[("OPAMPD_API__KEYS", keys.as_str())],
    );
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
        "1800s",
        "--ramp-timeout",
        "300s",
        "--reply-timeout",
        "60s",
        "--source-addrs",
        "127.0.0.1-127.0.0.40",
        "--quiet",
    ])
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = load::measuring(args, Some(stop_rx)).await;

    let yaml = "receivers:\n  otlp:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n";
    post(
        &client,
        format!("http://{api}/api/v1/configurations"),
        json!({"name": "bench", "yaml": yaml}),
    )
    .await;
    let cpu_before = server.cpu_seconds().unwrap();
    let started = Instant::now();
    let rollout = post(
        &client,
        format!("http://{api}/api/v1/rollouts"),
        json!({"configuration": "bench", "version": 1, "selector": ""}),
    )
    .await;
    let start_answer = started.elapsed();
    let id = rollout["id"].as_str().unwrap().to_owned();
    let url = format!("http://{api}/api/v1/rollouts/{id}");

    let mut answers = Vec::new();
    let last = loop {
        let asked = Instant::now();
        let response = client.get(&url).bearer_auth(KEY).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        answers.push(asked.elapsed().as_secs_f64() * 1000.0);
        match body["status"].as_str() {
            Some("completed") => break body,
            Some("running") => {}
            other => panic!("the rollout ended {other:?}: {}", body["progress"]),
        }
        assert!(
            started.elapsed() < Duration::from_mins(30),
            "not completed within 30 minutes: {}",
            body["progress"]
        );
        tokio::time::sleep(poll).await;
    };
    let duration = started.elapsed();
    let cpu = server.cpu_seconds().unwrap() - cpu_before;
    stop_tx.send_replace(true);
    let report = load.await.unwrap().expect("the load generator runs");
    let rss_kib = server.rss_kib();
    server.stop();

    answers.sort_by(f64::total_cmp);
    let applied = last["progress"]["applied"].as_u64().unwrap_or(0);
    let figures = json!({
        "bench": "rollout",
        "store": backend,
        "collectors": collectors,
        "applied": applied,
        "progress": last["progress"],
        "batches": last["batches_started"],
        "start_answer_ms": start_answer.as_secs_f64() * 1000.0,
        "rollout_s": duration.as_secs_f64(),
        "server_cpu_s": cpu,
        "api_answers": answers.len(),
        "api_answer_ms": {
            "p50": quantile(&answers, 0.5),
            "p99": quantile(&answers, 0.99),
            "max": answers.last().copied().unwrap_or(f64::NAN),
        },
        "load_configs_applied": report.configs.applied,
        "load_errors": report.errors.total,
        "load_errors_by_kind": report.errors.by_kind,
        "server_rss_kib": rss_kib,
    });
    eprintln!(
        "{backend}: rollout to {collectors} collectors completed in {:.1} s ({} batches), \
         {applied} applied; server CPU {cpu:.1} s; start answered in {:.0} ms; \
         GET /rollouts/{{id}} x{}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        duration.as_secs_f64(),
        last["batches_started"],
        start_answer.as_secs_f64() * 1000.0,
        answers.len(),
        quantile(&answers, 0.5),
        quantile(&answers, 0.99),
        answers.last().copied().unwrap_or(f64::NAN),
    );
    figures
}

fn main() {
    server::runtime().block_on(async {
        let collectors: usize = server::setting("ROLLOUT_COLLECTORS", 15_000);
        let poll = Duration::from_millis(server::setting("ROLLOUT_POLL_MS", 200));
        let backend = std::env::var("ROLLOUT_BACKEND").unwrap_or_else(|_| "sqlite".into());
        let figures = if backend == "postgres" {
            let (url, own) = database::postgres("rollout").await;
            let figures = run("postgres", url, collectors, poll).await;
            drop(own);
            figures
        } else {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("rollout.db").display());
            run("sqlite", url, collectors, poll).await
        };
        println!("{figures}");
        assert_eq!(
            figures["applied"].as_u64(),
            Some(collectors as u64),
            "every target applied"
        );
    });
}

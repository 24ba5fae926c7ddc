//! Three nodes on one PostgreSQL (fsync on), each holding N WebSocket collectors from its own
//! load-generator process: how long until the API (asked on one node) counts every collector
//! connected, each node's memory per collector, and, after one node is killed (SIGKILL), how long
//! until a survivor has marked all of its collectors Disconnected.
//!
//! `cargo build --release -p opampd-load && cargo bench --bench replicas` (15,000 collectors per
//! node; `REPLICA_COLLECTORS` to change it; `DATABASE_URL` to use a running PostgreSQL). Prints a
//! human summary and one JSON line.

// A measuring tool: a failure should stop it loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    dead_code
)]

mod support;
use support::{database, server};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::{Server, free_port};

const NODES: [&str; 3] = ["a", "b", "c"];

/// `opampd-load`, built beside this benchmark (`cargo build --release -p opampd-load`).
fn load_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = dir.join("opampd-load");
    assert!(
        binary.exists(),
        "{} is missing: cargo build --release -p opampd-load first",
        binary.display()
    );
    binary
}

async fn summary(client: &reqwest::Client, api: &str) -> Value {
    server::get_json(client, &format!("http://{api}/api/v1/summary")).await
}

/// Polls the summary on `api` until `check` holds; how long it took.
async fn until(
    client: &reqwest::Client,
    api: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let now = summary(client, api).await;
        if check(&now) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_mins(10),
            "{what}: still {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn main() {
    server::runtime().block_on(async {
        let per_node: u64 = server::setting("REPLICA_COLLECTORS", 15_000);
        let (url, own) = database::postgres("replicas").await;
        let client = server::http_client();
        let data: Vec<_> = NODES.iter().map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = Vec::new();
        for (name, dir) in NODES.iter().zip(&data) {
            let (opamp, api) = (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            );
            let mut node = Server::start(
                dir.path(),
                &url,
                &opamp,
                &api,
                &[("OPAMPD_SERVER__NODE_ID", name)],
            );
            node.ready(&client).await;
            nodes.push((node, opamp, api));
        }
        let binary = load_binary();
        let started = Instant::now();
        let mut loads = Vec::new();
        for (i, (node, opamp, _)) in nodes.iter().enumerate() {
            let sources = format!("127.0.{}.1-127.0.{}.40", i + 1, i + 1);
            let child = tokio::process::Command::new(&binary)
                .args([
                    "--url",
                    &format!("ws://{opamp}/v1/opamp"),
                    "-n",
                    &per_node.to_string(),
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
                    "--source-addrs",
                    &sources,
                    "--max-errors",
                    "1000000",
                    "--server-pid",
                    &node.pid().to_string(),
                    "--quiet",
                ])
                .stdout(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("opampd-load starts");
            loads.push(child);
        }
        let api_a = nodes[0].2.clone();
        let total = per_node * 3;
        until(&client, &api_a, "every collector connected", |s| {
            s["by_state"]["connected"].as_u64() == Some(total)
        })
        .await;
        let all_connected = started.elapsed();
        // Settle: heartbeats are 30 s apart, so memory is read with every collector idle.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss: Vec<u64> = nodes.iter().map(|(n, ..)| n.rss_kib().unwrap()).collect();
        let per_collector: Vec<f64> = rss.iter().map(|r| *r as f64 / per_node as f64).collect();

        let killed = Instant::now();
        nodes[2].0.kill();
        until(&client, &api_a, "the dead node's collectors disconnected", |s| {
            s["by_state"]["disconnected"].as_u64() == Some(per_node)
        })
        .await;
        let takeover = killed.elapsed();
        for load in &mut loads {
            let _ = load.kill().await;
        }
        for (node, ..) in &mut nodes[..2] {
            node.stop();
        }
        let figures = json!({
            "bench": "replicas",
            "nodes": 3,
            "collectors_per_node": per_node,
            "start_to_all_connected_s": all_connected.as_secs_f64(),
            "node_rss_kib": rss,
            "node_rss_kib_per_collector": per_collector,
            "kill_to_all_disconnected_s": takeover.as_secs_f64(),
            "node_timeout_s": 10,
        });
        eprintln!(
            "3 nodes x {per_node} WebSocket collectors: all connected (API on node a) {:.1} s after \
             the loads started; RSS per node {rss:?} KiB ({per_collector:.1?} KiB per collector); \
             node c killed: its {per_node} collectors Disconnected {:.1} s later (node_timeout 10 s)",
            all_connected.as_secs_f64(),
            takeover.as_secs_f64(),
        );
        println!("{figures}");
        drop(own);
    });
}

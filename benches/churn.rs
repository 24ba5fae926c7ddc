//! Collectors that come and go (pods: a fresh uid at every start): waves of N WebSocket
//! collectors with fresh uids connect, say hello and leave; after each wave the server evicts them
//! (`collectors.grace_period` is 5 s here) and its resident memory is read once it has settled. The
//! figure to watch: memory after each wave comes back down near the baseline, and does not climb
//! from wave to wave.
//!
//! `cargo bench --bench churn` (`CHURN_COLLECTORS`, default 10,000; `CHURN_WAVES`, default 4). SQLite.
//! Prints a human summary and one JSON line.

// A measuring tool: a failure should stop it loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

#[path = "support/server.rs"]
mod server;

use std::time::{Duration, Instant};

use clap::Parser as _;
use opampd_load::Args;
use serde_json::json;
use server::{Server, free_port};

async fn resident(client: &reqwest::Client, api: &str) -> u64 {
    let body = server::get_json(client, &format!("http://{api}/readyz")).await;
    body["collectors"].as_u64().unwrap()
}

/// Polls until the server holds no collector, then until its memory stops falling (two readings a
/// second apart within 1 %): what it keeps, not what it is still giving back.
async fn settled(client: &reqwest::Client, server: &Server, api: &str) -> (Duration, u64) {
    let started = Instant::now();
    while resident(client, api).await > 0 {
        assert!(
            started.elapsed() < Duration::from_mins(2),
            "collectors still resident"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let evicted = started.elapsed();
    let mut last = server.rss_kib().unwrap();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = server.rss_kib().unwrap();
        if now + now / 100 >= last || started.elapsed() > Duration::from_mins(1) {
            return (evicted, now);
        }
        last = now;
    }
}

fn main() {
    server::runtime().block_on(async {
        let collectors: usize = server::setting("CHURN_COLLECTORS", 10_000);
        let waves: usize = server::setting("CHURN_WAVES", 4);
        let data = tempfile::tempdir().unwrap();
        let database = format!("sqlite://{}", data.path().join("churn.db").display());
        let (opamp, api) = (
            format!("127.0.0.1:{}", free_port()),
            format!("127.0.0.1:{}", free_port()),
        );
        let client = server::http_client();
        let mut server = Server::start(
            data.path(),
            &database,
            &opamp,
            &api,
            &[("OPAMPD_COLLECTORS__GRACE_PERIOD", "5s")],
        );
        server.ready(&client).await;
        let baseline = server.rss_kib().unwrap();
        let mut rows = Vec::new();
        for wave in 1..=waves {
            let args = Args::try_parse_from([
                "opampd-load",
                "--url",
                &format!("ws://{opamp}/v1/opamp"),
                "-n",
                &collectors.to_string(),
                "--rate",
                "4000",
                "--duration",
                "2s",
                "--source-addrs",
                "127.0.0.1-127.0.0.20",
                "--run-tag",
                &format!("wave{wave}"),
                "--quiet",
            ])
            .unwrap();
            let report = opampd_load::run(args).await.expect("the wave runs");
            assert!(report.ok, "{:?}", report.failures);
            let peak = server.rss_kib().unwrap();
            let (evicted_after, kept) = settled(&client, &server, &api).await;
            eprintln!(
                "wave {wave}: {collectors} collectors came and left; RSS {peak} KiB with them, \
                 {kept} KiB once evicted ({:.1} s) and settled (baseline {baseline} KiB)",
                evicted_after.as_secs_f64()
            );
            rows.push(json!({
                "wave": wave,
                "rss_with_them_kib": peak,
                "rss_after_kib": kept,
                "evicted_after_s": evicted_after.as_secs_f64(),
            }));
        }
        server.stop();
        println!(
            "{}",
            json!({
                "bench": "churn",
                "collectors_per_wave": collectors,
                "grace_period_s": 5,
                "rss_baseline_kib": baseline,
                "waves": rows,
            })
        );
    });
}

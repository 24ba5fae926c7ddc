//! How fast the store takes the batcher's writes, and how fast the whole server takes collectors'
//! first messages and heartbeats with the write-behind batcher in the path.
//!
//! `cargo bench --bench store_write` measures SQLite; with `DATABASE_URL=postgres://…` (a database
//! the bench may fill) it measures PostgreSQL too. Prints one line per measurement.

// A measuring tool: a failure should stop it loudly.
#![allow(clippy::cast_precision_loss, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
#[allow(dead_code)]
mod server;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opampd::collector::facts::{Changed, FactParts};
use opampd::collector::persist::{Change, Hot};
use opampd::collector::{
    Collector, CollectorId, Description, Reason, State, Transition, Transport,
};
use opampd::config::Config;
use opampd::store::{self, Batch, Store};

const BATCH: usize = 1000;
const ROUNDS: usize = 20;

fn record(id: CollectorId) -> Collector {
    let mut c = Collector::new(id);
    c.state = Some(State::Connected);
    c.state_since = Some(SystemTime::now());
    c.state_reason = Some(Reason::Initial);
    c.connected = true;
    c.transport = Some(Transport::WebSocket);
    c.last_seen = Some(SystemTime::now());
    c.description = Some(Description {
        identifying: [("service.name".to_owned(), "otelcol".into())]
            .into_iter()
            .collect(),
        non_identifying: [("host.name".to_owned(), "node-1".into())]
            .into_iter()
            .collect(),
    });
    c
}

async fn open(url: &str) -> Arc<dyn Store> {
    let mut config = Config::default();
    config.database.url = url.to_owned();
    let store = store::open(&config).await.expect("store opens");
    store.migrate().await.expect("migrations apply");
    store
}

/// ROUNDS batches of BATCH upserted records and BATCH new transitions each.
async fn batches(name: &str, store: &dyn Store) {
    let ids: Vec<CollectorId> = (0..BATCH).map(|_| CollectorId::new_v7()).collect();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut batch = Batch::default();
        for id in &ids {
            let record = record(*id);
            batch.take(Change::Record {
                hot: Box::new(Hot::of(&record).expect("a state")),
                // Every part on the first round (the records are created), none after: a
                // state change writes the hot part alone.
                facts: Box::new(if round == 0 {
                    Changed::all().take(&record)
                } else {
                    FactParts::default()
                }),
                epoch: 1,
                create: round == 0,
            });
            batch.take(Change::Transition {
                id: *id,
                epoch: 1,
                transition: Transition {
                    from: Some(State::Connected),
                    to: State::Error,
                    reason: Reason::RuntimeError,
                    message: "exporter down".into(),
                    at: SystemTime::now(),
                    cause: None,
                },
            });
        }
        store.write(&batch).await.expect("write");
    }
    let elapsed = started.elapsed();
    let per_batch = elapsed / u32::try_from(ROUNDS).unwrap_or(1);
    let rows = (2 * BATCH * ROUNDS) as f64;
    println!(
        "{name}: {ROUNDS} batches of {BATCH} records + {BATCH} transitions: {per_batch:?} per batch, {:.0} rows/s",
        rows / elapsed.as_secs_f64()
    );
}

/// Many plain-HTTP collectors say hello and heartbeat through the real listener.
async fn through_the_server(name: &str, url: &str) {
    let mut config = Config::default();
    config.opamp.listen = "127.0.0.1:0".parse().unwrap();
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    config.database.url = url.to_owned();
    let running = opampd::app::start(config).await.expect("server starts");
    let endpoint = format!("http://{}/v1/opamp", running.opamp_addr);
    let collectors = 2000;
    let heartbeats = 5;
    let client = server::http_client();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..collectors {
        let (client, endpoint) = (client.clone(), endpoint.clone());
        tasks.spawn(async move {
            let uid = bytes::Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes());
            for seq in 0..=heartbeats {
                let message = opampd::proto::AgentToServer {
                    instance_uid: uid.clone(),
                    sequence_num: seq,
                    capabilities: 0x1 | 0x800 | 0x2000,
                    agent_description: (seq == 0).then(Default::default),
                    ..Default::default()
                };
                let response = client
                    .post(&endpoint)
                    .header("content-type", "application/x-protobuf")
                    .body(prost::Message::encode_to_vec(&message))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(response.status(), 200);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let messages = collectors * (heartbeats as usize + 1);
    // Wait for the batcher to catch up, then count what landed.
    let store = Arc::clone(&running.store);
    let deadline = Instant::now() + Duration::from_secs(30);
    let landed = loop {
        let n = store.collectors().await.map_or(0, |c| c.len());
        if n >= collectors || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let caught_up = started.elapsed();
    println!(
        "{name}: {collectors} HTTP collectors x {} messages: {:.0} messages/s, all {landed} records stored after {caught_up:?}; records handed to the batcher: {}",
        heartbeats + 1,
        messages as f64 / elapsed.as_secs_f64(),
        running.registry.persistence().saved_records(),
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    batches("sqlite", open(&sqlite).await.as_ref()).await;
    let sqlite_server = format!("sqlite://{}", dir.path().join("server.db").display());
    through_the_server("sqlite", &sqlite_server).await;
    if let Ok(url) = std::env::var("DATABASE_URL") {
        batches("postgres", open(&url).await.as_ref()).await;
        through_the_server("postgres", &url).await;
    }
}

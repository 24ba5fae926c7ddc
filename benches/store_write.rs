//! How fast the store takes the batcher's writes, and how fast the whole server takes collectors'
//! first messages and heartbeats with the write-behind batcher in the path.
//!
//! `cargo bench --bench store_write` measures SQLite; with `DATABASE_URL=postgres://…` (a database
//! the bench may fill) it measures PostgreSQL too. Prints one line per measurement.
//! `STORE_WRITE_ONLY=storm` runs the storm's writes alone.

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
    Capabilities, Collector, CollectorId, Description, Health, Reason, State, Transition, Transport,
};
use opampd::config::Config;
use opampd::store::{self, Batch, Store};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;

/// The server's allocator, so that what is measured here is what the server spends.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const BATCH: usize = 1000;
const ROUNDS: usize = 20;

fn record(id: CollectorId) -> Collector {
    let mut c = Collector::new(id);
    c.state = Some(State::Connected);
    c.state_since = Some(SystemTime::now());
    c.state_reason = Some(Reason::Initial);
    // What the load generator's collectors report: a record's row is as wide as theirs.
    c.health = Some(Health {
        healthy: true,
        ..Health::default()
    });
    c.capabilities = Capabilities(0x3807);
    c.sequence_num = Some(1);
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
            // Every part on the first round (the records are created), none after: a state
            // change writes the hot part alone.
            batch.take(record_change(&record(*id), round == 0, round == 0));
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

/// How many collectors the storm's writes are spread over: the figures' storm.
const STORM: usize = 19_000;

/// This process's CPU time so far (user and system).
fn cpu() -> Duration {
    opampd_load::procfs::sample(std::process::id())
        .expect("this process's /proc entry")
        .cpu
}

/// What an actor hands over for `record`: every facts part when it creates it, none after.
fn record_change(record: &Collector, create: bool, whole: bool) -> Change {
    Change::Record {
        hot: Box::new(Hot::of(record).expect("a state")),
        facts: Box::new(if create {
            Changed::all().take(record)
        } else {
            FactParts::default()
        }),
        epoch: 1,
        create,
        whole,
    }
}

/// What a reconnect storm writes: STORM stored records, each dropped and back, so two record
/// updates and two transitions each, in batches of BATCH in the order the collectors happen to
/// come (not the records' order). Time and the process's CPU per returning collector. `whole`:
/// every update writes the whole hot part, as before ADR 0084; otherwise the state part alone, as
/// the actor asks when only the state changed.
async fn storm(name: &str, store: &dyn Store, whole: bool) {
    let records: Vec<Collector> = (0..STORM).map(|_| record(CollectorId::new_v7())).collect();
    for chunk in records.chunks(BATCH) {
        let mut batch = Batch::default();
        for record in chunk {
            batch.take(record_change(record, true, true));
        }
        store.write(&batch).await.expect("write");
    }
    // A fixed shuffle, so that runs compare: the collectors come back in no stored order.
    let mut order: Vec<usize> = (0..STORM).collect();
    order.shuffle(&mut StdRng::seed_from_u64(0x9E37_79B9_7F4A_7C15));
    let (cpu_before, started) = (cpu(), Instant::now());
    for (to, reason, connected) in [
        (State::Disconnected, Reason::NetworkInterruption, false),
        (State::Connected, Reason::ConnectionRestored, true),
    ] {
        for chunk in order.chunks(BATCH) {
            let mut batch = Batch::default();
            for &i in chunk {
                let mut record = records[i].clone();
                let from = record.state;
                record.state = Some(to);
                record.state_reason = Some(reason);
                record.connected = connected;
                record.state_since = Some(SystemTime::now());
                batch.take(record_change(&record, false, whole));
                batch.take(Change::Transition {
                    id: record.id,
                    epoch: 1,
                    transition: Transition {
                        from,
                        to,
                        reason,
                        message: String::new(),
                        at: SystemTime::now(),
                        cause: None,
                    },
                });
            }
            store.write(&batch).await.expect("write");
        }
    }
    let (elapsed, cpu) = (started.elapsed(), cpu().saturating_sub(cpu_before));
    let per = |d: Duration| d.as_secs_f64() * 1e6 / STORM as f64;
    let written = if whole { "whole" } else { "state part" };
    println!(
        "{name}: the storm's writes for {STORM} collectors ({written}), batches of {BATCH}: {:.1} µs and {:.1} µs of CPU per returning collector ({elapsed:?})",
        per(elapsed),
        per(cpu),
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
    for whole in [true, false] {
        let storm_db = format!(
            "sqlite://{}",
            dir.path().join(format!("storm-{whole}.db")).display()
        );
        storm("sqlite", open(&storm_db).await.as_ref(), whole).await;
    }
    let postgres = std::env::var("DATABASE_URL").ok();
    if let Some(url) = &postgres {
        for whole in [true, false] {
            storm("postgres", open(url).await.as_ref(), whole).await;
        }
    }
    if std::env::var("STORE_WRITE_ONLY").is_ok_and(|only| only == "storm") {
        return;
    }
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    batches("sqlite", open(&sqlite).await.as_ref()).await;
    let sqlite_server = format!("sqlite://{}", dir.path().join("server.db").display());
    through_the_server("sqlite", &sqlite_server).await;
    if let Some(url) = postgres {
        batches("postgres", open(&url).await.as_ref()).await;
        through_the_server("postgres", &url).await;
    }
}

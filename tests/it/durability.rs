//! Collector state that holds at fleet scale: a restart storm against a store that cannot keep
//! up loses no label and restarts no history; bad bytes stop nobody; operators read their own
//! writes at once; collectors that leave stop costing memory; a cap on resident collectors; and
//! two live collectors with one uid end with two.

use std::time::Duration;

use bytes::Bytes;
use opampd::collector::{Reason, State};
use opampd::proto;
use serde_json::json;
use tokio::sync::mpsc;

use opampd::telemetry::metrics::{
    DUPLICATE_UIDS, Metrics, STORE_QUARANTINED as QUARANTINED, STORE_WRITE_SECONDS,
};

use crate::support::api::{Api, Scrape};
use crate::support::*;

use {Reason as R, State as S};

/// The retry delay an UNAVAILABLE answer carries.
fn retry_after(reply: &proto::ServerToAgent) -> Option<Duration> {
    match reply.error_response.as_ref()?.details.as_ref()? {
        proto::server_error_response::Details::RetryInfo(r) => {
            Some(Duration::from_nanos(r.retry_after_nanoseconds))
        }
    }
}

/// Connects and says hello until served, honouring UNAVAILABLE's retry delay as a collector
/// must; `told_to_wait` hears of every UNAVAILABLE.
async fn hello_until_served(
    ws_url: &str,
    uid: &Bytes,
    told_to_wait: &mpsc::UnboundedSender<()>,
) -> WsClient {
    let mut ws = WsClient::connect(ws_url).await;
    let deadline = tokio::time::Instant::now() + DEADLINE * 2;
    loop {
        let reply = ws.exchange(&hello(uid, 0)).await;
        let Some(wait) = retry_after(&reply).filter(|_| is_unavailable(&reply)) else {
            assert!(reply.error_response.is_none(), "{reply:?}");
            return ws;
        };
        let _ = told_to_wait.send(());
        assert!(
            tokio::time::Instant::now() + wait < deadline,
            "still not served at the deadline"
        );
        // The protocol's own instruction, not a guess at timing.
        tokio::time::sleep(wait).await;
    }
}

/// Item 1 of the issue, made deterministic: a pool of one connection and a store that cannot
/// claim a single record while a few hundred collectors reconnect at once after a restart.
async fn a_restart_storm_keeps_every_label_and_every_history(backend: Backend) {
    const N: usize = 200;
    let server = TestServer::on(backend, |c| {
        c.database.max_connections = 1;
        c.opamp.store_retry_after = Duration::from_secs(1);
    })
    .await;
    let api = Api::new(&server.api_url);
    let uids: Vec<Bytes> = (0..N).map(|_| new_uid()).collect();
    let (told, _) = mpsc::unbounded_channel();
    let mut sockets = Vec::new();
    for uid in &uids {
        sockets.push(hello_until_served(&server.ws_url, uid, &told).await);
    }
    for (i, uid) in uids.iter().enumerate() {
        let answer = api
            .put(
                &format!("/api/v1/collectors/{}/labels", id_of(uid)),
                &json!({"n": i.to_string(), "env": "prod"}),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }

    let server = server.restart().await;
    drop(sockets);
    let lock = StoreLock::take(&server).await;
    let (told, mut waited) = mpsc::unbounded_channel();
    let mut storm = tokio::task::JoinSet::new();
    for uid in uids.clone() {
        let (url, told) = (server.ws_url.clone(), told.clone());
        storm.spawn(async move { hello_until_served(&url, &uid, &told).await });
    }
    // The store stays locked until collectors have been told to come back later.
    tokio::time::timeout(DEADLINE, waited.recv())
        .await
        .expect("a collector was asked to wait while its record could not be read");
    lock.release().await;
    let mut back = Vec::new();
    while let Some(socket) = storm.join_next().await {
        back.push(socket.unwrap());
    }
    let api = Api::new(&server.api_url);

    for (i, uid) in uids.iter().enumerate() {
        let id = id_of(uid);
        let c = api.ok(&format!("/api/v1/collectors/{id}")).await;
        assert_eq!(
            c["labels"],
            json!({"n": i.to_string(), "env": "prod"}),
            "labels of collector {i}"
        );
        assert_eq!(
            server.steps(id).await,
            [
                (None, S::Connected, R::Initial),
                (Some(S::Connected), S::Disconnected, R::ServerTermination),
                (Some(S::Disconnected), S::Connected, R::ConnectionRestored),
            ],
            "history of collector {i}"
        );
    }
}

/// Writes the collector's record must not wait on: the API reads them back at once.
async fn operators_read_their_own_writes_at_once(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    let path = format!("/api/v1/collectors/{}", id_of(&uid));
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let seen = api.get(&path).await;
    assert_eq!(seen.status, 200, "visible once its first reply went out");
    assert_eq!(seen.body["state"], "connected");

    let labels = format!("{path}/labels");
    assert_eq!(
        api.put(&labels, &json!({"env": "prod", "tier": "gold"}))
            .await
            .status,
        200
    );
    assert_eq!(
        api.ok(&path).await["labels"],
        json!({"env": "prod", "tier": "gold"})
    );
    assert_eq!(
        api.patch(&labels, &json!({"tier": null, "zone": "eu"}))
            .await
            .status,
        200
    );
    assert_eq!(
        api.ok(&path).await["labels"],
        json!({"env": "prod", "zone": "eu"})
    );

    let goodbye = proto::AgentToServer {
        agent_disconnect: Some(proto::AgentDisconnect::default()),
        ..heartbeat(&uid, 1)
    };
    post_ok(&server.opamp_url, &goodbye).await;
    assert_eq!(
        api.ok(&path).await["state"],
        "disconnected",
        "committed before the reply"
    );

    assert_eq!(api.delete(&path).await.status, 204);
    assert_eq!(api.get(&path).await.status, 404, "gone at once");
    assert_eq!(api.get(&format!("{path}/transitions")).await.status, 404);

    // It comes straight back: a new collector, with nothing of the old one.
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let returned = api.ok(&path).await;
    assert_eq!(
        returned["labels"],
        json!({}),
        "forgotten labels stay forgotten"
    );
    assert_eq!(
        server.steps(id_of(&uid)).await,
        [(None, S::Connected, R::Initial)]
    );
}

crate::on_both_stores!(
    a_restart_storm_keeps_every_label_and_every_history,
    operators_read_their_own_writes_at_once,
);

/// Item 2 of the issue: a NUL in a collector's text is made storable on the way in; nothing is
/// refused, and every other collector's change lands with it.
#[tokio::test]
async fn a_collectors_bad_bytes_are_stored_safely_and_stop_nobody() {
    let server = TestServer::on(Backend::Postgres, |_| {}).await;
    let api = Api::new(&server.api_url);
    let (bad, good) = (new_uid(), new_uid());
    for uid in [&bad, &good] {
        post_ok(&server.opamp_url, &hello(uid, 0)).await;
    }
    post_ok(
        &server.opamp_url,
        &health_report(&bad, 1, false, "disk\0full"),
    )
    .await;
    post_ok(
        &server.opamp_url,
        &health_report(&good, 1, false, "exporter down"),
    )
    .await;
    let c = api.ok(&format!("/api/v1/collectors/{}", id_of(&bad))).await;
    assert_eq!(c["state"], "error");
    assert_eq!(c["state_message"], "disk\u{fffd}full");
    assert_eq!(c["health"]["last_error"], "disk\u{fffd}full");
    let other = api
        .ok(&format!("/api/v1/collectors/{}", id_of(&good)))
        .await;
    assert_eq!(other["state_message"], "exporter down");
    let health = &server.running().store_health;
    assert_eq!((health.failed_writes(), health.quarantined()), (0, 0));
    assert_eq!(readyz(&server.api_url).await.0, 200);
}

/// The quarantine behind that: rows PostgreSQL refuses for their data (here facts carrying a NUL,
/// which the wire never lets through) are found by splitting the batch, kept aside with their
/// error and counted; every other row lands and the waiting replies are released.
#[tokio::test]
async fn a_row_postgresql_refuses_is_quarantined_and_every_other_row_lands() {
    quarantine_among(5).await;
}

/// The same in a batch large enough to be written as two transactions at once: the half with
/// the refused row is split until it is found, and the other half lands whole.
#[tokio::test]
async fn a_refused_row_in_a_batch_written_in_two_halves_is_quarantined_alone() {
    quarantine_among(300).await;
}

/// On PostgreSQL a batch of 256 collectors or more goes as two transactions at once, each with
/// every row of half the collectors (ADR 0075): the rows' creating transactions say so.
#[tokio::test]
async fn a_large_batch_lands_on_postgresql_as_two_transactions_of_half_the_collectors() {
    use crate::store::{record_change, transition_change};
    use opampd::collector::{Collector, CollectorId, Transition};

    let db = fresh_database(Backend::Postgres).await;
    let store = open_store(&db.url, "a").await;
    let mut changes = Vec::new();
    for _ in 0..300 {
        let mut c = Collector::new(CollectorId::new_v7());
        c.state = Some(S::Connected);
        changes.push(record_change(&c, 1, true));
        let arrival = Transition {
            from: None,
            to: S::Connected,
            reason: R::Initial,
            message: String::new(),
            at: std::time::SystemTime::now(),
            cause: None,
        };
        changes.push(transition_change(c.id, 1, arrival));
    }
    let (writer, _) = written_in_one_batch(&store, changes).await;
    writer.finish(DEADLINE).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // Each collector's record and transition, with the transaction that wrote each.
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.id, c.xmin::text, t.xmin::text FROM collectors c \
         JOIN transitions t ON t.collector_id = c.id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 300);
    assert!(
        rows.iter()
            .all(|(_, record, transition)| record == transition),
        "a collector's rows in one transaction"
    );
    let mut per_transaction = std::collections::BTreeMap::<&str, usize>::new();
    for (_, record, _) in &rows {
        *per_transaction.entry(record.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_transaction.values().copied().collect::<Vec<_>>(),
        [150, 150],
        "two transactions, half the collectors each"
    );
}

async fn quarantine_among(collectors: usize) {
    use crate::store::{health_change, record_change, transition_change};
    use opampd::collector::{Collector, CollectorId, Health, Transition};

    let db = fresh_database(Backend::Postgres).await;
    let store = open_store(&db.url, "a").await;
    let record = |id: CollectorId, state: S, error: &str| {
        let mut c = Collector::new(id);
        c.state = Some(state);
        c.health = Some(Health {
            last_error: error.into(),
            ..Health::default()
        });
        c
    };
    let at = std::time::SystemTime::now();
    let moved = |id: CollectorId| {
        let transition = Transition {
            from: Some(S::Connected),
            to: S::Error,
            reason: R::RuntimeError,
            message: String::new(),
            at,
            cause: None,
        };
        transition_change(id, 1, transition)
    };
    let ids: Vec<CollectorId> = (0..collectors).map(|_| CollectorId::new_v7()).collect();
    let created = ids
        .iter()
        .map(|id| record_change(&record(*id, S::Connected, ""), 1, true));
    let (writer, _) = written_in_one_batch(&store, created.collect()).await;
    writer.finish(DEADLINE).await;
    let mut updates = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let error = if i == 2 { "bad\0byte" } else { "exporter down" };
        updates.push(health_change(&record(*id, S::Error, error), 1));
        updates.push(moved(*id));
    }
    let (writer, metrics) = written_in_one_batch(&store, updates).await;
    assert_all_landed_but_the_third(store.as_ref(), &ids).await;
    assert_eq!(writer.health.quarantined(), 1);
    assert_eq!(Scrape::parse(&metrics.render()).value(QUARANTINED, &[]), 1);
    assert!(writer.health.degraded().is_none());
    writer.finish(DEADLINE).await;
}

/// A batcher started with `changes` already queued, and a barrier behind them, so they go as one
/// batch however slowly this test runs; returned once the barrier is released.
async fn written_in_one_batch(
    store: &std::sync::Arc<dyn opampd::store::Store>,
    changes: Vec<opampd::collector::persist::Change>,
) -> (opampd::store::writer::Writer, Metrics) {
    use opampd::collector::persist::Change;
    use opampd::store::writer::{Writer, WriterSettings};

    let (tx, queue) = mpsc::channel(changes.len() + 1);
    for change in changes {
        tx.try_send(change).unwrap();
    }
    let (done, signal) = tokio::sync::oneshot::channel();
    tx.try_send(Change::Barrier { done, claim: None }).unwrap();
    let metrics = Metrics::default();
    let (writer, _fenced) = Writer::spawn(
        std::sync::Arc::clone(store),
        queue,
        // Everything is queued: the window only has to outlast taking it.
        WriterSettings {
            flush_interval: Duration::from_secs(1),
            max_pending: 1000,
        },
        metrics.clone(),
    );
    assert!(
        within("the batch", signal).await.is_ok(),
        "the replies waiting on the batch are released"
    );
    // Timed before the barriers are released.
    assert_eq!(writes_timed(&metrics), 1, "the changes went as one batch");
    (writer, metrics)
}

fn writes_timed(metrics: &Metrics) -> u64 {
    Scrape::parse(&metrics.render()).value(&format!("{STORE_WRITE_SECONDS}_count"), &[])
}

/// Every collector's record and transition landed; the third's facts are in quarantine.
async fn assert_all_landed_but_the_third(
    store: &dyn opampd::store::Store,
    ids: &[opampd::collector::CollectorId],
) {
    for (i, id) in ids.iter().enumerate() {
        let stored = store.load(*id).await.unwrap().unwrap();
        assert_eq!(stored.state, Some(S::Error), "collector {i}");
        assert_eq!(
            store.transitions(*id).await.unwrap().len(),
            1,
            "collector {i}"
        );
        let expected = if i == 2 { "" } else { "exporter down" };
        assert_eq!(stored.health.unwrap().last_error, expected, "collector {i}");
    }
    let kept = store.quarantined().await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!((kept[0].collector, kept[0].kind), (ids[2], "facts"));
    assert!(kept[0].error.contains("Unicode"), "{}", kept[0].error);
}

/// Item 4: collectors with fresh uids come and go; once gone (and the grace period over) they
/// cost no actor, and the one that returns is read back from the store.
#[tokio::test]
async fn collectors_that_leave_stop_being_resident_and_return_from_the_store() {
    const N: usize = 2000;
    let server = TestServer::start_with(|c| {
        c.collectors.grace_period = Duration::from_millis(100);
        c.opamp.heartbeat_interval = Duration::from_millis(100);
        c.opamp.liveness_intervals = 2;
    })
    .await;
    let registry = &server.running().registry;
    let uids: Vec<Bytes> = (0..N).map(|_| new_uid()).collect();
    for wave in uids.chunks(200) {
        let mut tasks = tokio::task::JoinSet::new();
        for uid in wave {
            let uid = uid.clone();
            let url = server.ws_url.clone();
            tasks.spawn(async move {
                let mut ws = WsClient::connect(&url).await;
                ws.exchange(&hello(&uid, 0)).await;
                ws.socket.close(None).await.unwrap();
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    }
    // An HTTP collector that simply stops polling leaves too.
    let http = new_uid();
    post_ok(&server.opamp_url, &hello(&http, 0)).await;
    eventually("every collector that left is evicted", || async {
        (registry.resident() == 0).then_some(())
    })
    .await;

    let back = uids[N / 2].clone();
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.exchange(&hello(&back, 0)).await;
    assert_eq!(
        server.steps(id_of(&back)).await,
        [
            (None, S::Connected, R::Initial),
            (Some(S::Connected), S::Disconnected, R::NetworkInterruption),
            (Some(S::Disconnected), S::Connected, R::ConnectionRestored),
        ]
    );
    assert_eq!(registry.resident(), 1);
    let http_history = server.store().transitions(id_of(&http)).await.unwrap();
    assert_eq!(
        steps(&http_history),
        [
            (None, S::Connected, R::Initial),
            (Some(S::Connected), S::Disconnected, R::NetworkInterruption),
        ]
    );
}

/// A cap on resident collectors: beyond it, new ones are asked to come back later, counted; once
/// one leaves, a newcomer gets in.
#[tokio::test]
async fn beyond_max_resident_new_collectors_are_asked_to_come_back() {
    let server = TestServer::start_with(|c| {
        c.collectors.max_resident = 3;
        c.collectors.grace_period = Duration::from_millis(50);
    })
    .await;
    let registry = &server.running().registry;
    let held: Vec<Bytes> = (0..3).map(|_| new_uid()).collect();
    for uid in &held {
        post_ok(&server.opamp_url, &hello(uid, 0)).await;
    }
    let newcomer = new_uid();
    let refused = post(&server.opamp_url, &hello(&newcomer, 0)).await;
    assert_eq!(refused.status, 503);
    assert!(refused.headers.contains_key("retry-after"));
    assert!(is_unavailable(&refused.message()));
    let mut ws = WsClient::connect(&server.ws_url).await;
    assert!(is_unavailable(&ws.exchange(&hello(&new_uid(), 0)).await));
    assert_eq!(registry.refused(), 2);
    assert!(
        server
            .store()
            .load(id_of(&newcomer))
            .await
            .unwrap()
            .is_none()
    );

    let goodbye = proto::AgentToServer {
        agent_disconnect: Some(proto::AgentDisconnect::default()),
        ..heartbeat(&held[0], 1)
    };
    post_ok(&server.opamp_url, &goodbye).await;
    eventually("the one that left is evicted", || async {
        (registry.resident() == 2).then_some(())
    })
    .await;
    post_ok(&server.opamp_url, &hello(&newcomer, 0)).await;
    assert_eq!(registry.resident(), 3);
}

/// Item 6: two live collectors with one uid (a cloned machine) replace each other a few times,
/// then the newer is given a uid of its own; both records say so, and the replacing stops.
#[tokio::test]
async fn two_live_collectors_with_one_uid_end_with_two_uids() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    let mut live = WsClient::connect(&server.ws_url).await;
    live.exchange(&hello(&uid, 0)).await;
    let mut replaced = 0;
    let (newcomer, fresh) = loop {
        let mut next = WsClient::connect(&server.ws_url).await;
        let reply = next.exchange(&hello(&uid, 0)).await;
        if let Some(identification) = reply.agent_identification {
            break (next, identification.new_instance_uid);
        }
        assert_eq!(
            live.expect_close().await,
            1008.into(),
            "the older one is replaced"
        );
        replaced += 1;
        assert!(replaced <= 3, "replacing would go on for ever");
        live = next;
    };
    assert_eq!(replaced, opampd::collector::contest::REPLACEMENTS);
    assert_eq!(fresh.len(), 16);
    assert_ne!(fresh, uid);

    // Both stay, each under its own uid, answered and never closed.
    let (mut kept, mut given) = (live, newcomer);
    for seq in 1..=5 {
        assert!(
            kept.exchange(&heartbeat(&uid, seq))
                .await
                .error_response
                .is_none()
        );
        assert!(
            given
                .exchange(&heartbeat(&fresh, seq))
                .await
                .error_response
                .is_none()
        );
    }
    let old = api.ok(&format!("/api/v1/collectors/{}", id_of(&uid))).await;
    let new = api
        .ok(&format!("/api/v1/collectors/{}", id_of(&fresh)))
        .await;
    assert_eq!(old["reassigned"]["kept"]["to"], id_of(&fresh).to_string());
    assert_eq!(new["reassigned"]["given"]["from"], id_of(&uid).to_string());
    assert_eq!(
        (old["connected"].clone(), new["connected"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(api.metrics().await.value(DUPLICATE_UIDS, &[]), 1);
}

//! Nothing lost: collectors' records and transitions reach the store, survive clean restarts,
//! crashes (kill -9 of the real binary) and a PostgreSQL outage, and histories continue; writes
//! as narrow as the news; during an outage the batcher backs off, holds a bounded backlog and
//! makes collectors wait beyond it; shutdown is bounded even then.

use std::time::Duration;

use bytes::Bytes;
use opampd::collector::{CollectorId, Reason, State};
use opampd::store::Store;
use opampd::telemetry::metrics::{STORE_PENDING, STORE_QUEUE, STORE_STALLS, STORE_WRITE_FAILURES};
use serde_json::json;
use tokio::time::Instant;

use crate::support::api::Api;
use crate::support::binary::ServerProcess;
use crate::support::postgres::PgServer;
use crate::support::*;

/// Waits until the store holds exactly `expected` as the collector's history.
async fn stored_history(store: &dyn Store, id: CollectorId, expected: &[Step]) {
    eventually(
        &format!("stored history of {id} = {expected:?}"),
        || async {
            let history = store.transitions(id).await.ok()?;
            (steps(&history) == expected).then_some(())
        },
    )
    .await;
}

use {Reason as R, State as S};

#[tokio::test]
async fn a_history_continues_across_a_clean_restart() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let id = id_of(&uid);
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.exchange(&hello(&uid, 0)).await;
    server
        .wait_for(id, "Connected", |c| c.state == Some(S::Connected))
        .await;

    let server = server.restart().await;
    // Shutdown flushed its server_termination before the new server started.
    let before = [
        (None, S::Connected, R::Initial),
        (Some(S::Connected), S::Disconnected, R::ServerTermination),
    ];
    assert_eq!(
        steps(&server.store().transitions(id).await.unwrap()),
        before
    );

    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.exchange(&hello(&uid, 0)).await;
    server
        .wait_for(id, "Connected again", |c| c.state == Some(S::Connected))
        .await;
    let after = [
        before[0],
        before[1],
        (Some(S::Disconnected), S::Connected, R::ConnectionRestored),
    ];
    assert_eq!(server.steps(id).await, after, "the history continues");
}

#[tokio::test]
async fn heartbeats_do_not_cost_a_write_each() {
    let server = TestServer::start_with(|c| {
        c.database.last_seen_interval = std::time::Duration::from_hours(1);
    })
    .await;
    let uid = new_uid();
    let id = id_of(&uid);
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    eventually("the first record lands", || async {
        server.store().load(id).await.ok().flatten()
    })
    .await;
    let persistence = server.running().registry.persistence();
    let saved = persistence.saved_records();

    for seq in 1..=20 {
        post_ok(&server.opamp_url, &heartbeat(&uid, seq)).await;
    }
    let view = server.view(id).await.unwrap();
    assert_eq!(view.sequence_num, Some(20), "every heartbeat was handled");
    assert_eq!(
        persistence.saved_records(),
        saved,
        "no record written for them"
    );
    let _ = server.history(id).await;
    let stored = server.store().load(id).await.unwrap().unwrap();
    assert!(
        view.last_seen > stored.last_seen,
        "last_seen not written yet"
    );

    // Real news is written at once.
    post_ok(
        &server.opamp_url,
        &health_report(&uid, 21, false, "disk full"),
    )
    .await;
    assert_eq!(persistence.saved_records(), saved + 1);
    let stored = eventually("the health change lands", || async {
        let c = server.store().load(id).await.ok().flatten()?;
        (c.state == Some(S::Error)).then_some(c)
    })
    .await;
    assert_eq!(stored.health.unwrap().last_error, "disk full");
    assert_eq!(stored.sequence_num, Some(21));
}

/// Past `database.last_seen_interval` a heartbeat writes `last_seen`, as a touch of that column
/// alone, not a record.
#[tokio::test]
async fn a_heartbeat_past_the_last_seen_interval_writes_last_seen() {
    let server = TestServer::start_with(|c| {
        c.database.last_seen_interval = Duration::from_millis(100);
    })
    .await;
    let uid = new_uid();
    let id = id_of(&uid);
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let _ = server.history(id).await;
    let first = server.store().load(id).await.unwrap().unwrap().last_seen;
    let persistence = server.running().registry.persistence();
    let saved = persistence.saved_records();
    let seq = std::cell::Cell::new(1);
    let (heard, stored) = eventually("a heartbeat's last_seen in the store", || async {
        post_ok(&server.opamp_url, &heartbeat(&uid, seq.get())).await;
        seq.set(seq.get() + 1);
        let heard = server.view(id).await?.last_seen;
        let _ = server.history(id).await;
        let stored = server.store().load(id).await.ok()??.last_seen;
        (stored > first).then_some((heard, stored))
    })
    .await;
    assert_eq!(stored, heard, "the latest heartbeat's time");
    assert_eq!(persistence.saved_records(), saved, "a touch, not a record");
    assert_eq!(server.steps(id).await, [(None, S::Connected, R::Initial)]);
}

/// A WebSocket collector that said hello, healthy or not.
async fn connect(url: &str, uid: &Bytes, healthy: bool) -> WsClient {
    let mut ws = WsClient::connect(url).await;
    ws.exchange(&hello(uid, 0)).await;
    if !healthy {
        ws.exchange(&health_report(uid, 1, false, "exporter down"))
            .await;
    }
    ws
}

#[tokio::test]
async fn after_kill_9_nothing_is_lost_and_collectors_are_disconnected_then_return() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("opampd.db").display());
    let mut server = ServerProcess::start_with_data(data.path(), &[], &[]).await;
    let uids: Vec<Bytes> = (0..3).map(|_| new_uid()).collect();
    let mut sockets = Vec::new();
    for (i, uid) in uids.iter().enumerate() {
        sockets.push(connect(&server.ws_url(), uid, i == 0).await);
    }
    let store = open_store(&url, "opampd").await;
    let sick = [
        (None, S::Connected, R::Initial),
        (Some(S::Connected), S::Error, R::RuntimeError),
    ];
    let well = [(None, S::Connected, R::Initial)];
    stored_history(store.as_ref(), id_of(&uids[0]), &well).await;
    for uid in &uids[1..] {
        stored_history(store.as_ref(), id_of(uid), &sick).await;
    }

    server.signal("KILL");
    assert!(!server.wait_exit().await.success());
    drop(sockets);

    let server = ServerProcess::start_with_data(data.path(), &[], &[]).await;
    // Recovery ran before the listeners opened, so this is already true.
    for (i, uid) in uids.iter().enumerate() {
        let c = store.load(id_of(uid)).await.unwrap().unwrap();
        assert_eq!(c.state, Some(S::Disconnected));
        assert_eq!(c.state_reason, Some(R::ServerTermination));
        assert!(!c.connected);
        let before = if i == 0 { &well[..] } else { &sick[..] };
        let mut expected = before.to_vec();
        expected.push((
            Some(before.last().unwrap().1),
            S::Disconnected,
            R::ServerTermination,
        ));
        assert_eq!(
            steps(&store.transitions(id_of(uid)).await.unwrap()),
            expected
        );
    }
    assert!(
        server.logged(
            "the last run did not shut down cleanly; its collectors are marked disconnected"
        )
    );

    let mut sockets = Vec::new();
    for uid in &uids {
        sockets.push(connect(&server.ws_url(), uid, true).await);
    }
    for uid in &uids {
        eventually("back to Connected, connection_restored", || async {
            let c = store.load(id_of(uid)).await.ok().flatten()?;
            let history = store.transitions(id_of(uid)).await.ok()?;
            let last = history.last()?;
            (c.state == Some(S::Connected)
                && (last.from, last.reason) == (Some(S::Disconnected), R::ConnectionRestored))
                .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn every_transition_lands_after_a_postgres_outage() {
    let mut pg = PgServer::start().await;
    let url = pg.create_database("outage").await;
    let server = TestServer::start_with(|c| {
        c.database.url = url.clone();
        c.opamp.commit_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    let uids: Vec<Bytes> = (0..5).map(|_| new_uid()).collect();
    for uid in &uids {
        post_ok(&server.opamp_url, &hello(uid, 0)).await;
    }
    for uid in &uids {
        stored_history(
            server.store(),
            id_of(uid),
            &[(None, S::Connected, R::Initial)],
        )
        .await;
    }

    pg.stop().await;
    // While the store is away, collectors' changes are taken and held, but a collector is never
    // answered 200 for a change that is not stored: it is told to try again.
    for uid in &uids {
        for (seq, healthy) in [(1, false), (2, true)] {
            let error = if healthy { "" } else { "exporter down" };
            let reply = post(&server.opamp_url, &health_report(uid, seq, healthy, error)).await;
            assert_eq!(reply.status, 503, "not committed, not acknowledged");
            assert!(reply.headers.contains_key("retry-after"));
            assert!(is_unavailable(&reply.message()));
        }
    }
    // Degraded, with every transition of the outage held: 5 collectors, 2 each.
    let (status, _) = eventually(
        "readyz reports the store degraded with the backlog",
        || async {
            let (status, body) = readyz(&server.api_url).await;
            (body["status"] == "degraded" && body["store"]["pending_transitions"] == 10)
                .then_some((status, body))
        },
    )
    .await;
    assert_eq!(status, 503);

    pg.restart().await;
    let expected = [
        (None, S::Connected, R::Initial),
        (Some(S::Connected), S::Error, R::RuntimeError),
        (Some(S::Error), S::Connected, R::ErrorResolved),
    ];
    for uid in &uids {
        stored_history(server.store(), id_of(uid), &expected).await;
    }
    let (status, body) = eventually("readyz is ready again", || async {
        let (status, body) = readyz(&server.api_url).await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(body["store"]["status"], "ok", "{status} {body}");
}

/// A store for `server` that cannot take writes: its PostgreSQL stopped.
async fn server_on_postgres(
    adjust: impl FnOnce(&mut opampd::config::Config),
) -> (PgServer, TestServer) {
    let mut pg = PgServer::start().await;
    let url = pg.create_database("outage").await;
    let server = TestServer::start_with(|c| {
        c.database.url = url;
        c.opamp.commit_timeout = Duration::from_millis(200);
        adjust(c);
    })
    .await;
    (pg, server)
}

/// Collectors that each report a problem and its end, concurrently, whatever the answers: over
/// plain HTTP, each on a task of its own (a request may wait as long as its actor does).
fn flapping(url: &str, uids: &[Bytes]) -> tokio::task::JoinSet<()> {
    let mut flips = tokio::task::JoinSet::new();
    for uid in uids {
        let (url, uid) = (url.to_owned(), uid.clone());
        flips.spawn(async move {
            for (seq, healthy) in [(1, false), (2, true)] {
                let error = if healthy { "" } else { "exporter down" };
                let reply = post(&url, &health_report(&uid, seq, healthy, error)).await;
                assert!(
                    matches!(reply.status.as_u16(), 200 | 503),
                    "{}",
                    reply.status
                );
            }
        });
    }
    flips
}

/// While the database is down the batcher holds at most `max_pending` transitions; then the
/// queue behind it fills, and collectors' actors wait for the database (counted as stalls)
/// rather than anything being dropped. When it is back, everything lands.
#[tokio::test]
async fn beyond_max_pending_collectors_wait_for_the_database_and_nothing_is_lost() {
    let (mut pg, server) = server_on_postgres(|c| {
        c.database.max_pending = 3;
        c.database.queue_capacity = 4;
    })
    .await;
    let api = Api::new(&server.api_url);
    let uids: Vec<Bytes> = (0..6).map(|_| new_uid()).collect();
    for uid in &uids {
        post_ok(&server.opamp_url, &hello(uid, 0)).await;
    }
    pg.stop().await;
    let flips = flapping(&server.opamp_url, &uids);
    eventually("the backlog at its bound and an actor waiting", || async {
        let m = api.metrics().await;
        let full = m.value(STORE_PENDING, &[]) == 3
            && m.value(STORE_QUEUE, &[]) == 4
            && m.value(STORE_STALLS, &[]) >= 1
            && m.get(STORE_WRITE_FAILURES, &[]) >= Some(1);
        full.then_some(())
    })
    .await;
    let (status, body) = readyz(&server.api_url).await;
    assert_eq!(
        (status, &body["status"]),
        (503, &json!("degraded")),
        "{body}"
    );
    assert_eq!(body["store"]["pending_transitions"], 3);

    pg.restart().await;
    within("every waiting collector answered", flips.join_all()).await;
    let expected = [
        (None, S::Connected, R::Initial),
        (Some(S::Connected), S::Error, R::RuntimeError),
        (Some(S::Error), S::Connected, R::ErrorResolved),
    ];
    for uid in &uids {
        assert_eq!(server.steps(id_of(uid)).await, expected, "{}", id_of(uid));
    }
    let after = api.metrics().await;
    assert_eq!(after.value(STORE_PENDING, &[]), 0);
    assert_eq!(after.value(STORE_QUEUE, &[]), 0);
}

/// While the database is down, failed writes are retried after 100 ms, then twice as long each
/// time: the fifth attempt comes no sooner than 100 + 200 + 400 + 800 ms after the first.
#[tokio::test]
async fn failed_writes_are_retried_with_a_doubling_back_off() {
    let (mut pg, server) = server_on_postgres(|_| {}).await;
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let health = &server.running().store_health;
    let failed_before = health.failed_writes();
    pg.stop().await;
    let stopped = Instant::now();
    let reply = post(&server.opamp_url, &health_report(&uid, 1, false, "x")).await;
    assert_eq!(reply.status, 503, "not committed");
    eventually("five failed attempts", || async {
        (health.failed_writes() - failed_before >= 5).then_some(())
    })
    .await;
    let waited = stopped.elapsed();
    assert!(
        waited >= Duration::from_millis(100 + 200 + 400 + 800),
        "five attempts within {waited:?}"
    );
    pg.restart().await;
    eventually("the change lands once the database is back", || async {
        let c = server.store().load(id_of(&uid)).await.ok()??;
        (c.state == Some(S::Error)).then_some(())
    })
    .await;
}

/// Shutdown waits at most `server.shutdown_timeout` for each of its steps: with the database
/// down and collectors' actors stuck behind a full queue (their connections and requests waiting
/// on them), it still ends, and says what it could not finish.
#[tokio::test]
async fn shutdown_ends_within_its_time_outs_while_the_database_is_down() {
    let (mut pg, mut server) = server_on_postgres(|c| {
        c.database.max_pending = 1;
        c.database.queue_capacity = 2;
        c.server.shutdown_timeout = Duration::from_millis(300);
    })
    .await;
    let api = Api::new(&server.api_url);
    let uids: Vec<Bytes> = (0..4).map(|_| new_uid()).collect();
    for uid in &uids {
        post_ok(&server.opamp_url, &hello(uid, 0)).await;
    }
    let ws_uid = new_uid();
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.exchange(&hello(&ws_uid, 0)).await;
    pg.stop().await;
    // The WebSocket collector's first change fills the backlog (its one transition) and is told
    // to come back, the barrier its reply waited on left in the queue; its second fills the
    // queue, and its actor, so its connection, waits.
    let first = ws
        .exchange(&health_report(&ws_uid, 1, false, "stuck"))
        .await;
    assert!(is_unavailable(&first), "{first:?}");
    ws.send(&health_report(&ws_uid, 2, true, "")).await;
    let api = &api;
    let metric = |name: &'static str| async move { api.metrics().await.value(name, &[]) };
    eventually("the queue full", || async {
        (metric(STORE_QUEUE).await == 2).then_some(())
    })
    .await;
    // Then every plain-HTTP collector's request waits on its actor, stuck the same way: the
    // queue stays full, so each of them is one more stall.
    let stalled = metric(STORE_STALLS).await;
    let _flips = flapping(&server.opamp_url, &uids);
    eventually("every actor waiting", || async {
        (metric(STORE_STALLS).await == stalled + 4).then_some(())
    })
    .await;
    let stopping = Instant::now();
    server.shutdown().await;
    assert!(
        stopping.elapsed() >= Duration::from_millis(300),
        "it did wait for what was stuck"
    );
}

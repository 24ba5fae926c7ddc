//! Nothing lost: collectors' records and transitions reach the store, survive clean restarts,
//! crashes (kill -9 of the real binary) and a PostgreSQL outage, and histories continue.

use bytes::Bytes;
use opampd::collector::{CollectorId, Reason, State};
use opampd::store::Store;

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

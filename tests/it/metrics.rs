//! `/metrics`: every server counts its own traffic, so each test reads exactly what it caused, in a
//! server of its own: messages and bytes by transport and direction, transitions, connections,
//! refusals, the fleet by state, residence, the store's writes, fenced writes and lagging
//! subscribers. (The store's outage metrics are read in `persistence.rs`, quarantined rows in
//! `durability.rs`, duplicate uids there too.)

use opampd::collector::Event;
use opampd::telemetry::metrics::*;
use prost::Message as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::api::{Api, Scrape};
use crate::support::*;

const HTTP_IN: [(&str, &str); 2] = [("transport", "http"), ("direction", "in")];
const HTTP_OUT: [(&str, &str); 2] = [("transport", "http"), ("direction", "out")];
const WS_IN: [(&str, &str); 2] = [("transport", "websocket"), ("direction", "in")];
const WS_OUT: [(&str, &str); 2] = [("transport", "websocket"), ("direction", "out")];
const WEBSOCKETS: [(&str, &str); 1] = [("transport", "websocket")];

/// POSTs `message` and returns the bytes of the reply's body (200 or not).
async fn exchanged(url: &str, message: &opampd::proto::AgentToServer) -> (u16, usize) {
    let reply = post(url, message).await;
    (reply.status.as_u16(), reply.body.len())
}

/// The store took every write at once: timed, nothing queued, held, refused or fenced, and no
/// other trouble counted.
fn assert_store_wrote_without_trouble(m: &Scrape) {
    let writes = m.value(&format!("{STORE_WRITE_SECONDS}_count"), &[]);
    assert!(writes >= 1, "the store was written: {writes}");
    assert_eq!(
        m.value(&format!("{STORE_WRITE_SECONDS}_bucket"), &[("le", "+Inf")]),
        writes
    );
    for (name, zero) in [
        (STORE_QUEUE, 0),
        (STORE_PENDING, 0),
        (STORE_STALLS, 0),
        (BUS_DROPPED, 0),
    ] {
        assert_eq!(m.value(name, &[]), zero, "{name}");
    }
    for untouched in [
        STORE_WRITE_FAILURES,
        STORE_QUARANTINED,
        STORE_FENCED,
        DUPLICATE_UIDS,
    ] {
        assert!(m.all(untouched).is_empty(), "{untouched}");
    }
}

#[tokio::test]
async fn metrics_show_exactly_this_servers_own_traffic() {
    let server = TestServer::start_with(|c| c.collectors.max_resident = 3).await;
    let api = Api::new(&server.api_url);
    let url = &server.opamp_url;

    let idle = api.metrics().await;
    assert_eq!(
        idle.get(MESSAGES, &HTTP_IN).unwrap_or(0),
        0,
        "nothing counted yet"
    );
    assert!(idle.all(TRANSITIONS).is_empty());
    assert_eq!(idle.value(RESIDENT, &[]), 0);
    for state in opampd::collector::State::ALL {
        assert_eq!(idle.value(COLLECTORS, &[("state", state.as_str())]), 0);
    }

    // Over HTTP: one collector says hello and turns unhealthy, another says hello.
    let (sick, fine) = (new_uid(), new_uid());
    let mut sent = Vec::new();
    let mut answered = Vec::new();
    for message in [
        hello(&sick, 0),
        health_report(&sick, 1, false, "disk full"),
        hello(&fine, 0),
    ] {
        let (status, len) = exchanged(url, &message).await;
        assert_eq!(status, 200);
        sent.push(message.encoded_len());
        answered.push(len);
    }
    // Over WebSocket, a third; it stays connected.
    let ws_uid = new_uid();
    let ws_hello = hello(&ws_uid, 0);
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.send(&ws_hello).await;
    let ws_reply = ws.next_binary().await.expect("a reply");
    // A fourth is one too many to be resident; then a body that is not protobuf, and one that
    // is not even of the right type.
    let refused = hello(&new_uid(), 0);
    let (status, _) = exchanged(url, &refused).await;
    assert_eq!(status, 503);
    sent.push(refused.encoded_len());
    let garbage = post_raw(
        url,
        &[("content-type", "application/x-protobuf")],
        vec![0xff; 7],
    )
    .await;
    assert_eq!(garbage.status, 400);
    sent.push(7);
    let json = post_raw(url, &[("content-type", "application/json")], vec![1]).await;
    assert_eq!(json.status, 415);

    let m = api.metrics().await;
    let sum = |lens: &[usize]| lens.iter().sum::<usize>() as u64;
    assert_eq!(m.value(MESSAGES, &HTTP_IN), 5, "every body that was read");
    assert_eq!(m.value(BYTES, &HTTP_IN), sum(&sent));
    assert_eq!(m.value(MESSAGES, &HTTP_OUT), 3, "every reply");
    assert_eq!(m.value(BYTES, &HTTP_OUT), sum(&answered));
    assert_eq!(m.value(MESSAGES, &WS_IN), 1);
    assert_eq!(m.value(BYTES, &WS_IN), ws_hello.encoded_len() as u64);
    assert_eq!(m.value(MESSAGES, &WS_OUT), 1);
    assert_eq!(
        m.value(BYTES, &WS_OUT),
        (ws_reply.len() - 1) as u64,
        "the reply without its header byte"
    );
    let initial = [("from", "none"), ("to", "connected"), ("reason", "initial")];
    let failing = [
        ("from", "connected"),
        ("to", "error"),
        ("reason", "runtime_error"),
    ];
    assert_eq!(m.value(TRANSITIONS, &initial), 3);
    assert_eq!(m.value(TRANSITIONS, &failing), 1);
    assert_eq!(m.all(TRANSITIONS).len(), 2, "no other transition");
    // The fleet's counts come from a background reading of the store (api.probe_interval).
    eventually("the background count to catch up", || async {
        let m = api.metrics().await;
        let count = |state| m.get(COLLECTORS, &[("state", state)]);
        (count("connected") == Some(2)
            && count("error") == Some(1)
            && count("disconnected") == Some(0))
        .then_some(())
    })
    .await;
    assert_eq!(m.value(CONNECTIONS, &WEBSOCKETS), 1);
    for (reason, n) in [
        ("unavailable", 1),
        ("bad_request", 1),
        ("unsupported_media_type", 1),
    ] {
        assert_eq!(m.value(REJECTED, &[("reason", reason)]), n, "{reason}");
    }
    assert_eq!(m.all(REJECTED).len(), 3, "no other refusal");
    assert_eq!(m.value(RESIDENT, &[]), 3);
    assert_eq!(m.value(RESIDENT_REFUSED, &[]), 1);
    assert_store_wrote_without_trouble(&m);
    for uid in [&sick, &fine, &ws_uid] {
        let id = id_of(uid).to_string();
        assert!(!m.text.contains(&id), "a collector id in the metrics");
    }

    // The WebSocket leaves: it is no longer counted as open.
    ws.socket.close(None).await.unwrap();
    eventually("the WebSocket no longer counted", || async {
        (api.metrics().await.value(CONNECTIONS, &WEBSOCKETS) == 0).then_some(())
    })
    .await;
}

/// Two replicas share a database; a collector moves to the second, and the first's late write
/// of it is refused: counted there, never acknowledged (the reply says to come back later), and
/// its connection is told to go elsewhere (1013).
#[tokio::test]
async fn a_write_under_a_superseded_claim_is_refused_counted_and_not_acknowledged() {
    let (first, second) = two_replicas().await;
    let uid = new_uid();
    let mut old = WsClient::connect(&first.ws_url).await;
    old.exchange(&hello(&uid, 0)).await;
    post_ok(&second.opamp_url, &hello(&uid, 0)).await;

    let reply = old
        .exchange(&health_report(&uid, 1, false, "on the old replica"))
        .await;
    assert!(is_unavailable(&reply), "not a receipt: {reply:?}");
    assert_eq!(old.expect_close().await, CloseCode::Again);
    let m = Api::new(&first.api_url).metrics().await;
    assert_eq!(m.value(STORE_FENCED, &[]), 1);
    let others = Api::new(&second.api_url).metrics().await;
    assert!(others.all(STORE_FENCED).is_empty());
    let stored = second.store().load(id_of(&uid)).await.unwrap().unwrap();
    assert!(
        stored.health.unwrap().healthy,
        "the superseded write did not land"
    );
}

/// A subscriber to the transition bus that falls more than 4096 transitions behind is dropped,
/// and counted, while the actors go on.
#[tokio::test]
async fn a_lagging_bus_subscriber_is_dropped_and_counted() {
    let server = TestServer::start().await;
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let id = id_of(&uid);
    let registry = &server.running().registry;
    let mut lagging = registry.subscribe();
    for _ in 0..2049 {
        let queue = Event::QueueForRollout {
            rollout: "r".into(),
            required: Vec::new(),
        };
        server.apply(id, queue).await;
        let remove = Event::RemoveFromRollout {
            rollout: "r".into(),
        };
        server.apply(id, remove).await;
    }
    assert!(
        within("the lagging subscriber's end", lagging.recv())
            .await
            .is_none(),
        "dropped rather than waited for"
    );
    let m = Api::new(&server.api_url).metrics().await;
    assert_eq!(m.value(BUS_DROPPED, &[]), 1);
    assert_eq!(
        m.value(
            TRANSITIONS,
            &[
                ("from", "connected"),
                ("to", "pending"),
                ("reason", "queued_for_rollout")
            ]
        ),
        2049,
        "every transition happened"
    );
}

/// Collectors that arrive together share their claims: a hundred WebSockets opened first, then
/// every first message sent at once, are claimed from the store in a few statements (one, here),
/// not one each, and the metrics count both the statements and the collectors they asked for.
/// (Whether claims a few milliseconds apart also share one, ADR 0078's wait, depends on timing:
/// that is measured in docs/performance.md, not tested.)
#[tokio::test]
async fn collectors_arriving_together_share_their_claims() {
    const N: u64 = 100;
    let server = TestServer::start().await;
    let mut clients =
        futures_util::future::join_all((0..N).map(|_| WsClient::connect(&server.ws_url))).await;
    let idle = Api::new(&server.api_url).metrics().await;
    assert_eq!(
        idle.value(STORE_CLAIMS, &[]),
        0,
        "no claim before a message"
    );
    let firsts = clients.iter_mut().map(|client| async move {
        let uid = new_uid();
        let reply = client.exchange(&hello(&uid, 0)).await;
        assert_eq!(reply.instance_uid, uid, "answered after its claim");
    });
    within(
        "every first message answered",
        futures_util::future::join_all(firsts),
    )
    .await;
    let m = Api::new(&server.api_url).metrics().await;
    assert_eq!(
        m.value(STORE_CLAIMED, &[]),
        N,
        "each collector claimed once"
    );
    let statements = m.value(STORE_CLAIMS, &[]);
    assert!(
        (1..=N / 4).contains(&statements),
        "{statements} claim statements for {N} collectors arriving together"
    );
}

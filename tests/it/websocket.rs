//! The WebSocket transport: framing, limits, bad input, pings, replacement and shutdown.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use opampd::collector::{Reason, State};
use prost::Message as _;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::api::Api;
use crate::support::*;
use opampd::proto;
use opampd::telemetry::metrics::CONNECTIONS;

#[tokio::test]
async fn replies_echo_the_uid_with_capabilities_and_header() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect(&server.ws_url).await;
    let uid = new_uid();
    let reply = client.exchange(&hello(&uid, 0)).await;
    assert_eq!(reply.instance_uid, uid);
    let accepts_status = proto::ServerCapabilities::AcceptsStatus as u64;
    assert_eq!(
        reply.capabilities & accepts_status,
        accepts_status,
        "always set"
    );
    assert!(reply.error_response.is_none());
    let view = server
        .wait_for(id_of(&uid), "connected", |v| v.connected)
        .await;
    assert_eq!(
        view.transport,
        Some(opampd::collector::Transport::WebSocket)
    );
}

#[tokio::test]
async fn headerless_legacy_messages_are_accepted() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect(&server.ws_url).await;
    let uid = new_uid();
    client.send_raw(hello(&uid, 0).encode_to_vec()).await;
    let reply = client.recv().await;
    assert_eq!(reply.instance_uid, uid);
    assert!(reply.error_response.is_none());
}

#[tokio::test]
async fn an_empty_message_is_valid_but_has_no_uid() {
    // `[0x00]` is a legal, empty AgentToServer; with no uid it cannot be attributed: BAD_REQUEST.
    let server = TestServer::start().await;
    let mut client = WsClient::connect(&server.ws_url).await;
    client.send_raw(vec![0]).await;
    assert!(is_bad_request(&client.recv().await));
}

#[tokio::test]
async fn undecodable_protobuf_gets_bad_request_and_the_connection_stays_usable() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect(&server.ws_url).await;
    client.send_raw(vec![0, 0xff, 0xff, 0xff]).await;
    assert!(is_bad_request(&client.recv().await));
    // A non-zero header is malformed too.
    client.send_raw(vec![1, 2, 3]).await;
    assert!(is_bad_request(&client.recv().await));
    let uid = new_uid();
    let reply = client.exchange(&hello(&uid, 0)).await;
    assert_eq!(reply.instance_uid, uid);
    assert!(reply.error_response.is_none());
}

#[tokio::test]
async fn wrong_uid_lengths_get_bad_request() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect(&server.ws_url).await;
    for len in [0usize, 8, 17, 32] {
        let mut message = heartbeat(&new_uid(), 0);
        message.instance_uid = vec![7u8; len].into();
        let reply = client.exchange(&message).await;
        assert!(is_bad_request(&reply), "length {len}");
        assert_eq!(
            reply.instance_uid, message.instance_uid,
            "echoed even when refused"
        );
    }
}

#[tokio::test]
async fn text_frames_close_with_1003() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect(&server.ws_url).await;
    client
        .socket
        .send(Message::Text("hello".into()))
        .await
        .unwrap();
    assert_eq!(client.expect_close().await, CloseCode::Unsupported);
}

#[tokio::test]
async fn oversize_messages_close_with_1009() {
    let server = TestServer::start_with(|c| c.opamp.max_message_bytes = 4096).await;
    let mut client = WsClient::connect(&server.ws_url).await;
    let mut message = hello(&new_uid(), 0);
    message.custom_message = Some(proto::CustomMessage {
        capability: "io.example/big".into(),
        r#type: "blob".into(),
        data: vec![b'x'; 8192].into(),
    });
    client.send(&message).await;
    assert_eq!(client.expect_close().await, CloseCode::Size);
}

#[tokio::test]
async fn a_message_just_under_the_limit_is_fine() {
    let server = TestServer::start_with(|c| c.opamp.max_message_bytes = 4096).await;
    let mut client = WsClient::connect(&server.ws_url).await;
    let uid = new_uid();
    let mut message = hello(&uid, 0);
    message.custom_message = Some(proto::CustomMessage {
        data: vec![b'x'; 3000].into(),
        ..Default::default()
    });
    assert_eq!(client.exchange(&message).await.instance_uid, uid);
}

#[tokio::test]
async fn a_second_connection_replaces_the_first() {
    // Two places only: the first connection's place comes free once its session has ended, and
    // a session tells the collector's actor it ended before it gives its place back.
    let server = TestServer::start_with(|c| c.opamp.max_connections = 2).await;
    let uid = new_uid();
    let mut first = WsClient::connect(&server.ws_url).await;
    first.exchange(&hello(&uid, 0)).await;
    let mut second = WsClient::connect(&server.ws_url).await;
    second.exchange(&heartbeat(&uid, 1)).await;
    assert_eq!(first.expect_close().await, CloseCode::Policy);
    eventually("the replaced connection's session to end", || async {
        let probe = post(&server.opamp_url, &hello(&new_uid(), 0)).await;
        (probe.status == 200).then_some(())
    })
    .await;
    // The first connection counted as lost when the second came, and the second as a return,
    // as when the first one's end is seen first; its end, seen later, changes nothing more.
    let reply = second.exchange(&heartbeat(&uid, 2)).await;
    assert_eq!(reply.instance_uid, uid);
    assert_eq!(
        server.steps(id_of(&uid)).await,
        [
            (None, State::Connected, Reason::Initial),
            (
                Some(State::Connected),
                State::Disconnected,
                Reason::NetworkInterruption
            ),
            (
                Some(State::Disconnected),
                State::Connected,
                Reason::ConnectionRestored
            ),
        ]
    );
    assert!(server.view(id_of(&uid)).await.unwrap().connected);
}

#[tokio::test]
async fn closing_the_connection_disconnects_the_collector() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut client = WsClient::connect(&server.ws_url).await;
    client.exchange(&hello(&uid, 0)).await;
    client.socket.close(None).await.unwrap();
    server
        .wait_for(id_of(&uid), "disconnected", |v| !v.connected)
        .await;
}

#[tokio::test]
async fn a_silent_peer_is_closed_after_the_pong_timeout_and_not_before() {
    let (ping_every, pong_within) = (Duration::from_millis(200), Duration::from_millis(400));
    let server = TestServer::start_with(|c| {
        c.opamp.ws_ping_interval = ping_every;
        c.opamp.ws_pong_timeout = pong_within;
    })
    .await;
    // The client does not read, so it never answers the server's pings.
    let uid = new_uid();
    let api = Api::new(&server.api_url);
    let connecting = Instant::now();
    let mut client = WsClient::connect(&server.ws_url).await;
    client.exchange(&hello(&uid, 0)).await;
    // The moment the server gives the peer up is the moment it stops counting the connection
    // as open (the close handshake it then attempts takes longer, the peer not reading).
    let open = [("transport", "websocket")];
    eventually("the server to give the silent peer up", || async {
        (api.metrics().await.value(CONNECTIONS, &open) == 0).then_some(())
    })
    .await;
    // The first ping goes out a ping interval after the connection opened, and its pong is
    // awaited for the pong timeout: no sooner may the peer be given up.
    let waited = connecting.elapsed();
    assert!(
        waited >= ping_every + pong_within,
        "given up after {waited:?}"
    );
    server
        .wait_for(id_of(&uid), "disconnected after the pong timeout", |v| {
            !v.connected
        })
        .await;
    assert_eq!(client.expect_close().await, CloseCode::Error);
    assert_eq!(
        server.steps(id_of(&uid)).await,
        [
            (None, State::Connected, Reason::Initial),
            (
                Some(State::Connected),
                State::Disconnected,
                Reason::NetworkInterruption
            ),
        ]
    );
}

#[tokio::test]
async fn a_peer_that_answers_pings_stays_connected_past_the_pong_timeout() {
    let (ping_every, pong_within) = (Duration::from_millis(100), Duration::from_millis(500));
    let server = TestServer::start_with(|c| {
        c.opamp.ws_ping_interval = ping_every;
        c.opamp.ws_pong_timeout = pong_within;
    })
    .await;
    let uid = new_uid();
    let mut client = WsClient::connect(&server.ws_url).await;
    let connected = Instant::now();
    client.exchange(&hello(&uid, 0)).await;
    // Reading is what answers a ping (the client queues the pong and sends it as it reads on).
    // The server sends its next ping only once the last was answered, so eight pings are seven
    // answers, over more than one whole ping interval plus pong timeout.
    let mut pings = 0;
    within("eight pings", async {
        while pings < 8 {
            match client.socket.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("the connection ended or sent something else: {other:?}"),
            }
        }
    })
    .await;
    assert!(connected.elapsed() > ping_every + pong_within);
    let view = server.view(id_of(&uid)).await.unwrap();
    assert!(view.connected);
    assert_eq!(
        server.steps(id_of(&uid)).await,
        [(None, State::Connected, Reason::Initial)]
    );
    assert!(
        client
            .exchange(&heartbeat(&uid, 1))
            .await
            .error_response
            .is_none()
    );
}

#[tokio::test]
async fn shutdown_sends_close_1001_to_every_collector() {
    let mut server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = WsClient::connect(&server.ws_url).await;
        client.exchange(&hello(&new_uid(), 0)).await;
        clients.push(client);
    }
    let token = server.running().shutdown_token();
    token.cancel();
    for client in &mut clients {
        assert_eq!(client.expect_close().await, CloseCode::Away);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn server_pushes_reach_websocket_collectors_at_once() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut client = WsClient::connect(&server.ws_url).await;
    client.exchange(&hello(&uid, 0)).await;
    let pushed = server
        .running()
        .registry
        .apply(id_of(&uid), opampd::collector::Event::Restart)
        .await
        .unwrap();
    assert!(pushed);
    let message = client.recv().await;
    assert_eq!(message.instance_uid, uid);
    assert!(message.command.is_some());
}

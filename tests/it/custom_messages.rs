//! Custom messages (OpAMP `CustomMessage`) both ways: an operator's through the API to a collector
//! that declares the capability, a collector's onto the event stream; the server's own custom
//! capabilities announced; size and rate answered with 413 and 429; both ways across replicas.

use base64::Engine as _;
use bytes::Bytes;
use opampd::proto;
use serde_json::json;

use crate::support::api::{Api, EventStream, assert_error};
use crate::support::*;

const PING: &str = "io.example.ping";

fn declaring(uid: &Bytes, seq: u64, names: &[&str]) -> proto::AgentToServer {
    proto::AgentToServer {
        custom_capabilities: Some(proto::CustomCapabilities {
            capabilities: names.iter().map(|n| (*n).to_owned()).collect(),
        }),
        ..hello(uid, seq)
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The collector sends a `pong` carrying `data`, and `events` shows it.
async fn pong_seen(ws: &mut WsClient, uid: &Bytes, mut events: EventStream, data: &'static [u8]) {
    ws.exchange(&proto::AgentToServer {
        custom_message: Some(proto::CustomMessage {
            capability: PING.into(),
            r#type: "pong".into(),
            data: Bytes::from_static(data),
        }),
        ..heartbeat(uid, 1)
    })
    .await;
    let event = events.next().await;
    assert_eq!(event.event, "custom_message");
    assert_eq!(event.data["collector_id"], id_of(uid).to_string());
    assert_eq!(event.data["capability"], PING);
    assert_eq!(event.data["type"], "pong");
    assert_eq!(event.data["data"], b64(data));
}

#[tokio::test]
async fn a_custom_message_goes_both_ways_within_its_limits() {
    let server = TestServer::start_with(|config| {
        config.custom_messages.capabilities = vec![PING.to_owned()];
        config.custom_messages.max_bytes = 16;
        config.custom_messages.per_minute = 2;
    })
    .await;
    let api = Api::new(&server.api_url);
    let (uid, deaf) = (new_uid(), new_uid());
    let mut ws = WsClient::connect(&server.ws_url).await;
    let first = ws.exchange(&declaring(&uid, 0, &[PING])).await;
    let ours = first
        .custom_capabilities
        .expect("the server's own announced");
    assert_eq!(ours.capabilities, [PING]);
    post_ok(
        &server.opamp_url,
        &declaring(&deaf, 0, &["io.example.other"]),
    )
    .await;
    let path = format!("/api/v1/collectors/{}/custom-messages", id_of(&uid));
    api.field_becomes(id_of(&uid), "custom_capabilities", json!([PING]))
        .await;

    // Operator to collector.
    let answer = api
        .post(
            &path,
            &json!({"capability": PING, "type": "ping", "data": b64(b"hello")}),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let pushed = ws.recv().await.custom_message.expect("the message pushed");
    assert_eq!(
        (
            pushed.capability.as_str(),
            pushed.r#type.as_str(),
            &pushed.data[..]
        ),
        (PING, "ping", &b"hello"[..])
    );

    // Collector to operator, on the event stream.
    let events = api.events("?custom_messages=true", None).await;
    pong_seen(&mut ws, &uid, events, b"world").await;

    limits_answered(&api, &mut ws, &uid, &deaf).await;
}

/// Size, the capability declared, the form, the rate: each with its answer.
async fn limits_answered(api: &Api, ws: &mut WsClient, uid: &Bytes, deaf: &Bytes) {
    let path = format!("/api/v1/collectors/{}/custom-messages", id_of(uid));
    let big = api
        .post(
            &path,
            &json!({"capability": PING, "type": "t", "data": b64(&[0; 17])}),
        )
        .await;
    assert_error(&big, 413, "too_large");
    let deaf_path = format!("/api/v1/collectors/{}/custom-messages", id_of(deaf));
    assert_error(
        &api.post(&deaf_path, &json!({"capability": PING, "type": "t"}))
            .await,
        409,
        "conflict",
    );
    assert_error(
        &api.post(
            &path,
            &json!({"capability": PING, "type": "t", "data": "not base64!"}),
        )
        .await,
        400,
        "bad_request",
    );
    // Two a minute: the first went; one more may, the next is too fast.
    let selected = api
        .post(
            "/api/v1/custom-messages",
            &json!({"selector": "", "capability": PING, "type": "t"}),
        )
        .await;
    assert_eq!(selected.status, 202, "{}", selected.body);
    assert_eq!(selected.body["sent"], json!([id_of(uid).to_string()]));
    assert_eq!(ws.recv().await.custom_message.unwrap().r#type, "t");
    let fast = api
        .post(&path, &json!({"capability": PING, "type": "t"}))
        .await;
    assert_error(&fast, 429, "too_many_requests");
    let retry: u64 = fast.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    let skipped = api
        .post(
            "/api/v1/custom-messages",
            &json!({"capability": PING, "type": "t"}),
        )
        .await;
    assert_eq!(skipped.body["sent"], json!([]));
    assert_eq!(skipped.body["skipped"][0]["id"], id_of(uid).to_string());
}

#[tokio::test]
async fn custom_messages_cross_between_replicas() {
    let (one, two) = two_replicas_with(|c| {
        c.custom_messages.capabilities = vec![PING.to_owned()];
    })
    .await;
    let uid = new_uid();
    let mut ws = WsClient::connect(&one.ws_url).await;
    ws.exchange(&declaring(&uid, 0, &[PING])).await;
    let elsewhere = Api::new(&two.api_url);
    elsewhere
        .field_becomes(id_of(&uid), "custom_capabilities", json!([PING]))
        .await;

    // The collector's message, sent to node one, on node two's event stream.
    let events = elsewhere.events("?custom_messages=true", None).await;
    pong_seen(&mut ws, &uid, events, b"from one").await;

    // An operator's message through node two reaches the collector held by node one.
    let path = format!("/api/v1/collectors/{}/custom-messages", id_of(&uid));
    let answer = elsewhere
        .post(
            &path,
            &json!({"capability": PING, "type": "ping", "data": b64(b"from two")}),
        )
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let pushed = ws.recv().await.custom_message.expect("the message pushed");
    assert_eq!(&pushed.data[..], b"from two");
}

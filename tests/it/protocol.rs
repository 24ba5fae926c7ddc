//! Protocol semantics shared by both transports: identity, sequence numbers, full-state requests,
//! component hashes, auth and admission.

use opampd::proto::{self, ServerToAgentFlags};

use crate::support::*;

#[tokio::test]
async fn the_first_contact_without_full_state_asks_for_it() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let reply = post_ok(&server.opamp_url, &heartbeat(&uid, 5)).await;
    assert!(has_flag(&reply, ServerToAgentFlags::ReportFullState));
    // A complete first report needs nothing more.
    let other = new_uid();
    let reply = post_ok(&server.opamp_url, &hello(&other, 0)).await;
    assert!(!has_flag(&reply, ServerToAgentFlags::ReportFullState));
}

#[tokio::test]
async fn a_sequence_gap_asks_for_full_state() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut client = WsClient::connect(&server.ws_url).await;
    client.exchange(&hello(&uid, 0)).await;
    let in_order = client.exchange(&heartbeat(&uid, 1)).await;
    assert!(!has_flag(&in_order, ServerToAgentFlags::ReportFullState));
    let gap = client.exchange(&heartbeat(&uid, 3)).await;
    assert!(has_flag(&gap, ServerToAgentFlags::ReportFullState));
    let resumed = client.exchange(&heartbeat(&uid, 4)).await;
    assert!(!has_flag(&resumed, ServerToAgentFlags::ReportFullState));
}

#[tokio::test]
async fn absent_sub_messages_mean_unchanged() {
    let server = TestServer::start().await;
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    post_ok(&server.opamp_url, &heartbeat(&uid, 1)).await;
    let view = server.view(id_of(&uid)).await.unwrap();
    let description = view.description.expect("description kept");
    assert_eq!(
        description.identifying.get("service.name").unwrap(),
        "test-collector"
    );
    assert!(view.health.expect("health kept").healthy);
    assert_eq!(view.sequence_num, Some(1));
}

#[tokio::test]
async fn request_instance_uid_gets_a_fresh_uuid_v7() {
    let server = TestServer::start().await;
    let temporary = new_uid();
    let mut message = hello(&temporary, 0);
    message.flags = proto::AgentToServerFlags::RequestInstanceUid as u64;
    let reply = post_ok(&server.opamp_url, &message).await;
    assert_eq!(
        reply.instance_uid, temporary,
        "the reply answers the uid it was sent"
    );
    let new = reply
        .agent_identification
        .expect("a new uid")
        .new_instance_uid;
    let new = uuid::Uuid::from_slice(&new).expect("16 bytes");
    assert_eq!(new.get_version_num(), 7);
    // The collector is known by its new id from then on.
    server
        .wait_for(
            opampd::collector::CollectorId(new),
            "known by the new id",
            |v| v.connected,
        )
        .await;
}

#[tokio::test]
async fn legacy_ulid_uids_are_echoed_as_they_came() {
    let server = TestServer::start().await;
    let ulid = bytes::Bytes::from_static(b"01ARZ3NDEKTSV4RRFFQ69G5FAV");
    let mut client = WsClient::connect(&server.ws_url).await;
    let reply = client.exchange(&hello(&ulid, 0)).await;
    assert_eq!(reply.instance_uid, ulid);
    assert!(reply.error_response.is_none());
    // A legacy client asking for a new id gets it as ULID text, never raw bytes.
    let mut message = heartbeat(&ulid, 1);
    message.flags = proto::AgentToServerFlags::RequestInstanceUid as u64;
    let reply = client.exchange(&message).await;
    let new = reply.agent_identification.unwrap().new_instance_uid;
    assert_eq!(new.len(), 26);
    assert!(ulid::Ulid::from_string(std::str::from_utf8(&new).unwrap()).is_ok());
}

fn components_report(uid: &bytes::Bytes, sequence_num: u64, full: bool) -> proto::AgentToServer {
    with_components(
        hello(uid, sequence_num),
        "components-v1",
        &[("receivers", &["otlp"])],
        full,
    )
}

#[tokio::test]
async fn an_unknown_component_hash_asks_for_the_full_set_once_per_fleet() {
    let server = TestServer::start().await;
    let first = new_uid();
    let reply = post_ok(&server.opamp_url, &components_report(&first, 0, false)).await;
    assert!(has_flag(
        &reply,
        ServerToAgentFlags::ReportAvailableComponents
    ));
    let reply = post_ok(&server.opamp_url, &components_report(&first, 1, true)).await;
    assert!(!has_flag(
        &reply,
        ServerToAgentFlags::ReportAvailableComponents
    ));
    let view = server.view(id_of(&first)).await.unwrap();
    let components = view.available_components.unwrap().components.unwrap();
    assert_eq!(components.0["receivers"], vec!["otlp".to_owned()]);
    // Another collector with the same hash is not asked again.
    let second = new_uid();
    let reply = post_ok(&server.opamp_url, &components_report(&second, 0, false)).await;
    assert!(!has_flag(
        &reply,
        ServerToAgentFlags::ReportAvailableComponents
    ));
}

#[tokio::test]
async fn unknown_fields_and_bits_are_ignored() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut message = hello(&uid, 0);
    message.capabilities |= 1 << 50;
    message.flags |= 1 << 40;
    let mut bytes = prost::Message::encode_to_vec(&message);
    // Field 99, varint 1: a field from some future version of the protocol.
    bytes.extend_from_slice(&[0x98, 0x06, 0x01]);
    let reply = post_raw(
        &server.opamp_url,
        &[("content-type", "application/x-protobuf")],
        bytes,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.message().error_response.is_none());
}

#[tokio::test]
async fn tokens_are_required_when_configured() {
    let server = TestServer::start_with(|c| c.opamp.auth.tokens = vec!["s3cret".into()]).await;
    let message = prost::Message::encode_to_vec(&hello(&new_uid(), 0));
    let protobuf = ("content-type", "application/x-protobuf");
    let none = post_raw(&server.opamp_url, &[protobuf], message.clone()).await;
    assert_eq!(none.status, 401);
    let wrong = post_raw(
        &server.opamp_url,
        &[protobuf, ("authorization", "Bearer nope")],
        message.clone(),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let bearer = post_raw(
        &server.opamp_url,
        &[protobuf, ("authorization", "Bearer s3cret")],
        message.clone(),
    )
    .await;
    assert_eq!(bearer.status, 200);
    let secret = post_raw(
        &server.opamp_url,
        &[protobuf, ("authorization", "Secret-Key s3cret")],
        message,
    )
    .await;
    assert_eq!(secret.status, 200);

    let refused = WsClient::connect_with(&server.ws_url, &[]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected 401 on the upgrade, got {:?}", other.map(|_| ())),
    }
    let mut client = WsClient::connect_with(&server.ws_url, &[("authorization", "Bearer s3cret")])
        .await
        .expect("upgrade with the token");
    let uid = new_uid();
    assert_eq!(client.exchange(&hello(&uid, 0)).await.instance_uid, uid);
}

#[tokio::test]
async fn beyond_the_connection_limit_new_connections_get_503_with_retry_after() {
    let server = TestServer::start_with(|c| c.opamp.max_connections = 1).await;
    let mut held = WsClient::connect(&server.ws_url).await;
    held.exchange(&hello(&new_uid(), 0)).await;
    match WsClient::connect_with(&server.ws_url, &[]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((30..=45).contains(&retry), "jittered around 30 s: {retry}");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    let reply = post(&server.opamp_url, &hello(&new_uid(), 0)).await;
    assert_eq!(reply.status, 503);
    assert!(reply.headers.contains_key("retry-after"));
    // Once the held connection closes, the place is free again.
    held.socket.close(None).await.unwrap();
    eventually("a place frees up", || async {
        let reply = post(&server.opamp_url, &hello(&new_uid(), 0)).await;
        (reply.status == 200).then_some(())
    })
    .await;
}

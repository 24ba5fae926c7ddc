//! The plain-HTTP transport: content types, gzip both ways, limits, bad bodies, and messages kept
//! for the next poll.

use std::time::Duration;

use prost::Message as _;
use tokio::time::Instant;

use crate::support::*;
use opampd::collector::{Event, Reason as R, State as S};

const PROTOBUF: (&str, &str) = ("content-type", "application/x-protobuf");

#[tokio::test]
async fn a_poll_gets_an_exact_content_type_and_the_uid_back() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let reply = post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    assert_eq!(reply.instance_uid, uid);
    let accepts_status = opampd::proto::ServerCapabilities::AcceptsStatus as u64;
    assert_eq!(reply.capabilities & accepts_status, accepts_status);
    let view = server
        .wait_for(id_of(&uid), "connected", |v| v.connected)
        .await;
    assert_eq!(view.transport, Some(opampd::collector::Transport::Http));
}

#[tokio::test]
async fn content_type_is_matched_without_case_or_parameters() {
    let server = TestServer::start().await;
    let body = hello(&new_uid(), 0).encode_to_vec();
    let ok = post_raw(
        &server.opamp_url,
        &[("content-type", "Application/X-Protobuf; proto=opamp")],
        body.clone(),
    )
    .await;
    assert_eq!(ok.status, 200);
    let refused = post_raw(
        &server.opamp_url,
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(refused.status, 415);
}

#[tokio::test]
async fn gzip_request_bodies_are_accepted() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let reply = post_raw(
        &server.opamp_url,
        &[PROTOBUF, ("content-encoding", "gzip")],
        gzip(&hello(&uid, 0).encode_to_vec()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.message().instance_uid, uid);
}

#[tokio::test]
async fn replies_are_gzipped_when_the_client_accepts_it() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let body = hello(&uid, 0).encode_to_vec();
    let zipped = post_raw(
        &server.opamp_url,
        &[PROTOBUF, ("accept-encoding", "gzip")],
        body.clone(),
    )
    .await;
    assert_eq!(zipped.status, 200);
    assert_eq!(zipped.headers.get("content-encoding").unwrap(), "gzip");
    assert_eq!(
        zipped.headers.get("content-type").unwrap(),
        "application/x-protobuf"
    );
    assert_eq!(zipped.message().instance_uid, uid);

    let plain = post_raw(&server.opamp_url, &[PROTOBUF], body).await;
    assert!(plain.headers.get("content-encoding").is_none());
    assert_eq!(plain.message().instance_uid, uid);
}

#[tokio::test]
async fn unknown_encodings_get_415() {
    let server = TestServer::start().await;
    let reply = post_raw(
        &server.opamp_url,
        &[PROTOBUF, ("content-encoding", "br")],
        vec![1, 2, 3],
    )
    .await;
    assert_eq!(reply.status, 415);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_measured_after_decompression() {
    let server = TestServer::start_with(|c| c.opamp.max_message_bytes = 4096).await;
    let mut message = hello(&new_uid(), 0);
    message.custom_message = Some(opampd::proto::CustomMessage {
        data: vec![0u8; 64 * 1024].into(),
        ..Default::default()
    });
    let plain = message.encode_to_vec();
    let zipped = gzip(&plain);
    assert!(
        zipped.len() < 4096,
        "the compressed body alone is under the limit"
    );
    let reply = post_raw(
        &server.opamp_url,
        &[PROTOBUF, ("content-encoding", "gzip")],
        zipped,
    )
    .await;
    assert_eq!(reply.status, 413);
    let reply = post_raw(&server.opamp_url, &[PROTOBUF], plain).await;
    assert_eq!(reply.status, 413);
}

#[tokio::test]
async fn undecodable_bodies_and_broken_gzip_get_400() {
    let server = TestServer::start().await;
    let reply = post_raw(&server.opamp_url, &[PROTOBUF], vec![0xff, 0xff, 0xff]).await;
    assert_eq!(reply.status, 400);
    assert!(
        is_bad_request(&reply.message()),
        "the body explains in OpAMP terms"
    );
    let reply = post_raw(
        &server.opamp_url,
        &[PROTOBUF, ("content-encoding", "gzip")],
        b"not gzip at all".to_vec(),
    )
    .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn a_wrong_uid_length_gets_400_with_bad_request() {
    let server = TestServer::start().await;
    let mut message = heartbeat(&new_uid(), 0);
    message.instance_uid = vec![1u8; 10].into();
    let reply = post(&server.opamp_url, &message).await;
    assert_eq!(reply.status, 400);
    let body = reply.message();
    assert!(is_bad_request(&body));
    assert_eq!(body.instance_uid, message.instance_uid);
}

#[tokio::test]
async fn messages_for_http_collectors_wait_for_the_next_poll() {
    let server = TestServer::start().await;
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let registry = &server.running().registry;
    let configure = send_configuration(empty_configuration(vec![7; 32]));
    assert!(registry.apply(id_of(&uid), configure).await.unwrap());
    assert!(registry.apply(id_of(&uid), Event::Restart).await.unwrap());
    // First poll: the configuration (a command travels alone, so it waits one more poll).
    let first = post_ok(&server.opamp_url, &heartbeat(&uid, 1)).await;
    assert_eq!(
        &first.remote_config.expect("the configuration").config_hash[..],
        &[7; 32]
    );
    assert!(first.command.is_none());
    // The next poll shows it arrived (its status names the hash): the command goes next.
    let mut received = heartbeat(&uid, 2);
    received.remote_config_status = Some(opampd::proto::RemoteConfigStatus {
        last_remote_config_hash: vec![7; 32].into(),
        status: opampd::proto::RemoteConfigStatuses::Applying as i32,
        error_message: String::new(),
    });
    let second = post_ok(&server.opamp_url, &received).await;
    assert!(second.command.is_some());
    assert!(second.remote_config.is_none());
    let third = post_ok(&server.opamp_url, &heartbeat(&uid, 3)).await;
    assert!(third.command.is_none(), "delivered once");
    assert!(third.remote_config.is_none(), "delivered once");
}

/// Offers made while a plain-HTTP collector is between polls are folded: its next poll carries
/// the latest configuration and the latest package, never an older one, and the restart
/// command, which travels alone, the poll after.
#[tokio::test]
async fn a_poll_gets_the_latest_of_each_kind() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let id = id_of(&uid);
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let configure = |hash: u8| send_configuration(empty_configuration(vec![hash; 32]));
    let package = |version: &str| {
        Event::OfferPackage(opampd::collector::PackageOffer {
            name: "otelcol".into(),
            version: version.into(),
            download_url: format!("https://packages.example/otelcol-{version}.tar.gz"),
            content_hash: vec![1; 32],
            signature: vec![],
            hash: version.as_bytes().to_vec(),
            kept: Vec::new(),
            all_hash: Vec::new(),
        })
    };
    for event in [
        configure(1),
        package("0.2.0"),
        Event::Restart,
        configure(2),
        package("0.3.0"),
    ] {
        server.apply(id, event).await;
    }
    let first = post_ok(&server.opamp_url, &heartbeat(&uid, 1)).await;
    let config = first.remote_config.expect("a configuration");
    assert_eq!(
        &config.config_hash[..],
        &[2; 32],
        "the latest configuration"
    );
    let packages = first.packages_available.expect("a package offer");
    assert_eq!(
        packages.packages["otelcol"].version, "0.3.0",
        "the latest package"
    );
    assert!(first.command.is_none(), "the restart travels alone");
    // The offers stay until a report shows they arrived; this one does, so the command goes next.
    let mut received = heartbeat(&uid, 2);
    received.remote_config_status = Some(opampd::proto::RemoteConfigStatus {
        last_remote_config_hash: config.config_hash.clone(),
        status: opampd::proto::RemoteConfigStatuses::Applying as i32,
        error_message: String::new(),
    });
    received.package_statuses = Some(opampd::proto::PackageStatuses {
        server_provided_all_packages_hash: packages.all_packages_hash.clone(),
        ..Default::default()
    });
    let second = post_ok(&server.opamp_url, &received).await;
    assert!(second.command.is_some());
    assert!(second.remote_config.is_none() && second.packages_available.is_none());
    let third = post_ok(&server.opamp_url, &heartbeat(&uid, 3)).await;
    assert_eq!(third.remote_config, None);
    assert_eq!(third.packages_available, None);
    assert_eq!(third.command, None, "each delivered once");
}

#[tokio::test]
async fn the_instance_uid_header_is_read_but_the_body_decides() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let other = uuid::Uuid::now_v7().to_string();
    let reply = post_raw(
        &server.opamp_url,
        &[PROTOBUF, ("opamp-instance-uid", other.as_str())],
        hello(&uid, 0).encode_to_vec(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.message().instance_uid, uid);
    server
        .wait_for(id_of(&uid), "known by the body's uid", |v| v.connected)
        .await;
}

#[tokio::test]
async fn a_silent_http_collector_is_disconnected_after_its_liveness_window_and_not_before() {
    let server = TestServer::start_with(|c| {
        c.opamp.heartbeat_interval = Duration::from_millis(150);
        c.opamp.liveness_intervals = 3;
    })
    .await;
    let window = server.config.opamp.liveness_window();
    let uid = new_uid();
    let polled = Instant::now();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    server
        .wait_for(id_of(&uid), "disconnected after silence", |v| !v.connected)
        .await;
    let silent = polled.elapsed();
    assert!(silent >= window, "disconnected after {silent:?}");
    post_ok(&server.opamp_url, &heartbeat(&uid, 1)).await;
    assert_eq!(
        server.steps(id_of(&uid)).await,
        [
            (None, S::Connected, R::Initial),
            (Some(S::Connected), S::Disconnected, R::NetworkInterruption),
            (Some(S::Disconnected), S::Connected, R::ConnectionRestored),
        ]
    );
}

/// A collector that polls at its heartbeat interval is never taken for gone, however long it
/// goes on.
#[tokio::test]
async fn a_polling_http_collector_stays_connected_past_its_liveness_window() {
    let server = TestServer::start_with(|c| {
        c.opamp.heartbeat_interval = Duration::from_millis(250);
        c.opamp.liveness_intervals = 4;
    })
    .await;
    let window = server.config.opamp.liveness_window();
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let started = Instant::now();
    // Faster than it needs to: the collector's own schedule, not a guess at the server's.
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let (mut seq, mut last, mut longest) = (1, Instant::now(), Duration::ZERO);
    while started.elapsed() < window * 3 {
        every.tick().await;
        longest = longest.max(last.elapsed());
        last = Instant::now();
        post_ok(&server.opamp_url, &heartbeat(&uid, seq)).await;
        seq += 1;
    }
    assert!(
        longest < window,
        "this machine stalled for {longest:?}, longer than the window: the test cannot tell"
    );
    assert!(server.view(id_of(&uid)).await.unwrap().connected);
    assert_eq!(
        server.steps(id_of(&uid)).await,
        [(None, S::Connected, R::Initial)]
    );
}

#[tokio::test]
async fn agent_disconnect_marks_the_collector_offline_at_once() {
    let server = TestServer::start().await;
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let mut goodbye = heartbeat(&uid, 1);
    goodbye.agent_disconnect = Some(opampd::proto::AgentDisconnect {});
    post_ok(&server.opamp_url, &goodbye).await;
    let view = server.view(id_of(&uid)).await.unwrap();
    assert!(!view.connected);
}

/// A capability dropped while an offer waits for the next poll: the offer is not sent then, and
/// goes out with the first poll that declares the capability again.
#[tokio::test]
async fn an_offer_waits_while_the_collector_no_longer_accepts_it() {
    let server = TestServer::start().await;
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    let configure = send_configuration(empty_configuration(vec![5; 32]));
    assert!(
        server
            .running()
            .registry
            .apply(id_of(&uid), configure)
            .await
            .unwrap()
    );
    let without = opampd::proto::AgentToServer {
        capabilities: all_capabilities()
            & !(opampd::proto::AgentCapabilities::AcceptsRemoteConfig as u64),
        ..heartbeat(&uid, 1)
    };
    let reply = post_ok(&server.opamp_url, &without).await;
    assert!(reply.remote_config.is_none(), "not accepted now: not sent");
    let reply = post_ok(&server.opamp_url, &heartbeat(&uid, 2)).await;
    assert_eq!(
        &reply
            .remote_config
            .expect("sent once accepted again")
            .config_hash[..],
        &[5; 32]
    );
}

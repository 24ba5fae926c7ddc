//! The listeners' edges: every socket is counted against the limit from the moment it is
//! accepted, and every stage before a request is handled (header, body, idle keep-alive,
//! WebSocket handshake and writes) has its own deadline. Real sockets, real timers.

use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use opampd::telemetry::metrics::{SOCKETS, SOCKETS_PARKED, SOCKETS_REFUSED, SOCKETS_TIMED_OUT};
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use serde_json::json;

use crate::support::api::Api;
use crate::support::*;

/// Reads until the server closes the socket; returns what it sent and how long that took.
async fn until_closed(socket: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    within("the server to close the socket", async {
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

fn opamp_addr(server: &TestServer) -> std::net::SocketAddr {
    server.running().opamp_addr
}

async fn timed_out(server: &TestServer, stage: &str) -> u64 {
    Api::new(&server.api_url)
        .metrics()
        .await
        .get(
            SOCKETS_TIMED_OUT,
            &[("listener", "opamp"), ("stage", stage)],
        )
        .unwrap_or(0)
}

#[tokio::test]
async fn silent_sockets_count_against_the_limit_and_are_closed_after_the_header_timeout() {
    let header = Duration::from_millis(600);
    let server = TestServer::start_with(|c| {
        c.opamp.max_connections = 3;
        c.opamp.header_read_timeout = header;
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(opamp_addr(&server)).await.unwrap());
    }
    // Three sockets that said nothing fill the three places: a collector is told to come back.
    let refused = eventually("the silent sockets to be counted", || async {
        let reply = post(&server.opamp_url, &hello(&new_uid(), 0)).await;
        (reply.status == 503).then_some(reply)
    })
    .await;
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((30..=45).contains(&retry), "jittered around 30 s: {retry}");
    let scrape = Api::new(&server.api_url).metrics().await;
    assert_eq!(scrape.value(SOCKETS, &[("listener", "opamp")]), 3);
    assert!(scrape.value(SOCKETS_REFUSED, &[("listener", "opamp")]) >= 1);
    for socket in &mut silent {
        let (sent, waited) = until_closed(socket).await;
        assert!(
            sent.is_empty(),
            "nothing is sent to a silent socket: {sent}"
        );
        assert!(waited < header + Duration::from_secs(5), "{waited:?}");
    }
    assert_eq!(timed_out(&server, "header_read").await, 3);
    // Their places are free again.
    eventually("a place frees up", || async {
        (post(&server.opamp_url, &hello(&new_uid(), 0)).await.status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_half_sent_head_is_closed_at_the_header_timeout_and_not_before() {
    let header = Duration::from_millis(800);
    let server = TestServer::start_with(|c| c.opamp.header_read_timeout = header).await;
    let started = Instant::now();
    let mut socket = TcpStream::connect(opamp_addr(&server)).await.unwrap();
    socket
        .write_all(
            b"POST /v1/opamp HTTP/1.1\r\nHost: opampd\r\nContent-Type: application/x-protobuf\r\n",
        )
        .await
        .unwrap();
    let (sent, _) = until_closed(&mut socket).await;
    let waited = started.elapsed();
    assert!(sent.is_empty(), "{sent}");
    assert!(
        waited >= header,
        "closed after {waited:?}, before the timeout"
    );
    assert_eq!(timed_out(&server, "header_read").await, 1);
}

#[tokio::test]
async fn a_half_sent_body_gets_408_at_the_body_timeout() {
    let body = Duration::from_millis(800);
    let server = TestServer::start_with(|c| c.opamp.body_read_timeout = body).await;
    let mut socket = TcpStream::connect(opamp_addr(&server)).await.unwrap();
    let started = Instant::now();
    socket
        .write_all(
            b"POST /v1/opamp HTTP/1.1\r\nHost: opampd\r\nContent-Type: application/x-protobuf\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let (sent, _) = until_closed(&mut socket).await;
    let waited = started.elapsed();
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(
        waited >= body,
        "answered after {waited:?}, before the timeout"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(800);
    let server = TestServer::start_with(|c| {
        c.opamp.idle_timeout = idle;
        c.opamp.header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let mut socket = TcpStream::connect(opamp_addr(&server)).await.unwrap();
    socket
        .write_all(&raw_opamp_request(&hello(&new_uid(), 0)))
        .await
        .unwrap();
    // The answer, then the socket stays open, idle, past the (shorter) header allowance.
    let mut first = [0u8; 12];
    within("the answer", socket.read_exact(&mut first))
        .await
        .unwrap();
    let answered = Instant::now();
    assert_eq!(&first, b"HTTP/1.1 200");
    let (_, _) = until_closed(&mut socket).await;
    let waited = answered.elapsed();
    assert!(
        waited + Duration::from_millis(50) >= idle,
        "closed after {waited:?}"
    );
    assert_eq!(timed_out(&server, "idle").await, 1);
    assert_eq!(timed_out(&server, "header_read").await, 0);
}

/// Reads one response with a `Content-Length` body; returns its head, lower-cased.
async fn read_response(socket: &mut TcpStream) -> String {
    within("a response", async {
        let mut read = Vec::new();
        let mut byte = [0u8; 1];
        while !read.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).await.unwrap();
            read.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&read).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|value| value.trim().parse().ok())
            .expect("a content-length");
        let mut body = vec![0u8; length];
        socket.read_exact(&mut body).await.unwrap();
        head
    })
    .await
}

async fn parked(server: &TestServer) -> u64 {
    Api::new(&server.api_url)
        .metrics()
        .await
        .get(SOCKETS_PARKED, &[("listener", "opamp")])
        .unwrap_or(0)
}

async fn until_parked(server: &TestServer, count: u64) {
    eventually("the socket to be parked", || async {
        (parked(server).await == count).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_kept_alive_socket_is_parked_between_requests_and_serves_every_next_one() {
    let server = TestServer::start().await;
    let mut socket = TcpStream::connect(opamp_addr(&server)).await.unwrap();
    let uid = new_uid();
    socket
        .write_all(&raw_opamp_request(&hello(&uid, 0)))
        .await
        .unwrap();
    let head = read_response(&mut socket).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    until_parked(&server, 1).await;

    // A head that arrives in pieces after the socket was parked.
    let request = raw_opamp_request(&hello(&uid, 1));
    let (first, rest) = request.split_at(20);
    socket.write_all(first).await.unwrap();
    socket.flush().await.unwrap();
    socket.write_all(rest).await.unwrap();
    let head = read_response(&mut socket).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    until_parked(&server, 1).await;

    // Two requests in one write: both answered, in order, on the same socket.
    let mut two = raw_opamp_request(&hello(&uid, 2));
    two.extend(raw_opamp_request(&hello(&uid, 3)));
    socket.write_all(&two).await.unwrap();
    for _ in 0..2 {
        let head = read_response(&mut socket).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
    until_parked(&server, 1).await;
    let record = Api::new(&server.api_url).stored(id_of(&uid)).await;
    assert_eq!(record["state"], "connected", "{record}");

    // A peer that closes a parked socket takes it away.
    drop(socket);
    until_parked(&server, 0).await;
    let scrape = Api::new(&server.api_url).metrics().await;
    assert_eq!(scrape.value(SOCKETS, &[("listener", "opamp")]), 0);
}

#[tokio::test]
async fn a_websocket_that_says_nothing_is_closed_after_the_handshake_timeout() {
    let handshake = Duration::from_millis(600);
    let server = TestServer::start_with(|c| c.opamp.ws_handshake_timeout = handshake).await;
    let started = Instant::now();
    let mut client = WsClient::connect(&server.ws_url).await;
    assert_eq!(client.expect_close().await, CloseCode::Policy);
    assert!(started.elapsed() >= handshake);
    // One that speaks in time is served, and stays.
    let mut speaker = WsClient::connect(&server.ws_url).await;
    let uid = new_uid();
    assert_eq!(speaker.exchange(&hello(&uid, 0)).await.instance_uid, uid);
    tokio::time::sleep(handshake).await; // past the allowance: the session must still be open
    assert_eq!(
        speaker.exchange(&heartbeat(&uid, 1)).await.instance_uid,
        uid
    );
}

#[tokio::test]
async fn a_peer_that_stops_reading_is_closed_while_others_are_answered_promptly() {
    let write = Duration::from_millis(500);
    let server = TestServer::start_with(|c| {
        c.opamp.ws_write_timeout = write;
        c.api.max_body_bytes = 32 * 1024 * 1024;
    })
    .await;
    let api = Api::new(&server.api_url);
    // A tiny receive window: a large push cannot be written to this peer, which never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(opamp_addr(&server)).await.unwrap();
    let (mut stuck, _) = tokio_tungstenite::client_async(server.ws_url.as_str(), stream)
        .await
        .unwrap();
    let uid = new_uid();
    let components: &[(&str, &[&str])] = &[("receivers", &["otlp"]), ("exporters", &["kafka"])];
    let mut bytes = vec![0];
    with_components(hello(&uid, 0), "set-1", components, true)
        .encode(&mut bytes)
        .unwrap();
    stuck.send(Message::Binary(bytes.into())).await.unwrap();
    let id = id_of(&uid);
    api.stored(id).await;
    let labelled = api
        .put(
            &format!("/api/v1/collectors/{id}/labels"),
            &json!({"stuck": "yes"}),
        )
        .await;
    assert_eq!(labelled.status, 200);
    // An 8 MiB configuration: far more than the socket buffers between us hold.
    let yaml = format!(
        "# {}\nreceivers:\n  otlp:\nexporters:\n  kafka:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [kafka]\n",
        "x".repeat(8 * 1024 * 1024)
    );
    let stored = api
        .post(
            "/api/v1/configurations",
            &json!({"name": "big", "yaml": yaml}),
        )
        .await;
    assert_eq!(stored.status, 201, "{}", stored.body);
    let mut other = WsClient::connect(&server.ws_url).await;
    let other_uid = new_uid();
    other.exchange(&hello(&other_uid, 0)).await;
    let rollout = api
        .post(
            "/api/v1/rollouts",
            &json!({"configuration": "big", "version": 1, "selector": "stuck=yes"}),
        )
        .await;
    assert_eq!(rollout.status, 201, "{}", rollout.body);
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + DEADLINE;
    for seq in 1.. {
        let started = Instant::now();
        other.exchange(&heartbeat(&other_uid, seq)).await;
        slowest = slowest.max(started.elapsed());
        if timed_out(&server, "ws_write").await == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the stalled peer to be closed"
        );
    }
    assert!(
        slowest < Duration::from_secs(1),
        "another collector waited {slowest:?} for an answer"
    );
    server
        .wait_for(id, "the stalled collector disconnected", |v| !v.connected)
        .await;
    drop(stuck);
}

#[tokio::test]
async fn event_streams_beyond_the_cap_get_503_with_retry_after() {
    let server = TestServer::start_with(|c| c.api.max_event_streams = 2).await;
    let api = Api::new(&server.api_url);
    let first = api.events("", None).await;
    let second = api.events("", None).await;
    let refused = api.get("/api/v1/events").await;
    crate::support::api::assert_error(&refused, 503, "unavailable");
    assert_eq!(refused.headers["retry-after"], "5");
    // A stream's place comes back when its client goes.
    drop(first);
    eventually("a stream's place to come back", || async {
        let response = http_client()
            .get(format!("{}/api/v1/events", server.api_url))
            .send()
            .await
            .unwrap();
        (response.status() == 200).then_some(())
    })
    .await;
    drop(second);
}

#[tokio::test]
async fn probes_and_scrapes_answer_from_memory_while_the_store_is_locked() {
    // PostgreSQL: its table lock makes any count of the collectors wait (SQLite's WAL would not).
    let server = TestServer::on(Backend::Postgres, |c| {
        c.api.probe_interval = Duration::from_hours(1);
    })
    .await;
    let api = Api::new(&server.api_url);
    assert_eq!(readyz(&server.api_url).await.0, 200);
    // With the collectors' table locked, a scrape that counted them would wait (and, past its
    // two-second budget, leave the counts out); these answer at once, from the reading taken at
    // start-up.
    let lock = StoreLock::take(&server).await;
    for _ in 0..20 {
        // A scrape that waited on the store would take its whole two-second budget; one answered
        // from memory takes far less, even on a loaded machine.
        let started = Instant::now();
        assert_eq!(readyz(&server.api_url).await.0, 200);
        let scrape = api.metrics().await;
        assert_eq!(
            scrape.value(
                opampd::telemetry::metrics::COLLECTORS,
                &[("state", "connected")]
            ),
            0
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    lock.release().await;
}

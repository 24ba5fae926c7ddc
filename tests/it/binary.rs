//! The real `opampd` binary: start-up from the shipped configuration, health endpoints, bad
//! configuration, and graceful shutdown on SIGTERM.

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::binary::{ServerProcess, run};
use crate::support::*;

#[tokio::test]
async fn serves_both_listeners_and_health_endpoints() {
    let mut server = ServerProcess::start(&[], &[]).await;
    let api = format!("http://{}", server.api_addr);
    let health = http_client()
        .get(format!("{api}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = http_client()
        .get(format!("{api}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let uid = new_uid();
    let reply = post_ok(&server.opamp_url(), &hello(&uid, 0)).await;
    assert_eq!(reply.instance_uid, uid);
    server.signal("TERM");
    assert!(server.wait_exit().await.success());
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits_cleanly() {
    let mut server = ServerProcess::start(&["serve"], &[]).await;
    let mut client = WsClient::connect(&server.ws_url()).await;
    let uid = new_uid();
    client.exchange(&hello(&uid, 0)).await;
    server.signal("TERM");
    assert_eq!(client.expect_close().await, CloseCode::Away);
    assert!(server.wait_exit().await.success());
    assert!(server.logged("stopped"));
}

#[tokio::test]
async fn a_bad_configuration_value_fails_start_up_naming_the_key_and_source() {
    let output = run(&[], &[("OPAMPD_OPAMP__MAX_CONNECTIONS", "lots")]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("opamp.max_connections"), "{stderr}");
    assert!(stderr.contains("OPAMPD_OPAMP__MAX_CONNECTIONS"), "{stderr}");
}

#[tokio::test]
async fn environment_and_flags_override_the_file() {
    let mut server =
        ServerProcess::start(&[], &[("OPAMPD_OPAMP__AUTH__TOKENS", "[\"from-env\"]")]).await;
    let body = prost::Message::encode_to_vec(&hello(&new_uid(), 0));
    let protobuf = ("content-type", "application/x-protobuf");
    let refused = post_raw(&server.opamp_url(), &[protobuf], body.clone()).await;
    assert_eq!(refused.status, 401);
    let accepted = post_raw(
        &server.opamp_url(),
        &[protobuf, ("authorization", "Bearer from-env")],
        body,
    )
    .await;
    assert_eq!(accepted.status, 200);
    server.signal("TERM");
    assert!(server.wait_exit().await.success());
}

#[tokio::test]
async fn migrate_prepares_a_database_and_is_idempotent() {
    let data = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data.path().join("fresh.db").display());
    for _ in 0..2 {
        let output = run(&["migrate", "--database-url", &url], &[]).await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let store = open_store(&url, "opampd").await;
    assert!(store.collectors().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_database_fails_start_up_with_a_clear_message() {
    let url = "postgres://opampd:secret@127.0.0.1:1/opampd";
    let output = run(&["--database-url", url], &[]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open the database"), "{stderr}");
    assert!(
        stderr.contains("opampd:***@127.0.0.1:1"),
        "password hidden: {stderr}"
    );
    assert!(!stderr.contains("secret"), "{stderr}");
}

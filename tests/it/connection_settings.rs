//! Connection settings offers (OpAMP `ConnectionSettingsOffers`): made through the API per label
//! selector, sent to the collectors that accept each class over both transports, their status on
//! the record, a failed offer explained, and an offered heartbeat interval setting how long a
//! plain-HTTP collector may keep silent; an offer made on one replica reaches a collector that
//! arrives at another.

use std::time::Duration;

use bytes::Bytes;
use opampd::proto;
use opampd::proto::AgentCapabilities as Can;
use serde_json::{Value, json};

use crate::support::api::{Api, assert_error};
use crate::support::*;

fn settings_capabilities() -> u64 {
    all_capabilities()
        | capabilities(&[
            Can::ReportsOwnMetrics,
            Can::ReportsOwnLogs,
            Can::AcceptsOpAmpConnectionSettings,
            Can::ReportsConnectionSettingsStatus,
        ])
}

fn hello_accepting(uid: &Bytes, seq: u64) -> proto::AgentToServer {
    proto::AgentToServer {
        capabilities: settings_capabilities(),
        ..hello(uid, seq)
    }
}

fn status(uid: &Bytes, seq: u64, hash: &[u8], state: i32, error: &str) -> proto::AgentToServer {
    proto::AgentToServer {
        capabilities: settings_capabilities(),
        connection_settings_status: Some(proto::ConnectionSettingsStatus {
            last_connection_settings_hash: Bytes::copy_from_slice(hash),
            status: state,
            error_message: error.into(),
        }),
        ..heartbeat(uid, seq)
    }
}

fn offer_body(name: &str, selector: &str, heartbeat: u64) -> Value {
    json!({
        "name": name,
        "selector": selector,
        "opamp": {
            "destination_endpoint": "wss://opamp.example.com/v1/opamp",
            "headers": {"authorization": "Bearer fresh"},
            "heartbeat_interval_seconds": heartbeat,
            "tls": {"ca_pem_contents": "-----BEGIN CERTIFICATE-----\n...", "min_version": "1.3"},
        },
        "own_metrics": {"destination_endpoint": "https://otlp.example.com/v1/metrics"},
        "own_traces": {"destination_endpoint": "https://otlp.example.com/v1/traces"},
    })
}

/// The hash a collector accepting every class is sent: the SHA-256 of the settings' canonical
/// JSON (keys sorted, no spaces), computed here on our own from the API's view of the offer.
fn expected_hash(settings: &Value) -> String {
    use sha2::Digest as _;
    // serde_json's map keeps keys sorted (its `preserve_order` feature is off), so this is the
    // canonical form.
    let canonical = serde_json::to_vec(settings).unwrap();
    opampd::collector::machine::hex(&sha2::Sha256::digest(&canonical))
}

async fn label(api: &Api, uid: &Bytes, labels: Value) {
    let path = format!("/api/v1/collectors/{}/labels", id_of(uid));
    eventually("the collector in the store", || async {
        (api.put(&path, &labels).await.status == 200).then_some(())
    })
    .await;
}

async fn offers_round_trip_over_both_transports(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let (ws_uid, http_uid, metrics_only) = (new_uid(), new_uid(), new_uid());
    let mut ws = WsClient::connect(&server.ws_url).await;
    let first = ws.exchange(&hello_accepting(&ws_uid, 0)).await;
    assert!(
        first.capabilities & proto::ServerCapabilities::OffersConnectionSettings as u64 != 0,
        "opampd says it offers connection settings"
    );
    assert!(first.connection_settings.is_none(), "nothing offered yet");
    post_ok(&server.opamp_url, &hello_accepting(&http_uid, 0)).await;
    let narrow = proto::AgentToServer {
        capabilities: all_capabilities() | Can::ReportsOwnMetrics as u64,
        ..hello(&metrics_only, 0)
    };
    post_ok(&server.opamp_url, &narrow).await;
    for uid in [&ws_uid, &http_uid, &metrics_only] {
        label(&api, uid, json!({"tier": "gold"})).await;
    }

    let answer = api
        .post(
            "/api/v1/connection-settings",
            &offer_body("gold", "tier=gold", 10),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.body["hash"], expected_hash(&answer.body["settings"]));
    // What these collectors are sent leaves out the traces destination none of them accepts.
    let mut accepted = answer.body["settings"].clone();
    accepted.as_object_mut().unwrap().remove("own_traces");
    let hash = expected_hash(&accepted);

    // WebSocket: pushed at once, every class it accepts and no other.
    let pushed = ws.recv().await;
    let offered = pushed.connection_settings.expect("settings pushed");
    assert_eq!(opampd::collector::machine::hex(&offered.hash), hash);
    let opamp = offered.opamp.expect("the OpAMP connection");
    assert_eq!(
        opamp.destination_endpoint,
        "wss://opamp.example.com/v1/opamp"
    );
    assert_eq!(opamp.heartbeat_interval_seconds, 10);
    assert_eq!(opamp.headers.unwrap().headers[0].value, "Bearer fresh");
    assert_eq!(opamp.tls.unwrap().min_version, "1.3");
    assert!(offered.own_metrics.is_some());
    assert!(
        offered.own_traces.is_none(),
        "it does not report its own traces"
    );

    // Plain HTTP: on the next poll; the collector reporting the hash it holds settles it.
    let polled = eventually("the offer on a poll", || async {
        post_ok(&server.opamp_url, &heartbeat_with(&http_uid, 1))
            .await
            .connection_settings
    })
    .await;
    assert_eq!(opampd::collector::machine::hex(&polled.hash), hash);
    let narrowed = eventually("the narrow offer on a poll", || async {
        post_ok(&server.opamp_url, &heartbeat(&metrics_only, 1))
            .await
            .connection_settings
    })
    .await;
    assert!(narrowed.opamp.is_none() && narrowed.own_metrics.is_some());
    assert_ne!(
        opampd::collector::machine::hex(&narrowed.hash),
        hash,
        "the hash covers what this collector is sent"
    );

    let applied = proto::ConnectionSettingsStatuses::Applied as i32;
    ws.exchange(&status(&ws_uid, 1, &offered.hash, applied, ""))
        .await;
    let reply = post_ok(
        &server.opamp_url,
        &status(&http_uid, 2, &polled.hash, applied, ""),
    )
    .await;
    assert!(reply.connection_settings.is_none(), "not sent again");
    for uid in [&ws_uid, &http_uid] {
        api.field_becomes(
            id_of(uid),
            "connection_settings",
            json!({"hash": hash, "status": "applied", "error_message": "", "error": null}),
        )
        .await;
    }

    // A collector reporting another hash than ours is sent ours again (OpAMP's MUST).
    let reply = post_ok(
        &server.opamp_url,
        &status(&http_uid, 3, b"something else", applied, ""),
    )
    .await;
    assert_eq!(
        reply.connection_settings.map(|s| s.hash),
        Some(polled.hash.clone())
    );

    listed_replaced_deleted(&api, &mut ws, &hash).await;
    // Kept across a restart: the status is a fact of the record.
    let server = Box::pin(server.restart()).await;
    let api = Api::new(&server.api_url);
    assert_eq!(
        api.stored(id_of(&http_uid)).await["connection_settings"]["status"],
        "applied"
    );
}

/// Listed, read, replaced (a new hash pushed to the WebSocket collector), deleted.
async fn listed_replaced_deleted(api: &Api, ws: &mut WsClient, hash: &str) {
    let listed = api.ok("/api/v1/connection-settings").await;
    assert_eq!(listed["items"][0]["name"], "gold");
    assert_eq!(
        api.ok("/api/v1/connection-settings/gold").await["selector"],
        "tier=gold"
    );
    let replaced = api
        .post(
            "/api/v1/connection-settings",
            &offer_body("gold", "tier=gold", 20),
        )
        .await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    let again = ws.recv().await.connection_settings.expect("the new offer");
    assert_eq!(again.opamp.unwrap().heartbeat_interval_seconds, 20);
    assert_ne!(opampd::collector::machine::hex(&again.hash), *hash);
    assert_eq!(
        api.delete("/api/v1/connection-settings/gold").await.status,
        204
    );
    assert_error(
        &api.get("/api/v1/connection-settings/gold").await,
        404,
        "not_found",
    );
}

fn heartbeat_with(uid: &Bytes, seq: u64) -> proto::AgentToServer {
    proto::AgentToServer {
        capabilities: settings_capabilities(),
        ..heartbeat(uid, seq)
    }
}

async fn a_failed_offer_is_an_error_the_record_explains(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.exchange(&hello_accepting(&uid, 0)).await;
    let created = api
        .post("/api/v1/connection-settings", &offer_body("all", "", 30))
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let offered = ws.recv().await.connection_settings.expect("offered");
    let failed = proto::ConnectionSettingsStatuses::Failed as i32;
    ws.exchange(&status(
        &uid,
        1,
        &offered.hash,
        failed,
        "cannot reach opamp.example.com",
    ))
    .await;
    api.field_becomes(id_of(&uid), "state", json!("error"))
        .await;
    let record = api.ok(&format!("/api/v1/collectors/{}", id_of(&uid))).await;
    assert_eq!(record["state_reason"], "config_error");
    let message = record["state_message"].as_str().unwrap();
    assert!(
        message.starts_with("connection settings ")
            && message.ends_with("failed: cannot reach opamp.example.com"),
        "{message}"
    );
    assert_eq!(record["connection_settings"]["status"], "failed");
    assert_eq!(record["connection_settings"]["error"], message);

    // Other settings replace the failed ones: the error is resolved.
    let mut fixed = offer_body("all", "", 30);
    fixed["opamp"]["destination_endpoint"] = json!("wss://opamp2.example.com/v1/opamp");
    assert_eq!(
        api.post("/api/v1/connection-settings", &fixed).await.status,
        200
    );
    api.field_becomes(id_of(&uid), "state", json!("connected"))
        .await;
    let steps = server.steps(id_of(&uid)).await;
    assert_eq!(
        steps.last().map(|s| s.2),
        Some(opampd::collector::Reason::ErrorResolved)
    );
}

on_both_stores!(
    offers_round_trip_over_both_transports,
    a_failed_offer_is_an_error_the_record_explains
);

/// With the server's default (30 s, three intervals) a silent plain-HTTP collector would count as
/// gone after 90 s; offered a 1 s heartbeat, it does after 3 s.
#[tokio::test]
async fn an_offered_heartbeat_interval_sets_the_http_liveness_window() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let (fast, other) = (new_uid(), new_uid());
    post_ok(&server.opamp_url, &hello_accepting(&fast, 0)).await;
    post_ok(&server.opamp_url, &hello(&other, 0)).await;
    label(&api, &fast, json!({"pace": "fast"})).await;
    let created = api
        .post(
            "/api/v1/connection-settings",
            &offer_body("fast", "pace=fast", 1),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let offered = eventually("the offer on a poll", || async {
        post_ok(&server.opamp_url, &heartbeat_with(&fast, 1))
            .await
            .connection_settings
    })
    .await;
    assert_eq!(offered.opamp.unwrap().heartbeat_interval_seconds, 1);
    // It applied the interval, then falls silent.
    let applied = proto::ConnectionSettingsStatuses::Applied as i32;
    post_ok(
        &server.opamp_url,
        &status(&fast, 2, &offered.hash, applied, ""),
    )
    .await;
    let silent_since = std::time::Instant::now();
    api.field_becomes(id_of(&fast), "state", json!("disconnected"))
        .await;
    assert!(
        silent_since.elapsed() >= Duration::from_secs(2),
        "not before about three intervals"
    );
    // The collector the offer does not select keeps the server's window.
    assert_eq!(
        api.ok(&format!("/api/v1/collectors/{}", id_of(&other)))
            .await["state"],
        "connected"
    );
}

#[tokio::test]
async fn offers_are_checked_and_need_a_writer() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let mut bad = offer_body("bad", "", 30);
    bad["opamp"]["destination_endpoint"] = json!("opamp.example.com");
    assert_error(
        &api.post("/api/v1/connection-settings", &bad).await,
        400,
        "bad_request",
    );
    assert_error(
        &api.post("/api/v1/connection-settings", &json!({"name": "empty"}))
            .await,
        400,
        "bad_request",
    );
    assert_error(
        &api.post(
            "/api/v1/connection-settings",
            &offer_body("x", "tier in (", 30),
        )
        .await,
        400,
        "bad_request",
    );
    let anonymous = Api::anonymous(&server.api_url);
    assert_eq!(
        anonymous
            .post("/api/v1/connection-settings", &offer_body("x", "", 30))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn an_offer_made_on_one_replica_reaches_a_collector_arriving_at_another() {
    let (one, two) = two_replicas().await;
    // Node one reads the offers before the offer exists: its book is behind when the collector
    // arrives (it is read again every 2 s, and the router tells only collectors already there).
    Api::new(&one.api_url)
        .ok("/api/v1/connection-settings")
        .await;
    let answer = Api::new(&two.api_url)
        .post("/api/v1/connection-settings", &offer_body("all", "", 30))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    let uid = new_uid();
    let mut ws = WsClient::connect(&one.ws_url).await;
    let reply = ws.exchange(&hello_accepting(&uid, 0)).await;
    let offered = match reply.connection_settings {
        Some(offered) => offered,
        None => ws.recv().await.connection_settings.expect("the offer"),
    };
    let opamp = offered.opamp.expect("the OpAMP connection");
    assert_eq!(
        opamp.destination_endpoint,
        "wss://opamp.example.com/v1/opamp"
    );
}

#[tokio::test]
async fn a_collector_is_offered_its_settings_in_its_first_reply_over_both_transports() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let answer = api
        .post("/api/v1/connection-settings", &offer_body("all", "", 30))
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    // Once the node has read the offer in (it does so as it tells the collectors already there),
    // a collector's very first reply carries it: it does not wait for its next poll.
    let offered = eventually("a first reply with the offer", || async {
        let reply = post_ok(&server.opamp_url, &hello_accepting(&new_uid(), 0)).await;
        reply.connection_settings
    })
    .await;
    let opamp = offered.opamp.expect("the OpAMP connection");
    assert_eq!(
        opamp.destination_endpoint,
        "wss://opamp.example.com/v1/opamp"
    );
    assert_eq!(opamp.heartbeat_interval_seconds, 30);

    // Over WebSocket the reply itself carries it, not a message pushed after it: to a new
    // collector, and to one still held in memory that connects again.
    let uid = new_uid();
    for (connection, seq) in [("first", 0), ("second", 1)] {
        let mut ws = WsClient::connect(&server.ws_url).await;
        let reply = ws.exchange(&hello_accepting(&uid, seq)).await;
        let offered = reply.connection_settings.unwrap_or_else(|| {
            panic!("the {connection} connection's first reply carries the offer")
        });
        assert_eq!(
            offered
                .opamp
                .expect("the OpAMP connection")
                .heartbeat_interval_seconds,
            30
        );
        drop(ws);
        server
            .wait_for(id_of(&uid), "the collector gone", |c| !c.connected)
            .await;
    }
}

//! Facets turned on and off by the collectors' own reports, over both transports: `degraded`
//! (healthy with an unhealthy component), `drifted` (the effective configuration moved away from
//! the one it ran once ours was applied), `stale` (a plain-HTTP collector's polls late); each on
//! the record, filtered on in the list, counted in the summary and in `/metrics`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use opampd::collector::State;
use opampd::proto;

use crate::support::api::Api;
use crate::support::*;

/// One collector over either transport.
enum Wire {
    Ws(Box<WsClient>),
    Http(String),
}

impl Wire {
    async fn open(server: &TestServer, websocket: bool) -> Self {
        if websocket {
            Self::Ws(Box::new(WsClient::connect(&server.ws_url).await))
        } else {
            Self::Http(server.opamp_url.clone())
        }
    }

    async fn send(&mut self, message: &proto::AgentToServer) -> proto::ServerToAgent {
        match self {
            Self::Ws(ws) => ws.exchange(message).await,
            Self::Http(url) => post_ok(url, message).await,
        }
    }
}

fn component(healthy: bool) -> proto::ComponentHealth {
    proto::ComponentHealth {
        healthy,
        ..Default::default()
    }
}

/// Healthy as a whole; its exporter healthy or not.
pub(crate) fn health(uid: &Bytes, seq: u64, exporter_healthy: bool) -> proto::AgentToServer {
    proto::AgentToServer {
        health: Some(proto::ComponentHealth {
            healthy: true,
            component_health_map: HashMap::from([(
                "pipeline:traces".to_owned(),
                proto::ComponentHealth {
                    healthy: true,
                    component_health_map: HashMap::from([(
                        "exporter:otlp".to_owned(),
                        component(exporter_healthy),
                    )]),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        }),
        ..heartbeat(uid, seq)
    }
}

fn effective(uid: &Bytes, seq: u64, body: &str) -> proto::AgentToServer {
    proto::AgentToServer {
        effective_config: Some(proto::EffectiveConfig {
            config_map: Some(proto::AgentConfigMap {
                config_map: HashMap::from([(
                    "collector.yaml".to_owned(),
                    proto::AgentConfigFile {
                        body: body.as_bytes().to_vec().into(),
                        content_type: "text/yaml".to_owned(),
                    },
                )]),
            }),
        }),
        ..heartbeat(uid, seq)
    }
}

fn applied(uid: &Bytes, seq: u64, hash: &[u8], body: &str) -> proto::AgentToServer {
    proto::AgentToServer {
        remote_config_status: Some(proto::RemoteConfigStatus {
            last_remote_config_hash: hash.to_vec().into(),
            status: proto::RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        }),
        ..effective(uid, seq, body)
    }
}

async fn facets_become(api: &Api, uid: &Bytes, expected: &[&str]) {
    api.field_becomes(id_of(uid), "facets", serde_json::json!(expected))
        .await;
}

async fn listed_with(api: &Api, facet: &str) -> Vec<String> {
    api.listed_ids(&format!("facet={facet}")).await
}

async fn degraded_comes_and_goes_with_a_component(websocket: bool) {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    let mut wire = Wire::open(&server, websocket).await;
    wire.send(&hello(&uid, 0)).await;
    wire.send(&health(&uid, 1, false)).await;
    facets_become(&api, &uid, &["degraded"]).await;
    // Degraded explains Connected; it is not Error.
    assert_eq!(
        server.view(id_of(&uid)).await.unwrap().state,
        Some(State::Connected)
    );
    wire.send(&health(&uid, 2, true)).await;
    facets_become(&api, &uid, &[]).await;
}

#[tokio::test]
async fn degraded_over_websocket() {
    degraded_comes_and_goes_with_a_component(true).await;
}

#[tokio::test]
async fn degraded_over_plain_http() {
    degraded_comes_and_goes_with_a_component(false).await;
}

async fn drifted_follows_the_effective_configuration(backend: Backend, websocket: bool) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    let id = id_of(&uid);
    let mut wire = Wire::open(&server, websocket).await;
    wire.send(&hello(&uid, 0)).await;
    // Its own configuration before any of ours: nothing to drift from.
    wire.send(&effective(&uid, 1, "local: true")).await;

    let hash = vec![9; 32];
    let configure = send_configuration(empty_configuration(hash.clone()));
    assert!(
        server
            .running()
            .registry
            .apply(id, configure)
            .await
            .unwrap()
    );
    wire.send(&applied(&uid, 2, &hash, "ours: true")).await;
    eventually("Connected with our configuration", || async {
        let c = server.view(id).await?;
        (c.state == Some(State::Connected) && c.remote_config_status.is_some()).then_some(())
    })
    .await;
    assert!(listed_with(&api, "drifted").await.is_empty());

    // Someone edits the file on the host: drifted, while still Connected.
    wire.send(&effective(&uid, 3, "ours: true\nhand: edited"))
        .await;
    facets_become(&api, &uid, &["drifted"]).await;
    assert_eq!(listed_with(&api, "drifted").await, [id.to_string()]);
    assert!(listed_with(&api, "degraded,stale").await.is_empty());
    let summary = api.ok("/api/v1/summary").await;
    assert_eq!(summary["by_facet"]["drifted"], 1, "{summary}");
    assert_eq!(summary["by_facet"]["stale"], 0, "{summary}");
    eventually("the metric counts it", || async {
        let scrape = api.metrics().await;
        (scrape.get("opampd_collectors_with_facet", &[("facet", "drifted")]) == Some(1))
            .then_some(())
    })
    .await;

    // The edit is undone: no longer drifted.
    wire.send(&effective(&uid, 4, "ours: true")).await;
    facets_become(&api, &uid, &[]).await;
    assert!(listed_with(&api, "drifted").await.is_empty());
    assert_eq!(
        api.get("/api/v1/collectors?facet=sideways").await.status,
        400
    );
}

async fn drifted_over_websocket(backend: Backend) {
    drifted_follows_the_effective_configuration(backend, true).await;
}

async fn drifted_over_plain_http(backend: Backend) {
    drifted_follows_the_effective_configuration(backend, false).await;
}

on_both_stores!(drifted_over_websocket, drifted_over_plain_http);

/// A plain-HTTP collector whose polls are late is stale (still Connected) until it polls again.
#[tokio::test]
async fn stale_while_polls_are_late() {
    let server = TestServer::start_with(|c| {
        c.opamp.heartbeat_interval = Duration::from_millis(200);
        // Disconnected only after 20 intervals: stale (after 1.5) has room to show.
        c.opamp.liveness_intervals = 20;
    })
    .await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    facets_become(&api, &uid, &["stale"]).await;
    assert_eq!(
        server.view(id_of(&uid)).await.unwrap().state,
        Some(State::Connected),
        "stale explains Connected"
    );
    assert_eq!(listed_with(&api, "stale").await, [id_of(&uid).to_string()]);
    post_ok(&server.opamp_url, &heartbeat(&uid, 1)).await;
    facets_become(&api, &uid, &[]).await;
    // Silent past the liveness window: Disconnected, and no longer stale.
    eventually("disconnected", || async {
        let c = server.view(id_of(&uid)).await?;
        (c.state == Some(State::Disconnected)).then_some(())
    })
    .await;
    facets_become(&api, &uid, &[]).await;
}

//! The custom capabilities a collector declares (OpAMP `CustomCapabilities`): on its record,
//! replaced when it declares others mid-connection, kept across a restart of the server, and
//! filtered on in the list, on both stores.

use bytes::Bytes;
use opampd::proto;

use crate::support::api::Api;
use crate::support::*;

fn declaring(uid: &Bytes, seq: u64, names: &[&str]) -> proto::AgentToServer {
    proto::AgentToServer {
        custom_capabilities: Some(proto::CustomCapabilities {
            capabilities: names.iter().map(|n| (*n).to_owned()).collect(),
        }),
        ..heartbeat(uid, seq)
    }
}

async fn declared(api: &Api, uid: &Bytes, expected: &[&str]) {
    api.field_becomes(
        id_of(uid),
        "custom_capabilities",
        serde_json::json!(expected),
    )
    .await;
}

async fn with_capability(api: &Api, names: &str) -> Vec<String> {
    api.listed_ids(&format!("custom_capability={names}&sort=id"))
        .await
}

async fn declared_filtered_and_replaced(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let api = Api::new(&server.api_url);
    let (pprof, other) = (new_uid(), new_uid());
    let mut ws = WsClient::connect(&server.ws_url).await;
    ws.exchange(&hello(&pprof, 0)).await;
    ws.exchange(&declaring(
        &pprof,
        1,
        &["io.opentelemetry.pprof", "com.example.b", "com.example.b"],
    ))
    .await;
    post_ok(&server.opamp_url, &hello(&other, 0)).await;
    post_ok(&server.opamp_url, &declaring(&other, 1, &["com.example.b"])).await;
    declared(&api, &pprof, &["com.example.b", "io.opentelemetry.pprof"]).await;
    declared(&api, &other, &["com.example.b"]).await;

    let (p, o) = (id_of(&pprof).to_string(), id_of(&other).to_string());
    assert_eq!(
        with_capability(&api, "io.opentelemetry.pprof").await,
        std::slice::from_ref(&p)
    );
    let mut both = vec![p.clone(), o.clone()];
    both.sort();
    assert_eq!(with_capability(&api, "com.example.b").await, both);
    assert_eq!(
        with_capability(&api, "io.opentelemetry.pprof,com.example.nothing").await,
        std::slice::from_ref(&p)
    );
    assert!(
        with_capability(&api, "com.example.nothing")
            .await
            .is_empty()
    );

    // Declared again mid-connection: the new set replaces the old one.
    ws.exchange(&declaring(&pprof, 2, &["com.example.c"])).await;
    declared(&api, &pprof, &["com.example.c"]).await;
    assert!(
        with_capability(&api, "io.opentelemetry.pprof")
            .await
            .is_empty()
    );

    let server = server.restart().await;
    declared(&Api::new(&server.api_url), &pprof, &["com.example.c"]).await;
}

on_both_stores!(declared_filtered_and_replaced);

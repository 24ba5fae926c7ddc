//! Configurations through the API: versions are checked, hashed and counted; bad YAML is refused
//! with its position; versions can be listed, read and compared.

use serde_json::json;

use crate::support::TestServer;
use crate::support::api::{Answer, Api, assert_error};

async fn post(api: &Api, body: serde_json::Value) -> Answer {
    api.post("/api/v1/configurations", &body).await
}

const V1: &str = "receivers:\n  otlp:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n";

#[tokio::test]
async fn versions_are_checked_hashed_and_counted() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let first = post(&api, json!({"name": "gateway", "yaml": V1})).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["version"], 1);
    assert_eq!(
        first.body["components"],
        json!(["exporters/debug", "receivers/otlp"])
    );
    assert_eq!(first.body["files"]["collector.yaml"], V1);
    let hash = first.body["hash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);

    let same = post(
        &api,
        json!({"name": "gateway", "files": {"collector.yaml": V1}}),
    )
    .await;
    assert_eq!(same.status, 200, "unchanged files are no new version");
    assert_eq!(
        (same.body["version"].as_i64(), same.body["hash"].as_str()),
        (Some(1), Some(hash.as_str()))
    );

    let v2_yaml = V1.replace("otlp", "otlp/2").replace("debug", "kafka");
    let second = post(&api, json!({"name": "gateway", "yaml": v2_yaml})).await;
    assert_eq!(second.status, 201);
    assert_eq!(second.body["version"], 2);
    assert_eq!(
        second.body["components"],
        json!(["exporters/kafka", "receivers/otlp"])
    );
    assert_ne!(second.body["hash"], first.body["hash"]);

    let broken = post(
        &api,
        json!({"name": "gateway", "yaml": "receivers:\n  otlp: [\n"}),
    )
    .await;
    assert_error(&broken, 400, "bad_request");
    let message = broken.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("collector.yaml") && message.contains("line 3"),
        "{message}"
    );
    let idle = post(
        &api,
        json!({"name": "gateway", "yaml": "receivers:\n  otlp:\n"}),
    )
    .await;
    assert_error(&idle, 400, "bad_request");
    assert!(
        idle.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pipeline")
    );
    assert_error(
        &post(&api, json!({"name": "bad name", "yaml": V1})).await,
        400,
        "bad_request",
    );
    assert_error(
        &post(&api, json!({"name": "x", "yaml": V1, "files": {"a": V1}})).await,
        400,
        "bad_request",
    );
    assert_error(
        &post(&api, json!({"name": "x", "colour": "blue"})).await,
        400,
        "bad_request",
    );
}

#[tokio::test]
async fn versions_are_listed_read_and_compared() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let v2_yaml = V1.replace("otlp", "otlp/2").replace("debug", "kafka");
    for yaml in [V1, v2_yaml.as_str()] {
        assert_eq!(
            post(&api, json!({"name": "gateway", "yaml": yaml}))
                .await
                .status,
            201
        );
    }
    let list = api.ok("/api/v1/configurations").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["version"], 2);
    assert!(list["items"][0].get("files").is_none());
    let history = api.ok("/api/v1/configurations/gateway").await;
    assert_eq!(history["versions"].as_array().unwrap().len(), 2);
    let v1 = api.ok("/api/v1/configurations/gateway/versions/1").await;
    assert_eq!(v1["files"]["collector.yaml"], V1);
    assert_error(
        &api.get("/api/v1/configurations/gateway/versions/3").await,
        404,
        "not_found",
    );
    assert_error(
        &api.get("/api/v1/configurations/gateway/versions/zero")
            .await,
        400,
        "bad_request",
    );
    assert_error(
        &api.get("/api/v1/configurations/nothing").await,
        404,
        "not_found",
    );

    let diff = api
        .ok("/api/v1/configurations/gateway/diff?from=1&to=2")
        .await;
    assert_eq!(diff["files"][0]["status"], "changed");
    let text = diff["files"][0]["diff"].as_str().unwrap();
    assert!(
        text.contains("-  debug:") && text.contains("+  kafka:"),
        "{text}"
    );
    assert_eq!(diff["components_added"], json!(["exporters/kafka"]));
    assert_eq!(diff["components_removed"], json!(["exporters/debug"]));
    assert_error(
        &api.get("/api/v1/configurations/gateway/diff?from=1").await,
        400,
        "bad_request",
    );
}

//! Configurations through the API: versions are checked, hashed and counted; bad YAML is refused
//! with its position; versions can be listed, read and compared; the hash is the documented one,
//! and the one collectors are sent.

use serde_json::json;

use crate::support::api::{Answer, Api, assert_error};
use crate::support::*;

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

/// The hash of YAML files, as the README promises it.
fn expected_hash(files: &[(&str, &str)]) -> String {
    let files: Vec<(&str, &str, &[u8])> = files
        .iter()
        .map(|(name, body)| (*name, "text/yaml", body.as_bytes()))
        .collect();
    files_hash(&files)
}

/// The version's hash is the documented SHA-256, and it is the `config_hash` collectors are sent,
/// with the files as stored.
#[tokio::test]
async fn the_hash_is_the_documented_sha256_and_what_collectors_are_sent() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let extra = "exporters:\n  debug:\n";
    let created = post(
        &api,
        json!({"name": "split", "files": {"z.yaml": extra, "collector.yaml": V1}}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let hash = created.body["hash"].as_str().unwrap().to_owned();
    assert_eq!(
        hash,
        expected_hash(&[("collector.yaml", V1), ("z.yaml", extra)])
    );
    let single = post(&api, json!({"name": "single", "yaml": V1})).await;
    assert_eq!(
        single.body["hash"],
        expected_hash(&[("collector.yaml", V1)]),
        "one file named collector.yaml"
    );

    let uid = new_uid();
    post_ok(&server.opamp_url, &hello(&uid, 0)).await;
    api.stored(id_of(&uid)).await;
    api.post_ok(
        "/api/v1/rollouts",
        &json!({"configuration": "split", "version": 1}),
    )
    .await;
    let sent = eventually("the configuration on the next poll", || async {
        post_ok(&server.opamp_url, &heartbeat(&uid, 1))
            .await
            .remote_config
    })
    .await;
    assert_eq!(opampd::collector::machine::hex(&sent.config_hash), hash);
    let files = sent.config.unwrap().config_map;
    assert_eq!(files.len(), 2);
    assert_eq!(files["z.yaml"].body, extra.as_bytes());
    assert_eq!(files["collector.yaml"].content_type, "text/yaml");
}

/// Creating versions while collectors' changes are being written: every creation lands. (On
/// SQLite a transaction that reads the latest version and then writes the next failed at once,
/// without waiting, whenever a collector's write committed in between.)
#[tokio::test]
async fn versions_are_created_while_collectors_write() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let url = server.opamp_url.clone();
    let writers = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let url = url.clone();
            tasks.spawn(async move {
                let uid = new_uid();
                post_ok(&url, &hello(&uid, 0)).await;
                for seq in 1..40 {
                    let healthy = seq % 2 == 0;
                    post_ok(&url, &health_report(&uid, seq, healthy, "flapping")).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
    for n in 0..40 {
        let yaml = V1.replace("debug:", &format!("debug/{n}:"));
        let created = post(&api, json!({"name": "busy", "yaml": yaml})).await;
        assert_eq!(created.status, 201, "version {}: {}", n + 1, created.body);
    }
    within("the collectors' writes", writers).await.unwrap();
}

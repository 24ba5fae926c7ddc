//! Interop with the real third-party OpAMP clients (Python `opentelemetry-opamp-client` and Node
//! `@elastic/opamp-client-node`, both plain HTTP): against the real binary for the protocol, and
//! in-process for the state histories their scenarios must produce.

use opampd::collector::{CollectorId, ConfigFile, ConfigFiles, ConfigOffer, Reason, State};
use serde_json::{Value, json};

use crate::support::binary::ServerProcess;
use crate::support::interop::{Client, Driver};
use crate::support::*;

use opampd::collector::machine::hex;
use {Reason as R, State as S};

fn collector_id(started: &Value) -> CollectorId {
    let uid = started["instance_uid"]
        .as_str()
        .expect("started carries the uid");
    CollectorId(uid.parse().expect("the drivers print the uid as a UUID"))
}

/// What opampd says it can do, in every reply.
fn server_capabilities() -> u64 {
    use opampd::proto::ServerCapabilities as Can;
    [
        Can::AcceptsStatus,
        Can::OffersRemoteConfig,
        Can::AcceptsEffectiveConfig,
        Can::OffersPackages,
        Can::AcceptsPackagesStatus,
        Can::OffersConnectionSettings,
    ]
    .iter()
    .fold(0, |bits, c| bits | *c as u64)
}

/// A reply the client took as its own: 200, protobuf, its own uid, no error.
fn accepted(message: &Value) -> bool {
    message["uid_matches"] == true && message["error"].is_null()
}

/// Connects `client` to the real binary, waits for two accepted heartbeats, and returns the
/// server, the driver and the collector's id.
async fn heartbeating(client: Client) -> (ServerProcess, Driver, CollectorId) {
    let server = ServerProcess::start(&[], &[]).await;
    let mut driver = Driver::start(client, &server.opamp_url(), &[]).await;
    let id = collector_id(&driver.seen[0]);
    let first = driver
        .expect_where("sent", |e| e["agent_description"] == true)
        .await;
    assert_eq!(first["ok"], true, "first full state accepted: {first}");
    assert_eq!(first["http_status"], 200, "{first}");
    assert_eq!(
        first["response_content_type"], "application/x-protobuf",
        "{first}"
    );
    for _ in 0..2 {
        let beat = driver
            .expect_where("sent", |e| e["agent_description"] == false)
            .await;
        assert_eq!(beat["ok"], true, "heartbeat accepted: {beat}");
        let reply = driver.expect("message").await;
        assert!(accepted(&reply), "reply accepted: {reply}");
        assert_eq!(
            reply["capabilities"],
            server_capabilities(),
            "our capabilities in every reply"
        );
    }
    assert!(driver.errors().is_empty(), "{:#?}", driver.errors());
    let api = crate::support::api::Api::new(&format!("http://{}", server.api_addr));
    let history = api
        .ok(&format!("/api/v1/collectors/{id}/transitions"))
        .await;
    assert_eq!(
        history["items"][0]["reason"], "initial",
        "the collector's first transition: {history}"
    );
    (server, driver, id)
}

#[tokio::test]
async fn python_client_connects_heartbeats_and_disconnects_cleanly() {
    let (server, mut driver, id) = heartbeating(Client::Python).await;
    let reply = driver.seen.iter().find(|e| e["event"] == "sent").unwrap();
    assert_eq!(reply["response_content_type"], "application/x-protobuf");
    // It asks for gzip (requests' default) and so gets it.
    assert_eq!(reply["response_content_encoding"], "gzip");

    let status = driver.stop().await;
    assert!(status.success());
    let stopped = driver.seen.last().unwrap();
    assert_eq!(stopped["agent_disconnect_sent"], true, "{stopped}");
    // The goodbye's reply waited for its commit, so the API has it now.
    let api = crate::support::api::Api::new(&format!("http://{}", server.api_addr));
    let newest = api
        .ok(&format!("/api/v1/collectors/{id}/transitions?limit=1"))
        .await;
    assert_eq!(
        (&newest["items"][0]["to"], &newest["items"][0]["reason"]),
        (&"disconnected".into(), &"collector_stopped".into()),
        "collector_stopped for the Python collector: {newest}"
    );
    assert!(driver.errors().is_empty(), "{:#?}", driver.errors());
}

#[tokio::test]
async fn node_client_connects_and_heartbeats() {
    let (_server, mut driver, _id) = heartbeating(Client::Node).await;
    // Node 0.5.0 never sends agent_disconnect: it just goes quiet, and liveness covers it.
    assert!(driver.stop().await.success());
    assert!(driver.errors().is_empty(), "{:#?}", driver.errors());
}

#[tokio::test]
async fn both_clients_get_through_agent_authentication() {
    let tokens = ("OPAMPD_OPAMP__AUTH__TOKENS", r#"["s3cret"]"#);
    let server = ServerProcess::start(&[], &[tokens]).await;
    for client in [Client::Python, Client::Node] {
        let mut good = Driver::start(
            client,
            &server.opamp_url(),
            &["--auth-header", "Bearer s3cret"],
        )
        .await;
        let reply = good.expect("message").await;
        assert!(accepted(&reply), "{client:?}: {reply}");
        let mut bad = Driver::start(
            client,
            &server.opamp_url(),
            &["--auth-header", "Bearer wrong"],
        )
        .await;
        let refused = bad.expect_where("sent", |e| e["ok"] == false).await;
        assert_eq!(refused["http_status"], 401, "{client:?}: {refused}");
        let error = bad.expect_where("error", |e| e["source"] == "client").await;
        assert!(
            error["message"]
                .as_str()
                .unwrap_or_default()
                .contains("401"),
            "{client:?}: {error}"
        );
        good.stop().await;
        bad.stop().await;
    }
}

fn json_config(body: &str, hash: &[u8]) -> ConfigOffer {
    let mut files = ConfigFiles::new();
    files.insert(
        "collector.json".to_owned(),
        ConfigFile {
            body: body.as_bytes().into(),
            content_type: "application/json".to_owned(),
        },
    );
    ConfigOffer {
        files,
        hash: hash.to_vec(),
    }
}

/// The issue's Python scenarios in one collector's life: healthy, unhealthy, recovered, a
/// configuration applied, one failed, and a clean disconnect, with the history they must leave.
#[tokio::test]
async fn python_client_scenarios_leave_the_expected_history() {
    let server = TestServer::start().await;
    let mut driver = Driver::start(Client::Python, &server.opamp_url, &[]).await;
    let id = collector_id(&driver.seen[0]);
    let state_is =
        |state: State| move |c: &opampd::collector::machine::Collector| c.state == Some(state);

    // healthy
    server
        .wait_for(id, "Connected", state_is(State::Connected))
        .await;

    // unhealthy, then recovered
    driver
        .command(json!({"cmd": "health", "healthy": false, "last_error": "exporter otlp is down"}))
        .await;
    let view = server.wait_for(id, "Error", state_is(State::Error)).await;
    assert_eq!(view.state_reason, Some(Reason::RuntimeError));
    assert_eq!(view.state_message, "exporter otlp is down");
    driver
        .command(json!({"cmd": "health", "healthy": true}))
        .await;
    server
        .wait_for(id, "recovered", state_is(State::Connected))
        .await;

    // apply-ok: the client receives it on its next poll, reports APPLYING then APPLIED
    let good = json_config(r#"{"receivers": {"otlp": {}}}"#, b"good-config");
    assert!(
        server
            .running()
            .registry
            .apply(id, send_configuration(good))
            .await
            .unwrap()
    );
    server
        .wait_for(id, "Configuring", state_is(State::Configuring))
        .await;
    let received = driver.expect("remote_config").await;
    assert_eq!(received["hash"], hex(b"good-config"));
    assert!(received["decode_error"].is_null(), "{received}");
    driver
        .command(json!({"cmd": "apply", "status": "APPLYING"}))
        .await;
    driver
        .expect_where("sent", |e| {
            e["remote_config_status"]["status"] == "APPLYING"
        })
        .await;
    assert_eq!(
        server.view(id).await.unwrap().state,
        Some(State::Configuring)
    );
    driver
        .command(json!({"cmd": "apply", "status": "APPLIED"}))
        .await;
    server
        .wait_for(id, "applied", state_is(State::Connected))
        .await;

    // apply-fail
    let bad = json_config(r#"{"exporters": {"kafka": {}}}"#, b"bad-config");
    assert!(
        server
            .running()
            .registry
            .apply(id, send_configuration(bad))
            .await
            .unwrap()
    );
    driver
        .expect_where("remote_config", |e| e["hash"] == hex(b"bad-config"))
        .await;
    driver
        .command(json!({"cmd": "apply", "status": "FAILED", "error": "unknown exporter kafka"}))
        .await;
    let view = server.wait_for(id, "failed", state_is(State::Error)).await;
    assert_eq!(view.state_reason, Some(Reason::ConfigFailed));
    assert_eq!(view.state_message, "unknown exporter kafka");

    // disconnect
    assert!(driver.stop().await.success());
    server
        .wait_for(id, "Disconnected", state_is(State::Disconnected))
        .await;
    assert_eq!(
        server.steps(id).await,
        [
            (None, S::Connected, R::Initial),
            (Some(S::Connected), S::Error, R::RuntimeError),
            (Some(S::Error), S::Connected, R::ErrorResolved),
            (Some(S::Connected), S::Configuring, R::NewConfiguration),
            (Some(S::Configuring), S::Connected, R::ConfigApplied),
            (Some(S::Connected), S::Configuring, R::NewConfiguration),
            (Some(S::Configuring), S::Error, R::ConfigFailed),
            (Some(S::Error), S::Disconnected, R::CollectorStopped),
        ]
    );
    assert!(driver.errors().is_empty(), "{:#?}", driver.errors());
}

/// Real Python collectors through healthy, unhealthy, recovered and disconnected, as an operator
/// sees them through the API alone: states, summary counts, histories, and each transition once
/// on the live event stream.
#[tokio::test]
async fn python_collectors_seen_through_the_api() {
    use crate::support::api::Api;

    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let mut stream = api.events("", None).await;
    let mut drivers = Vec::new();
    for _ in 0..2 {
        let driver = Driver::start(Client::Python, &server.opamp_url, &[]).await;
        let id = collector_id(&driver.seen[0]).to_string();
        drivers.push((driver, id));
    }
    let state_of = |id: &str| {
        let api = &api;
        let path = format!("/api/v1/collectors/{id}");
        async move {
            api.get(&path).await.body["state"]
                .as_str()
                .map(str::to_owned)
        }
    };
    let summary_is = |connected: u64, error: u64, disconnected: u64| {
        let api = &api;
        async move {
            let s = api.ok("/api/v1/summary").await;
            (s["by_state"]["connected"] == connected
                && s["by_state"]["error"] == error
                && s["by_state"]["disconnected"] == disconnected)
                .then_some(())
        }
    };
    for (_, id) in &drivers {
        eventually("healthy", || async {
            (state_of(id).await.as_deref() == Some("connected")).then_some(())
        })
        .await;
    }
    eventually("summary: 2 connected", || summary_is(2, 0, 0)).await;

    let (first, first_id) = &mut drivers[0];
    first
        .command(json!({"cmd": "health", "healthy": false, "last_error": "exporter otlp is down"}))
        .await;
    eventually("summary: 1 in error", || summary_is(1, 1, 0)).await;
    let view = api.ok(&format!("/api/v1/collectors/{first_id}")).await;
    assert_eq!(view["state_reason"], "runtime_error");
    assert_eq!(view["state_message"], "exporter otlp is down");
    assert_eq!(view["health"]["last_error"], "exporter otlp is down");

    first
        .command(json!({"cmd": "health", "healthy": true}))
        .await;
    eventually("summary: recovered", || summary_is(2, 0, 0)).await;
    for (driver, _) in &mut drivers {
        assert!(driver.stop().await.success());
        assert!(driver.errors().is_empty(), "{:#?}", driver.errors());
    }
    eventually("summary: 2 disconnected", || summary_is(0, 0, 2)).await;

    assert_eq!(
        history_of(&api, &drivers[0].1).await,
        [
            "initial",
            "runtime_error",
            "error_resolved",
            "collector_stopped"
        ]
    );
    assert_eq!(
        history_of(&api, &drivers[1].1).await,
        ["initial", "collector_stopped"]
    );

    // The stream carried exactly these six, each once.
    let mut seen = Vec::new();
    for _ in 0..6 {
        let event = stream.next().await;
        seen.push((
            event.id.clone(),
            event.data["collector_id"].as_str().unwrap().to_owned(),
            event.data["reason"].as_str().unwrap().to_owned(),
        ));
    }
    let mut ids: Vec<&String> = seen.iter().map(|(id, _, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "no event twice: {seen:?}");
    for (_, id) in &drivers {
        let of: Vec<&str> = seen
            .iter()
            .filter(|(_, c, _)| c == id)
            .map(|(_, _, r)| r.as_str())
            .collect();
        let expected = history_of(&api, id).await;
        assert_eq!(of, expected);
    }
}

/// A collector's reasons, oldest first, as the API's history gives them.
async fn history_of(api: &crate::support::api::Api, id: &str) -> Vec<String> {
    api.ok(&format!("/api/v1/collectors/{id}/transitions"))
        .await["items"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|t| t["reason"].as_str().unwrap().to_owned())
        .collect()
}

const LOGS_YAML: &str = "receivers:\n  otlp:\nexporters:\n  debug:\nservice:\n  pipelines:\n    logs:\n      receivers: [otlp]\n      exporters: [debug]\n";

/// Starts `clients`, labels each `env=<its label>`, and stores configuration `logs` versions 1
/// and 2 (the second uses an exporter named `nop`).
async fn labelled_clients(
    server: &TestServer,
    api: &crate::support::api::Api,
    clients: &[(Client, &str)],
) -> Vec<(Driver, String)> {
    let mut started = Vec::new();
    for (client, env) in clients {
        let driver = Driver::start(*client, &server.opamp_url, &[]).await;
        let id = collector_id(&driver.seen[0]).to_string();
        let path = format!("/api/v1/collectors/{id}");
        api.stored(collector_id(&driver.seen[0])).await;
        assert_eq!(
            api.put(&format!("{path}/labels"), &json!({ "env": env }))
                .await
                .status,
            200
        );
        started.push((driver, id));
    }
    eventually("labels stored", || async {
        let page = api.ok("/api/v1/collectors?selector=env&limit=10").await;
        (page["items"].as_array().unwrap().len() == clients.len()).then_some(())
    })
    .await;
    api.post_ok(
        "/api/v1/configurations",
        &json!({"name": "logs", "yaml": LOGS_YAML}),
    )
    .await;
    let v2 = LOGS_YAML.replace("debug", "nop");
    api.post_ok(
        "/api/v1/configurations",
        &json!({"name": "logs", "yaml": v2}),
    )
    .await;
    started
}

/// The real Python client takes configurations from rollouts started through the API: it
/// applies one (APPLYING, then APPLIED) and fails another (FAILED), and ends in the right state.
#[tokio::test]
async fn python_applies_and_fails_configurations_from_rollouts() {
    let server = TestServer::start().await;
    let api = crate::support::api::Api::new(&server.api_url);
    let clients = [(Client::Python, "ok"), (Client::Python, "bad")];
    let mut drivers = labelled_clients(&server, &api, &clients).await;
    let good = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "logs", "version": 1, "selector": "env=ok"}),
        )
        .await;
    let (applier, ok_id) = &mut drivers[0];
    assert_eq!(applier.expect("remote_config").await["hash"], good["hash"]);
    applier
        .command(json!({"cmd": "apply", "status": "APPLYING"}))
        .await;
    applier
        .expect_where("sent", |e| {
            e["remote_config_status"]["status"] == "APPLYING"
        })
        .await;
    applier
        .command(json!({"cmd": "apply", "status": "APPLIED"}))
        .await;
    rollout_reaches(&api, &good, |r| {
        r["status"] == "completed" && r["progress"]["applied"] == 1
    })
    .await;
    let ok_reasons = [
        "initial",
        "queued_for_rollout",
        "config_sent",
        "config_applied",
    ];
    eventually("stored", || async {
        (history_of(&api, ok_id).await == ok_reasons).then_some(())
    })
    .await;

    let bad = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "logs", "version": 2, "selector": "env=bad", "max_errors": 1}),
        )
        .await;
    let (refuser, bad_id) = &mut drivers[1];
    refuser.expect("remote_config").await;
    refuser
        .command(json!({"cmd": "apply", "status": "FAILED", "error": "exporter nop unknown"}))
        .await;
    rollout_reaches(&api, &bad, |r| r["progress"]["failed"] == 1).await;
    let bad_reasons = [
        "initial",
        "queued_for_rollout",
        "config_sent",
        "config_failed",
    ];
    eventually("stored", || async {
        (history_of(&api, bad_id).await == bad_reasons).then_some(())
    })
    .await;
    let view = api.ok(&format!("/api/v1/collectors/{bad_id}")).await;
    assert_eq!(view["state"], "error");
    assert_eq!(view["state_message"], "exporter nop unknown");
    for (driver, _) in &mut drivers {
        assert!(driver.stop().await.success());
        assert!(driver.errors().is_empty(), "{:#?}", driver.errors());
    }
}

/// R5 with the real Python client (plain HTTP): after it applied a rollout's configuration it
/// reports another hash as applied, and the reply to that very report carries ours again; it
/// applies it, and its history shows the resend as `new_configuration`, once.
#[tokio::test]
async fn python_reporting_another_hash_is_sent_the_configuration_again() {
    let (_server, api, (mut python, id), rollout) = one_client_in_a_rollout(Client::Python).await;
    let python = &mut python;
    assert_eq!(
        python.expect("remote_config").await["hash"],
        rollout["hash"]
    );
    python
        .command(json!({"cmd": "apply", "status": "APPLIED"}))
        .await;
    rollout_reaches(&api, &rollout, |r| r["status"] == "completed").await;
    python
        .command(json!({"cmd": "apply", "status": "APPLIED", "hash": "00ff"}))
        .await;
    python
        .expect_where("sent", |e| e["remote_config_status"]["hash"] == "00ff")
        .await;
    let again = python.expect("remote_config").await;
    assert_eq!(again["hash"], rollout["hash"], "ours, sent again");
    python
        .command(json!({"cmd": "apply", "status": "APPLIED"}))
        .await;
    let reasons = [
        &APPLIED_FROM_A_ROLLOUT[..],
        &["new_configuration", "config_applied"],
    ]
    .concat();
    settles_with(&api, python, &id, &reasons).await;
}

/// The history of a collector that applied a rollout's configuration.
const APPLIED_FROM_A_ROLLOUT: [&str; 4] = [
    "initial",
    "queued_for_rollout",
    "config_sent",
    "config_applied",
];

/// A server, one labelled client of `client`'s kind, and the rollout of `logs` version 1 to it.
async fn one_client_in_a_rollout(
    client: Client,
) -> (
    TestServer,
    crate::support::api::Api,
    (Driver, String),
    Value,
) {
    let server = TestServer::start().await;
    let api = crate::support::api::Api::new(&server.api_url);
    let mut drivers = labelled_clients(&server, &api, &[(client, "one")]).await;
    let rollout = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "logs", "version": 1, "selector": "env=one"}),
        )
        .await;
    (server, api, drivers.remove(0), rollout)
}

/// The real Node client receives a rollout's configuration, acknowledges it, and is Connected.
#[tokio::test]
async fn node_acknowledges_a_configuration_from_a_rollout() {
    let (_server, api, (mut node, id), rollout) = one_client_in_a_rollout(Client::Node).await;
    let node = &mut node;
    let received = node.expect("remote_config").await;
    assert_eq!(received["hash"], rollout["hash"]);
    let body = received["files"]["collector.yaml"]["body"]
        .as_str()
        .unwrap();
    assert!(body.contains("debug"), "{body}");
    node.command(json!({"cmd": "apply", "status": "APPLIED"}))
        .await;
    rollout_reaches(&api, &rollout, |r| {
        r["status"] == "completed" && r["progress"]["applied"] == 1
    })
    .await;
    settles_with(&api, node, &id, &APPLIED_FROM_A_ROLLOUT).await;
    assert_eq!(
        api.ok(&format!("/api/v1/collectors/{id}")).await["state"],
        "connected"
    );
}

/// Waits until the collector's stored history is `reasons`, then stops its driver, which must
/// have run into nothing.
async fn settles_with(
    api: &crate::support::api::Api,
    driver: &mut Driver,
    id: &str,
    reasons: &[&str],
) {
    eventually("stored", || async {
        (history_of(api, id).await == reasons).then_some(())
    })
    .await;
    assert!(driver.stop().await.success());
    assert!(driver.errors().is_empty(), "{:#?}", driver.errors());
}

async fn rollout_reaches(
    api: &crate::support::api::Api,
    rollout: &Value,
    check: impl Fn(&Value) -> bool,
) {
    let path = format!("/api/v1/rollouts/{}", rollout["id"].as_str().unwrap());
    eventually(&format!("{path} progresses"), || async {
        let r = api.ok(&path).await;
        check(&r).then_some(())
    })
    .await;
}

//! Rollouts end to end: our scripted collectors over real WebSockets, a configuration carried to
//! them batch by batch through the API, with the exact histories, batch sizes, the automatic
//! pause, resume, cancel, dry runs, take-overs, late collectors and a server restart.

use opampd::collector::{CollectorId, Reason, State};
use serde_json::{Value, json};

use crate::support::api::{Api, assert_error};
use crate::support::scripted::{Script, Scripted};
use crate::support::*;

pub(crate) const KAFKA: &str = "receivers:\n  otlp:\nexporters:\n  kafka:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [kafka]\n";

/// Stores configuration `gateway` version 1 (it needs `receivers/otlp` and `exporters/kafka`).
pub(crate) async fn configuration(api: &Api) {
    let answer = api
        .post(
            "/api/v1/configurations",
            &json!({"name": "gateway", "yaml": KAFKA}),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
}

/// Waits until every collector is in the store (a rollout selects from it), labelled `env=prod`.
pub(crate) async fn labelled(api: &Api, collectors: &[&Scripted]) {
    let ids: Vec<CollectorId> = collectors.iter().map(|c| c.id).collect();
    labelled_ids(api, &ids).await;
}

pub(crate) async fn labelled_ids(api: &Api, collectors: &[CollectorId]) {
    for id in collectors {
        api.stored(*id).await;
        let answer = api
            .put(
                &format!("/api/v1/collectors/{id}/labels"),
                &json!({"env": "prod"}),
            )
            .await;
        assert_eq!(answer.status, 200);
    }
    eventually("labels stored", || async {
        let page = api
            .ok("/api/v1/collectors?selector=env=prod&limit=500")
            .await;
        (page["items"].as_array().unwrap().len() == collectors.len()).then_some(())
    })
    .await;
}

/// A rollout of `gateway` held running by one collector that never answers (its verdict is
/// given ten minutes); the collector and the rollout's id.
pub(crate) async fn held_rollout(server: &TestServer, api: &Api) -> (Scripted, String) {
    configuration(api).await;
    let silent = Scripted::start(&server.ws_url, &["kafka"], Script::Ignore).await;
    labelled(api, &[&silent]).await;
    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "selector": "env=prod",
                "timeout_seconds": 600}),
        )
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    (silent, id)
}

pub(crate) async fn rollout_where(
    api: &Api,
    id: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/api/v1/rollouts/{id}");
    let last = ShownOnPanic(std::sync::Mutex::new(Value::Null));
    eventually(what, || async {
        let r = api.ok(&path).await;
        if check(&r) {
            return Some(r);
        }
        *last.0.lock().unwrap() = r;
        None
    })
    .await
}

/// The rollout last seen by a wait that timed out, shown with the failure.
struct ShownOnPanic(std::sync::Mutex<Value>);

impl Drop for ShownOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(last) = self.0.lock()
        {
            eprintln!("last seen: {last}");
        }
    }
}

pub(crate) fn target(rollout: &Value, id: CollectorId) -> &Value {
    rollout["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["collector"] == id.to_string())
        .expect("a target")
}

use {Reason as R, State as S};

/// The exact histories of the ten-collector rollout: applied, failed (2, 5), incompatible (8, 9),
/// and each configuration sent exactly once to every compatible collector.
async fn assert_histories(server: &TestServer, collectors: &[Scripted]) {
    let applied = [
        (None, S::Connected, R::Initial),
        (Some(S::Connected), S::Pending, R::QueuedForRollout),
        (Some(S::Pending), S::Configuring, R::ConfigSent),
        (Some(S::Configuring), S::Connected, R::ConfigApplied),
    ];
    let failed = [
        applied[0],
        applied[1],
        applied[2],
        (Some(S::Configuring), S::Error, R::ConfigFailed),
    ];
    let incompatible = [
        applied[0],
        (
            Some(S::Connected),
            S::Incompatible,
            R::UnsupportedComponents,
        ),
    ];
    for (i, c) in collectors.iter().enumerate() {
        let expected: &[Step] = match i {
            2 | 5 => &failed,
            8 | 9 => &incompatible,
            _ => &applied,
        };
        assert_eq!(server.steps(c.id).await, expected, "collector {i}");
        let sent = usize::from(!matches!(i, 8 | 9));
        assert_eq!(
            c.received(),
            sent,
            "collector {i} got the configuration {sent} time(s)"
        );
    }
}

#[tokio::test]
async fn ten_collectors_batch_by_batch_with_pause_and_resume() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let mut collectors = Vec::new();
    for i in 0..10 {
        let (exporters, script): (&[&str], _) = match i {
            2 | 5 => (
                &["kafka", "debug"],
                Script::Fail("kafka: broker unreachable"),
            ),
            8 | 9 => (&["debug"], Script::Apply),
            _ => (&["kafka"], Script::Apply),
        };
        collectors.push(Scripted::start(&server.ws_url, exporters, script).await);
    }
    labelled(&api, &collectors.iter().collect::<Vec<_>>()).await;

    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "selector": "env=prod",
                "initial_batch": 2, "multiplier": 2, "max_batch": 4, "max_errors": 0}),
        )
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(started["progress"]["incompatible"], 2);
    assert_eq!(
        target(&started, collectors[8].id)["missing"],
        json!(["exporters/kafka"])
    );

    // Batch 0 (2) applies; batch 1 (4) has the two that fail: the rollout pauses itself.
    let paused = rollout_where(&api, &id, "paused", |r| {
        r["status"] == "paused" && r["progress"]["configuring"] == 0
    })
    .await;
    assert!(
        paused["reason"].as_str().unwrap().contains("max_errors"),
        "{paused}"
    );
    assert_eq!(paused["progress"]["failed"], 2);
    assert_eq!(paused["progress"]["applied"], 4);
    assert_eq!(paused["progress"]["pending"], 2);
    for (i, c) in collectors.iter().enumerate() {
        let batch = &target(&paused, c.id)["batch"];
        let expected = match i {
            0 | 1 => json!(0),
            2..=5 => json!(1),
            _ => Value::Null,
        };
        assert_eq!(batch, &expected, "collector {i}");
    }
    assert_eq!(
        target(&paused, collectors[2].id)["error"],
        "kafka: broker unreachable"
    );

    let resumed = api
        .post_ok(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
        .await;
    assert_eq!(resumed["status"], "running");
    let done = rollout_where(&api, &id, "completed", |r| r["status"] == "completed").await;
    assert_eq!(done["progress"]["applied"], 6);
    assert_eq!(target(&done, collectors[7].id)["batch"], 2);
    assert_eq!(done["batches_started"], 3);

    assert_histories(&server, &collectors).await;
    let failed_one = format!("/api/v1/collectors/{}", collectors[2].id);
    eventually("the store shows the collector's error", || async {
        (api.ok(&failed_one).await["state_message"] == "kafka: broker unreachable").then_some(())
    })
    .await;
    assert_error(
        &api.post(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
            .await,
        409,
        "conflict",
    );
}

#[tokio::test]
async fn cancel_returns_queued_collectors_and_a_dry_run_changes_nothing() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let silent = Scripted::start(&server.ws_url, &["kafka"], Script::Ignore).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await);
    }
    let lacking = Scripted::start(&server.ws_url, &["debug"], Script::Apply).await;
    let mut all: Vec<&Scripted> = vec![&silent];
    all.extend(others.iter());
    all.push(&lacking);
    labelled(&api, &all).await;

    let plan = api.post_ok("/api/v1/rollouts",
        &json!({"configuration": "gateway", "version": 1, "selector": "env=prod", "dry_run": true}),
    )
    .await;
    assert_eq!(plan["status"], "dry_run");
    assert_eq!(plan["progress"]["pending"], 4);
    assert_eq!(plan["progress"]["incompatible"], 1);
    assert_eq!(
        target(&plan, lacking.id)["missing"],
        json!(["exporters/kafka"])
    );
    assert!(
        api.ok("/api/v1/rollouts").await["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(server.steps(silent.id).await.len(), 1, "nothing changed");

    // The silent collector is alone in batch 0 and never answers: the rollout waits on it.
    let started = api.post_ok("/api/v1/rollouts",
        &json!({"configuration": "gateway", "version": 1, "selector": "env=prod", "initial_batch": 1}),
    )
    .await;
    let id = started["id"].as_str().unwrap();
    assert_eq!(target(&started, silent.id)["outcome"], "configuring");
    let cancelled = api
        .post_ok(&format!("/api/v1/rollouts/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(
        cancelled["progress"]["cancelled"], 4,
        "three queued, one configuring"
    );
    for c in &others {
        assert_eq!(
            server.steps(c.id).await,
            [
                (None, S::Connected, R::Initial),
                (Some(S::Connected), S::Pending, R::QueuedForRollout),
                (Some(S::Pending), S::Connected, R::RemovedFromRollout),
            ]
        );
        assert_eq!(c.received(), 0);
    }
    assert_error(
        &api.post(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
            .await,
        409,
        "conflict",
    );
    let missing = api
        .post(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 9}),
        )
        .await;
    assert_error(&missing, 404, "not_found");
}

#[tokio::test]
async fn a_new_rollout_takes_over_and_late_collectors_join_a_completed_one() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let stuck = Scripted::start(&server.ws_url, &["kafka"], Script::Ignore).await;
    let queued = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    labelled(&api, &[&stuck, &queued]).await;
    let stuck_labels = format!("/api/v1/collectors/{}/labels", stuck.id);
    assert_eq!(
        api.patch(&stuck_labels, &json!({"stuck": "yes"}))
            .await
            .status,
        200
    );
    let first = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "initial_batch": 1}),
        )
        .await;
    let first_id = first["id"].as_str().unwrap().to_owned();

    let second_yaml = KAFKA.replace("kafka:", "kafka:\n    topic: spans");
    let v2 = api
        .post(
            "/api/v1/configurations",
            &json!({"name": "gateway", "yaml": second_yaml}),
        )
        .await;
    assert_eq!(v2.body["version"], 2);
    let second = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 2, "selector": "env=prod"}),
        )
        .await;
    let old = api.ok(&format!("/api/v1/rollouts/{first_id}")).await;
    assert_eq!(old["progress"]["replaced"], 2, "visibly taken over: {old}");
    assert!(
        target(&old, queued.id)["error"]
            .as_str()
            .unwrap()
            .contains(second["id"].as_str().unwrap())
    );
    let second_id = second["id"].as_str().unwrap().to_owned();
    rollout_where(&api, &second_id, "the queued one applied", |r| {
        r["progress"]["applied"] == 1
    })
    .await;

    // A completed rollout over every collector configures one that connects later.
    let everyone = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 2, "selector": "!stuck"}),
        )
        .await;
    let everyone_id = everyone["id"].as_str().unwrap().to_owned();
    rollout_where(&api, &everyone_id, "completed", |r| {
        r["status"] == "completed"
    })
    .await;
    let late = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    let joined = rollout_where(&api, &everyone_id, "the late collector applied", |r| {
        r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["collector"] == late.id.to_string() && t["outcome"] == "applied")
    })
    .await;
    assert_eq!(joined["status"], "completed");
    assert_eq!(late.received(), 1);
}

/// Four collectors in a rollout of two batches of two: batch 0 applies, batch 1 hangs on the
/// silent collector (2), with 3 waiting behind it. The collectors and the rollout's id.
pub(crate) async fn hung_rollout(api: &Api, ws_url: &str) -> (Vec<Scripted>, String) {
    configuration(api).await;
    let mut collectors = Vec::new();
    for i in 0..4 {
        let script = if i == 2 {
            Script::Ignore
        } else {
            Script::Apply
        };
        collectors.push(Scripted::start(ws_url, &["kafka"], script).await);
    }
    labelled(api, &collectors.iter().collect::<Vec<_>>()).await;
    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "initial_batch": 2, "multiplier": 1}),
        )
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    rollout_where(api, &id, "batch 1 sent", |r| r["batches_started"] == 2).await;
    (collectors, id)
}

#[tokio::test]
async fn a_rollout_survives_a_restart_and_sends_nothing_twice() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let (collectors, id) = hung_rollout(&api, &server.ws_url).await;

    let server = server.restart().await;
    let api = Api::new(&server.api_url);
    let mut back = Vec::new();
    for c in collectors {
        back.push(c.reconnect(&server.ws_url, &["kafka"], Script::Apply).await);
    }
    let done = rollout_where(&api, &id, "completed after the restart", |r| {
        r["status"] == "completed"
    })
    .await;
    assert_eq!(done["progress"]["applied"], 4, "{done}");
    for (i, c) in back.iter().enumerate() {
        let expected = if i == 2 { 2 } else { 1 };
        assert_eq!(
            c.received(),
            expected,
            "collector {i}: sent again only when no verdict came"
        );
    }
}

#[tokio::test]
async fn a_failed_collector_is_rolled_back_to_what_it_ran() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let c = Scripted::start(&server.ws_url, &["kafka"], Script::FailSecond("bad topic")).await;
    labelled(&api, &[&c]).await;
    let first = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1}),
        )
        .await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    rollout_where(&api, &first_id, "v1 applied", |r| {
        r["progress"]["applied"] == 1
    })
    .await;
    let v2 = KAFKA.replace("kafka:", "kafka:\n    topic: spans");
    api.post_ok(
        "/api/v1/configurations",
        &json!({"name": "gateway", "yaml": v2}),
    )
    .await;
    let second = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 2, "rollback": true, "max_errors": 1}),
        )
        .await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    let done = rollout_where(&api, &second_id, "failed and rolled back", |r| {
        r["status"] == "completed" && target(r, c.id)["rolled_back"] == true
    })
    .await;
    assert_eq!(target(&done, c.id)["outcome"], "failed");
    let view = server
        .wait_for(c.id, "back on v1", |v| v.state == Some(S::Connected))
        .await;
    let all = server.steps(c.id).await;
    let last = &all[all.len() - 3..];
    assert_eq!(
        last,
        [
            (Some(S::Configuring), S::Error, R::ConfigFailed),
            (Some(S::Error), S::Configuring, R::NewConfiguration),
            (Some(S::Configuring), S::Connected, R::ConfigApplied),
        ]
    );
    assert_eq!(c.received(), 3, "v1, v2, and v1 again");
    let running = opampd::collector::machine::hex(&view.remote_config_status.unwrap().hash);
    assert_eq!(
        running,
        first["hash"].as_str().unwrap(),
        "back on version 1"
    );
}

#[tokio::test]
async fn an_upgrade_goes_through_upgrading_batch_by_batch() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let installs = [
        Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await,
        Scripted::start(
            &server.ws_url,
            &["kafka"],
            Script::Fail("checksum mismatch"),
        )
        .await,
        Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await,
    ];
    // A collector without AcceptsPackages is refused and listed.
    let no_packages = new_uid();
    let mut first = hello(&no_packages, 0);
    first.capabilities = capabilities(&[
        opampd::proto::AgentCapabilities::ReportsStatus,
        opampd::proto::AgentCapabilities::ReportsHeartbeat,
    ]);
    post_ok(&server.opamp_url, &first).await;
    let mut all: Vec<&Scripted> = installs.iter().collect();
    let ids: Vec<CollectorId> = all
        .iter()
        .map(|c| c.id)
        .chain([id_of(&no_packages)])
        .collect();
    for id in &ids {
        api.stored(*id).await;
    }
    all.clear();

    let package = json!({"name": "otelcol", "version": "0.2.0",
        "download_url": "https://packages.example/otelcol-0.2.0.tar.gz",
        "sha256": "ab".repeat(32), "initial_batch": 1, "multiplier": 2, "max_errors": 1});
    let mut plan = package.clone();
    plan["dry_run"] = json!(true);
    let planned = api.post_ok("/api/v1/upgrades", &plan).await;
    assert_eq!(planned["status"], "dry_run");
    assert_eq!(planned["progress"]["pending"], 3);
    assert_eq!(
        target(&planned, id_of(&no_packages))["outcome"],
        "unsupported"
    );
    let mut bad = package.clone();
    bad["sha256"] = json!("not-hex");
    let refused = api.post("/api/v1/upgrades", &bad).await;
    assert_error(&refused, 400, "bad_request");

    let started = api.post_ok("/api/v1/upgrades", &package).await;
    assert_eq!(started["kind"], "package");
    assert_eq!(started["package"]["version"], "0.2.0");
    let id = started["id"].as_str().unwrap().to_owned();
    let done = rollout_where(&api, &id, "the upgrade completed", |r| {
        r["status"] == "completed"
    })
    .await;
    assert_eq!(done["progress"]["applied"], 2, "{done}");
    assert_eq!(done["progress"]["failed"], 1);
    assert_eq!(done["progress"]["unsupported"], 1);
    assert_eq!(target(&done, installs[1].id)["error"], "checksum mismatch");
    // initial_batch 1, multiplier 2: the first alone, then the other two.
    assert_eq!(done["batches_started"], 2, "{done}");
    let batches: Vec<&Value> = installs
        .iter()
        .map(|c| &target(&done, c.id)["batch"])
        .collect();
    assert_eq!(batches, [&json!(0), &json!(1), &json!(1)], "{done}");
    assert!(target(&done, id_of(&no_packages))["batch"].is_null());
    // Batch by batch: the second was offered only once the first had its verdict.
    let first_done = server.history(installs[0].id).await[2].at;
    for c in &installs[1..] {
        let offered = server.history(c.id).await[1].clone();
        assert_eq!(offered.reason, R::PackageUpgradeInitiated);
        assert!(offered.at >= first_done, "offered before batch 0 settled");
    }

    let upgraded = [
        (None, S::Connected, R::Initial),
        (Some(S::Connected), S::Upgrading, R::PackageUpgradeInitiated),
        (Some(S::Upgrading), S::Connected, R::UpgradeSucceeded),
    ];
    assert_eq!(server.steps(installs[0].id).await, upgraded);
    assert_eq!(
        server.steps(installs[1].id).await,
        [
            upgraded[0],
            upgraded[1],
            (Some(S::Upgrading), S::Error, R::UpgradeFailed)
        ]
    );
    assert_eq!(server.steps(id_of(&no_packages)).await, [upgraded[0]]);
    let path = format!("/api/v1/collectors/{}", installs[2].id);
    eventually("the new version is reported", || async {
        (api.ok(&path).await["version"] == "0.2.0").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_collector_away_at_its_turn_gets_the_configuration_when_it_returns() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let present = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    let away = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    labelled(&api, &[&present, &away]).await;
    let away_id = away.disconnect();
    server
        .wait_for(away_id, "away", |c| c.state == Some(S::Disconnected))
        .await;
    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1}),
        )
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    let done = rollout_where(&api, &id, "completed without waiting for it", |r| {
        r["status"] == "completed"
    })
    .await;
    assert_eq!(target(&done, away_id)["outcome"], "waiting");
    let back = Scripted::returning(away_id, &server.ws_url, &["kafka"], Script::Apply).await;
    rollout_where(&api, &id, "applied once back", |r| {
        target(r, away_id)["outcome"] == "applied"
    })
    .await;
    assert_eq!(back.received(), 1);
    let last = server.steps(away_id).await;
    assert_eq!(
        last[last.len() - 3..],
        [
            (Some(S::Disconnected), S::Connected, R::ConnectionRestored),
            (Some(S::Connected), S::Configuring, R::NewConfiguration),
            (Some(S::Configuring), S::Connected, R::ConfigApplied),
        ]
    );
}

/// An operator pauses a running rollout: the batch out there still settles, the next one is not
/// sent until the rollout is resumed. A collector that does not report its components is taken
/// as compatible, and marked so.
#[tokio::test]
async fn an_operator_pauses_a_running_rollout_and_resumes_it() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    // First (so first in the rollout's order), a plain-HTTP collector this test answers for by
    // hand; it reports no components.
    let manual = new_uid();
    post_ok(&server.opamp_url, &hello(&manual, 0)).await;
    let later = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    labelled_ids(&api, &[id_of(&manual), later.id]).await;
    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "initial_batch": 1, "multiplier": 1}),
        )
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(target(&started, id_of(&manual))["outcome"], "configuring");
    assert_eq!(target(&started, id_of(&manual))["components_unknown"], true);
    assert_eq!(target(&started, later.id)["components_unknown"], false);
    assert_eq!(target(&started, later.id)["outcome"], "pending");

    let paused = api
        .post_ok(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
        .await;
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["reason"], "paused by an operator");
    assert_error(
        &api.post(&format!("/api/v1/rollouts/{id}/pause"), &json!({}))
            .await,
        409,
        "conflict",
    );
    let sent = post_ok(&server.opamp_url, &heartbeat(&manual, 1))
        .await
        .remote_config
        .expect("batch 0 went out before the pause");
    let applied = opampd::proto::AgentToServer {
        remote_config_status: Some(opampd::proto::RemoteConfigStatus {
            last_remote_config_hash: sent.config_hash,
            status: opampd::proto::RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        }),
        ..heartbeat(&manual, 2)
    };
    post_ok(&server.opamp_url, &applied).await;
    // The rollout takes the verdict in while paused, in the very step that would have sent the
    // next batch had it been running.
    let settled = rollout_where(&api, &id, "batch 0 applied while paused", |r| {
        target(r, id_of(&manual))["outcome"] == "applied"
    })
    .await;
    assert_eq!(settled["status"], "paused");
    assert_eq!(settled["batches_started"], 1);
    assert_eq!(target(&settled, later.id)["outcome"], "pending");
    assert_eq!(later.received(), 0, "nothing sent while paused");

    let resumed = api
        .post_ok(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
        .await;
    assert_eq!(resumed["status"], "running");
    let done = rollout_where(&api, &id, "completed", |r| r["status"] == "completed").await;
    assert_eq!(target(&done, later.id)["batch"], 1);
    assert_eq!(target(&done, later.id)["outcome"], "applied");
    assert_eq!(later.received(), 1);
}

/// A collector already running the configuration is `skipped`: nothing is sent to it and its
/// history does not move; the others get it.
#[tokio::test]
async fn a_collector_already_running_the_configuration_is_skipped() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let running = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    labelled(&api, &[&running]).await;
    let rollout = json!({"configuration": "gateway", "version": 1, "selector": "env=prod"});
    let first = api.post_ok("/api/v1/rollouts", &rollout).await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    rollout_where(&api, &first_id, "completed", |r| r["status"] == "completed").await;
    let before = server.steps(running.id).await;

    let newcomer = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    labelled(&api, &[&running, &newcomer]).await;
    let again = api.post_ok("/api/v1/rollouts", &rollout).await;
    assert_eq!(target(&again, running.id)["outcome"], "skipped");
    assert!(target(&again, running.id)["batch"].is_null());
    let again_id = again["id"].as_str().unwrap().to_owned();
    let done = rollout_where(&api, &again_id, "completed", |r| r["status"] == "completed").await;
    assert_eq!(done["progress"]["skipped"], 1, "{done}");
    assert_eq!(done["progress"]["applied"], 1, "{done}");
    assert_eq!(running.received(), 1, "sent once, by the first rollout");
    assert_eq!(newcomer.received(), 1);
    assert_eq!(
        server.steps(running.id).await,
        before,
        "its history did not move"
    );
}

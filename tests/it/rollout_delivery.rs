//! Rollouts that always finish: a cancel is a barrier (nothing of the rollout reaches a collector
//! after it answers, wherever the collector was in its rollout), with scripted collectors over real
//! WebSockets.

use opampd::collector::{Reason, State};
use serde_json::{Value, json};

use crate::rollouts::{configuration, labelled, labelled_ids, rollout_where};
use crate::support::api::Api;
use crate::support::scripted::{Script, Scripted};
use crate::support::*;

fn outcome(rollout: &Value, id: opampd::collector::CollectorId) -> Value {
    rollout["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["collector"] == id.to_string())
        .map(|t| t["outcome"].clone())
        .expect("a target")
}

/// Cancel while one collector is Configuring (it never answers), one is away (Waiting: its batch
/// came while it was disconnected) and two are Pending: all four end `cancelled`, the Pending ones
/// go back to Connected, and none receives the configuration afterwards, not even the away one
/// when it returns; it then takes the next rollout's configuration, and only that one.
#[tokio::test]
async fn a_cancel_is_a_barrier_for_pending_waiting_and_configuring_collectors() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    // Targets go in id order (uids are time-ordered): the first two make batch 0.
    let silent = Scripted::start(&server.ws_url, &["kafka"], Script::Ignore).await;
    let away = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    let queued = [
        Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await,
        Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await,
    ];
    labelled(&api, &[&silent, &away, &queued[0], &queued[1]]).await;
    let away_id = away.disconnect();
    eventually("the away collector is disconnected", || async {
        let state = api.ok(&format!("/api/v1/collectors/{away_id}")).await["state"].clone();
        (state == "disconnected").then_some(())
    })
    .await;

    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "selector": "env=prod",
                "initial_batch": 2, "multiplier": 1}),
        )
        .await;
    let id = started["id"].as_str().unwrap().to_owned();
    assert_eq!(outcome(&started, silent.id), "configuring", "{started}");
    assert_eq!(outcome(&started, away_id), "waiting", "{started}");
    for c in &queued {
        assert_eq!(outcome(&started, c.id), "pending", "{started}");
    }
    eventually("the silent collector has the configuration", || async {
        (silent.received() == 1).then_some(())
    })
    .await;

    let cancelled = api
        .post_ok(&format!("/api/v1/rollouts/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["progress"]["cancelled"], 4, "{cancelled}");
    for c in &queued {
        assert_eq!(
            server.steps(c.id).await,
            [
                (None, State::Connected, Reason::Initial),
                (
                    Some(State::Connected),
                    State::Pending,
                    Reason::QueuedForRollout
                ),
                (
                    Some(State::Pending),
                    State::Connected,
                    Reason::RemovedFromRollout
                ),
            ]
        );
    }

    // The away collector returns: nothing of the cancelled rollout is waiting for it.
    let back = Scripted::returning(away_id, &server.ws_url, &["kafka"], Script::Apply).await;
    server
        .wait_for(away_id, "the away collector is back", |c| c.connected)
        .await;
    // A later rollout reaches it (its arrival has been handled by then), and it is the only
    // configuration it ever gets.
    a_later_rollout_reaches(&api, away_id).await;
    assert_eq!(back.received(), 1, "only the next rollout's configuration");
    let v1 = started["hash"].as_str().unwrap().to_owned();
    let history = server.history(away_id).await;
    assert!(
        !history
            .iter()
            .any(|t| t.cause.as_deref() == Some(v1.as_str())),
        "nothing of the cancelled rollout moved the returning collector: {history:?}"
    );
    for c in &queued {
        assert_eq!(c.received(), 0);
    }
    assert_eq!(silent.received(), 1, "the one it had before the cancel");
    let after = api.ok(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(
        after["progress"], cancelled["progress"],
        "no longer processed"
    );
    assert_eq!(after["targets"], cancelled["targets"]);
}

/// Stores version 2 of `gateway`, rolls it out to `id` alone and waits until it applied it.
async fn a_later_rollout_reaches(api: &Api, id: opampd::collector::CollectorId) {
    let v2 = api
        .post(
            "/api/v1/configurations",
            &json!({"name": "gateway", "yaml": crate::rollouts::KAFKA.replace("kafka:", "kafka:\n    topic: spans")}),
        )
        .await;
    assert_eq!(v2.status, 201, "{}", v2.body);
    let labels = format!("/api/v1/collectors/{id}/labels");
    assert_eq!(
        api.patch(&labels, &json!({"back": "yes"})).await.status,
        200
    );
    let next = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 2, "selector": "back=yes"}),
        )
        .await;
    let next_id = next["id"].as_str().unwrap().to_owned();
    rollout_where(api, &next_id, "the returning collector applied v2", |r| {
        r["progress"]["applied"] == 1
    })
    .await;
}

/// A collector that accepts configurations but never reports their status (no
/// `ReportsRemoteConfig`) is refused up front and listed `unsupported`: nothing is sent to it, it
/// is never queued, and the rollout completes without waiting for it.
#[tokio::test]
async fn a_collector_that_cannot_report_the_outcome_is_refused_and_listed() {
    use opampd::proto::AgentCapabilities as Can;
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let able = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    let uid = new_uid();
    let mut mute = WsClient::connect(&server.ws_url).await;
    let mut first = hello_with_exporters(&uid, &["kafka"]);
    first.capabilities = capabilities(&[Can::ReportsStatus, Can::AcceptsRemoteConfig]);
    let welcome = mute.exchange(&first).await;
    assert!(welcome.error_response.is_none(), "{welcome:?}");
    let mute_id = id_of(&uid);
    labelled_ids(&api, &[able.id, mute_id]).await;

    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "selector": "env=prod"}),
        )
        .await;
    assert_eq!(outcome(&started, mute_id), "unsupported", "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let done = rollout_where(&api, &id, "completed", |r| r["status"] == "completed").await;
    assert_eq!(done["progress"]["applied"], 1, "{done}");
    assert_eq!(done["progress"]["unsupported"], 1, "{done}");
    assert_eq!(
        server.steps(mute_id).await,
        [(None, State::Connected, Reason::Initial)],
        "never queued nor sent anything"
    );
}

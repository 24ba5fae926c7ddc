//! Rollout progress on the event stream: what a client draws a progress bar from, read on a
//! replica other than the one whose engine moves the rollout.

use serde_json::json;

use crate::rollouts::{configuration, held_rollout, labelled};
use crate::support::api::{Api, EventStream};
use crate::support::scripted::{Script, Scripted};
use crate::support::*;

/// The next `event: rollout` for rollout `id` (transitions and other rollouts are passed over).
async fn progress_of(events: &mut EventStream, id: &str) -> serde_json::Value {
    loop {
        let event = events.next().await;
        if event.event == "rollout" && event.data["id"] == id {
            assert!(event.id.is_empty(), "progress is not a history position");
            return event.data;
        }
    }
}

#[tokio::test]
async fn progress_reaches_every_replica_until_the_rollout_completes() {
    let (first, second) = two_replicas().await;
    let api = Api::new(&first.api_url);
    let elsewhere = Api::new(&second.api_url);
    configuration(&api).await;
    let mut collectors = Vec::new();
    for i in 0..5 {
        let script = if i == 2 {
            Script::Fail("kafka: broker unreachable")
        } else {
            Script::Apply
        };
        collectors.push(Scripted::start(&first.ws_url, &["kafka"], script).await);
    }
    labelled(&api, &collectors.iter().collect::<Vec<_>>()).await;

    let mut events = elsewhere.events("?rollouts=true", None).await;
    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "selector": "env=prod",
                "initial_batch": 1, "multiplier": 2, "max_batch": 2}),
        )
        .await;
    let id = started["id"].as_str().unwrap().to_owned();

    // It pauses itself at the failure; resumed, it completes.
    let mut applied = Vec::new();
    let mut batches = Vec::new();
    let mut statuses = Vec::new();
    let last = loop {
        let progress = progress_of(&mut events, &id).await;
        let total: u64 = progress["progress"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(total, 5, "every target counted once: {progress}");
        applied.push(progress["progress"]["applied"].as_u64().unwrap());
        batches.push(progress["batches_started"].as_u64().unwrap());
        let status = progress["status"].as_str().unwrap().to_owned();
        if statuses.last() != Some(&status) {
            statuses.push(status.clone());
        }
        match status.as_str() {
            "completed" => break progress,
            "paused" => {
                assert_eq!(progress["progress"]["failed"], 1, "{progress}");
                api.post_ok(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
                    .await;
            }
            _ => assert_eq!(status, "running", "{progress}"),
        }
    };
    assert!(applied.is_sorted(), "progress only moves on: {applied:?}");
    assert!(batches.is_sorted(), "{batches:?}");
    // Each look reports a rollout's latest state: a short run may be seen only at its end.
    let settled: Vec<&String> = statuses.iter().filter(|s| *s != "running").collect();
    assert_eq!(settled, ["paused", "completed"], "{statuses:?}");
    assert_eq!(last["progress"]["applied"], 4);
    assert_eq!(last["progress"]["failed"], 1);
    assert_eq!(last["batches_started"], 3, "1, 2, then the last 2");
    assert_eq!(
        last,
        api.ok(&format!("/api/v1/rollouts/{id}"))
            .await
            .as_object()
            .map(|o| {
                let mut o = o.clone();
                o.remove("targets");
                o.remove("targets_next_cursor");
                serde_json::Value::Object(o)
            })
            .unwrap(),
        "the event is the rollout as stored"
    );
}

#[tokio::test]
async fn a_stream_opened_later_starts_with_the_rollouts_under_way() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let (_silent, id) = held_rollout(&server, &api).await;
    let mut events = api.events("?rollouts=true", None).await;
    let first = progress_of(&mut events, &id).await;
    assert_eq!(first["status"], "running");
    assert_eq!(first["progress"]["configuring"], 1);

    api.post_ok(&format!("/api/v1/rollouts/{id}/cancel"), &json!({}))
        .await;
    let cancelled = progress_of(&mut events, &id).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["progress"]["cancelled"], 1);

    let refused = api.get("/api/v1/events?rollouts=yes").await;
    crate::support::api::assert_error(&refused, 400, "bad_request");
}

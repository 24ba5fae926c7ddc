//! The counts over the last hours (`/api/v1/summary/history`), on both stores: collectors with
//! known histories are written to the server's store, and the points must count them exactly.

use std::time::{Duration, SystemTime};

use opampd::collector::{Collector, CollectorId, Reason, State, Transition};

use crate::store::{batch_of, record_change, transition_change};
use crate::support::Backend;
use crate::support::TestServer;
use crate::support::api::{Api, assert_error};

const MINUTE: u64 = 60;

fn ago(now: SystemTime, minutes: u64) -> SystemTime {
    now - Duration::from_secs(minutes * MINUTE)
}

/// A collector now in the last state of `steps`, each step `(minutes ago, state)`.
pub(crate) fn collector(now: SystemTime, steps: &[(u64, State)]) -> (Collector, Vec<Transition>) {
    let mut c = Collector::new(CollectorId::new_v7());
    let mut from = None;
    let mut history = Vec::new();
    for &(minutes, to) in steps {
        history.push(Transition {
            from,
            to,
            reason: if from.is_none() {
                Reason::Initial
            } else {
                Reason::RuntimeError
            },
            message: String::new(),
            at: ago(now, minutes),
            cause: None,
        });
        from = Some(to);
    }
    c.state = from;
    c.state_since = history.last().map(|t| t.at);
    (c, history)
}

/// Writes collectors with these histories (see [`collector`]) into the server's own store, as
/// its actors would have: records and transitions.
pub(crate) async fn seed(
    server: &TestServer,
    now: SystemTime,
    fleet: &[&[(u64, State)]],
) -> Vec<CollectorId> {
    let fleet: Vec<_> = fleet.iter().map(|steps| collector(now, steps)).collect();
    let changes = fleet.iter().flat_map(|(c, history)| {
        std::iter::once(record_change(c, 1, true)).chain(
            history
                .iter()
                .map(|t| transition_change(c.id, 1, t.clone())),
        )
    });
    server.store().write(&batch_of(changes)).await.unwrap();
    fleet.iter().map(|(c, _)| c.id).collect()
}

fn count(point: &serde_json::Value, state: &str) -> u64 {
    point["by_state"][state].as_u64().unwrap()
}

/// The last 3 hours, a point an hour: each point holds exactly `expected` (the states not named
/// are zero).
async fn points_of(api: &Api, expected: &[[(&str, u64); 4]]) -> Vec<serde_json::Value> {
    let history = api.ok("/api/v1/summary/history?hours=3&step=3600").await;
    assert_eq!(history["step"], 3600);
    let points = history["points"].as_array().unwrap().clone();
    assert_eq!(points.len(), expected.len(), "{history}");
    for (k, (point, expected)) in points.iter().zip(expected).enumerate() {
        for (state, n) in expected {
            assert_eq!(count(point, state), *n, "{state} at point {k}: {point}");
        }
        let total: u64 = point["by_state"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(total, expected.iter().map(|(_, n)| n).sum::<u64>());
    }
    points
}

async fn counts_at_each_hour_follow_the_history(backend: Backend) {
    let server = TestServer::on(backend, |_| {}).await;
    let now = SystemTime::now();
    let ids = seed(
        &server,
        now,
        &[
            // Connected before the window, failed 90 minutes ago.
            &[(240, State::Connected), (90, State::Error)],
            // Appeared 150 minutes ago, gone 30 minutes ago.
            &[(150, State::Connected), (30, State::Disconnected)],
            // Appeared 10 minutes ago.
            &[(10, State::Pending)],
        ],
    )
    .await;

    let api = Api::new(&server.api_url);
    let points = points_of(
        &api,
        &[
            [
                ("connected", 1),
                ("error", 0),
                ("disconnected", 0),
                ("pending", 0),
            ],
            [
                ("connected", 2),
                ("error", 0),
                ("disconnected", 0),
                ("pending", 0),
            ],
            [
                ("connected", 1),
                ("error", 1),
                ("disconnected", 0),
                ("pending", 0),
            ],
            [
                ("connected", 0),
                ("error", 1),
                ("disconnected", 1),
                ("pending", 1),
            ],
        ],
    )
    .await;
    // The last point is now: the summary's counts.
    let summary = api.ok("/api/v1/summary").await;
    assert_eq!(points[3]["by_state"], summary["by_state"]);

    // Forgotten, the second collector's history goes with it: it is absent from every point.
    let answer = api.delete(&format!("/api/v1/collectors/{}", ids[1])).await;
    assert!(answer.status < 300, "{}", answer.body);
    crate::support::eventually("the history without it", || async {
        let summary = api.ok("/api/v1/summary").await;
        (summary["by_state"]["disconnected"] == 0).then_some(())
    })
    .await;
    points_of(
        &api,
        &[
            [
                ("connected", 1),
                ("error", 0),
                ("disconnected", 0),
                ("pending", 0),
            ],
            [
                ("connected", 1),
                ("error", 0),
                ("disconnected", 0),
                ("pending", 0),
            ],
            [
                ("connected", 0),
                ("error", 1),
                ("disconnected", 0),
                ("pending", 0),
            ],
            [
                ("connected", 0),
                ("error", 1),
                ("disconnected", 0),
                ("pending", 1),
            ],
        ],
    )
    .await;

    assert_error(
        &api.get("/api/v1/summary/history?hours=0").await,
        400,
        "bad_request",
    );
    assert_error(
        &api.get("/api/v1/summary/history?hours=1&step=5").await,
        400,
        "bad_request",
    );
}

crate::on_both_stores!(counts_at_each_hour_follow_the_history);

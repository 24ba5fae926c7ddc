//! How long a collector's status change takes to show in the REST API: a collector of the
//! probe's own, on its own WebSocket, flips its health (unhealthy ones carry a `last_error` of
//! their own) and polls `GET /api/v1/collectors/{id}` until the change is there, one change at a
//! time, each timed from writing the message to the answer that showed it.

use std::time::{Duration, Instant};

use opampd_load::agent::{Agent, Behaviour, Outgoing};
use opampd_load::net::{Link, Target};
use opampd_load::stats::{Latency, LatencySummary};

/// Changes timed until `until`, over the OpAMP endpoint `url` and the API at `api`. Between two
/// reads that did not show the change yet, the probe waits `FIGURES_PROBE_PAUSE_MS` (1 ms; 0 reads
/// back to back): read back to back, its reads were a load of their own on PostgreSQL, which
/// shares the two cores (docs/performance.md). A change is timed to within that pause.
pub async fn probe(
    url: &str,
    api: &str,
    client: &reqwest::Client,
    until: Instant,
) -> LatencySummary {
    let target = Target::resolve(url, &[], None).await.unwrap();
    let mut link = Link::open(&target, None, false).await.unwrap();
    let mut agent = Agent::new(0, "probe", Behaviour::default());
    let hello = agent.full_state();
    exchange(&mut link, &mut agent, hello).await;
    let pause = Duration::from_millis(super::server::setting("FIGURES_PROBE_PAUSE_MS", 1));
    let latency = Latency::new();
    while Instant::now() < until {
        let id = uuid::Uuid::from_slice(agent.uid()).unwrap();
        let change = agent.status_change();
        let health = change.message.health.clone().unwrap();
        let sent = Instant::now();
        link.send(&change.message).await.unwrap();
        // The reply waits in the socket meanwhile: the state is asked for from the first moment.
        loop {
            let view =
                super::server::get_json(client, &format!("http://{api}/api/v1/collectors/{id}"))
                    .await;
            let shown = &view["health"];
            if shown["healthy"] == health.healthy && shown["last_error"] == *health.last_error {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_mins(1),
                "the change never showed: {view}"
            );
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        latency.record(sent.elapsed());
        answer(&mut link, &mut agent, 1).await;
    }
    latency.summary()
}

/// Sends `message` and reads its reply (and whatever the reply asks for).
async fn exchange(link: &mut Link, agent: &mut Agent, message: Outgoing) {
    link.send(&message.message).await.unwrap();
    answer(link, agent, 1).await;
}

/// Reads `pending` replies, sending what each asks for (a full state, a configuration's status)
/// and reading the replies to those too.
async fn answer(link: &mut Link, agent: &mut Agent, mut pending: usize) {
    while pending > 0 {
        let reply = link.recv().await.unwrap();
        pending -= 1;
        for next in agent.on_reply(&reply).messages {
            link.send(&next.message).await.unwrap();
            pending += 1;
        }
    }
}

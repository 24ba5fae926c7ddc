//! Offers reach collectors at least once, and again when they lost them: a plain-HTTP reply the
//! collector never read and a reply over the message limit, a collector that reports another
//! configuration hash (R5) or another packages hash (P6), a collector that never answers (timed
//! out), and package offers that list what the collector keeps. Plain-HTTP collectors make every
//! reply observable; the scripted WebSocket collector stands for the other transport (the timeout,
//! and a configuration lost and sent again, before and after a server restart, and on a new
//! connection that replaces one still open).

use bytes::Bytes;
use opampd::collector::{Event, PackageOffer, Reason, State};
use opampd::proto;
use opampd::proto::{PackageStatusEnum as P, RemoteConfigStatuses as S};
use prost::Message as _;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

use crate::rollouts::{KAFKA, configuration, labelled_ids, rollout_where, target};
use crate::support::api::Api;
use crate::support::scripted::{Script, Scripted};
use crate::support::*;

/// A plain-HTTP collector with the components `gateway` needs, stored and labelled `env=prod`.
async fn http_collector(server: &TestServer, api: &Api) -> Bytes {
    let uid = new_uid();
    let welcome = post_ok(&server.opamp_url, &hello_with_exporters(&uid, &["kafka"])).await;
    assert!(welcome.error_response.is_none(), "{welcome:?}");
    labelled_ids(api, &[id_of(&uid)]).await;
    uid
}

fn config_status(
    uid: &Bytes,
    seq: u64,
    hash: &[u8],
    status: proto::RemoteConfigStatuses,
) -> proto::AgentToServer {
    proto::AgentToServer {
        remote_config_status: Some(proto::RemoteConfigStatus {
            last_remote_config_hash: Bytes::copy_from_slice(hash),
            status: status as i32,
            error_message: String::new(),
        }),
        ..heartbeat(uid, seq)
    }
}

/// `gateway` version 1 rolled out to one new plain-HTTP collector, whose configuration now waits
/// for its next poll: the collector's uid and the rollout's id.
async fn configuring(server: &TestServer, api: &Api) -> (Bytes, String) {
    let uid = http_collector(server, api).await;
    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "selector": "env=prod"}),
        )
        .await;
    server
        .wait_for(id_of(&uid), "the configuration is on its way", |c| {
            c.state == Some(State::Configuring)
        })
        .await;
    (uid, started["id"].as_str().unwrap().to_owned())
}

/// The collector sends a poll and drops the connection without reading the reply, once the
/// server has acted on it: the configuration the reply carried is not lost. The next poll carries
/// it again, the collector applies it, and the target ends `applied`; once its status names the
/// hash, the configuration is not sent any more.
#[tokio::test]
async fn a_lost_http_reply_is_sent_again_and_the_target_applies() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let (uid, rollout) = configuring(&server, &api).await;
    let id = id_of(&uid);

    // A poll whose reply is never read.
    let address = server.opamp_url.trim_start_matches("http://");
    let (host, _) = address.split_once('/').unwrap();
    let mut socket = tokio::net::TcpStream::connect(host).await.unwrap();
    socket
        .write_all(&raw_opamp_request(&heartbeat(&uid, 1)))
        .await
        .unwrap();
    server
        .wait_for(id, "the unread poll was acted on", |c| {
            c.sequence_num == Some(1)
        })
        .await;
    drop(socket);

    let again = post_ok(&server.opamp_url, &heartbeat(&uid, 2)).await;
    let config = again.remote_config.expect("the configuration, sent again");
    let hash = config.config_hash;
    let applying = post_ok(
        &server.opamp_url,
        &config_status(&uid, 3, &hash, S::Applying),
    )
    .await;
    assert!(applying.remote_config.is_none(), "received: not sent again");
    post_ok(
        &server.opamp_url,
        &config_status(&uid, 4, &hash, S::Applied),
    )
    .await;
    let done = rollout_where(&api, &rollout, "completed", |r| r["status"] == "completed").await;
    assert_eq!(done["progress"]["applied"], 1, "{done}");
    let after = post_ok(&server.opamp_url, &heartbeat(&uid, 5)).await;
    assert!(after.remote_config.is_none());
}

/// A reply that would carry a configuration and a package offer over the message limit goes as
/// two: the configuration first, the package with the next reply. Neither is lost: the
/// configuration is applied (its target `applied`) and the package installed.
#[tokio::test]
async fn an_oversize_reply_goes_in_two_and_loses_nothing() {
    let server = TestServer::start_with(|c| {
        c.opamp.max_message_bytes = 4096;
        c.opamp.connection_reserve_bytes = 1024;
    })
    .await;
    let api = Api::new(&server.api_url);
    let padded = KAFKA.replace(
        "kafka:",
        &format!("kafka:\n    topic: {}", "t".repeat(2500)),
    );
    let stored = api
        .post(
            "/api/v1/configurations",
            &json!({"name": "gateway", "yaml": padded}),
        )
        .await;
    assert_eq!(stored.status, 201, "{}", stored.body);
    let (uid, rollout) = configuring(&server, &api).await;
    let id = id_of(&uid);
    let package = PackageOffer {
        name: "otelcol".into(),
        version: "0.2.0".into(),
        download_url: format!("https://packages.example/{}", "p".repeat(2000)),
        content_hash: vec![1; 32],
        signature: vec![],
        hash: vec![2; 32],
        kept: Vec::new(),
        all_hash: Vec::new(),
    };
    server.apply(id, Event::OfferPackage(package)).await;

    let first = post_ok(&server.opamp_url, &heartbeat(&uid, 1)).await;
    assert!(first.encoded_len() < 4096);
    let config = first.remote_config.expect("the configuration first");
    assert!(first.packages_available.is_none(), "the package waits");
    let second = post_ok(
        &server.opamp_url,
        &config_status(&uid, 2, &config.config_hash, S::Applied),
    )
    .await;
    assert!(second.remote_config.is_none(), "received: not again");
    let offered = second.packages_available.expect("then the package");
    assert_eq!(offered.packages["otelcol"].version, "0.2.0");
    let done = rollout_where(&api, &rollout, "completed", |r| r["status"] == "completed").await;
    assert_eq!(done["progress"]["applied"], 1, "{done}");

    let mut installed = heartbeat(&uid, 3);
    installed.package_statuses = Some(proto::PackageStatuses {
        packages: [(
            "otelcol".to_owned(),
            proto::PackageStatus {
                name: "otelcol".into(),
                agent_has_version: "0.2.0".into(),
                server_offered_version: "0.2.0".into(),
                status: proto::PackageStatusEnum::Installed as i32,
                ..Default::default()
            },
        )]
        .into(),
        server_provided_all_packages_hash: offered.all_packages_hash,
        error_message: String::new(),
    });
    let last = post_ok(&server.opamp_url, &installed).await;
    assert!(last.packages_available.is_none() && last.remote_config.is_none());
    let record = server.view(id).await.unwrap();
    assert!(record.package_offered.is_none(), "its verdict was read");
}

/// A collector that never answers the configuration it was sent ends `timed_out` after the
/// rollout's `timeout_seconds`, which counts against `max_errors` (0): the rollout pauses itself
/// before the next batch, and says why. Resuming accepts it, and the rest completes.
#[tokio::test]
async fn a_silent_collector_times_out_and_counts_against_max_errors() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    // Targets go in id order: the silent one is batch 0 alone.
    let silent = Scripted::start(&server.ws_url, &["kafka"], Script::Ignore).await;
    let able = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    labelled_ids(&api, &[silent.id, able.id]).await;
    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "selector": "env=prod",
                "initial_batch": 1, "multiplier": 1, "timeout_seconds": 1}),
        )
        .await;
    assert_eq!(started["options"]["timeout_seconds"], 1, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let paused = rollout_where(&api, &id, "paused", |r| r["status"] == "paused").await;
    assert_eq!(paused["progress"]["timed_out"], 1, "{paused}");
    assert_eq!(paused["progress"]["pending"], 1, "{paused}");
    let target = target(&paused, silent.id);
    assert_eq!(target["outcome"], "timed_out");
    assert_eq!(target["error"], "no verdict within 1 s");
    assert!(
        paused["reason"]
            .as_str()
            .unwrap()
            .contains("gave no verdict in time"),
        "{paused}"
    );
    api.post_ok(&format!("/api/v1/rollouts/{id}/resume"), &json!({}))
        .await;
    let done = rollout_where(&api, &id, "completed", |r| r["status"] == "completed").await;
    assert_eq!(done["progress"]["applied"], 1, "{done}");
    assert_eq!(done["progress"]["timed_out"], 1, "{done}");
    assert_eq!(silent.received(), 1, "sent once");
}

/// R5: a collector that applied our configuration and then reports another hash is sent ours
/// again (`new_configuration`, saying why) and applies it. One that reports another hash while
/// APPLYING it, or FAILED, is not: its verdict, or its failure, stands.
#[tokio::test]
async fn a_collector_reporting_another_hash_is_sent_the_configuration_again() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let (uid, rollout) = configuring(&server, &api).await;
    let id = id_of(&uid);
    let first = post_ok(&server.opamp_url, &heartbeat(&uid, 1)).await;
    let hash = first.remote_config.expect("the configuration").config_hash;
    post_ok(
        &server.opamp_url,
        &config_status(&uid, 2, &hash, S::Applied),
    )
    .await;
    rollout_where(&api, &rollout, "completed", |r| r["status"] == "completed").await;

    let lost = post_ok(
        &server.opamp_url,
        &config_status(&uid, 3, b"other", S::Applied),
    )
    .await;
    let resent = lost.remote_config.expect("ours, sent again");
    assert_eq!(resent.config_hash, hash);
    let record = server.view(id).await.unwrap();
    assert_eq!(record.state, Some(State::Configuring));
    assert_eq!(
        record.state_message,
        opampd::collector::resend::RESENT_CONFIGURATION
    );
    let back = post_ok(
        &server.opamp_url,
        &config_status(&uid, 4, &hash, S::Applied),
    )
    .await;
    assert!(back.remote_config.is_none());
    server
        .wait_for(id, "applied again", |c| c.state == Some(State::Connected))
        .await;

    for (seq, status) in [(5, S::Applying), (6, S::Failed)] {
        let reply = post_ok(
            &server.opamp_url,
            &config_status(&uid, seq, b"mine", status),
        )
        .await;
        assert!(reply.remote_config.is_none(), "{status:?}: not sent again");
    }
    let steps = server.steps(id).await;
    let resends = steps
        .iter()
        .filter(|s| s.2 == Reason::NewConfiguration)
        .count();
    assert_eq!(resends, 1, "{steps:?}");
    let done = api.ok(&format!("/api/v1/rollouts/{rollout}")).await;
    assert_eq!(
        done["progress"]["applied"], 1,
        "the target stays applied: {done}"
    );
}

/// The package contract: an offer lists every package the collector reported having from a
/// server besides the offered one (so it removes none), with an `all_packages_hash` over all of
/// them; package statuses naming another all-packages hash get the offer again (P6); the one
/// echoing ours does not; and a collector that does not report package statuses is refused.
#[tokio::test]
async fn a_package_offer_lists_the_kept_packages_and_is_resent_for_another_hash() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let uid = new_uid();
    let id = id_of(&uid);
    let mut first = hello(&uid, 0);
    let plugin = proto::PackageStatus {
        name: "plugin".into(),
        agent_has_version: "0.3".into(),
        agent_has_hash: Bytes::from_static(b"plugin-hash"),
        server_offered_version: "0.3".into(),
        status: proto::PackageStatusEnum::Installed as i32,
        ..Default::default()
    };
    first.package_statuses = Some(proto::PackageStatuses {
        packages: [("plugin".to_owned(), plugin)].into(),
        ..Default::default()
    });
    post_ok(&server.opamp_url, &first).await;
    let mute_uid = new_uid();
    let mut mute = hello(&mute_uid, 0);
    mute.capabilities &= !(proto::AgentCapabilities::ReportsPackageStatuses as u64);
    post_ok(&server.opamp_url, &mute).await;
    labelled_ids(&api, &[id, id_of(&mute_uid)]).await;

    let sha256 = "ab".repeat(32);
    let started = api
        .post_ok(
            "/api/v1/upgrades",
            &json!({"name": "otelcol", "version": "0.2.0", "selector": "env=prod",
                "download_url": "https://packages.example/otelcol-0.2.0.tar.gz", "sha256": sha256}),
        )
        .await;
    let outcomes: Vec<(String, String)> = started["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["collector"].as_str().unwrap().to_owned(),
                t["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&(id_of(&mute_uid).to_string(), "unsupported".into())),
        "{started}"
    );
    let rollout = started["id"].as_str().unwrap().to_owned();

    let offer = post_ok(&server.opamp_url, &heartbeat(&uid, 1))
        .await
        .packages_available
        .expect("the offer");
    let mut names: Vec<&str> = offer.packages.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["otelcol", "plugin"], "the kept package is listed");
    let kept = &offer.packages["plugin"];
    assert_eq!(
        (kept.version.as_str(), &kept.hash[..]),
        ("0.3", &b"plugin-hash"[..])
    );
    let offered = &offer.packages["otelcol"];
    let expected = opampd::collector::packages::all_packages_hash([
        ("otelcol", &offered.hash[..]),
        ("plugin", &b"plugin-hash"[..]),
    ]);
    assert_eq!(&offer.all_packages_hash[..], &expected[..]);

    // Statuses that show it does not have this offer (another all-packages hash): sent again.
    let statuses = |seq, all: &[u8], state, has| package_statuses(&uid, seq, all, state, has);
    let stale = post_ok(
        &server.opamp_url,
        &statuses(2, b"older", P::Installed, "0.1.0"),
    )
    .await;
    let again = stale.packages_available.expect("sent again (P6)");
    assert_eq!(again.all_packages_hash, offer.all_packages_hash);
    let echoed = post_ok(
        &server.opamp_url,
        &statuses(3, &offer.all_packages_hash, P::Downloading, "0.1.0"),
    )
    .await;
    assert!(echoed.packages_available.is_none(), "received");
    post_ok(
        &server.opamp_url,
        &statuses(4, &offer.all_packages_hash, P::Installed, "0.2.0"),
    )
    .await;
    let done = rollout_where(&api, &rollout, "completed", |r| r["status"] == "completed").await;
    assert_eq!(done["progress"]["applied"], 1, "{done}");
    assert_eq!(done["progress"]["unsupported"], 1, "{done}");
}

/// A collector's package statuses: the offered `otelcol` in `state`, at `has`, and `all` as the
/// all-packages hash it last received.
fn package_statuses(
    uid: &Bytes,
    seq: u64,
    all: &[u8],
    state: P,
    has: &str,
) -> proto::AgentToServer {
    let mut m = heartbeat(uid, seq);
    m.package_statuses = Some(proto::PackageStatuses {
        packages: [(
            "otelcol".to_owned(),
            proto::PackageStatus {
                name: "otelcol".into(),
                agent_has_version: has.into(),
                status: state as i32,
                ..Default::default()
            },
        )]
        .into(),
        server_provided_all_packages_hash: Bytes::copy_from_slice(all),
        error_message: String::new(),
    });
    m
}

/// R5 over WebSocket: a collector that applied our configuration and comes back without it (it
/// reports no hash) is sent it again by its actor; after a server restart, which leaves no actor
/// knowing it, the engine restores the standing configuration from the rollout on its arrival and
/// it is sent again too. Each time the collector applies it once.
#[tokio::test]
async fn a_collector_that_lost_its_configuration_gets_it_again_even_after_a_restart() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let first = Scripted::start(&server.ws_url, &["kafka"], Script::Apply).await;
    labelled_ids(&api, &[first.id]).await;
    let started = api
        .post_ok(
            "/api/v1/rollouts",
            &json!({"configuration": "gateway", "version": 1, "selector": "env=prod"}),
        )
        .await;
    let rollout = started["id"].as_str().unwrap().to_owned();
    let hash = started["hash"].as_str().unwrap().to_owned();
    rollout_where(&api, &rollout, "completed", |r| r["status"] == "completed").await;
    let applied = |c: &opampd::collector::Collector| {
        c.connected
            && c.state == Some(State::Connected)
            && c.remote_config_status.as_ref().is_some_and(|s| {
                opampd::collector::machine::hex(&s.hash) == hash
                    && s.status == opampd::collector::RemoteConfigState::Applied
            })
    };

    let id = first.disconnect();
    server
        .wait_for(id, "away", |c| c.state == Some(State::Disconnected))
        .await;
    let back = Scripted::returning(id, &server.ws_url, &["kafka"], Script::Apply).await;
    server.wait_for(id, "applied again", applied).await;
    assert_eq!(back.received(), 1);

    let id = back.disconnect();
    let server = server.restart().await;
    let again = Scripted::returning(id, &server.ws_url, &["kafka"], Script::Apply).await;
    server
        .wait_for(id, "applied again after the restart", applied)
        .await;
    assert_eq!(again.received(), 1);
    let api = Api::new(&server.api_url);
    let after = api.ok(&format!("/api/v1/rollouts/{rollout}")).await;
    assert_eq!(after["progress"]["applied"], 1, "the target stays applied");
}

/// A collector that never answered the configuration it was sent opens a new WebSocket connection
/// while its first still looks open (half-open, say): the first counts as lost and the new one as
/// a return, so the configuration is sent again on it and applied. The history is the one the
/// server records when it sees the first connection end before the new one speaks.
#[tokio::test]
async fn a_configuration_unanswered_on_a_replaced_connection_is_sent_on_the_new_one() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    configuration(&api).await;
    let uid = new_uid();
    let id = id_of(&uid);
    let mut first = WsClient::connect(&server.ws_url).await;
    first
        .exchange(&hello_with_exporters(&uid, &["kafka"]))
        .await;
    labelled_ids(&api, &[id]).await;
    api.post_ok(
        "/api/v1/rollouts",
        &json!({"configuration": "gateway", "version": 1, "selector": "env=prod"}),
    )
    .await;
    let sent = first.recv().await;
    assert!(sent.remote_config.is_some(), "the configuration: {sent:?}");

    // It never answers; its next connection replaces this one, which stays open.
    let second = Scripted::returning(id, &server.ws_url, &["kafka"], Script::Apply).await;
    server
        .wait_for(id, "applied on the new connection", |c| {
            c.connected
                && c.state == Some(State::Connected)
                && c.remote_config_status
                    .as_ref()
                    .is_some_and(|s| s.status == opampd::collector::RemoteConfigState::Applied)
        })
        .await;
    assert_eq!(second.received(), 1);
    let reasons: Vec<Reason> = server.steps(id).await.iter().map(|s| s.2).collect();
    assert_eq!(
        reasons,
        [
            Reason::Initial,
            Reason::QueuedForRollout,
            Reason::ConfigSent,
            Reason::NetworkInterruption,
            Reason::ConnectionRestored,
            Reason::NewConfiguration,
            Reason::ConfigApplied,
        ]
    );
    assert_eq!(
        first.expect_close().await,
        1008.into(),
        "the first is closed"
    );
}

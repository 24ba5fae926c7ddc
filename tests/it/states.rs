//! Every edge of the state diagram, driven from realistic inputs (OpAMP messages over real sockets
//! and fleet commands) through the real actor, asserting the recorded transition and reason.

use bytes::Bytes;
use opampd::collector::PackageOffer;
use opampd::collector::{
    CollectorId, ConfigFiles, ConfigOffer, Event, Reason, State, machine::Transition,
};
use opampd::proto;

use crate::support::*;

/// A scripted collector on a real connection, with its own sequence numbers.
struct Subject {
    server: TestServer,
    uid: Bytes,
    id: CollectorId,
    seq: u64,
    ws: Option<WsClient>,
}

const CONFIG_HASH: [u8; 4] = [0xc0, 0xf1, 0x60, 0x01];

fn offer(hash: &[u8]) -> ConfigOffer {
    ConfigOffer {
        files: ConfigFiles::new(),
        hash: hash.to_vec(),
    }
}

fn package() -> PackageOffer {
    PackageOffer {
        name: "otelcol".into(),
        version: "0.2.0".into(),
        download_url: "http://127.0.0.1:1/otelcol.tar.gz".into(),
        content_hash: vec![1; 32],
        signature: vec![],
        hash: vec![2; 32],
        kept: Vec::new(),
        all_hash: Vec::new(),
    }
}

fn kafka() -> Vec<String> {
    vec!["receivers/kafka".to_owned()]
}

impl Subject {
    /// A collector that said hello over WebSocket, with `receivers/otlp` among its components.
    async fn connected() -> Self {
        let server = TestServer::start().await;
        let uid = new_uid();
        let mut subject = Self {
            id: id_of(&uid),
            uid,
            server,
            seq: 0,
            ws: None,
        };
        subject.open().await;
        subject
    }

    async fn open(&mut self) {
        self.ws = Some(WsClient::connect(&self.server.ws_url).await);
        let seq = self.next_seq();
        let hello = with_components(
            hello(&self.uid, seq),
            "otlp-only",
            &[("receivers", &["otlp"])],
            true,
        );
        self.exchange(hello).await;
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq - 1
    }

    /// Sends a report and returns its reply, skipping offers the server pushed meanwhile (over
    /// WebSocket a fleet command's offer may arrive before or after the reply).
    async fn exchange(&mut self, message: proto::AgentToServer) -> proto::ServerToAgent {
        let ws = self.ws.as_mut().expect("connected");
        ws.send(&message).await;
        loop {
            let reply = ws.recv().await;
            let pushed = reply.remote_config.is_some()
                || reply.packages_available.is_some()
                || reply.command.is_some();
            if !pushed {
                return reply;
            }
        }
    }

    async fn send(&mut self, adjust: impl FnOnce(&mut proto::AgentToServer)) {
        let seq = self.next_seq();
        let mut message = heartbeat(&self.uid, seq);
        adjust(&mut message);
        self.exchange(message).await;
    }

    async fn health(&mut self, healthy: bool, last_error: &str) {
        let last_error = last_error.to_owned();
        self.send(|m| {
            m.health = Some(proto::ComponentHealth {
                healthy,
                last_error,
                ..Default::default()
            });
        })
        .await;
    }

    async fn config_status(
        &mut self,
        hash: &[u8],
        status: proto::RemoteConfigStatuses,
        error: &str,
    ) {
        let (hash, error) = (Bytes::copy_from_slice(hash), error.to_owned());
        self.send(|m| {
            m.remote_config_status = Some(proto::RemoteConfigStatus {
                last_remote_config_hash: hash,
                status: status as i32,
                error_message: error,
            });
        })
        .await;
    }

    async fn package_status(
        &mut self,
        version: &str,
        status: proto::PackageStatusEnum,
        error: &str,
    ) {
        let (version, error) = (version.to_owned(), error.to_owned());
        self.send(|m| {
            let status = proto::PackageStatus {
                name: "otelcol".into(),
                agent_has_version: version,
                server_offered_version: "0.2.0".into(),
                status: status as i32,
                error_message: error,
                ..Default::default()
            };
            m.package_statuses = Some(proto::PackageStatuses {
                packages: [("otelcol".to_owned(), status)].into(),
                ..Default::default()
            });
        })
        .await;
    }

    async fn fleet(&self, event: Event) {
        self.server.apply(self.id, event).await;
    }

    async fn configure(&self, hash: &[u8], required: Vec<String>) {
        self.fleet(Event::SendConfiguration {
            offer: offer(hash),
            required,
            rollout: None,
        })
        .await;
    }

    async fn queue(&self, required: Vec<String>) {
        self.fleet(Event::QueueForRollout {
            rollout: "r1".into(),
            required,
        })
        .await;
    }

    async fn drop_connection(&mut self) {
        let mut ws = self.ws.take().expect("connected");
        ws.socket.close(None).await.unwrap();
        self.server
            .wait_for(self.id, "disconnected", |c| !c.connected)
            .await;
    }

    async fn history(&self) -> Vec<Transition> {
        self.server.history(self.id).await
    }

    async fn state(&self) -> State {
        self.server.view(self.id).await.unwrap().state.unwrap()
    }

    /// Waits until the last recorded transition is exactly this edge, with this reason.
    async fn assert_last(&self, from: Option<State>, to: State, reason: Reason) -> Transition {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let history = self.history().await;
            if let Some(last) = history.last()
                && (last.from, last.to, last.reason) == (from, to, reason)
            {
                return last.clone();
            }
            let summary = steps(&history);
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected last transition {from:?} -> {to:?} ({reason:?}); history: {summary:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

use State::{Configuring, Connected, Disconnected, Error, Incompatible, Pending, Upgrading};

#[tokio::test]
async fn initial_connected() {
    let s = Subject::connected().await;
    s.assert_last(None, Connected, Reason::Initial).await;
    assert_eq!(s.history().await.len(), 1);
}

#[tokio::test]
async fn connected_to_disconnected_by_network_interruption() {
    let mut s = Subject::connected().await;
    s.drop_connection().await;
    s.assert_last(Some(Connected), Disconnected, Reason::NetworkInterruption)
        .await;
}

#[tokio::test]
async fn connected_to_disconnected_by_collector_stopped() {
    let mut s = Subject::connected().await;
    s.send(|m| m.agent_disconnect = Some(proto::AgentDisconnect {}))
        .await;
    s.assert_last(Some(Connected), Disconnected, Reason::CollectorStopped)
        .await;
}

#[tokio::test]
async fn connected_to_disconnected_by_server_termination() {
    let mut s = Subject::connected().await;
    let registry = std::sync::Arc::clone(&s.server.running().registry);
    let mut bus = registry.subscribe();
    s.server.shutdown().await;
    let published = within("server_termination on the bus", bus.recv())
        .await
        .expect("the transition");
    assert_eq!(published.collector, s.id);
    assert_eq!(
        (
            published.transition.from,
            published.transition.to,
            published.transition.reason
        ),
        (Some(Connected), Disconnected, Reason::ServerTermination)
    );
}

#[tokio::test]
async fn connected_to_error_by_runtime_error() {
    let mut s = Subject::connected().await;
    s.health(false, "exporter otlp failing").await;
    let t = s
        .assert_last(Some(Connected), Error, Reason::RuntimeError)
        .await;
    assert_eq!(t.message, "exporter otlp failing");
}

#[tokio::test]
async fn connected_to_error_by_config_error() {
    // A collector whose configuration failed is queued in a rollout that is then cancelled: it
    // returns to Connected, and on to Error because the failure still stands.
    let mut s = Subject::connected().await;
    s.configure(&CONFIG_HASH, vec![]).await;
    s.config_status(
        &CONFIG_HASH,
        proto::RemoteConfigStatuses::Failed,
        "bad pipeline",
    )
    .await;
    s.queue(vec![]).await;
    s.fleet(Event::RemoveFromRollout {
        rollout: "r1".into(),
    })
    .await;
    let t = s
        .assert_last(Some(Connected), Error, Reason::ConfigError)
        .await;
    assert_eq!(t.message, "bad pipeline");
}

#[tokio::test]
async fn connected_to_error_by_update_error() {
    // A package offered while Configuring (no edge to Upgrading) fails after the configuration is
    // applied: Connected -> Error, update_error.
    let mut s = Subject::connected().await;
    s.configure(&CONFIG_HASH, vec![]).await;
    s.fleet(Event::OfferPackage(package())).await;
    assert_eq!(s.state().await, Configuring);
    s.config_status(&CONFIG_HASH, proto::RemoteConfigStatuses::Applied, "")
        .await;
    s.package_status(
        "0.1.0",
        proto::PackageStatusEnum::InstallFailed,
        "checksum mismatch",
    )
    .await;
    let t = s
        .assert_last(Some(Connected), Error, Reason::UpdateError)
        .await;
    assert_eq!(t.message, "checksum mismatch");
}

#[tokio::test]
async fn connected_to_configuring() {
    let s = Subject::connected().await;
    s.configure(&CONFIG_HASH, vec![]).await;
    let t = s
        .assert_last(Some(Connected), Configuring, Reason::NewConfiguration)
        .await;
    assert_eq!(t.cause.as_deref(), Some("c0f16001"));
}

#[tokio::test]
async fn connected_to_pending() {
    let s = Subject::connected().await;
    s.queue(vec!["receivers/otlp".into()]).await;
    let t = s
        .assert_last(Some(Connected), Pending, Reason::QueuedForRollout)
        .await;
    assert_eq!(t.cause.as_deref(), Some("r1"));
}

#[tokio::test]
async fn connected_to_incompatible() {
    let s = Subject::connected().await;
    s.configure(&CONFIG_HASH, kafka()).await;
    let t = s
        .assert_last(Some(Connected), Incompatible, Reason::UnsupportedComponents)
        .await;
    assert!(t.message.contains("receivers/kafka"), "{}", t.message);
    assert_eq!(
        s.server.view(s.id).await.unwrap().missing_components,
        kafka()
    );
}

#[tokio::test]
async fn connected_to_upgrading() {
    let mut s = Subject::connected().await;
    s.fleet(Event::OfferPackage(package())).await;
    s.assert_last(Some(Connected), Upgrading, Reason::PackageUpgradeInitiated)
        .await;
    // The offer reached the collector, whole.
    let pushed = s.ws.as_mut().unwrap().recv().await;
    let offered = pushed
        .packages_available
        .expect("packages_available pushed");
    let otelcol = &offered.packages["otelcol"];
    assert_eq!(otelcol.version, "0.2.0");
    assert_eq!(otelcol.r#type, proto::PackageType::TopLevel as i32);
    let file = otelcol.file.as_ref().unwrap();
    assert_eq!(file.download_url, "http://127.0.0.1:1/otelcol.tar.gz");
    assert_eq!(file.content_hash.as_ref(), [1; 32]);
    assert_eq!(otelcol.hash.as_ref(), [2; 32]);
    // The only package listed: the aggregate is over it alone.
    let all = opampd::collector::packages::all_packages_hash([("otelcol", &[2; 32][..])]);
    assert_eq!(offered.all_packages_hash.as_ref(), all.as_slice());
}

#[tokio::test]
async fn disconnected_to_connected() {
    let mut s = Subject::connected().await;
    s.drop_connection().await;
    s.open().await;
    s.assert_last(Some(Disconnected), Connected, Reason::ConnectionRestored)
        .await;
}

#[tokio::test]
async fn error_to_connected() {
    let mut s = Subject::connected().await;
    s.health(false, "boom").await;
    s.health(true, "").await;
    s.assert_last(Some(Error), Connected, Reason::ErrorResolved)
        .await;
}

#[tokio::test]
async fn error_to_disconnected() {
    let mut s = Subject::connected().await;
    s.health(false, "boom").await;
    s.drop_connection().await;
    s.assert_last(Some(Error), Disconnected, Reason::NetworkInterruption)
        .await;
}

#[tokio::test]
async fn error_to_configuring() {
    let mut s = Subject::connected().await;
    s.health(false, "boom").await;
    s.configure(&CONFIG_HASH, vec![]).await;
    s.assert_last(Some(Error), Configuring, Reason::NewConfiguration)
        .await;
}

#[tokio::test]
async fn error_to_pending() {
    let mut s = Subject::connected().await;
    s.health(false, "boom").await;
    s.queue(vec![]).await;
    s.assert_last(Some(Error), Pending, Reason::QueuedForRollout)
        .await;
}

#[tokio::test]
async fn error_to_incompatible() {
    let mut s = Subject::connected().await;
    s.health(false, "boom").await;
    s.queue(kafka()).await;
    s.assert_last(Some(Error), Incompatible, Reason::UnsupportedComponents)
        .await;
}

#[tokio::test]
async fn error_to_upgrading() {
    let mut s = Subject::connected().await;
    s.health(false, "boom").await;
    s.fleet(Event::OfferPackage(package())).await;
    s.assert_last(Some(Error), Upgrading, Reason::PackageUpgradeInitiated)
        .await;
}

#[tokio::test]
async fn configuring_to_connected() {
    let mut s = Subject::connected().await;
    s.configure(&CONFIG_HASH, vec![]).await;
    s.config_status(&CONFIG_HASH, proto::RemoteConfigStatuses::Applying, "")
        .await;
    assert_eq!(s.state().await, Configuring, "APPLYING changes nothing");
    s.config_status(&CONFIG_HASH, proto::RemoteConfigStatuses::Applied, "")
        .await;
    s.assert_last(Some(Configuring), Connected, Reason::ConfigApplied)
        .await;
}

#[tokio::test]
async fn configuring_to_disconnected() {
    let mut s = Subject::connected().await;
    s.configure(&CONFIG_HASH, vec![]).await;
    s.drop_connection().await;
    s.assert_last(Some(Configuring), Disconnected, Reason::NetworkInterruption)
        .await;
}

#[tokio::test]
async fn configuring_to_error() {
    let mut s = Subject::connected().await;
    s.configure(&CONFIG_HASH, vec![]).await;
    // A verdict on some other configuration is not ours.
    s.config_status(&[9, 9], proto::RemoteConfigStatuses::Failed, "not ours")
        .await;
    assert_eq!(s.state().await, Configuring);
    s.config_status(
        &CONFIG_HASH,
        proto::RemoteConfigStatuses::Failed,
        "unknown exporter",
    )
    .await;
    let t = s
        .assert_last(Some(Configuring), Error, Reason::ConfigFailed)
        .await;
    assert_eq!(t.message, "unknown exporter");
    // The failed configuration is remembered and not sent again.
    let before = s.history().await.len();
    s.configure(&CONFIG_HASH, vec![]).await;
    assert_eq!(s.history().await.len(), before);
    assert_eq!(s.state().await, Error);
}

/// "Not sent again" on the wire: a plain-HTTP collector gets whatever waits for it on its next
/// poll, so a poll after the failed configuration is offered again shows that nothing went out.
#[tokio::test]
async fn a_failed_configuration_is_never_sent_again_on_the_wire() {
    let server = TestServer::start().await;
    let url = &server.opamp_url;
    let uid = new_uid();
    let id = id_of(&uid);
    post_ok(url, &hello(&uid, 0)).await;
    let configure = || Event::SendConfiguration {
        offer: offer(&CONFIG_HASH),
        required: vec![],
        rollout: None,
    };
    server.apply(id, configure()).await;
    let sent = post_ok(url, &heartbeat(&uid, 1)).await;
    assert_eq!(
        &sent.remote_config.expect("sent once").config_hash[..],
        &CONFIG_HASH
    );
    let failed = proto::AgentToServer {
        remote_config_status: Some(proto::RemoteConfigStatus {
            last_remote_config_hash: Bytes::copy_from_slice(&CONFIG_HASH),
            status: proto::RemoteConfigStatuses::Failed as i32,
            error_message: "unknown exporter".into(),
        }),
        ..heartbeat(&uid, 2)
    };
    assert!(post_ok(url, &failed).await.remote_config.is_none());

    server.apply(id, configure()).await;
    let next = post_ok(url, &heartbeat(&uid, 3)).await;
    assert!(next.remote_config.is_none(), "sent again: {next:?}");
    assert_eq!(
        server.steps(id).await,
        [
            (None, Connected, Reason::Initial),
            (Some(Connected), Configuring, Reason::NewConfiguration),
            (Some(Configuring), Error, Reason::ConfigFailed),
        ]
    );
}

#[tokio::test]
async fn pending_to_configuring() {
    let s = Subject::connected().await;
    s.queue(vec![]).await;
    s.configure(&CONFIG_HASH, vec![]).await;
    s.assert_last(Some(Pending), Configuring, Reason::ConfigSent)
        .await;
}

#[tokio::test]
async fn incompatible_to_disconnected() {
    let mut s = Subject::connected().await;
    s.queue(kafka()).await;
    s.drop_connection().await;
    s.assert_last(
        Some(Incompatible),
        Disconnected,
        Reason::NetworkInterruption,
    )
    .await;
}

#[tokio::test]
async fn incompatible_to_error() {
    let mut s = Subject::connected().await;
    s.queue(kafka()).await;
    s.health(false, "crashed").await;
    s.assert_last(Some(Incompatible), Error, Reason::RuntimeError)
        .await;
}

#[tokio::test]
async fn incompatible_to_configuring() {
    let s = Subject::connected().await;
    s.queue(kafka()).await;
    s.configure(&CONFIG_HASH, vec!["receivers/otlp".into()])
        .await;
    s.assert_last(Some(Incompatible), Configuring, Reason::NewConfiguration)
        .await;
}

#[tokio::test]
async fn incompatible_to_pending() {
    let s = Subject::connected().await;
    s.queue(kafka()).await;
    s.queue(vec![]).await;
    s.assert_last(Some(Incompatible), Pending, Reason::QueuedForRollout)
        .await;
}

#[tokio::test]
async fn incompatible_to_upgrading() {
    let s = Subject::connected().await;
    s.queue(kafka()).await;
    s.fleet(Event::OfferPackage(package())).await;
    s.assert_last(
        Some(Incompatible),
        Upgrading,
        Reason::PackageUpgradeInitiated,
    )
    .await;
}

#[tokio::test]
async fn upgrading_to_connected() {
    let mut s = Subject::connected().await;
    s.fleet(Event::OfferPackage(package())).await;
    s.package_status("0.1.0", proto::PackageStatusEnum::Downloading, "")
        .await;
    s.package_status("0.1.0", proto::PackageStatusEnum::Installing, "")
        .await;
    assert_eq!(s.state().await, Upgrading);
    s.package_status("0.2.0", proto::PackageStatusEnum::Installed, "")
        .await;
    s.assert_last(Some(Upgrading), Connected, Reason::UpgradeSucceeded)
        .await;
}

#[tokio::test]
async fn upgrading_to_disconnected() {
    let mut s = Subject::connected().await;
    s.fleet(Event::OfferPackage(package())).await;
    s.drop_connection().await;
    s.assert_last(Some(Upgrading), Disconnected, Reason::NetworkInterruption)
        .await;
}

#[tokio::test]
async fn upgrading_to_error() {
    let mut s = Subject::connected().await;
    s.fleet(Event::OfferPackage(package())).await;
    s.package_status(
        "0.1.0",
        proto::PackageStatusEnum::InstallFailed,
        "disk full",
    )
    .await;
    let t = s
        .assert_last(Some(Upgrading), Error, Reason::UpgradeFailed)
        .await;
    assert_eq!(t.message, "disk full");
}

#[tokio::test]
async fn extension_pending_to_disconnected() {
    let mut s = Subject::connected().await;
    s.queue(vec![]).await;
    s.drop_connection().await;
    s.assert_last(Some(Pending), Disconnected, Reason::NetworkInterruption)
        .await;
}

#[tokio::test]
async fn extension_pending_to_connected_when_removed_from_the_rollout() {
    let s = Subject::connected().await;
    s.queue(vec![]).await;
    s.fleet(Event::RemoveFromRollout {
        rollout: "other".into(),
    })
    .await;
    assert_eq!(
        s.state().await,
        Pending,
        "another rollout's removal is not ours"
    );
    s.fleet(Event::RemoveFromRollout {
        rollout: "r1".into(),
    })
    .await;
    s.assert_last(Some(Pending), Connected, Reason::RemovedFromRollout)
        .await;
}

#[tokio::test]
async fn a_pending_collector_that_turns_unhealthy_stays_pending_with_its_health() {
    let mut s = Subject::connected().await;
    s.queue(vec![]).await;
    s.health(false, "queue full").await;
    let view = s.server.view(s.id).await.unwrap();
    assert_eq!(view.state, Some(Pending));
    assert_eq!(view.health.unwrap().last_error, "queue full");
}

#[tokio::test]
async fn an_upgrade_finishing_while_configuring_leaves_it_configuring() {
    let mut s = Subject::connected().await;
    s.fleet(Event::OfferPackage(package())).await;
    s.configure(&CONFIG_HASH, vec![]).await;
    assert_eq!(
        s.state().await,
        Upgrading,
        "no edge from Upgrading to Configuring"
    );
    // Configuration first: Upgrading has no such edge, so it waits.
    s.package_status("0.2.0", proto::PackageStatusEnum::Installed, "")
        .await;
    s.assert_last(Some(Upgrading), Connected, Reason::UpgradeSucceeded)
        .await;
    // Now the other order: Configuring, then the upgrade finishes.
    let mut s = Subject::connected().await;
    s.configure(&CONFIG_HASH, vec![]).await;
    s.fleet(Event::OfferPackage(package())).await;
    s.package_status("0.2.0", proto::PackageStatusEnum::Installed, "")
        .await;
    let view = s.server.view(s.id).await.unwrap();
    assert_eq!(view.state, Some(Configuring));
    assert!(
        view.package_offered.is_none(),
        "the upgrade is recorded as done: {view:#?}"
    );
}

#[tokio::test]
async fn a_configuration_sent_while_disconnected_goes_out_on_reconnect() {
    let mut s = Subject::connected().await;
    s.drop_connection().await;
    s.configure(&CONFIG_HASH, vec![]).await;
    assert_eq!(s.state().await, Disconnected);
    s.ws = Some(WsClient::connect(&s.server.ws_url).await);
    let seq = s.next_seq();
    let message = heartbeat(&s.uid, seq);
    let reply = s.ws.as_mut().unwrap().exchange(&message).await;
    assert_eq!(
        &reply.remote_config.expect("sent on reconnect").config_hash[..],
        &CONFIG_HASH
    );
    let history = s.server.steps(s.id).await;
    assert_eq!(
        history[history.len() - 2..],
        [
            (Some(Disconnected), Connected, Reason::ConnectionRestored),
            (Some(Connected), Configuring, Reason::NewConfiguration),
        ]
    );
}

/// The same life over either transport: connect, turn unhealthy, recover, disconnect, reconnect.
async fn a_collector_life(transport: opampd::collector::Transport) {
    use opampd::collector::Transport;
    let server = TestServer::start_with(|c| {
        // Over HTTP, "disconnect" is silence, so the test waits one whole window for it. It must
        // still be long beside the gaps between this collector's messages (each sent as soon as
        // the last is answered), or a slow machine adds a Disconnected the history does not
        // expect.
        c.opamp.heartbeat_interval = std::time::Duration::from_secs(1);
        c.opamp.liveness_intervals = 3;
    })
    .await;
    let uid = new_uid();
    let id = id_of(&uid);
    let mut ws = None;
    let mut seq = 0;
    let say = async |ws: &mut Option<WsClient>, message: proto::AgentToServer| match transport {
        Transport::WebSocket => {
            if ws.is_none() {
                *ws = Some(WsClient::connect(&server.ws_url).await);
            }
            ws.as_mut().unwrap().exchange(&message).await
        }
        Transport::Http => post_ok(&server.opamp_url, &message).await,
    };
    let health = |healthy: bool, seq: u64| {
        let mut m = heartbeat(&uid, seq);
        m.health = Some(proto::ComponentHealth {
            healthy,
            last_error: if healthy {
                String::new()
            } else {
                "pipeline stalled".into()
            },
            ..Default::default()
        });
        m
    };
    say(&mut ws, hello(&uid, seq)).await;
    seq += 1;
    say(&mut ws, health(false, seq)).await;
    seq += 1;
    say(&mut ws, health(true, seq)).await;
    seq += 1;
    // An HTTP collector just stops polling.
    if let Some(mut client) = ws.take() {
        client.socket.close(None).await.unwrap();
    }
    server.wait_for(id, "disconnected", |c| !c.connected).await;
    say(&mut ws, heartbeat(&uid, seq)).await;
    assert_eq!(
        server.steps(id).await,
        vec![
            (None, Connected, Reason::Initial),
            (Some(Connected), Error, Reason::RuntimeError),
            (Some(Error), Connected, Reason::ErrorResolved),
            (Some(Connected), Disconnected, Reason::NetworkInterruption),
            (Some(Disconnected), Connected, Reason::ConnectionRestored),
        ]
    );
}

#[tokio::test]
async fn a_collector_life_over_websocket() {
    a_collector_life(opampd::collector::Transport::WebSocket).await;
}

#[tokio::test]
async fn a_collector_life_over_http() {
    a_collector_life(opampd::collector::Transport::Http).await;
}

//! Our scriptable test collector: a real WebSocket OpAMP client that reports the components it
//! has, and applies, fails or ignores every configuration it is sent, as its script says.
//!
//! Anything unexpected on its connection (a frame it cannot decode, an error response, a socket
//! error, a close other than the server's shutdown) is trouble: recorded, and reported by every
//! wait of the test that runs it ([`assert_untroubled`]), so a server bug fails the test at once
//! with its cause instead of as a time-out without one.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use opampd::collector::CollectorId;
use opampd::proto;
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{WsClient, hello_with_exporters, id_of, new_uid};

type Troubles = Arc<Mutex<Vec<String>>>;

thread_local! {
    /// The troubles of the scripted collectors of the test running on this thread (a tokio test
    /// runs on a thread of its own, and its scripted collectors' tasks with it).
    static WATCHED: RefCell<Vec<Weak<Mutex<Vec<String>>>>> = const { RefCell::new(Vec::new()) };
}

fn watch(troubles: &Troubles) {
    WATCHED.with(|watched| {
        let mut watched = watched.borrow_mut();
        watched.retain(|w| w.strong_count() > 0);
        watched.push(Arc::downgrade(troubles));
    });
}

/// Fails the test with every trouble its live scripted collectors ran into so far.
pub fn assert_untroubled() {
    let troubles: Vec<String> = WATCHED.with(|watched| {
        watched
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .flat_map(|t| t.lock().unwrap().clone())
            .collect()
    });
    assert!(
        troubles.is_empty(),
        "a scripted collector ran into trouble:\n{}",
        troubles.join("\n")
    );
}

/// What the collector does with a configuration it is sent.
#[derive(Debug, Clone, Copy)]
pub enum Script {
    Apply,
    Fail(&'static str),
    /// Says nothing: its verdict never comes.
    Ignore,
    /// Fails the second configuration it is sent, applies the others.
    FailSecond(&'static str),
}

pub struct Scripted {
    pub uid: Bytes,
    pub id: CollectorId,
    /// Configurations received so far.
    pub received: Arc<AtomicUsize>,
    /// Restart commands received on this connection.
    restarts: Arc<AtomicUsize>,
    /// The hash it last applied, reported in its first message when it reconnects.
    applied: Arc<Mutex<Option<Bytes>>>,
    troubles: Troubles,
    task: JoinHandle<()>,
}

fn status(
    uid: &Bytes,
    seq: u64,
    hash: &Bytes,
    status: proto::RemoteConfigStatuses,
    error: &str,
) -> proto::AgentToServer {
    proto::AgentToServer {
        remote_config_status: Some(proto::RemoteConfigStatus {
            last_remote_config_hash: hash.clone(),
            status: status as i32,
            error_message: error.to_owned(),
        }),
        ..super::heartbeat(uid, seq)
    }
}

/// Installs (then reports the new version) or fails every package offered, as the script says.
fn package_verdict(
    uid: &Bytes,
    seq: u64,
    script: Script,
    offered: &proto::PackagesAvailable,
) -> Option<proto::AgentToServer> {
    let (status, error) = match script {
        Script::Ignore => return None,
        Script::Fail(error) => (proto::PackageStatusEnum::InstallFailed, error),
        Script::Apply | Script::FailSecond(_) => (proto::PackageStatusEnum::Installed, ""),
    };
    let installed = status == proto::PackageStatusEnum::Installed;
    let (name, package) = offered.packages.iter().next()?;
    let reported = proto::PackageStatus {
        name: name.clone(),
        agent_has_version: if installed {
            package.version.clone()
        } else {
            "0.1.0".into()
        },
        server_offered_version: package.version.clone(),
        status: status as i32,
        error_message: error.to_owned(),
        ..Default::default()
    };
    let mut message = super::heartbeat(uid, seq);
    message.package_statuses = Some(proto::PackageStatuses {
        packages: [(name.clone(), reported)].into(),
        server_provided_all_packages_hash: offered.all_packages_hash.clone(),
        error_message: String::new(),
    });
    if installed {
        // The new binary reports its new version.
        message.agent_description = Some(proto::AgentDescription {
            identifying_attributes: vec![
                super::kv("service.name", "test-collector"),
                super::kv("service.version", &package.version),
            ],
            non_identifying_attributes: vec![super::kv("host.name", "test-host")],
        });
    }
    Some(message)
}

impl Scripted {
    /// Connects with `exporters` besides the `otlp` receiver, and follows `script`.
    pub async fn start(ws_url: &str, exporters: &[&str], script: Script) -> Self {
        Self::run(
            ws_url,
            new_uid(),
            exporters.iter().map(|e| (*e).to_owned()).collect(),
            script,
            Arc::default(),
            Arc::default(),
        )
        .await
    }

    /// The same collector connecting again (after a server restart, say).
    pub async fn reconnect(self, ws_url: &str, exporters: &[&str], script: Script) -> Self {
        self.task.abort();
        let (uid, received, applied) = (
            self.uid.clone(),
            Arc::clone(&self.received),
            Arc::clone(&self.applied),
        );
        drop(self);
        Self::run(
            ws_url,
            uid,
            exporters.iter().map(|e| (*e).to_owned()).collect(),
            script,
            received,
            applied,
        )
        .await
    }

    async fn run(
        ws_url: &str,
        uid: Bytes,
        exporters: Vec<String>,
        script: Script,
        received: Arc<AtomicUsize>,
        applied: Arc<Mutex<Option<Bytes>>>,
    ) -> Self {
        let mut ws = WsClient::connect(ws_url).await;
        let exporter_types: Vec<&str> = exporters.iter().map(String::as_str).collect();
        let mut first = hello_with_exporters(&uid, &exporter_types);
        let last = applied.lock().unwrap().clone();
        if let Some(hash) = last {
            first.remote_config_status = Some(proto::RemoteConfigStatus {
                last_remote_config_hash: hash,
                status: proto::RemoteConfigStatuses::Applied as i32,
                error_message: String::new(),
            });
        }
        let welcome = ws.exchange(&first).await;
        assert!(
            welcome.error_response.is_none(),
            "scripted collector {uid:?} refused: {welcome:?}"
        );
        let troubles = Troubles::default();
        watch(&troubles);
        let restarts = Arc::new(AtomicUsize::new(0));
        let (task_uid, task_received, task_applied, task_restarts, log) = (
            uid.clone(),
            Arc::clone(&received),
            Arc::clone(&applied),
            Arc::clone(&restarts),
            Arc::clone(&troubles),
        );
        let task = tokio::spawn(async move {
            let id = id_of(&task_uid);
            let mut seq = 1;
            let report = |what: String| log.lock().unwrap().push(format!("{id}: {what}"));
            loop {
                let reply = match next_message(&mut ws).await {
                    Ok(Some(reply)) => reply,
                    Ok(None) => return,
                    Err(what) => return report(what),
                };
                if let Some(error) = &reply.error_response {
                    report(format!("an error response: {error:?}"));
                }
                if reply
                    .command
                    .is_some_and(|c| c.r#type == proto::CommandType::Restart as i32)
                {
                    task_restarts.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(offered) = reply.packages_available {
                    if let Some(message) = package_verdict(&task_uid, seq, script, &offered) {
                        seq += 1;
                        if let Err(what) = send(&mut ws, &message).await {
                            return report(what);
                        }
                    }
                    continue;
                }
                let Some(config) = reply.remote_config else {
                    continue;
                };
                let count = task_received.fetch_add(1, Ordering::SeqCst) + 1;
                let hash = config.config_hash;
                let verdict = match script {
                    Script::Ignore => continue,
                    Script::Fail(error) => (proto::RemoteConfigStatuses::Failed, error),
                    Script::FailSecond(error) if count == 2 => {
                        (proto::RemoteConfigStatuses::Failed, error)
                    }
                    Script::Apply | Script::FailSecond(_) => {
                        (proto::RemoteConfigStatuses::Applied, "")
                    }
                };
                let applying = proto::RemoteConfigStatuses::Applying;
                for message in [
                    status(&task_uid, seq, &hash, applying, ""),
                    status(&task_uid, seq + 1, &hash, verdict.0, verdict.1),
                ] {
                    if let Err(what) = send(&mut ws, &message).await {
                        return report(what);
                    }
                }
                seq += 2;
                if verdict.0 == proto::RemoteConfigStatuses::Applied {
                    *task_applied.lock().unwrap() = Some(hash);
                }
            }
        });
        Self {
            id: id_of(&uid),
            uid,
            received,
            restarts,
            applied,
            troubles,
            task,
        }
    }

    /// Drops the connection (no goodbye, as when the network fails); its id is kept.
    pub fn disconnect(self) -> CollectorId {
        self.task.abort();
        self.id
    }

    /// A collector with this id connecting again, knowing nothing of before.
    pub async fn returning(
        id: CollectorId,
        ws_url: &str,
        exporters: &[&str],
        script: Script,
    ) -> Self {
        let uid = Bytes::copy_from_slice(id.0.as_bytes());
        Self::run(
            ws_url,
            uid,
            exporters.iter().map(|e| (*e).to_owned()).collect(),
            script,
            Arc::default(),
            Arc::default(),
        )
        .await
    }

    pub fn restarts(&self) -> usize {
        self.restarts.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
        if !std::thread::panicking() {
            let troubles = self.troubles.lock().unwrap();
            assert!(troubles.is_empty(), "{}", troubles.join("\n"));
        }
    }
}

/// The next message from the server; `None` when the server closed the connection because it is
/// shutting down (1001), which collectors expect; anything else unexpected, as trouble.
async fn next_message(ws: &mut WsClient) -> Result<Option<proto::ServerToAgent>, String> {
    loop {
        let data = match ws.socket.next().await {
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Away => {
                return Ok(None);
            }
            Some(Ok(other)) => return Err(format!("an unexpected message: {other:?}")),
            Some(Err(err)) => return Err(format!("the connection failed: {err}")),
            None => return Err("the connection ended without a Close frame".into()),
        };
        let Some((0, body)) = data.split_first() else {
            return Err(format!("a frame without the 0 header: {data:?}"));
        };
        return proto::ServerToAgent::decode(body)
            .map(Some)
            .map_err(|e| format!("an undecodable ServerToAgent ({e}): {data:?}"));
    }
}

async fn send(ws: &mut WsClient, message: &proto::AgentToServer) -> Result<(), String> {
    let mut bytes = vec![0];
    message.encode(&mut bytes).expect("encode");
    ws.socket
        .send(Message::Binary(bytes.into()))
        .await
        .map_err(|e| format!("cannot send: {e}"))
}

//! Our scriptable test collector: a real WebSocket OpAMP client that reports the components it
//! has, and applies, fails or ignores every configuration it is sent, as its script says.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt as _;
use opampd::collector::CollectorId;
use opampd::proto;
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::{WsClient, hello, id_of, new_uid};

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
    /// The hash it last applied, reported in its first message when it reconnects.
    applied: Arc<std::sync::Mutex<Option<Bytes>>>,
    task: JoinHandle<()>,
}

fn details(types: &[&str]) -> proto::ComponentDetails {
    proto::ComponentDetails {
        sub_component_map: types
            .iter()
            .map(|t| ((*t).to_owned(), proto::ComponentDetails::default()))
            .collect(),
        ..Default::default()
    }
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
        applied: Arc<std::sync::Mutex<Option<Bytes>>>,
    ) -> Self {
        let mut ws = WsClient::connect(ws_url).await;
        let mut first = hello(&uid, 0);
        first.capabilities |= 0x4000;
        let exporter_types: Vec<&str> = exporters.iter().map(String::as_str).collect();
        first.available_components = Some(proto::AvailableComponents {
            components: [
                ("receivers".to_owned(), details(&["otlp"])),
                ("exporters".to_owned(), details(&exporter_types)),
            ]
            .into(),
            hash: Bytes::from(format!("components:{}", exporters.join(","))),
        });
        let last = applied.lock().unwrap().clone();
        if let Some(hash) = last {
            first.remote_config_status = Some(proto::RemoteConfigStatus {
                last_remote_config_hash: hash,
                status: proto::RemoteConfigStatuses::Applied as i32,
                error_message: String::new(),
            });
        }
        ws.exchange(&first).await;
        let (task_uid, task_received, task_applied) =
            (uid.clone(), Arc::clone(&received), Arc::clone(&applied));
        let task = tokio::spawn(async move {
            let mut seq = 1;
            while let Some(Ok(message)) = ws.socket.next().await {
                let Message::Binary(data) = message else {
                    continue;
                };
                let Ok(reply) = proto::ServerToAgent::decode(&data[1..]) else {
                    continue;
                };
                if let Some(offered) = reply.packages_available {
                    if let Some(message) = package_verdict(&task_uid, seq, script, &offered) {
                        seq += 1;
                        ws.send(&message).await;
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
                ws.send(&status(
                    &task_uid,
                    seq,
                    &hash,
                    proto::RemoteConfigStatuses::Applying,
                    "",
                ))
                .await;
                ws.send(&status(&task_uid, seq + 1, &hash, verdict.0, verdict.1))
                    .await;
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
            applied,
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

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

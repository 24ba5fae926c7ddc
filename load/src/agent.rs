//! One simulated collector's OpAMP behaviour, with no I/O: what it sends first, what a heartbeat and
//! a status change look like, and what it answers to each `ServerToAgent` (a pure function of its
//! state and the reply, so it is tested without a server).

use std::time::Duration;

use bytes::Bytes;
use opampd::proto::{
    self, AgentCapabilities, RemoteConfigStatuses, ServerErrorResponseType, ServerToAgentFlags,
};

/// `ReportsStatus | AcceptsRemoteConfig | ReportsEffectiveConfig | ReportsHealth |
/// ReportsRemoteConfig | ReportsHeartbeat`.
pub const CAPABILITIES: u64 = AgentCapabilities::ReportsStatus as u64
    | AgentCapabilities::AcceptsRemoteConfig as u64
    | AgentCapabilities::ReportsEffectiveConfig as u64
    | AgentCapabilities::ReportsHealth as u64
    | AgentCapabilities::ReportsRemoteConfig as u64
    | AgentCapabilities::ReportsHeartbeat as u64;

/// The error message a collector gives when `--fail-configs` makes it refuse a configuration.
pub const FAILED_MESSAGE: &str = "refused by opampd-load (--fail-configs)";

/// The configuration every simulated collector starts with (its effective configuration until a
/// server sends another).
const INITIAL_CONFIG: &str = "receivers:\n  otlp:\n    protocols:\n      grpc: {}\n\
exporters:\n  debug: {}\n\
service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n";

/// How a simulated collector treats remote configurations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// Report FAILED instead of APPLIED.
    pub fail_configs: bool,
    /// Report APPLYING before the verdict.
    pub report_applying: bool,
}

/// What kind of message is in flight, so its reply is counted in the right place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    FullState,
    Heartbeat,
    StatusChange,
    /// A configuration's status (APPLYING, APPLIED or FAILED).
    ConfigStatus,
    Disconnect,
}

/// A message ready to go out, with its kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub message: proto::AgentToServer,
    pub kind: Sent,
}

/// Why a reply cannot be taken as a success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyProblem {
    /// `error_response` `BAD_REQUEST`: the server refused the message.
    BadRequest,
    /// `error_response` of an unknown type.
    ServerError,
    /// A `new_instance_uid` that is not 16 bytes long (ignored).
    BadNewUid,
}

/// What the collector does after a reply.
#[allow(clippy::struct_excessive_bools)] // independent facts about one reply
#[derive(Debug, Default, PartialEq)]
pub struct Reaction {
    /// Sent in this order, one at a time.
    pub messages: Vec<Outgoing>,
    /// `error_response` UNAVAILABLE: back off before talking again; `Some` with the server's
    /// `retry_info`, `None` for the collector's own backoff.
    pub throttle: Option<Option<Duration>>,
    pub problem: Option<ReplyProblem>,
    /// A remote configuration was applied (or refused, with `--fail-configs`).
    pub config_applied: bool,
    pub config_failed: bool,
    /// The reply asked for the full state.
    pub full_state_requested: bool,
    /// The collector took a new instance uid.
    pub new_uid: bool,
}

/// One simulated collector.
#[derive(Debug, Clone)]
pub struct Agent {
    uid: Bytes,
    next_seq: u64,
    healthy: bool,
    flips: u64,
    description: proto::AgentDescription,
    effective: proto::AgentConfigMap,
    remote_status: proto::RemoteConfigStatus,
    behaviour: Behaviour,
}

impl Agent {
    /// Collector number `index` of this run, with a fresh UUIDv7 instance uid.
    pub fn new(index: usize, run_tag: &str, behaviour: Behaviour) -> Self {
        Self::with_uid(
            Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes()),
            index,
            run_tag,
            behaviour,
        )
    }

    pub fn with_uid(uid: Bytes, index: usize, run_tag: &str, behaviour: Behaviour) -> Self {
        let name = format!("load-{run_tag}-{index}");
        let description = proto::AgentDescription {
            identifying_attributes: vec![
                kv("service.name", "otelcol-load"),
                kv("service.instance.name", &name),
                kv("service.version", env!("CARGO_PKG_VERSION")),
            ],
            non_identifying_attributes: vec![kv("host.name", &format!("load-host-{}", index % 64))],
        };
        let mut effective = proto::AgentConfigMap::default();
        effective.config_map.insert(
            String::new(),
            proto::AgentConfigFile {
                body: Bytes::from_static(INITIAL_CONFIG.as_bytes()),
                content_type: "text/yaml".to_owned(),
            },
        );
        Self {
            uid,
            next_seq: 0,
            healthy: true,
            flips: 0,
            description,
            effective,
            remote_status: proto::RemoteConfigStatus::default(),
            behaviour,
        }
    }

    pub fn uid(&self) -> &Bytes {
        &self.uid
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    pub fn remote_status(&self) -> &proto::RemoteConfigStatus {
        &self.remote_status
    }

    pub fn effective(&self) -> &proto::AgentConfigMap {
        &self.effective
    }

    /// uid, the next sequence number and capabilities: what every message carries.
    fn base(&mut self) -> proto::AgentToServer {
        let sequence_num = self.next_seq;
        self.next_seq += 1;
        proto::AgentToServer {
            instance_uid: self.uid.clone(),
            sequence_num,
            capabilities: CAPABILITIES,
            ..Default::default()
        }
    }

    fn health(&self) -> proto::ComponentHealth {
        proto::ComponentHealth {
            healthy: self.healthy,
            last_error: if self.healthy {
                String::new()
            } else {
                format!("simulated failure {}", self.flips)
            },
            ..Default::default()
        }
    }

    fn effective_config(&self) -> proto::EffectiveConfig {
        proto::EffectiveConfig {
            config_map: Some(self.effective.clone()),
        }
    }

    /// Everything the collector reports: its first message, and the answer to `ReportFullState`.
    pub fn full_state(&mut self) -> Outgoing {
        let message = proto::AgentToServer {
            agent_description: Some(self.description.clone()),
            health: Some(self.health()),
            effective_config: Some(self.effective_config()),
            remote_config_status: Some(self.remote_status.clone()),
            ..self.base()
        };
        Outgoing {
            message,
            kind: Sent::FullState,
        }
    }

    /// Only uid, sequence number and capabilities.
    pub fn heartbeat(&mut self) -> Outgoing {
        Outgoing {
            message: self.base(),
            kind: Sent::Heartbeat,
        }
    }

    /// Flips the collector's health (unhealthy ones say why) and reports it.
    pub fn status_change(&mut self) -> Outgoing {
        self.flips += 1;
        self.healthy = !self.healthy;
        let message = proto::AgentToServer {
            health: Some(self.health()),
            ..self.base()
        };
        Outgoing {
            message,
            kind: Sent::StatusChange,
        }
    }

    /// The last message of a collector that stops.
    pub fn disconnect(&mut self) -> Outgoing {
        Outgoing {
            message: proto::AgentToServer {
                agent_disconnect: Some(proto::AgentDisconnect {}),
                ..self.base()
            },
            kind: Sent::Disconnect,
        }
    }

    /// What the collector does with a `ServerToAgent`: adopt a new uid, apply (or refuse) a
    /// remote configuration, send its full state when asked, back off when the server is
    /// unavailable.
    pub fn on_reply(&mut self, reply: &proto::ServerToAgent) -> Reaction {
        let mut reaction = Reaction::default();
        if let Some(error) = &reply.error_response {
            // An error reply carries nothing else worth reading.
            match ServerErrorResponseType::try_from(error.r#type) {
                Ok(ServerErrorResponseType::Unavailable) => {
                    let after = error.details.as_ref().map(
                        |proto::server_error_response::Details::RetryInfo(info)| {
                            Duration::from_nanos(info.retry_after_nanoseconds)
                        },
                    );
                    reaction.throttle = Some(after);
                }
                Ok(ServerErrorResponseType::BadRequest) => {
                    reaction.problem = Some(ReplyProblem::BadRequest);
                }
                _ => reaction.problem = Some(ReplyProblem::ServerError),
            }
            return reaction;
        }
        if let Some(identification) = &reply.agent_identification {
            if identification.new_instance_uid.len() == 16 {
                self.uid = identification.new_instance_uid.clone();
                reaction.new_uid = true;
            } else {
                reaction.problem = Some(ReplyProblem::BadNewUid);
            }
        }
        let mut status_report = None;
        if let Some(remote) = &reply.remote_config {
            let already = self.remote_status.last_remote_config_hash == remote.config_hash
                && self.remote_status.status != RemoteConfigStatuses::Unset as i32
                && self.remote_status.status != RemoteConfigStatuses::Applying as i32;
            if !already {
                if self.behaviour.report_applying {
                    self.remote_status = proto::RemoteConfigStatus {
                        last_remote_config_hash: remote.config_hash.clone(),
                        status: RemoteConfigStatuses::Applying as i32,
                        error_message: String::new(),
                    };
                    let message = proto::AgentToServer {
                        remote_config_status: Some(self.remote_status.clone()),
                        ..self.base()
                    };
                    reaction.messages.push(Outgoing {
                        message,
                        kind: Sent::ConfigStatus,
                    });
                }
                if self.behaviour.fail_configs {
                    self.remote_status = proto::RemoteConfigStatus {
                        last_remote_config_hash: remote.config_hash.clone(),
                        status: RemoteConfigStatuses::Failed as i32,
                        error_message: FAILED_MESSAGE.to_owned(),
                    };
                    reaction.config_failed = true;
                    status_report = Some(proto::AgentToServer {
                        remote_config_status: Some(self.remote_status.clone()),
                        ..Default::default()
                    });
                } else {
                    self.remote_status = proto::RemoteConfigStatus {
                        last_remote_config_hash: remote.config_hash.clone(),
                        status: RemoteConfigStatuses::Applied as i32,
                        error_message: String::new(),
                    };
                    self.effective = remote.config.clone().unwrap_or_default();
                    reaction.config_applied = true;
                    status_report = Some(proto::AgentToServer {
                        remote_config_status: Some(self.remote_status.clone()),
                        effective_config: Some(self.effective_config()),
                        ..Default::default()
                    });
                }
            }
        }
        if reply.flags & ServerToAgentFlags::ReportFullState as u64 != 0 {
            // The full state carries any status just changed, so it replaces the status report.
            reaction.full_state_requested = true;
            reaction.messages.push(self.full_state());
        } else if let Some(report) = status_report {
            reaction.messages.push(Outgoing {
                message: merge_base(report, self.base()),
                kind: Sent::ConfigStatus,
            });
        }
        reaction
    }
}

/// `report`'s status fields with `base`'s uid, sequence number and capabilities.
fn merge_base(report: proto::AgentToServer, base: proto::AgentToServer) -> proto::AgentToServer {
    proto::AgentToServer {
        instance_uid: base.instance_uid,
        sequence_num: base.sequence_num,
        capabilities: base.capabilities,
        ..report
    }
}

fn kv(key: &str, value: &str) -> proto::KeyValue {
    proto::KeyValue {
        key: key.to_owned(),
        value: Some(proto::AnyValue {
            value: Some(proto::any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(behaviour: Behaviour) -> Agent {
        Agent::with_uid(Bytes::from_static(&[7; 16]), 3, "t", behaviour)
    }

    fn ack() -> proto::ServerToAgent {
        proto::ServerToAgent {
            instance_uid: Bytes::from_static(&[7; 16]),
            capabilities: 0x7,
            ..Default::default()
        }
    }

    fn offer(hash: &[u8], body: &str) -> proto::ServerToAgent {
        let mut config = proto::AgentConfigMap::default();
        config.config_map.insert(
            "main.yaml".to_owned(),
            proto::AgentConfigFile {
                body: Bytes::copy_from_slice(body.as_bytes()),
                content_type: "text/yaml".to_owned(),
            },
        );
        proto::ServerToAgent {
            remote_config: Some(proto::AgentRemoteConfig {
                config: Some(config),
                config_hash: Bytes::copy_from_slice(hash),
            }),
            ..ack()
        }
    }

    fn attribute<'a>(attributes: &'a [proto::KeyValue], key: &str) -> Option<&'a str> {
        attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
            match kv.value.as_ref()?.value.as_ref()? {
                proto::any_value::Value::StringValue(s) => Some(s.as_str()),
                _ => None,
            }
        })
    }

    #[test]
    fn the_first_message_is_a_full_state() {
        let mut agent = agent(Behaviour::default());
        let first = agent.full_state();
        assert_eq!(first.kind, Sent::FullState);
        let m = first.message;
        assert_eq!(m.instance_uid.as_ref(), &[7; 16]);
        assert_eq!(m.sequence_num, 0);
        assert_eq!(m.capabilities, 0x1 | 0x2 | 0x4 | 0x800 | 0x1000 | 0x2000);
        let description = m.agent_description.expect("description");
        let ident = &description.identifying_attributes;
        assert_eq!(attribute(ident, "service.name"), Some("otelcol-load"));
        assert_eq!(attribute(ident, "service.instance.name"), Some("load-t-3"));
        assert!(attribute(ident, "service.version").is_some());
        assert_eq!(
            attribute(&description.non_identifying_attributes, "host.name"),
            Some("load-host-3")
        );
        assert!(m.health.expect("health").healthy);
        assert_eq!(
            m.effective_config
                .and_then(|c| c.config_map)
                .map(|m| m.config_map.len()),
            Some(1)
        );
        assert!(m.remote_config_status.is_some());
    }

    #[test]
    fn sequence_numbers_go_up_by_one_per_message() {
        let mut agent = agent(Behaviour::default());
        let seqs: Vec<u64> = [
            agent.full_state(),
            agent.heartbeat(),
            agent.status_change(),
            agent.disconnect(),
        ]
        .iter()
        .map(|o| o.message.sequence_num)
        .collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
    }

    #[test]
    fn a_heartbeat_carries_only_uid_sequence_and_capabilities() {
        let mut agent = agent(Behaviour::default());
        let heartbeat = agent.heartbeat().message;
        assert_eq!(
            heartbeat,
            proto::AgentToServer {
                instance_uid: Bytes::from_static(&[7; 16]),
                sequence_num: 0,
                capabilities: CAPABILITIES,
                ..Default::default()
            }
        );
    }

    #[test]
    fn status_changes_flip_health_with_a_last_error_when_unhealthy() {
        let mut agent = agent(Behaviour::default());
        let first = agent.status_change().message.health.expect("health");
        assert!(!first.healthy);
        assert!(!first.last_error.is_empty());
        let second = agent.status_change().message.health.expect("health");
        assert!(second.healthy);
        assert!(second.last_error.is_empty());
    }

    #[test]
    fn a_plain_ack_needs_nothing() {
        let mut agent = agent(Behaviour::default());
        agent.full_state();
        assert_eq!(agent.on_reply(&ack()), Reaction::default());
    }

    #[test]
    fn report_full_state_sends_everything_again() {
        let mut agent = agent(Behaviour::default());
        agent.full_state();
        let reaction = agent.on_reply(&proto::ServerToAgent {
            flags: ServerToAgentFlags::ReportFullState as u64,
            ..ack()
        });
        assert!(reaction.full_state_requested);
        assert_eq!(reaction.messages.len(), 1);
        let message = &reaction.messages[0];
        assert_eq!(message.kind, Sent::FullState);
        assert_eq!(message.message.sequence_num, 1);
        assert!(message.message.agent_description.is_some());
        assert!(message.message.health.is_some());
    }

    #[test]
    fn a_remote_config_is_applied_and_reported_with_the_new_effective_config() {
        let mut agent = agent(Behaviour::default());
        agent.full_state();
        let reaction = agent.on_reply(&offer(b"h1", "a: 1\n"));
        assert!(reaction.config_applied);
        assert_eq!(reaction.messages.len(), 1);
        let message = &reaction.messages[0].message;
        let status = message.remote_config_status.as_ref().expect("status");
        assert_eq!(status.last_remote_config_hash.as_ref(), b"h1");
        assert_eq!(status.status, RemoteConfigStatuses::Applied as i32);
        let files = &message
            .effective_config
            .as_ref()
            .and_then(|c| c.config_map.as_ref())
            .expect("effective config")
            .config_map;
        assert_eq!(files.len(), 1);
        assert_eq!(files["main.yaml"].body.as_ref(), b"a: 1\n");
        assert_eq!(message.sequence_num, 1);
        // The same offer again is already applied: nothing to report.
        assert_eq!(agent.on_reply(&offer(b"h1", "a: 1\n")), Reaction::default());
        // And the full state now says what it runs.
        let full = agent.full_state().message;
        assert_eq!(
            full.remote_config_status
                .expect("status")
                .last_remote_config_hash
                .as_ref(),
            b"h1"
        );
    }

    #[test]
    fn applying_is_reported_first_when_asked() {
        let mut agent = agent(Behaviour {
            report_applying: true,
            ..Behaviour::default()
        });
        let reaction = agent.on_reply(&offer(b"h2", "b: 2\n"));
        let statuses: Vec<(u64, i32)> = reaction
            .messages
            .iter()
            .map(|o| {
                (
                    o.message.sequence_num,
                    o.message
                        .remote_config_status
                        .as_ref()
                        .expect("status")
                        .status,
                )
            })
            .collect();
        assert_eq!(
            statuses,
            [
                (0, RemoteConfigStatuses::Applying as i32),
                (1, RemoteConfigStatuses::Applied as i32)
            ]
        );
    }

    #[test]
    fn fail_configs_refuses_and_keeps_the_old_effective_config() {
        let mut agent = agent(Behaviour {
            fail_configs: true,
            ..Behaviour::default()
        });
        let before = agent.effective().clone();
        let reaction = agent.on_reply(&offer(b"h3", "c: 3\n"));
        assert!(reaction.config_failed);
        let message = &reaction.messages[0].message;
        let status = message.remote_config_status.as_ref().expect("status");
        assert_eq!(status.status, RemoteConfigStatuses::Failed as i32);
        assert_eq!(status.error_message, FAILED_MESSAGE);
        assert!(message.effective_config.is_none());
        assert_eq!(agent.effective(), &before);
    }

    #[test]
    fn a_config_with_report_full_state_is_answered_by_one_full_state() {
        let mut agent = agent(Behaviour::default());
        let reaction = agent.on_reply(&proto::ServerToAgent {
            flags: ServerToAgentFlags::ReportFullState as u64,
            ..offer(b"h4", "d: 4\n")
        });
        assert_eq!(reaction.messages.len(), 1);
        let message = &reaction.messages[0].message;
        assert!(message.agent_description.is_some());
        assert_eq!(
            message
                .remote_config_status
                .as_ref()
                .map(|s| (s.last_remote_config_hash.as_ref(), s.status)),
            Some((&b"h4"[..], RemoteConfigStatuses::Applied as i32))
        );
    }

    #[test]
    fn unavailable_throttles_with_or_without_retry_info() {
        let mut agent = agent(Behaviour::default());
        let unavailable = |details| proto::ServerToAgent {
            error_response: Some(proto::ServerErrorResponse {
                r#type: ServerErrorResponseType::Unavailable as i32,
                error_message: "busy".to_owned(),
                details,
            }),
            ..ack()
        };
        let with = agent.on_reply(&unavailable(Some(
            proto::server_error_response::Details::RetryInfo(proto::RetryInfo {
                retry_after_nanoseconds: 2_500_000_000,
            }),
        )));
        assert_eq!(with.throttle, Some(Some(Duration::from_millis(2500))));
        assert!(with.messages.is_empty());
        let without = agent.on_reply(&unavailable(None));
        assert_eq!(without.throttle, Some(None));
    }

    #[test]
    fn bad_request_is_a_problem() {
        let mut agent = agent(Behaviour::default());
        let reaction = agent.on_reply(&proto::ServerToAgent {
            error_response: Some(proto::ServerErrorResponse {
                r#type: ServerErrorResponseType::BadRequest as i32,
                ..Default::default()
            }),
            ..ack()
        });
        assert_eq!(reaction.problem, Some(ReplyProblem::BadRequest));
    }

    #[test]
    fn a_new_instance_uid_is_adopted_when_it_has_16_bytes() {
        let mut agent = agent(Behaviour::default());
        let reaction = agent.on_reply(&proto::ServerToAgent {
            agent_identification: Some(proto::AgentIdentification {
                new_instance_uid: Bytes::from_static(&[9; 16]),
            }),
            ..ack()
        });
        assert!(reaction.new_uid);
        assert_eq!(agent.uid().as_ref(), &[9; 16]);
        assert_eq!(agent.heartbeat().message.instance_uid.as_ref(), &[9; 16]);
        let bad = agent.on_reply(&proto::ServerToAgent {
            agent_identification: Some(proto::AgentIdentification {
                new_instance_uid: Bytes::from_static(b"short"),
            }),
            ..ack()
        });
        assert_eq!(bad.problem, Some(ReplyProblem::BadNewUid));
        assert_eq!(agent.uid().as_ref(), &[9; 16]);
    }
}

//! Translation between the wire and the domain: `AgentToServer` into a collector `Report`, and the
//! domain's `Outbound` into a `ServerToAgent`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::collector::connection::{self, ConnectionSettingsStatus, CustomMessage, SettingsState};
use crate::collector::encoding::make_storable;
use crate::collector::{
    AvailableComponents, Capabilities, ConfigFile, ConfigFiles, Description, Health, Outbound,
    PackageState, PackageStatus, PackageStatuses, RemoteConfigState, RemoteConfigStatus, Report,
};
use crate::proto;

/// Health trees nest without bound on the wire; deeper levels are dropped rather than recursed into.
const MAX_HEALTH_DEPTH: usize = 16;

/// What this server does, sent in every reply: over HTTP every request stands alone, and it costs
/// a few bytes.
pub const SERVER_CAPABILITIES: u64 = proto::ServerCapabilities::AcceptsStatus as u64
    | proto::ServerCapabilities::OffersRemoteConfig as u64
    | proto::ServerCapabilities::AcceptsEffectiveConfig as u64
    | proto::ServerCapabilities::OffersPackages as u64
    | proto::ServerCapabilities::AcceptsPackagesStatus as u64
    | proto::ServerCapabilities::OffersConnectionSettings as u64;

pub fn wants_new_uid(message: &proto::AgentToServer) -> bool {
    message.flags & proto::AgentToServerFlags::RequestInstanceUid as u64 != 0
}

/// A collector's text as the store can keep it (see [`make_storable`]): every string that enters
/// the domain from the wire passes here.
fn text(mut s: String) -> String {
    make_storable(&mut s);
    s
}

pub fn to_report(message: proto::AgentToServer) -> Report {
    Report {
        sequence_num: message.sequence_num,
        capabilities: Capabilities(message.capabilities),
        description: message.agent_description.map(|d| Description {
            identifying: attributes(d.identifying_attributes),
            non_identifying: attributes(d.non_identifying_attributes),
        }),
        health: message.health.map(|h| health(h, 0)),
        effective_config: message
            .effective_config
            .map(|c| config_files(c.config_map.unwrap_or_default())),
        remote_config_status: message.remote_config_status.map(|s| RemoteConfigStatus {
            hash: s.last_remote_config_hash.to_vec(),
            status: match proto::RemoteConfigStatuses::try_from(s.status) {
                Ok(proto::RemoteConfigStatuses::Unset) => RemoteConfigState::Unset,
                Ok(proto::RemoteConfigStatuses::Applied) => RemoteConfigState::Applied,
                Ok(proto::RemoteConfigStatuses::Applying) => RemoteConfigState::Applying,
                Ok(proto::RemoteConfigStatuses::Failed) => RemoteConfigState::Failed,
                Err(_) => RemoteConfigState::Unknown(s.status),
            },
            error_message: text(s.error_message),
        }),
        package_statuses: message.package_statuses.map(package_statuses),
        available_components: message.available_components.map(|a| {
            let hash = a.hash.to_vec();
            // An empty map with a hash is the hash-only form: the set itself is unknown here.
            let components = (!a.components.is_empty()).then(|| {
                Arc::new(crate::collector::Components(
                    a.components
                        .into_iter()
                        .map(|(kind, details)| {
                            let mut types: Vec<String> =
                                details.sub_component_map.into_keys().map(text).collect();
                            types.sort();
                            (text(kind), types)
                        })
                        .collect(),
                ))
            });
            AvailableComponents { hash, components }
        }),
        // A fact of the connection, not of the message: the transport adds it.
        client_certificate: None,
        issued_certificate: None,
        custom_capabilities: message.custom_capabilities.map(|c| {
            let mut names: Vec<String> = c.capabilities.into_iter().map(text).collect();
            names.sort();
            names.dedup();
            Arc::from(names)
        }),
        connection_settings_status: message.connection_settings_status.map(|s| {
            ConnectionSettingsStatus {
                hash: s.last_connection_settings_hash.to_vec(),
                status: match proto::ConnectionSettingsStatuses::try_from(s.status) {
                    Ok(proto::ConnectionSettingsStatuses::Unset) => SettingsState::Unset,
                    Ok(proto::ConnectionSettingsStatuses::Applied) => SettingsState::Applied,
                    Ok(proto::ConnectionSettingsStatuses::Applying) => SettingsState::Applying,
                    Ok(proto::ConnectionSettingsStatuses::Failed) => SettingsState::Failed,
                    Err(_) => SettingsState::Unknown(s.status),
                },
                error_message: text(s.error_message),
            }
        }),
        custom_message: message.custom_message.map(|m| CustomMessage {
            capability: text(m.capability),
            kind: text(m.r#type),
            data: Arc::from(&m.data[..]),
        }),
        disconnect: message.agent_disconnect.is_some(),
    }
}

fn attributes(list: Vec<proto::KeyValue>) -> crate::collector::Attributes {
    crate::collector::trimmed(list.into_iter().map(|kv| {
        let value = kv.value.map_or(serde_json::Value::Null, any_value);
        (text(kv.key), value)
    }))
}

fn any_value(value: proto::AnyValue) -> serde_json::Value {
    use proto::any_value::Value;
    use serde_json::Value as Json;
    match value.value {
        None => Json::Null,
        Some(Value::StringValue(s)) => Json::String(text(s)),
        Some(Value::BoolValue(b)) => Json::Bool(b),
        Some(Value::IntValue(i)) => Json::from(i),
        Some(Value::DoubleValue(d)) => Json::from(d),
        Some(Value::ArrayValue(a)) => Json::Array(a.values.into_iter().map(any_value).collect()),
        Some(Value::KvlistValue(kv)) => Json::Object(attributes(kv.values).into_iter().collect()),
        Some(Value::BytesValue(b)) => Json::Array(b.iter().map(|&x| Json::from(x)).collect()),
    }
}

fn health(h: proto::ComponentHealth, depth: usize) -> Health {
    Health {
        healthy: h.healthy,
        start_time_unix_nano: h.start_time_unix_nano,
        last_error: text(h.last_error),
        status: text(h.status),
        status_time_unix_nano: h.status_time_unix_nano,
        components: if depth + 1 >= MAX_HEALTH_DEPTH {
            litemap::LiteMap::new()
        } else {
            crate::collector::trimmed(
                h.component_health_map
                    .into_iter()
                    .map(|(name, child)| (text(name), health(child, depth + 1))),
            )
        },
    }
}

fn config_files(map: proto::AgentConfigMap) -> ConfigFiles {
    crate::collector::trimmed(map.config_map.into_iter().map(|(name, file)| {
        (
            text(name),
            ConfigFile {
                content_type: text(file.content_type),
                body: Arc::from(&file.body[..]),
            },
        )
    }))
}

fn package_statuses(p: proto::PackageStatuses) -> PackageStatuses {
    PackageStatuses {
        packages: p
            .packages
            .into_iter()
            .map(|(name, s)| {
                let status = match proto::PackageStatusEnum::try_from(s.status) {
                    Ok(proto::PackageStatusEnum::Installed) => PackageState::Installed,
                    Ok(proto::PackageStatusEnum::InstallPending) => PackageState::InstallPending,
                    Ok(proto::PackageStatusEnum::Installing) => PackageState::Installing,
                    Ok(proto::PackageStatusEnum::InstallFailed) => PackageState::InstallFailed,
                    Ok(proto::PackageStatusEnum::Downloading) => PackageState::Downloading,
                    Err(_) => PackageState::Unknown(s.status),
                };
                (
                    text(name),
                    PackageStatus {
                        agent_has_version: text(s.agent_has_version),
                        agent_has_hash: s.agent_has_hash.to_vec(),
                        server_offered_version: text(s.server_offered_version),
                        status,
                        error_message: text(s.error_message),
                    },
                )
            })
            .collect(),
        server_provided_all_packages_hash: p.server_provided_all_packages_hash.to_vec(),
        error_message: text(p.error_message),
    }
}

/// The reply to a collector: `uid` is echoed exactly as the collector sent it.
pub fn to_server_to_agent(
    uid: Bytes,
    outbound: Outbound,
    capabilities: u64,
) -> proto::ServerToAgent {
    let mut message = proto::ServerToAgent {
        instance_uid: uid,
        capabilities,
        ..Default::default()
    };
    if outbound.restart {
        // A command travels with nothing but the uid and capabilities; `Outbound::take_sendable`
        // has already kept everything else for a later message.
        message.command = Some(proto::ServerToAgentCommand {
            r#type: proto::CommandType::Restart as i32,
        });
        return message;
    }
    if outbound.report_full_state {
        message.flags |= proto::ServerToAgentFlags::ReportFullState as u64;
    }
    if outbound.report_available_components {
        message.flags |= proto::ServerToAgentFlags::ReportAvailableComponents as u64;
    }
    message.remote_config = outbound
        .remote_config
        .map(|offer| proto::AgentRemoteConfig {
            config: Some(proto::AgentConfigMap {
                config_map: offer
                    .files
                    .into_iter()
                    .map(|(name, file)| {
                        (
                            name,
                            proto::AgentConfigFile {
                                body: Bytes::copy_from_slice(&file.body),
                                content_type: file.content_type,
                            },
                        )
                    })
                    .collect(),
            }),
            config_hash: Bytes::from(offer.hash),
        });
    message.connection_settings = outbound
        .connection_settings
        .map(|offer| settings_offers(*offer));
    message.custom_message =
        outbound
            .custom_messages
            .into_iter()
            .next()
            .map(|m| proto::CustomMessage {
                capability: m.capability,
                r#type: m.kind,
                data: Bytes::copy_from_slice(&m.data),
            });
    message.custom_capabilities =
        outbound
            .custom_capabilities
            .map(|names| proto::CustomCapabilities {
                capabilities: names.to_vec(),
            });
    message.packages_available = outbound.package.map(|package| {
        let all_packages_hash = Bytes::copy_from_slice(package.all_packages_hash());
        // The kept packages as the collector has them: same version, same hash, so it has nothing
        // to download for them, and nothing to remove.
        let kept = package.kept.into_iter().map(|k| {
            let available = proto::PackageAvailable {
                r#type: proto::PackageType::TopLevel as i32,
                version: k.version,
                file: None,
                hash: Bytes::from(k.hash),
            };
            (k.name, available)
        });
        let offered = proto::PackageAvailable {
            r#type: proto::PackageType::TopLevel as i32,
            version: package.version,
            file: Some(proto::DownloadableFile {
                download_url: package.download_url,
                content_hash: Bytes::from(package.content_hash),
                signature: Bytes::from(package.signature),
                headers: None,
            }),
            hash: Bytes::from(package.hash),
        };
        proto::PackagesAvailable {
            packages: kept.chain([(package.name, offered)]).collect(),
            all_packages_hash,
        }
    });
    message
}

fn settings_offers(offer: connection::SettingsOffer) -> proto::ConnectionSettingsOffers {
    let connection::SettingsOffer {
        settings,
        hash,
        certificate,
    } = offer;
    // A private key only with a renewal, whose key was made here; for a requested certificate
    // the collector has its own.
    let certificate = certificate.map(|issued| proto::TlsCertificate {
        cert: Bytes::from(issued.cert_pem.clone()),
        private_key: issued
            .private_key_pem
            .clone()
            .map(Bytes::from)
            .unwrap_or_default(),
        ca_cert: Bytes::from(issued.ca_pem.clone()),
    });
    proto::ConnectionSettingsOffers {
        hash: Bytes::from(hash),
        opamp: settings.opamp.map(|o| proto::OpAmpConnectionSettings {
            destination_endpoint: o.destination_endpoint,
            headers: headers(o.headers),
            certificate,
            heartbeat_interval_seconds: o.heartbeat_interval_seconds,
            tls: o.tls.map(tls),
            proxy: o.proxy.map(proxy),
        }),
        own_metrics: settings.own_metrics.map(telemetry),
        own_traces: settings.own_traces.map(telemetry),
        own_logs: settings.own_logs.map(telemetry),
        other_connections: settings
            .other_connections
            .into_iter()
            .map(|(name, o)| {
                let other = proto::OtherConnectionSettings {
                    destination_endpoint: o.destination_endpoint,
                    headers: headers(o.headers),
                    certificate: None,
                    other_settings: o.other_settings.into_iter().collect(),
                    tls: o.tls.map(tls),
                    proxy: o.proxy.map(proxy),
                };
                (name, other)
            })
            .collect(),
    }
}

fn telemetry(t: connection::TelemetryConnection) -> proto::TelemetryConnectionSettings {
    proto::TelemetryConnectionSettings {
        destination_endpoint: t.destination_endpoint,
        headers: headers(t.headers),
        certificate: None,
        tls: t.tls.map(tls),
        proxy: t.proxy.map(proxy),
    }
}

fn headers(map: BTreeMap<String, String>) -> Option<proto::Headers> {
    (!map.is_empty()).then(|| proto::Headers {
        headers: map
            .into_iter()
            .map(|(key, value)| proto::Header { key, value })
            .collect(),
    })
}

fn tls(t: connection::TlsSettings) -> proto::TlsConnectionSettings {
    proto::TlsConnectionSettings {
        ca_pem_contents: t.ca_pem_contents,
        include_system_ca_certs_pool: t.include_system_ca_certs_pool,
        insecure_skip_verify: t.insecure_skip_verify,
        min_version: t.min_version,
        max_version: t.max_version,
        cipher_suites: t.cipher_suites,
    }
}

fn proxy(p: connection::ProxySettings) -> proto::ProxyConnectionSettings {
    proto::ProxyConnectionSettings {
        url: p.url,
        connect_headers: headers(p.connect_headers),
    }
}

/// A `BAD_REQUEST` answer: the collector should not retry the same message.
pub fn bad_request(uid: Bytes, message: impl Into<String>) -> proto::ServerToAgent {
    proto::ServerToAgent {
        instance_uid: uid,
        error_response: Some(proto::ServerErrorResponse {
            r#type: proto::ServerErrorResponseType::BadRequest as i32,
            error_message: message.into(),
            details: None,
        }),
        ..Default::default()
    }
}

/// An `UNAVAILABLE` answer: nothing was acted on; come back after `retry_after` seconds.
pub fn unavailable(uid: Bytes, retry_after: u64) -> proto::ServerToAgent {
    proto::ServerToAgent {
        instance_uid: uid,
        error_response: Some(proto::ServerErrorResponse {
            r#type: proto::ServerErrorResponseType::Unavailable as i32,
            error_message: format!("try again in {retry_after} s"),
            details: Some(proto::server_error_response::Details::RetryInfo(
                proto::RetryInfo {
                    retry_after_nanoseconds: retry_after.saturating_mul(1_000_000_000),
                },
            )),
        }),
        ..Default::default()
    }
}

/// The answer to `RequestInstanceUid`: the new id, in the form this client can hold.
pub fn identification(new_uid: Bytes) -> proto::AgentIdentification {
    proto::AgentIdentification {
        new_instance_uid: new_uid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::ConfigOffer;

    #[test]
    fn a_command_travels_alone() {
        let reply = to_server_to_agent(
            Bytes::from_static(b"0123456789abcdef"),
            Outbound {
                restart: true,
                ..Outbound::default()
            },
            SERVER_CAPABILITIES,
        );
        assert!(reply.command.is_some());
        assert_eq!(reply.flags, 0);
        assert!(reply.remote_config.is_none());
        assert_eq!(reply.capabilities, SERVER_CAPABILITIES);
    }

    #[test]
    fn offers_and_flags_are_written() {
        let reply = to_server_to_agent(
            Bytes::from_static(b"0123456789abcdef"),
            Outbound {
                report_full_state: true,
                report_available_components: true,
                remote_config: Some(Box::new(ConfigOffer {
                    files: ConfigFiles::new(),
                    hash: vec![1, 2],
                })),
                package: None,
                restart: false,
                ..Outbound::default()
            },
            SERVER_CAPABILITIES,
        );
        assert_eq!(reply.flags, 0x3);
        assert_eq!(&reply.remote_config.unwrap().config_hash[..], &[1, 2]);
    }

    #[test]
    fn unknown_enum_values_are_kept_not_rejected() {
        let report = to_report(proto::AgentToServer {
            remote_config_status: Some(proto::RemoteConfigStatus {
                status: 99,
                ..Default::default()
            }),
            capabilities: 1 << 40,
            ..Default::default()
        });
        assert_eq!(
            report.remote_config_status.unwrap().status,
            RemoteConfigState::Unknown(99)
        );
        assert!(report.capabilities.names().is_empty());
    }

    #[test]
    fn collector_text_is_made_storable_on_the_way_in() {
        let report = to_report(proto::AgentToServer {
            health: Some(proto::ComponentHealth {
                last_error: "bad\0byte".into(),
                component_health_map: [("x\0".into(), proto::ComponentHealth::default())].into(),
                ..Default::default()
            }),
            agent_description: Some(proto::AgentDescription {
                identifying_attributes: vec![proto::KeyValue {
                    key: "k\0".into(),
                    value: Some(proto::AnyValue {
                        value: Some(proto::any_value::Value::StringValue("v".repeat(10_000))),
                    }),
                }],
                non_identifying_attributes: vec![],
            }),
            ..Default::default()
        });
        let health = report.health.unwrap();
        assert_eq!(health.last_error, "bad\u{fffd}byte");
        assert!(health.components.contains_key("x\u{fffd}"));
        let description = report.description.unwrap();
        let value = description
            .identifying
            .get("k\u{fffd}")
            .unwrap()
            .as_str()
            .unwrap();
        assert!(value.len() <= crate::collector::encoding::MAX_TEXT + '…'.len_utf8());
    }

    /// Found by the `opamp_message` fuzz target (docs/fuzzing.md): a double attribute came back
    /// from the stored JSON one bit off (9.114451187677209e-305 read as …207e-305), so a collector
    /// reloaded from the store no longer held what it had reported. `serde_json` parses floats
    /// exactly only with its `float_roundtrip` feature, which the server now enables.
    #[test]
    fn double_attributes_round_trip_through_stored_json() {
        for value in [
            f64::from_bits(0x00d0_003f_2000_0000),
            0.1,
            1e-300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ] {
            let report = to_report(proto::AgentToServer {
                agent_description: Some(proto::AgentDescription {
                    identifying_attributes: vec![],
                    non_identifying_attributes: vec![proto::KeyValue {
                        key: "ratio".into(),
                        value: Some(proto::AnyValue {
                            value: Some(proto::any_value::Value::DoubleValue(value)),
                        }),
                    }],
                }),
                ..Default::default()
            });
            let description = report.description.unwrap();
            let stored = serde_json::to_vec(&description).unwrap();
            let back: Description = serde_json::from_slice(&stored).unwrap();
            assert_eq!(back, description, "{value:e}");
            assert_eq!(
                back.non_identifying.get("ratio").unwrap().as_f64(),
                Some(value)
            );
        }
    }

    #[test]
    fn deep_health_trees_are_cut() {
        let mut h = proto::ComponentHealth::default();
        for _ in 0..100 {
            let mut parent = proto::ComponentHealth::default();
            parent.component_health_map.insert("c".into(), h);
            h = parent;
        }
        let mut depth = 0;
        let mut node = &health(h, 0);
        while let Some(child) = node.components.get("c") {
            node = child;
            depth += 1;
        }
        assert_eq!(depth, MAX_HEALTH_DEPTH - 1);
    }
}

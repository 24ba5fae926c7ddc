//! Writes the seed corpora of the OpAMP targets (`corpus/opamp_*/seed-*`): `AgentToServer`
//! messages as collectors send them, encoded with the server's own protobuf types. Run from
//! `fuzz/` with `cargo run --example seeds`; the fuzzers grow the corpora from there. (The text
//! targets' seeds, selectors, YAML and query strings, are plain files in their corpus.)

use std::io::Write as _;
use std::path::Path;

use opampd::proto;
use prost::Message as _;

fn main() -> std::io::Result<()> {
    let messages = messages();
    let ws: Vec<Vec<u8>> = messages
        .iter()
        .flat_map(|m| {
            let body = m.encode_to_vec();
            // With the header (every client but the oldest) and without (legacy).
            let mut framed = vec![0];
            framed.extend_from_slice(&body);
            [framed, body]
        })
        .collect();
    write("opamp_message", &ws)?;

    let mut http = Vec::new();
    for m in &messages {
        let body = m.encode_to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&body)?;
        let gzipped = gz.finish()?;
        for (form, bytes) in [(0u8, &body), (1, &body), (2, &gzipped), (3, &body)] {
            let mut seed = vec![form];
            seed.extend_from_slice(bytes);
            http.push(seed);
        }
    }
    write("opamp_http", &http)?;

    Ok(())
}

fn write(target: &str, seeds: &[Vec<u8>]) -> std::io::Result<()> {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed)?;
    }
    Ok(())
}

fn kv(key: &str, value: proto::any_value::Value) -> proto::KeyValue {
    proto::KeyValue {
        key: key.into(),
        value: Some(proto::AnyValue { value: Some(value) }),
    }
}

fn string(s: &str) -> proto::any_value::Value {
    proto::any_value::Value::StringValue(s.into())
}

/// The messages of a collector's life: first contact with everything, a heartbeat, a legacy uid,
/// a request for a new uid, status reports, goodbye.
fn messages() -> Vec<proto::AgentToServer> {
    use proto::any_value::Value;
    let uid = bytes::Bytes::from_static(&[
        0x01, 0x90, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01,
    ]);
    let description = proto::AgentDescription {
        identifying_attributes: vec![
            kv("service.name", string("otelcol-contrib")),
            kv("service.instance.id", string("0190-0000")),
            kv("service.version", string("0.110.0")),
        ],
        non_identifying_attributes: vec![
            kv("host.name", string("gw-1")),
            kv("os.type", string("linux")),
            kv("process.pid", Value::IntValue(4242)),
            kv("cpu.ratio", Value::DoubleValue(0.25)),
            kv("tls", Value::BoolValue(true)),
            kv(
                "tags",
                Value::ArrayValue(proto::ArrayValue {
                    values: vec![proto::AnyValue {
                        value: Some(string("edge")),
                    }],
                }),
            ),
            kv(
                "k8s",
                Value::KvlistValue(proto::KeyValueList {
                    values: vec![kv("pod", string("gw-1-abc"))],
                }),
            ),
            kv(
                "raw",
                Value::BytesValue(bytes::Bytes::from_static(b"\x00\x01")),
            ),
        ],
    };
    let health = proto::ComponentHealth {
        healthy: true,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        status: "StatusOK".into(),
        status_time_unix_nano: 1_700_000_001_000_000_000,
        component_health_map: [(
            "pipeline:traces".into(),
            proto::ComponentHealth {
                healthy: false,
                last_error: "exporter failed".into(),
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    };
    let effective = proto::EffectiveConfig {
        config_map: Some(proto::AgentConfigMap {
            config_map: [(
                String::new(),
                proto::AgentConfigFile {
                    body: bytes::Bytes::from_static(b"receivers:\n  otlp:\n"),
                    content_type: "text/yaml".into(),
                },
            )]
            .into(),
        }),
    };
    let components = proto::AvailableComponents {
        components: [(
            "receivers".into(),
            proto::ComponentDetails {
                metadata: vec![],
                sub_component_map: [
                    ("otlp".into(), proto::ComponentDetails::default()),
                    ("kafka".into(), proto::ComponentDetails::default()),
                ]
                .into(),
            },
        )]
        .into(),
        hash: bytes::Bytes::from_static(&[0xab; 32]),
    };
    let first = proto::AgentToServer {
        instance_uid: uid.clone(),
        sequence_num: 0,
        agent_description: Some(description),
        capabilities: 0x7fff,
        health: Some(health),
        effective_config: Some(effective),
        remote_config_status: Some(proto::RemoteConfigStatus {
            last_remote_config_hash: bytes::Bytes::from_static(&[1; 32]),
            status: proto::RemoteConfigStatuses::Applied as i32,
            error_message: String::new(),
        }),
        package_statuses: Some(proto::PackageStatuses {
            packages: [(
                "otelcol".into(),
                proto::PackageStatus {
                    name: "otelcol".into(),
                    agent_has_version: "0.110.0".into(),
                    server_offered_version: "0.111.0".into(),
                    status: proto::PackageStatusEnum::Installing as i32,
                    ..Default::default()
                },
            )]
            .into(),
            server_provided_all_packages_hash: bytes::Bytes::from_static(&[2; 32]),
            error_message: String::new(),
        }),
        available_components: Some(components),
        ..Default::default()
    };
    let heartbeat = proto::AgentToServer {
        instance_uid: uid.clone(),
        sequence_num: 7,
        capabilities: 0x7fff,
        ..Default::default()
    };
    let legacy = proto::AgentToServer {
        instance_uid: bytes::Bytes::from_static(b"01ARZ3NDEKTSV4RRFFQ69G5FAV"),
        sequence_num: 1,
        capabilities: 1,
        ..Default::default()
    };
    let new_uid = proto::AgentToServer {
        instance_uid: uid.clone(),
        flags: proto::AgentToServerFlags::RequestInstanceUid as u64,
        ..Default::default()
    };
    let failed = proto::AgentToServer {
        instance_uid: uid.clone(),
        sequence_num: 8,
        remote_config_status: Some(proto::RemoteConfigStatus {
            last_remote_config_hash: bytes::Bytes::from_static(&[3; 32]),
            status: proto::RemoteConfigStatuses::Failed as i32,
            error_message: "unknown receiver \"otlpx\"".into(),
        }),
        ..Default::default()
    };
    let goodbye = proto::AgentToServer {
        instance_uid: uid,
        sequence_num: 9,
        agent_disconnect: Some(proto::AgentDisconnect {}),
        ..Default::default()
    };
    vec![first, heartbeat, legacy, new_uid, failed, goodbye]
}

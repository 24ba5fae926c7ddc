//! A configuration version: OpenTelemetry Collector YAML files, checked when created, with the
//! deterministic hash collectors see as the OpAMP `config_hash` and the component types it needs.

use std::collections::{BTreeMap, BTreeSet};

use serde_yaml_ng::Value;
use sha2::Digest as _;

pub use crate::store::ConfigurationFile;

/// The sections of a collector configuration whose keys are components (`otlp`, `otlp/2`, …).
pub const COMPONENT_KINDS: [&str; 5] = [
    "receivers",
    "processors",
    "exporters",
    "extensions",
    "connectors",
];

/// A version ready to be stored: its files, their hash, and what they need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub files: BTreeMap<String, ConfigurationFile>,
    /// SHA-256 over the files, hex: the same files always give the same hash.
    pub hash: String,
    /// `kind/type`, sorted: `receivers/otlp`, `exporters/kafka`, …
    pub components: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigurationError {
    #[error("a configuration needs at least one file")]
    NoFiles,
    #[error("{0:?} is not a configuration name (1 to 100 letters, digits or ._-)")]
    BadName(String),
    #[error("{0:?} is not a file name (1 to 255 characters, no '/' or control characters)")]
    BadFileName(String),
    #[error("{file}: invalid YAML at line {line}, column {column}: {message}")]
    InvalidYaml {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: the top level must be a mapping")]
    NotAMapping { file: String },
    #[error("the configuration names no pipeline (service.pipelines is missing or empty)")]
    NoPipeline,
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains('/')
        && !name.chars().any(char::is_control)
}

/// The hash collectors are told: over each file's name, content type and body, length-prefixed so
/// that no two different sets of files can run together into the same bytes.
pub fn hash(files: &BTreeMap<String, ConfigurationFile>) -> String {
    let mut digest = sha2::Sha256::new();
    for (name, file) in files {
        for part in [
            name.as_bytes(),
            file.content_type.as_bytes(),
            file.body.as_bytes(),
        ] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    crate::collector::machine::hex(&digest.finalize())
}

/// `otlp/2` is of type `otlp`.
fn component_type(key: &str) -> &str {
    key.split('/').next().unwrap_or(key)
}

/// Checks every file and works out the version's hash and component needs.
pub fn prepare(
    name: &str,
    files: BTreeMap<String, ConfigurationFile>,
) -> Result<Prepared, ConfigurationError> {
    if !valid_name(name) {
        return Err(ConfigurationError::BadName(name.to_owned()));
    }
    if files.is_empty() {
        return Err(ConfigurationError::NoFiles);
    }
    let mut components = BTreeSet::new();
    let mut pipelines = false;
    for (file, content) in &files {
        if !valid_file_name(file) {
            return Err(ConfigurationError::BadFileName(file.clone()));
        }
        let document: Value = serde_yaml_ng::from_str(&content.body).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigurationError::InvalidYaml {
                file: file.clone(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        let Value::Mapping(top) = document else {
            return Err(ConfigurationError::NotAMapping { file: file.clone() });
        };
        for kind in COMPONENT_KINDS {
            if let Some(Value::Mapping(section)) = top.get(kind) {
                for key in section.keys().filter_map(Value::as_str) {
                    components.insert(format!("{kind}/{}", component_type(key)));
                }
            }
        }
        let declared = top
            .get("service")
            .and_then(|s| s.get("pipelines"))
            .and_then(Value::as_mapping)
            .is_some_and(|p| !p.is_empty());
        pipelines |= declared;
    }
    if !pipelines {
        return Err(ConfigurationError::NoPipeline);
    }
    Ok(Prepared {
        hash: hash(&files),
        files,
        components: components.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> BTreeMap<String, ConfigurationFile> {
        BTreeMap::from([(
            "collector.yaml".to_owned(),
            ConfigurationFile {
                content_type: "text/yaml".into(),
                body: body.into(),
            },
        )])
    }

    const GOOD: &str = "receivers:\n  otlp:\n  otlp/2:\n  kafka:\nprocessors:\n  batch:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp, kafka]\n      processors: [batch]\n      exporters: [debug]\n";

    #[test]
    fn components_hash_and_validation() {
        let prepared = prepare("gateway", one(GOOD)).unwrap();
        assert_eq!(
            prepared.components,
            [
                "exporters/debug",
                "processors/batch",
                "receivers/kafka",
                "receivers/otlp"
            ]
        );
        assert_eq!(prepared.hash.len(), 64);
        assert_eq!(
            prepare("gateway", one(GOOD)).unwrap().hash,
            prepared.hash,
            "deterministic"
        );
        let changed = prepare("gateway", one(&GOOD.replace("debug", "otlp"))).unwrap();
        assert_ne!(changed.hash, prepared.hash);
    }

    #[test]
    fn bad_configurations_say_why_and_where() {
        let err = prepare("gateway", one("receivers:\n  otlp: [\n")).unwrap_err();
        let ConfigurationError::InvalidYaml { line, file, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!((file.as_str(), *line), ("collector.yaml", 3));
        assert_eq!(
            prepare("gateway", one("receivers:\n  otlp:\n")).unwrap_err(),
            ConfigurationError::NoPipeline
        );
        assert!(matches!(
            prepare("gateway", one("- a list")).unwrap_err(),
            ConfigurationError::NotAMapping { .. }
        ));
        assert!(matches!(
            prepare("bad name", one(GOOD)),
            Err(ConfigurationError::BadName(_))
        ));
        assert_eq!(
            prepare("x", BTreeMap::new()),
            Err(ConfigurationError::NoFiles)
        );
    }
}

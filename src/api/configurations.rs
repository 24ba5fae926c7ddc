//! Configurations: create versions (checked and hashed), list them, read one, and diff two.
//! Creating a version changes nothing a collector runs; only a rollout sends it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Caller;
use super::collectors::{json_body, last, query_pairs};
use super::error::{ApiError, ErrorBody};
use super::view::rfc3339;
use crate::config::Role;
use crate::fleet::configuration::{self, ConfigurationFile};
use crate::store::ConfigurationVersion;

const YAML: &str = "text/yaml";
/// The file name a single-file configuration gets.
const DEFAULT_FILE: &str = "collector.yaml";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewConfiguration {
    /// 1 to 100 letters, digits or `._-`. A new name starts at version 1; an existing one gets
    /// its next version.
    pub name: String,
    /// File name to YAML text. Give this or `yaml`.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// A single-file configuration (stored as `collector.yaml`).
    pub yaml: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigurationVersionView {
    pub name: String,
    pub version: i64,
    /// SHA-256 (hex) over the files: the OpAMP `config_hash` collectors are sent.
    pub hash: String,
    /// The component types this version needs (`receivers/otlp`, ...).
    pub components: Vec<String>,
    pub created_at: String,
    /// File name to YAML text; left out of lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<BTreeMap<String, String>>,
}

impl ConfigurationVersionView {
    fn new(v: &ConfigurationVersion, with_files: bool) -> Self {
        Self {
            name: v.name.clone(),
            version: v.version,
            hash: v.hash.clone(),
            components: v.components.clone(),
            created_at: rfc3339(v.created_at),
            files: with_files.then(|| {
                v.files
                    .iter()
                    .map(|(name, f)| (name.clone(), f.body.clone()))
                    .collect()
            }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigurationList {
    /// Each configuration's latest version.
    pub items: Vec<ConfigurationVersionView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigurationHistory {
    pub name: String,
    /// Oldest first, without their files.
    pub versions: Vec<ConfigurationVersionView>,
}

/// Creates a configuration version; `200` with the latest version when nothing changed.
#[utoipa::path(post, path = "/api/v1/configurations", tag = "configurations",
    request_body = NewConfiguration,
    responses((status = 201, body = ConfigurationVersionView, description = "A new version"),
        (status = 200, body = ConfigurationVersionView, description = "Same as the latest version"),
        (status = 400, body = ErrorBody, description = "Invalid YAML (with its position) or no pipeline"),
        (status = 403, body = ErrorBody)))]
pub async fn create(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewConfiguration>, JsonRejection>,
) -> Result<(StatusCode, Json<ConfigurationVersionView>), ApiError> {
    caller.require(Role::Operator)?;
    let new = json_body(body)?;
    let mut texts = new.files;
    if let Some(yaml) = new.yaml {
        if !texts.is_empty() {
            return Err(ApiError::BadRequest("give files or yaml, not both".into()));
        }
        texts.insert(DEFAULT_FILE.to_owned(), yaml);
    }
    let files = texts
        .into_iter()
        .map(|(name, body)| {
            let file = ConfigurationFile {
                content_type: YAML.to_owned(),
                body,
            };
            (name, file)
        })
        .collect();
    let prepared = configuration::prepare(&new.name, files)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (version, created) = api
        .store
        .add_configuration(
            &new.name,
            &prepared.hash,
            &prepared.files,
            &prepared.components,
            SystemTime::now(),
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ConfigurationVersionView::new(&version, true))))
}

#[utoipa::path(get, path = "/api/v1/configurations", tag = "configurations",
    responses((status = 200, body = ConfigurationList)))]
pub async fn list(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ConfigurationList>, ApiError> {
    caller.require(Role::Viewer)?;
    let latest = api.store.configurations().await?;
    Ok(Json(ConfigurationList {
        items: latest
            .iter()
            .map(|v| ConfigurationVersionView::new(v, false))
            .collect(),
    }))
}

async fn versions_of(api: &ApiState, name: &str) -> Result<Vec<ConfigurationVersion>, ApiError> {
    let versions = api.store.configuration_versions(name).await?;
    if versions.is_empty() {
        return Err(ApiError::NotFound(format!("no configuration {name:?}")));
    }
    Ok(versions)
}

#[utoipa::path(get, path = "/api/v1/configurations/{name}", tag = "configurations",
    params(("name" = String, Path, description = "Configuration name")),
    responses((status = 200, body = ConfigurationHistory), (status = 404, body = ErrorBody)))]
pub async fn history(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<ConfigurationHistory>, ApiError> {
    caller.require(Role::Viewer)?;
    let versions = versions_of(&api, &name).await?;
    Ok(Json(ConfigurationHistory {
        name,
        versions: versions
            .iter()
            .map(|v| ConfigurationVersionView::new(v, false))
            .collect(),
    }))
}

async fn version_of(
    api: &ApiState,
    name: &str,
    version: i64,
) -> Result<ConfigurationVersion, ApiError> {
    api.store
        .configuration_version(name, version)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!("no version {version} of configuration {name:?}"))
        })
}

#[utoipa::path(get, path = "/api/v1/configurations/{name}/versions/{version}", tag = "configurations",
    params(("name" = String, Path, description = "Configuration name"),
        ("version" = i64, Path, description = "Version number, from 1")),
    responses((status = 200, body = ConfigurationVersionView), (status = 404, body = ErrorBody)))]
pub async fn version(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ConfigurationVersionView>, ApiError> {
    caller.require(Role::Viewer)?;
    let version = parse_version(&version)?;
    let found = version_of(&api, &name, version).await?;
    Ok(Json(ConfigurationVersionView::new(&found, true)))
}

fn parse_version(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| ApiError::BadRequest(format!("{text:?} is not a version number")))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileDiff {
    pub name: String,
    /// `added`, `removed`, `changed` or `unchanged`.
    pub status: &'static str,
    /// Unified diff of the file (empty when unchanged).
    pub diff: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConfigurationDiff {
    pub name: String,
    pub from: i64,
    pub to: i64,
    pub files: Vec<FileDiff>,
    /// Component types `to` needs and `from` did not.
    pub components_added: Vec<String>,
    pub components_removed: Vec<String>,
}

/// The diff's query string: the two version numbers, `from` and `to`.
pub fn diff_query(raw: Option<&str>) -> Result<(i64, i64), ApiError> {
    let pairs = query_pairs(raw, &["from", "to"])?;
    let number = |key: &str| {
        last(&pairs, key)
            .ok_or_else(|| ApiError::BadRequest(format!("{key} is required")))
            .and_then(parse_version)
    };
    Ok((number("from")?, number("to")?))
}

/// What changed between two versions, file by file.
#[utoipa::path(get, path = "/api/v1/configurations/{name}/diff", tag = "configurations",
    params(("name" = String, Path, description = "Configuration name"),
        ("from" = i64, Query, description = "The older version"),
        ("to" = i64, Query, description = "The newer version")),
    responses((status = 200, body = ConfigurationDiff), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn diff(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ConfigurationDiff>, ApiError> {
    caller.require(Role::Viewer)?;
    let (from, to) = diff_query(raw.as_deref())?;
    let (old, new) = (
        version_of(&api, &name, from).await?,
        version_of(&api, &name, to).await?,
    );
    let names: std::collections::BTreeSet<&String> =
        old.files.keys().chain(new.files.keys()).collect();
    let files = names
        .into_iter()
        .map(|file| {
            let before = old.files.get(file).map_or("", |f| f.body.as_str());
            let after = new.files.get(file).map_or("", |f| f.body.as_str());
            let status = match (old.files.contains_key(file), new.files.contains_key(file)) {
                (false, _) => "added",
                (_, false) => "removed",
                _ if before == after => "unchanged",
                _ => "changed",
            };
            let diff = if before == after {
                String::new()
            } else {
                similar::TextDiff::from_lines(before, after)
                    .unified_diff()
                    .header(&format!("{file} (v{from})"), &format!("{file} (v{to})"))
                    .to_string()
            };
            FileDiff {
                name: file.clone(),
                status,
                diff,
            }
        })
        .collect();
    let only_in = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|c| !b.contains(c)).cloned().collect()
    };
    Ok(Json(ConfigurationDiff {
        components_added: only_in(&new.components, &old.components),
        components_removed: only_in(&old.components, &new.components),
        name,
        from,
        to,
        files,
    }))
}

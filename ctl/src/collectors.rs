//! The collector commands: `get collectors`, `describe collector`, `history`, `label`, `forget`,
//! `restart` and `summary`.

use std::fmt::Write as _;

use clap::Args;
use reqwest::Method;
use serde_json::Value;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::client::{Answer, Client, CtlError};
use crate::output::{self, Format, age, labels, text, timestamp};
use crate::{Io, exit};

/// The API's largest page.
pub(crate) const PAGE: usize = 500;

/// The seven states in the order the documentation lists them.
const STATES: [&str; 7] = [
    "connected",
    "disconnected",
    "error",
    "configuring",
    "pending",
    "incompatible",
    "upgrading",
];

#[derive(Debug, Args)]
pub struct GetCollectors {
    /// Label selector, e.g. 'env=prod,region!=eu,tier in (a,b),gpu,!legacy'.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Only collectors in these states (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub state: Vec<String>,
    /// Only collectors with any of these facets: drifted, stale, degraded (repeat, or separate
    /// with commas).
    #[arg(long, value_delimiter = ',')]
    pub facet: Vec<String>,
    /// Only collectors that declare any of these custom capabilities.
    #[arg(long, value_delimiter = ',')]
    pub custom_capability: Vec<String>,
    /// Case-insensitive text in the id, name, host name or version.
    #[arg(short = 'q', long = "query")]
    pub query: Option<String>,
    /// `id` (default), `name`, `state`, `last_seen` or `state_since`; a leading '-' sorts descending.
    #[arg(long, allow_hyphen_values = true)]
    pub sort: Option<String>,
    /// At most this many collectors (default: all of them, page after page).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Collectors asked for per request, 1 to 500.
    #[arg(long, default_value_t = PAGE, value_parser = chunk_size)]
    pub chunk_size: usize,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct CollectorId {
    /// The collector's id (a UUID).
    pub id: String,
}

#[derive(Debug, Args)]
pub struct Describe {
    /// The collector's id (a UUID).
    pub id: String,
    /// `json` or `yaml`: the collector as the API returned it.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct History {
    /// The collector's id (a UUID).
    pub id: String,
    /// At most this many transitions, newest first (default: the whole history).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Transitions asked for per request, 1 to 500.
    #[arg(long, default_value_t = PAGE, value_parser = chunk_size)]
    pub chunk_size: usize,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct Label {
    /// The collector's id (a UUID).
    pub id: String,
    /// `key=value` sets a label, `key-` removes one (as kubectl writes them).
    #[arg(required = true, allow_hyphen_values = true)]
    pub changes: Vec<String>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct Summary {
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

/// `--chunk-size`: the API serves pages of 1 to 500.
fn chunk_size(text: &str) -> Result<usize, String> {
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=PAGE).contains(n))
        .ok_or_else(|| format!("{text:?} is not a number from 1 to {PAGE}"))
}

/// What several pages of one list add up to: each item's exact text and its parsed value, and
/// the text of the one page when a single page was all there was.
pub(crate) struct Listing {
    pub(crate) items: Vec<(Box<RawValue>, Value)>,
    next_cursor: Option<String>,
    single_page: Option<String>,
}

impl Listing {
    /// `{"items": [...], "next_cursor": ...}` exactly as the API sent it when one page held
    /// everything; else the same shape with every page's items, each as the API sent it.
    pub(crate) fn text(&self) -> String {
        if let Some(text) = &self.single_page {
            return text.clone();
        }
        let items: Vec<&str> = self.items.iter().map(|(raw, _)| raw.get()).collect();
        let cursor = serde_json::to_string(&self.next_cursor).unwrap_or_else(|_| "null".into());
        format!(
            "{{\"items\":[{}],\"next_cursor\":{cursor}}}",
            items.join(",")
        )
    }
}

#[derive(serde::Deserialize)]
struct Page {
    items: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
}

/// Reads `path` page after page (keyset cursors, so no item twice) until `limit` items or the end.
pub(crate) async fn list(
    client: &Client,
    path: &str,
    query: &[(&str, String)],
    limit: Option<usize>,
    chunk: usize,
) -> Result<Listing, CtlError> {
    let mut listing = Listing {
        items: Vec::new(),
        next_cursor: None,
        single_page: None,
    };
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let want = limit.map_or(chunk, |l| (l - listing.items.len()).min(chunk));
        let mut params = query.to_vec();
        params.push(("limit", want.to_string()));
        if let Some(cursor) = &cursor {
            params.push(("cursor", cursor.clone()));
        }
        let answer = client.get(path, &params).await?;
        let page: Page = serde_json::from_str(&answer.text)
            .map_err(|e| CtlError::Protocol(format!("{path}: {e}")))?;
        pages += 1;
        for raw in page.items {
            let value = serde_json::from_str(raw.get())
                .map_err(|e| CtlError::Protocol(format!("{path}: {e}")))?;
            listing.items.push((raw, value));
        }
        listing.next_cursor.clone_from(&page.next_cursor);
        let full = limit.is_some_and(|l| listing.items.len() >= l);
        match page.next_cursor {
            Some(next) if !full => cursor = Some(next),
            _ => {
                if pages == 1 {
                    listing.single_page = Some(answer.text);
                }
                return Ok(listing);
            }
        }
    }
}

pub async fn get(client: &Client, args: GetCollectors, io: &mut Io<'_>) -> Result<u8, CtlError> {
    if args.limit == Some(0) {
        return Err(CtlError::Usage("--limit must be at least 1".into()));
    }
    let mut query = Vec::new();
    if let Some(selector) = args.selector {
        query.push(("selector", selector));
    }
    for (name, values) in [
        ("state", &args.state),
        ("facet", &args.facet),
        ("custom_capability", &args.custom_capability),
    ] {
        if !values.is_empty() {
            query.push((name, values.join(",")));
        }
    }
    if let Some(q) = args.query {
        query.push(("q", q));
    }
    if let Some(sort) = args.sort {
        query.push(("sort", sort));
    }
    let listing = list(
        client,
        "/api/v1/collectors",
        &query,
        args.limit,
        args.chunk_size,
    )
    .await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &listing.text())?;
        return Ok(exit::OK);
    }
    if listing.items.is_empty() {
        writeln!(io.err, "No collectors found.")?;
        return Ok(exit::OK);
    }
    let now = OffsetDateTime::now_utc();
    let wide = args.output == Format::Wide;
    let rows = listing
        .items
        .iter()
        .map(|(_, c)| {
            let mut row = vec![
                text(&c["id"], "-").to_owned(),
                text(&c["name"], "-").to_owned(),
                state_with_facets(c),
            ];
            if wide {
                row.extend([
                    text(&c["state_reason"], "-").to_owned(),
                    text(&c["transport"], "-").to_owned(),
                    text(&c["version"], "-").to_owned(),
                    text(&c["description"]["non_identifying"]["host.name"], "-").to_owned(),
                    labels(&c["labels"]),
                    timestamp(&c["last_seen"]),
                    timestamp(&c["state_since"]),
                ]);
            } else {
                row.extend([
                    text(&c["version"], "-").to_owned(),
                    labels(&c["labels"]),
                    age(&c["state_since"], now),
                ]);
            }
            row
        })
        .collect();
    let header: &[&str] = if wide {
        &[
            "ID",
            "NAME",
            "STATE",
            "REASON",
            "TRANSPORT",
            "VERSION",
            "HOST",
            "LABELS",
            "LAST SEEN",
            "SINCE",
        ]
    } else {
        &["ID", "NAME", "STATE", "VERSION", "LABELS", "SINCE"]
    };
    write!(io.out, "{}", output::table(header, rows))?;
    Ok(exit::OK)
}

fn collector_path(id: &str) -> String {
    format!("/api/v1/collectors/{id}")
}

/// How many transitions `describe` shows.
const RECENT: usize = 10;

pub async fn describe(client: &Client, args: Describe, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let path = collector_path(&args.id);
    let answer = client.get(&path, &[]).await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &answer.text)?;
        return Ok(exit::OK);
    }
    let history = client
        .get(
            &format!("{path}/transitions"),
            &[("limit", RECENT.to_string())],
        )
        .await?;
    let text = render_collector(&answer.value, &history.value, OffsetDateTime::now_utc());
    write!(io.out, "{text}")?;
    Ok(exit::OK)
}

/// `key:` padded so the values line up.
fn field(out: &mut String, key: &str, value: &str) {
    let _ = writeln!(out, "{:<18}{value}", format!("{key}:"));
}

fn attributes(out: &mut String, title: &str, map: &Value) {
    if let Some(map) = map.as_object().filter(|m| !m.is_empty()) {
        let _ = writeln!(out, "  {title}:");
        for (key, value) in map {
            let shown = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            let _ = writeln!(out, "    {key}: {shown}");
        }
    }
}

fn health(out: &mut String, name: &str, health: &Value, depth: usize) {
    let indent = "  ".repeat(depth);
    let verdict = if health["healthy"].as_bool() == Some(true) {
        "healthy"
    } else {
        "unhealthy"
    };
    let mut line = format!("{indent}{name}: {verdict}");
    if let Some(status) = health["status"].as_str().filter(|s| !s.is_empty()) {
        let _ = write!(line, " ({status})");
    }
    if let Some(error) = health["last_error"].as_str().filter(|s| !s.is_empty()) {
        let _ = write!(line, ": {error}");
    }
    let _ = writeln!(out, "{line}");
    if let Some(components) = health["components"].as_object() {
        for (name, component) in components {
            self::health(out, name, component, depth + 1);
        }
    }
}

/// `describe collector`: the record in sections, kubectl-style, then its recent history.
fn render_collector(c: &Value, history: &Value, now: OffsetDateTime) -> String {
    let mut out = String::new();
    identity(&mut out, c, now);
    reports(&mut out, c);
    let _ = writeln!(out, "Recent transitions:");
    let items = history["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        let _ = writeln!(out, "  <none>");
    } else {
        let table = output::table(&TRANSITION_HEADER, transition_rows(&items));
        for line in table.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

fn facet_names(c: &Value) -> Vec<&str> {
    c["facets"]
        .as_array()
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The state, with its facets when it has any: `connected (drifted, degraded)`.
fn state_with_facets(c: &Value) -> String {
    let state = text(&c["state"], "-");
    let facets = facet_names(c);
    if facets.is_empty() {
        state.to_owned()
    } else {
        format!("{state} ({})", facets.join(", "))
    }
}

/// Who it is, its state and connection, its labels and capabilities.
fn identity(out: &mut String, c: &Value, now: OffsetDateTime) {
    field(out, "ID", text(&c["id"], "-"));
    field(out, "Name", text(&c["name"], "-"));
    field(out, "Version", text(&c["version"], "-"));
    let mut state = format!(
        "{} ({}) since {} ({} ago)",
        text(&c["state"], "-"),
        text(&c["state_reason"], "-"),
        timestamp(&c["state_since"]),
        age(&c["state_since"], now)
    );
    if let Some(message) = c["state_message"].as_str().filter(|m| !m.is_empty()) {
        let _ = write!(state, ": {message}");
    }
    field(out, "State", &state);
    let facets = facet_names(c);
    if !facets.is_empty() {
        field(out, "Facets", &facets.join(", "));
    }
    let connection = if c["connected"].as_bool() == Some(true) {
        format!(
            "yes, over {} since {}",
            text(&c["transport"], "?"),
            timestamp(&c["connected_since"])
        )
    } else {
        "no".to_owned()
    };
    field(out, "Connected", &connection);
    field(
        out,
        "Last seen",
        &format!(
            "{} ({} ago)",
            timestamp(&c["last_seen"]),
            age(&c["last_seen"], now)
        ),
    );
    field(out, "Labels", &labels(&c["labels"]).replace(',', ", "));
    if let Some(reassigned) = c["reassigned"].as_object() {
        field(
            out,
            "Reassigned",
            &Value::Object(reassigned.clone()).to_string(),
        );
    }
    let capabilities: Vec<&str> = c["capabilities"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    field(out, "Capabilities", &capabilities.join(", "));
}

/// What the collector reported: description, health, configurations, packages, components.
fn reports(out: &mut String, c: &Value) {
    let _ = writeln!(out, "Description:");
    attributes(out, "identifying", &c["description"]["identifying"]);
    attributes(out, "non-identifying", &c["description"]["non_identifying"]);
    if c["health"].is_object() {
        let _ = writeln!(out, "Health:");
        health(out, "collector", &c["health"], 1);
    }
    if c["remote_config"].is_object() {
        field(out, "Remote config", &status_line(&c["remote_config"]));
    }
    if c["effective_config"].is_object() {
        field(
            out,
            "Effective config",
            &format!("hash {}", short_hash(&c["effective_config"]["hash"])),
        );
    }
    if c["connection_settings"].is_object() {
        field(out, "Connection", &status_line(&c["connection_settings"]));
    }
    if let Some(packages) = c["packages"]["packages"]
        .as_object()
        .filter(|p| !p.is_empty())
    {
        let _ = writeln!(out, "Packages:");
        for (name, package) in packages {
            let mut line = format!(
                "  {name}: {} {}",
                text(&package["version"], "-"),
                text(&package["status"], "-")
            );
            if let Some(offered) = package["offered_version"]
                .as_str()
                .filter(|v| !v.is_empty())
            {
                let _ = write!(line, " (offered {offered})");
            }
            if let Some(error) = package["error_message"].as_str().filter(|e| !e.is_empty()) {
                let _ = write!(line, ": {error}");
            }
            let _ = writeln!(out, "{line}");
        }
    }
    if let Some(kinds) = c["available_components"]["components"].as_object() {
        let _ = writeln!(out, "Components:");
        for (kind, types) in kinds {
            let types: Vec<&str> = types
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let _ = writeln!(out, "  {kind}: {}", types.join(", "));
        }
    }
}

/// A reported status of something we offered: `applied (hash 0123456789ab): error`.
fn status_line(status: &Value) -> String {
    let mut line = format!(
        "{} (hash {})",
        text(&status["status"], "-"),
        short_hash(&status["hash"])
    );
    if let Some(error) = status["error_message"].as_str().filter(|e| !e.is_empty()) {
        let _ = write!(line, ": {error}");
    }
    line
}

/// The first 12 hex digits: enough to tell versions apart at a glance.
pub fn short_hash(hash: &Value) -> String {
    let hash = text(hash, "-");
    hash.chars().take(12).collect()
}

const TRANSITION_HEADER: [&str; 6] = ["AT", "FROM", "TO", "REASON", "CAUSE", "MESSAGE"];

fn transition_rows(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|t| {
            vec![
                timestamp(&t["at"]),
                text(&t["from"], "-").to_owned(),
                text(&t["to"], "-").to_owned(),
                text(&t["reason"], "-").to_owned(),
                text(&t["cause"], "-").to_owned(),
                text(&t["message"], "").to_owned(),
            ]
        })
        .collect()
}

pub async fn history(client: &Client, args: History, io: &mut Io<'_>) -> Result<u8, CtlError> {
    if args.limit == Some(0) {
        return Err(CtlError::Usage("--limit must be at least 1".into()));
    }
    let path = format!("{}/transitions", collector_path(&args.id));
    let listing = list(client, &path, &[], args.limit, args.chunk_size).await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &listing.text())?;
        return Ok(exit::OK);
    }
    let items: Vec<Value> = listing.items.into_iter().map(|(_, v)| v).collect();
    write!(
        io.out,
        "{}",
        output::table(&TRANSITION_HEADER, transition_rows(&items))
    )?;
    Ok(exit::OK)
}

/// `k=v` sets, `k-` removes: the JSON merge patch the API takes.
fn label_patch(changes: &[String]) -> Result<serde_json::Map<String, Value>, CtlError> {
    let mut patch = serde_json::Map::new();
    for change in changes {
        let (key, value) = if let Some((key, value)) = change.split_once('=') {
            (key, Value::String(value.to_owned()))
        } else if let Some(key) = change.strip_suffix('-') {
            (key, Value::Null)
        } else {
            return Err(CtlError::Usage(format!(
                "{change:?}: write key=value to set a label or key- to remove one"
            )));
        };
        if key.is_empty() {
            return Err(CtlError::Usage(format!("{change:?}: the key is empty")));
        }
        if patch.insert(key.to_owned(), value).is_some() {
            return Err(CtlError::Usage(format!("label {key:?} is given twice")));
        }
    }
    Ok(patch)
}

pub async fn label(client: &Client, args: Label, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let changes = label_patch(&args.changes)?;
    let path = format!("{}/labels", collector_path(&args.id));
    let answer = client
        .send(Method::PATCH, &path, &[], Some(&Value::Object(changes)))
        .await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &answer.text)?;
    } else {
        writeln!(
            io.out,
            "collector {} labelled: {}",
            args.id,
            labels(&answer.value["labels"])
        )?;
    }
    Ok(exit::OK)
}

pub async fn forget(client: &Client, args: CollectorId, io: &mut Io<'_>) -> Result<u8, CtlError> {
    client
        .send(Method::DELETE, &collector_path(&args.id), &[], None)
        .await?;
    writeln!(io.out, "collector {} forgotten", args.id)?;
    Ok(exit::OK)
}

pub async fn restart(client: &Client, args: CollectorId, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let path = format!("{}/restart", collector_path(&args.id));
    client.send(Method::POST, &path, &[], None).await?;
    writeln!(io.out, "restart sent to collector {}", args.id)?;
    Ok(exit::OK)
}

pub async fn summary(client: &Client, args: Summary, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let Answer { text, value, .. } = client.get("/api/v1/summary", &[]).await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &text)?;
        return Ok(exit::OK);
    }
    let mut rows: Vec<Vec<String>> = STATES
        .iter()
        .map(|s| {
            let n = value["by_state"][*s].as_u64().unwrap_or(0);
            vec![(*s).to_owned(), n.to_string()]
        })
        .collect();
    rows.push(vec![
        "total".to_owned(),
        value["total"].as_u64().unwrap_or(0).to_string(),
    ]);
    write!(io.out, "{}", output::table(&["STATE", "COLLECTORS"], rows))?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_changes_become_a_merge_patch() {
        let patch = label_patch(&["env=prod".into(), "legacy-".into(), "a=b=c".into()]);
        assert_eq!(
            patch.ok().map(Value::Object),
            Some(serde_json::json!({"env": "prod", "legacy": null, "a": "b=c"}))
        );
        assert!(label_patch(&["env".into()]).is_err());
        assert!(label_patch(&["=x".into()]).is_err());
        assert!(label_patch(&["a=1".into(), "a-".into()]).is_err());
    }
}

//! The configuration commands: `config apply|list|get|versions|diff`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{Client, CtlError};
use crate::collectors::short_hash;
use crate::output::{self, Format, number, text, timestamp};
use crate::{Io, exit};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Store a new version of a configuration from files (nothing is sent to collectors; a
    /// rollout does that). Unchanged files store nothing and say which version they are.
    Apply(Apply),
    /// Every configuration with its latest version.
    List(OutputOnly),
    /// A version's files (the latest unless --version is given).
    Get(Get),
    /// A configuration's versions, oldest first.
    Versions(Versions),
    /// What changed between two versions, file by file.
    Diff(Diff),
}

#[derive(Debug, Args)]
pub struct Apply {
    /// The configuration's name.
    pub name: String,
    /// A YAML file of the configuration; repeat for several (each is stored under its file name).
    #[arg(short = 'f', long = "file", required = true)]
    pub files: Vec<PathBuf>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct OutputOnly {
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct Get {
    pub name: String,
    /// The version (default: the latest).
    #[arg(long)]
    pub version: Option<i64>,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct Versions {
    pub name: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct Diff {
    pub name: String,
    /// The older version.
    #[arg(long)]
    pub from: i64,
    /// The newer version.
    #[arg(long)]
    pub to: i64,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

pub async fn run(client: &Client, command: ConfigCommand, io: &mut Io<'_>) -> Result<u8, CtlError> {
    match command {
        ConfigCommand::Apply(args) => apply(client, args, io).await,
        ConfigCommand::List(args) => list(client, args, io).await,
        ConfigCommand::Get(args) => get(client, args, io).await,
        ConfigCommand::Versions(args) => versions(client, args, io).await,
        ConfigCommand::Diff(args) => diff(client, args, io).await,
    }
}

fn name_path(name: &str) -> String {
    format!("/api/v1/configurations/{name}")
}

async fn apply(client: &Client, args: Apply, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let mut files = BTreeMap::new();
    for path in &args.files {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| CtlError::Usage(format!("{}: not a file name", path.display())))?;
        let body = std::fs::read_to_string(path).map_err(|source| CtlError::File {
            what: path.display().to_string(),
            source,
        })?;
        if files.insert(name.to_owned(), body).is_some() {
            return Err(CtlError::Usage(format!(
                "two files are named {name:?}; a configuration's files need distinct names"
            )));
        }
    }
    let body = json!({"name": args.name, "files": files});
    let answer = client
        .send(Method::POST, "/api/v1/configurations", &[], Some(&body))
        .await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &answer.text)?;
        return Ok(exit::OK);
    }
    let version = number(&answer.value["version"], "?");
    let hash = short_hash(&answer.value["hash"]);
    if answer.status == StatusCode::CREATED {
        writeln!(
            io.out,
            "configuration {} version {version} created (hash {hash})",
            args.name
        )?;
    } else {
        writeln!(
            io.out,
            "configuration {} unchanged: the files are version {version} (hash {hash})",
            args.name
        )?;
    }
    Ok(exit::OK)
}

fn version_rows(items: &[Value], with_name: bool) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|v| {
            let components: Vec<&str> = v["components"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut row = Vec::new();
            if with_name {
                row.push(text(&v["name"], "-").to_owned());
            }
            row.extend([
                number(&v["version"], "-"),
                short_hash(&v["hash"]),
                components.join(","),
                timestamp(&v["created_at"]),
            ]);
            row
        })
        .collect()
}

async fn list(client: &Client, args: OutputOnly, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let answer = client.get("/api/v1/configurations", &[]).await?;
    let Some(items) = output::items(io, args.output, &answer, "configurations")? else {
        return Ok(exit::OK);
    };
    let header = ["NAME", "LATEST", "HASH", "COMPONENTS", "CREATED"];
    write!(
        io.out,
        "{}",
        output::table(&header, version_rows(&items, true))
    )?;
    Ok(exit::OK)
}

async fn versions(client: &Client, args: Versions, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let answer = client.get(&name_path(&args.name), &[]).await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &answer.text)?;
        return Ok(exit::OK);
    }
    let items = answer.value["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let header = ["VERSION", "HASH", "COMPONENTS", "CREATED"];
    write!(
        io.out,
        "{}",
        output::table(&header, version_rows(&items, false))
    )?;
    Ok(exit::OK)
}

async fn get(client: &Client, args: Get, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let version = if let Some(version) = args.version {
        version
    } else {
        let history = client.get(&name_path(&args.name), &[]).await?;
        history.value["versions"]
            .as_array()
            .and_then(|v| v.last())
            .and_then(|v| v["version"].as_i64())
            .ok_or_else(|| CtlError::Protocol(format!("{} has no versions", args.name)))?
    };
    let path = format!("{}/versions/{version}", name_path(&args.name));
    let answer = client.get(&path, &[]).await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &answer.text)?;
        return Ok(exit::OK);
    }
    let files = answer.value["files"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    // One file is printed as it is, ready to be saved; several each get a heading comment.
    let several = files.len() > 1;
    for (name, body) in files {
        if several {
            writeln!(io.out, "# {name}")?;
        }
        let body = body.as_str().unwrap_or_default();
        write!(io.out, "{body}")?;
        if !body.ends_with('\n') {
            writeln!(io.out)?;
        }
    }
    Ok(exit::OK)
}

async fn diff(client: &Client, args: Diff, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let query = [("from", args.from.to_string()), ("to", args.to.to_string())];
    let path = format!("{}/diff", name_path(&args.name));
    let answer = client.get(&path, &query).await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &answer.text)?;
        return Ok(exit::OK);
    }
    let d = &answer.value;
    let mut changed = false;
    for file in d["files"].as_array().cloned().unwrap_or_default() {
        let status = text(&file["status"], "?");
        if status == "unchanged" {
            continue;
        }
        changed = true;
        writeln!(io.out, "{} ({status})", text(&file["name"], "?"))?;
        write!(io.out, "{}", text(&file["diff"], ""))?;
    }
    if !changed {
        writeln!(io.out, "no file changed")?;
    }
    for (key, title) in [
        ("components_added", "components added"),
        ("components_removed", "components removed"),
    ] {
        let list: Vec<&str> = d[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !list.is_empty() {
            writeln!(io.out, "{title}: {}", list.join(", "))?;
        }
    }
    Ok(exit::OK)
}

//! Connection settings offers and custom messages: `offer apply|list|get|delete` and `message`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::{Client, CtlError};
use crate::collectors::short_hash;
use crate::configs::OutputOnly;
use crate::output::{self, Format, text, timestamp};
use crate::{Io, exit};

#[derive(Debug, Subcommand)]
pub enum OfferCommand {
    /// Create or replace an offer from a JSON file (`{"name", "selector", "opamp", "own_metrics",
    /// ...}`, as `POST /api/v1/connection-settings` takes it).
    Apply(Apply),
    /// Every offer.
    List(OutputOnly),
    /// One offer and its settings.
    Get(Named),
    /// Delete an offer (collectors keep what they applied).
    Delete(Named),
}

#[derive(Debug, Args)]
pub struct Apply {
    /// The offer as JSON.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct Named {
    pub name: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

/// A custom message to one collector, or to every connected one a selector picks.
#[derive(Debug, Args)]
pub struct Message {
    /// The collector's id; leave out and give `--selector` to reach several.
    pub id: Option<String>,
    /// Label selector of the collectors (with no id).
    #[arg(short = 'l', long, conflicts_with = "id")]
    pub selector: Option<String>,
    /// The custom capability the message belongs to; collectors must declare it.
    #[arg(long)]
    pub capability: String,
    /// The message's type within its capability.
    #[arg(long = "type")]
    pub kind: String,
    /// The data, base64.
    #[arg(long, default_value = "")]
    pub data: String,
}

pub async fn run(client: &Client, command: OfferCommand, io: &mut Io<'_>) -> Result<u8, CtlError> {
    match command {
        OfferCommand::Apply(args) => apply(client, args, io).await,
        OfferCommand::List(args) => list(client, args, io).await,
        OfferCommand::Get(args) => get(client, args, io).await,
        OfferCommand::Delete(args) => {
            client
                .send(Method::DELETE, &offer_path(&args.name), &[], None)
                .await?;
            writeln!(io.out, "offer {} deleted", args.name)?;
            Ok(exit::OK)
        }
    }
}

fn offer_path(name: &str) -> String {
    format!("/api/v1/connection-settings/{name}")
}

async fn apply(client: &Client, args: Apply, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let what = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file).map_err(|source| CtlError::File {
        what: what.clone(),
        source,
    })?;
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| CtlError::Usage(format!("{what}: not JSON: {e}")))?;
    let answer = client
        .send(
            Method::POST,
            "/api/v1/connection-settings",
            &[],
            Some(&body),
        )
        .await?;
    let name = output::text(&answer.value["name"], "?");
    let hash = short_hash(&answer.value["hash"]);
    let done = if answer.status == StatusCode::CREATED {
        "created"
    } else {
        "replaced"
    };
    writeln!(io.out, "offer {name} {done} (hash {hash})")?;
    Ok(exit::OK)
}

/// The classes an offer gives, in the protocol's order.
fn classes(settings: &Value) -> String {
    let mut names: Vec<String> = ["opamp", "own_metrics", "own_traces", "own_logs"]
        .iter()
        .filter(|c| settings[**c].is_object())
        .map(|c| (*c).to_owned())
        .collect();
    if let Some(others) = settings["other_connections"].as_object() {
        names.extend(others.keys().map(|k| format!("other:{k}")));
    }
    names.join(",")
}

fn rows(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|o| {
            vec![
                text(&o["name"], "-").to_owned(),
                text(&o["selector"], "<all>").to_owned(),
                classes(&o["settings"]),
                short_hash(&o["hash"]),
                timestamp(&o["updated_at"]),
            ]
        })
        .collect()
}

const HEADER: [&str; 5] = ["NAME", "SELECTOR", "CLASSES", "HASH", "UPDATED"];

async fn list(client: &Client, args: OutputOnly, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let answer = client.get("/api/v1/connection-settings", &[]).await?;
    let Some(items) = output::items(io, args.output, &answer, "offers")? else {
        return Ok(exit::OK);
    };
    write!(io.out, "{}", output::table(&HEADER, rows(&items)))?;
    Ok(exit::OK)
}

async fn get(client: &Client, args: Named, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let answer = client.get(&offer_path(&args.name), &[]).await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &answer.text)?;
        return Ok(exit::OK);
    }
    write!(
        io.out,
        "{}",
        output::table(&HEADER, rows(std::slice::from_ref(&answer.value)))
    )?;
    let settings = serde_json::to_string_pretty(&answer.value["settings"])
        .map_err(|e| CtlError::Protocol(e.to_string()))?;
    writeln!(io.out, "{settings}")?;
    Ok(exit::OK)
}

pub async fn message(client: &Client, args: Message, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let mut body = json!({"capability": args.capability, "type": args.kind, "data": args.data});
    let path = match (&args.id, &args.selector) {
        (Some(id), _) => format!("/api/v1/collectors/{id}/custom-messages"),
        (None, Some(selector)) => {
            body["selector"] = json!(selector);
            "/api/v1/custom-messages".to_owned()
        }
        (None, None) => {
            return Err(CtlError::Usage(
                "give a collector id, or --selector for several".into(),
            ));
        }
    };
    let answer = client.send(Method::POST, &path, &[], Some(&body)).await?;
    if let Some(id) = &args.id {
        writeln!(io.out, "message sent to collector {id}")?;
        return Ok(exit::OK);
    }
    let sent = answer.value["sent"].as_array().map_or(0, Vec::len);
    writeln!(io.out, "message sent to {sent} collectors")?;
    for skipped in answer.value["skipped"].as_array().into_iter().flatten() {
        writeln!(
            io.out,
            "  skipped {}: {}",
            text(&skipped["id"], "?"),
            text(&skipped["reason"], "?")
        )?;
    }
    Ok(exit::OK)
}

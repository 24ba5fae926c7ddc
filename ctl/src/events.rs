//! `opampctl events`: the fleet's transitions as they happen, from the API's event stream, resumed
//! from the last event seen when the connection drops.

use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::client::{Client, CtlError};
use crate::output::{self, Format, text, timestamp};
use crate::sse::{Frame, Parser};
use crate::{Io, exit};

/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`] while the server is away.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct Events {
    /// Label selector on the collectors, e.g. 'env=prod'.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Only transitions into these states (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub state: Vec<String>,
    /// Keep following the stream until interrupted, reconnecting when it drops.
    #[arg(short = 'f', long, required_unless_present = "count")]
    pub follow: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Start after this event id (the ID column; `-o json` lines carry no id, so use the table
    /// forms to resume by hand). Default: from now.
    #[arg(long)]
    pub since: Option<String>,
    /// `table` prints one aligned line per event; `json` and `yaml` each event's data as the API
    /// sent it (one JSON object per line, or one YAML document per event).
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

/// Writes one event; the table form is fixed-width so lines printed over time still line up.
fn print(frame: &Frame, format: Format, io: &mut Io<'_>) -> Result<(), CtlError> {
    match format {
        Format::Json => writeln!(io.out, "{}", frame.data)?,
        Format::Yaml => {
            writeln!(io.out, "---")?;
            output::raw(io.out, Format::Yaml, &frame.data)?;
        }
        Format::Table | Format::Wide => {
            let event: Value = serde_json::from_str(&frame.data)
                .map_err(|e| CtlError::Protocol(format!("event data is not JSON: {e}")))?;
            writeln!(
                io.out,
                "{:<8} {:<20} {:<36} {:>12} -> {:<12} {:<25} {}",
                frame.id.as_deref().unwrap_or("-"),
                timestamp(&event["at"]),
                text(&event["collector_id"], "-"),
                text(&event["from"], "-"),
                text(&event["to"], "-"),
                text(&event["reason"], "-"),
                text(&event["message"], "")
            )?;
        }
    }
    io.out.flush()?;
    Ok(())
}

pub async fn run(client: &Client, args: Events, io: &mut Io<'_>) -> Result<u8, CtlError> {
    if args.count == Some(0) {
        return Ok(exit::OK);
    }
    let mut query = Vec::new();
    if let Some(selector) = &args.selector {
        query.push(("selector", selector.clone()));
    }
    if !args.state.is_empty() {
        query.push(("state", args.state.join(",")));
    }
    if matches!(args.output, Format::Table | Format::Wide) {
        writeln!(
            io.out,
            "{:<8} {:<20} {:<36} {:>12}    {:<12} {:<25} MESSAGE",
            "ID", "AT", "COLLECTOR", "FROM", "TO", "REASON"
        )?;
    }
    // Every event printed moves this on, so a reconnection asks for exactly what came after it.
    // Before the first event (and without --since) there is no position to resume from: a drop
    // then resumes from the server's present, as a fresh start would.
    let mut last_id = args.since.clone();
    let mut printed = 0;
    let mut backoff = FIRST_BACKOFF;
    let mut connected_once = false;
    loop {
        let response = match client
            .stream("/api/v1/events", &query, last_id.as_deref())
            .await
        {
            Ok(response) => response,
            // The first connection's failure is the answer (a bad selector, a wrong key, no
            // server); later ones are the stream being away, waited out.
            Err(err) if connected_once && err.is_transient() => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(err) => return Err(err),
        };
        if connected_once {
            writeln!(
                io.err,
                "opampctl: reconnected; resuming after event {}",
                last_id.as_deref().unwrap_or("(none yet)")
            )?;
        }
        connected_once = true;
        backoff = FIRST_BACKOFF;
        let mut parser = Parser::default();
        let mut response = response;
        let why = loop {
            match response.chunk().await {
                Ok(Some(bytes)) => {
                    for frame in parser.push(&bytes) {
                        if frame.event != "transition" {
                            continue;
                        }
                        print(&frame, args.output, io)?;
                        if frame.id.is_some() {
                            last_id.clone_from(&frame.id);
                        }
                        printed += 1;
                        if args.count.is_some_and(|n| printed >= n) {
                            return Ok(exit::OK);
                        }
                    }
                }
                Ok(None) => break "the server closed the stream".to_owned(),
                Err(err) => break format!("the stream broke: {err}"),
            }
        };
        writeln!(io.err, "opampctl: {why}; reconnecting")?;
        tokio::time::sleep(backoff).await;
    }
}

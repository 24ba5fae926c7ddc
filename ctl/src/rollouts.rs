//! Rollouts and upgrades: start one (or ask what it would do), list them, show one, pause, resume
//! or cancel it, and watch it to its end with a live bar per outcome.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::client::{Client, CtlError};
use crate::collectors;
use crate::output::{self, Format, OUTCOMES, number, payload, progress, text, timestamp};
use crate::{Io, exit};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a rollout of a configuration version to the collectors a selector matches.
    Start(Start),
    /// Every rollout and upgrade, newest first.
    List(ListArgs),
    /// A rollout's status, progress and each collector's outcome.
    Status(Status),
    /// Pause a running rollout: no new batch is sent.
    Pause(Id),
    /// Resume a paused rollout (the failures so far are accepted).
    Resume(Id),
    /// Cancel a rollout: queued collectors go back to their previous state.
    Cancel(Id),
    /// Follow a rollout until it completes, pauses or is cancelled (exit code says which).
    Watch(Watch),
}

#[derive(Debug, Subcommand)]
pub enum UpgradeCommand {
    /// Offer a package to the collectors a selector matches, batch by batch. It is a rollout:
    /// follow and control it with `opampctl rollout ...`.
    Start(UpgradeStart),
}

/// The batching options both kinds share.
#[derive(Debug, Args)]
pub struct Batches {
    /// Collectors in the first batch (server default 3).
    #[arg(long)]
    pub initial_batch: Option<usize>,
    /// Each batch is this many times the one before (server default 5)...
    #[arg(long)]
    pub multiplier: Option<usize>,
    /// ...up to this many (server default 100).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Failures tolerated before it pauses itself (server default 0); a collector without a
    /// verdict in time counts as one.
    #[arg(long)]
    pub max_errors: Option<usize>,
    /// Seconds a collector has to report its verdict before it counts as `timed_out`, a failure
    /// (server default three heartbeat intervals).
    #[arg(long)]
    pub timeout_seconds: Option<u64>,
}

impl Batches {
    fn into_body(self, body: &mut Map<String, Value>) {
        for (key, value) in [
            ("initial_batch", self.initial_batch),
            ("multiplier", self.multiplier),
            ("max_batch", self.max_batch),
            ("max_errors", self.max_errors),
        ] {
            if let Some(value) = value {
                body.insert(key.to_owned(), json!(value));
            }
        }
        if let Some(seconds) = self.timeout_seconds {
            body.insert("timeout_seconds".to_owned(), json!(seconds));
        }
    }
}

#[derive(Debug, Args)]
pub struct Start {
    /// The configuration's name.
    pub configuration: String,
    /// The version to roll out.
    #[arg(long)]
    pub version: i64,
    /// Label selector of the collectors (default: every collector).
    #[arg(short = 'l', long, default_value = "")]
    pub selector: String,
    #[command(flatten)]
    pub batches: Batches,
    /// Send collectors that fail back to the configuration they ran before.
    #[arg(long)]
    pub rollback: bool,
    /// Show which collectors would be queued and which are incompatible, changing nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub follow: Follow,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct UpgradeStart {
    /// The package's name, as collectors report it.
    #[arg(long)]
    pub package: String,
    /// The version to install.
    #[arg(long = "version")]
    pub package_version: String,
    /// Where collectors download it.
    #[arg(long)]
    pub url: String,
    /// SHA-256 of the file, 64 hex digits.
    #[arg(long)]
    pub sha256: String,
    /// The file's signature, hex.
    #[arg(long, default_value = "")]
    pub signature: String,
    /// Label selector of the collectors (default: every collector).
    #[arg(short = 'l', long, default_value = "")]
    pub selector: String,
    #[command(flatten)]
    pub batches: Batches,
    /// Show which collectors would be offered the package and which refuse it, changing nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub follow: Follow,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct Follow {
    /// Watch it to its end after starting it (as `rollout watch`).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// How often the rollout is read while watching.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

#[derive(Debug, Args)]
pub struct Id {
    /// The rollout's id.
    pub id: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct Status {
    /// The rollout's id.
    pub id: String,
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct Watch {
    /// The rollout's id.
    pub id: String,
    /// How often the rollout is read.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

pub async fn run(
    client: &Client,
    command: RolloutCommand,
    io: &mut Io<'_>,
) -> Result<u8, CtlError> {
    match command {
        RolloutCommand::Start(args) => start(client, args, io).await,
        RolloutCommand::List(args) => list(client, args.output, io).await,
        RolloutCommand::Status(args) => status(client, &args.id, args.output, io).await,
        RolloutCommand::Pause(args) => control(client, args, "pause", io).await,
        RolloutCommand::Resume(args) => control(client, args, "resume", io).await,
        RolloutCommand::Cancel(args) => control(client, args, "cancel", io).await,
        RolloutCommand::Watch(args) => watch(client, &args.id, args.interval, io).await,
    }
}

pub async fn upgrade(
    client: &Client,
    command: UpgradeCommand,
    io: &mut Io<'_>,
) -> Result<u8, CtlError> {
    let UpgradeCommand::Start(args) = command;
    let mut body = Map::new();
    body.insert("name".into(), json!(args.package));
    body.insert("version".into(), json!(args.package_version));
    body.insert("download_url".into(), json!(args.url));
    body.insert("sha256".into(), json!(args.sha256));
    body.insert("signature".into(), json!(args.signature));
    body.insert("selector".into(), json!(args.selector));
    body.insert("dry_run".into(), json!(args.dry_run));
    args.batches.into_body(&mut body);
    started(
        client,
        "/api/v1/upgrades",
        body,
        args.follow,
        args.output,
        io,
    )
    .await
}

async fn start(client: &Client, args: Start, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let mut body = Map::new();
    body.insert("configuration".into(), json!(args.configuration));
    body.insert("version".into(), json!(args.version));
    body.insert("selector".into(), json!(args.selector));
    body.insert("rollback".into(), json!(args.rollback));
    body.insert("dry_run".into(), json!(args.dry_run));
    args.batches.into_body(&mut body);
    started(
        client,
        "/api/v1/rollouts",
        body,
        args.follow,
        args.output,
        io,
    )
    .await
}

/// Posts a new rollout (or upgrade) and reports it; with `--watch`, follows it to its end.
async fn started(
    client: &Client,
    path: &str,
    body: Map<String, Value>,
    follow: Follow,
    format: Format,
    io: &mut Io<'_>,
) -> Result<u8, CtlError> {
    let answer = client
        .send(Method::POST, path, &[], Some(&Value::Object(body)))
        .await?;
    let rollout = &answer.value;
    let id = text(&rollout["id"], "?").to_owned();
    if format.is_raw() {
        output::raw(io.out, format, &answer.text)?;
    } else if rollout["status"] == "dry_run" {
        writeln!(
            io.out,
            "dry run: {} to {} collectors (nothing was changed): {}",
            payload(rollout),
            total(rollout),
            progress(rollout)
        )?;
        write!(io.out, "{}", targets_table(&targets(rollout)))?;
    } else {
        writeln!(
            io.out,
            "rollout {id} started: {} to {} collectors: {}",
            payload(rollout),
            total(rollout),
            progress(rollout)
        )?;
    }
    if follow.watch && rollout["status"] != "dry_run" {
        return watch(client, &id, follow.interval, io).await;
    }
    Ok(exit::OK)
}

fn targets(rollout: &Value) -> Vec<Value> {
    rollout["targets"].as_array().cloned().unwrap_or_default()
}

/// How many collectors the rollout targets: its counts added up (the answer may hold only the
/// first page of its targets).
fn total(rollout: &Value) -> u64 {
    rollout["progress"]
        .as_object()
        .map_or(0, |counts| counts.values().filter_map(Value::as_u64).sum())
}

/// Every target of the rollout: those in its answer, or, when they go on, all of them paged.
async fn all_targets(client: &Client, rollout: &Value) -> Result<Vec<Value>, CtlError> {
    if rollout["targets_next_cursor"].is_null() {
        return Ok(targets(rollout));
    }
    let path = format!("{}/targets", rollout_path(text(&rollout["id"], "")));
    let listing = collectors::list(client, &path, &[], None, collectors::PAGE).await?;
    Ok(listing.items.into_iter().map(|(_, t)| t).collect())
}

/// One row per targeted collector: its outcome, batch, and what there is to say about it.
fn targets_table(targets: &[Value]) -> String {
    let rows = targets
        .iter()
        .map(|t| {
            let missing: Vec<&str> = t["missing"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut detail = Vec::new();
            if !missing.is_empty() {
                detail.push(format!("missing {}", missing.join(", ")));
            }
            if let Some(error) = t["error"].as_str().filter(|e| !e.is_empty()) {
                detail.push(error.to_owned());
            }
            if t["components_unknown"] == true {
                detail.push("components unknown".to_owned());
            }
            if t["rolled_back"] == true {
                detail.push("rolled back".to_owned());
            }
            vec![
                text(&t["collector"], "-").to_owned(),
                text(&t["outcome"], "-").to_owned(),
                number(&t["batch"], "-"),
                detail.join("; "),
            ]
        })
        .collect();
    output::table(&["COLLECTOR", "OUTCOME", "BATCH", "DETAIL"], rows)
}

async fn list(client: &Client, format: Format, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let listing = collectors::list(client, "/api/v1/rollouts", &[], None, collectors::PAGE).await?;
    if format.is_raw() {
        output::raw(io.out, format, &listing.text())?;
        return Ok(exit::OK);
    }
    if listing.items.is_empty() {
        writeln!(io.err, "No rollouts found.")?;
        return Ok(exit::OK);
    }
    let rows = listing
        .items
        .iter()
        .map(|(_, r)| {
            vec![
                text(&r["id"], "-").to_owned(),
                payload(r),
                text(&r["selector"], "<all>").to_owned(),
                text(&r["status"], "-").to_owned(),
                progress(r),
                timestamp(&r["created_at"]),
            ]
        })
        .collect();
    let header = ["ID", "PAYLOAD", "SELECTOR", "STATUS", "PROGRESS", "CREATED"];
    write!(io.out, "{}", output::table(&header, rows))?;
    Ok(exit::OK)
}

fn rollout_path(id: &str) -> String {
    format!("/api/v1/rollouts/{id}")
}

/// The rollout's head: what, to whom, how, where it stands.
fn describe(rollout: &Value) -> String {
    let options = &rollout["options"];
    let mut status = text(&rollout["status"], "-").to_owned();
    if let Some(reason) = rollout["reason"].as_str().filter(|r| !r.is_empty()) {
        status = format!("{status}: {reason}");
    }
    let rows = [
        ("ID", text(&rollout["id"], "-").to_owned()),
        ("Payload", payload(rollout)),
        ("Selector", text(&rollout["selector"], "<all>").to_owned()),
        ("Status", status),
        ("Created", timestamp(&rollout["created_at"])),
        (
            "Batches",
            format!(
                "{} started (first {}, then x{} up to {}; {} failures tolerated; verdicts due \
                 within {} s{})",
                number(&rollout["batches_started"], "0"),
                number(&options["initial_batch"], "?"),
                number(&options["multiplier"], "?"),
                number(&options["max_batch"], "?"),
                number(&options["max_errors"], "?"),
                number(&options["timeout_seconds"], "?"),
                if options["rollback"] == true {
                    "; failures rolled back"
                } else {
                    ""
                }
            ),
        ),
        (
            "Progress",
            format!("{} (of {})", progress(rollout), total(rollout)),
        ),
    ];
    let mut text = String::new();
    for (key, value) in rows {
        let _ = writeln!(text, "{:<10}{value}", format!("{key}:"));
    }
    text
}

async fn status(
    client: &Client,
    id: &str,
    format: Format,
    io: &mut Io<'_>,
) -> Result<u8, CtlError> {
    let answer = client.get(&rollout_path(id), &[]).await?;
    if format.is_raw() {
        output::raw(io.out, format, &answer.text)?;
        return Ok(exit::OK);
    }
    write!(io.out, "{}", describe(&answer.value))?;
    let targets = all_targets(client, &answer.value).await?;
    if !targets.is_empty() {
        writeln!(io.out)?;
        write!(io.out, "{}", targets_table(&targets))?;
    }
    Ok(exit::OK)
}

async fn control(client: &Client, args: Id, action: &str, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let path = format!("{}/{action}", rollout_path(&args.id));
    let answer = client
        .send(Method::POST, &path, &[], Some(&json!({})))
        .await?;
    if args.output.is_raw() {
        output::raw(io.out, args.output, &answer.text)?;
    } else {
        writeln!(
            io.out,
            "rollout {} is {}",
            args.id,
            text(&answer.value["status"], "?")
        )?;
    }
    Ok(exit::OK)
}

/// The outcomes a rollout of this kind can have, in display order.
fn outcomes_of(rollout: &Value) -> Vec<&'static str> {
    let package = rollout["kind"] == "package";
    OUTCOMES
        .iter()
        .copied()
        .filter(|o| match *o {
            "configuring" | "incompatible" => !package,
            "upgrading" | "unsupported" => package,
            _ => true,
        })
        .collect()
}

/// One live bar per outcome, drawn on stderr (stdout keeps only the final summary).
struct Bars {
    _multi: MultiProgress,
    bars: BTreeMap<&'static str, ProgressBar>,
}

impl Bars {
    fn new(rollout: &Value) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style =
            ProgressStyle::with_template("{prefix:>13} [{bar:40.cyan/blue}] {pos:>5}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let bars = outcomes_of(rollout)
            .into_iter()
            .map(|outcome| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(outcome);
                (outcome, bar)
            })
            .collect();
        Self {
            _multi: multi,
            bars,
        }
    }

    fn update(&self, rollout: &Value) {
        let total = total(rollout);
        for (outcome, bar) in &self.bars {
            bar.set_length(total);
            bar.set_position(rollout["progress"][*outcome].as_u64().unwrap_or(0));
        }
    }

    fn finish(&self) {
        for bar in self.bars.values() {
            bar.abandon();
        }
    }
}

/// How a rollout's end is told to scripts.
fn exit_code(rollout: &Value) -> u8 {
    match rollout["status"].as_str() {
        Some("paused") => exit::ROLLOUT_PAUSED,
        Some("cancelled") => exit::ROLLOUT_CANCELLED,
        _ if ["failed", "timed_out"]
            .iter()
            .any(|o| rollout["progress"][o].as_u64().unwrap_or(0) > 0) =>
        {
            exit::ROLLOUT_FAILED
        }
        _ => exit::OK,
    }
}

/// Follows a rollout until it is no longer running.
///
/// It reads `GET /api/v1/rollouts/{id}` every `interval`: the event stream carries collectors'
/// transitions but no rollout progress yet. When the API publishes rollout progress events,
/// this loop can read them instead, with the same rendering and the same ending.
pub async fn watch(
    client: &Client,
    id: &str,
    interval: Duration,
    io: &mut Io<'_>,
) -> Result<u8, CtlError> {
    let path = rollout_path(id);
    let mut bars: Option<Bars> = None;
    let mut last_line = String::new();
    let mut away = false;
    loop {
        let rollout = match client.get(&path, &[]).await {
            Ok(answer) => answer.value,
            // A server restarting, or its database briefly away, is waited out: the rollout
            // continues on the server either way.
            Err(err) if err.is_transient() => {
                if !away {
                    writeln!(io.err, "opampctl: {err}; still trying")?;
                    away = true;
                }
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        away = false;
        let running = rollout["status"] == "running";
        if io.progress_bars {
            bars.get_or_insert_with(|| Bars::new(&rollout))
                .update(&rollout);
        } else {
            // Not a terminal: one line each time the progress changes, for logs and scripts.
            let line = format!("{}: {}", text(&rollout["status"], "?"), progress(&rollout));
            if line != last_line {
                writeln!(io.out, "{line}")?;
                last_line = line;
            }
        }
        if !running {
            if let Some(bars) = &bars {
                bars.finish();
            }
            return finished(client, &rollout, io).await;
        }
        tokio::time::sleep(interval).await;
    }
}

/// The end of a watch: what happened, the collectors that failed, and the exit code.
async fn finished(client: &Client, rollout: &Value, io: &mut Io<'_>) -> Result<u8, CtlError> {
    let mut status = text(&rollout["status"], "?").to_owned();
    if let Some(reason) = rollout["reason"].as_str().filter(|r| !r.is_empty()) {
        status = format!("{status} ({reason})");
    }
    writeln!(
        io.out,
        "rollout {} {status}: {} of {}",
        text(&rollout["id"], "?"),
        progress(rollout),
        total(rollout)
    )?;
    let path = format!("{}/targets", rollout_path(text(&rollout["id"], "")));
    let mut failures = Vec::new();
    for outcome in ["failed", "timed_out"] {
        let query = [("outcome", outcome.to_owned())];
        let listing = collectors::list(client, &path, &query, None, collectors::PAGE).await?;
        failures.extend(listing.items.into_iter().map(|(_, t)| t));
    }
    let failed: Vec<Vec<String>> = failures
        .iter()
        .map(|t| {
            vec![
                text(&t["collector"], "-").to_owned(),
                text(&t["error"], "").to_owned(),
            ]
        })
        .collect();
    if !failed.is_empty() {
        write!(io.out, "{}", output::table(&["FAILED", "ERROR"], failed))?;
    }
    Ok(exit_code(rollout))
}

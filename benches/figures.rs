//! Issue 11's table: every figure of it measured on the real `opampd` binary (release), started
//! fresh for each scenario on a fresh database, driven by the load generator in this process,
//! on SQLite and on PostgreSQL with fsync on, and the same WebSocket rows on the floor
//! (`floor.rs`: collectors answered, nothing kept), which is what this machine charges any server
//! for the transport. Prints each one's figures as a Markdown table, with the goal beside each
//! and whether it is met, then one JSON line each.
//!
//! `cargo bench --bench figures` (`FIGURES_BACKENDS`, a comma list of `sqlite`, `postgres` and
//! `floor`, for some only;
//! sizes: `FIGURES_IDLE_WS` 15,000, `FIGURES_IDLE_HTTP` 5,000, `FIGURES_HEARTBEAT_COLLECTORS`
//! 10,000, `FIGURES_BURST_COLLECTORS` 5,000, `FIGURES_VISIBLE_RATE` 10,000 changes/s,
//! `FIGURES_STORM_COLLECTORS` 19,000, `FIGURES_SECONDS` 30 per measurement, `FIGURES_RATE` 1,000
//! new collectors a second in every ramp; `FIGURES_SCENARIOS`, a comma list of `idle_ws`,
//! `idle_http`, `heartbeats`, `burst`, `visible`, `storm`, for some only; `DATABASE_URL` for a
//! running PostgreSQL, which every scenario then shares).

// A measuring tool: a failure should stop it loudly.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    dead_code
)]

#[path = "support/floor.rs"]
mod floor;
mod support;
use support::{load, postgres, server, visibility};

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::Parser as _;
use opampd_load::{Args, Report};
use serde_json::{Value, json};
use server::{Server, free_port, setting};

/// The load generator's allocator (as in its own binary), which the floor's server, started from
/// this executable, shares: the load generator shares the machine with the server it measures,
/// and jemalloc spends less CPU per simulated collector than the C library's allocator.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Where each scenario's database comes from.
enum Databases {
    /// No database: the floor (`floor.rs`) in place of opampd.
    Floor,
    Sqlite(tempfile::TempDir),
    /// A throwaway server with fsync on, a database per scenario.
    Postgres(postgres::PgServer),
    /// `DATABASE_URL`'s, shared by every scenario.
    Shared(String),
}

impl Databases {
    async fn open(backend: &str) -> Self {
        if backend == FLOOR {
            return Self::Floor;
        }
        if backend == "sqlite" {
            return Self::Sqlite(tempfile::tempdir().unwrap());
        }
        match std::env::var("DATABASE_URL") {
            Ok(url) => Self::Shared(url),
            Err(_) => {
                Self::Postgres(postgres::PgServer::start_with(postgres::Durability::On).await)
            }
        }
    }

    async fn fresh(&mut self, scenario: &str) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join(scenario).display()),
            Self::Postgres(pg) => pg.create_database(scenario).await,
            Self::Shared(url) => url.clone(),
            Self::Floor => unreachable!("the floor keeps nothing"),
        }
    }
}

/// A fresh server for one scenario.
struct Fresh {
    server: Server,
    opamp: String,
    api: String,
    _data: tempfile::TempDir,
}

async fn fresh(databases: &mut Databases, scenario: &str, client: &reqwest::Client) -> Fresh {
    let data = tempfile::tempdir().unwrap();
    let (opamp, api) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut server = if let Databases::Floor = databases {
        Server::itself(&opamp, &[(floor::SERVE, &opamp)])
    } else {
        let database = databases.fresh(scenario).await;
        Server::start(data.path(), &database, &opamp, &api, &[])
    };
    server.ready(client).await;
    Fresh {
        server,
        opamp,
        api,
        _data: data,
    }
}

/// The load generator's flags for `n` collectors against `fresh`, over `scheme` (ws or http),
/// with the server's pid for its costs; `extra` adds the mode and timings.
fn load_args(fresh: &Fresh, scheme: &str, n: usize, extra: &[&str]) -> Args {
    let url = format!("{scheme}://{}/v1/opamp", fresh.opamp);
    let (n, pid) = (n.to_string(), fresh.server.pid().to_string());
    // 1,000 a second: at 3,000, PostgreSQL with fsync on (on this 2-core machine) stored new
    // collectors too slowly for the commit timeout, and most were told to come back.
    let rate = setting("FIGURES_RATE", 1000usize).to_string();
    let mut argv = vec![
        "opampd-load",
        "--url",
        &url,
        "-n",
        &n,
        "--rate",
        &rate,
        "--ramp-timeout",
        "300s",
        "--reply-timeout",
        "60s",
        "--source-addrs",
        "127.0.0.1-127.0.0.20",
        "--server-pid",
        &pid,
        "--quiet",
    ];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).unwrap()
}

/// Runs the load, says what it saw on stderr, and stops the server.
async fn measure(mut fresh: Fresh, args: Args) -> Report {
    let report = opampd_load::run(args)
        .await
        .expect("the load generator runs");
    eprint!("{}", report.human());
    fresh.server.stop();
    report
}

/// The backend that is not opampd: the floor, measured with the same load.
const FLOOR: &str = "floor";

/// Whether `FIGURES_SCENARIOS` (a comma list; default: all) names this scenario, and `backend`
/// can run it: the floor speaks WebSocket only and has no API to probe.
fn wanted(backend: &str, scenario: &str) -> bool {
    let runs = backend != FLOOR || !matches!(scenario, "idle_http" | "visible");
    runs && std::env::var("FIGURES_SCENARIOS")
        .map_or(true, |s| s.split(',').any(|x| x.trim() == scenario))
}

/// `n` collectors over `scheme` against a fresh server, with the mode's flags.
async fn scenario(
    databases: &mut Databases,
    client: &reqwest::Client,
    name: &str,
    scheme: &str,
    n: usize,
    extra: &[&str],
) -> Value {
    let fresh = fresh(databases, name, client).await;
    let args = load_args(&fresh, scheme, n, extra);
    json!(measure(fresh, args).await)
}

/// Every figure of the table for one store (those `FIGURES_SCENARIOS` names).
async fn figures(backend: &str) -> Value {
    let client = server::http_client();
    let mut databases = Databases::open(backend).await;
    let seconds = setting("FIGURES_SECONDS", 30u64).to_string() + "s";
    let (n_ws, n_http, n_hb, n_burst, rate, n_storm) = (
        setting("FIGURES_IDLE_WS", 15_000usize),
        setting("FIGURES_IDLE_HTTP", 5_000usize),
        setting("FIGURES_HEARTBEAT_COLLECTORS", 10_000usize),
        setting("FIGURES_BURST_COLLECTORS", 5_000usize),
        setting("FIGURES_VISIBLE_RATE", 10_000usize),
        setting("FIGURES_STORM_COLLECTORS", 19_000usize),
    );
    let long = ["--heartbeat", "30m"];
    let plan: [(&str, &str, usize, Vec<&str>, String); 5] = [
        (
            "idle_ws",
            "ws",
            n_ws,
            [&long[..], &["--duration", "2s"]].concat(),
            format!("{n_ws} idle WebSocket collectors"),
        ),
        (
            "idle_http",
            "http",
            n_http,
            vec!["--heartbeat", "10s", "--duration", "2s"],
            format!("{n_http} plain-HTTP collectors polling every 10 s"),
        ),
        (
            "heartbeats",
            "ws",
            n_hb,
            vec!["--heartbeat", "5s", "--duration", &seconds],
            format!("{n_hb} WebSocket collectors heartbeating every 5 s"),
        ),
        (
            "burst",
            "ws",
            n_burst,
            [&long[..], &["--mode", "burst", "--duration", &seconds]].concat(),
            format!("{n_burst} WebSocket collectors, changes back to back"),
        ),
        (
            "storm",
            "ws",
            n_storm,
            [&long[..], &["--mode", "storm", "--duration", "60s"]].concat(),
            format!("{n_storm} WebSocket collectors dropped at once"),
        ),
    ];
    let mut out = serde_json::Map::new();
    out.insert("bench".into(), json!("figures"));
    out.insert("store".into(), json!(backend));
    // The paced run and its probe go before the storm, which leaves the most sockets behind.
    let (before_storm, storm) = plan.split_at(4);
    for (name, scheme, n, extra, what) in before_storm {
        if wanted(backend, name) {
            eprintln!("{backend}: {what} (load average {})", loadavg());
            let report = scenario(&mut databases, &client, name, scheme, *n, extra).await;
            out.insert((*name).into(), report);
        }
    }
    if wanted(backend, "visible") {
        eprintln!(
            "{backend}: {n_burst} WebSocket collectors, {rate} changes/s in all, and the probe \
             (load average {})",
            loadavg()
        );
        let (paced, visible) =
            visibility_run(&mut databases, &client, n_burst, rate, &seconds).await;
        out.insert("paced".into(), json!(paced));
        out.insert("visible".into(), json!(visible));
    }
    for (name, scheme, n, extra, what) in storm {
        if wanted(backend, name) {
            eprintln!("{backend}: {what} (load average {})", loadavg());
            let report = scenario(&mut databases, &client, name, scheme, *n, extra).await;
            out.insert((*name).into(), report);
        }
    }
    drop(databases);
    out.insert("loadavg_after".into(), json!(loadavg()));
    Value::Object(out)
}

/// Paced status changes at `rate` in all from `n` collectors, with the probe timing how long one
/// change takes to show in the API while they run.
async fn visibility_run(
    databases: &mut Databases,
    client: &reqwest::Client,
    n: usize,
    rate: usize,
    seconds: &str,
) -> (Report, opampd_load::stats::LatencySummary) {
    let mut fresh = fresh(databases, "visible", client).await;
    let interval = format!("{}us", n as u64 * 1_000_000 / rate.max(1) as u64);
    let args = load_args(
        &fresh,
        "ws",
        n,
        &[
            "--mode",
            "burst",
            "--change-interval",
            &interval,
            "--heartbeat",
            "30m",
            "--duration",
            seconds,
        ],
    );
    let measuring = args.duration;
    let load = load::measuring(args, None).await;
    // The first interval is the paced collectors' spreading out: the probe starts after it and
    // stops a second before they do.
    let started = Instant::now();
    let warm = Duration::from_secs(2);
    tokio::time::sleep(warm).await;
    let url = format!("ws://{}/v1/opamp", fresh.opamp);
    let until = started + measuring.saturating_sub(Duration::from_secs(1));
    let visible = visibility::probe(&url, &fresh.api, client, until).await;
    let report = load.await.unwrap().expect("the load generator runs");
    eprint!("{}", report.human());
    eprintln!(
        "probe: {} changes, p50 {:.2} / p99 {:.2} / max {:.2} ms to REST-visible",
        visible.count, visible.p50_ms, visible.p99_ms, visible.max_ms
    );
    fresh.server.stop();
    (report, visible)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One row: what, the figure, the goal, met or not.
struct Row {
    /// The scenario it is read from: absent, the row says "not measured".
    from: &'static str,
    what: &'static str,
    figure: String,
    goal: &'static str,
    met: bool,
}

fn rows(backend: &str, f: &Value) -> Vec<Row> {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let server = |scenario: &str, key: &str| num(&f[scenario]["server"][key]);
    let n = |scenario: &str| num(&f[scenario]["collectors"]);
    let ws_kib = server("idle_ws", "rss_per_collector_kib");
    let http_kib = server("idle_http", "rss_per_collector_kib");
    let connect_ms =
        server("idle_ws", "cpu_ramp_s") / num(&f["idle_ws"]["ramp"]["connected"]) * 1e3;
    let heartbeat_us = server("heartbeats", "cpu_per_message_us");
    let changes = num(&f["burst"]["measure"]["changes_per_s"]);
    let changes_p99 = num(&f["burst"]["measure"]["reply_latency"]["p99_ms"]);
    // Whether the burst was short of CPU: the server shares the machine with the load generator.
    let burst_busy = num(&f["burst"]["machine"]["busy_percent"]);
    let changes_goal = if backend == "postgres" {
        50_000.0
    } else {
        30_000.0
    };
    let visible_p99 = num(&f["visible"]["p99_ms"]);
    let paced = num(&f["paced"]["measure"]["changes_per_s"]);
    let storm = &f["storm"]["storm"];
    let (dropped, back) = (num(&storm["dropped"]), num(&storm["back"]));
    let all_back = storm["all_back_s"].as_f64();
    vec![
        Row {
            from: "idle_ws",
            what: "server RSS per idle WebSocket collector",
            figure: format!("{ws_kib:.1} KiB ({} held)", n("idle_ws")),
            goal: "≤ 5 KiB",
            met: ws_kib <= 5.0,
        },
        Row {
            from: "idle_http",
            what: "server RSS per plain-HTTP collector (10 s polls)",
            figure: format!("{http_kib:.1} KiB ({} held)", n("idle_http")),
            goal: "≤ 12 KiB",
            met: http_kib <= 12.0,
        },
        Row {
            from: "idle_ws",
            what: "server CPU per connect (first message, full state)",
            figure: format!("{connect_ms:.3} ms"),
            goal: "≤ 0.1 ms",
            met: connect_ms <= 0.1,
        },
        Row {
            from: "heartbeats",
            what: "server CPU per heartbeat (5 s heartbeats)",
            figure: format!("{heartbeat_us:.1} µs ({} collectors)", n("heartbeats")),
            goal: "≤ 15 µs",
            met: heartbeat_us <= 15.0,
        },
        Row {
            from: "burst",
            what: "status changes acknowledged and committed, back to back",
            figure: format!(
                "{changes:.0}/s, reply p99 {changes_p99:.1} ms ({} collectors; machine \
                 {burst_busy:.0} % busy)",
                n("burst")
            ),
            goal: if backend == "postgres" {
                "≥ 50,000/s"
            } else {
                "≥ 30,000/s"
            },
            met: changes >= changes_goal,
        },
        Row {
            from: "visible",
            what: "message to REST-visible state, p99",
            figure: format!(
                "{visible_p99:.1} ms at {paced:.0} changes/s ({} probes)",
                f["visible"]["count"]
            ),
            goal: "≤ 100 ms at 10,000 changes/s",
            met: visible_p99 <= 100.0 && paced >= 9_500.0,
        },
        Row {
            from: "storm",
            what: "reconnect storm: dropped at once, all back and answered",
            figure: match all_back {
                Some(s) => format!("{dropped} in {s:.2} s"),
                None => format!("{back} of {dropped} back within 60 s"),
            },
            goal: "19,000 in ≤ 2 s",
            met: dropped >= 19_000.0 && all_back.is_some_and(|s| s <= 2.0),
        },
    ]
}

fn markdown(backend: &str, f: &Value, rows: &[Row]) -> String {
    let who = if backend == FLOOR {
        "the floor: WebSocket answered, nothing kept".to_owned()
    } else {
        format!("opampd, {backend}")
    };
    let mut out = format!("| figure | {who} | goal | |\n|---|---|---|---|\n");
    for row in rows {
        let (figure, met) = match (f[row.from].is_null(), row.met) {
            (true, _) => ("not measured", ""),
            // It stores nothing, so no goal applies to it: its figures bound what any server
            // can do here.
            (false, _) if backend == FLOOR => (row.figure.as_str(), "lower bound"),
            (false, true) => (row.figure.as_str(), "met"),
            (false, false) => (row.figure.as_str(), "not met"),
        };
        let _ = writeln!(out, "| {} | {figure} | {} | {met} |", row.what, row.goal);
    }
    out
}

fn main() {
    if let Ok(addr) = std::env::var(floor::SERVE) {
        floor::serve(&addr);
        return;
    }
    server::runtime().block_on(async {
        let backends = std::env::var("FIGURES_BACKENDS")
            .unwrap_or_else(|_| format!("sqlite,postgres,{FLOOR}"));
        let mut results = Vec::new();
        for backend in ["sqlite", "postgres", FLOOR] {
            if backends.contains(backend) {
                results.push((backend, figures(backend).await));
            }
        }
        for (backend, f) in &results {
            println!("\n{}", markdown(backend, f, &rows(backend, f)));
        }
        for (_, f) in &results {
            println!("{f}");
        }
    });
}

//! opampctl against a real server: every command run through `opampctl::run` (the binary's whole
//! program, in-process) with collectors of known ids, its table forms pinned by snapshots (times
//! and ages redacted), `-o json` compared with what the API itself answers, `rollout watch` run to
//! each of its ends, and `events` resuming after its connection is cut. The real binary is run by
//! `ctl/tests/binary.rs`.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ::opampctl::exit;
use bytes::Bytes;
use opampd::collector::CollectorId;
use opampd::config::Role;
use opampd::proto;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::support::api::Api;
use crate::support::scripted::{Script, Scripted};
use crate::support::*;

/// What one run printed and how it ended.
#[derive(Debug)]
struct Run {
    code: u8,
    out: String,
    err: String,
}

/// A `Write` the test can read while a command is still running.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Runs `opampctl --server <server> args...` with an empty environment (so no configuration file
/// of the machine's is read), within the deadline.
async fn ctl_env(server: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let (mut out, mut err) = (Shared::default(), Shared::default());
    let code = within(
        &format!("opampctl {}", args.join(" ")),
        run_into(server, args, env, &mut out, &mut err),
    )
    .await;
    Run {
        code,
        out: out.text(),
        err: err.text(),
    }
}

/// Runs `opampctl` with no deadline of its own: the caller sets the one that fits.
async fn run_into(
    server: &str,
    args: &[&str],
    env: &[(&str, &str)],
    out: &mut Shared,
    err: &mut Shared,
) -> u8 {
    let mut command_line = vec!["opampctl"];
    if !server.is_empty() {
        command_line.extend(["--server", server]);
    }
    // The server's generated admin key, as its operator would pass it, unless the test chose.
    let generated = crate::support::api::generated_key(server);
    if let Some(key) = &generated
        && !env.iter().any(|(k, _)| *k == "OPAMPCTL_API_KEY")
        && !args.contains(&"--api-key")
    {
        command_line.extend(["--api-key", key.as_str()]);
    }
    command_line.extend(args);
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let lookup = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut io = ::opampctl::Io {
        out,
        err,
        progress_bars: false,
    };
    ::opampctl::run(command_line, &lookup, &mut io).await
}

async fn ctl(server: &TestServer, args: &[&str]) -> Run {
    ctl_env(&server.api_url, args, &[]).await
}

/// Runs a command that must succeed, returning what it printed.
async fn ok(server: &TestServer, args: &[&str]) -> String {
    let run = ctl(server, args).await;
    assert_eq!(run.code, exit::OK, "opampctl {args:?}: {run:?}");
    run.out
}

/// Times and ages change from run to run; everything else in a snapshot must not.
fn redacted(f: impl FnOnce()) {
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z",
        "YYYY-MM-DDTHH:MM:SSZ",
    );
    settings.add_filter(r"\b\d{1,3}[smhd] ago\b", "[age] ago");
    settings.add_filter(r"(?m)\b\d{1,3}[smhd]$", "[age]");
    settings.bind(f);
}

/// Collector `n`'s uid: `00000000-0000-7000-8000-0000000000nn`, so snapshots can name it.
fn uid(n: u8) -> Bytes {
    let mut bytes = [0u8; 16];
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    bytes[15] = n;
    Bytes::copy_from_slice(&bytes)
}

fn id(n: u8) -> CollectorId {
    id_of(&uid(n))
}

/// A WebSocket collector `n` named `name`, at `version`, on `host`.
async fn collector(server: &TestServer, n: u8, name: &str, version: &str) -> WsClient {
    let mut ws = WsClient::connect(&server.ws_url).await;
    let mut message = hello(&uid(n), 0);
    message.agent_description = Some(proto::AgentDescription {
        identifying_attributes: vec![
            kv("service.instance.name", name),
            kv("service.version", version),
        ],
        non_identifying_attributes: vec![kv("host.name", &format!("host-{n}"))],
    });
    let reply = ws.exchange(&message).await;
    assert!(reply.error_response.is_none(), "{reply:?}");
    ws
}

async fn state_is(api: &Api, n: u8, state: &str) {
    let path = format!("/api/v1/collectors/{}", id(n));
    eventually(&format!("collector {n} {state}"), || async {
        let answer = api.get(&path).await;
        (answer.status == 200 && answer.body["state"] == state).then_some(())
    })
    .await;
}

/// Three collectors: 1 a labelled gateway, 2 an unhealthy labelled agent, 3 a disconnected agent.
async fn fleet(server: &TestServer) -> Vec<WsClient> {
    let api = Api::new(&server.api_url);
    let one = collector(server, 1, "gateway", "0.1.0").await;
    let mut two = collector(server, 2, "agent", "0.2.0").await;
    let three = collector(server, 3, "agent", "0.1.0").await;
    two.exchange(&health_report(
        &uid(2),
        1,
        false,
        "exporter otlp: connection refused",
    ))
    .await;
    drop(three);
    for (n, labels) in [
        (1, json!({"env": "prod", "tier": "gold"})),
        (2, json!({"env": "prod"})),
    ] {
        let answer = api
            .put(&format!("/api/v1/collectors/{}/labels", id(n)), &labels)
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    state_is(&api, 2, "error").await;
    state_is(&api, 3, "disconnected").await;
    vec![one, two]
}

#[tokio::test]
async fn get_collectors_in_each_form_with_filters_and_pages() {
    let server = TestServer::start().await;
    let _connected = fleet(&server).await;
    let api = Api::new(&server.api_url);

    let table = ok(&server, &["get", "collectors"]).await;
    let wide = ok(&server, &["get", "collectors", "-o", "wide"]).await;
    let selected = ok(
        &server,
        &[
            "get",
            "collectors",
            "-l",
            "env=prod",
            "--state",
            "error,connected",
        ],
    )
    .await;
    let found = ok(&server, &["get", "collectors", "-q", "GATE"]).await;
    let sorted = ok(&server, &["get", "collectors", "--sort", "-name"]).await;
    redacted(|| {
        insta::assert_snapshot!("get_collectors", table);
        insta::assert_snapshot!("get_collectors_wide", wide);
        insta::assert_snapshot!("get_collectors_selected", selected);
        insta::assert_snapshot!("get_collectors_found", found);
        insta::assert_snapshot!("get_collectors_sorted", sorted);
    });

    // -o json is the API's own answer, to the byte.
    let json_out = ok(&server, &["get", "collectors", "-o", "json"]).await;
    let direct = http_client()
        .get(format!("{}/api/v1/collectors?limit=500", server.api_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(json_out, format!("{direct}\n"));

    // Page after page, the same collectors in the same order, each exactly once.
    let paged = ok(
        &server,
        &["get", "collectors", "--chunk-size", "2", "-o", "json"],
    )
    .await;
    let paged: Value = serde_json::from_str(&paged).unwrap();
    let whole: Value = serde_json::from_str(&direct).unwrap();
    assert_eq!(paged["items"], whole["items"]);
    assert_eq!(paged["next_cursor"], Value::Null);
    let limited = ok(
        &server,
        &["get", "collectors", "--limit", "2", "-o", "json"],
    )
    .await;
    let limited: Value = serde_json::from_str(&limited).unwrap();
    assert_eq!(limited["items"].as_array().unwrap().len(), 2);
    assert!(limited["next_cursor"].is_string(), "{limited}");

    // YAML is the same document.
    let yaml = ok(&server, &["get", "collectors", "-o", "yaml"]).await;
    let from_yaml: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(from_yaml, whole);

    // Nothing matched is said on stderr, and is no error.
    let none = ctl(&server, &["get", "collectors", "-l", "env=staging"]).await;
    assert_eq!((none.code, none.out.as_str()), (exit::OK, ""));
    assert_eq!(none.err, "No collectors found.\n");
    // A bad filter is the API's 400, in one line.
    let bad = ctl(&server, &["get", "collectors", "--state", "sleepy"]).await;
    assert_eq!(bad.code, exit::ERROR);
    assert!(
        bad.err
            .starts_with("opampctl: 400 Bad Request (bad_request): unknown state \"sleepy\""),
        "{bad:?}"
    );
    assert_eq!(bad.err.lines().count(), 1, "{bad:?}");
    drop(api);
}

#[tokio::test]
async fn describe_history_label_forget_restart_and_summary() {
    let server = TestServer::start().await;
    let mut connected = fleet(&server).await;
    let api = Api::new(&server.api_url);
    let two = id(2).to_string();

    let described = ok(&server, &["describe", "collector", &two]).await;
    let history = ok(&server, &["history", &two]).await;
    let summary = ok(&server, &["summary"]).await;
    redacted(|| {
        insta::assert_snapshot!("describe_collector", described);
        insta::assert_snapshot!("history", history);
        insta::assert_snapshot!("summary", summary);
    });
    let as_json = ok(&server, &["describe", "collector", &two, "-o", "json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&as_json).unwrap(),
        api.ok(&format!("/api/v1/collectors/{two}")).await
    );
    let summary_json = ok(&server, &["summary", "-o", "json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&summary_json).unwrap(),
        json!({"total": 3, "by_state": {"configuring": 0, "connected": 1, "disconnected": 1,
            "error": 1, "incompatible": 0, "pending": 0, "upgrading": 0},
            "by_facet": {"degraded": 0, "drifted": 0, "stale": 0}})
    );
    let newest = ok(&server, &["history", &two, "--limit", "1", "-o", "json"]).await;
    let newest: Value = serde_json::from_str(&newest).unwrap();
    assert_eq!(newest["items"].as_array().unwrap().len(), 1);
    assert_eq!(newest["items"][0]["reason"], "runtime_error");

    // Labels: set one, remove another, in kubectl's syntax; the API then shows exactly that.
    let labelled = ok(
        &server,
        &["label", &id(1).to_string(), "tier-", "zone=eu-1"],
    )
    .await;
    assert_eq!(
        labelled,
        format!("collector {} labelled: env=prod,zone=eu-1\n", id(1))
    );
    let stored = api.ok(&format!("/api/v1/collectors/{}", id(1))).await;
    assert_eq!(stored["labels"], json!({"env": "prod", "zone": "eu-1"}));
    let bad = ctl(&server, &["label", &two, "zone"]).await;
    assert_eq!(bad.code, exit::USAGE);
    assert_eq!(
        bad.err,
        "opampctl: \"zone\": write key=value to set a label or key- to remove one\n"
    );

    // Restart reaches the connected collector.
    let sent = ok(&server, &["restart", &id(1).to_string()]).await;
    assert_eq!(sent, format!("restart sent to collector {}\n", id(1)));
    let pushed = connected[0].recv().await;
    assert_eq!(
        pushed.command.map(|c| c.r#type),
        Some(proto::CommandType::Restart as i32)
    );
    let away = ctl(&server, &["restart", &id(3).to_string()]).await;
    assert_eq!(away.code, exit::ERROR);
    assert!(
        away.err.starts_with("opampctl: 409 Conflict (conflict): "),
        "{away:?}"
    );

    // Forget: refused while connected (409, one line), done once disconnected; then 404.
    let refused = ctl(&server, &["forget", &two]).await;
    assert_eq!(refused.code, exit::ERROR);
    assert_eq!(
        refused.err,
        format!(
            "opampctl: 409 Conflict (conflict): collector {two} is error; only a disconnected \
             collector can be forgotten\n"
        )
    );
    let three = id(3).to_string();
    assert_eq!(
        ok(&server, &["forget", &three]).await,
        format!("collector {three} forgotten\n")
    );
    let gone = ctl(&server, &["describe", "collector", &three]).await;
    assert_eq!(gone.code, exit::ERROR);
    assert_eq!(
        gone.err,
        format!("opampctl: 404 Not Found (not_found): no collector {three}\n")
    );
    drop(connected.pop());
}

const V1: &str = "receivers:\n  otlp:\nexporters:\n  debug:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n";
const V2: &str = "receivers:\n  otlp:\nexporters:\n  kafka:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [kafka]\n";
const EXTRA: &str = "# tuning\nprocessors: {}\n";

#[tokio::test]
async fn configurations_apply_get_versions_and_diff() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let main = write("main.yaml", V1);
    let extra = write("extra.yaml", EXTRA);

    let created = ok(
        &server,
        &["config", "apply", "gateway", "-f", &main, "-f", &extra],
    )
    .await;
    assert!(
        created.starts_with("configuration gateway version 1 created (hash "),
        "{created}"
    );
    let again = ok(
        &server,
        &["config", "apply", "gateway", "-f", &main, "-f", &extra],
    )
    .await;
    assert!(
        again.starts_with("configuration gateway unchanged: the files are version 1"),
        "{again}"
    );
    let main = write("main.yaml", V2);
    let second = ok(
        &server,
        &["config", "apply", "gateway", "-f", &main, "-f", &extra],
    )
    .await;
    assert!(
        second.starts_with("configuration gateway version 2 created"),
        "{second}"
    );

    // The files as stored: several get a heading each; one is printed exactly.
    assert_eq!(
        ok(&server, &["config", "get", "gateway", "--version", "1"]).await,
        format!("# extra.yaml\n{EXTRA}# main.yaml\n{V1}")
    );
    let single = write("only.yaml", V1);
    ok(&server, &["config", "apply", "edge", "-f", &single]).await;
    assert_eq!(ok(&server, &["config", "get", "edge"]).await, V1);

    let versions = ok(&server, &["config", "versions", "gateway"]).await;
    let list = ok(&server, &["config", "list"]).await;
    let diff = ok(
        &server,
        &["config", "diff", "gateway", "--from", "1", "--to", "2"],
    )
    .await;
    redacted(|| {
        insta::assert_snapshot!("config_versions", versions);
        insta::assert_snapshot!("config_list", list);
        insta::assert_snapshot!("config_diff", diff);
    });
    let api = Api::new(&server.api_url);
    let diff_json = ok(
        &server,
        &[
            "config", "diff", "gateway", "--from", "1", "--to", "2", "-o", "json",
        ],
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&diff_json).unwrap(),
        api.ok("/api/v1/configurations/gateway/diff?from=1&to=2")
            .await
    );

    // What the server refuses is said in one line with its status; a missing file before that.
    let broken = write("broken.yaml", "service: [unclosed\n");
    let refused = ctl(&server, &["config", "apply", "gateway", "-f", &broken]).await;
    assert_eq!(refused.code, exit::ERROR);
    assert!(
        refused
            .err
            .starts_with("opampctl: 400 Bad Request (bad_request): ")
            && refused.err.contains("broken.yaml"),
        "{refused:?}"
    );
    assert_eq!(refused.err.lines().count(), 1, "{refused:?}");
    let missing = ctl(
        &server,
        &["config", "apply", "gateway", "-f", "/nonexistent.yaml"],
    )
    .await;
    assert_eq!(missing.code, exit::ERROR);
    assert!(
        missing.err.starts_with("opampctl: /nonexistent.yaml: "),
        "{missing:?}"
    );
    let unknown = ctl(&server, &["config", "versions", "nothing"]).await;
    assert_eq!(
        unknown.err,
        "opampctl: 404 Not Found (not_found): no configuration \"nothing\"\n"
    );
}

/// Scripted collectors `from..=to` with known ids, each with a Kafka exporter, labelled env=prod.
async fn scripted(server: &TestServer, ns: &[(u8, Script)]) -> Vec<Scripted> {
    let api = Api::new(&server.api_url);
    let mut all = Vec::new();
    for (n, script) in ns {
        let c = Scripted::returning(id(*n), &server.ws_url, &["kafka"], *script).await;
        api.stored(c.id).await;
        let path = format!("/api/v1/collectors/{}/labels", c.id);
        assert_eq!(api.put(&path, &json!({"env": "prod"})).await.status, 200);
        all.push(c);
    }
    all
}

async fn kafka_configuration(server: &TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector.yaml");
    std::fs::write(&path, V2).unwrap();
    ok(
        server,
        &["config", "apply", "gateway", "-f", path.to_str().unwrap()],
    )
    .await;
}

/// The rollout id a `rollout start` printed.
fn rollout_id(started: &str) -> String {
    started
        .strip_prefix("rollout ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("a rollout id in {started:?}"))
        .to_owned()
}

#[tokio::test]
async fn a_rollout_is_planned_started_and_watched_to_completion() {
    let server = TestServer::start().await;
    let _collectors = scripted(
        &server,
        &[
            (11, Script::Apply),
            (12, Script::Apply),
            (13, Script::Apply),
            (14, Script::Apply),
        ],
    )
    .await;
    kafka_configuration(&server).await;
    let start = [
        "rollout",
        "start",
        "gateway",
        "--version",
        "1",
        "-l",
        "env=prod",
        "--initial-batch",
        "1",
        "--multiplier",
        "2",
    ];
    let plan = ok(&server, &[&start[..], &["--dry-run"]].concat()).await;
    redacted(|| insta::assert_snapshot!("rollout_dry_run", plan));
    assert!(
        Api::new(&server.api_url).ok("/api/v1/rollouts").await["items"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a dry run starts nothing"
    );

    let run = ctl(
        &server,
        &[&start[..], &["--watch", "--interval", "20ms"]].concat(),
    )
    .await;
    assert_eq!(run.code, exit::OK, "{run:?}");
    let lines: Vec<&str> = run.out.lines().collect();
    let rid = rollout_id(lines[0]);
    assert_eq!(
        lines[0],
        format!(
            "rollout {rid} started: configuration gateway v1 to 4 collectors: pending 3, configuring 1"
        )
    );
    // One line per change of progress, ending with the summary; the applied count only grows.
    assert_eq!(lines[lines.len() - 2], "completed: applied 4");
    assert_eq!(
        lines[lines.len() - 1],
        format!("rollout {rid} completed: applied 4 of 4")
    );
    let applied: Vec<u32> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| {
            l.split(", ")
                .find_map(|part| part.split("applied ").nth(1))
                .map_or(0, |n| n.parse().unwrap())
        })
        .collect();
    assert!(applied.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");

    let status = ok(&server, &["rollout", "status", &rid]).await;
    let list = ok(&server, &["rollout", "list"]).await;
    redacted(|| {
        // The rollout's id (a UUIDv7) as a placeholder of its width, so columns stay aligned.
        let placeholder = "RRRRRRRR-RRRR-RRRR-RRRR-RRRRRRRRRRRR";
        insta::assert_snapshot!("rollout_status", status.replace(&rid, placeholder));
        insta::assert_snapshot!("rollout_list", list.replace(&rid, placeholder));
    });
    // Watching a finished rollout ends at once, with its verdict.
    let again = ctl(&server, &["rollout", "watch", &rid]).await;
    assert_eq!(again.code, exit::OK);
    assert_eq!(
        again.out,
        format!("completed: applied 4\nrollout {rid} completed: applied 4 of 4\n")
    );
}

#[tokio::test]
async fn watch_ends_paused_then_failed_with_distinct_exit_codes() {
    let server = TestServer::start().await;
    let _collectors = scripted(
        &server,
        &[
            (21, Script::Fail("kafka: broker unreachable")),
            (22, Script::Apply),
            (23, Script::Apply),
        ],
    )
    .await;
    kafka_configuration(&server).await;
    let started = ok(
        &server,
        &[
            "rollout",
            "start",
            "gateway",
            "--version",
            "1",
            "-l",
            "env=prod",
            "--initial-batch",
            "1",
        ],
    )
    .await;
    let rid = rollout_id(&started);

    // The first batch (collector 21) fails and max_errors is 0: the rollout pauses itself.
    let paused = ctl(&server, &["rollout", "watch", &rid, "--interval", "20ms"]).await;
    assert_eq!(paused.code, exit::ROLLOUT_PAUSED, "{paused:?}");
    let tail: Vec<&str> = paused.out.lines().rev().take(3).collect();
    assert_eq!(
        tail,
        [
            format!("{}   kafka: broker unreachable", id(21)).as_str(),
            "FAILED                                 ERROR",
            &format!(
                "rollout {rid} paused (1 collectors failed the configuration, more than \
                 max_errors (0) allows): pending 2, failed 1 of 3"
            ),
        ],
        "{paused:?}"
    );

    // Resumed, the rest applies: it completes, with a failure, which the exit code says.
    assert_eq!(
        ok(&server, &["rollout", "resume", &rid]).await,
        format!("rollout {rid} is running\n")
    );
    let failed = ctl(&server, &["rollout", "watch", &rid, "--interval", "20ms"]).await;
    assert_eq!(failed.code, exit::ROLLOUT_FAILED, "{failed:?}");
    assert!(
        failed.out.contains(&format!(
            "rollout {rid} completed: applied 2, failed 1 of 3"
        )),
        "{failed:?}"
    );
    let conflict = ctl(&server, &["rollout", "pause", &rid]).await;
    assert_eq!(conflict.code, exit::ERROR);
    assert!(
        conflict.err.starts_with("opampctl: 409 Conflict"),
        "{conflict:?}"
    );
}

#[tokio::test]
async fn watch_ends_when_the_rollout_is_cancelled() {
    let server = TestServer::start().await;
    let _collectors = scripted(&server, &[(31, Script::Ignore), (32, Script::Ignore)]).await;
    kafka_configuration(&server).await;
    let started = ok(
        &server,
        &[
            "rollout",
            "start",
            "gateway",
            "--version",
            "1",
            "-l",
            "env=prod",
            "--initial-batch",
            "1",
        ],
    )
    .await;
    let rid = rollout_id(&started);
    let (mut out, mut err) = (Shared::default(), Shared::default());
    let watching = out.clone();
    let watch_args = ["rollout", "watch", rid.as_str(), "--interval", "20ms"];
    let watch = within(
        "opampctl rollout watch",
        run_into(&server.api_url, &watch_args, &[], &mut out, &mut err),
    );
    let cancel = async {
        // Cancelled once the watch has shown the first batch sent and never answered.
        eventually("the watch shows a collector configuring", || async {
            watching.text().contains("configuring 1").then_some(())
        })
        .await;
        ok(&server, &["rollout", "cancel", &rid]).await
    };
    let (code, cancelled) = tokio::join!(watch, cancel);
    assert_eq!(cancelled, format!("rollout {rid} is cancelled\n"));
    assert_eq!(
        code,
        exit::ROLLOUT_CANCELLED,
        "{}{}",
        out.text(),
        err.text()
    );
    assert!(
        out.text()
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!("rollout {rid} cancelled")),
        "{}",
        out.text()
    );
}

#[tokio::test]
async fn an_upgrade_is_started_and_watched() {
    let server = TestServer::start().await;
    let _collectors = scripted(&server, &[(41, Script::Apply), (42, Script::Apply)]).await;
    let sha = "a".repeat(64);
    let run = ctl(
        &server,
        &[
            "upgrade",
            "start",
            "--package",
            "otelcol",
            "--version",
            "0.2.0",
            "--url",
            "http://packages.invalid/otelcol-0.2.0",
            "--sha256",
            &sha,
            "-l",
            "env=prod",
            "--watch",
            "--interval",
            "20ms",
        ],
    )
    .await;
    assert_eq!(run.code, exit::OK, "{run:?}");
    let rid = rollout_id(&run.out);
    assert!(
        run.out.starts_with(&format!(
            "rollout {rid} started: package otelcol 0.2.0 to 2 collectors: upgrading 2\n"
        )),
        "{run:?}"
    );
    assert!(
        run.out
            .ends_with(&format!("rollout {rid} completed: applied 2 of 2\n")),
        "{run:?}"
    );
    let api = Api::new(&server.api_url);
    for n in [41, 42] {
        // The rollout engine learns of the new version from the actor, before the batcher has
        // committed it; the API reads the store, so it may lag by a flush window.
        eventually("the new version in the store", || async {
            let c = api.ok(&format!("/api/v1/collectors/{}", id(n))).await;
            (c["version"] == "0.2.0").then_some(())
        })
        .await;
    }
}

/// A TCP proxy in front of the API whose connections the test can cut, and whose door it can
/// close (connections accepted and dropped at once) and open again.
struct Proxy {
    url: String,
    open: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let open = Arc::new(AtomicBool::new(true));
        let live: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (door, tasks) = (Arc::clone(&open), Arc::clone(&live));
        let accept = tokio::spawn(async move {
            loop {
                // A failed accept (the process out of files, say, while another test holds
                // thousands) loses that one connection, not the proxy.
                let Ok((mut inbound, _)) = listener.accept().await else {
                    tokio::task::yield_now().await;
                    continue;
                };
                if !door.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees its connection closed
                }
                let upstream = upstream.clone();
                tasks.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Self {
            url,
            open,
            live,
            accept,
        }
    }

    /// Closes the door and cuts every connection through it.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for task in self.live.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test]
async fn events_resume_after_the_connection_is_cut() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let proxy = Proxy::start(server.running().api_addr.to_string()).await;
    let (mut out, mut err) = (Shared::default(), Shared::default());
    let (printed, complaints) = (out.clone(), err.clone());
    // From the start of the history (event 0), so nothing depends on when the stream opens.
    let args = ["events", "--since", "0", "--count", "3", "-o", "json"];
    // Boxed, so that it is gone (and `out` and `err` free) once it has ended.
    let mut events = Box::pin(run_into(&proxy.url, &args, &[], &mut out, &mut err));
    let collectors = async {
        let mut first = collector(&server, 51, "gateway", "0.1.0").await;
        eventually("the first event printed", || async {
            (printed.text().lines().count() == 1).then_some(())
        })
        .await;
        proxy.cut();
        // While the client is cut off: a second collector arrives, the first turns unhealthy.
        let second = collector(&server, 52, "agent", "0.1.0").await;
        first
            .exchange(&health_report(&uid(51), 1, false, "disk full"))
            .await;
        state_is(&api, 51, "error").await;
        api.stored(id(52)).await;
        proxy.reopen();
        (first, second)
    };
    // The run goes on while the collectors act (each of their steps has its own deadline)...
    let _connected = tokio::select! {
        code = &mut events => panic!("events ended with {code} before the third event: {}", complaints.text()),
        connected = collectors => connected,
    };
    // ...and, the server reachable again, it reconnects within its longest back-off and then
    // reads the two events it missed.
    let code = tokio::time::timeout(DEADLINE + ::opampctl::EVENTS_MAX_BACKOFF, events)
        .await
        .expect("events resumed and ended after the proxy reopened");
    assert_eq!(code, exit::OK, "{}", err.text());
    let seen: Vec<Value> = out
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(String, Value, String)> = seen
        .iter()
        .map(|e| {
            (
                e["collector_id"].as_str().unwrap().to_owned(),
                e["from"].clone(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (id(51).to_string(), Value::Null, "initial".to_owned()),
            (id(52).to_string(), Value::Null, "initial".to_owned()),
            (
                id(51).to_string(),
                json!("connected"),
                "runtime_error".to_owned()
            ),
        ],
        "each event exactly once, in order"
    );
    assert!(
        err.text()
            .contains("opampctl: reconnected; resuming after event "),
        "{}",
        err.text()
    );
}

#[tokio::test]
async fn events_table_and_filters() {
    let server = TestServer::start().await;
    let api = Api::new(&server.api_url);
    let _connected = fleet(&server).await;
    // The fleet's history so far, filtered to transitions into error of env=prod collectors.
    let run = ctl(
        &server,
        &[
            "events", "--since", "0", "--count", "1", "--state", "error", "-l", "env=prod",
        ],
    )
    .await;
    assert_eq!(run.code, exit::OK, "{run:?}");
    redacted(|| insta::assert_snapshot!("events_table", run.out));
    let bad = ctl(&server, &["events", "--follow", "-l", "env in prod"]).await;
    assert_eq!(bad.code, exit::ERROR);
    assert!(bad.err.starts_with("opampctl: 400 Bad Request"), "{bad:?}");
    let usage = ctl(&server, &["events"]).await;
    assert_eq!(usage.code, exit::USAGE);
    assert!(usage.err.contains("--follow"), "{usage:?}");
    drop(api);
}

#[tokio::test]
async fn errors_are_one_line_with_their_status_and_exit_code() {
    let server = TestServer::start_with(|c| {
        c.api.keys = vec![
            api_key("viewer", Role::Viewer),
            api_key("admin", Role::Admin),
        ];
    })
    .await;
    let url = server.api_url.as_str();

    let anonymous = ctl_env(url, &["summary"], &[]).await;
    assert_eq!(anonymous.code, exit::ERROR);
    assert_eq!(
        anonymous.err,
        "opampctl: 401 Unauthorized (unauthorized): authentication required\n"
    );
    // The key from the environment; the server too.
    let viewer = [
        ("OPAMPCTL_API_KEY", "viewer-key-0123456789abcdef"),
        ("OPAMPCTL_SERVER", url),
    ];
    let summary = ctl_env("", &["summary", "-o", "json"], &viewer).await;
    assert_eq!(summary.code, exit::OK, "{summary:?}");
    let forbidden = ctl_env("", &["forget", &id(1).to_string()], &viewer).await;
    assert_eq!(
        (forbidden.code, forbidden.err.as_str()),
        (
            exit::ERROR,
            "opampctl: 403 Forbidden (forbidden): this needs the admin role\n"
        )
    );
    // The flag wins over the environment.
    let admin = ctl_env(
        "",
        &[
            "--api-key",
            "admin-key-0123456789abcdef",
            "forget",
            &id(1).to_string(),
        ],
        &viewer,
    )
    .await;
    assert!(
        admin.err.starts_with("opampctl: 404 Not Found"),
        "{admin:?}"
    );
    // A configuration file named by the environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("opampctl.toml");
    std::fs::write(
        &file,
        format!("server = \"{url}\"\napi_key = \"viewer-key-0123456789abcdef\"\n"),
    )
    .unwrap();
    let from_file = ctl_env(
        "",
        &["summary"],
        &[("OPAMPCTL_CONFIG", file.to_str().unwrap())],
    )
    .await;
    assert_eq!(from_file.code, exit::OK, "{from_file:?}");

    // Nobody there: its own exit code.
    let nobody = ctl_env("http://127.0.0.1:1", &["summary"], &[]).await;
    assert_eq!(nobody.code, exit::UNREACHABLE);
    assert!(
        nobody
            .err
            .starts_with("opampctl: cannot reach http://127.0.0.1:1: "),
        "{nobody:?}"
    );
    assert_eq!(nobody.err.lines().count(), 1);
    let ftp = ctl_env("ftp://127.0.0.1:1", &["summary"], &[]).await;
    assert_eq!(ftp.code, exit::USAGE);
    assert!(ftp.err.contains("neither http nor https"), "{ftp:?}");
}

#[tokio::test]
async fn https_servers_are_trusted_through_the_ca_given() {
    let pki = crate::support::tls::Pki::new("operators' CA");
    let server =
        TestServer::start_with(|c| c.api.tls = Some(pki.serve(&pki.server(1), None))).await;
    let url = format!("https://{}", server.running().api_addr);
    let ca = pki.path("ca.pem");
    let trusted = ctl_env(&url, &["--ca-cert", ca.to_str().unwrap(), "summary"], &[]).await;
    assert_eq!(trusted.code, exit::OK, "{trusted:?}");
    // Without the CA the server's certificate is not trusted: unreachable, with the reason.
    let untrusted = ctl_env(&url, &["summary"], &[]).await;
    assert_eq!(untrusted.code, exit::UNREACHABLE, "{untrusted:?}");
    assert!(untrusted.err.contains("certificate"), "{untrusted:?}");
}

#[tokio::test]
async fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let run = ctl_env("", &["completion", shell], &[]).await;
        assert_eq!(run.code, exit::OK, "{shell}: {run:?}");
        for word in ["opampctl", "rollout", "collectors", "selector"] {
            assert!(run.out.contains(word), "{shell} completion lacks {word}");
        }
    }
    let help = ctl_env("", &["--help"], &[]).await;
    assert_eq!(help.code, exit::OK);
    assert!(help.out.contains("Exit codes: 0 done"), "{help:?}");
}

/// `--facet` filters, the state column shows the facets, `describe` lists them.
#[tokio::test]
async fn facets_filter_and_show_beside_the_state() {
    let server = TestServer::start().await;
    let (sick, well) = (new_uid(), new_uid());
    for uid in [&sick, &well] {
        post_ok(&server.opamp_url, &hello(uid, 0)).await;
    }
    post_ok(&server.opamp_url, &crate::facets::health(&sick, 1, false)).await;
    let api = Api::new(&server.api_url);
    let path = format!("/api/v1/collectors/{}", id_of(&sick));
    eventually("degraded", || async {
        (api.ok(&path).await["facets"] == json!(["degraded"])).then_some(())
    })
    .await;
    let listed = ok(&server, &["get", "collectors", "--facet", "degraded"]).await;
    assert!(listed.contains(&id_of(&sick).to_string()), "{listed}");
    assert!(listed.contains("connected (degraded)"), "{listed}");
    assert!(!listed.contains(&id_of(&well).to_string()), "{listed}");
    let described = ok(
        &server,
        &["describe", "collector", &id_of(&sick).to_string()],
    )
    .await;
    assert!(
        described
            .lines()
            .any(|l| l.starts_with("Facets:") && l.ends_with("degraded")),
        "{described}"
    );
}

/// `offer apply|list|get|delete` and `message`, against the API's own answers.
#[tokio::test]
async fn offers_and_custom_messages() {
    let server = TestServer::start().await;
    let _connected = fleet(&server).await;
    let api = Api::new(&server.api_url);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gold.json");
    std::fs::write(
        &file,
        json!({
            "name": "gold",
            "selector": "tier=gold",
            "own_metrics": {"destination_endpoint": "https://otlp.example.com/v1/metrics"},
            "other_connections": {"kafka": {"destination_endpoint": "kafka:9092"}},
        })
        .to_string(),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let created = ok(&server, &["offer", "apply", "-f", path]).await;
    let replaced = ok(&server, &["offer", "apply", "-f", path]).await;
    let listed = ok(&server, &["offer", "list"]).await;
    redacted(|| {
        insta::assert_snapshot!("offer_apply", format!("{created}{replaced}"));
        insta::assert_snapshot!("offer_list", listed);
    });
    let as_json = ok(&server, &["offer", "get", "gold", "-o", "json"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&as_json).unwrap(),
        api.ok("/api/v1/connection-settings/gold").await
    );
    assert_eq!(
        ok(&server, &["offer", "delete", "gold"]).await,
        "offer gold deleted\n"
    );
    let gone = ctl(&server, &["offer", "get", "gold"]).await;
    assert_eq!(gone.code, exit::ERROR, "{gone:?}");

    // The fleet's collectors declare no custom capability.
    let refused = ctl(
        &server,
        &[
            "message",
            &id(1).to_string(),
            "--capability",
            "io.example.ping",
            "--type",
            "ping",
        ],
    )
    .await;
    assert_eq!(refused.code, exit::ERROR, "{refused:?}");
    assert!(refused.err.contains("409"), "{refused:?}");
    assert_eq!(
        ok(
            &server,
            &[
                "message",
                "-l",
                "env=prod",
                "--capability",
                "io.example.ping",
                "--type",
                "ping",
                "--data",
                "aGk="
            ],
        )
        .await,
        "message sent to 0 collectors\n"
    );
}

/// A rollout with more targets than `GET /rollouts/{id}` answers: `status` pages the rest, and
/// every count is of all of them.
#[tokio::test]
async fn status_and_watch_read_every_target_of_a_large_rollout() {
    let server = TestServer::start().await;
    let mut r = crate::rollout_targets::rollout(250);
    r.status = opampd::fleet::rollout::Status::Completed;
    r.targets[0].outcome = opampd::fleet::rollout::Outcome::Failed;
    r.targets[0].error = "exporter refused".into();
    let targets: Vec<_> = r.targets.iter().collect();
    crate::rollout_targets::save(server.store(), &r, &targets).await;

    let status = ok(&server, &["rollout", "status", &r.id]).await;
    assert!(status.contains("(of 250)"), "{status}");
    let rows = status.lines().filter(|l| l.contains("-0000-0000-")).count();
    assert_eq!(rows, 250, "{status}");
    assert!(ok(&server, &["rollout", "list"]).await.contains(&r.id));
    let watched = ctl(&server, &["rollout", "watch", &r.id]).await;
    assert!(watched.out.contains("of 250"), "{watched:?}");
    assert!(watched.out.contains("exporter refused"), "{watched:?}");
}

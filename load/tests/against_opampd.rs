//! The load generator against the real opampd, started in this process on loopback port 0:
//! every mode over both transports, a server restart, and configurations applied and refused.

// A failed expectation in a test is meant to panic, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use http_body_util::{BodyExt as _, Full};
use opampd::app::Running;
use opampd::config::Config;
use opampd_load::{Args, Hooks, Mode, Report, Stage, run, run_with};
use tokio::sync::watch;

/// A passing test never waits this long.
const DEADLINE: Duration = Duration::from_secs(30);

const ADMIN_KEY: &str = "load-test-admin-key-0123456789";

struct Server {
    running: Option<Running>,
    config: Config,
    _data: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let data = tempfile::tempdir().expect("temporary directory");
        let mut config = Config::default();
        config.opamp.listen = "127.0.0.1:0".parse().unwrap();
        config.api.listen = "127.0.0.1:0".parse().unwrap();
        config.database.flush_interval = Duration::from_millis(5);
        config.server.data_dir = data.path().to_owned();
        config.server.shutdown_timeout = Duration::from_secs(2);
        // Writes need a key; this one is the test's own.
        config.api.keys = vec![opampd::config::ApiKey {
            name: "load-test".into(),
            key: ADMIN_KEY.into(),
            key_sha256: String::new(),
            role: opampd::config::Role::Admin,
        }];
        adjust(&mut config);
        let running = opampd::app::start(config.clone())
            .await
            .expect("server starts");
        // Restarts come back on the same ports.
        config.opamp.listen = running.opamp_addr;
        config.api.listen = running.api_addr;
        Self {
            running: Some(running),
            config,
            _data: data,
        }
    }

    fn opamp(&self) -> SocketAddr {
        self.config.opamp.listen
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}{}", self.opamp(), self.config.opamp.path)
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.expect("clean shutdown");
        }
    }

    async fn restart(&mut self) {
        self.stop().await;
        let running = opampd::app::start(self.config.clone())
            .await
            .expect("server starts again on the same ports");
        self.running = Some(running);
    }

    fn connected(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.registry.resident())
    }
}

fn args(url: &str, mode: Mode, collectors: usize, extra: &[&str]) -> Args {
    let mode = match mode {
        Mode::Hold => "hold",
        Mode::Burst => "burst",
        Mode::Storm => "storm",
    };
    let collectors = collectors.to_string();
    let mut argv = vec![
        "opampd-load",
        "--url",
        url,
        "--mode",
        mode,
        "-n",
        &collectors,
        "--rate",
        "1000",
        "--source-addrs",
        "127.0.0.1-127.0.0.4",
        "--reconnect-jitter",
        "50ms",
        "--reply-timeout",
        "10s",
        "--quiet",
    ];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).expect("valid flags")
}

async fn load(args: Args) -> Report {
    let report = tokio::time::timeout(DEADLINE, run(args))
        .await
        .expect("the run ends in time")
        .expect("the run starts");
    eprintln!("{}", report.human());
    report
}

fn assert_sane(report: &Report, n: u64) {
    assert!(report.ok, "{:?}", report.failures);
    assert_eq!(report.ramp.connected, n);
    assert_eq!(report.ramp.not_connected, 0);
    assert_eq!(report.errors.total, 0, "{:?}", report.errors.by_kind);
    assert_eq!(report.ramp.connect_latency.count, n);
    assert!(report.ramp.connect_latency.max_ms > 0.0);
    assert!(report.ramp.connect_latency.p50_ms <= report.ramp.connect_latency.p99_ms);
    // The JSON line holds the same figures.
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON line");
    assert_eq!(json["ramp"]["connected"], n);
    assert_eq!(json["errors"]["total"], 0);
    assert_eq!(json["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_heartbeats_over_both_transports() {
    let mut server = Server::start().await;
    for scheme in ["ws", "http"] {
        let report = load(args(
            &server.url(scheme),
            Mode::Hold,
            30,
            &["--heartbeat", "100ms", "--duration", "1s"],
        ))
        .await;
        assert_sane(&report, 30);
        // About 10 heartbeats each in the second; allow a slow machine half of that.
        assert!(
            report.measure.heartbeats_acked >= 30 * 5,
            "{scheme}: {:?}",
            report.measure
        );
        // Latencies are recorded while the phase is Measure, `received` counted between two
        // snapshots taken beside the phase switches: a collector's reply (one in flight each)
        // may fall between a snapshot and a switch, at each end of the window.
        let (timed, received) = (report.measure.reply_latency.count, report.measure.received);
        assert!(
            timed.abs_diff(received) <= 30 && timed > 0,
            "{scheme}: {timed} replies timed, {received} received"
        );
        assert!(report.measure.messages_per_s > 0.0);
        assert_eq!(report.reconnection.drops, 0);
    }
    assert_eq!(server.connected(), 60);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_sends_acknowledged_status_changes_over_both_transports() {
    let mut server = Server::start().await;
    for scheme in ["ws", "http"] {
        let report = load(args(
            &server.url(scheme),
            Mode::Burst,
            24,
            &["--duration", "1s"],
        ))
        .await;
        assert_sane(&report, 24);
        assert!(
            report.measure.changes_acked >= 24,
            "{scheme}: {:?}",
            report.measure
        );
        assert!(report.measure.changes_per_s > 0.0);
        assert!(report.measure.reply_latency.p99_ms > 0.0);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_bursts_send_no_more_than_one_change_per_interval() {
    let mut server = Server::start().await;
    let report = load(args(
        &server.url("ws"),
        Mode::Burst,
        20,
        &["--duration", "2s", "--change-interval", "400ms"],
    ))
    .await;
    assert_sane(&report, 20);
    // At most one change per 400 ms from each collector over 2 s (and a first one somewhere in
    // its first interval): 6 each. Back to back they would send hundreds.
    assert!(
        (1..=20 * 6).contains(&report.measure.changes_acked),
        "{:?}",
        report.measure
    );
    assert!((report.change_interval_s - 0.4).abs() < 1e-9);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_reconnects_every_collector_over_both_transports() {
    let mut server = Server::start().await;
    for (scheme, extra) in [("ws", None), ("ws", Some("--close-frame")), ("http", None)] {
        let mut flags = vec!["--storm-after", "100ms", "--duration", "20s"];
        flags.extend(extra);
        let report = load(args(&server.url(scheme), Mode::Storm, 30, &flags)).await;
        assert_sane(&report, 30);
        let storm = report.storm.as_ref().expect("storm figures");
        assert_eq!(storm.dropped, 30, "{scheme} {extra:?}");
        assert_eq!(storm.back, 30);
        assert_eq!(report.reconnection.reconnects, 30);
        assert_eq!(storm.latency.count, 30);
        let all_back = storm.all_back_s.expect("every collector came back");
        // Both are rounded: to the millisecond and to three significant digits.
        assert!(all_back * 1000.0 + 1.0 >= storm.latency.max_ms * 0.99);
        assert_eq!(report.reconnection.drops, 0);
    }
    server.stop().await;
}

/// A server at its connection limit answers 503 with `Retry-After`: the collectors wait as long
/// as they are told, send again, and every one gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_http_collectors_wait_and_get_through() {
    let mut server = Server::start_with(|config| {
        config.opamp.max_connections = 2;
        config.opamp.retry_after = Duration::from_secs(1);
        // Every socket holds a place, idle kept-alive ones included, until idle_timeout: a
        // short one lets the two places go round the twelve collectors.
        config.opamp.idle_timeout = Duration::from_millis(200);
    })
    .await;
    let report = load(args(
        &server.url("http"),
        Mode::Burst,
        12,
        &["--duration", "2s", "--max-errors", "100000"],
    ))
    .await;
    assert!(report.ok, "{:?}", report.failures);
    assert_eq!(report.ramp.connected, 12);
    let throttled = report.errors.by_kind.get("throttled").copied().unwrap_or(0);
    assert!(throttled > 0, "{:?}", report.errors);
    assert_eq!(report.errors.total, throttled, "{:?}", report.errors);
    assert!(report.measure.changes_acked > 0);
    // A throttled collector stayed away at least the second it was told to: with twelve
    // collectors and two places, nobody can have had more than two tries a second.
    assert!(throttled <= 12 * 2 * 4, "{:?}", report.errors);
    server.stop().await;
}

/// The restart benchmark's pattern: the server goes away under load and comes back; every
/// collector reconnects and the run says how long that took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_waited_for_and_timed() {
    let mut server = Server::start().await;
    for scheme in ["ws", "http"] {
        let (stage_tx, mut stage) = watch::channel(Stage::Starting);
        let run = tokio::spawn(run_with(
            args(
                &server.url(scheme),
                Mode::Hold,
                20,
                &[
                    "--heartbeat",
                    "100ms",
                    "--duration",
                    "25s",
                    "--wait-for-server-restart",
                ],
            ),
            Hooks {
                stage: Some(stage_tx),
                stop: None,
            },
        ));
        tokio::time::timeout(DEADLINE, stage.wait_for(|s| *s == Stage::Measuring))
            .await
            .expect("the ramp ends in time")
            .expect("the run goes on");
        server.restart().await;
        let report = tokio::time::timeout(DEADLINE, run)
            .await
            .expect("the run ends in time")
            .expect("the run does not panic")
            .expect("the run starts");
        eprintln!("{}", report.human());
        assert!(report.ok, "{scheme}: {:?}", report.failures);
        assert_eq!(report.errors.total, 0, "{:?}", report.errors.by_kind);
        assert_eq!(report.reconnection.drops, 20, "{scheme}");
        assert_eq!(report.reconnection.collectors_dropped, 20);
        assert_eq!(report.reconnection.reconnects, 20);
        assert_eq!(report.reconnection.max_down, 20);
        assert_eq!(report.reconnection.down_at_end, 0);
        assert!(report.reconnection.first_drop_to_all_back_s.is_some());
    }
    server.stop().await;
}

const CONFIG_BODY: &str = r#"{"name": "load", "yaml": "receivers:\n  otlp: {}\nexporters:\n  debug: {}\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n"}"#;

/// A configuration rolled out through opampd's API reaches every simulated collector, which
/// applies it (or refuses it, with `--fail-configs`) and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_configurations_are_applied_or_refused() {
    for (scheme, fail) in [("ws", false), ("http", true)] {
        let mut server = Server::start().await;
        let api = server.config.api.listen;
        let (status, body) = post_json(api, "/api/v1/configurations", CONFIG_BODY).await;
        assert_eq!(status, 201, "{body}");
        let (stage_tx, mut stage) = watch::channel(Stage::Starting);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut flags = vec![
            "--heartbeat",
            "100ms",
            "--duration",
            "25s",
            "--report-applying",
        ];
        if fail {
            flags.push("--fail-configs");
        }
        let run = tokio::spawn(run_with(
            args(&server.url(scheme), Mode::Hold, 12, &flags),
            Hooks {
                stage: Some(stage_tx),
                stop: Some(stop_rx),
            },
        ));
        tokio::time::timeout(DEADLINE, stage.wait_for(|s| *s == Stage::Measuring))
            .await
            .expect("the ramp ends in time")
            .expect("the run goes on");
        // The rollout reads collectors from the store: wait until it has all twelve.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (_, page) = get_json(api, "/api/v1/collectors?limit=500").await;
            let connected = page["items"].as_array().map_or(0, |items| {
                items.iter().filter(|c| c["connected"] == true).count()
            });
            if connected == 12 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "collectors: {page}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The empty selector matches every collector: this run's twelve.
        let (status, body) = post_json(
            api,
            "/api/v1/rollouts",
            r#"{"configuration": "load", "version": 1, "initial_batch": 100, "max_batch": 100, "max_errors": 100}"#,
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().expect("rollout id").to_owned();
        let outcome = if fail { "failed" } else { "applied" };
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (_, view) = get_json(api, &format!("/api/v1/rollouts/{id}")).await;
            if view["progress"][outcome] == 12 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "rollout: {view}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send_replace(true);
        let report = tokio::time::timeout(DEADLINE, run)
            .await
            .expect("the run ends in time")
            .expect("no panic")
            .expect("the run starts");
        eprintln!("{}", report.human());
        assert!(report.ok, "{:?}", report.failures);
        let expected = if fail { (0, 12) } else { (12, 0) };
        assert_eq!(
            (report.configs.applied, report.configs.failed),
            expected,
            "{scheme}"
        );
        server.stop().await;
    }
}

async fn request_json(
    api: SocketAddr,
    method: http::Method,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(api).await.expect("API");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", api.to_string())
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .body(Full::new(bytes::Bytes::from(body.unwrap_or("").to_owned())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

async fn post_json(api: SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    request_json(api, http::Method::POST, path, Some(body)).await
}

async fn get_json(api: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    request_json(api, http::Method::GET, path, None).await
}

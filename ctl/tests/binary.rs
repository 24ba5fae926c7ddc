//! The real `opampctl` binary against a real server (started in this process): the environment
//! and a configuration file, output on stdout, one error line on stderr, and the exit codes.
//! Every command's behaviour is tested in-process by the server's `tests/it/opampctl.rs`; this
//! checks what only the process itself does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

use opampd::config::Config;

const DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    running: Option<opampd::app::Running>,
    url: String,
    _data: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.opamp.listen = "127.0.0.1:0".parse().unwrap();
        config.api.listen = "127.0.0.1:0".parse().unwrap();
        config.server.data_dir = data.path().to_owned();
        let running = tokio::time::timeout(DEADLINE, opampd::app::start(config))
            .await
            .expect("the server starts in time")
            .expect("the server starts");
        Self {
            url: format!("http://{}", running.api_addr),
            running: Some(running),
            _data: data,
        }
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
    }
}

/// Runs the binary with only the given environment (and PATH), to its end within the deadline.
async fn opampctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_opampctl"));
    command
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("opampctl ends in time")
        .expect("opampctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_binary_reads_its_environment_and_says_what_went_wrong_in_one_line() {
    let server = Server::start().await;
    let url = server.url.clone();
    let env = [("OPAMPCTL_SERVER", url.as_str())];

    let summary = opampctl(&["summary", "-o", "json"], &env).await;
    assert_eq!(summary.status.code(), Some(0), "{}", text(&summary.stderr));
    let body: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(body["total"], 0);
    assert!(summary.stderr.is_empty());

    let table = opampctl(&["summary"], &env).await;
    let table = text(&table.stdout);
    assert!(
        table.starts_with("STATE          COLLECTORS\nconnected      0\n"),
        "{table}"
    );
    assert!(table.ends_with("total          0\n"), "{table}");

    let unknown = "01900000-0000-7000-8000-000000000000";
    let missing = opampctl(&["describe", "collector", unknown], &env).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
    assert_eq!(
        text(&missing.stderr),
        format!("opampctl: 404 Not Found (not_found): no collector {unknown}\n")
    );

    // A configuration file, named by the environment, and a bad flag.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, format!("server = \"{}\"\n", server.url)).unwrap();
    let from_file = opampctl(
        &["get", "collectors"],
        &[("OPAMPCTL_CONFIG", file.to_str().unwrap())],
    )
    .await;
    assert_eq!(
        from_file.status.code(),
        Some(0),
        "{}",
        text(&from_file.stderr)
    );
    assert_eq!(text(&from_file.stderr), "No collectors found.\n");
    let usage = opampctl(&["get", "collectors", "-o", "xml"], &env).await;
    assert_eq!(usage.status.code(), Some(2));

    server.stop().await;
    let gone = opampctl(&["summary"], &env).await;
    assert_eq!(gone.status.code(), Some(3));
    let stderr = text(&gone.stderr);
    assert!(
        stderr.starts_with("opampctl: cannot reach http://127.0.0.1:"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test]
async fn the_binary_prints_completions_and_help() {
    let bash = opampctl(&["completion", "bash"], &[]).await;
    assert_eq!(bash.status.code(), Some(0));
    assert!(
        text(&bash.stdout).contains("opampctl__subcmd__rollout__subcmd__watch"),
        "bash completion"
    );
    let help = opampctl(&["rollout", "watch", "--help"], &[]).await;
    assert_eq!(help.status.code(), Some(0));
    assert!(text(&help.stdout).contains("--interval"));
}

/// On a machine without a certificate store (the container image has none), plain `http://`
/// works all the same: the system's roots are only needed for `https://`.
#[tokio::test]
async fn the_binary_works_without_a_certificate_store() {
    let server = Server::start().await;
    let nowhere = [
        ("SSL_CERT_FILE", "/nonexistent/ca.pem"),
        ("SSL_CERT_DIR", "/nonexistent"),
    ];
    let output = opampctl(
        &["--server", &server.url, "summary", "-o", "json"],
        &nowhere,
    )
    .await;
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(text(&output.stdout).contains("by_state"));
    server.stop().await;
}

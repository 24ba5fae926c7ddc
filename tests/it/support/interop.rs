//! The real third-party OpAMP clients (Python `opentelemetry-opamp-client`, Node
//! `@elastic/opamp-client-node`), installed at pinned versions by `tests/interop/setup.sh` and
//! scripted through the drivers in `tests/interop/`: JSON-line events out, JSON-line commands in.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{OnceCell, mpsc};

use super::DEADLINE;

#[derive(Debug, Clone, Copy)]
pub enum Client {
    Python,
    Node,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn interop_dir() -> PathBuf {
    std::env::var_os("OPAMPD_INTEROP_DIR")
        .map_or_else(|| repo().join("target/interop"), |dir| repo().join(dir))
}

/// The first install downloads both clients; a second run takes well under a second.
const INSTALL_DEADLINE: Duration = Duration::from_mins(5);

/// Installs both clients once per test run (the script is idempotent and locks itself).
async fn ensure_installed() {
    static INSTALLED: OnceCell<Result<(), String>> = OnceCell::const_new();
    let result = INSTALLED
        .get_or_init(|| async {
            let install = Command::new("bash")
                .arg(repo().join("tests/interop/setup.sh"))
                .current_dir(repo())
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(INSTALL_DEADLINE, install)
                .await
                .map_err(|_| format!("tests/interop/setup.sh took over {INSTALL_DEADLINE:?}"))?
                .map_err(|e| format!("cannot run tests/interop/setup.sh: {e}"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "tests/interop/setup.sh failed (it needs python3 with venv, node and npm, \
                     and access to PyPI and npm):\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        })
        .await;
    if let Err(message) = result {
        panic!("{message}");
    }
}

/// One real client process driving one collector.
pub struct Driver {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event seen so far, for failure messages.
    pub seen: Vec<Value>,
}

impl Driver {
    /// Starts a client against `endpoint` with a one-second heartbeat and waits for it to start.
    pub async fn start(client: Client, endpoint: &str, extra: &[&str]) -> Self {
        Self::start_with_env(client, endpoint, extra, &[]).await
    }

    /// [`Driver::start`] with extra environment variables (a CA bundle for `https://`, say).
    pub async fn start_with_env(
        client: Client,
        endpoint: &str,
        extra: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Self {
        ensure_installed().await;
        let mut command = match client {
            Client::Python => {
                let mut c = Command::new(interop_dir().join("venv/bin/python"));
                c.arg(repo().join("tests/interop/python_collector.py"));
                c
            }
            Client::Node => {
                let mut c = Command::new("node");
                c.arg(repo().join("tests/interop/node_collector.mjs"));
                c.arg("--interop-dir").arg(interop_dir());
                c
            }
        };
        command
            .args(["--endpoint", endpoint, "--heartbeat-seconds", "1"])
            .args([
                "--service-name",
                &format!("{client:?}-collector").to_lowercase(),
            ])
            .args(extra)
            .envs(env.iter().copied())
            .current_dir(repo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("the client driver starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"event": "unparsable", "line": line}));
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut driver = Self {
            child,
            stdin,
            events,
            seen: Vec::new(),
        };
        driver.expect("started").await;
        driver
    }

    /// Waits for the next event named `name` (skipping others) and returns it.
    pub async fn expect(&mut self, name: &str) -> Value {
        self.expect_where(name, |_| true).await
    }

    /// Waits for an event named `name` that satisfies `check`.
    pub async fn expect_where(&mut self, name: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {name:?} event in time; seen: {:#?}", self.seen))
                .unwrap_or_else(|| panic!("driver ended before {name:?}; seen: {:#?}", self.seen));
            self.seen.push(event.clone());
            if event["event"] == name && check(&event) {
                return event;
            }
        }
    }

    pub async fn command(&mut self, command: Value) {
        let stdin = self.stdin.as_mut().expect("driver stdin open");
        let mut line = command.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .await
            .expect("write command");
        stdin.flush().await.expect("flush command");
    }

    /// Asks the client to stop cleanly and waits for it to exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.command(json!({"cmd": "stop"})).await;
        self.expect("stopped").await;
        self.stdin.take();
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("the driver exits in time")
            .expect("exit status")
    }

    /// Client-reported errors so far (a rejected reply would show up here).
    pub fn errors(&self) -> Vec<&Value> {
        self.seen.iter().filter(|e| e["event"] == "error").collect()
    }
}

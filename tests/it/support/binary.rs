//! The real `opampd` binary: every run of it goes through [`command`], with the shipped
//! `config/opampd.toml`, in a temporary directory that holds its data, with both listeners on
//! loopback port 0 unless the test says otherwise, and is killed if it outlives its test. A server is started with JSON logs, so tests find its addresses in its start-up line
//! and stop it with real signals; a command is run to its end within the deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{DEADLINE, within};

/// The binary as every test runs it. A run that wrongly starts the server (a configuration check
/// that lets a bad value through, say) binds loopback port 0 and writes into `data`, never the
/// checkout, even if it ignores the configuration; flags and the test's own variables still win
/// over these.
fn command(data: &Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/opampd.toml");
    let mut command = Command::new(env!("CARGO_BIN_EXE_opampd"));
    command
        .current_dir(data)
        .env("OPAMPD_CONFIG", shipped)
        .env("OPAMPD_SERVER__DATA_DIR", data)
        .env("OPAMPD_OPAMP__LISTEN", "127.0.0.1:0")
        .env("OPAMPD_API__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .args(args)
        .kill_on_drop(true);
    for (key, value) in envs {
        command.env(key, value);
    }
    command
}

/// Runs the binary with `args` to its end, within the deadline, in a temporary data directory.
pub async fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let data = tempfile::tempdir().expect("a temporary directory");
    run_with_data(data.path(), args, envs).await
}

/// [`run`] with `data` as the data directory, which the test then inspects.
pub async fn run_with_data(data: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let output = command(data, args, envs).stdin(Stdio::null()).output();
    let what = format!("opampd {} to exit", args.join(" "));
    within(what.trim(), output).await.expect("opampd runs")
}

pub struct ServerProcess {
    child: Child,
    pub opamp_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// Every log line so far, as JSON text.
    pub logs: Arc<Mutex<Vec<String>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
    /// The data directory this process made for itself, if the test gave none.
    owned_data: Option<tempfile::TempDir>,
    _key: super::api::KnownKey,
}

impl ServerProcess {
    /// Starts the binary with the shipped `config/opampd.toml`, with
    /// a SQLite database in a fresh temporary data directory.
    pub async fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("a temporary directory");
        let mut process = Self::start_with_data(data.path(), args, envs).await;
        process.owned_data = Some(data);
        process
    }

    /// Starts the binary with `data` as its data directory (a restarted server finds its SQLite
    /// database there).
    pub async fn start_with_data(data: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut command = command(data, args, envs);
        command
            .args(["--log-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("opampd binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addrs_tx, addrs_rx) = tokio::sync::oneshot::channel();
        let sink = Arc::clone(&logs);
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut addrs_tx = Some(addrs_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "opampd is listening"
                    && let Some(tx) = addrs_tx.take()
                {
                    let addr = |key: &str| event[key].as_str().and_then(|s| s.parse().ok());
                    let _ = tx.send((addr("opamp_addr"), addr("api_addr")));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (opamp, api) = tokio::time::timeout(DEADLINE, addrs_rx)
            .await
            .expect("opampd logs its addresses before the deadline")
            .expect("opampd logs its addresses");
        let api_addr: SocketAddr = api.expect("api_addr in the start-up line");
        let key = super::api::remember_generated_key(&format!("http://{api_addr}"), data);
        Self {
            _key: key,
            child,
            opamp_addr: opamp.expect("opamp_addr in the start-up line"),
            api_addr,
            logs,
            reader: Some(reader),
            owned_data: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    pub fn opamp_url(&self) -> String {
        format!("http://{}/v1/opamp", self.opamp_addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/opamp", self.opamp_addr)
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit and for its last log line to be read.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("opampd exits before the deadline")
            .expect("exit status");
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(DEADLINE, reader).await;
        }
        status
    }

    /// Waits until a JSON log event satisfies `check`, and returns it.
    pub async fn wait_logged(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        super::eventually(what, || async {
            self.events().into_iter().find(|e| check(e))
        })
        .await
    }

    /// Whether a log event's message is exactly `message`.
    pub fn logged(&self, message: &str) -> bool {
        self.events()
            .iter()
            .any(|event| event["message"] == message)
    }

    /// Every log event so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let logs = self.logs.lock().unwrap();
        logs.iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// A failing test shows what the server said: its logs are otherwise only read by assertions.
impl Drop for ServerProcess {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(logs) = self.logs.lock() else {
            return;
        };
        let skipped = logs.len().saturating_sub(200);
        eprintln!(
            "--- opampd (api {}) said, last {} lines ---",
            self.api_addr,
            logs.len() - skipped
        );
        for line in &logs[skipped..] {
            eprintln!("{line}");
        }
    }
}

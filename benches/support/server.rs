//! The real `opampd` binary as the benchmarks run it: started on given addresses and database,
//! waited on until ready, stopped with SIGTERM, its memory read from `/proc`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    ready: Ready,
}

/// How a started server shows that it is ready.
enum Ready {
    /// `GET /readyz` at this API address answers 200.
    Api(String),
    /// This OpAMP address accepts connections: a server with no API (the figures bench's floor).
    Accepts(String),
}

/// A benchmark's size from the environment variable `name`, else `default`.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The runtime a benchmark's `main` runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP client with a minute's timeout. reqwest is built with rustls but without a crypto
/// provider of its own (its default needs cmake); ring, the server's, is installed for it.
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_mins(1))
        .build()
        .unwrap()
}

/// A GET answered with JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

impl Server {
    /// The real binary on these addresses and this database; `env` adds settings.
    pub fn start(
        data: &std::path::Path,
        database: &str,
        opamp: &str,
        api: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_opampd"));
        command
            .args([
                "--opamp-listen",
                opamp,
                "--api-listen",
                api,
                "--log-level",
                "warn",
            ])
            .env("OPAMPD_DATABASE__URL", database)
            .env("OPAMPD_SERVER__DATA_DIR", data)
            .env("OPAMPD_OPAMP__MAX_CONNECTIONS", "20000")
            .env("OPAMPD_SERVER__SHUTDOWN_TIMEOUT", "60s")
            .current_dir(data);
        Self::spawn(command, env, Ready::Api(api.to_owned()))
    }

    /// This benchmark's own executable started again with `env`, as a server of the bench's own
    /// on `opamp` (the figures bench's floor). It has no API: it is ready once it accepts.
    pub fn itself(opamp: &str, env: &[(&str, &str)]) -> Self {
        let command = Command::new(std::env::current_exe().unwrap());
        Self::spawn(command, env, Ready::Accepts(opamp.to_owned()))
    }

    /// `command`, with `env` added, started as a server that shows it is ready as `ready` says.
    fn spawn(mut command: Command, env: &[(&str, &str)], ready: Ready) -> Self {
        let child = command
            .stdout(Stdio::null())
            .envs(env.iter().copied())
            .spawn()
            .expect("the server starts");
        Self { child, ready }
    }

    pub async fn ready(&mut self, client: &reqwest::Client) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited at start-up: {status}");
            }
            let ready = match &self.ready {
                Ready::Api(api) => client
                    .get(format!("http://{api}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200),
                Ready::Accepts(opamp) => tokio::net::TcpStream::connect(opamp).await.is_ok(),
            };
            if ready {
                return started.elapsed();
            }
            assert!(started.elapsed() < Duration::from_mins(2), "not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, and how long until it exited.
    pub fn stop(&mut self) -> (Duration, bool) {
        let started = Instant::now();
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        (started.elapsed(), status.success())
    }
}

impl Server {
    /// SIGKILL: the node dies without a word.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time (user and system) the server has used so far, from `/proc` (Linux counts it
    /// in ticks of 1/100 s).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let sample = opampd_load::procfs::sample(self.child.id()).ok()?;
        Some(sample.cpu.as_secs_f64())
    }

    /// The server's resident memory now, from `/proc`.
    pub fn rss_kib(&self) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()?
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Server {
    /// A run that fails part-way leaves no server behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

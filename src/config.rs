//! One typed configuration: built-in defaults, then the TOML file, then `OPAMPD_*` variables, then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::net::tls::{ClientAuth, TlsConfig};

/// The file read when no `--config` is given; missing is fine, it only layers over the defaults.
pub const DEFAULT_CONFIG_FILE: &str = "config/opampd.toml";

/// More sockets on one address than this only spread the same accept work thinner.
const MAX_ACCEPT_QUEUES: usize = 16;

/// Top-level sections; only `OPAMPD_<SECTION>__…` variables are read, so unrelated `OPAMPD_*`
/// variables in the environment (a test harness's, a wrapper's) cannot fail start-up.
const SECTIONS: &[&str] = &[
    "opamp",
    "api",
    "log",
    "server",
    "database",
    "collectors",
    "custom_messages",
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub opamp: OpampConfig,
    pub api: ApiConfig,
    pub log: LogConfig,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub collectors: CollectorsConfig,
    pub custom_messages: CustomMessagesConfig,
    pub cluster: ClusterConfig,
}

/// Custom messages between operators and collectors (OpAMP `CustomMessage`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CustomMessagesConfig {
    /// The custom capabilities opampd announces; collectors' messages are relayed only for these.
    pub capabilities: Vec<String>,
    /// Largest message data either way, in bytes.
    pub max_bytes: usize,
    /// Messages per minute per collector, each way (a burst of as many is allowed).
    pub per_minute: u32,
}

impl Default for CustomMessagesConfig {
    fn default() -> Self {
        let limits = crate::collector::custom::CustomLimits::default();
        Self {
            capabilities: Vec::new(),
            max_bytes: limits.max_bytes,
            per_minute: limits.per_minute,
        }
    }
}

impl CustomMessagesConfig {
    pub fn limits(&self) -> crate::collector::custom::CustomLimits {
        let mut names = self.capabilities.clone();
        names.sort();
        names.dedup();
        crate::collector::custom::CustomLimits {
            capabilities: names.into(),
            max_bytes: self.max_bytes,
            per_minute: self.per_minute,
        }
    }
}

/// Several nodes on one PostgreSQL (ignored on SQLite, which serves one node).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// How often this node says it is alive (and looks for silent nodes).
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// A node silent this long is taken as dead: its collectors are marked Disconnected, and it
    /// loses the rollout engine's lease.
    #[serde(with = "humantime_serde")]
    pub node_timeout: Duration,
    /// How long a command for a collector held by another node waits for that node's answer.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            renew_interval: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorsConfig {
    /// How long a collector stays resident (its actor in memory) after it disconnected; a return
    /// within it costs no store read.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// Most collectors resident at once; beyond it new ones are asked to come back later.
    pub max_resident: usize,
}

impl Default for CollectorsConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_mins(1),
            max_resident: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OpampConfig {
    /// Both transports share this address and path, as the spec recommends.
    pub listen: SocketAddr,
    pub path: String,
    /// Largest accepted message, header included, measured after decompression (spec default 64 MiB).
    pub max_message_bytes: usize,
    /// Message bytes in flight across all connections (being read, decoded, handled), beyond
    /// each connection's reserve; past it, "try again later".
    pub message_budget_bytes: usize,
    /// Bytes of its current message each connection may hold without drawing on the budget.
    pub connection_reserve_bytes: usize,
    /// Open sockets, counted from accept (idle keep-alives and upgraded WebSockets included);
    /// beyond it new ones get 503.
    pub max_connections: usize,
    /// Sockets sharing the listen address (`SO_REUSEPORT`), each with an accept queue of its own
    /// as deep as `net.core.somaxconn` allows: connections completed while the server is busy
    /// (a fleet reconnecting at once) wait in them rather than being dropped by the kernel.
    pub accept_queues: usize,
    /// From accept (TLS handshake included) to the end of the first request's head, and from
    /// the first byte of a later request to the end of its head; beyond it the socket is closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a plain-HTTP request's body may take to arrive: 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// How long a kept-alive socket may sit between requests before it is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// From the upgrade request to the collector's first message on the WebSocket.
    #[serde(with = "humantime_serde")]
    pub ws_handshake_timeout: Duration,
    /// How long one WebSocket send may wait for the peer to read; beyond it the socket is closed.
    #[serde(with = "humantime_serde")]
    pub ws_write_timeout: Duration,
    /// Base of the jittered `Retry-After` sent with a 503; the spec recommends at least 30 s.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// The heartbeat (HTTP polling) interval we expect from collectors.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A plain-HTTP collector silent for this many heartbeat intervals is considered gone.
    pub liveness_intervals: u32,
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub ws_pong_timeout: Duration,
    /// No longer used: a WebSocket connection holds no buffer between messages (ADR 0072).
    /// Still accepted, so that configurations that set it start; a warning says it is ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_buffer_bytes: Option<usize>,
    /// How long a reply waits for the collector's changes to be committed; beyond it the collector
    /// is told to try again (UNAVAILABLE), never answered as if they were stored.
    #[serde(with = "humantime_serde")]
    pub commit_timeout: Duration,
    /// Base of the jittered retry delay sent while the store cannot answer for a collector.
    #[serde(with = "humantime_serde")]
    pub store_retry_after: Duration,
    pub auth: OpampAuthConfig,
    /// `wss://` and `https://` for collectors, optionally with client certificates (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// A CA that signs collectors' certificate requests (OpAMP's CSR flow); off unless set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<crate::opamp::ca::CaConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OpampAuthConfig {
    /// When non-empty, every request needs `Authorization: Bearer <token>` or `Secret-Key <token>`.
    pub tokens: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// API keys and their roles. With none, callers without a key may read from loopback (or from
    /// anywhere with `allow_unauthenticated`), and writes need the admin key generated into the
    /// data directory.
    pub keys: Vec<ApiKey>,
    pub allow_unauthenticated: bool,
    /// Open sockets, counted from accept; beyond it new ones get 503.
    pub max_connections: usize,
    /// Event streams open at once; beyond it new ones get 503.
    pub max_event_streams: usize,
    /// How often the store is pinged and the collectors counted for `/readyz` and `/metrics`,
    /// which answer from that reading.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// From accept to the end of the first request's head, and from the first byte of a later
    /// request to the end of its head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a kept-alive socket may sit between requests.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest a REST request may take (event streams excepted).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// `https://` for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds it, for logs.
    pub name: String,
    /// The key itself, or (instead) `key_sha256`: its SHA-256 digest in hex, so the
    /// configuration need not hold the key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_sha256: String,
    pub role: Role,
}

/// What an API caller may do: `viewer` reads, `operator` also changes labels (and later starts
/// rollouts), `admin` everything, forgetting collectors included.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive; `RUST_LOG`, when set, wins.
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// How long shutdown waits for collectors' connections to close before giving up on them, and
    /// again for the last writes to reach the store.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Where the default SQLite database lives.
    pub data_dir: PathBuf,
    /// This replica's name in the store: collectors it held are marked Disconnected by it after a
    /// crash. Must be stable across restarts and distinct per replica.
    pub node_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://…`; empty means `sqlite://<server.data_dir>/opampd.db`.
    pub url: String,
    pub max_connections: u32,
    /// How long a change that finds the batcher idle waits for others to share its transaction
    /// (under load, what arrives during one write is the next, with no wait).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Changes waiting between the collectors' actors and the batcher.
    pub queue_capacity: usize,
    /// Transitions the batcher holds while the database is unreachable; beyond it, actors wait.
    pub max_pending: usize,
    /// How often a collector whose only news is `last_seen` (a heartbeat) is written.
    #[serde(with = "humantime_serde")]
    pub last_seen_interval: Duration,
}

impl Default for OpampConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 4320)),
            path: "/v1/opamp".to_owned(),
            max_message_bytes: 64 * 1024 * 1024,
            max_connections: 10_000,
            accept_queues: 4,
            message_budget_bytes: 512 * 1024 * 1024,
            connection_reserve_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_mins(1),
            idle_timeout: Duration::from_secs(90),
            ws_handshake_timeout: Duration::from_secs(10),
            ws_write_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            liveness_intervals: 3,
            ws_ping_interval: Duration::from_secs(30),
            ws_pong_timeout: Duration::from_secs(10),
            ws_buffer_bytes: None,
            commit_timeout: Duration::from_secs(5),
            store_retry_after: Duration::from_secs(5),
            auth: OpampAuthConfig::default(),
            tls: None,
            ca: None,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            keys: Vec::new(),
            allow_unauthenticated: false,
            max_connections: 1024,
            max_event_streams: 256,
            probe_interval: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            tls: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(10),
            data_dir: PathBuf::from("data"),
            node_id: "opampd".to_owned(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 8,
            flush_interval: Duration::from_millis(10),
            queue_capacity: 65_536,
            max_pending: 1_000_000,
            last_seen_interval: Duration::from_mins(1),
        }
    }
}

impl Config {
    /// The database URL in force: the configured one, or the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!(
                "sqlite://{}",
                self.server.data_dir.join("opampd.db").display()
            )
        } else {
            self.database.url.clone()
        }
    }
}

impl OpampConfig {
    /// How long a plain-HTTP collector may stay silent before it counts as disconnected.
    pub fn liveness_window(&self) -> Duration {
        self.heartbeat_interval
            .saturating_mul(self.liveness_intervals.max(1))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{0}")]
    Invalid(String),
    #[error("invalid value for key `{key}`: {reason}")]
    Rejected { key: &'static str, reason: String },
}

/// Values given on the command line; `None` means "not given", so lower layers stay in force.
#[derive(Debug, Default)]
pub struct FlagOverrides {
    pub opamp_listen: Option<SocketAddr>,
    pub api_listen: Option<SocketAddr>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub database_url: Option<String>,
}

impl FlagOverrides {
    fn into_figment(self) -> Figment {
        let mut figment = Figment::new();
        if let Some(listen) = self.opamp_listen {
            figment = figment.merge(Serialized::global("opamp.listen", listen));
        }
        if let Some(listen) = self.api_listen {
            figment = figment.merge(Serialized::global("api.listen", listen));
        }
        if let Some(format) = self.log_format {
            figment = figment.merge(Serialized::global("log.format", format));
        }
        if let Some(level) = self.log_level {
            figment = figment.merge(Serialized::global("log.level", level));
        }
        if let Some(url) = self.database_url {
            figment = figment.merge(Serialized::global("database.url", url));
        }
        figment
    }
}

/// "what is wrong for key `a.b` in <where it came from>", naming the exact variable or file.
fn describe(error: &figment::Error) -> String {
    let key = error.path.join(".").to_ascii_lowercase();
    let source = match &error.metadata {
        Some(md) if md.name.contains("environment") => {
            format!(
                "environment variable OPAMPD_{}",
                key.replace('.', "__").to_ascii_uppercase()
            )
        }
        Some(md) => match &md.source {
            Some(figment::Source::File(path)) => format!("{} {}", md.name, path.display()),
            _ => md.name.to_string(),
        },
        None => "the built-in defaults".to_owned(),
    };
    if key.is_empty() {
        format!("{} in {source}", error.kind)
    } else {
        format!("{} for key `{key}` in {source}", error.kind)
    }
}

impl Config {
    /// Layers the sources in order. An explicit `file` must exist; the default file may be absent.
    pub fn load(file: Option<&Path>, flags: FlagOverrides) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => return Err(ConfigError::MissingFile(path.to_owned())),
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_FILE));
            }
            None => {}
        }
        let env = Env::prefixed("OPAMPD_")
            .map(|key| key.as_str().to_ascii_lowercase().replace("__", ".").into())
            .filter(|key| {
                let section = key.as_str().split('.').next().unwrap_or_default();
                SECTIONS.contains(&section)
            });
        figment = figment.merge(env).merge(flags.into_figment());
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// The listeners' limits: stage timeouts, socket limits, the message budget.
    fn validate_edges(&self) -> Result<(), ConfigError> {
        let reject = |key, reason: &str| {
            Err(ConfigError::Rejected {
                key,
                reason: reason.to_owned(),
            })
        };
        for (key, value) in [
            ("opamp.header_read_timeout", self.opamp.header_read_timeout),
            ("opamp.body_read_timeout", self.opamp.body_read_timeout),
            ("opamp.idle_timeout", self.opamp.idle_timeout),
            (
                "opamp.ws_handshake_timeout",
                self.opamp.ws_handshake_timeout,
            ),
            ("opamp.ws_write_timeout", self.opamp.ws_write_timeout),
            ("api.header_read_timeout", self.api.header_read_timeout),
            ("api.idle_timeout", self.api.idle_timeout),
            ("api.probe_interval", self.api.probe_interval),
        ] {
            if value.is_zero() {
                return reject(key, "must be more than zero");
            }
        }
        if self.api.max_connections == 0 {
            return reject("api.max_connections", "must be at least 1");
        }
        if !(1..=MAX_ACCEPT_QUEUES).contains(&self.opamp.accept_queues) {
            return reject(
                "opamp.accept_queues",
                &format!("must be from 1 to {MAX_ACCEPT_QUEUES}"),
            );
        }
        if self.api.max_event_streams == 0 {
            return reject("api.max_event_streams", "must be at least 1");
        }
        if self.opamp.message_budget_bytes < self.opamp.max_message_bytes {
            return reject(
                "opamp.message_budget_bytes",
                "must be at least opamp.max_message_bytes, or the largest message could never pass",
            );
        }
        if self.opamp.connection_reserve_bytes > self.opamp.max_message_bytes {
            return reject(
                "opamp.connection_reserve_bytes",
                "must be at most opamp.max_message_bytes",
            );
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let reject = |key, reason: &str| {
            Err(ConfigError::Rejected {
                key,
                reason: reason.to_owned(),
            })
        };
        if !self.opamp.path.starts_with('/') {
            return reject("opamp.path", "must start with '/'");
        }
        if self.opamp.max_message_bytes < 1024 {
            return reject("opamp.max_message_bytes", "must be at least 1024");
        }
        if self.opamp.max_connections == 0 {
            return reject("opamp.max_connections", "must be at least 1");
        }
        self.validate_edges()?;
        if self.opamp.heartbeat_interval.is_zero() {
            return reject("opamp.heartbeat_interval", "must be more than zero");
        }
        if self.opamp.ws_ping_interval.is_zero() || self.opamp.ws_pong_timeout.is_zero() {
            return reject(
                "opamp.ws_ping_interval",
                "ping interval and pong timeout must be more than zero",
            );
        }
        if self.custom_messages.per_minute == 0 {
            return reject("custom_messages.per_minute", "must be at least 1");
        }
        if self
            .custom_messages
            .capabilities
            .iter()
            .any(String::is_empty)
        {
            return reject("custom_messages.capabilities", "names must not be empty");
        }
        if self.opamp.auth.tokens.iter().any(String::is_empty) {
            return reject("opamp.auth.tokens", "tokens must not be empty strings");
        }
        let url = self.database_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return reject(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            );
        }
        if self.database.max_connections == 0 {
            return reject("database.max_connections", "must be at least 1");
        }
        if self.database.flush_interval.is_zero() {
            return reject("database.flush_interval", "must be more than zero");
        }
        if self.database.queue_capacity == 0 || self.database.max_pending == 0 {
            return reject(
                "database.queue_capacity",
                "queue_capacity and max_pending must be at least 1",
            );
        }
        for key in &self.api.keys {
            match (key.key.is_empty(), key.key_sha256.is_empty()) {
                (false, true) if key.key.len() < 16 => {
                    return reject("api.keys", "every key must be at least 16 characters");
                }
                (true, false) if crate::api::auth::hex_digest(&key.key_sha256).is_none() => {
                    return reject("api.keys", "key_sha256 must be 64 hexadecimal digits");
                }
                (false, true) | (true, false) => {}
                _ => return reject("api.keys", "give each key either key or key_sha256"),
            }
        }
        if self.opamp.commit_timeout.is_zero() {
            return reject("opamp.commit_timeout", "must be more than zero");
        }
        if self.collectors.max_resident == 0 {
            return reject("collectors.max_resident", "must be at least 1");
        }
        if self.cluster.node_timeout <= self.cluster.renew_interval * 2 {
            return reject(
                "cluster.node_timeout",
                "must be more than twice cluster.renew_interval",
            );
        }
        if self.server.node_id.contains(char::is_whitespace) {
            return reject("server.node_id", "must not contain spaces");
        }
        if self.server.node_id.is_empty() {
            return reject("server.node_id", "must not be empty");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return reject("log.level", "not a valid tracing filter directive");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return its own (large) error type
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_states_every_default() {
        let shipped: Config = Figment::from(Toml::file_exact(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE),
        ))
        .extract()
        .unwrap();
        assert_eq!(shipped, Config::default());
    }

    #[test]
    fn a_bad_value_names_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[opamp]\nmax_connections = \"many\"\n")?;
            let err = Config::load(Some(Path::new("bad.toml")), FlagOverrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("opamp.max_connections"), "{err}");
            assert!(err.contains("bad.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("f.toml", "[opamp]\nmax_connections = 5\npath = \"/file\"\n")?;
            jail.set_env("OPAMPD_OPAMP__MAX_CONNECTIONS", "7");
            jail.set_env("OPAMPD_UNRELATED", "ignored");
            let flags = FlagOverrides {
                log_level: Some("debug".into()),
                ..FlagOverrides::default()
            };
            let config = Config::load(Some(Path::new("f.toml")), flags).unwrap();
            assert_eq!(config.opamp.path, "/file");
            assert_eq!(config.opamp.max_connections, 7);
            assert_eq!(config.log.level, "debug");
            Ok(())
        });
    }

    #[test]
    fn accept_queues_are_from_1_to_16() {
        for (queues, ok) in [(0, false), (1, true), (16, true), (17, false)] {
            let mut config = Config::default();
            config.opamp.accept_queues = queues;
            match config.validate() {
                Ok(()) => assert!(ok, "{queues} queues taken"),
                Err(err) => {
                    assert!(!ok, "{queues} queues refused: {err}");
                    assert!(err.to_string().contains("opamp.accept_queues"), "{err}");
                }
            }
        }
    }

    #[test]
    fn an_unknown_key_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("OPAMPD_OPAMP__MAX_CONECTIONS", "7");
            let err = Config::load(None, FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("max_conections"), "{err}");
            Ok(())
        });
    }
}

//! Shared test helpers: start a server on port 0 (in-process or the real binary), on SQLite or
//! PostgreSQL, talk OpAMP to it over WebSocket and HTTP, read what it stored, and wait on
//! conditions with a deadline instead of sleeping.

pub mod api;
pub mod binary;
pub mod browser;
pub mod interop;
pub mod postgres;
pub mod scripted;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use opampd::app::Running;
use opampd::collector::{Collector, CollectorId, Reason, State, Transition};
use opampd::config::Config;
use opampd::proto;
use opampd::proto::AgentCapabilities as Can;
use opampd::store::Store;
use prost::Message as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous: CI machines are slow and shared; a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// Awaits `future` within the deadline, failing the test with `what` when it does not finish.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// A first message naming the collector and its version.
pub fn hello_as(uid: &Bytes, name: &str, version: &str) -> proto::AgentToServer {
    let mut message = hello(uid, 0);
    message.agent_description = Some(proto::AgentDescription {
        identifying_attributes: vec![
            kv("service.name", "otelcol-contrib"),
            kv("service.instance.name", name),
            kv("service.version", version),
        ],
        non_identifying_attributes: vec![kv("host.name", &format!("{name}.example"))],
    });
    message
}

/// Connects `n` HTTP collectors named `<prefix>-<i>` (on host `<prefix>-<i>.example`, version
/// `1.<i>.0`), waits until the API lists them all; their uids and ids.
pub async fn http_collectors(
    server: &TestServer,
    api: &api::Api,
    prefix: &str,
    n: usize,
) -> Vec<(Bytes, String)> {
    let mut made = Vec::new();
    for i in 0..n {
        let uid = new_uid();
        post_ok(
            &server.opamp_url,
            &hello_as(&uid, &format!("{prefix}-{i}"), &format!("1.{i}.0")),
        )
        .await;
        made.push((uid.clone(), id_of(&uid).to_string()));
    }
    for (uid, _) in &made {
        api.stored(id_of(uid)).await;
    }
    made
}

/// Two replicas on one fresh PostgreSQL database, node ids `one` (started first: it takes the
/// rollout engine's lease) and `two`.
pub async fn two_replicas() -> (TestServer, TestServer) {
    two_replicas_with(|_| {}).await
}

/// [`two_replicas`], each configured by `configure` as well.
pub async fn two_replicas_with(
    configure: impl Fn(&mut opampd::config::Config),
) -> (TestServer, TestServer) {
    let first = TestServer::on(Backend::Postgres, |c| {
        configure(c);
        c.server.node_id = "one".into();
    })
    .await;
    let url = first.config.database.url.clone();
    let second = TestServer::start_with(|c| {
        configure(c);
        c.database.url = url;
        c.server.node_id = "two".into();
    })
    .await;
    (first, second)
}

/// An API key named `name` with `role`; its secret is `<name>-key-0123456789abcdef`.
pub fn api_key(name: &str, role: opampd::config::Role) -> opampd::config::ApiKey {
    opampd::config::ApiKey {
        name: name.into(),
        key: format!("{name}-key-0123456789abcdef"),
        key_sha256: String::new(),
        role,
    }
}

/// Where a test's database lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Binds `$pool` to a fresh pool on the database at `$url` of `$backend` (SQLite or PostgreSQL,
/// each its own type) and evaluates `$body` with it: one text for code that reaches past the
/// store to either database.
macro_rules! with_pool {
    ($backend:expr, $url:expr, |$pool:ident| $body:expr) => {
        match $backend {
            $crate::support::Backend::Sqlite => {
                let $pool = sqlx::SqlitePool::connect($url).await.expect("SQLite opens");
                $body
            }
            $crate::support::Backend::Postgres => {
                let $pool = sqlx::PgPool::connect($url).await.expect("PostgreSQL opens");
                $body
            }
        }
    };
}
pub(crate) use with_pool;

/// Runs `sql` on the database at `url` directly (not through the store), for a test that reads or
/// writes what the store's API does not show: each statement separated by `;`, the first column
/// of the last one's first row as an integer, if any.
pub async fn raw_sql(backend: Backend, url: &str, sql: &str) -> Option<i64> {
    with_pool!(backend, url, |pool| {
        let mut last = None;
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let row: Option<(Option<i64>,)> = sqlx::query_as(statement)
                .fetch_optional(&pool)
                .await
                .expect("the statement runs");
            last = row.and_then(|(v,)| v);
        }
        pool.close().await;
        last
    })
}

/// The first bucket of its history that the store keeps on a collector's record (ADR 0082).
pub async fn first_bucket(backend: Backend, url: &str, id: CollectorId) -> Option<i64> {
    let sql = format!("SELECT first_bucket FROM collectors WHERE id = '{id}'");
    raw_sql(backend, url, &sql).await
}

/// A fresh, empty database: deleted (SQLite) or dropped (PostgreSQL) with this value.
pub struct Database {
    pub url: String,
    _sqlite: Option<tempfile::TempDir>,
    _postgres: Option<postgres::PgDatabase>,
}

pub async fn fresh_database(backend: Backend) -> Database {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("a temporary directory");
            Database {
                url: format!("sqlite://{}", dir.path().join("store.db").display()),
                _sqlite: Some(dir),
                _postgres: None,
            }
        }
        Backend::Postgres => {
            let db = postgres::fresh_database().await;
            Database {
                url: db.url.clone(),
                _sqlite: None,
                _postgres: Some(db),
            }
        }
    }
}

/// Opens the store at `url` as replica `node`, without migrating it: for reading what a server
/// (or the binary) wrote, so that nothing the test does can stand in for the server's own work.
pub async fn open_existing_store(url: &str, node: &str) -> Arc<dyn Store> {
    let mut config = Config::default();
    config.database.url = url.to_owned();
    config.server.node_id = node.to_owned();
    opampd::store::open(&config).await.expect("the store opens")
}

/// Opens (and migrates) the store at `url` as replica `node`.
pub async fn open_store(url: &str, node: &str) -> Arc<dyn Store> {
    let store = open_existing_store(url, node).await;
    within("migrations", store.migrate())
        .await
        .expect("migrations apply");
    store
}

/// A fresh database with the store opened on it as replica `a`: the database goes with the first
/// value, so it is kept for as long as the store is used.
pub async fn fresh_store(backend: Backend) -> (Database, Arc<dyn Store>) {
    let db = fresh_database(backend).await;
    let store = open_store(&db.url, "a").await;
    (db, store)
}

/// A set of configuration files' hash as the README promises it, computed here on our own:
/// SHA-256 over each file's name, content type and body, in name order, each part preceded by
/// its length (8 bytes, big-endian) so that no two sets of files run together into the same
/// bytes.
pub fn files_hash(files: &[(&str, &str, &[u8])]) -> String {
    use sha2::Digest as _;
    let mut files = files.to_vec();
    files.sort_unstable();
    let mut digest = sha2::Sha256::new();
    for (name, content_type, body) in files {
        for part in [name.as_bytes(), content_type.as_bytes(), body] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    opampd::collector::machine::hex(&digest.finalize())
}

/// A transition as the tests compare them: from, to, reason.
pub type Step = (Option<State>, State, Reason);

pub fn steps(history: &[Transition]) -> Vec<Step> {
    history.iter().map(|t| (t.from, t.to, t.reason)).collect()
}

/// A server started in this process, on loopback port 0, with its own SQLite file unless the
/// test names another database.
pub struct TestServer {
    /// First, so that the key is forgotten before the server lets its port go.
    _key: api::KnownKey,
    pub running: Option<Running>,
    pub opamp_url: String,
    pub ws_url: String,
    pub api_url: String,
    /// Holds the SQLite file (and removes it when the test ends).
    pub data: tempfile::TempDir,
    pub config: Config,
    /// The database the test gave it, kept as long as the server.
    pub database: Option<Database>,
}

pub fn test_config() -> Config {
    let mut config = Config::default();
    config.opamp.listen = "127.0.0.1:0".parse().unwrap();
    config.api.listen = "127.0.0.1:0".parse().unwrap();
    // Tests read the store right after a change: a short window keeps them quick.
    config.database.flush_interval = Duration::from_millis(5);
    // /readyz and /metrics answer from a background reading: a short interval keeps tests quick.
    config.api.probe_interval = Duration::from_millis(50);
    config
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on_database(None, adjust).await
    }

    /// A server on a fresh database of `backend`.
    pub async fn on(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_database(backend).await),
        };
        Self::start_on_database(database, adjust).await
    }

    async fn start_on_database(
        database: Option<Database>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let data = tempfile::tempdir().expect("a temporary directory");
        let mut config = test_config();
        config.server.data_dir = data.path().to_owned();
        if let Some(database) = &database {
            config.database.url.clone_from(&database.url);
        }
        adjust(&mut config);
        Self::start_on(config, data, database).await
    }

    async fn start_on(config: Config, data: tempfile::TempDir, database: Option<Database>) -> Self {
        let path = config.opamp.path.clone();
        let running = within(
            "the server starts",
            Box::pin(opampd::app::start(config.clone())),
        )
        .await
        .expect("server starts");
        let api_url = format!("http://{}", running.api_addr);
        let key = api::remember_generated_key(&api_url, &config.server.data_dir);
        Self {
            _key: key,
            opamp_url: format!("http://{}{path}", running.opamp_addr),
            ws_url: format!("ws://{}{path}", running.opamp_addr),
            api_url,
            running: Some(running),
            data,
            config,
            database,
        }
    }

    /// Shuts down cleanly and starts again on the same database (new ports).
    pub async fn restart(self) -> Self {
        let Self {
            running,
            data,
            config,
            database,
            ..
        } = self;
        if let Some(running) = running {
            Box::pin(within("a clean shutdown", running.shutdown()))
                .await
                .expect("clean shutdown");
        }
        // Boxed, so that the callers' futures stay small.
        Box::pin(Self::start_on(config, data, database)).await
    }

    pub fn store(&self) -> &dyn opampd::store::Store {
        self.running().store.as_ref()
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("server is running")
    }

    pub async fn view(&self, id: CollectorId) -> Option<Collector> {
        within("the collector's actor", self.running().registry.view(id)).await
    }

    /// The collector's whole history as stored, once everything its actor has done so far is
    /// committed (the actor holds no history; the store is the history).
    pub async fn history(&self, id: CollectorId) -> Vec<opampd::collector::Transition> {
        // A view is answered after the actor has queued every earlier change; a barrier queued
        // after it resolves once they are committed.
        let _ = self.view(id).await;
        let persistence = self.running().registry.persistence();
        let committed = within("the collector's changes to be committed", async {
            persistence.barrier().await.committed().await
        })
        .await;
        assert!(committed, "the store took the collector's changes");
        self.store().transitions(id).await.expect("the history")
    }

    /// [`Self::history`] as (from, to, reason).
    pub async fn steps(&self, id: CollectorId) -> Vec<Step> {
        steps(&self.history(id).await)
    }

    /// Applies a fleet event to a resident collector, asserting it was applied.
    pub async fn apply(&self, id: CollectorId, event: opampd::collector::Event) {
        let applied = within("the fleet event", self.running().registry.apply(id, event)).await;
        assert!(applied.expect("the server is running"), "{id} is resident");
    }

    /// Waits until the collector's record satisfies `check`, and returns it.
    pub async fn wait_for(
        &self,
        id: CollectorId,
        what: &str,
        check: impl Fn(&Collector) -> bool,
    ) -> Collector {
        eventually(what, || async {
            self.view(id).await.filter(|view| check(view))
        })
        .await
    }

    pub async fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            within("a clean shutdown", running.shutdown())
                .await
                .expect("clean shutdown");
        }
    }
}

/// A transaction elsewhere that keeps the server from claiming or writing records until it is
/// released.
pub enum StoreLock {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl StoreLock {
    /// Begins a transaction that locks the server's records, on either database.
    pub async fn take(server: &TestServer) -> Self {
        let url = opampd::config::Config::database_url(&server.config);
        if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("LOCK TABLE collectors IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .unwrap();
            StoreLock::Postgres(tx)
        } else {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("BEGIN EXCLUSIVE")
                .execute(&mut *conn)
                .await
                .unwrap();
            StoreLock::Sqlite(conn)
        }
    }

    pub async fn release(self) {
        match self {
            StoreLock::Sqlite(mut conn) => {
                sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
            }
            StoreLock::Postgres(tx) => tx.commit().await.unwrap(),
        }
    }
}

/// Polls `probe` until it yields `Some`, failing the test with `what` at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(DEADLINE, Duration::from_millis(20), what, probe).await
}

/// [`eventually`] with its own deadline, polling every `pause`.
pub async fn eventually_within<T, F, Fut>(
    within: Duration,
    pause: Duration,
    what: &str,
    mut probe: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        scripted::assert_untroubled();
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(pause).await;
    }
}

/// Capability bits, named as the protocol names them.
pub fn capabilities(all: &[Can]) -> u64 {
    all.iter().fold(0, |bits, c| bits | *c as u64)
}

/// What the test collector can do: report status, health, effective and remote config and
/// package statuses; accept remote config, packages and the restart command.
pub fn all_capabilities() -> u64 {
    capabilities(&[
        Can::ReportsStatus,
        Can::AcceptsRemoteConfig,
        Can::ReportsEffectiveConfig,
        Can::AcceptsPackages,
        Can::ReportsPackageStatuses,
        Can::AcceptsRestartCommand,
        Can::ReportsHealth,
        Can::ReportsRemoteConfig,
    ])
}

pub fn new_uid() -> Bytes {
    Bytes::copy_from_slice(uuid::Uuid::now_v7().as_bytes())
}

pub fn id_of(uid: &[u8]) -> CollectorId {
    CollectorId(uuid::Uuid::from_slice(uid).expect("16-byte uid"))
}

/// A status report with a description, as a collector's first message looks.
/// One plain-HTTP OpAMP request as the bytes a raw socket sends: for tests that need what a
/// client library hides (split writes, unread replies, requests back to back).
pub fn raw_opamp_request(message: &proto::AgentToServer) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut request = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: opampd\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

pub fn hello(uid: &Bytes, sequence_num: u64) -> proto::AgentToServer {
    proto::AgentToServer {
        instance_uid: uid.clone(),
        sequence_num,
        capabilities: all_capabilities(),
        agent_description: Some(proto::AgentDescription {
            identifying_attributes: vec![kv("service.name", "test-collector")],
            non_identifying_attributes: vec![kv("host.name", "test-host")],
        }),
        health: Some(proto::ComponentHealth {
            healthy: true,
            ..Default::default()
        }),
        effective_config: Some(proto::EffectiveConfig::default()),
        remote_config_status: Some(proto::RemoteConfigStatus::default()),
        package_statuses: Some(proto::PackageStatuses::default()),
        ..Default::default()
    }
}

/// The event that sends `offer` to a collector directly, outside any rollout.
pub fn send_configuration(offer: opampd::collector::ConfigOffer) -> opampd::collector::Event {
    opampd::collector::Event::SendConfiguration {
        offer,
        required: vec![],
        rollout: None,
    }
}

/// A configuration with no files, known by `hash` alone: all that the transport and state
/// tests look at.
pub fn empty_configuration(hash: Vec<u8>) -> opampd::collector::ConfigOffer {
    opampd::collector::ConfigOffer {
        files: opampd::collector::ConfigFiles::new(),
        hash,
    }
}

/// A heartbeat: only uid, sequence number and capabilities.
pub fn heartbeat(uid: &Bytes, sequence_num: u64) -> proto::AgentToServer {
    proto::AgentToServer {
        instance_uid: uid.clone(),
        sequence_num,
        capabilities: all_capabilities(),
        ..Default::default()
    }
}

pub fn kv(key: &str, value: &str) -> proto::KeyValue {
    proto::KeyValue {
        key: key.to_owned(),
        value: Some(proto::AnyValue {
            value: Some(proto::any_value::Value::StringValue(value.to_owned())),
        }),
    }
}

/// A first message announcing an OTLP receiver and `exporters`, the whole set (under a hash
/// naming them), as the rollout tests' collectors send it.
pub fn hello_with_exporters(uid: &Bytes, exporters: &[&str]) -> proto::AgentToServer {
    with_components(
        hello(uid, 0),
        &format!("components:{}", exporters.join(",")),
        &[("receivers", &["otlp"]), ("exporters", exporters)],
        true,
    )
}

/// `message` announcing the components `(kind, types)` under `hash`; with `full` the set itself,
/// else only its hash (as a collector does once the server knows the set).
pub fn with_components(
    mut message: proto::AgentToServer,
    hash: &str,
    components: &[(&str, &[&str])],
    full: bool,
) -> proto::AgentToServer {
    message.capabilities |= Can::ReportsAvailableComponents as u64;
    let components = if full {
        components
            .iter()
            .map(|(kind, types)| {
                let details = proto::ComponentDetails {
                    sub_component_map: types
                        .iter()
                        .map(|t| ((*t).to_owned(), proto::ComponentDetails::default()))
                        .collect(),
                    ..Default::default()
                };
                ((*kind).to_owned(), details)
            })
            .collect()
    } else {
        std::collections::HashMap::new()
    };
    message.available_components = Some(proto::AvailableComponents {
        components,
        hash: Bytes::copy_from_slice(hash.as_bytes()),
    });
    message
}

pub fn has_flag(reply: &proto::ServerToAgent, flag: proto::ServerToAgentFlags) -> bool {
    reply.flags & flag as u64 != 0
}

pub fn is_bad_request(reply: &proto::ServerToAgent) -> bool {
    reply
        .error_response
        .as_ref()
        .is_some_and(|e| e.r#type == proto::ServerErrorResponseType::BadRequest as i32)
}

/// An UNAVAILABLE answer with a retry delay: the collector is to come back later.
pub fn is_unavailable(reply: &proto::ServerToAgent) -> bool {
    reply.error_response.as_ref().is_some_and(|e| {
        e.r#type == proto::ServerErrorResponseType::Unavailable as i32
            && matches!(
                e.details,
                Some(proto::server_error_response::Details::RetryInfo(ref r))
                    if r.retry_after_nanoseconds > 0
            )
    })
}

/// A collector's message as one WebSocket message carries it: the 0 header, then the protobuf.
pub fn ws_message(message: &proto::AgentToServer) -> Vec<u8> {
    let mut bytes = vec![0];
    message.encode(&mut bytes).expect("encode");
    bytes
}

/// A server's WebSocket message, decoded (every one carries the 0 header).
pub fn ws_reply(data: &[u8]) -> proto::ServerToAgent {
    assert_eq!(
        data.first(),
        Some(&0),
        "every server message carries the 0 header"
    );
    proto::ServerToAgent::decode(&data[1..]).expect("decodable ServerToAgent")
}

/// A WebSocket OpAMP client, speaking the framing by hand so tests can also break it; over
/// plain TCP unless made on a TLS stream ([`tls::Pki::ws`]).
pub struct WsClient<S = MaybeTlsStream<TcpStream>> {
    pub socket: WebSocketStream<S>,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        Self::connect_with(url, &[])
            .await
            .expect("WebSocket upgrade")
    }

    /// Connects with extra request headers; the upgrade's HTTP error is returned as is.
    pub async fn connect_with(
        url: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Self, tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("header value"));
        }
        let (socket, _) = within(
            "the WebSocket upgrade",
            tokio_tungstenite::connect_async(request),
        )
        .await?;
        Ok(Self { socket })
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> WsClient<S> {
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        within(
            "a message to be sent",
            self.socket.send(Message::Binary(bytes.into())),
        )
        .await
        .expect("send");
    }

    pub async fn send(&mut self, message: &proto::AgentToServer) {
        self.send_raw(ws_message(message)).await;
    }

    /// The next data message, skipping control frames; `None` if the connection ended instead.
    pub async fn next_binary(&mut self) -> Option<Bytes> {
        within("a message from the server", async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Binary(data))) => return Some(data),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    _ => return None,
                }
            }
        })
        .await
    }

    pub async fn recv(&mut self) -> proto::ServerToAgent {
        let data = self.next_binary().await.expect("a ServerToAgent");
        ws_reply(&data)
    }

    pub async fn exchange(&mut self, message: &proto::AgentToServer) -> proto::ServerToAgent {
        self.send(message).await;
        self.recv().await
    }

    /// Waits for the server's Close frame and returns its code, answering it as RFC 6455 asks.
    pub async fn expect_close(&mut self) -> CloseCode {
        let code = within("a Close frame", async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        return frame.map(|f| f.code);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => panic!("connection failed instead of closing: {err}"),
                    None => panic!("connection dropped without a Close frame"),
                }
            }
        })
        .await
        .expect("the Close frame carries a code");
        // Finish the handshake so the server's side ends cleanly.
        within("the end of the close handshake", async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await;
        code
    }
}

/// An HTTP OpAMP exchange's raw result.
pub struct HttpReply {
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    /// The body as a `ServerToAgent`, un-gzipping it if the server compressed it.
    pub fn message(&self) -> proto::ServerToAgent {
        let body = if self
            .headers
            .get("content-encoding")
            .is_some_and(|v| v == "gzip")
        {
            Bytes::from(gunzip(&self.body))
        } else {
            self.body.clone()
        };
        proto::ServerToAgent::decode(body).expect("decodable ServerToAgent")
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).expect("gzip");
    encoder.finish().expect("gzip")
}

pub fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// reqwest is built with rustls but without a crypto provider of its own (its default, aws-lc-rs,
/// needs cmake to build); ring, the server's, is installed for the process instead.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn http_client() -> reqwest::Client {
    install_crypto();
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("HTTP client")
}

/// POSTs raw bytes to the OpAMP endpoint with the given headers (Content-Type included by caller).
pub async fn post_raw(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> HttpReply {
    post_raw_with(&http_client(), url, headers, body).await
}

/// [`post_raw`] through `client` (one that trusts a test CA, say).
pub async fn post_raw_with(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> HttpReply {
    let mut request = client.post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("HTTP request");
    HttpReply {
        status: response.status(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("HTTP body"),
    }
}

pub async fn post(url: &str, message: &proto::AgentToServer) -> HttpReply {
    post_raw(
        url,
        &[("content-type", "application/x-protobuf")],
        message.encode_to_vec(),
    )
    .await
}

/// POSTs and expects a 200 with an OpAMP reply.
pub async fn post_ok(url: &str, message: &proto::AgentToServer) -> proto::ServerToAgent {
    let reply = post(url, message).await;
    assert_eq!(reply.status, 200, "body: {:?}", reply.body);
    assert_eq!(
        reply
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap()),
        Some("application/x-protobuf")
    );
    reply.message()
}

/// A report of the collector's health and nothing else.
pub fn health_report(
    uid: &Bytes,
    sequence_num: u64,
    healthy: bool,
    last_error: &str,
) -> proto::AgentToServer {
    proto::AgentToServer {
        health: Some(proto::ComponentHealth {
            healthy,
            last_error: last_error.to_owned(),
            ..Default::default()
        }),
        ..heartbeat(uid, sequence_num)
    }
}

/// `/readyz` as status code and JSON body.
pub async fn readyz(api_url: &str) -> (u16, serde_json::Value) {
    let response = http_client()
        .get(format!("{api_url}/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    let status = response.status().as_u16();
    let body = response.text().await.expect("readyz body");
    (
        status,
        serde_json::from_str(&body).expect("readyz answers JSON"),
    )
}

//! Wiring and lifetime: binds the listeners, starts the registry and the servers, and shuts them
//! down in order (stop accepting, close collectors' connections, stop the actors).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::cluster::notify::{self, Wakers};
use crate::cluster::router::{Peers, Router};
use crate::cluster::{lease, liveness};
use crate::collector::Registry;
use crate::collector::handle::ActorSettings;
use crate::collector::persist::Persistence;
use crate::config::{Config, TlsConfig};
use crate::fleet::engine::Fleet;
use crate::fleet::settings::{Distributor, Offers};
use crate::net::listener::Listeners;
use crate::net::tls::Acceptor;
use crate::net::{self, Allowances};
use crate::opamp::{self, Opamp};
use crate::store::batch::Key;
use crate::store::cluster::ClusterStore;
use crate::store::writer::{StoreHealth, Writer, WriterSettings};
use crate::store::{self, Store, StoreRecords};
use crate::telemetry::metrics::Metrics;

/// A started server. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub opamp_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    pub store_health: Arc<StoreHealth>,
    writer: Writer,
    config: Config,
    /// Several nodes: this node's liveness record, marked stopped after a clean stop.
    cluster: Option<ClusterStore>,
    /// SQLite: held until this server has stopped (released when `Running` is dropped).
    _sqlite_lock: Option<std::fs::File>,
    /// Cancelled to stop accepting and close every collector's connection.
    shutdown: CancellationToken,
    /// Cancelled last, once connections are closed, so actors see every disconnection first.
    actors_stop: CancellationToken,
    sessions: TaskTracker,
    actors: TaskTracker,
    servers: JoinSet<std::io::Result<()>>,
}

/// Opens the store, brings its schema up to date and settles what an unclean stop left behind,
/// all before a single collector is accepted.
async fn prepare_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = store::open(config).await.with_context(|| {
        format!(
            "cannot open the database ({})",
            redacted(&config.database_url())
        )
    })?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    let marked = store
        .recover(std::time::SystemTime::now())
        .await
        .context("cannot recover the collectors' states after the last run")?;
    if marked > 0 {
        warn!(
            collectors = marked,
            node = %config.server.node_id,
            "the last run did not shut down cleanly; its collectors are marked disconnected"
        );
    }
    info!(backend = store.backend(), database = %redacted(&config.database_url()), "store ready");
    Ok(store)
}

/// The URL without its password, for logs and errors.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Names the keys the configuration still sets that no longer mean anything.
fn log_retired(config: &Config) {
    if config.opamp.ws_buffer_bytes.is_some() {
        warn!(
            "opamp.ws_buffer_bytes is ignored: a WebSocket connection holds no buffer between messages"
        );
    }
}

/// Says who may talk to the server without credentials.
fn log_access(config: &Config) {
    if config.opamp.auth.tokens.is_empty() {
        info!("collector authentication is off (opamp.auth.tokens is empty)");
    }
    if config.api.keys.is_empty() {
        if config.api.allow_unauthenticated {
            warn!(
                "the REST API lets everyone read: no api.keys, and api.allow_unauthenticated is set"
            );
        } else {
            info!(
                "the REST API lets loopback callers read without a key: no api.keys are configured"
            );
        }
    }
}

/// The API's keys: the configured ones, or else the data directory's admin key, generated on
/// first start (its path is logged, never the key).
fn api_access(config: &Config) -> anyhow::Result<api::auth::Access> {
    if !config.api.keys.is_empty() {
        return Ok(api::auth::Access::new(&config.api, None));
    }
    let admin = api::keyfile::load_or_generate(&config.server.data_dir)?;
    if admin.generated {
        warn!(
            path = %admin.path.display(),
            "no api.keys configured: generated an admin API key; writes need it (read it from this file)"
        );
    } else {
        info!(path = %admin.path.display(), "no api.keys configured: using the admin API key in the data directory");
    }
    Ok(api::auth::Access::new(
        &config.api,
        Some(api::auth::Credential::plain(
            "generated-admin",
            &admin.key,
            crate::config::Role::Admin,
        )),
    ))
}

/// Tells each actor whose write the store refused (its claim was superseded).
async fn tell_fenced(registry: Arc<Registry>, mut fenced: tokio::sync::mpsc::Receiver<Key>) {
    while let Some((id, epoch)) = fenced.recv().await {
        registry.fenced(id, epoch);
    }
}

/// On PostgreSQL: registers this node among its peers and starts listening to them and keeping
/// this node alive. `None` on SQLite, which serves one node.
async fn start_peers(
    config: &Config,
    registry: &Registry,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Peers>> {
    let url = config.database_url();
    if !store::is_postgres(&url) {
        return Ok(None);
    }
    let node = config.server.node_id.clone();
    let store = ClusterStore::connect(&url, node.clone())
        .await
        .context("cannot open the database for the cluster")?;
    store
        .register(std::time::SystemTime::now())
        .await
        .context("cannot register this node")?;
    let wakers = Arc::new(Wakers::new(node));
    tokio::spawn(notify::listen(
        store.clone(),
        Arc::clone(&wakers),
        shutdown.clone(),
    ));
    tokio::spawn(liveness::keep_alive(
        store.clone(),
        config.cluster.clone(),
        shutdown.clone(),
    ));
    // Collectors' custom messages reach every node's event streams.
    tokio::spawn(crate::cluster::custom::relay(
        store.clone(),
        Arc::clone(&wakers),
        registry.custom_relay(),
        shutdown.clone(),
    ));
    Ok(Some(Peers {
        store,
        wakers,
        settings: config.cluster.clone(),
    }))
}

/// Starts the router (and, with several nodes, this node's part among them) and the rollout
/// engine: here at once on a single node, else whenever this node holds the engine's lease.
async fn start_router(
    config: &Config,
    (registry, offers): (&Arc<Registry>, Arc<Offers>),
    store: &Arc<dyn Store>,
    flushes: tokio::sync::watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<Router>, Option<ClusterStore>, Distributor)> {
    let (engine_slot, engine) = tokio::sync::watch::channel(None);
    let peers = start_peers(config, registry, shutdown).await?;
    let cluster = peers.as_ref().map(|p| p.store.clone());
    let router = Arc::new(Router::new(
        Arc::clone(registry),
        Arc::clone(store),
        peers,
        engine,
    ));
    tokio::spawn(Arc::clone(&router).serve(shutdown.clone()));
    // The engine reads arrivals from the history's end as it starts: started before collectors
    // are accepted, it misses none.
    let start_engine = {
        let (router, store) = (Arc::clone(&router), Arc::clone(store));
        // A verdict is due within a few heartbeats: a collector that is working on it reports at
        // least that often.
        let default_timeout = config.opamp.heartbeat_interval * 3;
        move |stop: CancellationToken| {
            Fleet::start(
                Arc::clone(&router),
                Arc::clone(&store),
                flushes.clone(),
                default_timeout,
                stop,
            )
        }
    };
    if let Some(cluster) = &cluster {
        tokio::spawn(lease::lead(
            cluster.clone(),
            config.cluster.clone(),
            start_engine,
            engine_slot,
            shutdown.clone(),
        ));
    } else {
        let fleet = start_engine(shutdown.clone())
            .await
            .context("cannot start the rollout engine")?;
        engine_slot.send_replace(Some(fleet));
    }
    // Every node tells the collectors arriving there the connection settings offers give them.
    let settings = Distributor::new(Arc::clone(&router), Arc::clone(store), offers);
    tokio::spawn(settings.clone().run(Arc::clone(registry), shutdown.clone()));
    Ok((router, cluster, settings))
}

/// A listener's TLS, where configured: its files read now (start-up fails on unusable ones) and
/// again every `reload_interval`.
fn listener_tls(
    name: &'static str,
    tls: Option<&TlsConfig>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Acceptor>> {
    tls.map(|tls| Acceptor::start(name, tls, metrics, shutdown.clone()))
        .transpose()
        .with_context(|| format!("cannot set up TLS on {name}.tls"))
}

fn opamp_listener_settings(config: &Config, tls: Option<Acceptor>) -> net::Settings {
    net::Settings {
        name: "opamp",
        max_connections: config.opamp.max_connections,
        allow: Allowances {
            header_read: config.opamp.header_read_timeout,
            idle: config.opamp.idle_timeout,
        },
        retry_after: config.opamp.retry_after,
        tls,
    }
}

fn api_listener_settings(config: &Config, tls: Option<Acceptor>) -> net::Settings {
    net::Settings {
        name: "api",
        max_connections: config.api.max_connections,
        allow: Allowances {
            header_read: config.api.header_read_timeout,
            idle: config.api.idle_timeout,
        },
        // Operators and scrapers retry sooner than a fleet should.
        retry_after: Duration::from_secs(5),
        tls,
    }
}

/// Both listeners, bound (port 0 picks a free port).
fn bind(config: &Config) -> anyhow::Result<(Listeners, Listeners)> {
    let opamp = Listeners::bind(config.opamp.listen, config.opamp.accept_queues)
        .with_context(|| format!("cannot listen on opamp.listen = {}", config.opamp.listen))?;
    let api = Listeners::bind(config.api.listen, 1)
        .with_context(|| format!("cannot listen on api.listen = {}", config.api.listen))?;
    Ok((opamp, api))
}

/// The background reading of the store that `/readyz` and `/metrics` answer from.
async fn start_probe(
    config: &Config,
    store: &Arc<dyn Store>,
    shutdown: &CancellationToken,
) -> Arc<api::probe::Probe> {
    api::probe::Probe::start(
        Arc::clone(store),
        config.api.probe_interval,
        shutdown.clone(),
    )
    .await
}

/// The CA that signs collectors' certificate requests, where configured: its files read now
/// (start-up fails on unusable ones) and again as they change.
fn load_ca(
    config: &Config,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<opamp::ca::Authority>>> {
    let Some(ca) = &config.opamp.ca else {
        return Ok(None);
    };
    let authority = opamp::ca::Authority::start(ca, metrics, shutdown.clone())?;
    Ok(Some(Arc::new(authority)))
}

/// The collectors' registry, under the configured settings and limits, and the connection
/// settings offers its actors read (filled by the distributor).
fn registry(
    config: &Config,
    persistence: Persistence,
    ca: Option<Arc<opamp::ca::Authority>>,
    metrics: &Metrics,
    actors_stop: &CancellationToken,
    actors: &TaskTracker,
) -> (Arc<Registry>, Arc<Offers>) {
    let registry = Registry::new(
        actor_settings(config),
        persistence,
        config.collectors.max_resident,
        metrics.clone(),
        actors_stop.clone(),
        actors.clone(),
    );
    let offers = Arc::new(Offers::default());
    let registry = registry
        .with_custom_limits(config.custom_messages.limits())
        .with_settings_source(Arc::clone(&offers) as Arc<dyn crate::collector::SettingsSource>);
    let registry = match ca {
        Some(ca) => registry.with_renewer(ca),
        None => registry,
    };
    (Arc::new(registry), offers)
}

fn actor_settings(config: &Config) -> ActorSettings {
    ActorSettings {
        heartbeat_interval: config.opamp.heartbeat_interval,
        liveness_intervals: config.opamp.liveness_intervals,
        last_seen_interval: config.database.last_seen_interval,
        grace_period: config.collectors.grace_period,
        max_message_bytes: config.opamp.max_message_bytes,
    }
}

/// Binds both listeners and starts serving. Port 0 picks a free port; the bound addresses are in
/// the returned [`Running`].
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let sqlite_lock = store::lock(&config).context("cannot start")?;
    let store = prepare_store(&config).await?;
    let (opamp_listener, api_listener) = bind(&config)?;
    let opamp_addr = opamp_listener.local_addr()?;
    let api_addr = api_listener.local_addr()?;

    let shutdown = CancellationToken::new();
    let actors_stop = CancellationToken::new();
    let sessions = TaskTracker::new();
    let actors = TaskTracker::new();
    let metrics = Metrics::default();
    let opamp_tls = listener_tls("opamp", config.opamp.tls.as_ref(), &metrics, &shutdown)?;
    let api_tls = listener_tls("api", config.api.tls.as_ref(), &metrics, &shutdown)?;
    let (changes, queue) = tokio::sync::mpsc::channel(config.database.queue_capacity);
    let (writer, fenced) = Writer::spawn(
        Arc::clone(&store),
        queue,
        WriterSettings {
            flush_interval: config.database.flush_interval,
            max_pending: config.database.max_pending,
        },
        metrics.clone(),
    );
    let store_health = Arc::clone(&writer.health);
    let records = StoreRecords::spawn(Arc::clone(&store), &metrics);
    let persistence = Persistence::new(changes, Arc::new(records));
    let ca = load_ca(&config, &metrics, &shutdown)?;
    let (registry, offers) = registry(
        &config,
        persistence,
        ca.clone(),
        &metrics,
        &actors_stop,
        &actors,
    );
    tokio::spawn(tell_fenced(Arc::clone(&registry), fenced));
    // Boxed: its future (the cluster's start-up) need not weigh on every caller of `start`.
    let (router, cluster, settings) = Box::pin(start_router(
        &config,
        (&registry, offers),
        &store,
        store_health.flushes(),
        &shutdown,
    ))
    .await?;
    let opamp = Opamp::new(
        config.opamp.clone(),
        Arc::clone(&registry),
        metrics.clone(),
        shutdown.clone(),
        sessions.clone(),
        ca,
    );

    let mut servers = JoinSet::new();
    servers.spawn(net::serve(
        opamp_listener,
        opamp.router(),
        opamp_listener_settings(&config, opamp_tls),
        metrics.clone(),
        shutdown.clone(),
    ));
    let api_router = api::router(ApiState {
        router,
        shutdown: shutdown.clone(),
        registry: Arc::clone(&registry),
        store: Arc::clone(&store),
        store_health: Arc::clone(&store_health),
        config: Arc::new(config.api.clone()),
        access: Arc::new(api_access(&config)?),
        probe: start_probe(&config, &store, &shutdown).await,
        event_streams: Arc::new(tokio::sync::Semaphore::new(config.api.max_event_streams)),
        metrics: metrics.clone(),
        settings,
    });
    servers.spawn(net::serve(
        api_listener,
        api_router,
        api_listener_settings(&config, api_tls),
        metrics,
        shutdown.clone(),
    ));
    info!(%opamp_addr, path = %config.opamp.path, %api_addr, "opampd is listening");
    log_retired(&config);
    log_access(&config);
    Ok(Running {
        opamp_addr,
        api_addr,
        registry,
        store,
        store_health,
        writer,
        config,
        cluster,
        _sqlite_lock: sqlite_lock,
        shutdown,
        actors_stop,
        sessions,
        actors,
        servers,
    })
}

impl Running {
    /// A token that starts shutdown when cancelled (signal handlers, tests).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until shutdown is requested, then stops in order: no new connections, Close 1001 to
    /// every collector, wait (bounded) for their sessions, then stop the actors.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {}
            Some(result) = self.servers.join_next() => {
                // A listener that ends before shutdown was asked for is a failure, whatever it said.
                if !self.shutdown.is_cancelled() {
                    failure = Some(anyhow::anyhow!("a listener stopped unexpectedly: {result:?}"));
                    self.shutdown.cancel();
                }
            }
        }
        info!("shutting down");
        let deadline = self.config.server.shutdown_timeout;
        self.sessions.close();
        if tokio::time::timeout(deadline, self.sessions.wait())
            .await
            .is_err()
        {
            warn!(
                open = self.sessions.len(),
                "collector connections still open after the shutdown timeout"
            );
        }
        if tokio::time::timeout(deadline, async {
            while self.servers.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            warn!("requests still in flight after the shutdown timeout");
            self.servers.abort_all();
        }
        self.actors_stop.cancel();
        self.actors.close();
        if tokio::time::timeout(deadline, self.actors.wait())
            .await
            .is_err()
        {
            warn!("collector actors did not stop in time");
        }
        // Every actor has handed over its last changes (server_termination included).
        self.writer.finish(deadline).await;
        if let Some(cluster) = &self.cluster
            && let Err(err) = cluster.stopped(std::time::SystemTime::now()).await
        {
            warn!(%err, "cannot record this node's clean stop; others will take it as silent");
        }
        self.store.close().await;
        info!("stopped");
        failure.map_or(Ok(()), Err)
    }

    /// Starts shutdown and waits for it to finish.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Listening for the signals before the listeners are announced: a SIGTERM that arrives as
    // soon as the server says it listens is a clean stop, not the default (a kill).
    let signalled = stop_signal();
    let running = start(config).await?;
    let token = running.shutdown_token();
    tokio::spawn(async move {
        signalled.await;
        token.cancel();
    });
    running.wait().await
}

/// Registers for SIGTERM and Ctrl-C now; the returned future ends when either comes.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(err) => {
                    warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    }
}

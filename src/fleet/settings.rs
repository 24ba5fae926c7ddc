//! Connection settings offers: operators' named offers, each for the collectors its label selector
//! picks; which offer gives a collector each class of settings (a pure choice); and the
//! distributor that tells collectors when an offer or their labels change, and whenever they arrive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cluster::router::Router;
use crate::collector::connection::{
    ConnectionSettings, OpampConnection, ProxySettings, TelemetryConnection,
};
use crate::collector::{CollectorId, Event, Registry, SettingsSource};
use crate::selector::Selector;
use crate::store::{Store, StoreError};
/// Longest offer name, like configuration names.
const MAX_NAME: usize = 100;

/// One operator's offer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsOffer {
    pub name: String,
    pub selector: Selector,
    pub settings: ConnectionSettings,
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub updated_at: SystemTime,
}

/// Why an offer cannot be taken, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(message: impl Into<String>) -> Invalid {
    Invalid(message.into())
}

/// What OpAMP requires of an offer, checked before it is stored.
pub fn validate(name: &str, settings: &ConnectionSettings) -> Result<(), Invalid> {
    let name_ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !name_ok {
        return Err(invalid("name: 1 to 100 letters, digits or ._-"));
    }
    if settings.is_empty() {
        return Err(invalid(
            "an offer needs at least one of opamp, own_metrics, own_traces, own_logs, \
             other_connections",
        ));
    }
    if let Some(opamp) = &settings.opamp {
        check_opamp(opamp)?;
    }
    for (class, telemetry) in [
        ("own_metrics", &settings.own_metrics),
        ("own_traces", &settings.own_traces),
        ("own_logs", &settings.own_logs),
    ] {
        if let Some(t) = telemetry {
            check_telemetry(class, t)?;
        }
    }
    for (name, other) in &settings.other_connections {
        if name.is_empty() {
            return Err(invalid("other_connections: names are not empty"));
        }
        if other.destination_endpoint.is_empty() {
            return Err(invalid(format!(
                "other_connections.{name}.destination_endpoint: must not be empty"
            )));
        }
        check_proxy(&format!("other_connections.{name}"), other.proxy.as_ref())?;
    }
    Ok(())
}

fn check_opamp(opamp: &OpampConnection) -> Result<(), Invalid> {
    if !has_scheme(&opamp.destination_endpoint, &["ws", "wss", "http", "https"]) {
        return Err(invalid(
            "opamp.destination_endpoint: a ws://, wss://, http:// or https:// URL",
        ));
    }
    if opamp.heartbeat_interval_seconds == 0 {
        return Err(invalid(
            "opamp.heartbeat_interval_seconds: at least 1 (OpAMP reads 0 as no heartbeats)",
        ));
    }
    check_proxy("opamp", opamp.proxy.as_ref())
}

fn check_telemetry(class: &str, t: &TelemetryConnection) -> Result<(), Invalid> {
    if !has_scheme(&t.destination_endpoint, &["http", "https"]) {
        return Err(invalid(format!(
            "{class}.destination_endpoint: a full OTLP/HTTP URL (http:// or https://, with its path)"
        )));
    }
    check_proxy(class, t.proxy.as_ref())
}

fn check_proxy(class: &str, proxy: Option<&ProxySettings>) -> Result<(), Invalid> {
    match proxy {
        Some(p) if p.url.is_empty() => {
            Err(invalid(format!("{class}.proxy.url: must not be empty")))
        }
        _ => Ok(()),
    }
}

/// `url` starts with one of `schemes` followed by `://` and something after it.
fn has_scheme(url: &str, schemes: &[&str]) -> bool {
    url.split_once("://").is_some_and(|(scheme, rest)| {
        !rest.is_empty() && schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
    })
}

/// The settings the offers give a collector with `labels`: of the offers whose selector matches,
/// the most recently changed one that has a class gives that class (and each other connection by
/// its name), so a broad offer can set the defaults and a narrower, newer one override a part.
/// `None` when no offer gives anything.
pub fn resolve(
    offers: &[SettingsOffer],
    labels: &BTreeMap<String, String>,
) -> Option<ConnectionSettings> {
    let mut matching: Vec<&SettingsOffer> = offers
        .iter()
        .filter(|o| o.selector.matches(labels))
        .collect();
    // Oldest first, so newer ones are laid over them; the name settles a tie.
    matching.sort_by(|a, b| (a.updated_at, &a.name).cmp(&(b.updated_at, &b.name)));
    let mut settings = ConnectionSettings::default();
    for offer in matching {
        let s = &offer.settings;
        if s.opamp.is_some() {
            settings.opamp.clone_from(&s.opamp);
        }
        if s.own_metrics.is_some() {
            settings.own_metrics.clone_from(&s.own_metrics);
        }
        if s.own_traces.is_some() {
            settings.own_traces.clone_from(&s.own_traces);
        }
        if s.own_logs.is_some() {
            settings.own_logs.clone_from(&s.own_logs);
        }
        for (name, other) in &s.other_connections {
            settings
                .other_connections
                .insert(name.clone(), other.clone());
        }
    }
    (!settings.is_empty()).then_some(settings)
}

/// Every stored offer; one the store holds but this version cannot read is left out, and said so.
pub async fn offers(store: &dyn Store) -> Result<Vec<SettingsOffer>, StoreError> {
    Ok(store
        .settings_offers()
        .await?
        .into_iter()
        .filter_map(|document| match serde_json::from_value(document) {
            Ok(offer) => Some(offer),
            Err(err) => {
                warn!(%err, "a stored connection settings offer cannot be read; it is left out");
                None
            }
        })
        .collect())
}

/// How often a node reads the offers again without a change of its own: other nodes' changes
/// reach the collectors connected here through the router at once, and the offers this node
/// tells arriving collectors within this.
const REFRESH: Duration = Duration::from_secs(2);

/// The offers as this node last read them, for actors answering a collector's first contact:
/// read without waiting (the lock is held only to swap or clone an `Arc`).
#[derive(Default)]
pub struct Offers(std::sync::RwLock<Arc<[SettingsOffer]>>);

impl Offers {
    fn set(&self, offers: Arc<[SettingsOffer]>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = offers;
    }

    fn get(&self) -> Arc<[SettingsOffer]> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl SettingsSource for Offers {
    fn settings_for(&self, labels: &BTreeMap<String, String>) -> Option<ConnectionSettings> {
        resolve(&self.get(), labels)
    }
}

/// Tells collectors the settings the offers give them.
#[derive(Clone)]
pub struct Distributor {
    router: Arc<Router>,
    store: Arc<dyn Store>,
    /// The book as actors read it.
    shared: Arc<Offers>,
    /// Tellers take turns, each reading the offers and telling under it: a teller that read
    /// older offers (an arrival) can never tell a collector after one that read newer ones (an
    /// operator's new offer), which would take the new offer back. It guards the book's reads
    /// and holds whether the offers were read anew outside the periodic read: then the
    /// collectors resident here are told afresh at the next one, since a change another node
    /// made may be among what was read.
    telling: Arc<tokio::sync::Mutex<Retell>>,
}

/// Whether the collectors resident here are to be told afresh.
type Retell = bool;

impl Distributor {
    /// One per server: the API and the arrivals share it (and its turns); `shared` is the book
    /// as the collectors' actors read it.
    pub fn new(router: Arc<Router>, store: Arc<dyn Store>, shared: Arc<Offers>) -> Self {
        Self {
            router,
            store,
            shared,
            telling: Arc::new(tokio::sync::Mutex::new(false)),
        }
    }

    /// The offers as the store has them now, kept as this node's book (taken under `telling`);
    /// whether they changed.
    async fn refresh(&self) -> Result<bool, StoreError> {
        let read: Arc<[SettingsOffer]> = offers(self.store.as_ref()).await?.into();
        let changed = read != self.shared.get();
        self.shared.set(read);
        Ok(changed)
    }

    /// Tells every connected collector one of `selectors` picks (wherever it is held) what it is
    /// given now. Collectors away hear of it when they arrive.
    pub async fn selected(&self, selectors: &[Selector]) -> Result<usize, StoreError> {
        let mut retell = self.telling.lock().await;
        *retell |= self.refresh().await?;
        let offers = self.shared.get();
        let mut told = 0;
        for selector in selectors {
            // Labels and whether it is connected are columns: no fact is read.
            let picked =
                crate::store::selected(self.store.as_ref(), selector, &[], Some(&[])).await?;
            for c in picked.iter().filter(|c| c.connected) {
                if self.tell(c.id, resolve(&offers, &c.labels)).await {
                    told += 1;
                }
            }
        }
        Ok(told)
    }

    /// Tells one collector whose labels just changed, from the offers as the store has them.
    pub async fn one(&self, id: CollectorId) -> Result<(), StoreError> {
        let mut retell = self.telling.lock().await;
        *retell |= self.refresh().await?;
        self.one_with(&self.shared.get(), id).await
    }

    /// Tells a collector that arrived here, from this node's book (no read of the offers).
    async fn arrived(&self, id: CollectorId) -> Result<(), StoreError> {
        let _turn = self.telling.lock().await;
        let offers = self.shared.get();
        // With no offer in the book an arrival has nothing to hear: a withdrawal was told to every
        // resident collector when the book changed, and a loaded record starts with none. In a
        // reconnect storm this spares the store a read per collector.
        if offers.is_empty() {
            return Ok(());
        }
        self.one_with(&offers, id).await
    }

    /// Reads the offers again; when they changed since the last such read, tells every collector
    /// resident here afresh, since one may have arrived here while this node's book was behind.
    async fn catch_up(&self, registry: &Registry, force: bool) {
        let mut retell = self.telling.lock().await;
        let told = match self.refresh().await {
            Ok(changed) if must_tell(changed || *retell, force, self.shared.get().is_empty()) => {
                self.tell_resident(registry).await
            }
            Ok(_) => Ok(()),
            Err(err) => Err(err),
        };
        match told {
            Ok(()) => *retell = false,
            Err(err) => {
                debug!(%err, "cannot read the connection settings offers or labels; trying again at the next read");
            }
        }
    }

    /// Tells every collector resident here, by the labels of one read of the fleet's columns
    /// (no fact is read, and no read per collector).
    async fn tell_resident(&self, registry: &Registry) -> Result<(), StoreError> {
        let resident: std::collections::HashSet<CollectorId> = registry.ids().into_iter().collect();
        if resident.is_empty() {
            return Ok(());
        }
        let offers = self.shared.get();
        let everyone =
            crate::store::selected(self.store.as_ref(), &Selector::default(), &[], Some(&[]))
                .await?;
        for c in everyone.iter().filter(|c| resident.contains(&c.id)) {
            self.tell(c.id, resolve(&offers, &c.labels)).await;
        }
        Ok(())
    }

    /// [`Distributor::one`] with the offers already read.
    async fn one_with(&self, offers: &[SettingsOffer], id: CollectorId) -> Result<(), StoreError> {
        // Its labels are a column: no fact is read. A collector the store has not written yet
        // has no labels yet.
        let labels = self
            .store
            .load_parts(id, Some(&[]))
            .await?
            .map(|c| c.labels)
            .unwrap_or_default();
        self.tell(id, resolve(offers, &labels)).await;
        Ok(())
    }

    async fn tell(&self, id: CollectorId, settings: Option<ConnectionSettings>) -> bool {
        let event = Event::ConnectionSettings {
            settings: settings.map(Box::new),
        };
        match self.router.apply(id, event).await {
            Ok(applied) => applied,
            Err(err) => {
                debug!(collector_id = %id, %err, "connection settings not told now; it hears on arrival");
                false
            }
        }
    }

    /// Tells each collector that arrives on this node (first contact, or back) what it is given,
    /// from this node's book of offers, read again every [`REFRESH`], until `shutdown`. A
    /// subscription dropped for lagging is taken again, and every collector resident here is
    /// told afresh, since arrivals may have been missed.
    pub async fn run(self, registry: Arc<Registry>, shutdown: CancellationToken) {
        self.catch_up(&registry, false).await;
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut arrivals = registry.subscribe();
            loop {
                let published = tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = refresh.tick() => {
                        self.catch_up(&registry, false).await;
                        continue;
                    }
                    published = arrivals.recv() => published,
                };
                let Some(published) = published else { break };
                let t = &published.transition;
                if t.is_arrival()
                    && let Err(err) = self.arrived(published.collector).await
                {
                    warn!(collector_id = %published.collector, %err, "cannot read the labels of an arriving collector");
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            self.catch_up(&registry, true).await;
        }
    }
}

/// Whether a catch-up tells every resident collector afresh: when what they were told is `stale`
/// (the book changed, or the last telling failed), or when arrivals were missed (`force`, after
/// lagging) while the book holds offers. With an empty book a missed arrival had nothing to hear
/// (as in [`Distributor::arrived`]); in a reconnect storm this spares a read of the whole fleet
/// per lag.
fn must_tell(stale: bool, force: bool, book_empty: bool) -> bool {
    stale || (force && !book_empty)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn missed_arrivals_are_told_only_when_there_is_something_to_hear() {
        // (stale, force, book_empty)
        assert!(
            must_tell(true, false, true),
            "a withdrawal or failed telling is told"
        );
        assert!(
            must_tell(false, true, false),
            "missed arrivals hear the book"
        );
        assert!(
            !must_tell(false, true, true),
            "an empty book has nothing to tell"
        );
        assert!(!must_tell(false, false, false), "nothing new, nothing told");
    }

    fn offer(name: &str, selector: &str, age: u64, settings: ConnectionSettings) -> SettingsOffer {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age);
        SettingsOffer {
            name: name.into(),
            selector: Selector::parse(selector).unwrap(),
            settings,
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn the_newest_matching_offer_gives_each_class() {
        let fleet = offer(
            "fleet",
            "",
            100,
            ConnectionSettings {
                own_metrics: Some(TelemetryConnection::to("https://all/v1/metrics")),
                own_logs: Some(TelemetryConnection::to("https://all/v1/logs")),
                ..ConnectionSettings::default()
            },
        );
        let gold = offer(
            "gold",
            "tier=gold",
            10,
            ConnectionSettings {
                own_logs: Some(TelemetryConnection::to("https://gold/v1/logs")),
                ..ConnectionSettings::default()
            },
        );
        let offers = [gold, fleet];
        let gold = &BTreeMap::from([("tier".to_owned(), "gold".to_owned())]);
        let plain = resolve(&offers, &BTreeMap::new()).unwrap();
        assert_eq!(
            plain.own_logs,
            Some(TelemetryConnection::to("https://all/v1/logs"))
        );
        let golden = resolve(&offers, gold).unwrap();
        assert_eq!(
            golden.own_logs,
            Some(TelemetryConnection::to("https://gold/v1/logs"))
        );
        assert_eq!(
            golden.own_metrics,
            Some(TelemetryConnection::to("https://all/v1/metrics")),
            "the classes the newer offer leaves out come from the older"
        );
        let only_gold = &offers[..1];
        assert!(
            resolve(
                only_gold,
                &BTreeMap::from([("tier".to_owned(), "silver".to_owned())])
            )
            .is_none()
        );
    }

    #[test]
    fn offers_are_checked_as_opamp_requires() {
        let good = ConnectionSettings {
            opamp: Some(OpampConnection {
                destination_endpoint: "wss://opamp.example.com/v1/opamp".into(),
                heartbeat_interval_seconds: 30,
                ..OpampConnection::default()
            }),
            ..ConnectionSettings::default()
        };
        assert!(validate("prod", &good).is_ok());
        assert!(validate("bad name", &good).is_err());
        assert!(validate("empty", &ConnectionSettings::default()).is_err());
        let mut no_endpoint = good.clone();
        no_endpoint.opamp.as_mut().unwrap().destination_endpoint = "opamp.example.com".into();
        assert!(validate("x", &no_endpoint).is_err());
        let mut silent = good.clone();
        silent.opamp.as_mut().unwrap().heartbeat_interval_seconds = 0;
        assert!(validate("x", &silent).is_err());
        let grpc = ConnectionSettings {
            own_traces: Some(TelemetryConnection::to("grpc://collector:4317")),
            ..ConnectionSettings::default()
        };
        assert!(validate("x", &grpc).is_err());
        let mut proxied = good;
        proxied.opamp.as_mut().unwrap().proxy = Some(ProxySettings::default());
        assert!(validate("x", &proxied).is_err());
    }
}

//! The store contract: one suite, run against SQLite and a real PostgreSQL, a fresh database per
//! test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opampd::collector::{
    AvailableComponents, Capabilities, Collector, CollectorId, Components, ConfigFile, Description,
    Health, PackageOffer, PackageState, PackageStatus, PackageStatuses, Reason, RemoteConfigState,
    RemoteConfigStatus, State, Transition, Transport,
};
use opampd::config::Config;
use opampd::selector::Selector;
use opampd::store::{
    self, After, Batch, CollectorQuery, ConfigurationFile, EventFilter, SortKey, Store,
};

/// Where a contract test's database lives.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database of `backend`: its URL, and for SQLite the directory holding it.
pub async fn fresh_url(backend: Backend) -> (String, Option<tempfile::TempDir>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("store.db").display());
            (url, Some(dir))
        }
        Backend::Postgres => (crate::support::postgres::fresh_database().await, None),
    }
}

/// Opens (and migrates) the store at `url` as replica `node`.
pub async fn open_store(url: &str, node: &str) -> Arc<dyn Store> {
    let mut config = Config::default();
    config.database.url = url.to_owned();
    config.server.node_id = node.to_owned();
    let store = store::open(&config).await.expect("the store opens");
    store.migrate().await.expect("migrations apply");
    store
}

/// A time the databases keep exactly (microseconds).
fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000 + seconds * 1_000_123)
}

fn transition(from: Option<State>, to: State, reason: Reason, seconds: u64) -> Transition {
    Transition {
        from,
        to,
        reason,
        message: format!("{reason} at {seconds}"),
        at: at(seconds),
        cause: seconds
            .is_multiple_of(2)
            .then(|| format!("cause-{seconds}")),
    }
}

/// A record with every fact filled in, bytes that are not UTF-8 included.
fn full_record(id: CollectorId, state: State) -> Collector {
    let mut c = Collector::new(id);
    c.state = Some(state);
    c.state_since = Some(at(3));
    c.state_reason = Some(Reason::RuntimeError);
    c.state_message = "exporter otlp is down".into();
    c.connected = state != State::Disconnected;
    c.transport = Some(Transport::WebSocket);
    c.connected_since = Some(at(1));
    c.last_seen = Some(at(4));
    c.capabilities = Capabilities(0x3fff);
    c.sequence_num = Some(u64::MAX - 1);
    c.description = Some(Description {
        identifying: BTreeMap::from([("service.name".into(), "otelcol".into())]),
        non_identifying: BTreeMap::from([
            ("host.name".into(), "node-1".into()),
            ("cpu.count".into(), 8.into()),
        ]),
    });
    c.health = Some(Health {
        healthy: false,
        start_time_unix_nano: 11,
        last_error: "exporter otlp is down".into(),
        status: "StatusRecoverableError".into(),
        status_time_unix_nano: 12,
        components: BTreeMap::from([(
            "exporter:otlp".into(),
            Health {
                healthy: false,
                last_error: "connection refused".into(),
                ..Health::default()
            },
        )]),
    });
    c.effective_config = Some(BTreeMap::from([(
        "collector.yaml".into(),
        ConfigFile {
            content_type: "text/yaml".into(),
            body: (*b"receivers: {otlp: {}}\n\xff\x00").into(),
        },
    )]));
    c.remote_config_status = Some(RemoteConfigStatus {
        hash: vec![0xc0, 0xff, 0xee],
        status: RemoteConfigState::Failed,
        error_message: "unknown exporter kafka".into(),
    });
    c.package_statuses = Some(PackageStatuses {
        packages: BTreeMap::from([(
            "otelcol".into(),
            PackageStatus {
                agent_has_version: "0.1.0".into(),
                server_offered_version: "0.2.0".into(),
                status: PackageState::Installing,
                error_message: String::new(),
            },
        )]),
        server_provided_all_packages_hash: vec![1, 2, 3],
        error_message: String::new(),
    });
    c.available_components = Some(AvailableComponents {
        hash: vec![9, 9],
        components: Some(Arc::new(Components(BTreeMap::from([(
            "receivers".into(),
            vec!["otlp".into(), "kafka".into()],
        )])))),
    });
    c.labels = BTreeMap::from([
        ("env".into(), "prod".into()),
        ("region".into(), "eu".into()),
    ]);
    c.config_sent = Some(vec![0xab]);
    c.config_failed = Some(vec![0xc0, 0xff, 0xee]);
    c.config_error = Some("unknown exporter kafka".into());
    c.package_error = None;
    c.package_offered = Some(PackageOffer {
        name: "otelcol".into(),
        version: "0.2.0".into(),
        download_url: "https://packages.example/otelcol-0.2.0.tar.gz".into(),
        content_hash: vec![7; 32],
        signature: vec![],
        hash: vec![8; 32],
    });
    c.rollout = Some("rollout-1".into());
    c.missing_components = vec!["exporters/kafka".into()];
    c
}

/// Everything the store keeps, as comparable JSON (history compared on its own).
fn facts(c: &Collector) -> serde_json::Value {
    let mut c = c.clone();
    c.history.clear();
    let mut value = serde_json::to_value(&c).unwrap();
    // Not serialised by the record's JSON form, so compared by hand.
    value["available_components"] = serde_json::to_value(&c.available_components).unwrap();
    value["config_sent"] = serde_json::to_value(&c.config_sent).unwrap();
    value["config_failed"] = serde_json::to_value(&c.config_failed).unwrap();
    value
}

fn batch(records: Vec<Collector>, transitions: Vec<(CollectorId, Transition)>) -> Batch {
    Batch {
        records: records.into_iter().map(|c| (c.id, Box::new(c))).collect(),
        transitions,
        ..Batch::default()
    }
}

async fn migrations_apply_to_an_empty_database_and_again(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let first = open_store(&url, "a").await;
    first.migrate().await.expect("a second run changes nothing");
    let again = open_store(&url, "a").await;
    assert!(again.collectors().await.unwrap().is_empty());
    assert_eq!(again.backend(), first.backend());
}

async fn a_record_and_its_history_round_trip(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open_store(&url, "a").await;
    let id = CollectorId::new_v7();
    let record = full_record(id, State::Error);
    let history = vec![
        (id, transition(None, State::Connected, Reason::Initial, 1)),
        (
            id,
            transition(
                Some(State::Connected),
                State::Error,
                Reason::RuntimeError,
                2,
            ),
        ),
    ];
    store
        .write(&batch(vec![record.clone()], history.clone()))
        .await
        .unwrap();

    let loaded = store.load(id, 10).await.unwrap().expect("stored");
    assert_eq!(facts(&loaded), facts(&record));
    let expected: Vec<_> = history.into_iter().map(|(_, t)| t).collect();
    assert_eq!(loaded.history, expected);
    assert_eq!(store.transitions(id).await.unwrap(), expected);
    assert!(
        store
            .load(CollectorId::new_v7(), 10)
            .await
            .unwrap()
            .is_none()
    );
}

async fn the_latest_record_wins_and_transitions_only_append(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open_store(&url, "a").await;
    let id = CollectorId::new_v7();
    let mut record = full_record(id, State::Connected);
    let t = |n: u64| (id, transition(None, State::Connected, Reason::Initial, n));
    store
        .write(&batch(vec![record.clone()], vec![t(1), t(2)]))
        .await
        .unwrap();
    record.state = Some(State::Configuring);
    record.labels.insert("tier".into(), "gold".into());
    record.health = None;
    store
        .write(&batch(vec![record.clone()], vec![t(3)]))
        .await
        .unwrap();

    let all = store.collectors().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(facts(&all[0]), facts(&record));
    let history = store.transitions(id).await.unwrap();
    assert_eq!(history, vec![t(1).1, t(2).1, t(3).1]);
    // The most recent ones, oldest first.
    let loaded = store.load(id, 2).await.unwrap().unwrap();
    assert_eq!(loaded.history, vec![t(2).1, t(3).1]);
}

async fn a_large_batch_lands_in_one_write(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open_store(&url, "a").await;
    let records: Vec<_> = (0..2500)
        .map(|_| full_record(CollectorId::new_v7(), State::Connected))
        .collect();
    let transitions: Vec<_> = records
        .iter()
        .map(|c| (c.id, transition(None, State::Connected, Reason::Initial, 1)))
        .collect();
    store.write(&batch(records, transitions)).await.unwrap();
    let all = store.collectors().await.unwrap();
    assert_eq!(all.len(), 2500);
    assert_eq!(store.transitions(all[1234].id).await.unwrap().len(), 1);
}

async fn recovery_disconnects_only_this_nodes_live_collectors(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let ours = open_store(&url, "node-a").await;
    let theirs = open_store(&url, "node-b").await;
    let live = full_record(CollectorId::new_v7(), State::Configuring);
    let pending = full_record(CollectorId::new_v7(), State::Pending);
    let gone = full_record(CollectorId::new_v7(), State::Disconnected);
    let elsewhere = full_record(CollectorId::new_v7(), State::Connected);
    ours.write(&batch(
        vec![live.clone(), pending.clone(), gone.clone()],
        vec![],
    ))
    .await
    .unwrap();
    theirs
        .write(&batch(vec![elsewhere.clone()], vec![]))
        .await
        .unwrap();

    assert_eq!(ours.recover(at(100)).await.unwrap(), 2);
    for (before, id) in [(State::Configuring, live.id), (State::Pending, pending.id)] {
        let c = ours.load(id, 10).await.unwrap().unwrap();
        assert_eq!(c.state, Some(State::Disconnected));
        assert_eq!(c.state_reason, Some(Reason::ServerTermination));
        assert_eq!(c.state_since, Some(at(100)));
        assert!(!c.connected);
        let t = &c.history[0];
        assert_eq!(
            (t.from, t.to, t.reason, t.at),
            (
                Some(before),
                State::Disconnected,
                Reason::ServerTermination,
                at(100)
            )
        );
    }
    assert!(ours.transitions(gone.id).await.unwrap().is_empty());
    let other = ours.load(elsewhere.id, 10).await.unwrap().unwrap();
    assert_eq!(
        other.state,
        Some(State::Connected),
        "another node's collector"
    );
    assert_eq!(
        ours.recover(at(101)).await.unwrap(),
        0,
        "nothing left to recover"
    );
}

/// Twelve collectors with varied states, names, labels and times.
fn fleet() -> Vec<Collector> {
    (0..12u64)
        .map(|i| {
            let state = State::ALL[usize::try_from(i).unwrap() % 7];
            let mut c = full_record(CollectorId::new_v7(), state);
            c.last_seen = Some(at(100 - i * 3));
            c.state_since = Some(at(i % 4));
            let d = c.description.as_mut().unwrap();
            d.identifying.insert(
                "service.name".into(),
                format!("collector-{:02}", (i * 5) % 12).into(),
            );
            d.identifying
                .insert("service.version".into(), format!("0.{}.0", 100 + i).into());
            c.labels = BTreeMap::from([
                ("env".into(), if i % 2 == 0 { "prod" } else { "dev" }.into()),
                ("n".into(), i.to_string()),
            ]);
            if i % 3 == 0 {
                c.labels.insert("gpu".into(), "yes".into());
            }
            c
        })
        .collect()
}

fn query() -> CollectorQuery {
    CollectorQuery {
        states: vec![],
        selector: Selector::default(),
        text: None,
        sort: SortKey::Id,
        descending: false,
        after: None,
        limit: 100,
    }
}

fn ns(found: &[Collector]) -> Vec<String> {
    found.iter().map(|c| c.labels["n"].clone()).collect()
}

async fn filters_select_by_state_labels_and_text(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open_store(&url, "a").await;
    let fleet = fleet();
    store.write(&batch(fleet.clone(), vec![])).await.unwrap();
    let select = |text: &str| CollectorQuery {
        selector: Selector::parse(text).unwrap(),
        ..query()
    };
    let mut cases: Vec<(CollectorQuery, Vec<&str>)> = vec![
        (
            CollectorQuery {
                states: vec![State::Error, State::Pending],
                ..query()
            },
            vec!["2", "4", "9", "11"],
        ),
        (select("env=prod,gpu"), vec!["0", "6"]),
        (select("env!=prod,n in (1,3,4)"), vec!["1", "3"]),
        (
            select("n notin (0,1,2,3,4,5,6,7,8,9),!gpu"),
            vec!["10", "11"],
        ),
        (select("missing!=x,n=5"), vec!["5"]),
        (
            CollectorQuery {
                text: Some("0.107".into()),
                ..query()
            },
            vec!["7"],
        ),
        (
            CollectorQuery {
                text: Some("COLLECTOR-05".into()),
                ..query()
            },
            vec!["1"],
        ),
        (
            CollectorQuery {
                text: Some("%".into()),
                ..query()
            },
            vec![],
        ),
    ];
    let id_of_n = |n: &str| {
        fleet
            .iter()
            .find(|c| c.labels["n"] == n)
            .unwrap()
            .id
            .to_string()
    };
    cases.push((
        CollectorQuery {
            text: Some(id_of_n("8")[24..].to_owned()),
            ..query()
        },
        vec!["8"],
    ));
    for (q, expected) in cases {
        let mut found = ns(&store.list(&q).await.unwrap());
        found.sort();
        let mut expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
        expected.sort();
        assert_eq!(found, expected, "{q:?}");
    }
    let counts = store.count_by_state().await.unwrap();
    assert_eq!(counts.values().sum::<u64>(), 12);
    assert_eq!(counts[&State::Connected], 2);
}

/// Walks every page of `sort` and checks the order and that nothing repeats or goes missing.
async fn pages_cover_everything_once(
    store: &dyn Store,
    sort: SortKey,
    descending: bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(&CollectorQuery {
                sort,
                descending,
                after: after.clone(),
                limit: 5,
                ..query()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(After {
            value: sort.value_of(last),
            id: last.id.to_string(),
        });
        seen.extend(page.iter().map(|c| c.labels["n"].clone()));
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 12, "{sort:?} {descending}: {seen:?}");
    assert_eq!(seen.len(), 12);
    seen
}

async fn cursor_pages_follow_every_sort_order(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open_store(&url, "a").await;
    store.write(&batch(fleet(), vec![])).await.unwrap();
    // last_seen falls as n rises.
    let by_seen = pages_cover_everything_once(store.as_ref(), SortKey::LastSeen, false).await;
    assert_eq!(
        by_seen,
        (0..12).rev().map(|n| n.to_string()).collect::<Vec<_>>()
    );
    let by_seen_desc = pages_cover_everything_once(store.as_ref(), SortKey::LastSeen, true).await;
    assert_eq!(
        by_seen_desc,
        (0..12).map(|n| n.to_string()).collect::<Vec<_>>()
    );
    // Names: collector-(n*5 mod 12).
    let by_name = pages_cover_everything_once(store.as_ref(), SortKey::Name, false).await;
    assert_eq!(
        by_name,
        ["0", "5", "10", "3", "8", "1", "6", "11", "4", "9", "2", "7"]
    );
    for sort in [SortKey::Id, SortKey::State, SortKey::StateSince] {
        for descending in [false, true] {
            pages_cover_everything_once(store.as_ref(), sort, descending).await;
        }
    }
}

async fn history_and_events_page_by_position(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open_store(&url, "a").await;
    assert_eq!(store.last_seq().await.unwrap(), 0);
    let fleet = fleet();
    let (a, b) = (&fleet[0], &fleet[1]);
    store.write(&batch(fleet.clone(), vec![])).await.unwrap();
    let mut transitions = Vec::new();
    for i in 0..6 {
        let to = if i % 2 == 0 {
            State::Error
        } else {
            State::Connected
        };
        let who = if i < 4 { a.id } else { b.id };
        transitions.push((who, transition(None, to, Reason::Initial, i)));
    }
    store.write(&batch(vec![], transitions)).await.unwrap();

    let newest = store.history(a.id, None, 3).await.unwrap();
    assert_eq!(
        newest.iter().map(|e| e.transition.at).collect::<Vec<_>>(),
        [at(3), at(2), at(1)]
    );
    let older = store.history(a.id, Some(newest[2].seq), 3).await.unwrap();
    assert_eq!(
        older.iter().map(|e| e.transition.at).collect::<Vec<_>>(),
        [at(0)]
    );

    let last = store.last_seq().await.unwrap();
    let all = store
        .events_after(0, &EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all.last().unwrap().seq, last);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let after_two = store
        .events_after(all[1].seq, &EventFilter::default(), 2)
        .await
        .unwrap();
    assert_eq!(
        after_two.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [all[2].seq, all[3].seq]
    );
    let errors = EventFilter {
        states: vec![State::Error],
        ..EventFilter::default()
    };
    assert_eq!(store.events_after(0, &errors, 100).await.unwrap().len(), 3);
    let of_b = EventFilter {
        selector: Selector::parse("n=1").unwrap(),
        ..EventFilter::default()
    };
    let events = store.events_after(0, &of_b, 100).await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.collector == b.id));
}

async fn forgetting_deletes_record_and_history_before_new_writes(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open_store(&url, "a").await;
    let gone = full_record(CollectorId::new_v7(), State::Disconnected);
    let back = full_record(CollectorId::new_v7(), State::Disconnected);
    let t = |id| (id, transition(None, State::Connected, Reason::Initial, 1));
    store
        .write(&batch(
            vec![gone.clone(), back.clone()],
            vec![t(gone.id), t(back.id)],
        ))
        .await
        .unwrap();
    // `back` is forgotten and returns within one batch: only its new life remains.
    let mut next = batch(vec![], vec![]);
    next.forget(gone.id);
    next.forget(back.id);
    next.absorb(batch(vec![back.clone()], vec![t(back.id)]));
    store.write(&next).await.unwrap();
    assert!(store.load(gone.id, 10).await.unwrap().is_none());
    assert!(store.transitions(gone.id).await.unwrap().is_empty());
    assert_eq!(store.transitions(back.id).await.unwrap().len(), 1);
}

async fn configuration_versions_count_up_and_never_repeat(backend: Backend) {
    let (url, _dir) = fresh_url(backend).await;
    let store = open_store(&url, "a").await;
    let files = |body: &str| {
        BTreeMap::from([(
            "collector.yaml".to_owned(),
            ConfigurationFile {
                content_type: "text/yaml".into(),
                body: body.into(),
            },
        )])
    };
    let components = vec!["receivers/otlp".to_owned()];
    let (v1, created) = store
        .add_configuration("gateway", "h1", &files("a: 1"), &components, at(1))
        .await
        .unwrap();
    assert!(created);
    assert_eq!((v1.version, v1.created_at), (1, at(1)));
    let (again, created) = store
        .add_configuration("gateway", "h1", &files("a: 1"), &components, at(2))
        .await
        .unwrap();
    assert!(!created, "the same files are not a new version");
    assert_eq!(again, v1);
    let (v2, _) = store
        .add_configuration("gateway", "h2", &files("a: 2"), &[], at(3))
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    store
        .add_configuration("edge", "h3", &files("b: 1"), &[], at(4))
        .await
        .unwrap();
    let latest = store.configurations().await.unwrap();
    assert_eq!(
        latest
            .iter()
            .map(|v| (v.name.as_str(), v.version))
            .collect::<Vec<_>>(),
        [("edge", 1), ("gateway", 2)]
    );
    let history = store.configuration_versions("gateway").await.unwrap();
    assert_eq!(history, [v1.clone(), v2.clone()]);
    assert_eq!(
        store.configuration_version("gateway", 1).await.unwrap(),
        Some(v1)
    );
    assert!(
        store
            .configuration_version("gateway", 3)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .configuration_versions("nothing")
            .await
            .unwrap()
            .is_empty()
    );
}

crate::on_both_stores!(
    migrations_apply_to_an_empty_database_and_again,
    a_record_and_its_history_round_trip,
    the_latest_record_wins_and_transitions_only_append,
    a_large_batch_lands_in_one_write,
    recovery_disconnects_only_this_nodes_live_collectors,
    filters_select_by_state_labels_and_text,
    cursor_pages_follow_every_sort_order,
    history_and_events_page_by_position,
    forgetting_deletes_record_and_history_before_new_writes,
    configuration_versions_count_up_and_never_repeat,
);

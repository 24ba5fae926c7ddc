//! The store contract's writes: records, facts, transitions, claims, labels, the quarantine,
//! forgets and configuration versions, run against SQLite and a real PostgreSQL, a fresh database
//! per test. Also the fixtures the other store suites share (`store_reads`, `history_tail`,
//! `history_buckets`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opampd::collector::facts::{Changed, FactParts};
use opampd::collector::persist::{Change, Epoch, Hot};
use opampd::collector::{
    AvailableComponents, Capabilities, Collector, CollectorId, Components, ConfigFile, Description,
    Health, PackageOffer, PackageState, PackageStatus, PackageStatuses, Reason, RemoteConfigState,
    RemoteConfigStatus, State, Transition, Transport,
};
use opampd::store::{Batch, ConfigurationFile, LabelEdit, Store};

use crate::support::{Backend, eventually, fresh_database, fresh_store, open_store};

/// A time the databases keep exactly (microseconds).
pub(crate) fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_000 + seconds * 1_000_123)
}

pub(crate) fn transition(
    from: Option<State>,
    to: State,
    reason: Reason,
    seconds: u64,
) -> Transition {
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
        identifying: [("service.name".into(), "otelcol".into())]
            .into_iter()
            .collect(),
        non_identifying: [
            ("host.name".into(), "node-1".into()),
            ("cpu.count".into(), 8.into()),
        ]
        .into_iter()
        .collect(),
    });
    c.health = Some(Health {
        healthy: false,
        start_time_unix_nano: 11,
        last_error: "exporter otlp is down".into(),
        status: "StatusRecoverableError".into(),
        status_time_unix_nano: 12,
        components: litemap::LiteMap::from_iter([(
            "exporter:otlp".into(),
            Health {
                healthy: false,
                last_error: "connection refused".into(),
                ..Health::default()
            },
        )]),
    });
    c.effective_config = Some(litemap::LiteMap::from_iter([(
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
    c.package_statuses = Some(Box::new(PackageStatuses {
        packages: BTreeMap::from([(
            "otelcol".into(),
            PackageStatus {
                agent_has_version: "0.1.0".into(),
                agent_has_hash: vec![3; 32],
                server_offered_version: "0.2.0".into(),
                status: PackageState::Installing,
                error_message: String::new(),
            },
        )]),
        server_provided_all_packages_hash: vec![1, 2, 3],
        error_message: String::new(),
    }));
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
    c.package_offered = Some(Box::new(PackageOffer {
        name: "otelcol".into(),
        version: "0.2.0".into(),
        download_url: "https://packages.example/otelcol-0.2.0.tar.gz".into(),
        content_hash: vec![7; 32],
        signature: vec![],
        hash: vec![8; 32],
        kept: Vec::new(),
        all_hash: Vec::new(),
    }));
    c.rollout = Some("rollout-1".into());
    c.missing_components = vec!["exporters/kafka".into()];
    c
}

/// Everything the store keeps of a record, as comparable JSON (labels compared on their own).
fn facts(c: &Collector) -> serde_json::Value {
    let mut c = c.clone();
    c.labels.clear();
    let mut value = serde_json::to_value(&c).unwrap();
    // Not serialised by the record's JSON form, so compared by hand.
    value["available_components"] = serde_json::to_value(&c.available_components).unwrap();
    value["config_sent"] = serde_json::to_value(&c.config_sent).unwrap();
    value["config_failed"] = serde_json::to_value(&c.config_failed).unwrap();
    value
}

/// What an actor hands over for `c`: its hot part and every facts part.
pub(crate) fn record_change(c: &Collector, epoch: Epoch, create: bool) -> Change {
    Change::Record {
        hot: Box::new(Hot::of(c).expect("a record with a state")),
        facts: Box::new(Changed::all().take(c)),
        epoch,
        create,
        whole: true,
    }
}

/// What an actor hands over when only `c`'s health changed: its hot part and that facts part.
pub(crate) fn health_change(c: &Collector, epoch: Epoch) -> Change {
    Change::Record {
        hot: Box::new(Hot::of(c).expect("a record with a state")),
        facts: Box::new(FactParts {
            health: c.health.clone(),
            ..FactParts::default()
        }),
        epoch,
        create: false,
        whole: false,
    }
}

pub(crate) fn transition_change(id: CollectorId, epoch: Epoch, transition: Transition) -> Change {
    Change::Transition {
        id,
        epoch,
        transition,
    }
}

pub(crate) fn batch_of(changes: impl IntoIterator<Item = Change>) -> Batch {
    let mut batch = Batch::default();
    for change in changes {
        batch.take(change);
    }
    batch
}

/// New records (epoch 1) and their transitions, as first contacts write them.
pub(crate) fn creating(
    records: &[Collector],
    transitions: Vec<(CollectorId, Transition)>,
) -> Batch {
    batch_of(
        records.iter().map(|c| record_change(c, 1, true)).chain(
            transitions
                .into_iter()
                .map(|(id, t)| transition_change(id, 1, t)),
        ),
    )
}

/// Claims a collector the store has never seen: nothing is found.
async fn claim_of_a_stranger(store: &dyn Store) {
    let found = store.claim(&[CollectorId::new_v7()]).await.unwrap();
    assert!(found.is_empty(), "a claim found a record nobody wrote");
}

async fn label(store: &dyn Store, c: &Collector) {
    store
        .edit_labels(c.id, &LabelEdit::Replace(c.labels.clone()))
        .await
        .unwrap()
        .expect("the collector exists");
}

async fn migrations_apply_to_an_empty_database_and_again(backend: Backend) {
    let db = fresh_database(backend).await;
    let url = db.url.clone();
    let first = open_store(&url, "a").await;
    first.migrate().await.expect("a second run changes nothing");
    let again = open_store(&url, "a").await;
    assert!(again.collectors().await.unwrap().is_empty());
    assert_eq!(again.backend(), first.backend());
}

async fn a_record_and_its_history_round_trip(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
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
    let fenced = store
        .write(&creating(std::slice::from_ref(&record), history.clone()))
        .await
        .unwrap();
    assert!(fenced.is_empty());
    label(store.as_ref(), &record).await;

    let loaded = store.load(id).await.unwrap().expect("stored");
    assert_eq!(facts(&loaded), facts(&record));
    assert_eq!(loaded.labels, record.labels);
    let expected: Vec<_> = history.into_iter().map(|(_, t)| t).collect();
    assert_eq!(store.transitions(id).await.unwrap(), expected);
    assert!(store.load(CollectorId::new_v7()).await.unwrap().is_none());
}

async fn the_latest_record_wins_and_transitions_only_append(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let id = CollectorId::new_v7();
    let mut record = full_record(id, State::Connected);
    let t = |n: u64| (id, transition(None, State::Connected, Reason::Initial, n));
    store
        .write(&creating(std::slice::from_ref(&record), vec![t(1), t(2)]))
        .await
        .unwrap();
    label(store.as_ref(), &record).await;
    record.state = Some(State::Configuring);
    let (_, third) = t(3);
    store
        .write(&batch_of([
            record_change(&record, 1, false),
            transition_change(id, 1, third),
        ]))
        .await
        .unwrap();

    let all = store.collectors().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(facts(&all[0]), facts(&record));
    assert_eq!(all[0].labels, record.labels, "a record write leaves labels");
    let history = store.transitions(id).await.unwrap();
    assert_eq!(history, vec![t(1).1, t(2).1, t(3).1]);
}

/// A write whose descriptive part did not change (ADR 0084) carries the state part alone: the
/// stored names, capabilities and control stay as the last whole write left them, and its claim's
/// epoch fences it like any write.
async fn a_state_only_write_leaves_the_descriptive_part(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let id = CollectorId::new_v7();
    let record = full_record(id, State::Connected);
    store
        .write(&creating(std::slice::from_ref(&record), vec![]))
        .await
        .unwrap();
    let state_only = |c: &Collector, epoch: Epoch| Change::Record {
        hot: Box::new(Hot::of(c).expect("a record with a state")),
        facts: Box::default(),
        epoch,
        create: false,
        whole: false,
    };
    let mut moved = record.clone();
    moved.state = Some(State::Disconnected);
    moved.connected = false;
    moved.sequence_num = Some(7);
    moved.capabilities = Capabilities(0x1);
    moved.config_error = Some("not carried by a state-only write".into());
    let fenced = store
        .write(&batch_of([state_only(&moved, 1)]))
        .await
        .unwrap();
    assert!(fenced.is_empty());
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.state, Some(State::Disconnected));
    assert!(!loaded.connected);
    assert_eq!(loaded.sequence_num, Some(7));
    assert_eq!(loaded.capabilities, record.capabilities);
    assert_eq!(loaded.config_error, record.config_error);
    assert_eq!(loaded.health, record.health, "health stays too");

    // Under a superseded claim it is refused.
    assert_eq!(store.claim(&[id]).await.unwrap()[0].epoch, 2);
    let fenced = store
        .write(&batch_of([state_only(&record, 1)]))
        .await
        .unwrap();
    assert_eq!(fenced, vec![(id, 1)]);
    let kept = store.load(id).await.unwrap().unwrap();
    assert_eq!(kept.state, Some(State::Disconnected));

    // A whole write carries both parts.
    store
        .write(&batch_of([record_change(&moved, 2, false)]))
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.capabilities, moved.capabilities);
    assert_eq!(loaded.config_error, moved.config_error);
}

async fn facts_are_written_part_by_part_and_a_touch_moves_only_last_seen(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let id = CollectorId::new_v7();
    let mut record = full_record(id, State::Error);
    store
        .write(&creating(std::slice::from_ref(&record), vec![]))
        .await
        .unwrap();
    // Only health changed: the other parts in the store stay as they were.
    record.health = Some(Health {
        healthy: true,
        ..Health::default()
    });
    record.state = Some(State::Connected);
    store
        .write(&batch_of([health_change(&record, 1)]))
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(facts(&loaded), facts(&record));
    // A change that brings no facts (health rides in the record's row) keeps the stored health.
    record.state = Some(State::Disconnected);
    store
        .write(&batch_of([Change::Record {
            hot: Box::new(Hot::of(&record).expect("a record with a state")),
            facts: Box::default(),
            epoch: 1,
            create: false,
            whole: true,
        }]))
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.state, Some(State::Disconnected));
    assert_eq!(facts(&loaded), facts(&record), "health and every part kept");
    store
        .write(&batch_of([Change::Touch {
            id,
            epoch: 1,
            last_seen: at(50),
        }]))
        .await
        .unwrap();
    let touched = store.load(id).await.unwrap().unwrap();
    assert_eq!(touched.last_seen, Some(at(50)));
    record.last_seen = Some(at(50));
    assert_eq!(facts(&touched), facts(&record), "nothing else moved");
}

/// A refused batch is written again piece by piece (the quarantine's path, ADR 0011): the record's
/// piece keeps the stored health, and the facts' piece writes the new health by itself (ADR 0079).
async fn a_batch_written_piece_by_piece_keeps_the_record_and_then_its_health(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let id = CollectorId::new_v7();
    let mut record = full_record(id, State::Connected);
    store
        .write(&creating(std::slice::from_ref(&record), vec![]))
        .await
        .unwrap();
    let stored_health = record.health.clone();
    record.state = Some(State::Error);
    record.health = Some(Health {
        healthy: false,
        last_error: "written piece by piece".into(),
        ..Health::default()
    });
    let pieces = batch_of([health_change(&record, 1)]).pieces();
    assert_eq!(pieces.len(), 2, "the record, then its facts");
    store.write(&pieces[0]).await.unwrap();
    let between = store.load(id).await.unwrap().unwrap();
    assert_eq!(between.state, Some(State::Error));
    assert_eq!(
        between.health, stored_health,
        "the record's piece brings no health"
    );
    store.write(&pieces[1]).await.unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(facts(&loaded), facts(&record));
}

async fn writes_under_a_superseded_claim_are_refused(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let id = CollectorId::new_v7();
    let record = full_record(id, State::Connected);
    let t = |n: u64| transition(None, State::Connected, Reason::Initial, n);
    store
        .write(&creating(std::slice::from_ref(&record), vec![(id, t(1))]))
        .await
        .unwrap();
    label(store.as_ref(), &record).await;

    claim_of_a_stranger(store.as_ref()).await;
    let claimed = store.claim(&[id]).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].epoch, 2, "the first claim after the creation");
    assert_eq!(claimed[0].record.labels, record.labels);
    assert_eq!(facts(&claimed[0].record), facts(&record));

    // The creator's epoch is superseded: its writes, transitions included, are not applied.
    let mut stale = record.clone();
    stale.state = Some(State::Disconnected);
    let fenced = store
        .write(&batch_of([
            record_change(&stale, 1, false),
            transition_change(id, 1, t(2)),
            Change::Touch {
                id,
                epoch: 1,
                last_seen: at(99),
            },
        ]))
        .await
        .unwrap();
    assert_eq!(fenced, vec![(id, 1)]);
    let kept = store.load(id).await.unwrap().unwrap();
    assert_eq!(kept.state, Some(State::Connected));
    assert_eq!(kept.last_seen, record.last_seen);
    assert_eq!(store.transitions(id).await.unwrap(), vec![t(1)]);

    // Creating a record that exists is refused too: an actor that read nothing overwrites nothing.
    let blank = full_record(id, State::Connected);
    let fenced = store
        .write(&batch_of([record_change(&blank, 1, true)]))
        .await
        .unwrap();
    assert_eq!(fenced, vec![(id, 1)]);
    assert_eq!(store.load(id).await.unwrap().unwrap().labels, record.labels);

    // The claim's own writes land.
    let fenced = store
        .write(&batch_of([
            record_change(&stale, 2, false),
            transition_change(id, 2, t(2)),
        ]))
        .await
        .unwrap();
    assert!(fenced.is_empty());
    assert_eq!(
        store.load(id).await.unwrap().unwrap().state,
        Some(State::Disconnected)
    );
    assert_eq!(store.claim(&[id]).await.unwrap()[0].epoch, 3);
}

/// One batch, one chunk: a record written under its current claim and one under a superseded
/// claim. The current one's facts and history land without a check of their own; the superseded
/// one's, updated or not, do not.
async fn a_batch_with_one_superseded_claim_writes_the_others(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let (current, stale) = (
        full_record(CollectorId::new_v7(), State::Connected),
        full_record(CollectorId::new_v7(), State::Connected),
    );
    let t = |n: u64| transition(None, State::Connected, Reason::Initial, n);
    store
        .write(&creating(
            &[current.clone(), stale.clone()],
            vec![(current.id, t(1)), (stale.id, t(1))],
        ))
        .await
        .unwrap();
    assert_eq!(store.claim(&[stale.id]).await.unwrap()[0].epoch, 2);

    let failing = |c: &Collector| {
        let mut c = c.clone();
        c.state = Some(State::Error);
        c.health = Some(Health {
            healthy: false,
            last_error: format!("{} failed", c.id),
            ..Health::default()
        });
        c
    };
    let to_error = transition(
        Some(State::Connected),
        State::Error,
        Reason::RuntimeError,
        2,
    );
    let fenced = store
        .write(&batch_of([
            record_change(&failing(&current), 1, false),
            transition_change(current.id, 1, to_error.clone()),
            record_change(&failing(&stale), 1, false),
            transition_change(stale.id, 1, to_error.clone()),
        ]))
        .await
        .unwrap();
    assert_eq!(fenced, vec![(stale.id, 1)]);
    let written = store.load(current.id).await.unwrap().unwrap();
    assert_eq!(facts(&written), facts(&failing(&current)));
    assert_eq!(
        store.transitions(current.id).await.unwrap(),
        vec![t(1), to_error.clone()]
    );
    let kept = store.load(stale.id).await.unwrap().unwrap();
    assert_eq!(
        facts(&kept),
        facts(&stale),
        "neither the record nor its facts"
    );
    assert_eq!(store.transitions(stale.id).await.unwrap(), vec![t(1)]);

    // A transition alone under a superseded claim, beside writes that check themselves: the
    // batch's history still keeps its order and refuses only that one.
    let back = transition(
        Some(State::Error),
        State::Connected,
        Reason::ErrorResolved,
        3,
    );
    let fenced = store
        .write(&batch_of([
            transition_change(stale.id, 1, back.clone()),
            record_change(&current, 1, false),
            transition_change(current.id, 1, back.clone()),
        ]))
        .await
        .unwrap();
    assert!(fenced.is_empty(), "only record writes report a fence");
    assert_eq!(
        store.transitions(current.id).await.unwrap(),
        vec![t(1), to_error, back]
    );
    assert_eq!(store.transitions(stale.id).await.unwrap(), vec![t(1)]);
}

async fn labels_are_replaced_and_patched_at_once(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let record = full_record(CollectorId::new_v7(), State::Connected);
    store
        .write(&creating(std::slice::from_ref(&record), vec![]))
        .await
        .unwrap();
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let replaced = store
        .edit_labels(
            record.id,
            &LabelEdit::Replace(labels(&[("env", "prod"), ("tier", "gold")])),
        )
        .await
        .unwrap();
    assert_eq!(replaced, Some(labels(&[("env", "prod"), ("tier", "gold")])));
    let patch = BTreeMap::from([
        ("tier".to_owned(), None),
        ("zone".to_owned(), Some("eu-1".to_owned())),
        ("absent".to_owned(), None),
    ]);
    let patched = store
        .edit_labels(record.id, &LabelEdit::Merge(patch))
        .await
        .unwrap();
    assert_eq!(patched, Some(labels(&[("env", "prod"), ("zone", "eu-1")])));
    assert_eq!(
        store.load(record.id).await.unwrap().unwrap().labels,
        labels(&[("env", "prod"), ("zone", "eu-1")])
    );
    assert!(
        store
            .edit_labels(CollectorId::new_v7(), &LabelEdit::Replace(BTreeMap::new()))
            .await
            .unwrap()
            .is_none()
    );
}

async fn quarantined_rows_are_kept_with_their_error(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let row = opampd::store::Quarantined {
        collector: CollectorId::new_v7(),
        kind: "facts",
        error: "invalid byte sequence \0 here".into(),
        payload: b"anything \0\xff at all".to_vec(),
        at: at(7),
    };
    store.quarantine(std::slice::from_ref(&row)).await.unwrap();
    let kept = store.quarantined().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].payload, row.payload, "bytes kept exactly");
    assert_eq!(kept[0].error, "invalid byte sequence \u{fffd} here");
    assert_eq!(
        (kept[0].collector, kept[0].kind, kept[0].at),
        (row.collector, "facts", at(7))
    );
}

async fn a_large_batch_lands_in_one_write(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let records: Vec<_> = (0..2500)
        .map(|_| full_record(CollectorId::new_v7(), State::Connected))
        .collect();
    let transitions: Vec<_> = records
        .iter()
        .map(|c| (c.id, transition(None, State::Connected, Reason::Initial, 1)))
        .collect();
    store.write(&creating(&records, transitions)).await.unwrap();
    let all = store.collectors().await.unwrap();
    assert_eq!(all.len(), 2500);
    assert_eq!(store.transitions(all[1234].id).await.unwrap().len(), 1);
    assert!(all[1234].health.is_some(), "facts read back for every page");
}

async fn recovery_disconnects_only_this_nodes_live_collectors(backend: Backend) {
    let db = fresh_database(backend).await;
    let url = db.url.clone();
    let ours = open_store(&url, "node-a").await;
    let theirs = open_store(&url, "node-b").await;
    let live = full_record(CollectorId::new_v7(), State::Configuring);
    let pending = full_record(CollectorId::new_v7(), State::Pending);
    let gone = full_record(CollectorId::new_v7(), State::Disconnected);
    let elsewhere = full_record(CollectorId::new_v7(), State::Connected);
    ours.write(&creating(
        &[live.clone(), pending.clone(), gone.clone()],
        vec![],
    ))
    .await
    .unwrap();
    theirs
        .write(&creating(std::slice::from_ref(&elsewhere), vec![]))
        .await
        .unwrap();

    assert_eq!(ours.recover(at(100)).await.unwrap(), 2);
    for (before, id) in [(State::Configuring, live.id), (State::Pending, pending.id)] {
        let c = ours.load(id).await.unwrap().unwrap();
        assert_eq!(c.state, Some(State::Disconnected));
        assert_eq!(c.state_reason, Some(Reason::ServerTermination));
        assert_eq!(c.state_since, Some(at(100)));
        assert!(!c.connected);
        let history = ours.transitions(id).await.unwrap();
        let t = &history[0];
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
    // Recovery is a claim of its own: the crashed run's late writes cannot land.
    let fenced = ours
        .write(&batch_of([record_change(&live, 1, false)]))
        .await
        .unwrap();
    assert_eq!(fenced, vec![(live.id, 1)]);
    assert!(ours.transitions(gone.id).await.unwrap().is_empty());
    let other = ours.load(elsewhere.id).await.unwrap().unwrap();
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
pub(crate) fn fleet() -> Vec<Collector> {
    (0..12u64)
        .map(|i| {
            let state = State::ALL[usize::try_from(i).unwrap() % 7];
            let mut c = full_record(CollectorId::new_v7(), state);
            c.last_seen = Some(at(100 - i * 3));
            c.state_since = Some(at(i % 4));
            let d = c.description.as_mut().unwrap();
            d.identifying.insert(
                "service.instance.name".into(),
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

pub(crate) async fn store_fleet(store: &dyn Store, fleet: &[Collector]) {
    store.write(&creating(fleet, vec![])).await.unwrap();
    for c in fleet {
        label(store, c).await;
    }
}

async fn forgetting_deletes_record_facts_and_history(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let gone = full_record(CollectorId::new_v7(), State::Disconnected);
    let kept = full_record(CollectorId::new_v7(), State::Disconnected);
    let t = |id| (id, transition(None, State::Connected, Reason::Initial, 1));
    store
        .write(&creating(
            &[gone.clone(), kept.clone()],
            vec![t(gone.id), t(kept.id)],
        ))
        .await
        .unwrap();
    label(store.as_ref(), &gone).await;
    // A forget under a superseded claim is refused like any write.
    store
        .write(&batch_of([Change::Forget {
            id: kept.id,
            epoch: 7,
        }]))
        .await
        .unwrap();
    store
        .write(&batch_of([Change::Forget {
            id: gone.id,
            epoch: 1,
        }]))
        .await
        .unwrap();
    assert!(store.load(gone.id).await.unwrap().is_none());
    assert!(store.transitions(gone.id).await.unwrap().is_empty());
    assert!(store.claim(&[gone.id]).await.unwrap().is_empty());
    // It comes back as a new collector: no labels, no facts, no history from before.
    let mut back = Collector::new(gone.id);
    back.state = Some(State::Connected);
    let fenced = store
        .write(&batch_of([record_change(&back, 1, true)]))
        .await
        .unwrap();
    assert!(fenced.is_empty());
    let returned = store.load(gone.id).await.unwrap().unwrap();
    assert!(returned.labels.is_empty());
    assert!(returned.health.is_none(), "no facts from its earlier life");
    assert!(store.transitions(gone.id).await.unwrap().is_empty());
    assert!(store.load(kept.id).await.unwrap().is_some());
    assert_eq!(store.transitions(kept.id).await.unwrap().len(), 1);
}

async fn configuration_versions_count_up_and_never_repeat(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
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
    a_state_only_write_leaves_the_descriptive_part,
    a_large_batch_lands_in_one_write,
    a_batch_with_one_superseded_claim_writes_the_others,
    recovery_disconnects_only_this_nodes_live_collectors,
    forgetting_deletes_record_facts_and_history,
    facts_are_written_part_by_part_and_a_touch_moves_only_last_seen,
    a_batch_written_piece_by_piece_keeps_the_record_and_then_its_health,
    writes_under_a_superseded_claim_are_refused,
    labels_are_replaced_and_patched_at_once,
    quarantined_rows_are_kept_with_their_error,
    configuration_versions_count_up_and_never_repeat,
);

/// What PostgreSQL's statistics say of `collectors`: rows inserted, rows read by scans of the
/// table or its key, and those scans. A backend reports them once it has been idle a moment, so
/// a count is waited for, never slept on.
async fn counted(pool: &sqlx::PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT t.n_tup_ins, \
                COALESCE(t.seq_tup_read, 0) + COALESCE(i.idx_tup_read, 0), \
                COALESCE(t.seq_scan, 0) + COALESCE(t.idx_scan, 0) \
         FROM pg_stat_user_tables t JOIN pg_stat_user_indexes i ON i.relid = t.relid \
         WHERE t.relname = 'collectors' AND i.indexrelname = 'collectors_pkey'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A claim's plan is kept by its connection once it has run a few times. Planned while the table
/// was empty, it read the whole table on every later claim (ADR 0077): claims on a table that
/// has grown since still read only the rows they look up.
#[tokio::test]
async fn claims_planned_on_an_empty_table_still_look_collectors_up_by_key() {
    let db = fresh_database(Backend::Postgres).await;
    let store = open_store(&db.url, "a").await;
    for _ in 0..100 {
        claim_of_a_stranger(store.as_ref()).await;
    }
    let records: Vec<_> = (0..2000)
        .map(|_| full_record(CollectorId::new_v7(), State::Connected))
        .collect();
    store.write(&creating(&records, Vec::new())).await.unwrap();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (read_before, scans_before) = eventually("the creates counted", || async {
        let (inserted, read, scans) = counted(&pool).await;
        (inserted >= 2000).then_some((read, scans))
    })
    .await;
    let claims = 50;
    for _ in 0..claims {
        claim_of_a_stranger(store.as_ref()).await;
    }
    let read = eventually("the claims counted", || async {
        let (_, read, scans) = counted(&pool).await;
        (scans >= scans_before + claims).then_some(read)
    })
    .await;
    assert!(
        read - read_before < 2000,
        "{claims} claims read {} rows of a table of 2,000",
        read - read_before
    );
}

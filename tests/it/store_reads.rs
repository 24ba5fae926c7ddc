//! The store's reads of the fleet: filters by state, labels and text, cursor pages in every sort
//! order, the history and the event stream paged by position, and lists that read only the fact
//! parts asked for. On SQLite and a real PostgreSQL, a fresh database per test.

use std::sync::Arc;

use opampd::collector::{Collector, Reason, State};
use opampd::selector::Selector;
use opampd::store::{After, CollectorQuery, EventFilter, SortKey, Store};

use crate::store::{at, batch_of, fleet, store_fleet, transition, transition_change};
use crate::support::{Backend, fresh_store};

fn query() -> CollectorQuery {
    CollectorQuery {
        states: vec![],
        facets: opampd::collector::facets::Facets::default(),
        custom_capabilities: Vec::new(),
        selector: Selector::default(),
        text: None,
        sort: SortKey::Id,
        descending: false,
        after: None,
        limit: 100,
        parts: None,
    }
}

fn ns(found: &[Collector]) -> Vec<String> {
    found.iter().map(|c| c.labels["n"].clone()).collect()
}

async fn filters_select_by_state_labels_and_text(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let fleet = fleet();
    store_fleet(store.as_ref(), &fleet).await;
    let select = |text: &str| CollectorQuery {
        selector: Selector::parse(text).unwrap(),
        ..query()
    };
    let mut cases: Vec<(CollectorQuery, Vec<&str>)> = vec![
        (
            CollectorQuery {
                states: vec![State::Error, State::Pending],
                facets: opampd::collector::facets::Facets::default(),
                custom_capabilities: Vec::new(),
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
    let counts = store.census().await.unwrap().states;
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
    let (_db, store) = fresh_store(backend).await;
    store_fleet(store.as_ref(), &fleet()).await;
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
    let (_db, store) = fresh_store(backend).await;
    assert_eq!(store.last_seq().await.unwrap(), 0);
    let fleet = fleet();
    let (a, b) = (&fleet[0], &fleet[1]);
    store_fleet(store.as_ref(), &fleet).await;
    let mut transitions = Vec::new();
    for i in 0..6 {
        let to = if i % 2 == 0 {
            State::Error
        } else {
            State::Connected
        };
        let who = if i < 4 { a.id } else { b.id };
        transitions.push(transition_change(
            who,
            1,
            transition(None, to, Reason::Initial, i),
        ));
    }
    store.write(&batch_of(transitions)).await.unwrap();

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

/// A list may read only some fact parts: those asked for come whole, the others not at all, and
/// the record's own columns always.
async fn a_list_reads_only_the_fact_parts_asked_for(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let fleet = fleet();
    store_fleet(store.as_ref(), &fleet).await;
    let read = |parts| {
        let store = Arc::clone(&store);
        async move {
            store
                .list(&CollectorQuery {
                    parts,
                    limit: 1,
                    ..query()
                })
                .await
                .unwrap()
                .remove(0)
        }
    };
    let whole = read(None).await;
    assert!(whole.description.is_some() && whole.health.is_some());
    let some = read(Some(&["health"])).await;
    assert_eq!(some.health, whole.health);
    assert_eq!(some.description, None, "not asked for");
    assert_eq!(some.labels, whole.labels, "columns are always read");
    let none = read(Some(&[])).await;
    assert_eq!((none.health, none.description), (None, None));
    assert_eq!(none.state, whole.state);
}

crate::on_both_stores!(
    filters_select_by_state_labels_and_text,
    cursor_pages_follow_every_sort_order,
    history_and_events_page_by_position,
    a_list_reads_only_the_fact_parts_asked_for,
);

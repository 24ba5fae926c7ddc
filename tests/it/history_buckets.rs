//! A collector's history across the buckets of the history's index (ADR 0081): paged newest
//! first, read whole, forgotten whole, and bounded below by the record's first bucket (ADR 0082).
//! On SQLite and a real PostgreSQL, a fresh database per test.

use opampd::collector::persist::Change;
use opampd::collector::{CollectorId, Reason, State};

use crate::store::{at, batch_of, creating, fleet, store_fleet, transition, transition_change};
use crate::support::{Backend, first_bucket, fresh_database, fresh_store, open_store};

/// A collector's history that spans several buckets of the history's index (4,096 positions
/// each, ADR 0081), with another collector's thousands between its transitions: it is paged newest
/// first, read whole in order, and forgotten whole, and the other's is untouched.
async fn a_history_across_buckets_is_paged_read_and_forgotten_whole(backend: Backend) {
    let (_db, store) = fresh_store(backend).await;
    let fleet = fleet();
    let (a, b) = (&fleet[0], &fleet[1]);
    store_fleet(store.as_ref(), &fleet).await;
    let mut n = 0;
    let mut own = |count: usize| {
        (0..count)
            .map(|_| {
                n += 1;
                transition_change(a.id, 1, transition(None, State::Error, Reason::Initial, n))
            })
            .collect::<Vec<_>>()
    };
    let others = || {
        (0..9_000)
            .map(|_| transition_change(b.id, 1, transition(None, State::Error, Reason::Initial, 0)))
            .collect::<Vec<_>>()
    };
    for changes in [own(3), others(), own(3), others(), own(2)] {
        store.write(&batch_of(changes)).await.unwrap();
    }
    let newest = store.history(a.id, None, 5).await.unwrap();
    assert_eq!(
        newest.iter().map(|e| e.transition.at).collect::<Vec<_>>(),
        [at(8), at(7), at(6), at(5), at(4)]
    );
    let older = store.history(a.id, Some(newest[4].seq), 10).await.unwrap();
    assert_eq!(
        older.iter().map(|e| e.transition.at).collect::<Vec<_>>(),
        [at(3), at(2), at(1)]
    );
    assert!(
        older[0].seq < 4_096 * 4 && newest[0].seq >= 4_096 * 4,
        "spans buckets"
    );
    let whole = store.transitions(a.id).await.unwrap();
    assert_eq!(
        whole.iter().map(|t| t.at).collect::<Vec<_>>(),
        (1..=8).map(at).collect::<Vec<_>>()
    );
    // A cursor is the client's: before everything, or past the numbers, is an empty page.
    for before in [older[2].seq, 0, i64::MIN] {
        assert!(
            store
                .history(a.id, Some(before), 5)
                .await
                .unwrap()
                .is_empty()
        );
    }
    store
        .write(&batch_of([Change::Forget { id: a.id, epoch: 1 }]))
        .await
        .unwrap();
    assert!(store.transitions(a.id).await.unwrap().is_empty());
    assert!(store.history(a.id, None, 5).await.unwrap().is_empty());
    assert_eq!(store.transitions(b.id).await.unwrap().len(), 18_000);
}

/// A record created after a long history keeps the bucket the history had reached (ADR 0082), so
/// its pages stop there. Its first transitions straddle a bucket's end: a bound taken after they
/// were written would hide the first of them.
async fn a_new_records_pages_stop_at_its_first_bucket_and_miss_nothing(backend: Backend) {
    let db = fresh_database(backend).await;
    let store = open_store(&db.url, "a").await;
    let fleet = fleet();
    let (old, late) = (&fleet[0], &fleet[1]);
    store.write(&creating(&fleet[..1], vec![])).await.unwrap();
    let others = |n: i64| {
        batch_of((0..n).map(|_| {
            transition_change(
                old.id,
                1,
                transition(None, State::Error, Reason::Initial, 0),
            )
        }))
    };
    store.write(&others(8_190)).await.unwrap();
    // The history's newest position one before a bucket's last one.
    let to_the_edge = (4_094 - store.last_seq().await.unwrap()).rem_euclid(4_096);
    if to_the_edge > 0 {
        store.write(&others(to_the_edge)).await.unwrap();
    }
    let newest = store.last_seq().await.unwrap();
    assert_eq!(
        newest % 4_096,
        4_094,
        "the history ends where the test needs it"
    );
    let first = |n| (late.id, transition(None, State::Error, Reason::Initial, n));
    store
        .write(&creating(
            std::slice::from_ref(late),
            vec![first(1), first(2)],
        ))
        .await
        .unwrap();
    store
        .write(&batch_of(
            (3..=5).map(|n| transition_change(late.id, 1, first(n).1)),
        ))
        .await
        .unwrap();
    let bucket = |id: CollectorId| first_bucket(backend, &db.url, id);
    assert_eq!(
        bucket(late.id).await,
        Some(newest >> 12),
        "where the history was"
    );
    assert_eq!(bucket(old.id).await, Some(0));
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = store.history(late.id, before, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        pages.extend(page.iter().map(|e| e.transition.at));
    }
    assert_eq!(pages, (1..=5).rev().map(at).collect::<Vec<_>>());
    assert_eq!(store.history(old.id, None, 3).await.unwrap().len(), 3);
}

crate::on_both_stores!(
    a_history_across_buckets_is_paged_read_and_forgotten_whole,
    a_new_records_pages_stop_at_its_first_bucket_and_miss_nothing,
);

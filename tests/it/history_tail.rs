//! Following the history (`store::tail`) as the rollout engine does: only the transitions that
//! move rollouts, read past stretches with none, and passed over unread while nothing stands to
//! be moved (ADR 0083). On SQLite and a real PostgreSQL, a fresh database per test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opampd::collector::{CollectorId, Reason, State, Transition};
use opampd::store::tail::Tail;
use opampd::store::{EventFilter, Store};
use tokio_util::sync::CancellationToken;

use crate::store::{batch_of, fleet, store_fleet, transition, transition_change};
use crate::support::{Backend, Database, fresh_database, open_store};

/// A store holding [`fleet`], and its first collector's id (the database lives while `Database`
/// does).
async fn with_fleet(backend: Backend) -> (Database, Arc<dyn Store>, CollectorId) {
    let db = fresh_database(backend).await;
    let store = open_store(&db.url, "a").await;
    let fleet = fleet();
    store_fleet(store.as_ref(), &fleet).await;
    (db, store, fleet[0].id)
}

/// Appends `transitions` to `id`'s history in one write.
async fn append(store: &dyn Store, id: CollectorId, transitions: Vec<Transition>) {
    let changes = transitions.into_iter().map(|t| transition_change(id, 1, t));
    store.write(&batch_of(changes)).await.unwrap();
}

/// A tail as the rollout engine follows the history, from its current end: the tail, the
/// writer's wake-up it waits on, and its shutdown.
async fn engines_tail(
    store: &Arc<dyn Store>,
) -> (Tail, tokio::sync::watch::Sender<u64>, CancellationToken) {
    let (notify, flushes) = tokio::sync::watch::channel(0u64);
    let shutdown = CancellationToken::new();
    let tail = Tail::new(
        Arc::clone(store),
        EventFilter {
            moves_rollouts: true,
            ..EventFilter::default()
        },
        store.last_seq().await.unwrap(),
        flushes,
        None,
        shutdown.clone(),
    );
    (tail, notify, shutdown)
}

/// Lets `tail` run until its position reaches the history's end, asserting that it hands on
/// nothing meanwhile. Each turn is cut off after 200 ms: the tail waits for the next write once it
/// has moved past, and a turn cut off before it has moved is simply run again.
async fn moves_past_handing_on_nothing(tail: &mut Tail, store: &dyn Store, why: &str) {
    let end = store.last_seq().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tail.position() != end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{why}: the tail is at {} of {end}",
            tail.position()
        );
        let none = tokio::time::timeout(Duration::from_millis(200), tail.next()).await;
        assert!(none.is_err(), "{why}: {none:?}");
    }
}

/// The rollout engine's read of the history: every edge of the diagram written once, and only
/// those that move rollouts come back.
async fn the_engine_reads_only_what_moves_rollouts(backend: Backend) {
    let (_db, store, id) = with_fleet(backend).await;
    let edges = opampd::collector::state::EDGES
        .iter()
        .chain(opampd::collector::state::EXTENSIONS.iter().map(|e| &e.edge));
    let every: Vec<Transition> = edges
        .flat_map(|e| {
            e.reasons
                .iter()
                .map(move |r| transition(e.from, e.to, *r, 1))
        })
        .collect();
    append(store.as_ref(), id, every.clone()).await;
    let filter = EventFilter {
        moves_rollouts: true,
        ..EventFilter::default()
    };
    let read: Vec<Transition> = store
        .events_after(0, &filter, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.transition)
        .collect();
    let expected: Vec<Transition> = every
        .into_iter()
        .filter(Transition::moves_rollouts)
        .collect();
    assert_eq!(read, expected);
    assert!(
        !read.is_empty() && read.len() < 30,
        "{} of the edges",
        read.len()
    );
}

/// A tail with the engine's filter moves past a stretch of history with nothing for it (a burst
/// of health changes) instead of reading it again after every write, and hands on the next
/// transition that moves rollouts.
async fn a_selective_tail_reads_past_what_does_not_match(backend: Backend) {
    let (_db, store, id) = with_fleet(backend).await;
    let (mut tail, notify, shutdown) = engines_tail(&store).await;
    let flips: Vec<Transition> = (0..300)
        .map(|i| {
            if i % 2 == 0 {
                transition(
                    Some(State::Connected),
                    State::Error,
                    Reason::RuntimeError,
                    2,
                )
            } else {
                transition(
                    Some(State::Error),
                    State::Connected,
                    Reason::ErrorResolved,
                    2,
                )
            }
        })
        .collect();
    append(store.as_ref(), id, flips).await;
    moves_past_handing_on_nothing(&mut tail, store.as_ref(), "no flip moves a rollout").await;
    append(store.as_ref(), id, a_return(3)).await;
    notify.send_replace(1);
    let next = tail.next().await.expect("the arrival");
    assert_eq!(next.transition.reason, Reason::ConnectionRestored);
    assert_eq!(next.seq, store.last_seq().await.unwrap());
    shutdown.cancel();
}

/// A disconnection and the return after it, at `seconds`.
fn a_return(seconds: u64) -> Vec<Transition> {
    vec![
        transition(
            Some(State::Connected),
            State::Disconnected,
            Reason::NetworkInterruption,
            seconds,
        ),
        transition(
            Some(State::Disconnected),
            State::Connected,
            Reason::ConnectionRestored,
            seconds,
        ),
    ]
}

/// While nothing stands to be moved, the engine's tail reads no transition: returns stored then
/// are passed over. Once it is wanted again, the next return is handed on, and none from before.
async fn an_unwanted_tail_passes_the_history_over(backend: Backend) {
    let (_db, store, id) = with_fleet(backend).await;
    let (tail, notify, shutdown) = engines_tail(&store).await;
    let wanted = Arc::new(AtomicBool::new(false));
    let mut tail = tail.only_while(Arc::clone(&wanted));
    append(store.as_ref(), id, a_return(2)).await;
    moves_past_handing_on_nothing(&mut tail, store.as_ref(), "nothing is wanted").await;
    wanted.store(true, Ordering::SeqCst);
    append(store.as_ref(), id, a_return(3)).await;
    notify.send_replace(1);
    let next = tail.next().await.expect("the return");
    assert_eq!(next.transition.reason, Reason::ConnectionRestored);
    assert_eq!(
        next.transition.at,
        crate::store::at(3),
        "not the one before"
    );
    assert_eq!(next.seq, store.last_seq().await.unwrap());
    shutdown.cancel();
}

crate::on_both_stores!(
    the_engine_reads_only_what_moves_rollouts,
    a_selective_tail_reads_past_what_does_not_match,
    an_unwanted_tail_passes_the_history_over,
);

//! The integration test binary: every test starts a real server on loopback port 0 and talks to
//! its real listeners, or runs the real `opampd` binary.

// A failed expectation in a test is meant to panic, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Instantiates each `async fn name(Backend)` as a test on SQLite and one on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

mod support;

mod api;
mod binary;
mod budget;
mod certificates;
mod configurations;
mod connection_settings;
mod console;
mod custom_capabilities;
mod custom_messages;
mod delivery;
mod docs;
mod durability;
mod edges;
mod facets;
mod history_buckets;
mod history_tail;
mod http_transport;
mod interop;
mod keys;
mod metrics;
mod migrations;
mod opampctl;
mod persistence;
mod protocol;
mod replicas;
mod rollout_delivery;
mod rollout_progress;
mod rollout_targets;
mod rollouts;
mod states;
mod store;
mod store_reads;
mod summary_history;
mod tls;
mod websocket;
mod websocket_frames;

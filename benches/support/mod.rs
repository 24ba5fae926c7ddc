//! What the benchmarks that start servers share: the server process, its database, the
//! throwaway PostgreSQL of the integration tests, and the REST-visibility probe. Each benchmark
//! uses some of it.

pub mod database;
pub mod load;
#[path = "../../tests/it/support/postgres.rs"]
pub mod postgres;
pub mod server;
pub mod visibility;

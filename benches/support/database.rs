//! The PostgreSQL a benchmark runs on: `DATABASE_URL`'s when it is set, else a throwaway server
//! started from the machine's binaries with fsync on, kept as long as the returned handle.

use super::postgres::{Durability, PgServer};

/// A database named `name` and the server to keep alive while it is used (none for
/// `DATABASE_URL`'s).
pub async fn postgres(name: &str) -> (String, Option<PgServer>) {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return (url, None);
    }
    let mut pg = PgServer::start_with(Durability::On).await;
    let url = pg.create_database(name).await;
    (url, Some(pg))
}

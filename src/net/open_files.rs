//! The open-files limit: every collector holds a socket, so at start-up the soft limit is raised
//! to the hard one, and the server says how many collectors that leaves room for.

use tracing::{info, warn};

use crate::config::Config;

/// Descriptors for what is neither a collector's socket, an API socket nor a database
/// connection: the listeners, the SQLite files and their journals, the runtime's own.
const SPARE: u64 = 32;

/// How many collectors `limit` open files leave room for, once the API's sockets and the
/// database pool have theirs.
pub fn collectors_allowed(limit: u64, config: &Config) -> u64 {
    let others = config.api.max_connections as u64 + u64::from(config.database.max_connections);
    limit.saturating_sub(others + SPARE)
}

/// Raises the soft open-files limit to the hard one and logs how many collectors it allows (if
/// it cannot be raised, the old one stays, and that is logged).
pub fn raise(config: &Config) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let collectors = collectors_allowed(limit, config);
            info!(
                open_files = limit,
                collectors,
                max_connections = config.opamp.max_connections,
                "open-files limit raised to the hard limit"
            );
            if config.opamp.max_connections as u64 > collectors {
                warn!(
                    open_files = limit,
                    collectors,
                    max_connections = config.opamp.max_connections,
                    "opamp.max_connections is more than the open-files limit leaves room for: \
                     accepting beyond it will fail; raise the hard limit (ulimit -Hn, LimitNOFILE)"
                );
            }
        }
        Err(err) => warn!(%err, "cannot raise the open-files limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_what_the_api_and_the_pool_leave() {
        let config = Config::default();
        let others =
            config.api.max_connections as u64 + u64::from(config.database.max_connections) + SPARE;
        assert_eq!(collectors_allowed(20_000, &config), 20_000 - others);
        assert_eq!(collectors_allowed(100, &config), 0);
    }
}

//! Several nodes on one PostgreSQL acting as one server: node liveness and the takeover of dead
//! nodes' collectors, orders routed to the node that can carry them out, the rollout engine's
//! lease, and the notifications that wake all of them. On SQLite only the router's local half runs.

pub mod custom;
pub mod lease;
pub mod liveness;
pub mod notify;
pub mod orders;
pub mod router;

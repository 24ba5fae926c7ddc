//! opampd-load: simulated OpenTelemetry collectors that speak OpAMP (WebSocket or plain HTTP) to
//! any OpAMP server, to measure it. `agent` is what one collector says.

pub mod addrs;
pub mod agent;
pub mod procfs;
pub mod stats;

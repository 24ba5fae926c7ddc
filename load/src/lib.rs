//! opampd-load: simulated OpenTelemetry collectors that speak OpAMP (WebSocket or plain HTTP) to
//! any OpAMP server, to measure it. See `run::run` for the whole run, `agent` for what one
//! collector says, `net` for the transports.

pub mod addrs;
pub mod agent;
pub mod args;
pub mod collector;
pub mod net;
pub mod procfs;
pub mod report;
pub mod run;
pub mod stats;

pub use args::{Args, Mode};
pub use report::Report;
pub use run::{Hooks, LoadError, Stage, run, run_with};

//! opampd: an OpAMP server that tracks the state of every OpenTelemetry collector connected to it.

pub mod api;
pub mod app;
pub mod cluster;
pub mod collector;
pub mod config;
pub mod deadline;
pub mod fleet;
pub mod net;
pub mod opamp;
pub mod proto;
pub mod selector;
pub mod store;
pub mod telemetry;

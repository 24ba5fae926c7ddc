//! Desired state: configurations and their versions, hashes and component needs. (Rollouts and
//! package upgrades, which carry them to the fleet, build on this.)

pub mod configuration;
pub mod engine;
pub mod live;
pub mod offer;
pub mod rollout;
pub mod settings;
pub mod summary;

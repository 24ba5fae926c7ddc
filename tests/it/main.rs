//! The integration test binary: every test starts a real server on loopback port 0 and talks to
//! its real listeners, or runs the real `opampd` binary.

// A failed expectation in a test is meant to panic, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod api;
mod binary;
mod configurations;
mod http_transport;
mod interop;
mod persistence;
mod protocol;
mod rollouts;
mod states;
mod store;
mod websocket;

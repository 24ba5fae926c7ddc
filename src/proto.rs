//! The OpAMP wire types, generated at build time from `proto/opamp/v1/*.proto`.

#![allow(clippy::pedantic, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/opamp.proto.v1.rs"));

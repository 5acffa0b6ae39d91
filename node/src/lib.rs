//! An Open-Registry node: everything behind the gateway, and the `open-registry` binary.

pub mod admin;
pub mod client;
pub mod clock;
pub mod config;
pub mod errors;
pub mod fetch;
pub mod metrics;
pub mod net;
pub mod node;
pub mod peer;
pub mod records;
pub mod registry;
pub mod store;
pub mod tasks;

pub use config::Config;
pub use node::{NodeHandle, start};

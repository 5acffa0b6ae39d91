//! An Open-Registry node: everything behind the gateway, and the `open-registry` binary.
//!
//! - [`config`]: flags, environment and config.toml, validated into one [`Config`].
//! - [`store`]: verified, content-addressed blobs on disk and their sled indexes.
//! - [`upstream`]: the HTTP client for the configured upstream registry (deadlines, retries).
//! - [`fetcher`]: the one place that orders sources (store → peers → upstream) and coalesces
//!   identical fetches ([`flight`]).
//! - [`node`]: wires store, fetcher and gateway together; implements the gateway's
//!   [`Registry`](open_registry_gateway::Registry) trait; returns a handle with `shutdown()`.
//! - [`metrics`]: counters behind `/-/metrics` and the JSON status.
//! - [`cli`]: `init`, `start`, `status`.

pub mod admin;
pub mod cli;
pub mod config;
pub mod evict;
pub mod fetcher;
pub mod flight;
pub mod gossip;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod node;
pub mod p2p;
pub mod pinning;
pub mod pins;
pub mod popularity;
pub mod records;
pub mod store;
pub mod sync;
pub mod units;
pub mod upstream;
pub mod verify;

pub use config::Config;
pub use node::{Node, NodeHandle, start};

//! An Open-Registry node: everything behind the gateway, and the `open-registry` binary.
//!
//! A node mirrors npm packages from an upstream registry and from other nodes, verifies every
//! byte against npm's integrity and its own content id, signs what it mirrors, and serves it
//! through the gateway (`open_registry_gateway`) to npm, pnpm, yarn and bun. The parts:
//!
//! - `node`: [`start`] wires everything below together; [`NodeHandle::shutdown`] stops it in
//!   order.
//! - `registry`: the gateway's view of the node (its `Registry` implementation).
//! - `fetch`: the Fetcher, the only place that orders sources (store → peers → upstream for
//!   tarballs; store → upstream → trusted operators → stale copy for packuments), with its
//!   caches, single-flight, the upstream client and the pinned registry keys.
//! - `peer`: everything the read path asks of other nodes (trust decisions, blob fetching,
//!   announcing, popularity), over [`net`], the libp2p layer.
//! - [`store`]: verified blobs on disk, the sled index, pins and eviction.
//! - `records`: the operator's identity ([`Identity`]) and the signed records it keeps.
//! - `search`: the node's own package search (BM25 over the packuments it stores), for
//!   `/-/v1/search` when the upstream has none.
//! - `tasks`: background work (sync with the upstream, gossip, store maintenance).
//! - `public`: the network's operation in public: signed node reports and operator
//!   statements, kept from every operator and added up into the network view.
//! - `withhold`: the versions held back (the release cooldown, advisories in force), withheld
//!   from the packuments served and answered 451.
//! - `advisory`: signed advisories (takedowns) from every operator, and the quorum of trusted
//!   operators that puts them in force.
//! - `history`: hourly buckets of the node's counters and of the network totals, kept 90 days
//!   in the store.
//! - `admin`: the operator routes (dashboard, network view, pins, peers, popularity, history).
//! - [`client`]: the command line and what it does against a running node (and locally: the
//!   operator's `statement.toml`, `open-registry statement`).
//! - [`config`]: flags, environment and `config.toml`, validated into one [`Config`].
//! - [`clock`]: the wall clock the node's calendar decisions read ([`clock::Clock`]).
//! - `fdlimit`: the file descriptor limit, raised at start, and the connection cap under it.
//! - [`malloc`]: the C allocator's tuning `start` re-executes itself with.
//! - `private_file`: the mode check for secrets in the data dir (`operator.key`, `admin.token`).
//! - [`metrics`]: the counters behind `/-/metrics` and the status; `errors`: error chains.
//!
//! Public here is what other crates use: the binary (`client::cli`), the end-to-end tests
//! (starting nodes, bare peers over [`net`], the store for the crash tests, a manual clock).

pub mod client;
pub mod clock;
pub mod config;
pub mod malloc;
pub mod metrics;
pub mod net;
pub mod store;

mod admin;
mod advisory;
mod errors;
mod fdlimit;
mod fetch;
mod history;
mod node;
mod peer;
mod private_file;
mod public;
mod records;
mod registry;
mod search;
mod tasks;
mod withhold;

pub use config::Config;
pub use node::{NodeHandle, P2pListen, RUN_FILE, start};
pub use peer::PointerValidator;
pub use records::{Identity, KEY_FILE};

//! Open-Registry's gateway: the npm registry HTTP API, served from any [`Registry`].
//!
//! The gateway validates names and paths, negotiates full or abbreviated documents, derives and
//! caches the encoded forms it serves, and maps errors to what npm prints. Where bytes come from
//! is the node's business, never the gateway's.
//!
//! - [`registry`]: the trait a node implements, and the types it returns.
//! - [`budget`]: [`MemoryBudget`], the bytes of packuments held at once, and the [`Lease`] a
//!   packument carries while it is held.
//! - [`mod@router`]: [`router()`] and its [`Config`]; dispatches every request by method and path.
//! - `path`: raw request paths → routes, with npm's name rules and traversal checks.
//! - `negotiate`: Accept, Accept-Encoding, If-None-Match and Host → what to send.
//! - `shared`: what every handler reads (the registry, the render cache, the counters).
//! - `documents`: packuments, versions and dist-tags (the hot path), from the render cache.
//! - `render` and `cache`: deriving a document's final bytes (JSON, gzip, ETag) once per
//!   revision, straight into the compressor, and keeping them in a byte-bounded LRU that renders each key once.
//! - `tarball`: tarballs, streamed and never re-compressed.
//! - `meta`: ping, keys, status, metrics, and audits passed to the upstream.
//! - [`search`]: `/-/v1/search`, from the upstream or the registry's own packages.
//! - [`mod@serve`]: [`serve()`], the HTTP/1.1 server with its [`Limits`] (timeouts and
//!   connection caps against slow and hostile clients), which writes the access log.
//! - [`access`]: the access log's line and the [`access::Source`] handlers mark answers with.
//! - [`error`]: [`ApiError`], the one place failures become status codes and JSON.
//! - `metrics`: the gateway's own counters ([`Traffic`]), as Prometheus text and as the
//!   [`TrafficSnapshot`] a node's reports are made of.
//! - [`memory`]: [`MemoryRegistry`], an in-memory [`Registry`] for tests.

pub mod access;
pub mod budget;
pub mod error;
pub mod memory;
pub mod registry;
pub mod router;
pub mod search;
pub mod serve;

mod cache;
mod documents;
mod meta;
mod metrics;
mod negotiate;
mod path;
mod render;
mod shared;
mod tarball;

#[cfg(test)]
mod tests;

pub use budget::{Lease, MemoryBudget};
pub use error::ApiError;
pub use memory::MemoryRegistry;
pub use meta::MAX_FORWARD_BODY;
pub use metrics::{Traffic, TrafficSnapshot};
pub use negotiate::HostError;
pub use path::PathError;
pub use registry::{
    Blob, Body, Error, Forward, ForwardMethod, Forwarded, Packument, Registry, Withheld,
};
pub use router::{Config, DEFAULT_RENDER_CACHE_BYTES, router};
pub use search::{Person, SearchHit, SearchPackage, SearchQuery, SearchResults};
pub use serve::{Limits, serve};

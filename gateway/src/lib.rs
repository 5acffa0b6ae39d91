//! Open-Registry's gateway: the npm registry HTTP API, served from any [`Registry`].
//!
//! - [`registry`]: the trait a node implements, and the types it returns.
//!
//! The gateway validates names and paths, negotiates full or abbreviated documents, derives and
//! caches the encoded forms it serves, and maps errors to what npm prints. Where bytes come from
//! is the node's business, never the gateway's.

pub mod registry;

pub use registry::{Blob, Body, Error, Forward, ForwardMethod, Forwarded, Packument, Registry};

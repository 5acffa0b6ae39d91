//! The JSON a node reports about itself at `GET /-/open-registry/status`, read by
//! `open-registry status` and by dashboards.
//!
//! Fields are only ever added; readers ignore what they do not know, so an old CLI can read a
//! newer node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's self-report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The node software's version.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// The gateway's base URL.
    pub gateway: String,
    /// The operator's id (PeerId), which signs this node's records.
    pub peer_id: String,
    /// The configured upstream registry, if any.
    pub upstream: Option<String>,
    /// What the store holds.
    pub store: StoreStats,
    /// Monotonic counters since start (requests, cache hits, upstream fetches, errors...).
    pub counters: BTreeMap<String, u64>,
}

/// Sizes of the local store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreStats {
    /// Blobs held (tarballs and packument revisions).
    pub blobs: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Packages whose packument is cached.
    pub packuments: u64,
    /// Tarballs indexed by file name.
    pub tarballs: u64,
}

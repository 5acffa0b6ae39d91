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
    /// How far behind the upstream the node is.
    pub sync: Option<SyncStatus>,
    /// Whether the upstream answers (its circuit breaker), if there is one.
    pub upstream_health: Option<UpstreamHealth>,
    /// Packuments served without a signed record because one would not fit the record
    /// encoding, most recent first (at most [`UNSIGNED_KEPT`]), each with the reason.
    pub unsigned: Vec<Unsigned>,
    /// The release cooldown, when one is configured (`min_release_age`).
    pub cooldown: Option<CooldownStatus>,
}

/// How many held versions a status lists.
pub const COOLDOWN_KEPT: usize = 32;

/// The release cooldown: versions too recently published to be served yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CooldownStatus {
    /// `min_release_age`, in seconds.
    pub min_release_age_secs: u64,
    /// Versions held back now, the most recently published first (at most [`COOLDOWN_KEPT`]).
    pub held: Vec<CooldownHeld>,
    /// Versions whose age was counted from the first time this node saw them, because the
    /// packument gave no publish time for them (counted per packument revision read, since
    /// start).
    pub first_seen_used: u64,
}

/// A version held back by the release cooldown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CooldownHeld {
    /// The package.
    pub name: String,
    /// The version.
    pub version: String,
    /// When it is released (unix ms).
    pub until_ms: u64,
    /// Its age counts from when this node first saw it (the packument has no `time` for it).
    pub from_first_seen: bool,
}

/// How many unsigned packuments a status lists.
pub const UNSIGNED_KEPT: usize = 16;

/// A packument this node serves but does not sign, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Unsigned {
    /// The package.
    pub name: String,
    /// Why no record was signed (the record encoding's limit it passes).
    pub reason: String,
    /// When (unix ms).
    pub at_ms: u64,
}

/// The upstream's circuit breaker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamHealth {
    /// `closed` (requests go to the upstream), `open` (they fail at once) or `probing` (one
    /// request is testing whether it answers again).
    pub state: String,
    /// Outages (failures, or requests not answered in time) since the last answer.
    pub consecutive_failures: u64,
    /// When the circuit opened (unix ms), while it is open.
    pub open_since_ms: Option<u64>,
    /// When the next probe may go (unix ms), while it is open.
    pub next_probe_ms: Option<u64>,
}

/// Lag behind the upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncStatus {
    /// The changes feed followed, if any.
    pub changes_feed: Option<String>,
    /// The newest sequence the feed reported.
    pub upstream_seq: Option<u64>,
    /// The last sequence this node processed.
    pub processed_seq: Option<u64>,
    /// `upstream_seq - processed_seq`.
    pub lag: Option<u64>,
    /// Seconds since the least recently confirmed pinned packument was confirmed.
    pub oldest_pinned_age_secs: Option<u64>,
    /// Seconds behind the upstream: with a changes feed, 0 while every change is processed,
    /// else the time since the node last was; without one, `oldest_pinned_age_secs`.
    pub lag_secs: Option<u64>,
    /// Packuments refreshed by the sync tasks since start.
    pub refreshed: u64,
    /// Sync failures since start.
    pub errors: u64,
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

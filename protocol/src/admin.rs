//! The JSON of a node's operator routes (`/-/open-registry/pins`, `peers`, `popular`, and the
//! answers of `admin/pin` and `admin/unpin`), shared by the node that writes it and the CLI and
//! dashboard that read it.
//!
//! Like [`crate::status`], fields are only ever added, and readers ignore what they do not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /-/open-registry/pins`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PinList {
    pub pins: Vec<Pinned>,
}

/// One pinned package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pinned {
    /// The package name.
    pub name: String,
    /// Pinned version → its tarball file name.
    pub versions: BTreeMap<String, String>,
    /// Bytes of the pinned tarballs in the store.
    pub size: u64,
    /// When the package was first pinned (unix ms).
    pub since: u64,
    /// How many nodes announce the package on the network (one provider record per package),
    /// this node included; `None` without the network or with no pinned tarball stored.
    pub providers: Option<u64>,
}

/// `POST /-/open-registry/admin/pin` answered: the version is stored and pinned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PinAdded {
    pub name: String,
    pub version: String,
    /// Its tarball file name.
    pub file: String,
    /// The tarball's content id.
    pub id: String,
    /// The tarball's size in bytes.
    pub size: u64,
}

/// `POST /-/open-registry/admin/unpin` answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Unpinned {
    pub name: String,
    /// Whether anything was pinned.
    pub removed: bool,
}

/// `GET /-/open-registry/peers`: the node's place in the peer-to-peer network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Peers {
    /// This node's peer id (its operator id).
    pub peer_id: String,
    /// Addresses it listens on.
    pub listen: Vec<String>,
    /// Addresses it was told or learned that others reach it at.
    pub external: Vec<String>,
    /// Whether Kademlia runs in server mode (answering queries).
    pub kad_server: bool,
    /// What AutoNAT found: `public` (an external address is confirmed), `private` (not
    /// reachable from outside: relays are used), `unknown` (still probing) or `not probed`
    /// (loopback, or `--kad-server`).
    pub reachability: String,
    /// The relays holding a reservation of this node's (peer ids), while it is private.
    pub relays: Vec<String>,
    /// Whether this node offers a circuit relay to private peers now.
    pub relay_offered: bool,
    /// Peers in the routing table.
    pub routing_table_size: u64,
    /// Peers connected now.
    pub connected: Vec<Connected>,
    /// Keys this node announces as a provider: one per package it holds blobs of.
    pub provided: u64,
    /// Values this node publishes in the DHT and republishes while they live (its signed
    /// pointers and advisories), on the same budget as the provider keys.
    #[serde(default)]
    pub published: u64,
    /// The DHT messages per second its announcements may send (the announcer's budget).
    pub announce_rate: u64,
    /// The messages one announcement costs, estimated from the last ones (lookup requests plus
    /// ADD_PROVIDER messages), rounded.
    pub announce_cost: u64,
    /// How long one round of re-announcing every provided key and published value takes at
    /// that budget, seconds.
    pub announce_cycle_secs: u64,
    /// DHT values stored here for others.
    pub records_stored: u64,
    /// Provider keys stored here for others.
    pub provider_keys_stored: u64,
    /// The operators whose records this node trusts.
    pub trusted: Vec<String>,
    /// How many of them must agree.
    pub trust_threshold: u64,
}

/// A connected peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Connected {
    pub peer_id: String,
    pub addrs: Vec<String>,
    /// Whether every connection to the peer goes through a relay (`/p2p-circuit`).
    pub relayed: bool,
    /// Whether DCUtR upgraded a relayed connection with the peer to a direct one (`true`) or
    /// could not (`false`); absent when it was not tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dcutr_upgraded: Option<bool>,
    /// The smoothed round-trip time, in microseconds, once a ping was answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
}

/// `GET /-/open-registry/popular`: the most requested packages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Popular {
    /// How many trusted operators' summaries are counted besides this node's own counts.
    pub operators: u64,
    /// The packages, most requested first.
    pub packages: Vec<PopularPackage>,
}

/// One popular package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PopularPackage {
    pub name: String,
    pub count: u64,
}

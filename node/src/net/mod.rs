//! Peer-to-peer networking: how nodes find each other, announce blobs, and move them.
//!
//! libp2p over TCP (noise, yamux) and QUIC. Kademlia under our own protocol id finds who has a
//! blob (one provider record per blob CID) and stores small signed pointers by key; identify
//! feeds peers' listen addresses into the routing table; a blob protocol of our own streams a
//! blob of any size with a size cap and deadlines. Exactly one task owns the Swarm
//! ([`event_loop`]); everything else holds a cloneable [`Client`].
//!
//! What `net` does not do: verify bytes (the Fetcher checks every blob against its CID),
//! decide whom to trust (the [`RecordValidator`] hook does), or choose among providers
//! (the node's peer layer does, nearest first by the [`Rtts`] measured here). It does bound everything it touches (R7, R15 and R16 in
//! docs/security.md).
//!
//! - [`config`]: listen and bootstrap addresses, Kademlia mode, [`Limits`].
//! - [`swarm`]: [`spawn`] builds the Swarm, binds, and starts the tasks.
//! - [`client`]: [`Client`], the API the node uses.
//! - [`event_loop`]: the task that owns the Swarm.
//! - [`behaviour`]: the protocols and their configuration (ids and intervals as consts).
//! - [`dht_store`]: the bounded Kademlia store and our announcement schedule.
//! - [`blob`]: the blob protocol's wire format; [`serve`] answers it; [`transfer`] reads it.
//! - [`record_ids`]: which signed records a peer holds for a package (asked of LAN peers).
//! - [`gossip`]: gossipsub topics for signed announcements.
//! - [`hooks`]: [`BlobSource`] and [`RecordValidator`], what the swarm asks of the node.
//! - [`reach`]: who can reach the listen addresses, in words (for `start`).
//! - [`rtt`]: [`Rtts`], the smoothed round-trip time of each connected peer.
//! - [`error`]: the one error type, [`NetError`].

pub mod behaviour;
pub mod blob;
pub mod client;
pub mod config;
pub mod dht_store;
pub mod error;
pub mod event_loop;
pub mod gossip;
pub mod hooks;
pub mod pacer;
pub mod reach;
pub mod record_ids;
pub mod rtt;
pub mod serve;
pub mod swarm;
pub mod transfer;

#[cfg(test)]
mod tests;

pub use behaviour::{IDENTIFY_VERSION, KAD_PROTOCOL, QUERY_TIMEOUT, RECORD_TTL};
pub use blob::{BLOB_PROTOCOL, CHUNK, Status};
pub use client::{COMMAND_TIMEOUT, Client, FoundRecord, OwnValue, PeersInfo};
pub use config::{Config, DEFAULT_LISTEN, DEFAULT_PORT, Limits, is_loopback, split_peer};
pub use dht_store::{ANNOUNCE_RETRY, PROVIDER_RECORD_TTL, REANNOUNCE_INTERVAL};
pub use error::NetError;
pub use event_loop::MAX_CONCURRENT_ANNOUNCES;
pub use gossip::{
    ADVISORIES_TOPIC, Message as GossipMessage, POPULARITY_TOPIC, RECORDS_TOPIC, REPORTS_TOPIC,
    STATEMENTS_TOPIC,
};
pub use hooks::{Blob, BlobSource, NoBlobs, RecordValidator, RejectAll};
pub use libp2p::{Multiaddr, PeerId};
pub use pacer::PacerStatus;
pub use reach::{Reach, kad_mode, reachability};
pub use record_ids::RECORD_IDS_PROTOCOL;
pub use rtt::Rtts;
pub use swarm::spawn;
pub use transfer::Transfer;

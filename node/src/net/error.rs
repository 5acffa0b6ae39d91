//! Why a network operation failed.
//!
//! One enum for the whole module, so the Fetcher can tell "this peer is bad or slow, try the
//! next" ([`NetError::is_peer_fault`]) from "the network layer itself is down or full".

use std::time::Duration;

use libp2p::PeerId;

/// A failed network operation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is unusable.
    #[error("network config: {0}")]
    Config(String),
    /// A listen, bootstrap or dial address is malformed.
    #[error("bad address {addr}: {reason}")]
    BadAddress { addr: String, reason: String },
    /// Building the transport or a behaviour failed.
    #[error("starting the swarm: {0}")]
    Setup(String),
    /// Binding a listen address failed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// The network task has stopped (shutdown, or it ended with an error).
    #[error("the network task has stopped")]
    Stopped,
    /// A bounded queue or pool is full.
    #[error("the network is busy: {0}")]
    Busy(&'static str),
    /// The caller's deadline passed.
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// Connecting to a peer failed.
    #[error("cannot connect to {peer}: {reason}")]
    Connect { peer: PeerId, reason: String },
    /// Dialing an address failed.
    #[error("cannot dial {addr}: {reason}")]
    Dial { addr: String, reason: String },
    /// Opening a blob stream failed (the peer may not speak the protocol).
    #[error("cannot open a blob stream to {peer}: {reason}")]
    Open { peer: PeerId, reason: String },
    /// The peer does not have the blob.
    #[error("{peer} does not have the blob")]
    NotFound { peer: PeerId },
    /// The peer refused or failed the request.
    #[error("{peer} refused the request: {reason}")]
    Refused { peer: PeerId, reason: &'static str },
    /// The blob is larger than the caller accepts.
    #[error("{peer} offers {len} bytes, over the cap of {max}")]
    TooLarge { peer: PeerId, len: u64, max: u64 },
    /// No byte arrived for the stall deadline.
    #[error("{peer} sent nothing for {after:?} ({got} bytes received)")]
    Stalled {
        peer: PeerId,
        after: Duration,
        got: u64,
    },
    /// The stream ended before the announced length.
    #[error("{peer} closed the transfer after {got} of {expected} bytes")]
    Truncated {
        peer: PeerId,
        got: u64,
        expected: u64,
    },
    /// The peer broke the wire format.
    #[error("{peer} broke the blob protocol: {reason}")]
    Protocol { peer: PeerId, reason: String },
    /// Reading or writing the stream failed.
    #[error("i/o with {peer}: {reason}")]
    Io { peer: PeerId, reason: String },
    /// The record validator refused a value we were asked to publish.
    #[error("the record validator rejected the value")]
    InvalidRecord,
    /// The Kademlia store refused a record (full, or value too large).
    #[error("DHT store: {0}")]
    Store(String),
    /// A DHT query could not start.
    #[error("DHT: {0}")]
    Dht(String),
    /// A gossip message could not be published (too large, or no subscribed peer yet).
    #[error("gossip: {0}")]
    Gossip(String),
}

impl NetError {
    /// Whether the failure is the remote peer's doing (or its path's): the caller should try
    /// another provider. Otherwise the local network layer is the problem.
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            NetError::Connect { .. }
                | NetError::Open { .. }
                | NetError::NotFound { .. }
                | NetError::Refused { .. }
                | NetError::TooLarge { .. }
                | NetError::Stalled { .. }
                | NetError::Truncated { .. }
                | NetError::Protocol { .. }
                | NetError::Io { .. }
                | NetError::Timeout { .. }
        )
    }
}

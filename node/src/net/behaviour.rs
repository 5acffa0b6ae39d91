//! The swarm's protocols and how each is configured.
//!
//! - Kademlia under our own protocol id [`KAD_PROTOCOL`] (never `/ipfs/kad/1.0.0`: we do not
//!   join or serve the IPFS DHT), with `DhtStore` and `StoreInserts::FilterBoth`, so nothing
//!   a peer sends is stored before the swarm task validated it.
//! - identify, whose `protocol_version` is [`IDENTIFY_VERSION`]; only peers announcing that
//!   version and our Kademlia protocol enter the routing table. (libp2p's identify always runs
//!   on the stream protocol `/ipfs/id/1.0.0`; only the version string inside is ours.)
//! - `libp2p-stream` for the blob protocol (see [`blob`](super::blob)).
//! - gossipsub for signed announcements (see [`gossip`](super::gossip)).
//! - ping on every connection, whose round-trip times feed [`Rtts`](super::rtt::Rtts): the
//!   nearest provider is asked first.
//! - mDNS (when [`Config::mdns_enabled`]): peers on the same LAN find each other without a
//!   bootstrap address; they are dialed and asked for blobs before anyone else.
//! - connection limits (R16).
//!
//! The record and provider intervals are documented consts, so docs/protocol.md can cite them.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::{self, Mode, StoreInserts};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, connection_limits, gossipsub, identify, mdns, ping};

use super::Config;
use super::dht_store::{DhtStore, PROVIDER_RECORD_TTL};

/// Our Kademlia protocol id.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/open-registry/kad/1.0.0");

/// The `protocol_version` our identify messages carry.
pub const IDENTIFY_VERSION: &str = "/open-registry/id/1.0.0";

/// How long a value record lives on the peers that store it.
pub const RECORD_TTL: Duration = Duration::from_secs(48 * 3600);

/// How often a publisher re-puts its own values (before [`RECORD_TTL`] runs out).
pub const RECORD_REPUBLISH_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// How often a storing peer replicates the values it holds to the current closest peers.
pub const RECORD_REPLICATION_INTERVAL: Duration = Duration::from_secs(3600);

/// Kademlia's own bound on one query (ours are usually shorter: the caller's deadline).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Room in a Kademlia message besides the value: closer peers with their addresses.
const KAD_PACKET_OVERHEAD: usize = 16 * 1024;

/// How often each connection is pinged (the first ping goes out when it opens).
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Listen addresses taken from one identify message.
pub(crate) const MAX_IDENTIFY_ADDRS: usize = 8;

/// All the swarm's protocols.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) kad: kad::Behaviour<DhtStore>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) stream: libp2p_stream::Behaviour,
    pub(crate) gossip: gossipsub::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Behaviour {
    pub(crate) fn new(key: &Keypair, config: &Config) -> Behaviour {
        let local = key.public().to_peer_id();
        let l = &config.limits;

        let mut kc = kad::Config::new(KAD_PROTOCOL);
        kc.set_query_timeout(QUERY_TIMEOUT)
            .set_record_filtering(StoreInserts::FilterBoth)
            .set_record_ttl(Some(RECORD_TTL))
            .set_publication_interval(Some(RECORD_REPUBLISH_INTERVAL))
            .set_replication_interval(Some(RECORD_REPLICATION_INTERVAL))
            .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL))
            // We announce on our own schedule, a few ids at a time (see dht_store).
            .set_provider_publication_interval(None)
            .set_max_packet_size(l.max_record_bytes + KAD_PACKET_OVERHEAD);
        let mut kad = kad::Behaviour::with_config(local, DhtStore::new(local, l.clone()), kc);
        kad.set_mode(match config.kad_server_mode() {
            Some(true) => Some(Mode::Server),
            Some(false) => Some(Mode::Client),
            None => None,
        });

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.to_owned(), key.public())
                .with_agent_version(format!("open-registry/{}", env!("CARGO_PKG_VERSION"))),
        );

        // A failure to start mDNS (no multicast here) leaves the node without it, said once.
        let mdns = config
            .mdns_enabled()
            .then(|| mdns::tokio::Behaviour::new(mdns::Config::default(), local))
            .and_then(|r| {
                r.map_err(|e| tracing::warn!(error = %e, "mDNS unavailable; LAN peers are found only through the DHT"))
                    .ok()
            });

        let pending = Some(l.max_pending_connections);
        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(l.max_connections))
                .with_max_established_per_peer(Some(l.max_connections_per_peer))
                .with_max_pending_incoming(pending)
                .with_max_pending_outgoing(pending),
        );

        Behaviour {
            limits,
            kad,
            identify,
            stream: libp2p_stream::Behaviour::new(),
            gossip: super::gossip::behaviour(key),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL)),
            mdns: Toggle::from(mdns),
        }
    }

    /// Peers in the Kademlia routing table.
    pub(crate) fn routing_table_size(&mut self) -> usize {
        self.kad.kbuckets().map(|b| b.num_entries()).sum()
    }
}

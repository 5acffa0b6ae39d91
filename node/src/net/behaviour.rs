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
//! - AutoNAT v2, client and server (when [`Config::autonat_enabled`]): peers we dialed try to
//!   dial our candidate addresses back; a success confirms the address (see
//!   [`reach`](super::reach)), and we do the same for peers that dialed us.
//! - circuit relay v2: the client (always: it is also the transport that dials
//!   `/p2p-circuit` addresses) and the relay server (when [`Config::relay_enabled`], with the
//!   limits below, advertised only while we are public).
//! - DCUtR: a relayed connection is upgraded to a direct one where the NATs allow.
//! - connection limits (R16).
//!
//! The record and provider intervals are documented consts, so docs/protocol.md can cite them.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::kad::{self, Mode, StoreInserts};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, autonat, connection_limits, dcutr, gossipsub, identify, mdns, ping, relay,
};

use super::Config;
use super::dht_store::{DhtStore, PROVIDER_RECORD_TTL};

/// Our Kademlia protocol id.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/open-registry/kad/1.0.0");

/// The `protocol_version` our identify messages carry.
pub const IDENTIFY_VERSION: &str = "/open-registry/id/1.0.0";

/// How long a value lives on the peers that store it, at most: as long as a provider record
/// (a publisher asks for less when the value ends sooner, as a pointer does when its record
/// expires). The publisher re-puts it once a cycle while it lives, on the announcement
/// schedule (see `dht_store`); Kademlia's own republish and replication jobs are off, as they
/// would copy every value at once at no bounded rate.
pub const RECORD_TTL: Duration = PROVIDER_RECORD_TTL;

/// Kademlia's own bound on one query (ours are usually shorter: the caller's deadline).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Room in a Kademlia message besides the value: closer peers with their addresses.
const KAD_PACKET_OVERHEAD: usize = 16 * 1024;

/// How often each connection is pinged (the first ping goes out when it opens).
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

/// Listen addresses taken from one identify message.
pub(crate) const MAX_IDENTIFY_ADDRS: usize = 8;

/// Relay reservations this node holds for private peers at once.
pub const RELAY_MAX_RESERVATIONS: usize = 128;

/// Relay reservations one peer holds here at once.
pub const RELAY_MAX_RESERVATIONS_PER_PEER: usize = 2;

/// How long a reservation lasts before the private peer must renew it (it does, on its own).
pub const RELAY_RESERVATION_DURATION: Duration = Duration::from_secs(3600);

/// Circuits relayed at once.
pub const RELAY_MAX_CIRCUITS: usize = 32;

/// Circuits relayed at once to or from one peer.
pub const RELAY_MAX_CIRCUITS_PER_PEER: usize = 4;

/// How long one relayed circuit may last: as long as serving one blob may
/// ([`Limits::request_timeout`](super::Limits::request_timeout)'s default). libp2p's default,
/// two minutes, is too short for a large tarball over a slow link.
pub const RELAY_MAX_CIRCUIT_DURATION: Duration = Duration::from_secs(600);

/// Bytes one relayed circuit may carry, both directions: the largest blob
/// ([`Limits::max_blob_size`](super::Limits::max_blob_size)'s default, 1 GiB). libp2p's
/// default, 128 KiB, would cut most tarballs off.
pub const RELAY_MAX_CIRCUIT_BYTES: u64 = 1 << 30;

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
    pub(crate) autonat_client: Toggle<autonat::v2::client::Behaviour>,
    pub(crate) autonat_server: Toggle<autonat::v2::server::Behaviour>,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) relay: Toggle<relay::Behaviour>,
    pub(crate) dcutr: dcutr::Behaviour,
}

impl Behaviour {
    pub(crate) fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &Config,
    ) -> Behaviour {
        let local = key.public().to_peer_id();
        let l = &config.limits;

        let mut kc = kad::Config::new(KAD_PROTOCOL);
        kc.set_query_timeout(QUERY_TIMEOUT)
            .set_record_filtering(StoreInserts::FilterBoth)
            .set_record_ttl(Some(RECORD_TTL))
            .set_publication_interval(None)
            .set_replication_interval(None)
            .set_provider_record_ttl(Some(PROVIDER_RECORD_TTL))
            // We announce on our own schedule, a few ids at a time (see dht_store).
            .set_provider_publication_interval(None)
            .set_max_packet_size(l.max_record_bytes + KAD_PACKET_OVERHEAD);
        let mut kad = kad::Behaviour::with_config(local, DhtStore::new(local, l.clone()), kc);
        // In automatic mode the swarm task sets the mode from AutoNAT's verdict (see
        // event_loop/reach.rs): libp2p's own automatic mode would also count a relayed address
        // as reachable and serve the DHT from behind a NAT.
        kad.set_mode(match config.kad_server_mode() {
            Some(true) => Some(Mode::Server),
            Some(false) => Some(Mode::Client),
            None if config.reach_managed() => Some(Mode::Client),
            None => None,
        });

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_VERSION.to_owned(), key.public())
                .with_agent_version(format!("open-registry/{}", env!("CARGO_PKG_VERSION")))
                // A new relayed address (or a relay we now offer) reaches the peers at once.
                .with_push_listen_addr_updates(true),
        );

        let relay = config.relay_enabled().then(|| {
            let rc = relay::Config {
                max_reservations: RELAY_MAX_RESERVATIONS,
                max_reservations_per_peer: RELAY_MAX_RESERVATIONS_PER_PEER,
                reservation_duration: RELAY_RESERVATION_DURATION,
                max_circuits: RELAY_MAX_CIRCUITS,
                max_circuits_per_peer: RELAY_MAX_CIRCUITS_PER_PEER,
                max_circuit_duration: RELAY_MAX_CIRCUIT_DURATION,
                max_circuit_bytes: RELAY_MAX_CIRCUIT_BYTES,
                ..relay::Config::default()
            };
            // libp2p's default rate limits (reservations and circuits per peer and per IP) stay.
            relay::Behaviour::new(local, rc)
        });
        let autonat = config.autonat_enabled();

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
            autonat_client: Toggle::from(autonat.then(autonat::v2::client::Behaviour::default)),
            autonat_server: Toggle::from(autonat.then(autonat::v2::server::Behaviour::default)),
            relay_client,
            relay: Toggle::from(relay),
            dcutr: dcutr::Behaviour::new(local),
        }
    }

    /// Peers in the Kademlia routing table.
    pub(crate) fn routing_table_size(&mut self) -> usize {
        self.kad.kbuckets().map(|b| b.num_entries()).sum()
    }
}

//! What the swarm is told at start: where to listen, whom to bootstrap from, and its limits.
//!
//! Plain data, validated once by [`Config::check`] (called by [`spawn`](super::spawn)); the
//! node's own config layer turns flags and TOML into this. Every limit has a default that is
//! safe for a community node on a small VPS; tests shrink the deadlines.
//!
//! Invariant: after `check`, every limit is non-zero and there is at least one listen address.

use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::NetError;
use crate::metrics::Metrics;

/// The port of the default listen addresses (TCP and UDP/QUIC).
pub const DEFAULT_PORT: u16 = 7374;

/// The default listen addresses: all interfaces, TCP and QUIC, on [`DEFAULT_PORT`].
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/7374", "/ip4/0.0.0.0/udp/7374/quic-v1"];

/// The swarm's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on (`/ip4/127.0.0.1/tcp/0` picks a free port).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start, with or without a `/p2p/<id>` suffix.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses the operator declares reachable from outside (a public IP or DNS name). They
    /// are confirmed as external addresses, so they go into our provider records and Kademlia
    /// in automatic mode switches to server mode.
    pub external: Vec<Multiaddr>,
    /// Kademlia mode: `Some(true)` server, `Some(false)` client, `None` server when any listen or
    /// bootstrap address is loopback, otherwise libp2p's automatic mode (server once an external
    /// address is confirmed). Automatic mode alone never becomes server on loopback, and then
    /// answers no queries at all.
    pub kad_server: Option<bool>,
    /// Find peers on the local network with mDNS: `Some` forces it on or off; `None` turns it
    /// on when a listen address is private, link-local or every interface (a node on a LAN),
    /// and off when they are all loopback or public ([`Config::mdns_enabled`]).
    pub mdns: Option<bool>,
    /// Offer a circuit relay v2 to private peers: `Some` forces it on or off; `None` turns it
    /// on unless every listen address is loopback ([`Config::relay_enabled`]). Either way the
    /// relay is advertised only while the node is public (see [`reach`](super::reach)).
    pub relay: Option<bool>,
    /// Resource limits and deadlines.
    pub limits: Limits,
    /// Where the swarm counts its DHT lookups (`dht_queries`, `dht_requests`, ...): the node's
    /// counters. `None` counts nothing.
    pub metrics: Option<Arc<Metrics>>,
}

/// Caps and deadlines (R7, R15 and R16 in docs/security.md).
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest blob we fetch or serve, in bytes; a caller's `max_len` is clamped to it.
    pub max_blob_size: u64,
    /// Upper bound on serving one blob, start to end; also the default deadline for queries.
    pub request_timeout: Duration,
    /// A transfer that moves no byte for this long is aborted, in both directions.
    pub stall_timeout: Duration,
    /// Blobs served at once; further inbound blob streams are reset.
    pub max_inbound_transfers: usize,
    /// Blobs fetched at once; further `fetch` calls wait (within their deadline).
    pub max_outbound_transfers: usize,
    /// Established connections in total.
    pub max_connections: u32,
    /// Established connections to or from one peer.
    pub max_connections_per_peer: u32,
    /// Connections being set up (incoming and outgoing each).
    pub max_pending_connections: u32,
    /// Kademlia value records stored for the network.
    pub max_records: usize,
    /// The largest Kademlia value, in bytes (records are small signed pointers).
    pub max_record_bytes: usize,
    /// Distinct blob ids for which we store other peers' provider records.
    pub max_provider_keys: usize,
    /// Provider records kept per blob id (the ones closest to the id win).
    pub max_providers_per_key: usize,
    /// Keys (one per package held) we announce ourselves.
    pub max_provided_keys: usize,
    /// DHT messages per second our provider announcements may send, averaged (lookup requests
    /// and ADD_PROVIDER alike): the re-announcement cycle stretches to fit (`net::pacer`).
    pub announce_rate: u32,
    /// DHT queries (find/get/bootstrap) waiting for an answer at once.
    pub max_pending_queries: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // npm's largest tarballs are a few hundred MiB.
            max_blob_size: 1 << 30,
            request_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(30),
            max_inbound_transfers: 32,
            max_outbound_transfers: 32,
            max_connections: 512,
            max_connections_per_peer: 4,
            max_pending_connections: 64,
            max_records: 65_536,
            max_record_bytes: 8 * 1024,
            // Each stored provider costs ~200 bytes: 256 Ki keys is ~50 MiB at one provider each.
            max_provider_keys: 1 << 18,
            max_providers_per_key: 20,
            // ~150 bytes each: 1 Mi packages announced cost ~150 MiB; more than a full mirror.
            max_provided_keys: 1 << 20,
            // 691,200 messages a day: 100,000 packages re-announced every ~5.8 days.
            announce_rate: 8,
            max_pending_queries: 256,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: DEFAULT_LISTEN
                .iter()
                .map(|s| s.parse().expect("the default listen addresses parse"))
                .collect(),
            bootstrap: Vec::new(),
            external: Vec::new(),
            kad_server: None,
            mdns: None,
            relay: None,
            limits: Limits::default(),
            metrics: None,
        }
    }
}

impl Config {
    /// A node on `127.0.0.1` with an OS-chosen TCP port, nothing else (tests, local setups).
    pub fn loopback() -> Config {
        Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a valid multiaddr")],
            ..Config::default()
        }
    }

    /// Checks the limits and addresses; the error names the bad field.
    pub fn check(&self) -> Result<(), NetError> {
        if self.listen.is_empty() {
            return Err(NetError::Config("no listen address".into()));
        }
        for a in &self.listen {
            if a.iter().any(|p| matches!(p, Protocol::P2p(_))) {
                return Err(NetError::BadAddress {
                    addr: a.to_string(),
                    reason: "a listen address cannot name a peer (/p2p/...)".into(),
                });
            }
        }
        for a in &self.bootstrap {
            split_peer(a)?;
        }
        let l = &self.limits;
        let zero = [
            ("max_blob_size", l.max_blob_size == 0),
            ("request_timeout", l.request_timeout.is_zero()),
            ("stall_timeout", l.stall_timeout.is_zero()),
            ("max_inbound_transfers", l.max_inbound_transfers == 0),
            ("max_outbound_transfers", l.max_outbound_transfers == 0),
            ("max_connections", l.max_connections == 0),
            ("max_connections_per_peer", l.max_connections_per_peer == 0),
            ("max_pending_connections", l.max_pending_connections == 0),
            ("max_records", l.max_records == 0),
            ("max_record_bytes", l.max_record_bytes == 0),
            ("max_provider_keys", l.max_provider_keys == 0),
            ("max_providers_per_key", l.max_providers_per_key == 0),
            ("max_provided_keys", l.max_provided_keys == 0),
            ("announce_rate", l.announce_rate == 0),
            ("max_pending_queries", l.max_pending_queries == 0),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(NetError::Config(format!("limits.{name} must be positive")));
        }
        Ok(())
    }

    /// Whether mDNS runs: see [`Config::mdns`].
    pub fn mdns_enabled(&self) -> bool {
        self.mdns
            .unwrap_or_else(|| self.listen.iter().any(on_a_lan))
    }

    /// Whether the relay server runs: see [`Config::relay`].
    pub fn relay_enabled(&self) -> bool {
        self.relay.unwrap_or_else(|| !self.loopback_only())
    }

    /// Whether AutoNAT v2 runs (client and server): unless every listen address is loopback,
    /// where nobody outside could confirm anything.
    pub fn autonat_enabled(&self) -> bool {
        !self.loopback_only()
    }

    /// Whether the node acts on what AutoNAT finds (Kademlia mode when automatic, relay
    /// reservations when private): AutoNAT runs and Kademlia is not forced into server mode
    /// (`--kad-server` declares the node reachable; loopback forces it too).
    pub fn reach_managed(&self) -> bool {
        self.autonat_enabled() && self.kad_server_mode() != Some(true)
    }

    fn loopback_only(&self) -> bool {
        self.listen.iter().all(is_loopback)
    }

    /// Whether Kademlia must be forced into server mode (`Some(true)`), client mode
    /// (`Some(false)`), or left automatic (`None`).
    pub fn kad_server_mode(&self) -> Option<bool> {
        match self.kad_server {
            Some(forced) => Some(forced),
            None if self.listen.iter().chain(&self.bootstrap).any(is_loopback) => Some(true),
            None => None,
        }
    }
}

/// Whether a listen address is one a LAN peer reaches: a private or link-local address, or
/// every interface.
fn on_a_lan(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_unspecified() || ip.is_private() || ip.is_link_local(),
        Some(Protocol::Ip6(ip)) => {
            ip.is_unspecified() || ip.is_unique_local() || ip.is_unicast_link_local()
        }
        _ => false,
    }
}

/// Whether the address's host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
pub fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h)) => h == "localhost",
        _ => false,
    }
}

/// Splits a trailing `/p2p/<id>` off an address: the dialable part and the peer it names.
pub fn split_peer(addr: &Multiaddr) -> Result<(Multiaddr, Option<PeerId>), NetError> {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => {
            if base.iter().any(|p| matches!(p, Protocol::P2p(_))) {
                return Err(NetError::BadAddress {
                    addr: addr.to_string(),
                    reason: "more than one /p2p/ component (relayed addresses are not supported)"
                        .into(),
                });
            }
            if base.is_empty() {
                return Err(NetError::BadAddress {
                    addr: addr.to_string(),
                    reason: "no transport address before /p2p/".into(),
                });
            }
            Ok((base, Some(peer)))
        }
        Some(_) if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) => {
            Err(NetError::BadAddress {
                addr: addr.to_string(),
                reason: "/p2p/ must be the last component".into(),
            })
        }
        Some(_) => Ok((addr.clone(), None)),
        None => Err(NetError::BadAddress {
            addr: addr.to_string(),
            reason: "empty address".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_are_valid_and_not_server() {
        let c = Config::default();
        c.check().unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[1], ma("/ip4/0.0.0.0/udp/7374/quic-v1"));
        assert_eq!(c.kad_server_mode(), None);
    }

    #[test]
    fn loopback_forces_server_mode() {
        assert_eq!(Config::loopback().kad_server_mode(), Some(true));
        // mDNS: on for a LAN (private addresses, every interface), off on loopback or public
        // addresses alone, and as forced.
        assert!(!Config::loopback().mdns_enabled());
        assert!(Config::default().mdns_enabled());
        let at = |a: &str| Config {
            listen: vec![a.parse().unwrap()],
            ..Config::default()
        };
        assert!(at("/ip4/192.168.1.10/tcp/7374").mdns_enabled());
        assert!(!at("/ip4/203.0.113.7/tcp/7374").mdns_enabled());
        assert!(
            !Config {
                mdns: Some(false),
                ..Config::default()
            }
            .mdns_enabled()
        );
        // Relay, AutoNAT and the decisions on their findings: off on loopback, on elsewhere,
        // not acted on under a forced server mode.
        let lo = Config::loopback();
        assert!(!lo.relay_enabled() && !lo.autonat_enabled() && !lo.reach_managed());
        let d = Config::default();
        assert!(d.relay_enabled() && d.autonat_enabled() && d.reach_managed());
        let forced = Config {
            kad_server: Some(true),
            relay: Some(false),
            ..Config::default()
        };
        assert!(!forced.relay_enabled() && forced.autonat_enabled() && !forced.reach_managed());
        let c = Config {
            bootstrap: vec![ma("/ip6/::1/tcp/4001")],
            ..Config::default()
        };
        assert_eq!(c.kad_server_mode(), Some(true));
        let c = Config {
            kad_server: Some(false),
            ..Config::loopback()
        };
        assert_eq!(c.kad_server_mode(), Some(false));
    }

    #[test]
    fn split_peer_handles_both_forms() {
        let id = PeerId::random();
        let (base, peer) = split_peer(&ma(&format!("/ip4/1.2.3.4/tcp/5/p2p/{id}"))).unwrap();
        assert_eq!(base, ma("/ip4/1.2.3.4/tcp/5"));
        assert_eq!(peer, Some(id));
        let (base, peer) = split_peer(&ma("/dns4/example.org/udp/5/quic-v1")).unwrap();
        assert_eq!(base, ma("/dns4/example.org/udp/5/quic-v1"));
        assert_eq!(peer, None);
        assert!(split_peer(&ma(&format!("/p2p/{id}"))).is_err());
        assert!(split_peer(&ma(&format!("/p2p/{id}/tcp/5"))).is_err());
    }

    #[test]
    fn zero_limits_are_rejected() {
        let mut c = Config::loopback();
        c.limits.stall_timeout = Duration::ZERO;
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("stall_timeout"), "{e}");
    }
}

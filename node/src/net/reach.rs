//! Where the peer-to-peer listener can be reached from, said in words for `start`: from this
//! host only (loopback), on the local network (private addresses), or from other hosts (a
//! public address, or an `--external-addr` the operator declared); and the Kademlia mode.
//!
//! Only the addresses are looked at: a firewall or a NAT in front of a public-looking address
//! is not seen, which is why a declared external address is the one sure answer.
//!
//! Once running, the swarm learns the answer itself ([`Verdict`]): identify's observed
//! addresses become candidates, AutoNAT v2 servers among the peers we dialed try to dial each
//! back, and a dial that succeeds confirms the address. A node with a confirmed direct address
//! is public (Kademlia server, relay offered); one whose candidates all failed, or that has
//! none confirmed after [`PROBE_GRACE`], is private and reserves a slot on up to
//! [`MAX_RELAY_RESERVATIONS`] relays ([`should_reserve`]).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use super::Config;

/// Who can reach a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// Every listen address is loopback.
    ThisHost,
    /// Private or link-local addresses, or every interface of a host with no public address
    /// declared.
    LocalNetwork {
        /// Bound to every interface (`0.0.0.0` or `::`).
        all_interfaces: bool,
    },
    /// A public address is bound, or external addresses were declared.
    OtherHosts(Vec<Multiaddr>),
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reach::ThisHost => f.write_str(
                "reachable from this host only (bound to loopback; --p2p-listen an interface address to let peers in)",
            ),
            Reach::LocalNetwork {
                all_interfaces: true,
            } => f.write_str(
                "reachable on the local network (every interface; from other networks only through a public address or port forward: declare it with --external-addr)",
            ),
            Reach::LocalNetwork {
                all_interfaces: false,
            } => f.write_str(
                "reachable on the local network (private address; declare a public one with --external-addr)",
            ),
            Reach::OtherHosts(at) => {
                let at: Vec<String> = at.iter().map(ToString::to_string).collect();
                write!(f, "reachable from other hosts at {}", at.join(", "))
            }
        }
    }
}

/// How long a node that runs AutoNAT waits for a confirmed external address before it counts
/// itself private even though no probe failed (no AutoNAT server among its peers, say).
pub const PROBE_GRACE: Duration = Duration::from_secs(60);

/// Relays a private node holds a reservation with at once (one spare).
pub const MAX_RELAY_RESERVATIONS: usize = 2;

/// What the running node found out about its own reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not probing: every listen address is loopback, or `--kad-server` declared the node
    /// reachable.
    NotProbed,
    /// Probing, nothing decided yet.
    Unknown,
    /// An external address (not a relayed one) is confirmed: AutoNAT v2 or `--external-addr`.
    Public,
    /// No direct address confirmed, and a probe failed or [`PROBE_GRACE`] is over.
    Private,
}

impl Verdict {
    /// The word `/-/open-registry/peers` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NotProbed => "not probed",
            Verdict::Unknown => "unknown",
            Verdict::Public => "public",
            Verdict::Private => "private",
        }
    }
}

/// The verdict of a node that probes (`probing`) with `direct_external` confirmed addresses
/// that are not relayed, `failed_probes` AutoNAT probes that failed, probing for `elapsed`.
pub fn verdict(
    probing: bool,
    direct_external: usize,
    failed_probes: u64,
    elapsed: Duration,
) -> Verdict {
    if !probing {
        Verdict::NotProbed
    } else if direct_external > 0 {
        Verdict::Public
    } else if failed_probes > 0 || elapsed >= PROBE_GRACE {
        Verdict::Private
    } else {
        Verdict::Unknown
    }
}

/// Whether to ask a relay for a reservation: the node is private, holds (or is waiting for)
/// fewer than [`MAX_RELAY_RESERVATIONS`], and the peer offers the relay hop protocol, is
/// reached directly (a relay is never reached through another) and holds none of ours yet.
pub fn should_reserve(
    verdict: Verdict,
    reservations: usize,
    offers_hop: bool,
    reached_directly: bool,
    already_reserved: bool,
) -> bool {
    verdict == Verdict::Private
        && reservations < MAX_RELAY_RESERVATIONS
        && offers_hop
        && reached_directly
        && !already_reserved
}

/// Whether `addr` goes through a relay (`/p2p-circuit`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// How far an address reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Loopback,
    Private,
    Unspecified,
    Public,
}

fn scope(addr: &Multiaddr) -> Scope {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip4_scope(ip),
        Some(Protocol::Ip6(ip)) => ip6_scope(ip),
        Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h)) if h == "localhost" => {
            Scope::Loopback
        }
        // A DNS name is declared to be reachable by whoever chose it.
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => Scope::Public,
        _ => Scope::Private,
    }
}

fn ip4_scope(ip: Ipv4Addr) -> Scope {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Scope::Loopback
    } else if ip.is_unspecified() {
        Scope::Unspecified
    } else if ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b)) {
        // RFC 1918, 169.254/16, and carrier-grade NAT (100.64/10).
        Scope::Private
    } else {
        Scope::Public
    }
}

fn ip6_scope(ip: Ipv6Addr) -> Scope {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return ip4_scope(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Scope::Loopback
    } else if ip.is_unspecified() {
        Scope::Unspecified
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80 {
        // Unique local (fc00::/7) and link-local (fe80::/10).
        Scope::Private
    } else {
        Scope::Public
    }
}

/// Whether `addr` is every interface (`/ip4/0.0.0.0/...` or `/ip6/::/...`).
pub fn is_every_interface(addr: &Multiaddr) -> bool {
    scope(addr) == Scope::Unspecified
}

/// The addresses to show for listeners asked for on `listen` that bound `bound`: a listener
/// on every interface reports one interface's address as bound, so its address is shown with
/// the every-interface IP it was asked for and the port it got.
pub fn shown_addrs(listen: &[Multiaddr], bound: &[Multiaddr]) -> Vec<Multiaddr> {
    let shape = |a: &Multiaddr| a.iter().map(|p| p.tag()).collect::<Vec<_>>();
    bound
        .iter()
        .map(|b| {
            let asked = listen
                .iter()
                .find(|l| is_every_interface(l) && shape(l) == shape(b));
            match (asked.and_then(|l| l.iter().next()), b.iter().next()) {
                (Some(any), Some(_)) => std::iter::once(any).chain(b.iter().skip(1)).collect(),
                _ => b.clone(),
            }
        })
        .collect()
}

/// Who can reach a node listening on `listen` (as configured or as bound) that declared
/// `external`.
pub fn reachability(listen: &[Multiaddr], external: &[Multiaddr]) -> Reach {
    if !external.is_empty() {
        return Reach::OtherHosts(external.to_vec());
    }
    let public: Vec<Multiaddr> = listen
        .iter()
        .filter(|a| scope(a) == Scope::Public)
        .cloned()
        .collect();
    if !public.is_empty() {
        return Reach::OtherHosts(public);
    }
    match listen.iter().map(scope).max() {
        None | Some(Scope::Loopback) => Reach::ThisHost,
        Some(s) => Reach::LocalNetwork {
            all_interfaces: s == Scope::Unspecified,
        },
    }
}

/// The Kademlia mode `config` runs in, in words.
pub fn kad_mode(config: &Config) -> &'static str {
    match config.kad_server_mode() {
        Some(true) => "server (answers other nodes' DHT queries)",
        Some(false) => "client (asks the DHT, answers no queries)",
        None if !config.external.is_empty() => {
            "automatic: server once the declared external address is confirmed"
        }
        None => {
            "automatic: client until AutoNAT confirms an external address (--external-addr or --kad-server to serve the DHT at once)"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    fn reach(listen: &[&str], external: &[&str]) -> Reach {
        let l: Vec<Multiaddr> = listen.iter().map(|s| ma(s)).collect();
        let e: Vec<Multiaddr> = external.iter().map(|s| ma(s)).collect();
        reachability(&l, &e)
    }

    #[test]
    fn loopback_is_this_host_only() {
        assert_eq!(reach(&["/ip4/127.0.0.1/tcp/7374"], &[]), Reach::ThisHost);
        assert_eq!(
            reach(&["/ip6/::1/tcp/1", "/ip4/127.0.0.2/udp/1/quic-v1"], &[]),
            Reach::ThisHost
        );
        assert_eq!(reach(&["/dns4/localhost/tcp/1"], &[]), Reach::ThisHost);
        assert_eq!(reach(&[], &[]), Reach::ThisHost);
        assert!(Reach::ThisHost.to_string().contains("this host only"));
    }

    #[test]
    fn private_and_every_interface_are_the_local_network() {
        for private in [
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/172.16.0.9/tcp/1",
            "/ip4/192.168.1.20/tcp/1",
            "/ip4/169.254.0.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
        ] {
            assert_eq!(
                reach(&[private, "/ip4/127.0.0.1/tcp/1"], &[]),
                Reach::LocalNetwork {
                    all_interfaces: false
                },
                "{private}"
            );
        }
        let any = reach(&["/ip4/0.0.0.0/tcp/7374", "/ip6/::/udp/7374/quic-v1"], &[]);
        assert_eq!(
            any,
            Reach::LocalNetwork {
                all_interfaces: true
            }
        );
        assert!(any.to_string().contains("--external-addr"), "{any}");
    }

    #[test]
    fn public_or_declared_addresses_reach_other_hosts() {
        let r = reach(&["/ip4/127.0.0.1/tcp/1", "/ip4/203.0.113.7/tcp/7374"], &[]);
        assert_eq!(r, Reach::OtherHosts(vec![ma("/ip4/203.0.113.7/tcp/7374")]));
        assert_eq!(
            r.to_string(),
            "reachable from other hosts at /ip4/203.0.113.7/tcp/7374"
        );
        assert!(matches!(
            reach(&["/ip6/2001:db8::1/tcp/1"], &[]),
            Reach::OtherHosts(_)
        ));
        let declared = reach(
            &["/ip4/0.0.0.0/tcp/7374"],
            &["/dns4/node.example.org/tcp/7374"],
        );
        assert_eq!(
            declared,
            Reach::OtherHosts(vec![ma("/dns4/node.example.org/tcp/7374")])
        );
    }

    #[test]
    fn every_interface_listeners_show_their_bound_port() {
        let listen = [ma("/ip4/0.0.0.0/tcp/0"), ma("/ip4/127.0.0.1/udp/0/quic-v1")];
        let bound = [
            ma("/ip4/127.0.0.1/udp/4001/quic-v1"),
            ma("/ip4/192.168.1.2/tcp/4000"),
        ];
        assert_eq!(
            shown_addrs(&listen, &bound),
            [
                ma("/ip4/127.0.0.1/udp/4001/quic-v1"),
                ma("/ip4/0.0.0.0/tcp/4000")
            ]
        );
        assert!(is_every_interface(&ma("/ip6/::/tcp/1")));
        assert!(!is_every_interface(&ma("/ip4/10.0.0.1/tcp/1")));
    }

    #[test]
    fn the_verdict_needs_a_direct_address_or_a_failed_probe() {
        let s = Duration::from_secs;
        assert_eq!(verdict(false, 3, 0, s(0)), Verdict::NotProbed);
        assert_eq!(verdict(true, 0, 0, s(1)), Verdict::Unknown);
        assert_eq!(verdict(true, 1, 5, s(1)), Verdict::Public);
        assert_eq!(verdict(true, 0, 1, s(1)), Verdict::Private);
        assert_eq!(verdict(true, 0, 0, PROBE_GRACE), Verdict::Private);
        assert_eq!(Verdict::Private.as_str(), "private");
    }

    #[test]
    fn only_a_private_node_reserves_and_only_on_direct_relays() {
        let p = Verdict::Private;
        assert!(should_reserve(p, 0, true, true, false));
        assert!(should_reserve(
            p,
            MAX_RELAY_RESERVATIONS - 1,
            true,
            true,
            false
        ));
        assert!(!should_reserve(
            p,
            MAX_RELAY_RESERVATIONS,
            true,
            true,
            false
        ));
        assert!(!should_reserve(p, 0, false, true, false), "no hop protocol");
        assert!(
            !should_reserve(p, 0, true, false, false),
            "relayed connection"
        );
        assert!(
            !should_reserve(p, 0, true, true, true),
            "reserved there already"
        );
        for v in [Verdict::Public, Verdict::Unknown, Verdict::NotProbed] {
            assert!(!should_reserve(v, 0, true, true, false), "{v:?}");
        }
        let id = libp2p::PeerId::random();
        assert!(is_relayed(&ma(&format!(
            "/ip4/10.1.1.2/tcp/1/p2p/{id}/p2p-circuit"
        ))));
        assert!(!is_relayed(&ma("/ip4/10.1.1.2/tcp/1")));
    }

    #[test]
    fn kademlia_mode_in_words() {
        assert!(kad_mode(&Config::loopback()).starts_with("server"));
        assert!(kad_mode(&Config::default()).starts_with("automatic: client"));
        let forced = Config {
            kad_server: Some(false),
            ..Config::loopback()
        };
        assert!(kad_mode(&forced).starts_with("client"));
        let declared = Config {
            external: vec![ma("/ip4/203.0.113.7/tcp/7374")],
            ..Config::default()
        };
        assert!(kad_mode(&declared).contains("server once"));
    }
}

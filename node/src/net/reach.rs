//! Where the peer-to-peer listener can be reached from, said in words for `start`: from this
//! host only (loopback), on the local network (private addresses), or from other hosts (a
//! public address, or an `--external-addr` the operator declared); and the Kademlia mode.
//!
//! Only the addresses are looked at: a firewall or a NAT in front of a public-looking address
//! is not seen, which is why a declared external address is the one sure answer.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

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
            "automatic: client until an external address is confirmed (--external-addr or --kad-server to serve the DHT)"
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

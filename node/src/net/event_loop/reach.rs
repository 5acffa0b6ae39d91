//! The swarm task's side of reachability: what AutoNAT, the relay and DCUtR report, and what
//! the node does about it (see [`reach`](crate::net::reach) for the decisions themselves).
//!
//! - Every confirmed or expired external address, and every [`REACH_CHECK_INTERVAL`], the
//!   [`Verdict`] is worked out again from the swarm's confirmed addresses that are not relayed
//!   and the failed AutoNAT probes. When it changes it is logged and, if the node manages its
//!   reachability ([`Config::reach_managed`]), Kademlia is put in server mode (public) or
//!   client mode (anything else) when its mode is automatic, and our relay server is
//!   advertised only while public.
//! - A private node reserves a slot on relays it reaches directly, which it learned from
//!   identify (the hop protocol among the peer's protocols): `listen_on(<relay
//!   addr>/p2p/<relay>/p2p-circuit)`. The relay client confirms the relayed address as external
//!   once accepted, so identify and our provider records carry it. A refused or lost
//!   reservation is retried after [`RESERVE_RETRY`].
//! - A peer we must connect to but know no address of (a record's signer, say) is dialed
//!   through the relays we know, at most [`MAX_RELAYED_DIALS`]: a private peer reserves on
//!   public ones, so it is often reachable through one we see too.
//! - DCUtR outcomes are counted (`peer_dcutr_upgraded`, `peer_dcutr_failed`) and kept per peer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::core::transport::ListenerId;
use libp2p::kad::Mode;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, identify, relay};
use tokio::time::Instant;

use super::EventLoop;
use crate::metrics::Metrics;
use crate::net::reach::{Verdict, is_relayed, should_reserve, verdict};
use crate::net::{Config, is_loopback};

/// How often the verdict is reconsidered and relay reservations are sought.
pub const REACH_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Relays tried at once when dialing a peer we know no address of.
pub const MAX_RELAYED_DIALS: usize = 4;

/// How long after a refused or lost reservation the same relay is asked again.
pub const RESERVE_RETRY: Duration = Duration::from_secs(60);

/// What the node does about its reachability, fixed at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReachPolicy {
    /// AutoNAT runs, so there is a verdict to reach.
    probing: bool,
    /// Act on the verdict (relay reservations, relay advertisement).
    manage: bool,
    /// Also set the Kademlia mode from it (automatic mode).
    drive_kad: bool,
}

impl ReachPolicy {
    /// No probing, nothing acted on.
    pub(crate) fn inert() -> ReachPolicy {
        ReachPolicy {
            probing: false,
            manage: false,
            drive_kad: false,
        }
    }

    pub(crate) fn of(config: &Config) -> ReachPolicy {
        ReachPolicy {
            probing: config.autonat_enabled(),
            manage: config.reach_managed(),
            drive_kad: config.reach_managed() && config.kad_server_mode().is_none(),
        }
    }
}

/// What the swarm task knows about reachability.
pub(crate) struct ReachState {
    policy: ReachPolicy,
    started: Instant,
    failed_probes: u64,
    verdict: Verdict,
    /// Peers that offer the relay hop protocol, with an address of theirs to reserve at.
    relays: HashMap<PeerId, Multiaddr>,
    /// Our relay listeners (reservations asked for or held), by the relay they are on.
    reservations: HashMap<ListenerId, PeerId>,
    /// Relays that accepted our reservation.
    accepted: HashSet<PeerId>,
    /// Relays not to ask again before the instant.
    retry_at: HashMap<PeerId, Instant>,
    /// The last DCUtR outcome per peer: upgraded to a direct connection or not.
    dcutr: HashMap<PeerId, bool>,
}

impl ReachState {
    pub(crate) fn new(policy: ReachPolicy) -> ReachState {
        ReachState {
            policy,
            started: Instant::now(),
            failed_probes: 0,
            verdict: verdict(policy.probing, 0, 0, Duration::ZERO),
            relays: HashMap::new(),
            reservations: HashMap::new(),
            accepted: HashSet::new(),
            retry_at: HashMap::new(),
            dcutr: HashMap::new(),
        }
    }

    pub(crate) fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// The relays holding a reservation of ours.
    pub(crate) fn relays_reserved(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.accepted.iter().copied().collect();
        v.sort();
        v
    }

    /// Whether a relay server that runs (`enabled`) is advertised: while public when the node
    /// manages its reachability, else (libp2p's own rule) while any external address is
    /// confirmed (`any_external`).
    pub(crate) fn relay_offered(&self, enabled: bool, any_external: bool) -> bool {
        enabled
            && if self.policy.manage {
                self.verdict == Verdict::Public
            } else {
                any_external
            }
    }

    /// The last DCUtR outcome with `peer`, if one was tried.
    pub(crate) fn dcutr(&self, peer: &PeerId) -> Option<bool> {
        self.dcutr.get(peer).copied()
    }
}

impl EventLoop {
    /// Works the verdict out again, acts on a change, and seeks reservations when private.
    pub(super) fn reassess_reach(&mut self) {
        let direct = self
            .swarm
            .external_addresses()
            .filter(|a| !is_relayed(a))
            .count();
        let r = &self.reach;
        let now = verdict(
            r.policy.probing,
            direct,
            r.failed_probes,
            r.started.elapsed(),
        );
        if now != r.verdict {
            let external: Vec<String> = self
                .swarm
                .external_addresses()
                .map(ToString::to_string)
                .collect();
            tracing::info!(
                reachability = now.as_str(),
                ?external,
                "reachability: {}",
                match now {
                    Verdict::Public => "reachable from outside (an external address is confirmed)",
                    Verdict::Private => "not reachable from outside; reserving a relay slot",
                    _ => "not known yet",
                }
            );
            self.reach.verdict = now;
            if self.reach.policy.manage {
                self.apply_verdict(now);
            }
        }
        if self.reach.policy.manage {
            self.reserve_relays();
        }
    }

    fn apply_verdict(&mut self, v: Verdict) {
        let public = v == Verdict::Public;
        let b = self.swarm.behaviour_mut();
        if self.reach.policy.drive_kad {
            let mode = if public { Mode::Server } else { Mode::Client };
            if b.kad.mode() != mode {
                tracing::info!(?mode, "Kademlia switches mode");
            }
            b.kad.set_mode(Some(mode));
        }
        if let Some(relay) = b.relay.as_mut() {
            relay.set_status(Some(if public {
                relay::Status::Enable
            } else {
                relay::Status::Disable
            }));
            if public {
                tracing::info!("offering a circuit relay to private peers");
            }
        }
    }

    /// Asks relays for reservations while private, up to the cap.
    fn reserve_relays(&mut self) {
        let now = Instant::now();
        let mut candidates: Vec<(PeerId, Multiaddr)> = self
            .reach
            .relays
            .iter()
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        // The nearest relay first.
        candidates.sort_by_key(|(p, _)| self.rtts.get(p).unwrap_or(Duration::MAX));
        for (peer, addr) in candidates {
            let r = &self.reach;
            let reserved = r.reservations.values().any(|p| *p == peer);
            let direct = self
                .connections
                .get(&peer)
                .is_some_and(|cs| cs.iter().any(|(_, a)| !is_relayed(a)));
            if !should_reserve(r.verdict, r.reservations.len(), true, direct, reserved)
                || r.retry_at.get(&peer).is_some_and(|t| *t > now)
            {
                continue;
            }
            let circuit = addr.with(Protocol::P2p(peer)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    tracing::info!(relay = %peer, addr = %circuit, "asking a relay for a reservation");
                    self.reach.reservations.insert(id, peer);
                }
                Err(e) => {
                    tracing::warn!(relay = %peer, error = %e, "cannot listen through a relay");
                    self.reach.retry_at.insert(peer, now + RESERVE_RETRY);
                }
            }
        }
    }

    /// Dials `peer` through each relay we know (a private peer reserves on public ones, so a
    /// relay we see is likely one of its). Whether a dial started.
    pub(super) fn dial_through_relays(&mut self, peer: PeerId) -> bool {
        let addrs: Vec<Multiaddr> = self
            .reach
            .relays
            .iter()
            .filter(|(r, _)| **r != peer)
            .take(MAX_RELAYED_DIALS)
            .map(|(r, a)| a.clone().with(Protocol::P2p(*r)).with(Protocol::P2pCircuit))
            .collect();
        if addrs.is_empty() {
            return false;
        }
        tracing::debug!(%peer, relays = addrs.len(), "no address known; dialing through relays");
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(addrs)
            .build();
        self.swarm.dial(opts).is_ok()
    }

    /// Notes whether an identified peer offers the relay hop protocol, and where.
    pub(super) fn note_relay(&mut self, peer: PeerId, info: &identify::Info) {
        if !info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            self.reach.relays.remove(&peer);
            return;
        }
        let conns = self.connections.get(&peer);
        let local_peer = conns.is_some_and(|cs| cs.iter().any(|(_, a)| is_loopback(a)));
        let usable = |a: &&Multiaddr| {
            !is_relayed(a)
                && (local_peer || !is_loopback(a))
                && !super::is_unspecified(a)
                && !a.iter().any(|p| matches!(p, Protocol::P2p(_)))
        };
        // The address we dialed it at if it is one of its listen addresses, else the first.
        let dialed = conns.and_then(|cs| {
            info.listen_addrs
                .iter()
                .filter(usable)
                .find(|a| cs.iter().any(|(_, c)| strip_p2p(c) == **a))
        });
        let Some(addr) = dialed.or_else(|| info.listen_addrs.iter().find(usable)) else {
            return;
        };
        if self.reach.relays.insert(peer, addr.clone()).is_none() {
            tracing::debug!(relay = %peer, %addr, "a peer offers a circuit relay");
            if self.reach.policy.manage {
                self.reserve_relays();
            }
        }
    }

    /// The last connection to `peer` closed.
    pub(super) fn forget_peer_reach(&mut self, peer: &PeerId) {
        self.reach.relays.remove(peer);
        self.reach.dcutr.remove(peer);
    }

    /// A listener closed: if it was a reservation, the relay may be asked again later.
    pub(super) fn on_listener_closed(&mut self, id: ListenerId, reason: Result<(), String>) {
        let Some(peer) = self.reach.reservations.remove(&id) else {
            return;
        };
        self.reach.accepted.remove(&peer);
        self.reach
            .retry_at
            .insert(peer, Instant::now() + RESERVE_RETRY);
        match reason {
            Ok(()) => tracing::info!(relay = %peer, "relay reservation closed"),
            Err(e) => tracing::info!(relay = %peer, error = %e, "relay reservation failed or lost"),
        }
    }

    pub(super) fn on_autonat(&mut self, e: autonat::v2::client::Event) {
        match &e.result {
            Ok(()) => {
                tracing::info!(addr = %e.tested_addr, server = %e.server, "AutoNAT: address reachable")
            }
            Err(err) => {
                self.reach.failed_probes += 1;
                tracing::info!(addr = %e.tested_addr, server = %e.server, error = %err, "AutoNAT: address not reachable");
            }
        }
        self.reassess_reach();
    }

    pub(super) fn on_relay_client(&mut self, e: relay::client::Event) {
        match e {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "relay reservation accepted: reachable through it");
                    if let Some(m) = &self.metrics {
                        Metrics::inc(&m.relay_reservations);
                    }
                }
                self.reach.accepted.insert(relay_peer_id);
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "relayed connection out");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "relayed connection in");
            }
        }
    }

    pub(super) fn on_relay_server(&mut self, e: relay::Event) {
        match e {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                tracing::debug!(peer = %src_peer_id, "relaying for a private peer");
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, "relaying a circuit");
                if let Some(m) = &self.metrics {
                    Metrics::inc(&m.relay_circuits);
                }
            }
            other => tracing::debug!(event = ?other, "relay"),
        }
    }

    pub(super) fn on_dcutr(&mut self, e: dcutr::Event) {
        let upgraded = e.result.is_ok();
        match &e.result {
            Ok(_) => {
                tracing::info!(peer = %e.remote_peer_id, "DCUtR: relayed connection upgraded to direct")
            }
            Err(err) => {
                tracing::info!(peer = %e.remote_peer_id, error = %err, "DCUtR: no direct connection; staying relayed")
            }
        }
        if let Some(m) = &self.metrics {
            Metrics::inc(if upgraded {
                &m.peer_dcutr_upgraded
            } else {
                &m.peer_dcutr_failed
            });
        }
        self.reach.dcutr.insert(e.remote_peer_id, upgraded);
    }
}

/// `addr` without a trailing `/p2p/<id>`.
fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

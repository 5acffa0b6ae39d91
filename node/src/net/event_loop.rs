//! The one task that owns the Swarm.
//!
//! It selects over swarm events, commands from [`Client`](super::Client)s (a bounded channel),
//! query deadlines, the announcement schedule, a periodic store sweep, and the node's
//! cancellation token. Pending work lives in maps keyed by query, connection or peer id; each
//! entry holds the oneshot that answers the caller. Invariants:
//!
//! - every pending DHT query has a deadline timer; when it fires the caller gets what was found
//!   so far and the query is finished, so no map grows with forgotten queries;
//! - the number of pending queries is capped ([`Limits::max_pending_queries`]): more is `Busy`;
//! - nothing a peer sends enters the Kademlia store without passing [`RecordValidator`] (values)
//!   or the CID check (provider records);
//! - at most [`MAX_CONCURRENT_ANNOUNCES`] provider announcements run at once, none while the
//!   routing table is empty (they would reach no one), and none beyond the message budget of
//!   [`Limits::announce_rate`] (`net::pacer`);
//! - every outbound Kademlia request is counted in `dht_messages_sent`, whatever the query.
//!
//! Nothing here awaits anything but the `select!`: the loop never blocks on a caller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::{AbortHandle, Abortable, BoxFuture};
use futures::stream::FuturesUnordered;
use libp2p::kad::{QueryId, Quorum, RecordKey};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use open_registry_protocol::BlobId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::behaviour::{
    Behaviour, BehaviourEvent, IDENTIFY_VERSION, KAD_PROTOCOL, MAX_IDENTIFY_ADDRS,
};
use super::client::{Command, FoundRecord, Reply};
use super::dht_store::Kind;
use super::{Limits, NetError, RecordValidator, is_loopback, split_peer};
use crate::metrics::Metrics;

mod commands;
mod dht;
mod reach;

pub(crate) use reach::ReachPolicy;
pub use reach::{MAX_RELAYED_DIALS, REACH_CHECK_INTERVAL, RESERVE_RETRY};

/// Provider announcements (Kademlia ADD_PROVIDER queries) running at once.
pub const MAX_CONCURRENT_ANNOUNCES: usize = 8;

/// How often expired values and provider records are dropped from the store.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// How often, while no peer is connected, the configured bootstrap peers are dialed again.
pub const REBOOTSTRAP_INTERVAL: Duration = Duration::from_secs(60);

/// What a deadline timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Expired {
    Query(QueryId),
    Dial(ConnectionId),
}

struct FindProviders {
    limit: usize,
    found: Vec<PeerId>,
    reply: Reply<Vec<PeerId>>,
}

struct GetRecords {
    found: Vec<FoundRecord>,
    /// Answer at the first valid value from a remote peer.
    first: bool,
    reply: Reply<Vec<FoundRecord>>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    validator: Arc<dyn RecordValidator>,
    limits: Limits,
    /// The node's counters, for DHT lookups (see [`EventLoop::count_lookup`]).
    metrics: Option<Arc<Metrics>>,
    cancel: CancellationToken,
    connections: HashMap<PeerId, Vec<(ConnectionId, Multiaddr)>>,
    find_providers: HashMap<QueryId, FindProviders>,
    get_records: HashMap<QueryId, GetRecords>,
    bootstraps: HashMap<QueryId, Reply<()>>,
    dials: HashMap<ConnectionId, Reply<PeerId>>,
    connects: HashMap<PeerId, Vec<Reply<()>>>,
    /// Announcements running: the key, and the messages charged to the budget for it.
    announcing: HashMap<QueryId, (Kind, RecordKey, f64)>,
    /// Deadline timers; a timer whose work finished first is aborted (yields `None`), so
    /// finished queries leave nothing behind.
    timers: FuturesUnordered<BoxFuture<'static, Option<Expired>>>,
    armed: HashMap<Expired, AbortHandle>,
    bootstrap: Vec<Multiaddr>,
    /// Gossip subscribers by topic.
    subscribers: HashMap<libp2p::gossipsub::TopicHash, mpsc::Sender<super::gossip::Message>>,
    /// Each connected peer's round-trip time, from ping.
    rtts: super::Rtts,
    /// Reachability: the verdict, relays and reservations, DCUtR outcomes.
    reach: reach::ReachState,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        validator: Arc<dyn RecordValidator>,
        limits: Limits,
        metrics: Option<Arc<Metrics>>,
        cancel: CancellationToken,
        rtts: super::Rtts,
    ) -> EventLoop {
        EventLoop {
            swarm,
            commands,
            validator,
            limits,
            metrics,
            cancel,
            connections: HashMap::new(),
            find_providers: HashMap::new(),
            get_records: HashMap::new(),
            bootstraps: HashMap::new(),
            dials: HashMap::new(),
            connects: HashMap::new(),
            announcing: HashMap::new(),
            timers: FuturesUnordered::new(),
            armed: HashMap::new(),
            bootstrap: Vec::new(),
            subscribers: HashMap::new(),
            rtts,
            reach: reach::ReachState::new(ReachPolicy::inert()),
        }
    }

    /// What the node does about its reachability (nothing until set).
    pub(crate) fn manage_reach(&mut self, policy: ReachPolicy) {
        self.reach = reach::ReachState::new(policy);
    }

    /// Dials the configured bootstrap peers now, and again whenever we are left with no peer.
    pub(crate) fn bootstrap_from(&mut self, addrs: Vec<Multiaddr>) {
        for addr in &addrs {
            self.dial_bootstrap(addr);
        }
        self.bootstrap = addrs;
    }

    /// Dials a configured bootstrap address; failures are logged, not fatal.
    fn dial_bootstrap(&mut self, addr: &Multiaddr) {
        let opts = match split_peer(addr) {
            Ok((base, Some(peer))) => DialOpts::peer_id(peer).addresses(vec![base]).build(),
            Ok((base, None)) => DialOpts::unknown_peer_id().address(base).build(),
            Err(e) => {
                tracing::warn!(error = %e, "skipping bootstrap address");
                return;
            }
        };
        if let Err(e) = self.swarm.dial(opts) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }

    pub(crate) async fn run(mut self) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rebootstrap = tokio::time::interval(REBOOTSTRAP_INTERVAL);
        rebootstrap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rebootstrap.reset();
        let mut reach_check = tokio::time::interval(REACH_CHECK_INTERVAL);
        reach_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commands_open = true;
        loop {
            let announce_at = self.next_announcement();
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                cmd = self.commands.recv(), if commands_open => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    // Every client is gone; keep serving the network until cancelled.
                    None => commands_open = false,
                },
                Some(fired) = self.timers.next(), if !self.timers.is_empty() => {
                    if let Some(expired) = fired {
                        self.on_expired(expired);
                    }
                }
                _ = tokio::time::sleep_until(announce_at.unwrap_or_else(far_future)),
                    if announce_at.is_some() => self.announce_due(),
                _ = reach_check.tick() => self.reassess_reach(),
                _ = sweep.tick() => {
                    self.swarm.behaviour_mut().kad.store_mut().sweep(std::time::Instant::now());
                }
                _ = rebootstrap.tick() => {
                    if self.connections.is_empty() && !self.bootstrap.is_empty() {
                        tracing::info!("no peers left; dialing the bootstrap peers again");
                        for addr in self.bootstrap.clone() {
                            self.dial_bootstrap(&addr);
                        }
                    }
                }
            }
        }
        tracing::debug!("network task stopped");
    }

    // ---- announcements -------------------------------------------------------------------

    fn next_announcement(&mut self) -> Option<Instant> {
        if self.announcing.len() >= MAX_CONCURRENT_ANNOUNCES {
            return None;
        }
        let now = std::time::Instant::now();
        let due = self.swarm.behaviour_mut().kad.store_mut().next_due(now)?;
        if self.swarm.behaviour_mut().routing_table_size() == 0 {
            return None;
        }
        Some(Instant::from_std(due))
    }

    fn announce_due(&mut self) {
        let now = std::time::Instant::now();
        while self.announcing.len() < MAX_CONCURRENT_ANNOUNCES {
            let kad = &mut self.swarm.behaviour_mut().kad;
            let Some((kind, key, charged)) = kad.store_mut().pop_due(now) else {
                return;
            };
            let started = match kind {
                Kind::Provide => kad.start_providing(key.clone()).map_err(|e| e.to_string()),
                // Our value as stored (its expiry is when it stops living: Kademlia sends the
                // rest as its TTL); gone if it expired or was removed meanwhile.
                Kind::Put => match kad.store_mut().own_value(&key) {
                    Some(record) => kad
                        .put_record(record, Quorum::One)
                        .map_err(|e| e.to_string()),
                    None => Err("the value is no longer stored".to_owned()),
                },
            };
            match started {
                Ok(qid) => {
                    if let Some(m) = &self.metrics {
                        Metrics::inc(&m.dht_announcements);
                    }
                    self.announcing.insert(qid, (kind, key, charged));
                }
                Err(e) => {
                    // Nothing was sent: the charge goes back.
                    kad.store_mut().announced(charged, 0, now);
                    tracing::warn!(error = %e, ?kind, "cannot announce a key");
                }
            }
        }
    }

    fn timer(&mut self, at: Instant, what: Expired) {
        let (handle, registration) = AbortHandle::new_pair();
        let sleep = Abortable::new(tokio::time::sleep_until(at), registration);
        self.timers
            .push(Box::pin(async move { sleep.await.ok().map(|()| what) }));
        self.armed.insert(what, handle);
    }

    /// Drops the timer for work that finished before its deadline.
    fn disarm(&mut self, what: Expired) {
        if let Some(handle) = self.armed.remove(&what) {
            handle.abort();
        }
    }

    fn on_expired(&mut self, expired: Expired) {
        self.armed.remove(&expired);
        match expired {
            Expired::Query(qid) => {
                if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&qid) {
                    q.finish();
                }
                self.answer_query(qid);
                if let Some(reply) = self.bootstraps.remove(&qid) {
                    let _ = reply.send(Err(NetError::Dht(
                        "bootstrap did not finish in time".into(),
                    )));
                }
            }
            Expired::Dial(cid) => {
                if let Some(reply) = self.dials.remove(&cid) {
                    let _ = reply.send(Err(NetError::Dial {
                        addr: String::from("(dial)"),
                        reason: "no connection before the deadline".into(),
                    }));
                }
            }
        }
    }

    /// Replies to a finished find/get query with what it found.
    fn answer_query(&mut self, qid: QueryId) {
        self.disarm(Expired::Query(qid));
        if let Some(p) = self.find_providers.remove(&qid) {
            let _ = p.reply.send(Ok(p.found));
        }
        if let Some(g) = self.get_records.remove(&qid) {
            let _ = g.reply.send(Ok(g.found));
        }
    }

    // ---- swarm events --------------------------------------------------------------------

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) = &event
        {
            self.note_relay(*peer_id, info);
        }
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::AutonatClient(e)) => self.on_autonat(e),
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(e)) => self.on_relay_client(e),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => self.on_relay_server(e),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => self.on_dcutr(e),
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.reassess_reach();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.reassess_reach();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => self.on_listener_closed(listener_id, reason.map_err(|e| e.to_string())),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(libp2p::ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => self.rtts.record(peer, rtt),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    if peer == *self.swarm.local_peer_id() {
                        continue;
                    }
                    tracing::debug!(%peer, %addr, "found a peer on the local network");
                    self.rtts.on_lan(peer);
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    let opts = DialOpts::peer_id(peer)
                        .condition(
                            libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing,
                        )
                        .addresses(vec![addr])
                        .build();
                    let _ = self.swarm.dial(opts);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Expired(gone))) => {
                for (peer, _) in gone {
                    self.rtts.off_lan(&peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(libp2p::gossipsub::Event::Message {
                message,
                ..
            })) => {
                if let Some(tx) = self.subscribers.get(&message.topic) {
                    // A slow subscriber loses messages rather than growing a queue.
                    let _ = tx.try_send(super::gossip::Message {
                        topic: message.topic.to_string(),
                        source: message.source,
                        data: message.data,
                    });
                }
            }
            // Only our network's servers go into the routing table: not IPFS nodes, not
            // clients (which would be asked and never answer).
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocol_version == IDENTIFY_VERSION
                && info.protocols.contains(&KAD_PROTOCOL) =>
            {
                // A remote peer's loopback addresses name *our* host: take them only from a
                // peer we reach over loopback ourselves.
                let local_peer = self
                    .connections
                    .get(&peer_id)
                    .is_some_and(|cs| cs.iter().any(|(_, a)| is_loopback(a)));
                let kad = &mut self.swarm.behaviour_mut().kad;
                let usable = info
                    .listen_addrs
                    .into_iter()
                    .filter(|a| (local_peer || !is_loopback(a)) && !is_unspecified(a));
                for addr in usable.take(MAX_IDENTIFY_ADDRS) {
                    kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .push((connection_id, addr));
                if let Some(reply) = self.dials.remove(&connection_id) {
                    self.disarm(Expired::Dial(connection_id));
                    let _ = reply.send(Ok(peer_id));
                }
                for reply in self.connects.remove(&peer_id).unwrap_or_default() {
                    let _ = reply.send(Ok(()));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                if let Some(cs) = self.connections.get_mut(&peer_id) {
                    cs.retain(|(c, _)| *c != connection_id);
                    if cs.is_empty() {
                        self.connections.remove(&peer_id);
                        self.rtts.forget(&peer_id);
                        self.forget_peer_reach(&peer_id);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(?peer_id, error = %error, "dial failed");
                if let Some(reply) = self.dials.remove(&connection_id) {
                    self.disarm(Expired::Dial(connection_id));
                    let _ = reply.send(Err(NetError::Dial {
                        addr: peer_id.map(|p| p.to_string()).unwrap_or_default(),
                        reason: error.to_string(),
                    }));
                }
                // A peer we know no address of may hold a reservation on a relay we know:
                // try it through them before giving up.
                if let (Some(peer), libp2p::swarm::DialError::NoAddresses) = (peer_id, &error)
                    && self.connects.contains_key(&peer)
                    && self.dial_through_relays(peer)
                {
                    return;
                }
                if let Some(peer) = peer_id
                    && !self.swarm.is_connected(&peer)
                {
                    for reply in self.connects.remove(&peer).unwrap_or_default() {
                        let _ = reply.send(Err(NetError::Connect {
                            peer,
                            reason: error.to_string(),
                        }));
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            _ => {}
        }
    }
}

/// The Kademlia key of a blob: its binary CID.
pub(crate) fn blob_key(id: &BlobId) -> RecordKey {
    RecordKey::from(id.to_bytes())
}

fn busy_reply<T>(reply: Reply<T>) {
    let _ = reply.send(Err(NetError::Busy("too many pending network queries")));
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Whether the address's host is `0.0.0.0` or `::` (a listen wildcard, not dialable).
fn is_unspecified(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(libp2p::multiaddr::Protocol::Ip4(ip)) => ip.is_unspecified(),
        Some(libp2p::multiaddr::Protocol::Ip6(ip)) => ip.is_unspecified(),
        _ => false,
    }
}

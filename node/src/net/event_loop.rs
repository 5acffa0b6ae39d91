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
//! - at most [`MAX_CONCURRENT_ANNOUNCES`] provider announcements run at once, and none while the
//!   routing table is empty (they would reach no one).
//!
//! Nothing here awaits anything but the `select!`: the loop never blocks on a caller.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::kad::store::RecordStore as _;
use libp2p::kad::{
    self, GetProvidersOk, GetRecordOk, Mode, QueryId, QueryResult, Quorum, Record, RecordKey,
};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify};
use open_registry_protocol::BlobId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::behaviour::{Behaviour, BehaviourEvent, IDENTIFY_VERSION, KAD_PROTOCOL, MAX_IDENTIFY_ADDRS};
use super::client::{Command, FoundRecord, PeersInfo, Reply};
use super::dht_store::ANNOUNCE_RETRY;
use super::{Limits, NetError, RecordValidator, split_peer};

/// Provider announcements (Kademlia ADD_PROVIDER queries) running at once.
pub const MAX_CONCURRENT_ANNOUNCES: usize = 8;

/// How often expired values and provider records are dropped from the store.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// A timer that fired.
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
    reply: Reply<Vec<FoundRecord>>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    validator: Arc<dyn RecordValidator>,
    limits: Limits,
    cancel: CancellationToken,
    connections: HashMap<PeerId, Vec<(ConnectionId, Multiaddr)>>,
    find_providers: HashMap<QueryId, FindProviders>,
    get_records: HashMap<QueryId, GetRecords>,
    bootstraps: HashMap<QueryId, Reply<()>>,
    dials: HashMap<ConnectionId, Reply<PeerId>>,
    connects: HashMap<PeerId, Vec<Reply<()>>>,
    announcing: HashMap<QueryId, RecordKey>,
    timers: FuturesUnordered<BoxFuture<'static, Expired>>,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        validator: Arc<dyn RecordValidator>,
        limits: Limits,
        cancel: CancellationToken,
    ) -> EventLoop {
        EventLoop {
            swarm,
            commands,
            validator,
            limits,
            cancel,
            connections: HashMap::new(),
            find_providers: HashMap::new(),
            get_records: HashMap::new(),
            bootstraps: HashMap::new(),
            dials: HashMap::new(),
            connects: HashMap::new(),
            announcing: HashMap::new(),
            timers: FuturesUnordered::new(),
        }
    }

    /// Dials a configured bootstrap address; failures are logged, not fatal.
    pub(crate) fn dial_bootstrap(&mut self, addr: &Multiaddr) {
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
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    self.on_expired(expired);
                }
                _ = tokio::time::sleep_until(announce_at.unwrap_or_else(far_future)),
                    if announce_at.is_some() => self.announce_due(),
                _ = sweep.tick() => {
                    self.swarm.behaviour_mut().kad.store_mut().sweep(std::time::Instant::now());
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
        let due = self.swarm.behaviour_mut().kad.store_mut().next_due()?;
        if self.swarm.behaviour_mut().routing_table_size() == 0 {
            return None;
        }
        Some(Instant::from_std(due))
    }

    fn announce_due(&mut self) {
        let now = std::time::Instant::now();
        while self.announcing.len() < MAX_CONCURRENT_ANNOUNCES {
            let kad = &mut self.swarm.behaviour_mut().kad;
            let Some(key) = kad.store_mut().pop_due(now) else {
                return;
            };
            match kad.start_providing(key.clone()) {
                Ok(qid) => {
                    self.announcing.insert(qid, key);
                }
                Err(e) => tracing::warn!(error = %e, "cannot announce a blob"),
            }
        }
    }

    // ---- commands ------------------------------------------------------------------------

    fn pending_queries(&self) -> usize {
        self.find_providers.len() + self.get_records.len() + self.bootstraps.len() + self.dials.len()
    }

    fn on_command(&mut self, cmd: Command) {
        let busy = self.pending_queries() >= self.limits.max_pending_queries;
        match cmd {
            Command::Provide { id, reply } => {
                let key = blob_key(&id);
                let r = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .provide(key, std::time::Instant::now())
                    .map_err(|e| NetError::Store(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Unprovide { id, reply } => {
                self.swarm.behaviour_mut().kad.stop_providing(&blob_key(&id));
                let _ = reply.send(Ok(()));
            }
            Command::FindProviders { reply, .. } if busy => busy_reply(reply),
            Command::FindProviders {
                id,
                limit,
                deadline,
                reply,
            } => {
                if limit == 0 {
                    let _ = reply.send(Ok(Vec::new()));
                    return;
                }
                let qid = self.swarm.behaviour_mut().kad.get_providers(blob_key(&id));
                let found = Vec::new();
                self.find_providers
                    .insert(qid, FindProviders { limit, found, reply });
                self.timer(deadline, Expired::Query(qid));
            }
            Command::PutRecord { key, value, reply } => {
                let _ = reply.send(self.put_record(key, value));
            }
            Command::GetRecords { reply, .. } if busy => busy_reply(reply),
            Command::GetRecords {
                key,
                deadline,
                reply,
            } => {
                let qid = self.swarm.behaviour_mut().kad.get_record(RecordKey::from(key));
                let found = Vec::new();
                self.get_records.insert(qid, GetRecords { found, reply });
                self.timer(deadline, Expired::Query(qid));
            }
            Command::Peers { reply } => {
                let _ = reply.send(Ok(self.peers_info()));
            }
            Command::Dial { reply, .. } if busy => busy_reply(reply),
            Command::Dial {
                addr,
                deadline,
                reply,
            } => self.dial(addr, deadline, reply),
            Command::Connect { peer, reply } => self.connect(peer, reply),
            Command::Bootstrap { reply, .. } if busy => busy_reply(reply),
            Command::Bootstrap { deadline, reply } => {
                match self.swarm.behaviour_mut().kad.bootstrap() {
                    Ok(qid) => {
                        self.bootstraps.insert(qid, reply);
                        self.timer(deadline, Expired::Query(qid));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(NetError::Dht("no known peers to bootstrap from".into())));
                    }
                }
            }
        }
    }

    fn put_record(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NetError> {
        if value.len() > self.limits.max_record_bytes {
            return Err(NetError::Store(format!(
                "value of {} bytes exceeds {}",
                value.len(),
                self.limits.max_record_bytes
            )));
        }
        if !self.validator.validate(&key, &value) {
            return Err(NetError::InvalidRecord);
        }
        let record = Record::new(key, value);
        // Stores locally (errors if the store is full), then publishes in the background.
        self.swarm
            .behaviour_mut()
            .kad
            .put_record(record, Quorum::One)
            .map(|_| ())
            .map_err(|e| NetError::Store(e.to_string()))
    }

    fn dial(&mut self, addr: Multiaddr, deadline: Instant, reply: Reply<PeerId>) {
        let opts = match split_peer(&addr) {
            Ok((base, Some(peer))) => DialOpts::peer_id(peer).addresses(vec![base]).build(),
            Ok((base, None)) => DialOpts::unknown_peer_id().address(base).build(),
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let cid = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(cid, reply);
                self.timer(deadline, Expired::Dial(cid));
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Dial {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }));
            }
        }
    }

    /// Answers once `peer` is connected, dialing it with the addresses the behaviours know.
    fn connect(&mut self, peer: PeerId, reply: Reply<()>) {
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            // A dial already under way answers this caller too.
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {
                let waiting = self.connects.entry(peer).or_default();
                // Callers that gave up (deadline) leave closed senders; drop them here.
                waiting.retain(|r| !r.is_closed());
                if waiting.len() >= self.limits.max_pending_queries {
                    busy_reply(reply);
                } else {
                    waiting.push(reply);
                }
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Connect {
                    peer,
                    reason: e.to_string(),
                }));
            }
        }
    }

    fn peers_info(&mut self) -> PeersInfo {
        let behaviour = self.swarm.behaviour_mut();
        let routing_table_size = behaviour.routing_table_size();
        let kad_server = behaviour.kad.mode() == Mode::Server;
        let store = behaviour.kad.store_mut();
        let (records_stored, provider_keys_stored) = store.sizes();
        let provided = store.provided_count();
        let mut connected: Vec<_> = self
            .connections
            .iter()
            .map(|(p, cs)| (*p, cs.iter().map(|(_, a)| a.clone()).collect()))
            .collect();
        connected.sort_by_key(|(p, _)| *p);
        PeersInfo {
            local: *self.swarm.local_peer_id(),
            connected,
            routing_table_size,
            listen: self.swarm.listeners().cloned().collect(),
            external: self.swarm.external_addresses().cloned().collect(),
            kad_server,
            provided,
            records_stored,
            provider_keys_stored,
        }
    }

    fn timer(&mut self, at: Instant, what: Expired) {
        self.timers.push(Box::pin(async move {
            tokio::time::sleep_until(at).await;
            what
        }));
    }

    fn on_expired(&mut self, expired: Expired) {
        match expired {
            Expired::Query(qid) => {
                if let Some(q) = self.swarm.behaviour_mut().kad.query_mut(&qid) {
                    q.finish();
                }
                self.answer_query(qid);
                if let Some(reply) = self.bootstraps.remove(&qid) {
                    let _ = reply.send(Err(NetError::Dht("bootstrap did not finish in time".into())));
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
        if let Some(p) = self.find_providers.remove(&qid) {
            let _ = p.reply.send(Ok(p.found));
        }
        if let Some(g) = self.get_records.remove(&qid) {
            let _ = g.reply.send(Ok(g.found));
        }
    }

    // ---- swarm events --------------------------------------------------------------------

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                // Only our network's servers go into the routing table: not IPFS nodes, not
                // clients (which would be asked and never answer).
                if info.protocol_version == IDENTIFY_VERSION && info.protocols.contains(&KAD_PROTOCOL) {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    for addr in info.listen_addrs.into_iter().take(MAX_IDENTIFY_ADDRS) {
                        kad.add_address(&peer_id, addr);
                    }
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
                    let _ = reply.send(Err(NetError::Dial {
                        addr: peer_id.map(|p| p.to_string()).unwrap_or_default(),
                        reason: error.to_string(),
                    }));
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

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, stats, ..
            } => {
                match result {
                    QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders {
                        providers,
                        ..
                    })) => self.found_providers(id, providers),
                    QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(r))) => {
                        self.found_record(id, r)
                    }
                    QueryResult::Bootstrap(r) => {
                        if (step.last || r.is_err())
                            && let Some(reply) = self.bootstraps.remove(&id)
                        {
                            let _ = reply.send(r.map(|_| ()).map_err(|e| NetError::Dht(e.to_string())));
                        }
                    }
                    QueryResult::StartProviding(r) => {
                        if let Some(key) = self.announcing.remove(&id) {
                            tracing::debug!(ok = r.is_ok(), peers = stats.num_successes(), "announced a blob");
                            let store = self.swarm.behaviour_mut().kad.store_mut();
                            if stats.num_successes() == 0 && store.is_provided(&key) {
                                store.schedule(key, std::time::Instant::now() + ANNOUNCE_RETRY);
                            }
                        }
                    }
                    QueryResult::PutRecord(r) => {
                        tracing::debug!(ok = r.is_ok(), peers = stats.num_successes(), "published a record");
                    }
                    _ => {}
                }
                if step.last {
                    self.answer_query(id);
                }
            }
            kad::Event::InboundRequest { request } => match request {
                kad::InboundRequest::PutRecord {
                    source,
                    record: Some(record),
                    ..
                } => self.accept_record(source, record),
                kad::InboundRequest::AddProvider {
                    record: Some(record),
                } => self.accept_provider(record),
                _ => {}
            },
            _ => {}
        }
    }

    fn found_providers(&mut self, qid: QueryId, providers: HashSet<PeerId>) {
        let local = *self.swarm.local_peer_id();
        let Some(p) = self.find_providers.get_mut(&qid) else {
            return;
        };
        for peer in providers {
            if peer == local || p.found.contains(&peer) || p.found.len() >= p.limit {
                continue;
            }
            p.found.push(peer);
            // The query holds the provider's addresses only while it runs: dial now.
            if !self.swarm.is_connected(&peer) {
                let opts = DialOpts::peer_id(peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
        if p.found.len() >= p.limit {
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&qid) {
                q.finish();
            }
            self.answer_query(qid);
        }
    }

    fn found_record(&mut self, qid: QueryId, r: kad::PeerRecord) {
        let local = *self.swarm.local_peer_id();
        let Some(g) = self.get_records.get_mut(&qid) else {
            return;
        };
        let kad::Record {
            key,
            value,
            publisher,
            ..
        } = r.record;
        if g.found.iter().any(|f| f.value == value)
            || value.len() > self.limits.max_record_bytes
            || !self.validator.validate(key.as_ref(), &value)
        {
            return;
        }
        g.found.push(FoundRecord {
            from: r.peer.unwrap_or(local),
            publisher,
            value,
        });
    }

    /// A value a peer pushed to us: stored only if valid and, replacing one, newer.
    fn accept_record(&mut self, source: PeerId, record: Record) {
        let valid = record.value.len() <= self.limits.max_record_bytes
            && self.validator.validate(record.key.as_ref(), &record.value);
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let replaces = match store.get(&record.key) {
            Some(old) => self.validator.replaces(record.key.as_ref(), &old.value, &record.value),
            None => true,
        };
        if !valid || !replaces {
            tracing::debug!(%source, valid, "record from peer not stored");
            return;
        }
        if let Err(e) = store.put(record) {
            tracing::debug!(%source, error = %e, "record from peer not stored");
        }
    }

    /// A provider record a peer pushed to us: stored only for keys that are blob CIDs.
    fn accept_provider(&mut self, record: kad::ProviderRecord) {
        if BlobId::from_bytes(record.key.as_ref()).is_err() {
            tracing::debug!(provider = %record.provider, "provider record for a non-blob key");
            return;
        }
        let provider = record.provider;
        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().add_provider(record) {
            tracing::debug!(%provider, error = %e, "provider record not stored");
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

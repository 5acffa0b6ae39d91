//! The swarm task's side of each [`Command`]: start the query, or answer from local state.
//!
//! A command never waits: it starts a query or dial and parks its reply in a pending map
//! (bounded by `max_pending_queries`), or answers at once.

use libp2p::kad::{Mode, Record, RecordKey};
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use super::{EventLoop, Expired, FindProviders, GetRecords, blob_key, busy_reply};
use crate::net::client::{Command, OwnValue, PeersInfo, Reply};
use crate::net::{NetError, RECORD_TTL, split_peer};

impl EventLoop {
    fn pending_queries(&self) -> usize {
        self.find_providers.len()
            + self.get_records.len()
            + self.bootstraps.len()
            + self.dials.len()
    }

    pub(super) fn on_command(&mut self, cmd: Command) {
        let busy = self.pending_queries() >= self.limits.max_pending_queries;
        match cmd {
            Command::Provide { ids, fresh, reply } => {
                let store = self.swarm.behaviour_mut().kad.store_mut();
                let now = std::time::Instant::now();
                let r = ids
                    .iter()
                    .try_for_each(|id| match fresh {
                        true => store.provide_fresh(blob_key(id), now),
                        false => store.provide(blob_key(id), now),
                    })
                    .map_err(|e| NetError::Store(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Unprovide { id, reply } => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .stop_providing(&blob_key(&id));
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
                self.find_providers.insert(
                    qid,
                    FindProviders {
                        limit,
                        found,
                        reply,
                    },
                );
                self.timer(deadline, Expired::Query(qid));
            }
            Command::PutRecord {
                values,
                fresh,
                reply,
            } => {
                let r = values
                    .into_iter()
                    .try_for_each(|v| self.put_record(v, fresh));
                let _ = reply.send(r);
            }
            Command::GetRecords { reply, .. } if busy => busy_reply(reply),
            Command::GetRecords {
                key,
                deadline,
                first,
                reply,
            } => {
                let qid = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_record(RecordKey::from(key));
                let found = Vec::new();
                self.get_records.insert(
                    qid,
                    GetRecords {
                        found,
                        first,
                        reply,
                    },
                );
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
            Command::Subscribe { topic, reply } => {
                let t = crate::net::gossip::topic(&topic);
                let r = match self.swarm.behaviour_mut().gossip.subscribe(&t) {
                    Ok(_) => {
                        let (tx, rx) =
                            tokio::sync::mpsc::channel(crate::net::gossip::SUBSCRIBER_QUEUE);
                        self.subscribers.insert(t.hash(), tx);
                        Ok(rx)
                    }
                    Err(e) => Err(NetError::Gossip(e.to_string())),
                };
                let _ = reply.send(r);
            }
            Command::Publish { topic, data, reply } => {
                let t = crate::net::gossip::topic(&topic);
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .publish(t, data)
                    .map(drop)
                    .map_err(crate::net::gossip::publish_error);
                let _ = reply.send(r);
            }
            Command::Bootstrap { reply, .. } if busy => busy_reply(reply),
            Command::Bootstrap { deadline, reply } => {
                match self.swarm.behaviour_mut().kad.bootstrap() {
                    Ok(qid) => {
                        self.bootstraps.insert(qid, reply);
                        self.timer(deadline, Expired::Query(qid));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(NetError::Dht(
                            "no known peers to bootstrap from".into(),
                        )));
                    }
                }
            }
        }
    }

    /// Stores one of our values and queues its `PUT_VALUE` on the announcement schedule.
    fn put_record(&mut self, v: OwnValue, fresh: bool) -> Result<(), NetError> {
        if v.value.len() > self.limits.max_record_bytes {
            return Err(NetError::Store(format!(
                "value of {} bytes exceeds {}",
                v.value.len(),
                self.limits.max_record_bytes
            )));
        }
        if !self.validator.validate(&v.key, &v.value) {
            return Err(NetError::InvalidRecord);
        }
        let now = std::time::Instant::now();
        let until = now + v.lives.min(RECORD_TTL);
        self.swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .publish(Record::new(v.key, v.value), until, now, fresh)
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
        let dialed = match self.swarm.dial(opts) {
            // No address known: the peer may be reachable through a relay we know.
            Err(DialError::NoAddresses) if self.dial_through_relays(peer) => Ok(()),
            other => other,
        };
        match dialed {
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
        let relay_enabled = behaviour.relay.is_enabled();
        let any_external = self.swarm.external_addresses().next().is_some();
        let relay_offered = self.reach.relay_offered(relay_enabled, any_external);
        let behaviour = self.swarm.behaviour_mut();
        let store = behaviour.kad.store_mut();
        let (records_stored, provider_keys_stored) = store.sizes();
        let provided = store.provided_count();
        let published = store.published_count();
        let announcer = store.pacer_status();
        let mut connected: Vec<_> = self
            .connections
            .iter()
            .map(|(p, cs)| (*p, cs.iter().map(|(_, a)| a.clone()).collect()))
            .collect();
        connected.sort_by_key(|(p, _)| *p);
        let dcutr = connected
            .iter()
            .filter_map(|(p, _)| self.reach.dcutr(p).map(|u| (*p, u)))
            .collect();
        PeersInfo {
            local: *self.swarm.local_peer_id(),
            connected,
            routing_table_size,
            listen: self.swarm.listeners().cloned().collect(),
            external: self.swarm.external_addresses().cloned().collect(),
            kad_server,
            reachability: self.reach.verdict(),
            relays: self.reach.relays_reserved(),
            relay_offered,
            dcutr,
            provided,
            published,
            announcer,
            records_stored,
            provider_keys_stored,
        }
    }
}

//! The swarm task's handling of Kademlia events: query progress, and what peers push to us.
//!
//! Inbound values pass the [`RecordValidator`](crate::net::RecordValidator) (and, replacing a
//! value we hold, its `replaces`); inbound provider records must be for a blob CID (package
//! provider keys are CID-shaped). Nothing else enters the store (`StoreInserts::FilterBoth`).
//! Every query's outbound requests are counted (`dht_messages_sent`).

use std::collections::HashSet;

use libp2p::PeerId;
use libp2p::kad::store::RecordStore as _;
use libp2p::kad::{self, GetProvidersOk, GetRecordOk, QueryId, QueryResult, Record};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use open_registry_protocol::BlobId;

use super::{EventLoop, Expired};
use crate::metrics::Metrics;
use crate::net::NetError;
use crate::net::client::FoundRecord;
use crate::net::dht_store::ANNOUNCE_RETRY;

impl EventLoop {
    pub(super) fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
                ..
            } => {
                // A lookup's last step carries its whole statistics (they accumulate over steps).
                if step.last
                    && matches!(
                        result,
                        QueryResult::GetProviders(_) | QueryResult::GetRecord(_)
                    )
                {
                    self.count_lookup(&stats);
                }
                self.count_messages(&result, step.last, &stats);
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
                            self.disarm(Expired::Query(id));
                            let _ =
                                reply.send(r.map(|_| ()).map_err(|e| NetError::Dht(e.to_string())));
                        }
                    }
                    QueryResult::StartProviding(_) | QueryResult::PutRecord(_) => {
                        if let Some((kind, key, charged)) = self.announcing.remove(&id) {
                            tracing::debug!(
                                ?kind,
                                peers = stats.num_successes(),
                                messages = stats.num_requests(),
                                "announced a key"
                            );
                            let now = std::time::Instant::now();
                            let store = self.swarm.behaviour_mut().kad.store_mut();
                            store.announced(charged, stats.num_requests(), now);
                            if stats.num_successes() == 0 {
                                store.retry(kind, key, now + ANNOUNCE_RETRY);
                            }
                        }
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

    /// Counts a finished lookup (providers of a blob, or values under a key): one query, the
    /// requests it sent, how many peers answered, how long it took. Queries that we finish
    /// early (enough providers, or our deadline) end with such a last step too, once.
    fn count_lookup(&self, stats: &kad::QueryStats) {
        let Some(m) = &self.metrics else {
            return;
        };
        Metrics::inc(&m.dht_queries);
        Metrics::add(&m.dht_requests, u64::from(stats.num_requests()));
        Metrics::add(&m.dht_request_successes, u64::from(stats.num_successes()));
        let micros = stats.duration().map_or(0, |d| d.as_micros());
        Metrics::add(
            &m.dht_query_micros,
            u64::try_from(micros).unwrap_or(u64::MAX),
        );
    }

    /// Counts the requests a query sent (`dht_messages_sent`), once per query: at its last
    /// step for the queries whose statistics accumulate over steps (lookups, announcements,
    /// puts: an announcement's include its ADD_PROVIDER messages), at every step for a
    /// bootstrap, each of whose steps is a query of its own with its own statistics.
    fn count_messages(&self, result: &QueryResult, last: bool, stats: &kad::QueryStats) {
        let Some(m) = &self.metrics else {
            return;
        };
        if last || matches!(result, QueryResult::Bootstrap(_)) {
            Metrics::add(&m.dht_messages_sent, u64::from(stats.num_requests()));
        }
        if last
            && matches!(
                result,
                QueryResult::StartProviding(_) | QueryResult::PutRecord(_)
            )
        {
            Metrics::add(&m.dht_announce_messages, u64::from(stats.num_requests()));
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
        let remote = r.peer.is_some_and(|p| p != local);
        g.found.push(FoundRecord {
            from: r.peer.unwrap_or(local),
            publisher,
            value,
        });
        if g.first && remote {
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&qid) {
                q.finish();
            }
            self.answer_query(qid);
        }
    }

    /// A value a peer pushed to us: stored only if valid and, replacing one, newer.
    fn accept_record(&mut self, source: PeerId, record: Record) {
        let valid = record.value.len() <= self.limits.max_record_bytes
            && self.validator.validate(record.key.as_ref(), &record.value);
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let replaces = match store.get(&record.key) {
            Some(old) => self
                .validator
                .replaces(record.key.as_ref(), &old.value, &record.value),
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

    /// A provider record a peer pushed to us: stored only for keys that are blob CIDs (package
    /// provider keys are shaped as one).
    fn accept_provider(&mut self, record: kad::ProviderRecord) {
        if BlobId::from_bytes(record.key.as_ref()).is_err() {
            tracing::debug!(provider = %record.provider, "provider record for a non-blob key");
            return;
        }
        let provider = record.provider;
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .add_provider(record)
        {
            tracing::debug!(%provider, error = %e, "provider record not stored");
        }
    }
}

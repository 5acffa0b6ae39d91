//! The Kademlia record store: other peers' values and provider records, the keys we announce
//! ourselves (one per package held) and the values we publish ourselves (signed pointers,
//! advisories), with one announcement schedule for both.
//!
//! Replaces libp2p's `MemoryStore`, whose defaults are far too small for a registry (1024
//! records, 1024 provided keys) and which reserves room for 20 providers inline in every key
//! (~3 KiB per announced blob). Everything here is bounded by [`Limits`]: others' values by
//! count and every value by size, others' providers by key count and per key (keeping the ones
//! closest to the key, as Kademlia does, so a sybil must grind ids to crowd out honest
//! providers: R15), and the keys we provide by count. Our own values are bounded by what we
//! sign (one pointer per package mirrored), not by the count kept for others.
//!
//! We announce on our own schedule, not with Kademlia's republish and replication jobs (which
//! copy every provided key and every stored value at once, at no bounded rate): each provided
//! key and each value we publish has a due time; the swarm task pops due entries, a few at a
//! time and only as fast as the pacer's message budget allows, and pushes each back one cycle
//! later ([`REANNOUNCE_INTERVAL`], stretched when the budget cannot carry every entry in that
//! time). A value is republished only while it lives (a pointer until its record expires).
//! Entries come in two queues: **fresh** ones (a package just stored, a pointer just signed)
//! go out first, in order; the **schedule** (a min-heap by due time) holds the rest, among
//! them everything a start restores, so a node that restarts with 100,000 packages still
//! announces a new one within seconds rather than after the days its backlog takes. An
//! entry is live only while its due time equals the key's current one; `unprovide` just
//! forgets the key and the stale entry is skipped when popped.
//!
//! Filtering happens before anything reaches this store (`StoreInserts::FilterBoth`): the
//! swarm task validates inbound values and provider records, then calls `put`/`add_provider`.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque, hash_map};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{KBucketKey, ProviderRecord, Record, RecordKey};

use super::Limits;
use super::pacer::{Pacer, PacerStatus};

/// How long a provider record we store for others lives without being re-announced: 14 days.
/// Above twice the longest cycle we plan for (100,000 packages at the default rate: about
/// 5.8 days, see `net::pacer`), so a record survives one missed announcement at that size.
pub const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(14 * 86_400);

/// The shortest re-announcement cycle: a node with few keys re-announces each every 12 h. A
/// node whose keys the message budget cannot carry in 12 h stretches its cycle instead
/// (`net::pacer`).
pub const REANNOUNCE_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// When an announcement reached no peer, how soon it is tried again.
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(5 * 60);

/// Addresses kept per stored provider record.
pub const MAX_PROVIDER_ADDRS: usize = 8;

/// What an announcement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// `ADD_PROVIDER`: we provide the key.
    Provide,
    /// `PUT_VALUE`: the value we publish under the key.
    Put,
}

/// A queue entry: when `key` is next due, and for what. Ordered by time, then kind, then key.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due(Instant, Kind, Vec<u8>);

/// A value we publish: when it is next due, and when it stops living (not republished after).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Published {
    due: Instant,
    until: Instant,
}

pub(crate) struct DhtStore {
    local: PeerId,
    limits: Limits,
    records: HashMap<RecordKey, Record>,
    providers: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// Ids we provide, and when each is next due for announcement.
    provided: HashMap<RecordKey, Instant>,
    /// Keys of the values we publish (held in `records`).
    published: HashMap<RecordKey, Published>,
    /// Entries to announce before the schedule, oldest first.
    fresh: VecDeque<Due>,
    schedule: BinaryHeap<Reverse<Due>>,
    /// The message budget of announcements.
    pacer: Pacer,
}

impl DhtStore {
    pub(crate) fn new(local: PeerId, limits: Limits) -> DhtStore {
        let pacer = Pacer::new(limits.announce_rate, Instant::now());
        DhtStore {
            local,
            limits,
            records: HashMap::new(),
            providers: HashMap::new(),
            provided: HashMap::new(),
            published: HashMap::new(),
            fresh: VecDeque::new(),
            schedule: BinaryHeap::new(),
            pacer,
        }
    }

    /// Starts providing `key`: answerable at once, announced when the schedule reaches it
    /// (after what is already due: a start's whole set goes this way).
    pub(crate) fn provide(&mut self, key: RecordKey, now: Instant) -> Result<()> {
        self.provide_as(key, now, false)
    }

    /// Starts providing `key` and announces it before anything the schedule holds (a package
    /// just stored). Nothing changes for a key already provided.
    pub(crate) fn provide_fresh(&mut self, key: RecordKey, now: Instant) -> Result<()> {
        self.provide_as(key, now, true)
    }

    fn provide_as(&mut self, key: RecordKey, now: Instant, fresh: bool) -> Result<()> {
        if self.provided.contains_key(&key) {
            return Ok(());
        }
        if self.provided.len() >= self.limits.max_provided_keys {
            return Err(Error::MaxProvidedKeys);
        }
        self.queue(Kind::Provide, key.to_vec(), now, fresh);
        self.provided.insert(key, now);
        Ok(())
    }

    /// How many ids we provide.
    pub(crate) fn provided_count(&self) -> usize {
        self.provided.len()
    }

    /// How many values we publish.
    pub(crate) fn published_count(&self) -> usize {
        self.published.len()
    }

    /// Stores `record` as a value we publish, living until `until`, and queues its first
    /// `PUT_VALUE` (`fresh`: before the schedule). A newer value under the same key replaces
    /// the older one and its place in the queues. Errors as [`RecordStore::put`].
    pub(crate) fn publish(
        &mut self,
        mut record: Record,
        until: Instant,
        now: Instant,
        fresh: bool,
    ) -> Result<()> {
        record.expires = Some(until);
        record.publisher = Some(self.local);
        if record.value.len() > self.limits.max_record_bytes {
            return Err(Error::ValueTooLarge);
        }
        let key = record.key.clone();
        // Our own values do not count against `max_records`: they are bounded by what this
        // node signs (one pointer per package it mirrors), and a big mirror signs more than
        // the cap it keeps for others.
        self.records.insert(key.clone(), record);
        self.queue(Kind::Put, key.to_vec(), now, fresh);
        self.published.insert(key, Published { due: now, until });
        Ok(())
    }

    /// The value we publish under `key`, to send.
    pub(crate) fn own_value(&self, key: &RecordKey) -> Option<Record> {
        self.published.get(key)?;
        self.records.get(key).cloned()
    }

    /// (Re)schedules the announcement of a provided `key` at `at`.
    pub(crate) fn schedule(&mut self, key: RecordKey, at: Instant) {
        self.queue(Kind::Provide, key.to_vec(), at, false);
        self.provided.insert(key, at);
    }

    /// After an announcement of `kind` reached no peer: tries `key` again at `at`, if it is
    /// still ours.
    pub(crate) fn retry(&mut self, kind: Kind, key: RecordKey, at: Instant) {
        match kind {
            Kind::Provide if self.provided.contains_key(&key) => self.schedule(key, at),
            Kind::Provide => {}
            Kind::Put => self.republish_at(&key, at),
        }
    }

    fn queue(&mut self, kind: Kind, key: Vec<u8>, at: Instant, fresh: bool) {
        let due = Due(at, kind, key);
        if fresh {
            self.fresh.push_back(due);
        } else {
            self.schedule.push(Reverse(due));
        }
    }

    /// Whether a queue entry is the key's current one.
    fn live(&self, Due(at, kind, key): &Due) -> bool {
        match kind {
            Kind::Provide => self.provided.get(key.as_slice()) == Some(at),
            Kind::Put => self.published.get(key.as_slice()).map(|p| p.due) == Some(*at),
        }
    }

    /// The earliest time an announcement may start: when one is due (stale entries may make
    /// it early; popping then drops them, which is harmless) and the budget holds one.
    pub(crate) fn next_due(&self, now: Instant) -> Option<Instant> {
        let due = match self.fresh.front() {
            Some(Due(at, ..)) => *at,
            None => self.schedule.peek().map(|Reverse(Due(at, ..))| *at)?,
        };
        Some(due.max(self.pacer.ready_at(now)))
    }

    /// Pops one entry due by `now` if the budget holds an announcement, fresh ones first,
    /// and schedules its next announcement one cycle later (a value: only if it still lives
    /// then). Returns what to announce and the messages charged for it, to be settled with
    /// [`DhtStore::announced`] when the query finishes.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Kind, RecordKey, f64)> {
        loop {
            let from_fresh = match (self.fresh.front(), self.schedule.peek()) {
                (Some(d), _) if d.0 <= now => true,
                (_, Some(Reverse(d))) if d.0 <= now => false,
                _ => return None,
            };
            let live = if from_fresh {
                self.fresh.front().is_some_and(|d| self.live(d))
            } else {
                self.schedule.peek().is_some_and(|Reverse(d)| self.live(d))
            };
            if !live {
                if from_fresh {
                    self.fresh.pop_front();
                } else {
                    self.schedule.pop();
                }
                continue;
            }
            let charged = self.pacer.try_take(now)?;
            let Due(_, kind, key) = if from_fresh {
                self.fresh.pop_front()?
            } else {
                self.schedule.pop()?.0
            };
            let key = RecordKey::from(key);
            let next = now + self.pacer.cycle(self.provided.len() + self.published.len());
            match kind {
                Kind::Provide => self.schedule(key.clone(), next),
                Kind::Put => self.republish_at(&key, next),
            }
            return Some((kind, key, charged));
        }
    }

    /// Moves a published value's next `PUT_VALUE` to `at`, or stops republishing it when it no
    /// longer lives then (the stored copy expires by itself).
    fn republish_at(&mut self, key: &RecordKey, at: Instant) {
        let Some(p) = self.published.get_mut(key) else {
            return;
        };
        if at >= p.until {
            self.published.remove(key);
            return;
        }
        p.due = at;
        self.schedule
            .push(Reverse(Due(at, Kind::Put, key.to_vec())));
    }

    /// Settles a finished announcement charged `charged` that sent `sent` messages.
    pub(crate) fn announced(&mut self, charged: f64, sent: u32, now: Instant) {
        self.pacer.settle(charged, sent, now);
    }

    /// The announcer's budget, cost estimate and cycle.
    pub(crate) fn pacer_status(&self) -> PacerStatus {
        self.pacer
            .status(self.provided.len() + self.published.len())
    }

    /// The number of stored values and of ids with stored providers (for status output).
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.records.len(), self.providers.len())
    }

    /// Drops expired values and provider records (Kademlia only drops them when touched).
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.records.retain(|_, r| !r.is_expired(now));
        self.published.retain(|_, p| p.until > now);
        self.providers.retain(|_, ps| {
            ps.retain(|p| !p.is_expired(now));
            !ps.is_empty()
        });
    }

    fn local_record(&self, key: &RecordKey) -> ProviderRecord {
        // No addresses: Kademlia fills in our listen and external addresses when answering.
        ProviderRecord::new(key.clone(), self.local, Vec::new())
    }
}

impl RecordStore for DhtStore {
    type RecordsIter<'a> =
        std::iter::Map<hash_map::Values<'a, RecordKey, Record>, fn(&'a Record) -> Cow<'a, Record>>;
    type ProvidedIter<'a> = Box<dyn Iterator<Item = Cow<'a, ProviderRecord>> + 'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.records.get(k).map(Cow::Borrowed)
    }

    fn put(&mut self, r: Record) -> Result<()> {
        if r.value.len() > self.limits.max_record_bytes {
            return Err(Error::ValueTooLarge);
        }
        // Others' values only: ours are kept whatever their number (`publish`). One of ours
        // in its last cycle (no longer republished, not yet expired) counts as another's.
        let full =
            self.records.len().saturating_sub(self.published.len()) >= self.limits.max_records;
        match self.records.entry(r.key.clone()) {
            hash_map::Entry::Occupied(mut e) => {
                e.insert(r);
            }
            hash_map::Entry::Vacant(_) if full => return Err(Error::MaxRecords),
            hash_map::Entry::Vacant(e) => {
                e.insert(r);
            }
        }
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        self.records.remove(k);
        self.published.remove(k);
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.records.values().map(Cow::Borrowed)
    }

    fn add_provider(&mut self, mut record: ProviderRecord) -> Result<()> {
        if record.provider == self.local {
            return self.provide(record.key, Instant::now());
        }
        record.addresses.truncate(MAX_PROVIDER_ADDRS);
        let keys = self.providers.len();
        let providers = match self.providers.entry(record.key.clone()) {
            hash_map::Entry::Occupied(e) => e.into_mut(),
            hash_map::Entry::Vacant(_) if keys >= self.limits.max_provider_keys => {
                return Err(Error::MaxProvidedKeys);
            }
            hash_map::Entry::Vacant(e) => e.insert(Vec::new()),
        };
        if let Some(p) = providers.iter_mut().find(|p| p.provider == record.provider) {
            *p = record;
            return Ok(());
        }
        if providers.len() < self.limits.max_providers_per_key {
            providers.push(record);
            return Ok(());
        }
        // Full: the new provider replaces the farthest one from the key, if it is closer.
        let target = KBucketKey::new(record.key.clone());
        let distance = |p: &PeerId| KBucketKey::from(*p).distance(&target);
        let new = distance(&record.provider);
        if let Some((i, far)) = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (i, distance(&p.provider)))
            .max_by_key(|(_, d)| *d)
            && new < far
        {
            providers[i] = record;
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let mut out = self.providers.get(key).cloned().unwrap_or_default();
        if self.provided.contains_key(key) {
            out.insert(0, self.local_record(key));
        }
        out
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        Box::new(
            self.provided
                .keys()
                .map(|k| Cow::Owned(self.local_record(k))),
        )
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        if *p == self.local {
            // The heap entry goes stale and is skipped when popped.
            self.provided.remove(k);
            return;
        }
        if let hash_map::Entry::Occupied(mut e) = self.providers.entry(k.clone()) {
            e.get_mut().retain(|r| r.provider != *p);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests;

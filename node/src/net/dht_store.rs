//! The Kademlia record store: other peers' values and provider records, and the blob ids we
//! announce ourselves with their announcement schedule.
//!
//! Replaces libp2p's `MemoryStore`, whose defaults are far too small for a registry (1024
//! records, 1024 provided keys) and which reserves room for 20 providers inline in every key
//! (~3 KiB per announced blob). Everything here is bounded by [`Limits`]:
//! values by count and size, others' providers by key count and per key (keeping the ones
//! closest to the key, as Kademlia does, so a sybil must grind ids to crowd out honest
//! providers: R15), and the ids we provide by count.
//!
//! We announce on our own schedule, not with Kademlia's republish job (which copies every
//! provided record at once): each provided id has a due time in a min-heap; the swarm task pops
//! due ids, a few at a time, and pushes them back [`REANNOUNCE_INTERVAL`] later. A heap entry
//! is live only while its due time equals the id's current one; `unprovide` just forgets the
//! id and the stale entry is skipped when popped.
//!
//! Filtering happens before anything reaches this store (`StoreInserts::FilterBoth`): the
//! swarm task validates inbound values and provider records, then calls `put`/`add_provider`.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, hash_map};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{KBucketKey, ProviderRecord, Record, RecordKey};

use super::Limits;

/// How long a provider record we store for others lives without being re-announced.
pub const PROVIDER_RECORD_TTL: Duration = Duration::from_secs(48 * 3600);

/// How often we re-announce each blob we provide: a quarter of [`PROVIDER_RECORD_TTL`], so our
/// records on other peers survive three missed announcements.
pub const REANNOUNCE_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// When an announcement reached no peer, how soon it is tried again.
pub const ANNOUNCE_RETRY: Duration = Duration::from_secs(5 * 60);

/// Addresses kept per stored provider record.
pub const MAX_PROVIDER_ADDRS: usize = 8;

/// A heap entry: when `key` is next due. Ordered by time, then key bytes.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due(Instant, Vec<u8>);

pub(crate) struct DhtStore {
    local: PeerId,
    limits: Limits,
    records: HashMap<RecordKey, Record>,
    providers: HashMap<RecordKey, Vec<ProviderRecord>>,
    /// Ids we provide, and when each is next due for announcement.
    provided: HashMap<RecordKey, Instant>,
    schedule: BinaryHeap<Reverse<Due>>,
}

impl DhtStore {
    pub(crate) fn new(local: PeerId, limits: Limits) -> DhtStore {
        DhtStore {
            local,
            limits,
            records: HashMap::new(),
            providers: HashMap::new(),
            provided: HashMap::new(),
            schedule: BinaryHeap::new(),
        }
    }

    /// Starts providing `key`: answerable at once, announced at the next chance.
    pub(crate) fn provide(&mut self, key: RecordKey, now: Instant) -> Result<()> {
        if self.provided.contains_key(&key) {
            return Ok(());
        }
        if self.provided.len() >= self.limits.max_provided_keys {
            return Err(Error::MaxProvidedKeys);
        }
        self.schedule(key, now);
        Ok(())
    }

    /// Whether we provide `key`.
    pub(crate) fn is_provided(&self, key: &RecordKey) -> bool {
        self.provided.contains_key(key)
    }

    /// How many ids we provide.
    pub(crate) fn provided_count(&self) -> usize {
        self.provided.len()
    }

    /// (Re)schedules the announcement of a provided `key` at `at`.
    pub(crate) fn schedule(&mut self, key: RecordKey, at: Instant) {
        self.schedule.push(Reverse(Due(at, key.to_vec())));
        self.provided.insert(key, at);
    }

    /// The earliest time an announcement is due (stale heap entries may make it early; popping
    /// then finds nothing, which is harmless).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.schedule.peek().map(|Reverse(Due(at, _))| *at)
    }

    /// Pops one id due by `now`, and schedules its next announcement.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<RecordKey> {
        while let Some(Reverse(Due(at, _))) = self.schedule.peek() {
            if *at > now {
                return None;
            }
            let Reverse(Due(at, key)) = self.schedule.pop()?;
            let key = RecordKey::from(key);
            if self.provided.get(&key) == Some(&at) {
                self.schedule(key.clone(), now + REANNOUNCE_INTERVAL);
                return Some(key);
            }
        }
        None
    }

    /// The number of stored values and of ids with stored providers (for status output).
    pub(crate) fn sizes(&self) -> (usize, usize) {
        (self.records.len(), self.providers.len())
    }

    /// Drops expired values and provider records (Kademlia only drops them when touched).
    pub(crate) fn sweep(&mut self, now: Instant) {
        self.records.retain(|_, r| !r.is_expired(now));
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
        let full = self.records.len() >= self.limits.max_records;
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
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_records: 2,
            max_record_bytes: 10,
            max_provider_keys: 2,
            max_providers_per_key: 3,
            max_provided_keys: 2,
            ..Limits::default()
        }
    }

    #[test]
    fn values_are_bounded() {
        let mut s = DhtStore::new(PeerId::random(), limits());
        assert!(matches!(
            s.put(Record::new(b"a".to_vec(), vec![0; 11])),
            Err(Error::ValueTooLarge)
        ));
        s.put(Record::new(b"a".to_vec(), vec![1])).unwrap();
        s.put(Record::new(b"b".to_vec(), vec![1])).unwrap();
        assert!(matches!(
            s.put(Record::new(b"c".to_vec(), vec![1])),
            Err(Error::MaxRecords)
        ));
        // Replacing an existing key is fine when full.
        s.put(Record::new(b"a".to_vec(), vec![2])).unwrap();
        assert_eq!(s.get(&RecordKey::new(b"a")).unwrap().value, vec![2]);
    }

    #[test]
    fn providers_are_bounded_and_closest_win() {
        let mut s = DhtStore::new(PeerId::random(), limits());
        let key = RecordKey::new(b"k");
        let target = KBucketKey::new(key.clone());
        let mut peers: Vec<PeerId> = (0..20).map(|_| PeerId::random()).collect();
        for p in &peers {
            s.add_provider(ProviderRecord::new(key.clone(), *p, vec![]))
                .unwrap();
        }
        peers.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
        let mut kept: Vec<PeerId> = s.providers(&key).iter().map(|r| r.provider).collect();
        kept.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
        assert_eq!(kept, peers[..3]);
        s.add_provider(ProviderRecord::new(RecordKey::new(b"k2"), peers[0], vec![]))
            .unwrap();
        assert!(matches!(
            s.add_provider(ProviderRecord::new(RecordKey::new(b"k3"), peers[0], vec![])),
            Err(Error::MaxProvidedKeys)
        ));
        s.remove_provider(&key, &kept[0]);
        assert_eq!(s.providers(&key).len(), 2);
    }

    #[test]
    fn announcements_follow_the_schedule() {
        let me = PeerId::random();
        let mut s = DhtStore::new(me, limits());
        let t0 = Instant::now();
        let a = RecordKey::new(b"a");
        s.provide(a.clone(), t0).unwrap();
        s.provide(a.clone(), t0).unwrap(); // idempotent
        assert_eq!(s.providers(&a)[0].provider, me);
        assert_eq!(s.pop_due(t0), Some(a.clone()));
        assert_eq!(s.pop_due(t0), None);
        assert_eq!(s.next_due(), Some(t0 + REANNOUNCE_INTERVAL));
        // Unprovide then provide again: one live entry, announced once.
        s.remove_provider(&a, &me);
        assert!(s.providers(&a).is_empty());
        let t1 = t0 + Duration::from_secs(1);
        s.provide(a.clone(), t1).unwrap();
        let late = t0 + 2 * REANNOUNCE_INTERVAL;
        assert_eq!(s.pop_due(late), Some(a.clone()));
        assert_eq!(s.pop_due(late), None);
        // Bounded.
        s.provide(RecordKey::new(b"b"), t0).unwrap();
        assert!(s.provide(RecordKey::new(b"c"), t0).is_err());
        assert_eq!(s.provided().count(), 2);
    }
}

//! The Kademlia record store: other peers' values and provider records, the keys we announce
//! ourselves (one per package held) and the values we publish ourselves (signed pointers,
//! advisories), with one announcement schedule for both.
//!
//! Replaces libp2p's `MemoryStore`, whose defaults are far too small for a registry (1024
//! records, 1024 provided keys) and which reserves room for 20 providers inline in every key
//! (~3 KiB per announced blob). Everything here is bounded by [`Limits`]:
//! values by count and size, others' providers by key count and per key (keeping the ones
//! closest to the key, as Kademlia does, so a sybil must grind ids to crowd out honest
//! providers: R15), and the keys we provide by count.
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
        let key = record.key.clone();
        self.put(record)?;
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
            Kind::Put => {
                if let Some(p) = self.published.get_mut(&key)
                    && at < p.until
                {
                    p.due = at;
                    self.schedule
                        .push(Reverse(Due(at, Kind::Put, key.to_vec())));
                }
            }
            Kind::Provide => {}
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
        assert_eq!(s.pop_due(t0).map(|(_, k, _)| k), Some(a.clone()));
        assert_eq!(s.pop_due(t0), None);
        assert_eq!(s.next_due(t0), Some(t0 + REANNOUNCE_INTERVAL));
        // Unprovide then provide again: one live entry, announced once.
        s.remove_provider(&a, &me);
        assert!(s.providers(&a).is_empty());
        let t1 = t0 + Duration::from_secs(1);
        s.provide(a.clone(), t1).unwrap();
        let late = t0 + 2 * REANNOUNCE_INTERVAL;
        assert_eq!(s.pop_due(late).map(|(_, k, _)| k), Some(a.clone()));
        assert_eq!(s.pop_due(late), None);
        // Bounded.
        s.provide(RecordKey::new(b"b"), t0).unwrap();
        assert!(s.provide(RecordKey::new(b"c"), t0).is_err());
        assert_eq!(s.provided().count(), 2);
    }

    /// When each simulated announcement went out (since the start), and its messages.
    type Sends = Vec<(Duration, u32)>;

    /// Drives a store with `keys` provided keys over `span` of simulated time, announcing
    /// whatever is due whenever it says, each announcement sending `sent` messages (settled at
    /// once). Returns (time, messages) of every announcement and how often each key went out.
    fn simulate(
        keys: usize,
        rate: u32,
        sent: u32,
        span: Duration,
    ) -> (Sends, HashMap<RecordKey, Vec<Duration>>) {
        simulate_with(keys, 0, Duration::ZERO, rate, sent, span)
    }

    /// [`simulate`] with `values` published values besides, each living `lives`.
    fn simulate_with(
        keys: usize,
        values: usize,
        lives: Duration,
        rate: u32,
        sent: u32,
        span: Duration,
    ) -> (Sends, HashMap<RecordKey, Vec<Duration>>) {
        let limits = Limits {
            max_provided_keys: keys,
            max_records: values,
            announce_rate: rate,
            ..Limits::default()
        };
        let mut s = DhtStore::new(PeerId::random(), limits);
        let t0 = Instant::now();
        s.pacer = Pacer::new(rate, t0);
        for i in 0..keys {
            s.provide(RecordKey::new(&(i as u64).to_be_bytes()), t0)
                .unwrap();
        }
        for i in 0..values {
            let r = Record::new(format!("v{i}").into_bytes(), vec![1]);
            s.publish(r, t0 + lives, t0, false).unwrap();
        }
        let (mut sends, mut per_key) = (Vec::new(), HashMap::<RecordKey, Vec<Duration>>::new());
        let mut now = t0;
        while now < t0 + span {
            while let Some((_, key, charged)) = s.pop_due(now) {
                sends.push((now - t0, sent));
                per_key.entry(key).or_default().push(now - t0);
                s.announced(charged, sent, now);
            }
            let Some(next) = s.next_due(now) else {
                break;
            };
            assert!(next > now, "a due announcement was left behind");
            now = next;
        }
        (sends, per_key)
    }

    /// Messages sent in every window of `w`, at most.
    fn worst_window(sends: &Sends, w: Duration) -> u64 {
        let (mut worst, mut sum, mut lo) = (0u64, 0u64, 0);
        for &(t, m) in sends {
            sum += u64::from(m);
            while sends[lo].0 + w <= t {
                sum -= u64::from(sends[lo].1);
                lo += 1;
            }
            worst = worst.max(sum);
        }
        worst
    }

    #[test]
    fn announcements_never_exceed_the_message_rate() {
        // 5,000 keys at 8 messages/s and 40 messages each: 25,000 s per round, stretched
        // from nothing (12 h would be enough), and never more than the burst plus the rate.
        for (keys, sent) in [(5_000, 40), (20_000, 40), (2_000, 3)] {
            let rate = 8;
            let span = Duration::from_secs(2 * 86_400);
            let (sends, per_key) = simulate(keys, rate, sent, span);
            for w in [1, 10, 60, 600, 3_600, 86_400] {
                let w = Duration::from_secs(w);
                let bound = f64::from(rate) * (super::super::pacer::BURST + w).as_secs_f64();
                let worst = worst_window(&sends, w) as f64;
                assert!(
                    worst <= bound,
                    "{keys} keys: {worst} messages in {w:?} > {bound}"
                );
            }
            // Every key went out, and no key more often than once a cycle.
            assert_eq!(per_key.len(), keys);
            let cycle = Pacer::new(rate, Instant::now()).cycle(keys);
            for times in per_key.values() {
                for pair in times.windows(2) {
                    assert!(
                        pair[1] - pair[0] >= cycle,
                        "{:?} < {cycle:?}",
                        pair[1] - pair[0]
                    );
                }
            }
        }
    }

    /// The figure docs/protocol.md gives: a node with 100,000 packages (about 1 M blobs) at the
    /// default budget sends at most 8 messages a second averaged over a day (691,200), well
    /// under 10, and re-announces each package within a cycle shorter than half the TTL.
    #[test]
    fn a_hundred_thousand_packages_stay_within_the_daily_budget() {
        let keys = 100_000;
        let rate = Limits::default().announce_rate;
        let day = Duration::from_secs(86_400);
        let (sends, per_key) = simulate(keys, rate, 40, 3 * day);
        // Every day after the first (the first has the start's burst on top).
        for d in 0..3 {
            let (lo, hi) = (day * d, day * (d + 1));
            let msgs: u64 = sends
                .iter()
                .filter(|(t, _)| *t >= lo && *t < hi)
                .map(|(_, m)| u64::from(*m))
                .sum();
            let burst = f64::from(rate) * super::super::pacer::BURST.as_secs_f64();
            assert!(
                msgs as f64 <= f64::from(rate) * 86_400.0 + burst,
                "day {d}: {msgs} messages"
            );
            assert!(msgs as f64 / 86_400.0 <= 10.0, "day {d}: {msgs}");
        }
        // 3 days is under one 5.8-day cycle: each key out once, the first announcements spread
        // over the cycle at the rate.
        assert!(per_key.values().all(|t| t.len() == 1));
        let cycle = Pacer::new(rate, Instant::now()).cycle(keys);
        assert!(cycle < PROVIDER_RECORD_TTL / 2, "{cycle:?}");
        assert_eq!(cycle, Duration::from_secs(500_000));
    }

    #[test]
    fn fresh_entries_go_before_the_backlog() {
        let me = PeerId::random();
        let limits = Limits {
            max_provided_keys: 1_000,
            ..Limits::default()
        };
        let mut s = DhtStore::new(me, limits);
        let t0 = Instant::now();
        // A start: 998 keys due at once, far more than the budget's burst.
        for i in 0..998u64 {
            s.provide(RecordKey::new(&i.to_be_bytes()), t0).unwrap();
        }
        let t1 = t0 + Duration::from_secs(1);
        let new = RecordKey::new(b"new-package");
        s.provide_fresh(new.clone(), t1).unwrap();
        let pointer = Record::new(b"pointer".to_vec(), vec![1]);
        s.publish(pointer.clone(), t1 + RECORD_LIFE, t1, true)
            .unwrap();
        // Already provided: a fresh provide changes nothing.
        s.provide_fresh(RecordKey::new(&0u64.to_be_bytes()), t1)
            .unwrap();
        let first: Vec<(Kind, RecordKey)> = (0..3)
            .map(|_| s.pop_due(t1).map(|(k, key, _)| (k, key)).unwrap())
            .collect();
        assert_eq!(first[0], (Kind::Provide, new.clone()));
        assert_eq!(first[1], (Kind::Put, pointer.key.clone()));
        assert_eq!(first[2].0, Kind::Provide);
        assert_ne!(first[2].1, new);
        // What went out is due again a cycle later, in the schedule.
        let cycle = s.pacer.cycle(1_000);
        assert_eq!(s.provided.get(&new), Some(&(t1 + cycle)));
        // The value is stored as ours, expiring when it stops living.
        let own = s.own_value(&pointer.key).unwrap();
        assert_eq!(own.expires, Some(t1 + RECORD_LIFE));
        assert_eq!(own.publisher, Some(me));
        assert_eq!(s.published_count(), 1);
    }

    /// How long the values of the tests live.
    const RECORD_LIFE: Duration = Duration::from_secs(7 * 86_400);

    #[test]
    fn values_are_republished_while_they_live_and_share_the_budget() {
        // 6,000 package keys and 6,000 pointers living 7 days at 8 messages/s, 40 each: one
        // round is 60,000 s; every value goes out at most once a cycle, never after it ends,
        // and together they never exceed the budget.
        let (keys, values, rate, sent) = (6_000, 6_000, 8, 40);
        let span = Duration::from_secs(10 * 86_400);
        let (sends, per_key) = simulate_with(keys, values, RECORD_LIFE, rate, sent, span);
        for w in [60, 3_600, 86_400] {
            let w = Duration::from_secs(w);
            let bound = f64::from(rate) * (super::super::pacer::BURST + w).as_secs_f64();
            let worst = worst_window(&sends, w) as f64;
            assert!(worst <= bound, "{worst} messages in {w:?} > {bound}");
        }
        let pacer = Pacer::new(rate, Instant::now());
        let (cycle, alone) = (pacer.cycle(keys + values), pacer.cycle(keys));
        assert_eq!(cycle, Duration::from_secs(60_000));
        assert_eq!(alone, REANNOUNCE_INTERVAL);
        // While every value lives, each entry waits the whole cycle; in the values' last round
        // they drop out of it and the cycle shrinks towards the package keys' own.
        let spaced = |p: &[Duration]| match p[0] + cycle < RECORD_LIFE {
            true => p[1] - p[0] >= cycle,
            false => p[1] - p[0] >= alone,
        };
        let mut puts = 0;
        for (key, times) in &per_key {
            assert!(times.windows(2).all(spaced), "{key:?}: {times:?}");
            if key.as_ref().starts_with(b"v") {
                puts += times.len();
                assert!(times.iter().all(|t| *t < RECORD_LIFE), "{key:?}: {times:?}");
                // Republished while it lives: once a cycle over 7 days, 10 or 11 times.
                assert!(times.len() >= 10, "{key:?}: {}", times.len());
            }
        }
        assert_eq!(per_key.len(), keys + values);
        // After the values ended, the package keys alone go on (10 days > 7).
        let late = sends.iter().filter(|(t, _)| *t > RECORD_LIFE).count();
        assert!(late > 0);
        assert!(puts > 0);
    }

    #[test]
    fn a_newer_value_replaces_the_older_one_in_the_queues() {
        let mut s = DhtStore::new(PeerId::random(), limits());
        let t0 = Instant::now();
        let key = b"k".to_vec();
        s.publish(
            Record::new(key.clone(), vec![1]),
            t0 + RECORD_LIFE,
            t0,
            false,
        )
        .unwrap();
        s.publish(
            Record::new(key.clone(), vec![2]),
            t0 + RECORD_LIFE,
            t0,
            true,
        )
        .unwrap();
        let (kind, k, _) = s.pop_due(t0).unwrap();
        assert_eq!((kind, k.to_vec()), (Kind::Put, key.clone()));
        assert_eq!(s.own_value(&k).unwrap().value, vec![2]);
        // The older entry is stale: nothing else is due now.
        assert!(s.pop_due(t0).is_none());
        // A value that ends before its next round is not republished, and is forgotten.
        let mut s = DhtStore::new(PeerId::random(), limits());
        let short = t0 + Duration::from_secs(60);
        s.publish(Record::new(key.clone(), vec![1]), short, t0, true)
            .unwrap();
        assert!(s.pop_due(t0).is_some());
        assert_eq!(s.published_count(), 0);
        assert_eq!(s.next_due(t0), None);
        // A put that reached no one is retried, if the value still lives then.
        let mut s = DhtStore::new(PeerId::random(), limits());
        s.publish(
            Record::new(key.clone(), vec![1]),
            t0 + RECORD_LIFE,
            t0,
            true,
        )
        .unwrap();
        let (kind, k, charged) = s.pop_due(t0).unwrap();
        s.announced(charged, 0, t0);
        s.retry(kind, k.clone(), t0 + ANNOUNCE_RETRY);
        assert_eq!(s.next_due(t0), Some(t0 + ANNOUNCE_RETRY));
        assert_eq!(
            s.pop_due(t0 + ANNOUNCE_RETRY)
                .map(|(kind, k, _)| (kind, k.to_vec())),
            Some((Kind::Put, key.clone()))
        );
        // Swept once it ends.
        s.sweep(t0 + RECORD_LIFE);
        assert_eq!(s.published_count(), 0);
        assert!(s.own_value(&k).is_none());
    }
}

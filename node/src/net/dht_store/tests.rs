//! The store's bounds, the announcement schedule and its budget, simulated over days.

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

/// Stores two values of others (`limits()`'s cap) and checks a third is refused.
fn others_fill_the_cap(s: &mut DhtStore) {
    s.put(Record::new(b"a".to_vec(), vec![1])).unwrap();
    s.put(Record::new(b"b".to_vec(), vec![1])).unwrap();
    assert!(matches!(
        s.put(Record::new(b"c".to_vec(), vec![1])),
        Err(Error::MaxRecords)
    ));
}

#[test]
fn values_are_bounded() {
    let mut s = DhtStore::new(PeerId::random(), limits());
    assert!(matches!(
        s.put(Record::new(b"a".to_vec(), vec![0; 11])),
        Err(Error::ValueTooLarge)
    ));
    others_fill_the_cap(&mut s);
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

/// Publishes `value` under `key` at `now`, living until `until`.
fn publish(
    s: &mut DhtStore,
    key: &[u8],
    value: Vec<u8>,
    now: Instant,
    until: Instant,
    fresh: bool,
) {
    s.publish(Record::new(key.to_vec(), value), until, now, fresh)
        .unwrap();
}

#[test]
fn our_own_values_are_not_held_to_the_cap_for_others() {
    let mut s = DhtStore::new(PeerId::random(), limits());
    let t0 = Instant::now();
    // limits() keeps 2 values of others; a mirror signs a pointer per package.
    for i in 0..5u8 {
        publish(&mut s, &[b'o', i], vec![i], t0, t0 + RECORD_LIFE, false);
    }
    assert_eq!(s.published_count(), 5);
    assert!(matches!(
        s.publish(
            Record::new(b"big".to_vec(), vec![0; 11]),
            t0 + RECORD_LIFE,
            t0,
            false
        ),
        Err(Error::ValueTooLarge)
    ));
    // Others' values still stop at the cap.
    others_fill_the_cap(&mut s);
    // Kademlia storing our own value again (its put path) replaces it in place.
    let own = s.own_value(&RecordKey::new(&[b'o', 0])).unwrap();
    s.put(own).unwrap();
    assert_eq!(s.sizes().0, 7);
}

#[test]
fn a_newer_value_replaces_the_older_one_in_the_queues() {
    let mut s = DhtStore::new(PeerId::random(), limits());
    let t0 = Instant::now();
    let key = b"k".to_vec();
    publish(&mut s, &key, vec![1], t0, t0 + RECORD_LIFE, false);
    publish(&mut s, &key, vec![2], t0, t0 + RECORD_LIFE, true);
    let (kind, k, _) = s.pop_due(t0).unwrap();
    assert_eq!((kind, k.to_vec()), (Kind::Put, key.clone()));
    assert_eq!(s.own_value(&k).unwrap().value, vec![2]);
    // The older entry is stale: nothing else is due now.
    assert!(s.pop_due(t0).is_none());
    // A value that ends before its next round is not republished, and is forgotten.
    let mut s = DhtStore::new(PeerId::random(), limits());
    let short = t0 + Duration::from_secs(60);
    publish(&mut s, &key, vec![1], t0, short, true);
    assert!(s.pop_due(t0).is_some());
    assert_eq!(s.published_count(), 0);
    assert_eq!(s.next_due(t0), None);
    // A put that reached no one is retried, if the value still lives then.
    let mut s = DhtStore::new(PeerId::random(), limits());
    publish(&mut s, &key, vec![1], t0, t0 + RECORD_LIFE, true);
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

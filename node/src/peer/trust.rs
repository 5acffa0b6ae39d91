//! Which records from the network to believe, and what they agree on.
//!
//! A record counts only if a trusted operator signed it, it has not expired, and its sequence
//! is not below the highest this node has seen from that operator for the name (rollback,
//! R4). A packument revision is taken from peers only when at least `threshold` of those
//! records name it (quorum); a tarball id is taken from any trusted record whose integrity for
//! the version is the one the packument promises, since the bytes are checked against that
//! integrity anyway.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

use open_registry_protocol::pointer::{self, Pointer};
use open_registry_protocol::record::{Signed, Verified};
use open_registry_protocol::{BlobId, PackageName, Policy};

use super::fetch::FIND_DEADLINE;
use super::{Agreed, Found, PeerError, Peers};
use crate::metrics::Metrics;
use crate::net;

/// How many LAN peers are asked which records they hold.
const MAX_LAN_ASKED: usize = 4;

/// How long a LAN peer has to say which records it holds (its round trip is a millisecond).
const LAN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

impl Peers {
    /// The newest records of the trusted operators for `name` that pass the trust policy, with
    /// their signed form. `hint` is a pointer heard on gossip: its signer's pointer is not
    /// looked up at all. The others' lookups run side by side, and each ends at the first valid
    /// pointer a peer returns (not when every closest peer has answered or timed out), so the
    /// whole costs about one lookup's round trips. Once the records in hand make a quorum, the
    /// operators still pending get as long again as that took ([`gather`]), and an operator
    /// whose measured round trip says it cannot answer within that is not waited for at all: a
    /// far operator's lookup and record fetch do not hold up every package a near quorum
    /// already answers.
    ///
    /// A trusted operator this node is connected to is first asked itself which records it
    /// holds for `name` (the record-ids protocol): one round trip to it, not a DHT walk whose
    /// closest peers may be across the world; the DHT is asked when that fails.
    ///
    /// Peers on the LAN are asked beside the DHT which records they hold for `name`: a
    /// neighbour that installed the package answers even when no Kademlia server is reachable.
    /// Of each operator's records from either side, the newest that passes the policy counts.
    pub(crate) async fn trusted_records(
        &self,
        name: &PackageName,
        hint: Option<&Verified<Pointer>>,
    ) -> Vec<Found> {
        let (dht, lan) = futures::join!(self.dht_records(name, hint), self.lan_records(name));
        newest_per_signer(dht.into_iter().chain(lan))
    }

    /// The trusted operators' newest records found through their DHT pointers.
    async fn dht_records(
        &self,
        name: &PackageName,
        hint: Option<&Verified<Pointer>>,
    ) -> Vec<Found> {
        let lookups = self.policy.trusted().iter().map(|signer| {
            let hinted = hint.filter(|h| h.signer() == signer).cloned();
            let peer = net::PeerId::from_bytes(&signer.to_bytes()).ok();
            // Asked directly, a connected operator answers in a round trip at the soonest
            // (which records it holds; the record itself may be held here already). Gossip's
            // pointer may be followed to any provider: no bound.
            let soonest = peer
                .filter(|_| hinted.is_none())
                .and_then(|p| self.net.rtts().get(&p));
            (soonest, self.operator_record(name, signer, hinted, peer))
        });
        gather(&self.policy, lookups, MIN_GRACE).await
    }

    /// Operator `signer`'s newest record for `name`: asked of its node `peer` when connected,
    /// else through its DHT pointer (or `hinted`, the pointer gossip brought).
    async fn operator_record(
        &self,
        name: &PackageName,
        signer: &open_registry_protocol::PeerId,
        hinted: Option<Verified<Pointer>>,
        peer: Option<net::PeerId>,
    ) -> Option<Found> {
        let key = pointer::dht_key(name, signer);
        if hinted.is_none()
            && let Some(peer) = peer.filter(|p| self.net.rtts().get(p).is_some())
            && let Ok(found) = self.asked_directly(name, signer, peer).await
        {
            return found;
        }
        let found = match hinted {
            Some(_) => Vec::new(),
            None => self
                .net
                .get_first_records(key.clone(), FIND_DEADLINE)
                .await
                .unwrap_or_default(),
        };
        let now = self.clock.now_ms();
        // The newest valid pointer that arrived (or gossip brought).
        let best = found
            .iter()
            .filter_map(|f| pointer::validate(&key, &f.value, now).ok())
            .chain(hinted)
            .max_by_key(|p| p.get().seq)?;
        let wire = self
            .fetch_small(name, &best.get().record, record_cap(), peer)
            .await?;
        self.admit(name, &wire)
    }

    /// Operator `signer`'s newest record for `name`, asked of the operator's own node `peer`
    /// (connected): which records it holds, then the ones by `signer` we lack, fetched from it.
    /// `Ok(None)` when it says it holds none that passes the policy (its own word on its own
    /// records: the DHT is not asked); `Err` when it does not answer in time, for the DHT.
    async fn asked_directly(
        &self,
        name: &PackageName,
        signer: &open_registry_protocol::PeerId,
        peer: net::PeerId,
    ) -> Result<Option<Found>, ()> {
        let deadline = 2 * self.hedge_delay(&peer);
        let ids = match self.net.record_ids(peer, name.as_str(), deadline).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::debug!(%peer, %name, error = %e, "a trusted operator did not say which records it holds; asking the DHT");
                return Err(());
            }
        };
        let mut best: Option<Found> = None;
        for id in ids {
            let wire = match self.records.blob(&id) {
                Ok(Some(b)) => b,
                // A record it named but did not deliver: the DHT may still find it.
                _ => self
                    .fetch_small_from(&[peer], &id, record_cap())
                    .await
                    .ok_or(())?,
            };
            let Some(found) = self.admit_trusted(name, &wire) else {
                continue;
            };
            if found.0.signer == *signer
                && best
                    .as_ref()
                    .is_none_or(|b| b.1.get().seq < found.1.get().seq)
            {
                best = Some(found);
            }
        }
        Ok(best)
    }

    /// The trusted operators' records for `name` that peers on the LAN hold, each fetched
    /// from the peer that named it (or read from our own records) and checked.
    async fn lan_records(&self, name: &PackageName) -> Vec<Found> {
        let lan = self.net.rtts().lan_peers();
        let asks = lan.into_iter().take(MAX_LAN_ASKED).map(|peer| async move {
            let ids = match self.net.record_ids(peer, name.as_str(), LAN_DEADLINE).await {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::debug!(%peer, %name, error = %e, "a LAN peer did not say which records it holds");
                    return Vec::new();
                }
            };
            let mut out = Vec::new();
            for id in ids {
                let wire = match self.records.blob(&id) {
                    Ok(Some(b)) => Some(b),
                    _ => self.fetch_small_from(&[peer], &id, record_cap()).await,
                };
                if let Some(found) = wire.and_then(|w| self.admit_trusted(name, &w)) {
                    out.push(found);
                }
            }
            out
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// A record's wire bytes, if they are a record of `name` by a trusted operator that
    /// passes the policy; records by anyone else are skipped without a word (a LAN peer holds
    /// whatever its own operators trust).
    fn admit_trusted(&self, name: &PackageName, wire: &[u8]) -> Option<Found> {
        let signed = Signed::from_bytes(wire).ok()?;
        if !self.policy.trusts(&signed.signer) {
            return None;
        }
        self.admit(name, wire)
    }

    /// A record's wire bytes checked under the trust policy (signature, signer, name, expiry,
    /// and no rollback below what we have seen from its signer); a refusal is counted.
    fn admit(&self, name: &PackageName, wire: &[u8]) -> Option<Found> {
        let signed = Signed::from_bytes(wire).ok()?;
        let seen = self.records.seen(name, &signed.signer).ok().flatten();
        match self.policy.check(&signed, name, self.clock.now_ms(), seen) {
            Ok(v) => Some((signed, v)),
            Err(e) => {
                Metrics::inc(&self.metrics.records_rejected);
                tracing::warn!(%name, signer = %signed.signer.short(), error = %e, "refused a record from the network");
                None
            }
        }
    }

    /// The revision of `name` at least `threshold` trusted operators agree on.
    pub(super) async fn packument_quorum(
        &self,
        name: &PackageName,
        hint: Option<&Verified<Pointer>>,
    ) -> Result<Agreed, PeerError> {
        let found = self.trusted_records(name, hint).await;
        let n = found.len();
        quorum(&self.policy, found).ok_or(PeerError::NoQuorum {
            found: n,
            threshold: self.policy.threshold(),
        })
    }

    /// The tarball id trusted records name for `version`, among those whose integrity for it
    /// is `integrity`. The agreeing records are kept whether or not one names an id.
    pub(super) async fn tarball_agreement(
        &self,
        name: &PackageName,
        version: &str,
        integrity: Option<&str>,
    ) -> Result<Option<BlobId>, PeerError> {
        let agreeing: Vec<Found> = self
            .trusted_records(name, None)
            .await
            .into_iter()
            .filter(|(_, v)| {
                integrity.is_some()
                    && v.get().versions.get(version).map(|e| e.integrity.as_str()) == integrity
            })
            .collect();
        let id = agreeing
            .iter()
            .find_map(|(_, v)| v.get().versions.get(version).and_then(|e| e.tarball));
        self.keep_records(&agreeing).await;
        Ok(id)
    }

    /// A pointer heard on gossip, if it is worth acting on: well signed by a trusted operator,
    /// unexpired, and newer than anything seen from that operator for the package.
    pub(crate) fn interesting(&self, wire: &[u8]) -> Option<Verified<Pointer>> {
        let signed = Signed::from_bytes(wire).ok()?;
        if !self.policy.trusts(&signed.signer) {
            return None;
        }
        let v = signed.verify_as::<Pointer>().ok()?;
        let p = v.get();
        if p.expires_at <= self.clock.now_ms() {
            return None;
        }
        let seen = self.records.seen(&p.name, &signed.signer).ok().flatten();
        if seen.is_some_and(|s| s >= p.seq) {
            return None;
        }
        Some(v)
    }
}

/// The least time the operators still pending get once a quorum is in (see [`gather`]).
const MIN_GRACE: Duration = Duration::from_millis(20);

/// Awaits `lookups` (one per trusted operator, each `None` when it found no usable record,
/// beside the least time it can take when that is known, from the operator's round trip): all
/// of them until the records in hand make a quorum ([`has_quorum`]; when they never do, until
/// every lookup has finished), then the rest for as long again as that took, and at least
/// `min_grace`. A pending lookup whose least time ends after that grace is not waited for, and
/// when only such lookups are left the wait ends at once. Lookups still pending then are
/// dropped.
///
/// A newer revision known only to operators slower than that is not waited for: the quorum in
/// hand is served, and the next lookup of the package sees the newer one if it arrives in time.
pub(crate) async fn gather<F>(
    policy: &Policy,
    lookups: impl IntoIterator<Item = (Option<Duration>, F)>,
    min_grace: Duration,
) -> Vec<Found>
where
    F: Future<Output = Option<Found>>,
{
    let started = Instant::now();
    let (soonest, lookups): (Vec<Option<Duration>>, Vec<F>) = lookups.into_iter().unzip();
    let mut pending: FuturesUnordered<_> = lookups
        .into_iter()
        .enumerate()
        .map(|(i, f)| async move { (i, f.await) })
        .collect();
    let mut done = vec![false; soonest.len()];
    let mut found = Vec::new();
    while !has_quorum(policy, &found) {
        match pending.next().await {
            Some((i, f)) => {
                done[i] = true;
                found.extend(f);
            }
            None => return found,
        }
    }
    let elapsed = started.elapsed();
    let grace = elapsed.max(min_grace);
    // The pending lookups that can still end within the grace (an unknown one may).
    let can_make_it = |i: usize| soonest[i].is_none_or(|s| s <= elapsed + grace);
    let mut hopeful = (0..done.len())
        .filter(|&i| !done[i] && can_make_it(i))
        .count();
    let _ = tokio::time::timeout(grace, async {
        while hopeful > 0
            && let Some((i, f)) = pending.next().await
        {
            found.extend(f);
            if can_make_it(i) {
                hopeful -= 1;
            }
        }
    })
    .await;
    found
}

/// Whether at least `policy.threshold()` of `found` name the same packument revision.
fn has_quorum(policy: &Policy, found: &[Found]) -> bool {
    let mut counts: HashMap<BlobId, usize> = HashMap::new();
    found.iter().any(|f| {
        let n = counts.entry(f.1.get().packument).or_default();
        *n += 1;
        *n >= policy.threshold()
    })
}

/// The packument revision at least `policy.threshold()` of `found` agree on; of several, the
/// one with the newest `fetched_at`.
pub(crate) fn quorum(policy: &Policy, found: Vec<Found>) -> Option<Agreed> {
    let mut groups: HashMap<BlobId, Vec<Found>> = HashMap::new();
    for f in found {
        groups.entry(f.1.get().packument).or_default().push(f);
    }
    groups
        .into_iter()
        .filter(|(_, rs)| rs.len() >= policy.threshold())
        .map(|(id, records)| Agreed {
            id,
            fetched_at: records
                .iter()
                .map(|r| r.1.get().fetched_at)
                .max()
                .unwrap_or(0),
            records,
        })
        .max_by_key(|a| a.fetched_at)
}

/// Of several records per signer, the one with the highest sequence.
fn newest_per_signer(found: impl IntoIterator<Item = Found>) -> Vec<Found> {
    let mut best: HashMap<_, Found> = HashMap::new();
    for f in found {
        let signer = f.0.signer;
        match best.get(&signer) {
            Some(b) if b.1.get().seq >= f.1.get().seq => {}
            _ => {
                best.insert(signer, f);
            }
        }
    }
    best.into_values().collect()
}

/// The largest record blob accepted (records list every version: a few MiB at most).
fn record_cap() -> u64 {
    open_registry_protocol::record::MAX_RECORD_LEN as u64 + 97
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::identity::Identity;
    use open_registry_protocol::record::Record;

    fn signed(op: &Identity, packument: &[u8], fetched_at: u64) -> Found {
        let r = Record {
            name: PackageName::parse("p").unwrap(),
            seq: fetched_at,
            fetched_at,
            expires_at: u64::MAX,
            packument: BlobId::of(packument),
            versions: Default::default(),
        };
        let s = r.sign(op.signing_key());
        let v = s.verify().unwrap();
        (s, v)
    }

    /// A lookup that answers `found` after `ms` milliseconds.
    async fn after(ms: u64, found: Option<Found>) -> Option<Found> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        found
    }

    /// A lookup of an operator whose round trip is not known.
    fn unknown(ms: u64, found: Option<Found>) -> (Option<Duration>, BoxFut) {
        (None, Box::pin(after(ms, found)))
    }

    /// A lookup of an operator whose round trip says it takes at least `least` ms.
    fn measured(least: u64, ms: u64, found: Option<Found>) -> (Option<Duration>, BoxFut) {
        (
            Some(Duration::from_millis(least)),
            Box::pin(after(ms, found)),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn gather_stops_waiting_for_far_operators_once_a_quorum_is_in() {
        let ops: Vec<Identity> = (1..=4).map(|i| Identity::from_seed([i; 32])).collect();
        let one = Policy::new(ops.iter().map(Identity::peer_id), 1);
        let lookups = || {
            vec![
                unknown(30, Some(signed(&ops[0], b"r", 1))),
                unknown(50, Some(signed(&ops[1], b"r", 2))),
                unknown(400, Some(signed(&ops[2], b"r", 3))),
                unknown(500, None),
            ]
        };
        // Threshold 1: the first record is in at 30 ms; the others get 30 ms more.
        let t = Instant::now();
        let found = gather(&one, lookups(), Duration::from_millis(20)).await;
        assert_eq!(t.elapsed(), Duration::from_millis(60));
        assert_eq!(
            found
                .iter()
                .map(|f| f.1.get().fetched_at)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        // At least the minimum grace, when the quorum came quickly.
        let quick = vec![
            unknown(1, Some(signed(&ops[0], b"r", 1))),
            unknown(15, Some(signed(&ops[1], b"r", 2))),
            unknown(400, None),
        ];
        let t = Instant::now();
        let found = gather(&one, quick, Duration::from_millis(20)).await;
        assert_eq!(t.elapsed(), Duration::from_millis(21));
        assert_eq!(found.len(), 2);
        // Threshold 2 with disagreeing revisions: the wait goes on until two agree.
        let two = Policy::new(ops.iter().map(Identity::peer_id), 2);
        let split = vec![
            unknown(10, Some(signed(&ops[0], b"a", 1))),
            unknown(20, Some(signed(&ops[1], b"b", 2))),
            unknown(300, Some(signed(&ops[2], b"b", 3))),
            unknown(5000, Some(signed(&ops[3], b"a", 4))),
        ];
        let t = Instant::now();
        let found = gather(&two, split, Duration::from_millis(20)).await;
        assert_eq!(t.elapsed(), Duration::from_millis(600));
        assert_eq!(found.len(), 3);
        assert_eq!(quorum(&two, found).unwrap().id, BlobId::of(b"b"));
        // No quorum ever: every lookup is awaited.
        let none = vec![unknown(10, None), unknown(700, None)];
        let t = Instant::now();
        assert!(
            gather(&one, none, Duration::from_millis(20))
                .await
                .is_empty()
        );
        assert_eq!(t.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn gather_does_not_wait_for_operators_too_far_to_answer_within_the_grace() {
        let ops: Vec<Identity> = (1..=4).map(|i| Identity::from_seed([i; 32])).collect();
        let one = Policy::new(ops.iter().map(Identity::peer_id), 1);
        // The near operator answers at 3 ms; the others are 90–250 ms away: the grace
        // (20 ms at least) cannot bring their answers, so the quorum in hand is served at once.
        let far = vec![
            measured(1, 3, Some(signed(&ops[0], b"r", 1))),
            measured(90, 180, Some(signed(&ops[1], b"r", 2))),
            measured(150, 300, None),
            measured(250, 500, None),
        ];
        let t = Instant::now();
        let found = gather(&one, far, Duration::from_millis(20)).await;
        assert_eq!(t.elapsed(), Duration::from_millis(3));
        assert_eq!(found.len(), 1);
        // A near one and one not measured still get the grace; the far one is not waited for
        // once they are in.
        let mixed = vec![
            measured(1, 3, Some(signed(&ops[0], b"r", 1))),
            measured(4, 8, Some(signed(&ops[1], b"r", 2))),
            unknown(12, Some(signed(&ops[2], b"r", 3))),
            measured(90, 180, Some(signed(&ops[3], b"r", 4))),
        ];
        let t = Instant::now();
        let found = gather(&one, mixed, Duration::from_millis(20)).await;
        assert_eq!(t.elapsed(), Duration::from_millis(12));
        assert_eq!(
            found
                .iter()
                .map(|f| f.1.get().fetched_at)
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // One that could make it but does not: the grace ends the wait as before.
        let late = vec![
            measured(1, 3, Some(signed(&ops[0], b"r", 1))),
            measured(5, 400, Some(signed(&ops[1], b"r", 2))),
        ];
        let t = Instant::now();
        let found = gather(&one, late, Duration::from_millis(20)).await;
        assert_eq!(t.elapsed(), Duration::from_millis(23));
        assert_eq!(found.len(), 1);
    }

    type BoxFut = std::pin::Pin<Box<dyn Future<Output = Option<Found>>>>;

    #[test]
    fn quorum_needs_threshold_agreeing_records_and_prefers_the_newest() {
        let ops: Vec<Identity> = (1..=4).map(|i| Identity::from_seed([i; 32])).collect();
        let policy = Policy::new(ops.iter().map(Identity::peer_id), 2);
        // One operator alone names the newest revision: below the threshold.
        let found = vec![
            signed(&ops[0], b"old", 10),
            signed(&ops[1], b"old", 11),
            signed(&ops[2], b"new", 20),
        ];
        let a = quorum(&policy, found).unwrap();
        assert_eq!(
            (a.id, a.fetched_at, a.records.len()),
            (BlobId::of(b"old"), 11, 2)
        );
        // Two agree on the new one: it wins over the old pair, being newer.
        let found = vec![
            signed(&ops[0], b"old", 10),
            signed(&ops[1], b"old", 11),
            signed(&ops[2], b"new", 20),
            signed(&ops[3], b"new", 21),
        ];
        assert_eq!(quorum(&policy, found).unwrap().id, BlobId::of(b"new"));
        // Nobody agrees.
        let found = vec![signed(&ops[0], b"a", 1), signed(&ops[1], b"b", 2)];
        assert!(quorum(&policy, found).is_none());
    }

    #[test]
    fn of_an_operators_records_from_the_dht_and_the_lan_the_newest_counts() {
        let ops: Vec<Identity> = (1..=2).map(|i| Identity::from_seed([i; 32])).collect();
        // Operator 0: the DHT's is older than the LAN's; operator 1: the LAN's is a replay.
        let dht = vec![signed(&ops[0], b"a", 5), signed(&ops[1], b"b", 9)];
        let lan = vec![
            signed(&ops[0], b"a2", 7),
            signed(&ops[1], b"b-old", 3),
            signed(&ops[1], b"b", 9),
        ];
        let mut got: Vec<(u64, BlobId)> = newest_per_signer(dht.into_iter().chain(lan))
            .iter()
            .map(|(_, v)| (v.get().seq, v.get().packument))
            .collect();
        got.sort_by_key(|(seq, _)| *seq);
        assert_eq!(got, vec![(7, BlobId::of(b"a2")), (9, BlobId::of(b"b"))]);
    }
}

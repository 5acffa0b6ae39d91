//! What the network uses most, learned without the upstream.
//!
//! Each node counts packument requests per package (bounded: past [`MAX_TRACKED`] packages the
//! least requested are forgotten), publishes a signed [`Summary`] of its top packages on gossip
//! every `popularity_interval`, and keeps the newest summary of every operator it trusts. The
//! aggregate — its own counts plus those summaries — answers `GET /-/open-registry/popular`,
//! which `pin add --top N` reads. Only trusted operators count: anyone can sign a summary, and
//! a sybil must not decide what a community node pins.

use std::collections::HashMap;
use std::sync::Mutex;

use open_registry_protocol::popularity::Summary;
use open_registry_protocol::record::{Signable as _, Signed};
use open_registry_protocol::{PackageName, PeerId, Policy};

use crate::clock::Clock;
use crate::records::identity::Identity;

/// Packages counted at most; beyond, the least requested are dropped.
pub(crate) const MAX_TRACKED: usize = 100_000;

/// Request counts and received summaries.
#[derive(Debug)]
pub(crate) struct Popularity {
    // std Mutex, not tokio: never held across an await.
    counts: Mutex<HashMap<PackageName, u64>>,
    summaries: Mutex<HashMap<PeerId, Summary>>,
    clock: Clock,
}

impl Popularity {
    /// Empty counts; summaries are dated by `clock`.
    pub(crate) fn new(clock: Clock) -> Popularity {
        Popularity {
            counts: Mutex::new(HashMap::new()),
            summaries: Mutex::new(HashMap::new()),
            clock,
        }
    }

    /// Counts one request for `name`.
    pub(crate) fn count(&self, name: &PackageName) {
        let mut c = self.counts.lock().expect("counts poisoned");
        if let Some(n) = c.get_mut(name) {
            *n += 1;
            return;
        }
        if c.len() >= MAX_TRACKED {
            // Forget the least requested half: amortized, and bounded memory.
            let mut v: Vec<u64> = c.values().copied().collect();
            v.sort_unstable();
            let cut = v[v.len() / 2];
            c.retain(|_, n| *n > cut);
        }
        c.insert(name.clone(), 1);
    }

    /// Our signed summary, ready to gossip.
    pub(crate) fn summary(&self, identity: &Identity) -> Signed {
        let counts: Vec<(PackageName, u64)> = self
            .counts
            .lock()
            .expect("counts poisoned")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        Summary::top(self.clock.now_ms(), counts).sign(identity.signing_key())
    }

    /// Takes a summary heard on gossip if a trusted operator signed it and it is newer than
    /// what we hold from them. Returns whether it was taken.
    pub(crate) fn receive(&self, wire: &[u8], policy: &Policy) -> bool {
        let Ok(signed) = Signed::from_bytes(wire) else {
            return false;
        };
        if !policy.trusts(&signed.signer) {
            return false;
        }
        let Ok(v) = signed.verify_as::<Summary>() else {
            return false;
        };
        let mut s = self.summaries.lock().expect("summaries poisoned");
        if s.get(&signed.signer)
            .is_some_and(|old| old.at >= v.get().at)
        {
            return false;
        }
        s.insert(signed.signer, v.get().clone());
        true
    }

    /// The `limit` most requested packages: our counts plus every trusted summary.
    pub(crate) fn top(&self, limit: usize) -> (Vec<(PackageName, u64)>, usize) {
        let mut total: HashMap<PackageName, u64> =
            self.counts.lock().expect("counts poisoned").clone();
        let summaries = self.summaries.lock().expect("summaries poisoned");
        for s in summaries.values() {
            for (name, n) in &s.counts {
                *total.entry(name.clone()).or_default() += n;
            }
        }
        let mut v: Vec<(PackageName, u64)> = total.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(limit);
        (v, summaries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> PackageName {
        PackageName::parse(s).unwrap()
    }

    #[test]
    fn aggregates_own_counts_and_trusted_summaries() {
        let me = Identity::from_seed([1; 32]);
        let friend = Identity::from_seed([2; 32]);
        let stranger = Identity::from_seed([3; 32]);
        let p = Popularity::new(Clock::system());
        for _ in 0..3 {
            p.count(&n("a"));
        }
        p.count(&n("b"));
        let theirs = Popularity::new(Clock::system());
        for _ in 0..5 {
            theirs.count(&n("b"));
        }
        theirs.count(&n("c"));
        let policy = Policy::new([friend.peer_id()], 1);
        assert!(p.receive(&theirs.summary(&friend).to_bytes(), &policy));
        // A stranger's summary does not count, however loud.
        let loud = Popularity::new(Clock::system());
        for _ in 0..100 {
            loud.count(&n("spam"));
        }
        assert!(!p.receive(&loud.summary(&stranger).to_bytes(), &policy));
        assert!(!p.receive(b"garbage", &policy));
        let (top, operators) = p.top(2);
        assert_eq!(top, vec![(n("b"), 6), (n("a"), 3)]);
        assert_eq!(operators, 1);
        // Our own summary verifies and lists our counts.
        let mine = p.summary(&me).verify_as::<Summary>().unwrap();
        assert_eq!(mine.get().counts, vec![(n("a"), 3), (n("b"), 1)]);
    }
}

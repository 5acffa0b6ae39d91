//! What the network uses most, learned without the upstream.
//!
//! Each node counts packument requests per package (bounded: past [`MAX_TRACKED`] packages the
//! least requested are forgotten), publishes a signed [`Summary`] of its top packages on gossip
//! every `popularity_interval`, and keeps the newest summary of every operator it trusts. The
//! aggregate — its own counts plus those summaries — answers `GET /-/open-registry/popular`,
//! which `pin add --top N` reads. Only trusted operators count: anyone can sign a summary, and
//! a sybil must not decide what a community node pins.
//!
//! The counts survive restarts: [`Popularity::save`] writes them to the `popularity` tree of the
//! node's index (key: the package name, value: the count as a big-endian u64), and
//! [`Popularity::open`] reads them back. A save writes only the packages counted since the last
//! one, unless names were forgotten in between; then it rewrites the tree, so the store never
//! holds more than [`MAX_TRACKED`] packages either.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use open_registry_protocol::popularity::Summary;
use open_registry_protocol::record::{Signable as _, Signed};
use open_registry_protocol::{PackageName, PeerId, Policy};

use crate::clock::Clock;
use crate::records::identity::Identity;
use crate::store::{Index, IndexError};

/// Packages counted at most; beyond, the least requested are dropped.
pub(crate) const MAX_TRACKED: usize = 100_000;

/// The index tree the counts are saved in.
const TREE: &str = "popularity";

/// Request counts and received summaries.
#[derive(Debug)]
pub(crate) struct Popularity {
    // std Mutex, not tokio: never held across an await.
    counts: Mutex<Counts>,
    summaries: Mutex<HashMap<PeerId, Summary>>,
    clock: Clock,
    /// One save at a time, so an older snapshot never lands after a newer one. tokio Mutex:
    /// held across the write and the flush.
    saving: tokio::sync::Mutex<()>,
}

/// Our own counts, and what of them the store lacks.
#[derive(Debug, Default)]
struct Counts {
    by_name: HashMap<PackageName, Count>,
    /// The saved tree no longer matches `by_name` name by name (names were forgotten, nothing
    /// was loaded, or a save failed): the next save rewrites it whole.
    rewrite: bool,
}

/// One package's requests.
#[derive(Debug, Clone, Copy)]
struct Count {
    n: u64,
    /// Counted since the last save.
    dirty: bool,
}

impl Popularity {
    /// Empty counts; summaries are dated by `clock`. The first [`Popularity::save`] replaces
    /// whatever counts the store held.
    pub(crate) fn new(clock: Clock) -> Popularity {
        Popularity {
            counts: Mutex::new(Counts {
                by_name: HashMap::new(),
                rewrite: true,
            }),
            summaries: Mutex::new(HashMap::new()),
            clock,
            saving: tokio::sync::Mutex::new(()),
        }
    }

    /// The counts saved in `index` (see [`Popularity::save`]); summaries are dated by `clock`.
    /// Entries that do not parse are skipped, and dropped by the next save.
    pub(crate) fn open(index: &Index, clock: Clock) -> Result<Popularity, IndexError> {
        let mut counts = Counts::default();
        for kv in index.tree(TREE)?.iter() {
            let (k, v) = kv?;
            let name = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| PackageName::parse(s).ok());
            let n = <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes);
            match (name, n) {
                // A save never writes more than MAX_TRACKED; the bound only guards the memory.
                (Some(name), Ok(n)) if counts.by_name.len() < MAX_TRACKED => {
                    counts.by_name.insert(name, Count { n, dirty: false });
                }
                _ => counts.rewrite = true,
            }
        }
        let p = Popularity::new(clock);
        *p.counts.lock().expect("counts poisoned") = counts;
        Ok(p)
    }

    /// Counts one request for `name`.
    pub(crate) fn count(&self, name: &PackageName) {
        let mut c = self.counts.lock().expect("counts poisoned");
        if let Some(e) = c.by_name.get_mut(name) {
            e.n += 1;
            e.dirty = true;
            return;
        }
        if c.by_name.len() >= MAX_TRACKED {
            // Forget the least requested half: amortized, and bounded memory.
            let mut v: Vec<u64> = c.by_name.values().map(|e| e.n).collect();
            v.sort_unstable();
            let cut = v[v.len() / 2];
            c.by_name.retain(|_, e| e.n > cut);
            c.rewrite = true;
        }
        c.by_name.insert(name.clone(), Count { n: 1, dirty: true });
    }

    /// Writes our counts to the `popularity` tree of `index` and flushes it (durable when this
    /// returns): the packages counted since the last save, or every package when the tree must
    /// be rewritten (then names we no longer track are removed from it).
    pub(crate) async fn save(&self, index: &Index) -> Result<(), IndexError> {
        let _one = self.saving.lock().await;
        let tree = index.tree(TREE)?;
        let (rewrite, changed) = {
            let mut c = self.counts.lock().expect("counts poisoned");
            let rewrite = std::mem::take(&mut c.rewrite);
            let changed: Vec<(PackageName, u64)> = c
                .by_name
                .iter_mut()
                .filter(|(_, e)| rewrite || e.dirty)
                .map(|(name, e)| {
                    e.dirty = false;
                    (name.clone(), e.n)
                })
                .collect();
            (rewrite, changed)
        };
        // A rewrite is up to MAX_TRACKED sled writes: off the runtime's workers.
        let written = tokio::task::spawn_blocking(move || write(&tree, rewrite, &changed))
            .await
            .map_err(|e| IndexError::Corrupt(format!("popularity save task failed: {e}")))
            .and_then(|r| r);
        let result = match written {
            Ok(()) => index.flush().await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            // What was taken for this save may be missing from the store: the next one
            // writes everything.
            self.counts.lock().expect("counts poisoned").rewrite = true;
        }
        result
    }

    /// Our signed summary, ready to gossip.
    pub(crate) fn summary(&self, identity: &Identity) -> Signed {
        let counts: Vec<(PackageName, u64)> = self
            .counts
            .lock()
            .expect("counts poisoned")
            .by_name
            .iter()
            .map(|(k, e)| (k.clone(), e.n))
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
        let mut total: HashMap<PackageName, u64> = self
            .counts
            .lock()
            .expect("counts poisoned")
            .by_name
            .iter()
            .map(|(k, e)| (k.clone(), e.n))
            .collect();
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

/// Writes `changed` into `tree`; with `rewrite`, `changed` is every count and whatever else the
/// tree holds goes.
fn write(
    tree: &sled::Tree,
    rewrite: bool,
    changed: &[(PackageName, u64)],
) -> Result<(), IndexError> {
    if rewrite {
        let keep: HashSet<&str> = changed.iter().map(|(name, _)| name.as_str()).collect();
        let mut gone = Vec::new();
        for k in tree.iter().keys() {
            let k = k?;
            if !std::str::from_utf8(&k).is_ok_and(|s| keep.contains(s)) {
                gone.push(k);
            }
        }
        for k in gone {
            tree.remove(k)?;
        }
    }
    for (name, n) in changed {
        tree.insert(name.as_str(), &n.to_be_bytes())?;
    }
    Ok(())
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

    fn open_index(dir: &tempfile::TempDir) -> Index {
        Index::open(&dir.path().join("db"), Clock::system()).unwrap()
    }

    #[tokio::test]
    async fn counts_survive_saving_and_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = open_index(&dir);
            let p = Popularity::open(&index, Clock::system()).unwrap();
            for _ in 0..3 {
                p.count(&n("a"));
            }
            p.count(&n("b"));
            p.save(&index).await.unwrap();
            // The next save writes only what was counted since.
            p.count(&n("a"));
            p.count(&n("@s/c"));
            p.save(&index).await.unwrap();
            p.save(&index).await.unwrap();
        }
        let index = open_index(&dir);
        let p = Popularity::open(&index, Clock::system()).unwrap();
        assert_eq!(p.top(10).0, vec![(n("a"), 4), (n("@s/c"), 1), (n("b"), 1)]);
        // Counting goes on from the saved figures.
        p.count(&n("b"));
        assert_eq!(p.top(10).0[1], (n("b"), 2));
    }

    #[tokio::test]
    async fn a_rewrite_drops_what_the_counts_no_longer_hold() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = open_index(&dir);
            let p = Popularity::new(Clock::system());
            p.count(&n("old"));
            p.save(&index).await.unwrap();
            // Garbage in the tree is skipped on open and gone after the next save.
            let tree = index.tree(TREE).unwrap();
            tree.insert("Not A Name", &1u64.to_be_bytes()).unwrap();
            tree.insert("short", &[1u8][..]).unwrap();
            index.flush().await.unwrap();
        }
        {
            let index = open_index(&dir);
            let p = Popularity::open(&index, Clock::system()).unwrap();
            assert_eq!(p.top(10).0, vec![(n("old"), 1)]);
            p.count(&n("old"));
            p.save(&index).await.unwrap();
            assert_eq!(index.tree(TREE).unwrap().len(), 1);
            // A fresh Popularity knows nothing of the store: its first save replaces it.
            let fresh = Popularity::new(Clock::system());
            fresh.count(&n("new"));
            fresh.save(&index).await.unwrap();
        }
        let index = open_index(&dir);
        let p = Popularity::open(&index, Clock::system()).unwrap();
        assert_eq!(p.top(10).0, vec![(n("new"), 1)]);
    }
}

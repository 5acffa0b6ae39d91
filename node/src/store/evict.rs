//! Keeping the store under its size cap: unpinned blobs are evicted least recently used first.
//!
//! Invariants: pinned blobs (see [`Pins::protected`]) are never evicted; an index entry is
//! removed (and flushed) before the blob it names is deleted, so a crash in between leaves an
//! orphan file (counted, and evicted on a later pass) but never an entry that points at nothing;
//! every evicted blob is reported so the caller can withdraw it from the DHT. Blobs no index
//! entry names (old packument revisions) go first, then the rest by last access.
//!
//! A pass reads the ledger's access order from its oldest end and stops as soon as enough is
//! chosen, and finds the entries naming each victim through the index's `refs` keys: its cost
//! grows with what it evicts (and the pins it steps over), not with what is stored.

use std::collections::BTreeSet;
use std::sync::Arc;

use open_registry_protocol::{BlobId, PackageName};

use crate::store::index::Ref;
use crate::store::pins::Pins;
use crate::store::{IndexError, Store};

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Blobs deleted, in eviction order.
    pub evicted: Vec<BlobId>,
    /// Bytes freed.
    pub freed: u64,
    /// The packages whose entries the pass removed (some may still hold others).
    pub packages: BTreeSet<PackageName>,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EvictError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("store I/O during eviction: {0}")]
    Io(#[from] std::io::Error),
    #[error("an eviction task stopped: {0}")]
    Task(String),
}

/// The size a pass evicts down to once the cap is exceeded: 90% of it, so that passes are rare.
pub(crate) fn low_water(cap: u64) -> u64 {
    cap - cap / 10
}

/// Evicts unpinned blobs until the store holds at most [`low_water`]`(cap)` bytes, if it holds
/// more than `cap`. A `cap` of 0 means unbounded. The scans (the blob directory, the index,
/// the pins) and the deletions run on the blocking pool.
pub(crate) async fn evict(
    store: &Arc<Store>,
    pins: &Arc<Pins>,
    cap: u64,
) -> Result<Report, EvictError> {
    let (used, _) = store.blobs.usage();
    if cap == 0 || used <= cap {
        return Ok(Report::default());
    }
    if store.needs_audit() {
        // The totals and the access order are being rebuilt after a crash; the next pass
        // after the audit evicts.
        tracing::debug!("eviction waits for the store audit");
        return Ok(Report::default());
    }
    let (s, p) = (store.clone(), pins.clone());
    let (victims, packages) = blocking(move || choose(&s, &p, used, low_water(cap))).await??;
    // Index entries go first, durably: a crash before the files are deleted leaves orphan
    // files (evicted by a later pass), never an entry naming nothing.
    store.index.flush().await?;
    let s = store.clone();
    let report = blocking(move || {
        let mut report = Report {
            packages,
            ..Report::default()
        };
        for (id, len) in victims {
            if s.blobs.remove(&id)? {
                report.freed += len;
                report.evicted.push(id);
            }
        }
        Ok::<_, std::io::Error>(report)
    })
    .await??;
    if !report.evicted.is_empty() {
        tracing::info!(
            evicted = report.evicted.len(),
            freed = report.freed,
            "evicted least recently used blobs to stay under the cache cap"
        );
    }
    Ok(report)
}

/// Picks the blobs to evict (unreferenced first, then least recently used, never pinned) until
/// `used` would reach `target`, and removes the index entries naming them (not yet flushed);
/// also returns the packages those entries belonged to.
#[allow(clippy::type_complexity)]
fn choose(
    store: &Store,
    pins: &Pins,
    used: u64,
    target: u64,
) -> Result<(Vec<(BlobId, u64)>, BTreeSet<PackageName>), EvictError> {
    store.index.persist_access()?;
    let protected = pins.protected(&store.index)?;
    let ledger = store.index.ledger();
    let mut used = used;
    let mut victims = Vec::new();
    let mut packages = BTreeSet::new();
    for entry in ledger.oldest() {
        if used <= target {
            break;
        }
        let (at, id) = entry?;
        if protected.contains(&id) {
            continue;
        }
        let Some(len) = ledger.size(&id)? else {
            // An access time for a blob no longer stored.
            ledger.drop_access(at, &id)?;
            continue;
        };
        for r in store.index.refs_of(&id)? {
            match r {
                Ref::Tarball(key) => {
                    store.index.remove_tarball_key(&key)?;
                    // Tarball keys are `name/file`; file names hold no `/`.
                    let name = std::str::from_utf8(&key)
                        .ok()
                        .and_then(|k| k.rsplit_once('/'))
                        .and_then(|(n, _)| PackageName::parse(n).ok());
                    packages.extend(name);
                }
                Ref::Packument(name) => {
                    store.index.remove_packument(&name)?;
                    packages.insert(name);
                }
            }
        }
        used = used.saturating_sub(len);
        victims.push((id, len));
    }
    Ok((victims, packages))
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EvictError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EvictError::Task(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PackumentEntry;
    use open_registry_protocol::{PackageName, Verifier};

    #[tokio::test]
    async fn evicts_unpinned_lru_first_and_keeps_pins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(dir.path(), crate::clock::Clock::system())
                .await
                .unwrap(),
        );
        let pins = Arc::new(Pins::open(&store.index, crate::clock::Clock::system()).unwrap());
        let name = PackageName::parse("p").unwrap();
        let mut ids = Vec::new();
        for i in 0..5u8 {
            let bytes = vec![i; 1000];
            let id = store
                .blobs
                .put(&bytes, Verifier::id_only(), u64::MAX)
                .await
                .unwrap();
            let file = format!("p-{i}.0.0.tgz");
            store.index.set_tarball(&name, &file, &id).await.unwrap();
            // Older blobs were used longer ago.
            store.index.touch(&id, 1000 + u64::from(i));
            ids.push((id, file));
        }
        // The oldest is pinned: it must survive although it is the least recently used.
        pins.add(&store.index, &name, "0.0.0", &ids[0].1)
            .await
            .unwrap();
        assert_eq!(store.blobs.usage().0, 5000);
        // Under the cap: nothing happens.
        assert!(evict(&store, &pins, 5000).await.unwrap().evicted.is_empty());
        // Cap 3000 → down to 2700: the two least recently used unpinned blobs (1, 2) and the
        // third-oldest (3) go; 0 (pinned) and 4 (newest) stay.
        let r = evict(&store, &pins, 3000).await.unwrap();
        assert_eq!(r.evicted, vec![ids[1].0, ids[2].0, ids[3].0]);
        assert_eq!(store.blobs.usage().0, 2000);
        assert!(store.blobs.contains(&ids[0].0) && store.blobs.contains(&ids[4].0));
        // Their index entries are gone; the pinned one's stays.
        assert_eq!(store.index.tarball(&name, &ids[1].1).unwrap(), None);
        assert_eq!(
            store.index.tarball(&name, &ids[0].1).unwrap(),
            Some(ids[0].0)
        );
        // After a clean restart the size is still right, without an audit.
        store.close().await.unwrap();
        drop((pins, store));
        let store = Store::open(dir.path(), crate::clock::Clock::system())
            .await
            .unwrap();
        assert!(!store.needs_audit());
        assert_eq!(store.blobs.usage(), (2000, 2));
        assert_eq!(store.index.counts(), (0, 2));
    }

    #[tokio::test]
    async fn unreferenced_blobs_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            Store::open(dir.path(), crate::clock::Clock::system())
                .await
                .unwrap(),
        );
        let pins = Arc::new(Pins::open(&store.index, crate::clock::Clock::system()).unwrap());
        let name = PackageName::parse("p").unwrap();
        let put = |b: u8| {
            let store = store.clone();
            async move {
                store
                    .blobs
                    .put(&[b; 600], Verifier::id_only(), u64::MAX)
                    .await
                    .unwrap()
            }
        };
        let used = put(1).await;
        store
            .index
            .set_tarball(&name, "p-1.0.0.tgz", &used)
            .await
            .unwrap();
        store.index.touch(&used, 1);
        // Never named by any entry.
        let orphan = put(2).await;
        // A packument revision, replaced by a newer one: nothing names it any more.
        let (old, new) = (put(3).await, put(4).await);
        for id in [old, new] {
            let e = PackumentEntry {
                id,
                etag: None,
                last_modified: None,
                checked_at: 1,
            };
            store.index.set_packument(&name, &e).await.unwrap();
        }
        store.index.touch(&new, 2);
        assert_eq!(store.index.counts(), (1, 1));
        let r = evict(&store, &pins, 1800).await.unwrap();
        let mut evicted = r.evicted.clone();
        evicted.sort_by_key(|id| id.to_string());
        let mut expected = vec![orphan, old];
        expected.sort_by_key(|id| id.to_string());
        assert_eq!(
            evicted, expected,
            "the unreferenced go before the least recently used"
        );
        assert!(store.blobs.contains(&used) && store.blobs.contains(&new));
        assert_eq!(store.blobs.usage(), (1200, 2));
    }
}

//! Keeping the store under its size cap: unpinned blobs are evicted least recently used first.
//!
//! Invariants: pinned blobs (see [`Pins::protected`]) are never evicted; an index entry is
//! removed (and flushed) before the blob it names is deleted, so a crash in between leaves an
//! orphan file (counted, and evicted on a later pass) but never an entry that points at nothing;
//! every evicted blob is reported so the caller can withdraw it from the DHT. Blobs no index
//! entry names (old packument revisions) go first, then the rest by last access.

use std::collections::HashMap;
use std::sync::Arc;

use open_registry_protocol::{BlobId, PackageName};

use crate::store::pins::Pins;
use crate::store::{IndexError, Store};

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// Blobs deleted, in eviction order.
    pub evicted: Vec<BlobId>,
    /// Bytes freed.
    pub freed: u64,
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

enum Ref {
    Tarball(Vec<u8>),
    Packument(PackageName),
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
    let (s, p) = (store.clone(), pins.clone());
    let victims = blocking(move || choose(&s, &p, used, low_water(cap))).await??;
    // Index entries go first, durably: a crash before the files are deleted leaves orphan
    // files (evicted by a later pass), never an entry naming nothing.
    store.index.flush().await?;
    let s = store.clone();
    let report = blocking(move || {
        let mut report = Report::default();
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
/// `used` would reach `target`, and removes the index entries naming them (not yet flushed).
fn choose(
    store: &Store,
    pins: &Pins,
    used: u64,
    target: u64,
) -> Result<Vec<(BlobId, u64)>, EvictError> {
    store.index.persist_access()?;
    let protected = pins.protected(&store.index)?;
    let mut refs: HashMap<BlobId, Vec<Ref>> = HashMap::new();
    for (key, id) in store.index.tarball_entries()? {
        refs.entry(id).or_default().push(Ref::Tarball(key));
    }
    for (name, e) in store.index.packument_entries()? {
        refs.entry(e.id).or_default().push(Ref::Packument(name));
    }
    let mut candidates = Vec::new();
    for (id, len) in store.blobs.list()? {
        if protected.contains(&id) {
            continue;
        }
        let referenced = refs.contains_key(&id);
        let last = store.index.last_access(&id)?.unwrap_or(0);
        candidates.push((referenced, last, id, len));
    }
    candidates.sort_by_key(|&(referenced, last, _, _)| (referenced, last));
    let mut used = used;
    let mut victims = Vec::new();
    for (_, _, id, len) in candidates {
        if used <= target {
            break;
        }
        for r in refs.remove(&id).unwrap_or_default() {
            match r {
                Ref::Tarball(key) => store.index.remove_tarball_key(&key)?,
                Ref::Packument(name) => store.index.remove_packument(&name)?,
            }
        }
        used = used.saturating_sub(len);
        victims.push((id, len));
    }
    Ok(victims)
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
    use open_registry_protocol::Verifier;

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
        // After a restart the size is still right.
        drop((pins, store));
        let store = Store::open(dir.path(), crate::clock::Clock::system())
            .await
            .unwrap();
        assert_eq!(store.blobs.usage(), (2000, 2));
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
        let used = store
            .blobs
            .put(&[1; 600], Verifier::id_only(), u64::MAX)
            .await
            .unwrap();
        store
            .index
            .set_tarball(&name, "p-1.0.0.tgz", &used)
            .await
            .unwrap();
        store.index.touch(&used, 1);
        let orphan = store
            .blobs
            .put(&[2; 600], Verifier::id_only(), u64::MAX)
            .await
            .unwrap();
        store.index.touch(&orphan, 999_999);
        let r = evict(&store, &pins, 1000).await.unwrap();
        assert_eq!(r.evicted, vec![orphan]);
    }
}

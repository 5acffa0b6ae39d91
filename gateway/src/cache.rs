//! The render cache: every document the gateway derives, kept in its final encoded form,
//! bounded by bytes and evicted least-recently-used.
//!
//! Keyed by (packument revision id, base URL, form), so a new revision or another base URL is a
//! new entry and nothing is ever invalidated in place. Goals, in order:
//!
//! 1. A hit is a read lock, a hash lookup and an atomic store (the recency tick): no parse,
//!    no serialization, no compression, no allocation beyond the key.
//! 2. Concurrent misses on one key render once: each key has a slot holding an async
//!    `OnceCell`; the first caller renders (on a blocking thread), the others wait for it.
//! 3. Memory stays under the budget: each entry is weighed (both encodings and its key) when it
//!    is filled, and when the total passes the budget the least recently used entries go, down
//!    to 7/8 of the budget so a full cache does not sort its entries on every insert. An entry
//!    larger than half the budget is served but never kept, so no single document can flush
//!    the rest.
//!
//! A failed render leaves nothing behind: its slot is removed and the next request tries again.
//! A form that does not exist (a version missing from a revision) is cached as `None`, so
//! repeated requests for a missing version do not re-parse the packument.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use open_registry_protocol::BlobId;
use tokio::sync::OnceCell;

use crate::registry::Error;
use crate::render::{Form, Rendered};

/// What a slot holds once filled: the document, or `None` if that form does not exist.
pub(crate) type Entry = Option<Arc<Rendered>>;

/// Identifies one derived document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// The packument revision.
    pub(crate) id: BlobId,
    /// The base URL tarballs were rewritten to.
    pub(crate) base: String,
    /// Which document.
    pub(crate) form: Form,
}

impl Key {
    /// Bytes the key itself costs, counted against the budget (hostile Host headers make many
    /// distinct keys).
    fn weight(&self) -> usize {
        let form = match &self.form {
            Form::Version(spec) => spec.len(),
            _ => 0,
        };
        // Map bucket, slot and bookkeeping, roughly.
        std::mem::size_of::<Self>() + self.base.len() + form + 128
    }
}

/// Counters a `/-/metrics` scrape reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    /// Requests answered from a filled slot.
    pub(crate) hits: u64,
    /// Requests that found no filled slot (they rendered, or waited for a render).
    pub(crate) misses: u64,
    /// Renders started (misses minus coalesced waiters, plus retries after failures).
    pub(crate) renders: u64,
    /// Entries dropped to stay under the budget.
    pub(crate) evictions: u64,
    /// Bytes held now.
    pub(crate) bytes: u64,
    /// Filled entries held now.
    pub(crate) entries: u64,
}

#[derive(Debug)]
struct Slot {
    cell: OnceCell<Entry>,
    /// Value of the cache's tick at the last use; the smallest is evicted first.
    last_used: AtomicU64,
    /// The bytes counted for this slot; 0 until it is filled and counted.
    weight: AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Arc<Slot>>,
    bytes: usize,
    entries: usize,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct RenderCache {
    budget: usize,
    // std RwLock, not tokio: it is never held across an await, and a hit only reads.
    inner: RwLock<Inner>,
    tick: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    renders: AtomicU64,
    evictions: AtomicU64,
}

impl RenderCache {
    /// A cache holding at most about `budget` bytes.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: RwLock::new(Inner::default()),
            tick: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            renders: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The entry for `key`, calling `render(&key)` on a blocking thread if no one has yet.
    pub(crate) async fn get_or_render<F>(&self, key: Key, render: F) -> Result<Entry, Error>
    where
        F: FnOnce(&Key) -> Result<Entry, Error> + Send + 'static,
    {
        let now = self.tick.fetch_add(1, Relaxed);
        let found = self.read().map.get(&key).cloned();
        if let Some(slot) = &found {
            slot.last_used.store(now, Relaxed);
            if let Some(entry) = slot.cell.get() {
                self.hits.fetch_add(1, Relaxed);
                return Ok(entry.clone());
            }
        }
        self.misses.fetch_add(1, Relaxed);
        let slot = match found {
            Some(slot) => slot,
            None => self
                .write()
                .map
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new(Slot {
                        cell: OnceCell::new(),
                        last_used: AtomicU64::new(now),
                        weight: AtomicUsize::new(0),
                    })
                })
                .clone(),
        };

        let mut rendered_here = false;
        let flag = &mut rendered_here;
        let render_key = key.clone();
        let result = slot
            .cell
            .get_or_try_init(move || async move {
                *flag = true;
                self.renders.fetch_add(1, Relaxed);
                tokio::task::spawn_blocking(move || render(&render_key))
                    .await
                    .map_err(|e| Error::Internal(format!("render task failed: {e}")))?
            })
            .await
            .cloned();
        match &result {
            Ok(entry) if rendered_here => self.account(&key, &slot, entry),
            Ok(_) => {}
            Err(_) => self.forget(&key, &slot),
        }
        result
    }

    /// Counts a freshly filled slot against the budget, evicting if needed.
    fn account(&self, key: &Key, slot: &Arc<Slot>, entry: &Entry) {
        let weight = key.weight() + entry.as_ref().map_or(0, |r| r.weight());
        let mut inner = self.write();
        // Evicted or replaced while rendering: the caller still gets its document, but it is
        // not in the map, so it must not be counted.
        if !inner.map.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            return;
        }
        if weight > self.budget / 2 {
            // Keeping it would evict everything older first: one huge document must not
            // flush the cache. It is served to its waiters and rendered again next time.
            inner.map.remove(key);
            self.evictions.fetch_add(1, Relaxed);
            return;
        }
        if slot.weight.swap(weight, Relaxed) != 0 {
            return;
        }
        inner.bytes += weight;
        inner.entries += 1;
        if inner.bytes > self.budget {
            self.evict(&mut inner);
        }
    }

    /// Drops least recently used filled entries until the cache is at 7/8 of its budget.
    fn evict(&self, inner: &mut Inner) {
        let target = self.budget - self.budget / 8;
        let mut filled: Vec<(u64, Key)> = inner
            .map
            .iter()
            .filter(|(_, s)| s.weight.load(Relaxed) > 0)
            .map(|(k, s)| (s.last_used.load(Relaxed), k.clone()))
            .collect();
        filled.sort_unstable_by_key(|(tick, _)| *tick);
        for (_, key) in filled {
            if inner.bytes <= target {
                break;
            }
            if let Some(slot) = inner.map.remove(&key) {
                inner.bytes -= slot.weight.load(Relaxed);
                inner.entries -= 1;
                self.evictions.fetch_add(1, Relaxed);
            }
        }
    }

    /// Removes a slot whose render failed, unless someone has since filled or replaced it.
    fn forget(&self, key: &Key, slot: &Arc<Slot>) {
        let mut inner = self.write();
        if inner
            .map
            .get(key)
            .is_some_and(|s| Arc::ptr_eq(s, slot) && !s.cell.initialized())
        {
            inner.map.remove(key);
        }
    }

    /// The counters.
    pub(crate) fn stats(&self) -> Stats {
        let (bytes, entries) = {
            let inner = self.read();
            (inner.bytes, inner.entries)
        };
        Stats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            renders: self.renders.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            bytes: bytes as u64,
            entries: entries as u64,
        }
    }

    // A panic while holding the lock cannot leave the map inconsistent in a way that matters
    // (at worst a byte count is off), so poisoning is ignored rather than spread to every
    // later request.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn key(n: u8, form: Form) -> Key {
        Key {
            id: BlobId::of(&[n]),
            base: "http://gw".into(),
            form,
        }
    }

    fn doc(len: usize) -> Entry {
        let body = format!("\"{}\"", "x".repeat(len));
        Some(Arc::new(
            Rendered::from_bytes(Bytes::from(body), "application/json").unwrap(),
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_render_once() {
        let cache = Arc::new(RenderCache::new(1 << 20));
        let calls = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_render(key(1, Form::Full), move |_| {
                        calls.fetch_add(1, Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                        Ok(doc(10))
                    })
                    .await
            }));
        }
        let mut etags = Vec::new();
        for t in tasks {
            etags.push(t.await.unwrap().unwrap().unwrap().etag.clone());
        }
        assert!(etags.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(calls.load(Relaxed), 1);
        let stats = cache.stats();
        assert_eq!((stats.renders, stats.hits + stats.misses), (1, 32));
        assert_eq!(stats.entries, 1);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let cache = RenderCache::new(1 << 20);
        let k = key(1, Form::Full);
        let e = cache
            .get_or_render(k.clone(), |_| Err(Error::BadGateway("bad".into())))
            .await;
        assert_eq!(e.unwrap_err(), Error::BadGateway("bad".into()));
        assert_eq!(cache.stats().entries, 0);
        assert!(cache.read().map.is_empty());
        let ok = cache.get_or_render(k, |_| Ok(doc(1))).await.unwrap();
        assert!(ok.is_some());
        assert_eq!(cache.stats().renders, 2);
    }

    #[tokio::test]
    async fn missing_forms_are_cached_as_none() {
        let cache = RenderCache::new(1 << 20);
        let k = key(1, Form::Version("9.9.9".into()));
        assert!(
            cache
                .get_or_render(k.clone(), |_| Ok(None))
                .await
                .unwrap()
                .is_none()
        );
        let again = cache
            .get_or_render(k, |_| Err(Error::Internal("must not render again".into())))
            .await;
        assert!(again.unwrap().is_none());
        assert_eq!(cache.stats().renders, 1);
    }

    #[tokio::test]
    async fn stays_under_budget_evicting_least_recently_used() {
        // Each entry weighs about 900 bytes (body, gzip, etag, key); the budget holds about ten.
        let cache = RenderCache::new(9 * 1024);
        for n in 0..8u8 {
            cache
                .get_or_render(key(n, Form::Full), |_| Ok(doc(600)))
                .await
                .unwrap();
        }
        // Touch entry 0 so it is the most recently used.
        cache
            .get_or_render(key(0, Form::Full), |_| {
                Err(Error::Internal("hit expected".into()))
            })
            .await
            .unwrap();
        for n in 8..20u8 {
            cache
                .get_or_render(key(n, Form::Full), |_| Ok(doc(600)))
                .await
                .unwrap();
            assert!(cache.stats().bytes <= 9 * 1024, "{:?}", cache.stats());
        }
        let stats = cache.stats();
        assert!(stats.evictions > 0);
        let map = &cache.read().map;
        assert!(!map.contains_key(&key(1, Form::Full)), "oldest entry kept");
        assert!(
            map.contains_key(&key(19, Form::Full)),
            "newest entry evicted"
        );
    }

    #[tokio::test]
    async fn an_entry_larger_than_half_the_budget_is_served_but_not_kept() {
        let cache = RenderCache::new(4096);
        cache
            .get_or_render(key(0, Form::Full), |_| Ok(doc(10)))
            .await
            .unwrap();
        let small = cache.stats();
        let e = cache
            .get_or_render(key(1, Form::Full), |_| Ok(doc(3000)))
            .await
            .unwrap();
        assert!(e.is_some());
        let stats = cache.stats();
        assert_eq!(
            (stats.entries, stats.bytes, stats.evictions),
            (1, small.bytes, 1)
        );
        assert!(
            cache.read().map.contains_key(&key(0, Form::Full)),
            "the small entry was flushed"
        );
    }
}

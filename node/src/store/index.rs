//! The sled indexes: package name → current packument revision, tarball file → blob id, blob
//! id → the entries naming it (`refs`), and through the ledger (`store/ledger.rs`) every blob's
//! size and last access.
//!
//! Invariant: an index entry is written only after the blob it names is durable, and a write is
//! acknowledged only after sled has flushed it (sled 0.34 is durable only after `flush`). So
//! after a crash an entry can be missing (the blob is re-fetched) but never point at nothing;
//! [`Index::repair`] removes entries whose blob vanished anyway (deleted by hand, or an
//! eviction cut short).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use open_registry_protocol::{BlobId, PackageName};
use serde::{Deserialize, Serialize};

use super::ledger::{Ledger, Opened, Usage};
use crate::clock::Clock;

/// A packument revision as the index remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackumentEntry {
    /// The blob holding the full document.
    pub id: BlobId,
    /// The upstream's ETag for it, for conditional revalidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// The upstream's Last-Modified, when there was no ETag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    /// When the source last confirmed this revision (unix ms).
    pub checked_at: u64,
}

/// Index failures.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index: {0}")]
    Sled(#[from] sled::Error),
    #[error("index entry is corrupt: {0}")]
    Corrupt(String),
}

/// How long opening waits for a database this process closed a moment ago to be unlocked.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The sled database and its trees.
#[derive(Debug)]
pub struct Index {
    db: sled::Db,
    /// What "now" is for access times.
    clock: Clock,
    packuments: sled::Tree,
    tarballs: sled::Tree,
    /// Blob id, a tag (`p` packument, `t` tarball) and the entry's key → nothing: which entries
    /// name a blob, so eviction removes them without a scan. Written before the entry, so an
    /// entry always has its `refs` key; a stale key (the entry names another blob now) is
    /// checked against the entry and skipped.
    refs: sled::Tree,
    /// Sizes, totals and access order.
    ledger: Arc<Ledger>,
    /// How the ledger found the last run's end.
    opened: Opened,
    packument_count: AtomicU64,
    tarball_count: AtomicU64,
    /// Accesses not yet written: recording every hit in sled would put a write on the hot path.
    /// std Mutex: never held across an await.
    pending_access: Mutex<HashMap<BlobId, u64>>,
    /// Group commit: one sled flush at a time, covering every caller that asked before it
    /// began. sled 0.34.7 hangs for good when seven or more `flush_async` calls overlap (every
    /// `sled-io` thread waits in the flush; reproduced with sled alone), which concurrent
    /// ingests used to do. tokio Mutex: held across the flush.
    flushing: tokio::sync::Mutex<()>,
    /// Flushes asked for so far (a ticket is taken after the caller's writes).
    flush_asked: AtomicU64,
    /// Every ticket up to this one is durable.
    flush_done: AtomicU64,
}

fn tarball_key(name: &PackageName, file: &str) -> Vec<u8> {
    format!("{name}/{file}").into_bytes()
}

/// An entry that names a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ref {
    /// A tarball entry, by its raw key.
    Tarball(Vec<u8>),
    /// A packument entry.
    Packument(PackageName),
}

fn ref_key(id: &BlobId, tag: u8, key: &[u8]) -> Vec<u8> {
    let mut k = id.to_bytes();
    k.push(tag);
    k.extend_from_slice(key);
    k
}

impl Index {
    /// Opens the database at `path`; access times are read off `clock`.
    pub fn open(path: &std::path::Path, clock: Clock) -> Result<Index, IndexError> {
        // sled caches up to 1 GiB by default; the index is small and hot entries stay cached.
        let config = sled::Config::new().path(path).cache_capacity(4 << 20);
        let fresh = !path.exists();
        // The database's file lock is released by sled's background thread after the last
        // handle is dropped, so a database closed a moment ago in this process (a node
        // restarted in process) may still be locked: wait for it, boundedly. Another process
        // holding it keeps it, and the error says so.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r?,
            }
        };
        let (ledger, opened) = Ledger::open(&db, fresh)?;
        let saved = match opened {
            Opened::Clean(u) | Opened::NeedsAudit(u) => u,
        };
        Ok(Index {
            packuments: db.open_tree("packuments")?,
            tarballs: db.open_tree("tarballs")?,
            refs: db.open_tree("refs")?,
            ledger: Arc::new(ledger),
            opened,
            packument_count: AtomicU64::new(saved.packuments),
            tarball_count: AtomicU64::new(saved.tarballs),
            db,
            clock,
            pending_access: Mutex::new(HashMap::new()),
            flushing: tokio::sync::Mutex::new(()),
            flush_asked: AtomicU64::new(0),
            flush_done: AtomicU64::new(0),
        })
    }

    /// Another tree in the same database (records, pins...), flushed with [`Index::flush`].
    pub fn tree(&self, name: &str) -> Result<sled::Tree, IndexError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Makes every write so far durable. Concurrent callers share flushes: one runs at a
    /// time, and a caller whose writes an already finished flush covered returns at once.
    pub async fn flush(&self) -> Result<(), IndexError> {
        let ticket = self.flush_asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _one = self.flushing.lock().await;
        if self.flush_done.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket taken so far belongs to writes made before this flush starts.
        let covers = self.flush_asked.load(Ordering::SeqCst);
        // sled's flush waits for the disk inside the call, async or not: keep it off the
        // runtime's workers.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| IndexError::Corrupt(format!("flush task failed: {e}")))??;
        self.flush_done.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// The current packument revision of `name`.
    pub fn packument(&self, name: &PackageName) -> Result<Option<PackumentEntry>, IndexError> {
        let Some(v) = self.packuments.get(name.as_str())? else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| IndexError::Corrupt(format!("packument entry of {name}: {e}")))
    }

    /// Records a packument revision (durable when this returns). The revision it replaces, if
    /// nothing else names it, goes to the front of the eviction order.
    pub async fn set_packument(
        &self,
        name: &PackageName,
        entry: &PackumentEntry,
    ) -> Result<(), IndexError> {
        let v = serde_json::to_vec(entry).expect("entries serialize");
        let key = name.as_str().as_bytes();
        self.refs.insert(ref_key(&entry.id, b'p', key), &[])?;
        let old = self.packuments.insert(key, v)?;
        self.replaced(
            old.map(|o| packument_id(&o)),
            &entry.id,
            b'p',
            key,
            &self.packument_count,
        )?;
        self.touch(&entry.id, self.clock.now_ms());
        self.flush().await
    }

    /// After an entry `key` changed from naming `old` to `new`: counts a new entry, drops the
    /// old blob's `refs` key, and puts the old blob first in line for eviction when nothing
    /// names it any more.
    fn replaced(
        &self,
        old: Option<Option<BlobId>>,
        new: &BlobId,
        tag: u8,
        key: &[u8],
        count: &AtomicU64,
    ) -> Result<(), IndexError> {
        match old {
            None => {
                count.fetch_add(1, Ordering::Relaxed);
            }
            Some(Some(old)) if old != *new => {
                self.refs.remove(ref_key(&old, tag, key))?;
                if self.refs_of(&old)?.is_empty() {
                    self.touch(&old, 0);
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Whether the index still holds the packument or any tarball of `name` (a point lookup
    /// and a prefix scan of that package's tarball keys only).
    pub(crate) fn holds_package(&self, name: &PackageName) -> Result<bool, IndexError> {
        if self.packuments.contains_key(name.as_str())? {
            return Ok(true);
        }
        let prefix = format!("{name}/");
        Ok(self
            .tarballs
            .scan_prefix(prefix.as_bytes())
            .next()
            .transpose()?
            .is_some())
    }

    /// The packages of which the index holds a packument or a tarball, read off the keys
    /// alone (tarball keys are `name/file`, and file names hold no `/`): nothing but the
    /// names is held, however many tarballs the store has.
    pub(crate) fn held_packages(&self) -> Result<BTreeSet<PackageName>, IndexError> {
        let mut names = BTreeSet::new();
        for k in self.packuments.iter().keys() {
            if let Some(name) = std::str::from_utf8(&k?)
                .ok()
                .and_then(|n| PackageName::parse(n).ok())
            {
                names.insert(name);
            }
        }
        // Keys are sorted, so a package's tarballs are consecutive: parse each name once.
        let mut last: Option<String> = None;
        for k in self.tarballs.iter().keys() {
            let k = k?;
            let Some((name, _)) = std::str::from_utf8(&k)
                .ok()
                .and_then(|k| k.rsplit_once('/'))
            else {
                continue;
            };
            if last.as_deref() == Some(name) {
                continue;
            }
            last = Some(name.to_owned());
            if let Ok(name) = PackageName::parse(name) {
                names.insert(name);
            }
        }
        Ok(names)
    }

    /// The entries that name `id` now.
    pub(crate) fn refs_of(&self, id: &BlobId) -> Result<Vec<Ref>, IndexError> {
        let prefix = id.to_bytes();
        let mut out = Vec::new();
        for k in self.refs.scan_prefix(&prefix).keys() {
            let k = k?;
            let (tag, key) = (k[prefix.len()], &k[prefix.len() + 1..]);
            let r = match tag {
                b't' if self
                    .tarballs
                    .get(key)?
                    .is_some_and(|v| v.as_ref() == prefix.as_slice()) =>
                {
                    Ref::Tarball(key.to_vec())
                }
                b'p' => {
                    let name = std::str::from_utf8(key)
                        .ok()
                        .and_then(|s| PackageName::parse(s).ok());
                    let Some(name) = name else { continue };
                    if self.packument(&name)?.map(|e| e.id) != Some(*id) {
                        continue;
                    }
                    Ref::Packument(name)
                }
                _ => continue,
            };
            out.push(r);
        }
        Ok(out)
    }

    /// Writes the `refs` key of every entry (stores from before `refs`; the audit). Blocking.
    pub(crate) fn rebuild_refs(&self) -> Result<(), IndexError> {
        for kv in self.tarballs.iter() {
            let (k, v) = kv?;
            if let Ok(id) = BlobId::from_bytes(&v) {
                self.refs.insert(ref_key(&id, b't', &k), &[])?;
            }
        }
        for kv in self.packuments.iter() {
            let (k, v) = kv?;
            if let Some(id) = packument_id(&v) {
                self.refs.insert(ref_key(&id, b'p', &k), &[])?;
            }
        }
        self.packument_count
            .store(self.packuments.len() as u64, Ordering::Relaxed);
        self.tarball_count
            .store(self.tarballs.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The ledger of blob sizes, totals and access order.
    pub(crate) fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Whether the last run did not shut down cleanly (or the store predates the ledger), so
    /// the totals need an audit.
    pub(crate) fn opened_unclean(&self) -> bool {
        matches!(self.opened, Opened::NeedsAudit(_))
    }

    /// The store's totals now.
    pub(crate) fn usage(&self) -> Usage {
        let (bytes, blobs) = self.ledger.usage();
        let (packuments, tarballs) = self.counts();
        Usage {
            bytes,
            blobs,
            packuments,
            tarballs,
        }
    }

    /// The blob holding tarball `file` of `name`.
    pub fn tarball(&self, name: &PackageName, file: &str) -> Result<Option<BlobId>, IndexError> {
        let Some(v) = self.tarballs.get(tarball_key(name, file))? else {
            return Ok(None);
        };
        BlobId::from_bytes(&v)
            .map(Some)
            .map_err(|e| IndexError::Corrupt(format!("tarball entry {name}/{file}: {e}")))
    }

    /// Records where tarball `file` of `name` is (durable when this returns).
    pub async fn set_tarball(
        &self,
        name: &PackageName,
        file: &str,
        id: &BlobId,
    ) -> Result<(), IndexError> {
        let key = tarball_key(name, file);
        self.refs.insert(ref_key(id, b't', &key), &[])?;
        let old = self.tarballs.insert(&key, id.to_bytes())?;
        self.replaced(
            old.map(|o| BlobId::from_bytes(&o).ok()),
            id,
            b't',
            &key,
            &self.tarball_count,
        )?;
        self.touch(id, self.clock.now_ms());
        self.flush().await
    }

    /// Forgets a tarball entry.
    pub fn remove_tarball(&self, name: &PackageName, file: &str) -> Result<(), IndexError> {
        self.remove_tarball_key(&tarball_key(name, file))
    }

    /// Every tarball entry: (index key, blob id). Unparseable entries are skipped.
    pub fn tarball_entries(&self) -> Result<Vec<(Vec<u8>, BlobId)>, IndexError> {
        let mut out = Vec::new();
        for kv in self.tarballs.iter() {
            let (k, v) = kv?;
            if let Ok(id) = BlobId::from_bytes(&v) {
                out.push((k.to_vec(), id));
            }
        }
        Ok(out)
    }

    /// Every packument entry.
    pub fn packument_entries(&self) -> Result<Vec<(PackageName, PackumentEntry)>, IndexError> {
        self.packument_entries_after(None, usize::MAX)
    }

    /// At most `limit` packument entries, by name, after `after` (from the first without it):
    /// a store's packuments page by page, without holding them all at once.
    pub fn packument_entries_after(
        &self,
        after: Option<&PackageName>,
        limit: usize,
    ) -> Result<Vec<(PackageName, PackumentEntry)>, IndexError> {
        use std::ops::Bound;
        let from = match after {
            Some(n) => Bound::Excluded(n.as_str().as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self
            .packuments
            .range::<Vec<u8>, _>((from, Bound::Unbounded))
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = kv?;
            let name = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| PackageName::parse(s).ok());
            if let (Some(name), Ok(e)) = (name, serde_json::from_slice(&v)) {
                out.push((name, e));
            }
        }
        Ok(out)
    }

    /// A stream of every later change to the packument entries (sled's subscriber: an insert
    /// carries the entry's bytes, a remove only the name). Subscribe before listing
    /// ([`Index::packument_entries`]) so that no change falls between the two.
    pub fn watch_packuments(&self) -> sled::Subscriber {
        self.packuments.watch_prefix(Vec::<u8>::new())
    }

    /// Forgets a tarball entry by its raw index key.
    pub fn remove_tarball_key(&self, key: &[u8]) -> Result<(), IndexError> {
        if let Some(old) = self.tarballs.remove(key)? {
            self.tarball_count.fetch_sub(1, Ordering::Relaxed);
            if let Ok(id) = BlobId::from_bytes(&old) {
                self.refs.remove(ref_key(&id, b't', key))?;
            }
        }
        Ok(())
    }

    /// Forgets a packument entry.
    pub fn remove_packument(&self, name: &PackageName) -> Result<(), IndexError> {
        let key = name.as_str().as_bytes();
        if let Some(old) = self.packuments.remove(key)? {
            self.packument_count.fetch_sub(1, Ordering::Relaxed);
            if let Some(id) = packument_id(&old) {
                self.refs.remove(ref_key(&id, b'p', key))?;
            }
        }
        Ok(())
    }

    /// Notes that `id` was used at `at_ms`; written by [`Index::persist_access`].
    pub fn touch(&self, id: &BlobId, at_ms: u64) {
        self.pending_access
            .lock()
            .expect("access map poisoned")
            .insert(*id, at_ms);
    }

    /// Writes pending access times.
    pub fn persist_access(&self) -> Result<(), IndexError> {
        let pending =
            std::mem::take(&mut *self.pending_access.lock().expect("access map poisoned"));
        // Plain inserts, not `apply_batch`: a batch takes sled's global lock exclusively, and
        // queued behind sled's own flusher that deadlocked a node under a cold `npm ci`. The
        // access times need no atomicity.
        for (id, at) in pending {
            self.ledger.set_access(&id, at)?;
        }
        Ok(())
    }

    /// When `id` was last used (unix ms), if known.
    pub fn last_access(&self, id: &BlobId) -> Result<Option<u64>, IndexError> {
        if let Some(at) = self
            .pending_access
            .lock()
            .expect("access map poisoned")
            .get(id)
        {
            return Ok(Some(*at));
        }
        self.ledger.access(id)
    }

    /// Counts: (packuments, tarballs), kept as entries come and go (no scan).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.packument_count.load(Ordering::Relaxed),
            self.tarball_count.load(Ordering::Relaxed),
        )
    }

    /// Removes entries that point at blobs `exists` says are gone, and entries that do not
    /// parse. Returns how many were removed; the caller flushes. Blocking (a scan of sled): the
    /// store's audit runs it after a crash, not every start.
    pub fn repair(&self, exists: impl Fn(&BlobId) -> bool) -> Result<usize, IndexError> {
        let mut removed = 0;
        for kv in self.packuments.iter() {
            let (k, v) = kv?;
            let ok = serde_json::from_slice::<PackumentEntry>(&v).is_ok_and(|e| exists(&e.id));
            if !ok {
                if self.packuments.remove(&k)?.is_some() {
                    self.packument_count.fetch_sub(1, Ordering::Relaxed);
                }
                removed += 1;
            }
        }
        for kv in self.tarballs.iter() {
            let (k, v) = kv?;
            if !BlobId::from_bytes(&v).is_ok_and(|id| exists(&id)) {
                self.remove_tarball_key(&k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The blob a packument entry's bytes name.
fn packument_id(v: &[u8]) -> Option<BlobId> {
    serde_json::from_slice::<PackumentEntry>(v)
        .ok()
        .map(|e| e.id)
}

#[cfg(test)]
mod tests;

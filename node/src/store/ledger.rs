//! The store's ledger: every stored blob with its size, the store's totals, and the blobs in
//! order of last access, kept in sled so that nothing at start, in status or in eviction has to
//! list the blob directory.
//!
//! Trees (all in the index's database):
//!
//! - `blob_sizes`: blob id (binary CID) → length (u64, big-endian). An entry is written after the
//!   blob is durable under its id and removed after (or while) the file is deleted.
//! - `access`: blob id → last access (unix ms, u64 big-endian); 0 for a blob nothing names yet
//!   (an old packument revision, a blob whose entry a crash lost), which eviction takes first.
//! - `lru`: last access (u64 big-endian) followed by the blob id → nothing: the same times,
//!   ordered, so eviction reads the oldest first without a scan.
//! - `store_meta`: the totals at the last clean shutdown (`usage`), the ledger's format
//!   (`format`), and `clean`, present only between a clean shutdown and the next start.
//!
//! Totals live in memory and are written at shutdown. A start that finds `clean` takes them as
//! they are; any other start (a crash, a store from before the ledger) runs an audit in the
//! background that walks the blob directory once and corrects the ledger: the only scan, and
//! only after a crash.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use open_registry_protocol::BlobId;

use super::IndexError;

/// The ledger's format; a store whose `format` differs is audited (and so migrated) at start.
pub(crate) const FORMAT: u64 = 1;

/// The store's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of blob files.
    pub bytes: u64,
    /// Blob files.
    pub blobs: u64,
    /// Packument entries.
    pub packuments: u64,
    /// Tarball entries.
    pub tarballs: u64,
}

impl Usage {
    fn to_bytes(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, v) in [self.bytes, self.blobs, self.packuments, self.tarballs]
            .into_iter()
            .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    fn from_bytes(b: &[u8]) -> Option<Usage> {
        if b.len() != 32 {
            return None;
        }
        let at = |i: usize| u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Some(Usage {
            bytes: at(0),
            blobs: at(1),
            packuments: at(2),
            tarballs: at(3),
        })
    }
}

/// What the ledger found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opened {
    /// The last run shut down cleanly: the totals are exact.
    Clean(Usage),
    /// A crash, or an older store: the totals are the last saved ones (if any) until an audit.
    NeedsAudit(Usage),
}

/// The ledger's trees and the blob totals.
#[derive(Debug)]
pub(crate) struct Ledger {
    sizes: sled::Tree,
    access: sled::Tree,
    lru: sled::Tree,
    meta: sled::Tree,
    bytes: AtomicU64,
    blobs: AtomicU64,
    /// Held while a blob is entered or forgotten and while an audit recounts, so a recount
    /// never misses or doubles a concurrent change. std Mutex: never held across an await.
    counting: Mutex<()>,
}

fn lru_key(at: u64, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(id);
    k
}

fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

impl Ledger {
    /// Opens the ledger's trees in `db` and reads how the last run ended; `fresh`: the database
    /// was created just now, so there is nothing to audit. The `clean` marker is removed (the
    /// caller flushes), so a crash from here on is seen as one.
    pub(crate) fn open(db: &sled::Db, fresh: bool) -> Result<(Ledger, Opened), IndexError> {
        let meta = db.open_tree("store_meta")?;
        let saved = meta
            .get("usage")?
            .and_then(|v| Usage::from_bytes(&v))
            .unwrap_or_default();
        let format = meta.get("format")?.and_then(|v| be_u64(&v));
        let clean = meta.remove("clean")?.is_some() && format == Some(FORMAT);
        if fresh {
            meta.insert("format", &FORMAT.to_be_bytes())?;
        }
        let clean = clean || fresh;
        let ledger = Ledger {
            sizes: db.open_tree("blob_sizes")?,
            access: db.open_tree("access")?,
            lru: db.open_tree("lru")?,
            meta,
            bytes: AtomicU64::new(saved.bytes),
            blobs: AtomicU64::new(saved.blobs),
            counting: Mutex::new(()),
        };
        let opened = if clean {
            Opened::Clean(saved)
        } else {
            Opened::NeedsAudit(saved)
        };
        Ok((ledger, opened))
    }

    /// Bytes and blobs stored.
    pub(crate) fn usage(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.blobs.load(Ordering::Relaxed),
        )
    }

    /// Notes a blob now durable under its id. A blob never used gets access time 0.
    pub(crate) fn enter(&self, id: &BlobId, len: u64) -> Result<(), IndexError> {
        let key = id.to_bytes();
        let _c = self.counting.lock().expect("ledger lock poisoned");
        if self.sizes.insert(&key, &len.to_be_bytes())?.is_none() {
            self.bytes.fetch_add(len, Ordering::Relaxed);
            self.blobs.fetch_add(1, Ordering::Relaxed);
        }
        if self.access.get(&key)?.is_none() {
            self.access.insert(&key, &0u64.to_be_bytes())?;
            self.lru.insert(lru_key(0, &key), &[])?;
        }
        Ok(())
    }

    /// Forgets a deleted blob; returns the length it had, if it was entered.
    pub(crate) fn forget(&self, id: &BlobId) -> Result<Option<u64>, IndexError> {
        let key = id.to_bytes();
        let _c = self.counting.lock().expect("ledger lock poisoned");
        let len = self.sizes.remove(&key)?.and_then(|v| be_u64(&v));
        if let Some(len) = len {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
            self.blobs.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(at) = self.access.remove(&key)?.and_then(|v| be_u64(&v)) {
            self.lru.remove(lru_key(at, &key))?;
        }
        Ok(len)
    }

    /// The length of an entered blob.
    pub(crate) fn size(&self, id: &BlobId) -> Result<Option<u64>, IndexError> {
        Ok(self.sizes.get(id.to_bytes())?.and_then(|v| be_u64(&v)))
    }

    /// Records that `id` was used at `at` (unix ms), moving it in the access order.
    pub(crate) fn set_access(&self, id: &BlobId, at: u64) -> Result<(), IndexError> {
        let key = id.to_bytes();
        let old = self.access.insert(&key, &at.to_be_bytes())?;
        if let Some(old) = old.and_then(|v| be_u64(&v)) {
            if old == at {
                return Ok(());
            }
            self.lru.remove(lru_key(old, &key))?;
        }
        self.lru.insert(lru_key(at, &key), &[])?;
        Ok(())
    }

    /// When `id` was last used, as written.
    pub(crate) fn access(&self, id: &BlobId) -> Result<Option<u64>, IndexError> {
        Ok(self.access.get(id.to_bytes())?.and_then(|v| be_u64(&v)))
    }

    /// Blobs from the least recently used on: (access time, id). Entries that do not parse are
    /// skipped.
    pub(crate) fn oldest(&self) -> impl Iterator<Item = Result<(u64, BlobId), IndexError>> + '_ {
        self.lru.iter().filter_map(|kv| match kv {
            Err(e) => Some(Err(e.into())),
            Ok((k, _)) if k.len() > 8 => {
                let at = be_u64(&k[..8])?;
                BlobId::from_bytes(&k[8..]).ok().map(|id| Ok((at, id)))
            }
            Ok(_) => None,
        })
    }

    /// Drops an access-order entry whose blob the ledger does not hold.
    pub(crate) fn drop_access(&self, at: u64, id: &BlobId) -> Result<(), IndexError> {
        let key = id.to_bytes();
        self.lru.remove(lru_key(at, &key))?;
        if self.access.get(&key)?.and_then(|v| be_u64(&v)) == Some(at) {
            self.access.remove(&key)?;
        }
        Ok(())
    }

    /// Every entered blob id.
    pub(crate) fn ids(&self) -> impl Iterator<Item = Result<BlobId, IndexError>> + '_ {
        self.sizes.iter().keys().filter_map(|k| match k {
            Err(e) => Some(Err(e.into())),
            Ok(k) => BlobId::from_bytes(&k).ok().map(Ok),
        })
    }

    /// Brings the access order in line with the access times: every access time has its
    /// `lru` key (stores from before the ledger had only the times), every entered blob has a
    /// time, and `lru` keys of blobs not entered go. A blocking scan, run by the audit only.
    pub(crate) fn rebuild_order(&self) -> Result<(), IndexError> {
        for kv in self.access.iter() {
            let (k, v) = kv?;
            match (be_u64(&v), self.sizes.contains_key(&k)?) {
                (Some(at), true) => {
                    self.lru.insert(lru_key(at, &k), &[])?;
                }
                _ => {
                    self.access.remove(&k)?;
                }
            }
        }
        for k in self.sizes.iter().keys() {
            let k = k?;
            if !self.access.contains_key(&k)? {
                self.access.insert(&k, &0u64.to_be_bytes())?;
                self.lru.insert(lru_key(0, &k), &[])?;
            }
        }
        for k in self.lru.iter().keys() {
            let k = k?;
            let live = k.len() > 8
                && self.access.get(&k[8..])?.and_then(|v| be_u64(&v)) == be_u64(&k[..8]);
            if !live {
                self.lru.remove(&k)?;
            }
        }
        Ok(())
    }

    /// Sets the blob totals to the sum of the sizes entered (an audit's last step).
    pub(crate) fn recount(&self) -> Result<(u64, u64), IndexError> {
        let _c = self.counting.lock().expect("ledger lock poisoned");
        let (mut bytes, mut blobs) = (0u64, 0u64);
        for kv in self.sizes.iter() {
            let (_, v) = kv?;
            bytes += be_u64(&v).unwrap_or(0);
            blobs += 1;
        }
        self.bytes.store(bytes, Ordering::Relaxed);
        self.blobs.store(blobs, Ordering::Relaxed);
        Ok((bytes, blobs))
    }

    /// Writes the totals and the format, and with `clean` the marker that lets the next start
    /// trust them (the caller flushes).
    pub(crate) fn save(&self, usage: Usage, clean: bool) -> Result<(), IndexError> {
        self.meta.insert("usage", &usage.to_bytes())?;
        self.meta.insert("format", &FORMAT.to_be_bytes())?;
        if clean {
            self.meta.insert("clean", &[1u8])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> (sled::Db, Ledger, Opened) {
        let fresh = !dir.join("db").exists();
        let db = sled::Config::new().path(dir.join("db")).open().unwrap();
        let (l, o) = Ledger::open(&db, fresh).unwrap();
        (db, l, o)
    }

    #[test]
    fn totals_survive_a_clean_shutdown_and_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (BlobId::of(b"a"), BlobId::of(b"b"));
        {
            let (db, l, o) = open(dir.path());
            assert_eq!(
                o,
                Opened::Clean(Usage::default()),
                "a new store has nothing to audit"
            );
            l.enter(&a, 10).unwrap();
            l.enter(&b, 5).unwrap();
            l.enter(&b, 5).unwrap();
            assert_eq!(l.usage(), (15, 2), "entering twice counts once");
            let u = Usage {
                bytes: 15,
                blobs: 2,
                packuments: 1,
                tarballs: 1,
            };
            l.save(u, true).unwrap();
            db.flush().unwrap();
        }
        {
            let (db, l, o) = open(dir.path());
            assert!(matches!(o, Opened::Clean(u) if u.bytes == 15 && u.tarballs == 1));
            assert_eq!(l.usage(), (15, 2));
            assert_eq!(l.forget(&a).unwrap(), Some(10));
            assert_eq!(
                l.forget(&a).unwrap(),
                None,
                "forgetting twice subtracts once"
            );
            db.flush().unwrap();
            // No save: the next start is a crash's.
        }
        let (_db, l, o) = open(dir.path());
        assert!(matches!(o, Opened::NeedsAudit(u) if u.bytes == 15));
        assert_eq!(l.recount().unwrap(), (5, 1));
    }

    #[test]
    fn the_access_order_is_oldest_first_and_unused_blobs_lead() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, l, _) = open(dir.path());
        let ids: Vec<BlobId> = (0..4u8).map(|i| BlobId::of(&[i])).collect();
        for id in &ids {
            l.enter(id, 1).unwrap();
        }
        l.set_access(&ids[0], 300).unwrap();
        l.set_access(&ids[1], 100).unwrap();
        l.set_access(&ids[2], 200).unwrap();
        l.set_access(&ids[1], 400).unwrap();
        let order: Vec<(u64, BlobId)> = l.oldest().map(Result::unwrap).collect();
        assert_eq!(
            order,
            vec![(0, ids[3]), (200, ids[2]), (300, ids[0]), (400, ids[1])]
        );
        l.forget(&ids[2]).unwrap();
        assert_eq!(l.oldest().count(), 3);
        assert_eq!(l.access(&ids[2]).unwrap(), None);
    }

    #[test]
    fn rebuilding_the_order_migrates_bare_access_times() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, l, _) = open(dir.path());
        let (a, b, gone) = (BlobId::of(b"a"), BlobId::of(b"b"), BlobId::of(b"gone"));
        l.sizes.insert(a.to_bytes(), &1u64.to_be_bytes()).unwrap();
        l.sizes.insert(b.to_bytes(), &1u64.to_be_bytes()).unwrap();
        // As an older store left them: access times without order keys, one for a lost blob.
        l.access.insert(a.to_bytes(), &7u64.to_be_bytes()).unwrap();
        l.access
            .insert(gone.to_bytes(), &3u64.to_be_bytes())
            .unwrap();
        l.lru.insert(lru_key(9, &gone.to_bytes()), &[]).unwrap();
        l.rebuild_order().unwrap();
        let order: Vec<(u64, BlobId)> = l.oldest().map(Result::unwrap).collect();
        assert_eq!(order, vec![(0, b), (7, a)]);
        assert_eq!(l.access(&gone).unwrap(), None);
    }
}

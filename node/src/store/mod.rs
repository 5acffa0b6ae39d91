//! The local store: verified blobs on disk ([`blobs`]), their sled indexes ([`index`]), the
//! pins that keep some of them forever (`pins`) and the eviction that keeps the rest under the
//! disk budget (`evict`).
//!
//! Invariant: what the store holds was verified when it was written, so reads are trusted
//! without re-hashing. Blobs are made durable before any index entry names them, and index
//! entries are removed (durably) before the blobs they name are deleted.

pub mod blobs;
mod commit;
pub(crate) mod evict;
pub mod index;
pub(crate) mod ledger;
pub(crate) mod pins;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use blobs::{Blobs, VerifiedBlob, WriteError, Writer};
pub use index::{Index, IndexError, PackumentEntry};
pub use ledger::Usage;
use open_registry_protocol::status::StoreStats;

use crate::clock::Clock;

/// Blobs plus indexes.
#[derive(Debug)]
pub struct Store {
    /// The blob files.
    pub blobs: Blobs,
    /// The sled indexes.
    pub index: Index,
    /// The totals are not known to be exact: the last run did not shut down cleanly, and
    /// [`Store::audit`] has not finished since.
    unaudited: AtomicBool,
}

/// Why the store could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the blob store in {path}: {source}")]
    Blobs {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the index in {path}: {source}")]
    Index { path: String, source: IndexError },
    #[error("opening the store stopped: {0}")]
    Task(String),
}

/// What an audit found and corrected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Audit {
    /// Blob files the ledger did not list (a crash between a blob's link and its ledger entry,
    /// or a store from before the ledger): entered now.
    pub entered: u64,
    /// Ledger entries whose file is gone (a crash in the middle of an eviction): forgotten.
    pub forgotten: u64,
    /// Index entries naming a missing blob (deleted by hand): removed.
    pub dangling: u64,
    /// The totals after the audit.
    pub usage: Usage,
}

impl Store {
    /// Opens the store in `dir`, deleting interrupted writes; access times are read off
    /// `clock`. Nothing is listed or scanned: the totals are the ones the last clean shutdown
    /// saved. After a crash (or on a store from before the ledger) [`Store::needs_audit`] is
    /// true and [`Store::audit`] corrects them, in the background.
    pub async fn open(dir: &Path, clock: Clock) -> Result<Store, OpenError> {
        let dir = dir.to_owned();
        let db = dir.join("db");
        let db_path = db.display().to_string();
        let store = tokio::task::spawn_blocking(move || {
            let index = Index::open(&db, clock).map_err(|source| OpenError::Index {
                path: db.display().to_string(),
                source,
            })?;
            let blobs =
                Blobs::open(&dir, index.ledger().clone()).map_err(|source| OpenError::Blobs {
                    path: dir.display().to_string(),
                    source,
                })?;
            let unaudited = AtomicBool::new(index.opened_unclean());
            Ok::<_, OpenError>(Store {
                blobs,
                index,
                unaudited,
            })
        })
        .await
        .map_err(|e| OpenError::Task(e.to_string()))??;
        // The ledger dropped its `clean` marker: make that durable before anything is written,
        // so that a crash from now on is seen as one.
        store
            .index
            .flush()
            .await
            .map_err(|source| OpenError::Index {
                path: db_path,
                source,
            })?;
        Ok(store)
    }

    /// Whether the totals wait for an [`audit`](Store::audit).
    pub fn needs_audit(&self) -> bool {
        self.unaudited.load(Ordering::Relaxed)
    }

    /// Walks the blob directory once and brings the ledger and the index in line with it:
    /// files the ledger lacks are entered, entries whose file is gone are forgotten, index
    /// entries naming a missing blob are removed, the access order and the `refs` keys are
    /// rebuilt, and the totals recounted. What a start after a crash runs in the background
    /// (the node serves meanwhile; eviction waits for it). Blocking work runs on the blocking
    /// pool.
    pub async fn audit(self: &Arc<Self>) -> Result<Audit, IndexError> {
        let this = self.clone();
        let audit = tokio::task::spawn_blocking(move || this.audit_blocking())
            .await
            .map_err(|e| IndexError::Corrupt(format!("the store audit stopped: {e}")))??;
        self.index.flush().await?;
        self.unaudited.store(false, Ordering::Relaxed);
        if audit.entered + audit.forgotten + audit.dangling > 0 {
            tracing::warn!(
                entered = audit.entered,
                forgotten = audit.forgotten,
                dangling = audit.dangling,
                "the store audit corrected the ledger and the index"
            );
        }
        tracing::info!(
            bytes = audit.usage.bytes,
            blobs = audit.usage.blobs,
            "store audited"
        );
        Ok(audit)
    }

    fn audit_blocking(&self) -> Result<Audit, IndexError> {
        let ledger = self.index.ledger();
        let mut audit = Audit::default();
        self.blobs
            .walk(|id, len| {
                if ledger
                    .size(&id)
                    .map_err(|e| std::io::Error::other(e.to_string()))?
                    .is_none()
                {
                    ledger
                        .enter(&id, len)
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    audit.entered += 1;
                }
                Ok(())
            })
            .map_err(|e| IndexError::Corrupt(format!("walking the blob directory: {e}")))?;
        for id in ledger.ids() {
            let id = id?;
            if !self.blobs.contains(&id) {
                ledger.forget(&id)?;
                audit.forgotten += 1;
            }
        }
        ledger.rebuild_order()?;
        audit.dangling = self.index.repair(|id| self.blobs.contains(id))? as u64;
        self.index.rebuild_refs()?;
        ledger.recount()?;
        audit.usage = self.index.usage();
        ledger.save(audit.usage, false)?;
        Ok(audit)
    }

    /// Sizes for the status report (no scan).
    pub fn stats(&self) -> StoreStats {
        let u = self.index.usage();
        StoreStats {
            blobs: u.blobs,
            bytes: u.bytes,
            packuments: u.packuments,
            tarballs: u.tarballs,
        }
    }

    /// Writes pending access times and flushes the index.
    pub async fn flush(&self) -> Result<(), IndexError> {
        self.index.persist_access()?;
        self.index.flush().await
    }

    /// What shutdown calls, once nothing writes any more: writes pending access times and the
    /// totals, marked clean (unless an audit is still owed) so the next start trusts them, and
    /// flushes.
    pub async fn close(&self) -> Result<(), IndexError> {
        self.index.persist_access()?;
        self.index
            .ledger()
            .save(self.index.usage(), !self.needs_audit())?;
        self.index.flush().await
    }
}

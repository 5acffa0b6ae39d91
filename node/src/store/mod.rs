//! The local store: verified blobs on disk ([`blobs`]), their sled indexes ([`index`]), the
//! pins that keep some of them forever (`pins`) and the eviction that keeps the rest under the
//! disk budget (`evict`).
//!
//! Invariant: what the store holds was verified when it was written, so reads are trusted
//! without re-hashing. Blobs are made durable before any index entry names them, and index
//! entries are removed (durably) before the blobs they name are deleted.

pub mod blobs;
pub(crate) mod evict;
pub mod index;
pub(crate) mod pins;

use std::path::Path;

pub use blobs::{Blobs, WriteError, Writer};
pub use index::{Index, IndexError, PackumentEntry};
use open_registry_protocol::status::StoreStats;

use crate::clock::Clock;

/// Blobs plus indexes.
#[derive(Debug)]
pub struct Store {
    /// The blob files.
    pub blobs: Blobs,
    /// The sled indexes.
    pub index: Index,
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

impl Store {
    /// Opens the store in `dir`, removing interrupted writes and index entries whose blob is
    /// gone; access times are read off `clock`. The directory walk and the index scan this
    /// takes run on the blocking pool, not on the runtime's workers.
    pub async fn open(dir: &Path, clock: Clock) -> Result<Store, OpenError> {
        let dir = dir.to_owned();
        let db = dir.join("db");
        let db_path = db.display().to_string();
        let (store, removed) = tokio::task::spawn_blocking(move || {
            let blobs = Blobs::open(&dir).map_err(|source| OpenError::Blobs {
                path: dir.display().to_string(),
                source,
            })?;
            let index_err = |source| OpenError::Index {
                path: db.display().to_string(),
                source,
            };
            let index = Index::open(&db, clock).map_err(index_err)?;
            let removed = index.repair(|id| blobs.contains(id)).map_err(index_err)?;
            Ok::<_, OpenError>((Store { blobs, index }, removed))
        })
        .await
        .map_err(|e| OpenError::Task(e.to_string()))??;
        if removed > 0 {
            store
                .index
                .flush()
                .await
                .map_err(|source| OpenError::Index {
                    path: db_path,
                    source,
                })?;
            tracing::warn!(removed, "dropped index entries whose blobs are missing");
        }
        Ok(store)
    }

    /// Sizes for the status report.
    pub fn stats(&self) -> StoreStats {
        let (bytes, blobs) = self.blobs.usage();
        let (packuments, tarballs) = self.index.counts();
        StoreStats {
            blobs,
            bytes,
            packuments,
            tarballs,
        }
    }

    /// Writes pending access times and flushes the index: what shutdown calls.
    pub async fn flush(&self) -> Result<(), IndexError> {
        self.index.persist_access()?;
        self.index.flush().await
    }
}

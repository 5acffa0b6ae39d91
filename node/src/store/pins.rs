//! Pins: package versions an operator keeps no matter what, and the blobs they protect.
//!
//! A pin is a (name, version) pair remembered in sled; pinning stores the version's tarball
//! first, so an entry always names something the store has. Pinned blobs — the tarballs of
//! pinned versions and the current packument of every pinned package — are never evicted, and
//! pinned packuments are the ones the node keeps fresh. Which versions a spec means (latest N,
//! dist-tags, a range, a lockfile, dependencies) is decided by the CLI from the packuments it
//! reads through the gateway; the node only stores exact versions.

use std::collections::{BTreeMap, HashSet};

use open_registry_protocol::{BlobId, PackageName};
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::store::{Index, IndexError};

/// What is pinned of one package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PinEntry {
    /// Version → tarball file name.
    pub versions: BTreeMap<String, String>,
    /// When the package was first pinned (unix ms).
    pub since: u64,
}

/// The pin set.
#[derive(Debug)]
pub(crate) struct Pins {
    tree: sled::Tree,
    clock: Clock,
}

impl Pins {
    /// Opens the `pins` tree of the node's index; pin times are read off `clock`.
    pub(crate) fn open(index: &Index, clock: Clock) -> Result<Pins, IndexError> {
        Ok(Pins {
            tree: index.tree("pins")?,
            clock,
        })
    }

    fn get(&self, name: &PackageName) -> Result<Option<PinEntry>, IndexError> {
        let Some(v) = self.tree.get(name.as_str())? else {
            return Ok(None);
        };
        serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| IndexError::Corrupt(format!("pin of {name}: {e}")))
    }

    /// Pins `version` of `name`, whose tarball `file` is stored (durable when this returns).
    pub(crate) async fn add(
        &self,
        index: &Index,
        name: &PackageName,
        version: &str,
        file: &str,
    ) -> Result<(), IndexError> {
        let mut e = self.get(name)?.unwrap_or_else(|| PinEntry {
            versions: BTreeMap::new(),
            since: self.clock.now_ms(),
        });
        e.versions.insert(version.to_owned(), file.to_owned());
        self.tree
            .insert(name.as_str(), serde_json::to_vec(&e).expect("pins encode"))?;
        index.flush().await
    }

    /// Unpins a whole package; returns whether it was pinned.
    pub(crate) async fn remove(
        &self,
        index: &Index,
        name: &PackageName,
    ) -> Result<bool, IndexError> {
        let had = self.tree.remove(name.as_str())?.is_some();
        index.flush().await?;
        Ok(had)
    }

    /// Every pinned package.
    pub(crate) fn list(&self) -> Result<Vec<(PackageName, PinEntry)>, IndexError> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (k, v) = kv?;
            let name = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| PackageName::parse(s).ok())
                .ok_or_else(|| IndexError::Corrupt("pin key is not a package name".into()))?;
            let e: PinEntry = serde_json::from_slice(&v)
                .map_err(|e| IndexError::Corrupt(format!("pin of {name}: {e}")))?;
            out.push((name, e));
        }
        Ok(out)
    }

    /// Whether any version of `name` is pinned.
    pub(crate) fn is_pinned(&self, name: &PackageName) -> Result<bool, IndexError> {
        Ok(self.tree.contains_key(name.as_str())?)
    }

    /// The blobs pins protect: pinned tarballs and the current packument of pinned packages.
    pub(crate) fn protected(&self, index: &Index) -> Result<HashSet<BlobId>, IndexError> {
        let mut out = HashSet::new();
        for (name, e) in self.list()? {
            if let Some(p) = index.packument(&name)? {
                out.insert(p.id);
            }
            for file in e.versions.values() {
                if let Some(id) = index.tarball(&name, file)? {
                    out.insert(id);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PackumentEntry;

    #[tokio::test]
    async fn pins_persist_and_protect_their_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let name = PackageName::parse("@s/p").unwrap();
        let (tgz, doc) = (BlobId::of(b"tgz"), BlobId::of(b"doc"));
        {
            let index = Index::open(&dir.path().join("db"), Clock::system()).unwrap();
            let pins = Pins::open(&index, Clock::system()).unwrap();
            index.set_tarball(&name, "p-1.0.0.tgz", &tgz).await.unwrap();
            index
                .set_packument(
                    &name,
                    &PackumentEntry {
                        id: doc,
                        etag: None,
                        last_modified: None,
                        checked_at: 0,
                    },
                )
                .await
                .unwrap();
            pins.add(&index, &name, "1.0.0", "p-1.0.0.tgz")
                .await
                .unwrap();
            pins.add(&index, &name, "2.0.0", "p-2.0.0.tgz")
                .await
                .unwrap();
        }
        let index = Index::open(&dir.path().join("db"), Clock::system()).unwrap();
        let pins = Pins::open(&index, Clock::system()).unwrap();
        let list = pins.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].1.versions.len(), 2);
        assert!(pins.is_pinned(&name).unwrap());
        // 2.0.0's tarball is not stored, so only what exists is protected.
        assert_eq!(pins.protected(&index).unwrap(), HashSet::from([tgz, doc]));
        assert!(pins.remove(&index, &name).await.unwrap());
        assert!(pins.protected(&index).unwrap().is_empty());
        assert!(!pins.remove(&index, &name).await.unwrap());
    }
}

//! Which tarball each version of a package is named with in the stored records, decoded once
//! per change of those records instead of once per tarball request.
//!
//! A popular package's record names thousands of versions, and decoding it (every version's
//! string, integrity and CID into a map) cost more than the rest of a cold tarball request
//! together: benchmark B4's thousand tarballs of one package decoded the same record a thousand
//! times. This cache keeps, per package, the version → tarball id map that the stored records
//! give, bounded in bytes. It is derived from what sled holds and dropped whenever a record of
//! the package is stored, so it never answers from a replaced record: a map built from records
//! read before a change is not kept (the generation check in [`TarballIds::get_or_build`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use open_registry_protocol::record::{Record, Signed};
use open_registry_protocol::{BlobId, PackageName};
use quick_cache::sync::Cache;

/// What the maps may hold in all (bytes, estimated).
const BYTES: u64 = 2 << 20;

/// Version → tarball id, as the stored records of one package name them.
pub(crate) type Ids = Arc<HashMap<String, BlobId>>;

/// The per-package maps.
#[derive(Debug)]
pub(crate) struct TarballIds {
    cache: Cache<PackageName, Ids, Weight>,
    /// Bumped by every change of any package's records.
    generation: AtomicU64,
}

impl Default for TarballIds {
    fn default() -> Self {
        TarballIds {
            cache: Cache::with_weighter(1024, BYTES, Weight),
            generation: AtomicU64::new(0),
        }
    }
}

impl TarballIds {
    /// The map for `name`, from the cache or from `records` (the package's stored records, read
    /// when the cache has nothing).
    pub(crate) fn get_or_build<E>(
        &self,
        name: &PackageName,
        records: impl FnOnce() -> Result<Vec<Signed>, E>,
    ) -> Result<Ids, E> {
        if let Some(ids) = self.cache.get(name) {
            return Ok(ids);
        }
        let before = self.generation.load(Ordering::SeqCst);
        let ids = Arc::new(named(&records()?));
        self.cache.insert(name.clone(), ids.clone());
        // A record stored while these were read: what was read may be the replaced one.
        if self.generation.load(Ordering::SeqCst) != before {
            self.cache.remove(name);
        }
        Ok(ids)
    }

    /// A record of `name` was stored (after the write, before anyone reads the new one).
    pub(crate) fn changed(&self, name: &PackageName) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.remove(name);
    }
}

/// Version → tarball id from `records`, in their order: the first one that names a tarball for
/// a version gives it. Records that do not decode are skipped.
fn named(records: &[Signed]) -> HashMap<String, BlobId> {
    let mut ids = HashMap::new();
    for s in records {
        let Ok(r) = Record::decode(&s.body) else {
            continue;
        };
        for (version, entry) in r.versions {
            if let Some(id) = entry.tarball {
                ids.entry(version).or_insert(id);
            }
        }
    }
    ids
}

/// Weighs a map by its strings plus per-entry overhead.
#[derive(Debug, Clone, Copy, Default)]
struct Weight;

impl quick_cache::Weighter<PackageName, Ids> for Weight {
    fn weight(&self, k: &PackageName, v: &Ids) -> u64 {
        let entries: usize = v.keys().map(|version| version.len() + 96).sum();
        (k.as_str().len() + entries + 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Identity;
    use open_registry_protocol::record::VersionEntry;
    use std::collections::BTreeMap;

    fn signed(by: u8, seq: u64, versions: &[(&str, Option<&[u8]>)]) -> Signed {
        let record = Record {
            name: PackageName::parse("p").unwrap(),
            seq,
            fetched_at: 0,
            expires_at: u64::MAX,
            packument: BlobId::of(b"doc"),
            versions: versions
                .iter()
                .map(|(v, t)| {
                    let entry = VersionEntry {
                        integrity: format!("sha512-{v}"),
                        tarball: t.map(BlobId::of),
                    };
                    ((*v).to_owned(), entry)
                })
                .collect::<BTreeMap<_, _>>(),
        };
        record
            .try_sign(Identity::from_seed([by; 32]).signing_key())
            .unwrap()
    }

    #[test]
    fn the_first_record_naming_a_version_gives_its_tarball() {
        let a = signed(1, 1, &[("1.0.0", Some(b"a1")), ("2.0.0", None)]);
        let b = signed(2, 1, &[("1.0.0", Some(b"b1")), ("2.0.0", Some(b"b2"))]);
        let ids = named(&[a, b]);
        assert_eq!(ids["1.0.0"], BlobId::of(b"a1"));
        assert_eq!(ids["2.0.0"], BlobId::of(b"b2"));
        assert_eq!(ids.len(), 2);
    }

    #[test]
    fn records_are_read_once_until_they_change() {
        let cache = TarballIds::default();
        let name = PackageName::parse("p").unwrap();
        let reads = std::cell::Cell::new(0);
        let read = |records: Vec<Signed>| {
            reads.set(reads.get() + 1);
            Ok::<_, ()>(records)
        };
        let first = vec![signed(1, 1, &[("1.0.0", Some(b"old"))])];
        let ids = cache.get_or_build(&name, || read(first.clone())).unwrap();
        assert_eq!(ids["1.0.0"], BlobId::of(b"old"));
        let again = cache.get_or_build(&name, || read(vec![])).unwrap();
        assert_eq!(again["1.0.0"], BlobId::of(b"old"));
        assert_eq!(reads.get(), 1, "the cached map was not used");

        cache.changed(&name);
        let newer = vec![signed(1, 2, &[("1.0.0", Some(b"new"))])];
        let ids = cache.get_or_build(&name, || read(newer.clone())).unwrap();
        assert_eq!(ids["1.0.0"], BlobId::of(b"new"));
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn a_map_read_across_a_change_is_not_kept() {
        let cache = TarballIds::default();
        let name = PackageName::parse("p").unwrap();
        let stale = vec![signed(1, 1, &[("1.0.0", Some(b"old"))])];
        // The record changes while the old one is being read.
        let ids = cache
            .get_or_build(&name, || {
                cache.changed(&name);
                Ok::<_, ()>(stale.clone())
            })
            .unwrap();
        assert_eq!(ids["1.0.0"], BlobId::of(b"old"));
        let fresh = vec![signed(1, 2, &[("1.0.0", Some(b"new"))])];
        let ids = cache
            .get_or_build(&name, || Ok::<_, ()>(fresh.clone()))
            .unwrap();
        assert_eq!(ids["1.0.0"], BlobId::of(b"new"), "the stale map was kept");
    }
}

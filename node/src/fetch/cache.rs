//! The Fetcher's memory: hot packuments, small tarballs, tarball indexes and recent misses.
//!
//! All four are bounded (by bytes or by count) and hold only what the store already holds
//! verified, or what is derived from it; losing any of them costs a disk read, never a wrong
//! answer. The memory budget (`memory_cache_size`) is split: half to the gateway's rendered
//! packuments, a quarter each to raw hot packuments and to small tarballs; the tarball indexes
//! take at most 4 MiB besides.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use open_registry_gateway::Packument;
use open_registry_protocol::packument::DistRef;
use open_registry_protocol::status::{UNSIGNED_KEPT, Unsigned};
use open_registry_protocol::{BlobId, PackageName};
use quick_cache::sync::Cache;

use crate::store::PackumentEntry;

/// Blobs this small are served from memory.
pub(super) const SMALL_BLOB: u64 = 256 << 10;

/// The caches.
#[derive(Debug)]
pub(super) struct Caches {
    /// Hot packuments by name, so a fresh hit reads neither sled nor disk.
    pub(super) hot: Cache<PackageName, (PackumentEntry, Packument), PackumentWeight>,
    /// Small blobs (tarballs) kept in memory for serving.
    pub(super) small: Cache<BlobId, Bytes, BytesWeight>,
    /// Tarball file → dist, per packument revision: parsed once, not per cold tarball. Weighed:
    /// the index of a package with thousands of versions is megabytes.
    pub(super) dists: Cache<BlobId, Arc<HashMap<String, DistRef>>, DistsWeight>,
    /// Packages whose tarball ids no trusted record on the network named, and when (clock ms):
    /// bounded in size and in time, so a miss is not looked up again for every file.
    pub(super) misses: Cache<PackageName, u64>,
    /// Packages a refresh for a missing version, dist-tag or file found nothing new in, and when
    /// (clock ms): for the miss TTL, asking again for what does not exist does not refresh.
    pub(super) absent: Cache<PackageName, u64>,
    /// The last packuments served unsigned, most recent first (the status lists them).
    unsigned: std::sync::Mutex<std::collections::VecDeque<Unsigned>>,
}

impl Caches {
    /// Caches within `memory_cache_size` bytes (of which they take half).
    pub(super) fn new(memory_cache_size: u64) -> Caches {
        let hot_bytes = (memory_cache_size / 4).max(1 << 20);
        let small_bytes = (memory_cache_size / 4).max(1 << 20);
        Caches {
            hot: Cache::with_options(
                quick_cache::OptionsBuilder::new()
                    .estimated_items_capacity(4096)
                    .weight_capacity(hot_bytes)
                    // One shard: a shard holds at most its share of the budget, and a popular
                    // packument is megabytes (react: 4 MB); split in 8, it would never fit.
                    .shards(1)
                    .build()
                    .expect("valid cache options"),
                PackumentWeight,
                Default::default(),
                Default::default(),
            ),
            small: Cache::with_weighter(8192, small_bytes, BytesWeight),
            dists: Cache::with_weighter(256, DISTS_BYTES, DistsWeight),
            misses: Cache::new(1024),
            absent: Cache::new(4096),
            unsigned: Default::default(),
        }
    }
}

impl Caches {
    /// Notes that `name` is served without a record, and why.
    pub(super) fn note_unsigned(
        &self,
        name: &PackageName,
        why: &impl std::fmt::Display,
        at_ms: u64,
    ) {
        let mut list = self.unsigned.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|u| u.name != name.as_str());
        list.push_front(Unsigned {
            name: name.to_string(),
            reason: why.to_string(),
            at_ms,
        });
        list.truncate(UNSIGNED_KEPT);
    }

    /// The packuments last served unsigned, most recent first.
    pub(super) fn unsigned(&self) -> Vec<Unsigned> {
        let list = self.unsigned.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().cloned().collect()
    }
}

/// What the tarball indexes may hold in all.
const DISTS_BYTES: u64 = 4 << 20;

/// Weighs a tarball index by the strings it holds, plus per-entry overhead.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DistsWeight;

impl quick_cache::Weighter<BlobId, Arc<HashMap<String, DistRef>>> for DistsWeight {
    fn weight(&self, _: &BlobId, v: &Arc<HashMap<String, DistRef>>) -> u64 {
        let s = |o: &Option<String>| o.as_ref().map_or(0, String::len);
        v.iter()
            .map(|(f, d)| {
                (f.len() + d.version.len() + s(&d.integrity) + s(&d.shasum) + s(&d.tarball) + 160)
                    as u64
            })
            .sum::<u64>()
            .max(1)
    }
}

/// Weighs cached blobs by their length.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BytesWeight;

impl quick_cache::Weighter<BlobId, Bytes> for BytesWeight {
    fn weight(&self, _: &BlobId, v: &Bytes) -> u64 {
        v.len() as u64 + 64
    }
}

/// Weighs hot packuments by their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PackumentWeight;

impl quick_cache::Weighter<PackageName, (PackumentEntry, Packument)> for PackumentWeight {
    fn weight(&self, k: &PackageName, v: &(PackumentEntry, Packument)) -> u64 {
        (k.as_str().len() + v.1.bytes.len() + 128) as u64
    }
}

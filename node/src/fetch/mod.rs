//! The Fetcher: the only place that decides where bytes come from.
//!
//! **Tarballs** ([`tarball`], `Fetcher::fetch_tarball`): the store; then peers, by the content
//! id that a trusted record names for the version (records this node holds first, then the
//! trusted operators' newest records on the network, a miss remembered for a while); then the
//! upstream, if one is configured. Tarballs are content-addressed, so any verified copy is as
//! good as another, and asking peers first spares the upstream.
//!
//! **Packuments** ([`packument`], `Fetcher::fetch_packument`): the store while the copy is
//! fresh (`max_age`) or when no source could give a newer one; then the upstream, which is
//! authoritative and newer than any peer's copy (and only what this node fetched from it is
//! signed by this node); then, when there is no upstream or it failed, the revision that enough
//! trusted operators agree on, never one older than this node signed itself; and finally the
//! stored copy (stale-if-error). A request with a stale copy at hand waits a little for the
//! upstream ([`STALE_GRACE`]) and is then answered with the copy while the revalidation
//! finishes (stale-while-revalidate).
//!
//! One flight per key ([`flight::Flights`]): identical concurrent requests for an uncached
//! packument or tarball share one fetch. A tarball is stored only once its bytes match both the
//! integrity its packument promises and its content id, and it is served only from the store
//! (or, when the disk cannot take it, from memory after the same checks), so no unverified byte
//! ever reaches a client. The sources are traits ([`upstream::Source`], [`crate::peer::Source`])
//! so the tests in `tests.rs` drive these decisions with fakes.

mod cache;
mod download;
pub(crate) mod error;
pub(crate) mod flight;
pub(crate) mod keys;
pub(crate) mod packument;
pub(crate) mod tarball;
pub(crate) mod upstream;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use open_registry_gateway::access::Source;
use open_registry_gateway::{MemoryBudget, Packument};
use open_registry_protocol::packument::DistRef;
use open_registry_protocol::{PackageName, Signed};
use tokio_util::task::TaskTracker;

pub(crate) use error::FetchError;
pub(crate) use tarball::Fetched;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::peer;
use crate::records::Records;
use crate::store::Store;
use crate::withhold::FirstSeen;
use cache::Caches;
use flight::Flights;

/// How long a package no trusted record named is not looked up on the network again.
pub(crate) const MISS_TTL: Duration = Duration::from_secs(60);

/// How long a request with a stale copy at hand waits for the upstream before it is answered
/// with the copy.
pub(crate) const STALE_GRACE: Duration = Duration::from_secs(3);

/// The largest tarball passed through memory when it cannot be stored.
const PASS_THROUGH_CAP: u64 = 64 << 20;

/// The sources a Fetcher orders, and the store it fills.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    /// The local store.
    pub store: Arc<Store>,
    /// The node's records (its own, and trusted operators' it kept).
    pub records: Arc<Records>,
    /// The upstream registry, if one is configured.
    pub upstream: Option<Arc<dyn upstream::Source>>,
    /// The network, if the node joined it.
    pub peers: Option<Arc<dyn peer::Source>>,
    /// The packument memory every packument read for a request is held within (the upstream
    /// client reads its bodies within the same one).
    pub memory: MemoryBudget,
    /// Where the first sight of versions without a publish time is noted, while a release
    /// cooldown is configured.
    pub first_seen: Option<Arc<FirstSeen>>,
}

/// Orders sources and coalesces fetches.
#[derive(Debug)]
pub(crate) struct Fetcher {
    store: Arc<Store>,
    upstream: Option<Arc<dyn upstream::Source>>,
    records: Arc<Records>,
    peers: Option<Arc<dyn peer::Source>>,
    metrics: Arc<Metrics>,
    clock: Clock,
    tracker: TaskTracker,
    max_age: Duration,
    max_packument: u64,
    max_tarball: u64,
    packuments: Flights<PackageName, Result<Packument, FetchError>>,
    tarballs: Flights<(PackageName, String), Result<(Fetched, Source), FetchError>>,
    caches: Caches,
    /// See [`Sources::memory`].
    memory: MemoryBudget,
    /// Woken after every blob stored, so the cache cap is enforced promptly.
    ingested: Arc<tokio::sync::Notify>,
    keys: keys::KeysPin,
    /// See [`Sources::first_seen`].
    first_seen: Option<Arc<FirstSeen>>,
}

impl Fetcher {
    /// A fetcher over `sources`, spawning its flights and background work on `tracker`.
    pub(crate) fn new(
        config: &Config,
        sources: Sources,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
    ) -> Arc<Fetcher> {
        Arc::new(Fetcher {
            store: sources.store,
            upstream: sources.upstream,
            records: sources.records,
            peers: sources.peers,
            metrics,
            clock: config.clock.clone(),
            tracker: tracker.clone(),
            max_age: config.max_age,
            max_packument: config.max_packument_size,
            max_tarball: config.max_tarball_size,
            packuments: Flights::new(tracker.clone()),
            tarballs: Flights::new(tracker),
            caches: Caches::new(config.memory_cache_size),
            memory: sources.memory,
            ingested: Arc::new(tokio::sync::Notify::new()),
            keys: keys::KeysPin::new(config.clock.clone()),
            first_seen: sources.first_seen,
        })
    }

    /// The packument memory.
    pub(crate) fn memory(&self) -> &MemoryBudget {
        &self.memory
    }

    /// The packuments last served without a signed record, and why (for the status).
    pub(crate) fn unsigned(&self) -> Vec<open_registry_protocol::status::Unsigned> {
        self.caches.unsigned()
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The node's record store.
    pub(crate) fn records(&self) -> &Arc<Records> {
        &self.records
    }

    /// Notified after every blob the fetcher stores.
    pub(crate) fn ingested(&self) -> &Arc<tokio::sync::Notify> {
        &self.ingested
    }

    /// The registry signing keys pinned in `dir`, fetched from the upstream at most once at a
    /// time and not again for a while after a failure ([`keys::KeysPin`]).
    pub(crate) async fn registry_keys(
        &self,
        dir: &std::path::Path,
    ) -> anyhow::Result<Option<Bytes>> {
        let upstream = self.upstream.as_deref();
        self.keys.get(dir, upstream).await
    }

    /// The upstream, if any.
    pub(crate) fn upstream(&self) -> Option<&Arc<dyn upstream::Source>> {
        self.upstream.as_ref()
    }

    /// Whether any source can give a newer packument than the stored one.
    fn can_refresh(&self) -> bool {
        self.upstream.is_some() || self.trusting_peers().is_some()
    }

    /// The network, if it is there and the operator trusts someone on it.
    fn trusting_peers(&self) -> Option<&Arc<dyn peer::Source>> {
        self.peers.as_ref().filter(|p| p.trusts_anyone())
    }

    /// Tarball file → dist of a packument revision, parsed once per revision.
    pub(crate) async fn dist_index(
        &self,
        name: &PackageName,
        p: &Packument,
    ) -> Result<Arc<HashMap<String, DistRef>>, FetchError> {
        if let Some(i) = self.caches.dists.get(&p.id) {
            return Ok(i);
        }
        let i = parse_dists(name, &p.bytes, format!("packument of {name}")).await?;
        self.caches.dists.insert(p.id, i.clone());
        Ok(i)
    }

    /// Publishes a freshly signed record to the network in the background (the request that
    /// caused it does not wait for the DHT).
    fn publish(&self, signed: Signed) {
        if let Some(peers) = self.peers.clone() {
            self.tracker
                .spawn(async move { peers.publish(&signed).await });
        }
    }

    /// Announces in the background that this node holds blobs of `name` (a provider record
    /// per package, not per blob: `peer::announce`).
    fn announce(&self, name: &PackageName) {
        if let Some(peers) = self.peers.clone() {
            let name = name.clone();
            self.tracker
                .spawn(async move { peers.announce(&name).await });
        }
    }

    /// Notes when the versions of a revision just stored that have no publish time were first
    /// seen (while a release cooldown is configured).
    async fn note_first_seen(&self, name: &PackageName, bytes: &Bytes) {
        if let Some(f) = &self.first_seen {
            f.note_revision(name, bytes, self.clock.now_ms()).await;
        }
    }

    /// Notes a blob stored: the eviction loop checks the cache cap.
    fn stored(&self) {
        self.ingested.notify_one();
    }
}

/// Parses packument bytes into their tarball index, off the async workers (a multi-megabyte
/// document is CPU work). `what` names the document in the error.
async fn parse_dists(
    name: &PackageName,
    bytes: &Bytes,
    what: String,
) -> Result<Arc<HashMap<String, DistRef>>, FetchError> {
    let (n, b) = (name.clone(), bytes.clone());
    tokio::task::spawn_blocking(move || {
        open_registry_protocol::derive::tarball_index_json(&n, &b).map(Arc::new)
    })
    .await
    .map_err(|_| FetchError::Panicked)?
    .map_err(|e| FetchError::invalid(what, e))
}

//! The Fetcher: the only place that decides where bytes come from.
//!
//! Order of sources, for packuments and tarballs alike:
//! 1. the local store (verified on write, so trusted on read);
//! 2. peers — the seam where the P2P layer plugs in (`Fetcher::tarball_from_sources`);
//! 3. the upstream registry, if configured.
//!
//! One flight per key: identical concurrent requests for an uncached packument or tarball share
//! one fetch ([`Flights`]). Packuments are revalidated after `max_age` with a conditional
//! request; when the upstream fails, a cached copy is served (stale-if-error). A tarball is
//! stored only once its bytes match both the integrity its packument promises and its content
//! id, and it is served only from the store, so no unverified byte ever reaches a client.

pub mod flight;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use open_registry_gateway::{self as gateway, Blob, Body, Packument};
use open_registry_protocol::packument::DistRef;
use open_registry_protocol::{BlobId, Integrity, PackageName, TarballFile, Verifier};
use tokio::time::Instant;
use tokio_util::io::ReaderStream;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::fetch::flight::{Flights, Role};
use crate::fetch::upstream::{PackumentAnswer, Upstream, UpstreamError};
use crate::metrics::Metrics;
use crate::peer::P2p;
use crate::records::{Records, record_integrity};
use crate::store::{PackumentEntry, Store, WriteError, now_ms};
use open_registry_protocol::pointer::Pointer;
use open_registry_protocol::record::Verified;

/// Why a fetch failed. Cloneable: one failure is shared by every request of a flight.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    Integrity(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(String),
    /// Trusted records name the blob, but no provider delivered it (retriable).
    #[error("{0}")]
    Peers(String),
}

impl From<FetchError> for gateway::Error {
    fn from(e: FetchError) -> Self {
        let msg = e.to_string();
        match e {
            FetchError::NotFound(_) | FetchError::Upstream(UpstreamError::NotFound(_)) => {
                gateway::Error::NotFound(msg)
            }
            FetchError::Upstream(UpstreamError::Timeout(_)) => gateway::Error::Timeout(msg),
            FetchError::Upstream(_)
            | FetchError::Integrity(_)
            | FetchError::Invalid(_)
            | FetchError::Peers(_) => gateway::Error::BadGateway(msg),
            FetchError::Store(_) => gateway::Error::Unavailable(msg),
        }
    }
}

type TarballKey = (PackageName, String);

/// A tarball a flight produced: stored, or (the disk being full or failing) verified in memory
/// and passed through without being cached.
#[derive(Debug, Clone)]
enum Fetched {
    Stored(BlobId),
    Unstored(BlobId, Bytes),
}

/// The largest tarball passed through memory when it cannot be stored.
const PASS_THROUGH_CAP: u64 = 64 << 20;

/// How long a package no trusted record named is not looked up on the network again.
const MISS_TTL: Duration = Duration::from_secs(60);

/// How long a request with a stale copy at hand waits for the upstream before it is answered
/// with the copy.
const STALE_GRACE: Duration = Duration::from_secs(3);

/// Orders sources and coalesces fetches.
#[derive(Debug)]
pub struct Fetcher {
    store: Arc<Store>,
    upstream: Option<Upstream>,
    records: Arc<Records>,
    p2p: Option<Arc<P2p>>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    max_age: Duration,
    max_packument: u64,
    max_tarball: u64,
    packuments: Flights<PackageName, Result<Packument, FetchError>>,
    tarballs: Flights<TarballKey, Result<Fetched, FetchError>>,
    /// Hot packuments by name, so a fresh hit reads neither sled nor disk.
    hot: quick_cache::sync::Cache<PackageName, (PackumentEntry, Packument), Weight>,
    /// Small blobs (tarballs) kept in memory for serving.
    small: quick_cache::sync::Cache<BlobId, Bytes, BytesWeight>,
    /// Tarball file → dist, per packument revision: parsed once, not per cold tarball.
    dists: quick_cache::sync::Cache<BlobId, Arc<HashMap<String, DistRef>>>,
    /// Woken after every blob stored, so the cache cap is enforced promptly.
    ingested: Arc<tokio::sync::Notify>,
    /// Packages whose tarball ids no trusted record on the network named, recently: bounded in
    /// size and in time, so a miss is not looked up again for every file.
    misses: quick_cache::sync::Cache<PackageName, std::time::Instant>,
}

/// Blobs this small are served from memory.
const SMALL_BLOB: u64 = 256 << 10;

/// Weighs cached blobs by their length.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesWeight;

impl quick_cache::Weighter<BlobId, Bytes> for BytesWeight {
    fn weight(&self, _: &BlobId, v: &Bytes) -> u64 {
        v.len() as u64 + 64
    }
}

/// Weighs cache entries by their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Weight;

impl quick_cache::Weighter<PackageName, (PackumentEntry, Packument)> for Weight {
    fn weight(&self, k: &PackageName, v: &(PackumentEntry, Packument)) -> u64 {
        (k.as_str().len() + v.1.bytes.len() + 128) as u64
    }
}

impl Fetcher {
    /// A fetcher over `store` and `upstream`, spawning its flights on `tracker`.
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        upstream: Option<Upstream>,
        records: Arc<Records>,
        p2p: Option<Arc<P2p>>,
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
    ) -> Arc<Fetcher> {
        // The memory budget: half to the gateway's rendered packuments, a quarter each to raw
        // hot packuments and to small tarballs.
        let hot_bytes = (config.memory_cache_size / 4).max(1 << 20);
        let small_bytes = (config.memory_cache_size / 4).max(1 << 20);
        Arc::new(Fetcher {
            store,
            upstream,
            records,
            p2p,
            metrics,
            tracker: tracker.clone(),
            max_age: config.max_age,
            max_packument: config.max_packument_size,
            max_tarball: config.max_tarball_size,
            packuments: Flights::new(tracker.clone()),
            tarballs: Flights::new(tracker.clone()),
            hot: quick_cache::sync::Cache::with_options(
                quick_cache::OptionsBuilder::new()
                    .estimated_items_capacity(4096)
                    .weight_capacity(hot_bytes)
                    // One shard: a shard holds at most its share of the budget, and a popular
                    // packument is megabytes (react: 4 MB); split in 8, it would never fit.
                    .shards(1)
                    .build()
                    .expect("valid cache options"),
                Weight,
                Default::default(),
                Default::default(),
            ),
            small: quick_cache::sync::Cache::with_weighter(8192, small_bytes, BytesWeight),
            dists: quick_cache::sync::Cache::new(256),
            ingested: Arc::new(tokio::sync::Notify::new()),
            misses: quick_cache::sync::Cache::new(1024),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The node's record store.
    pub fn records(&self) -> &Arc<Records> {
        &self.records
    }

    /// Notified after every blob the fetcher stores.
    pub fn ingested(&self) -> &Arc<tokio::sync::Notify> {
        &self.ingested
    }

    /// The upstream client, if any.
    pub fn upstream(&self) -> Option<&Upstream> {
        self.upstream.as_ref()
    }

    /// The network side, if the node joined it.
    pub fn p2p(&self) -> Option<&Arc<P2p>> {
        self.p2p.as_ref()
    }

    /// Whether any source can give a newer packument than the stored one.
    fn can_refresh(&self) -> bool {
        self.upstream.is_some() || self.p2p.as_ref().is_some_and(|p| p.trusts_anyone())
    }

    fn is_fresh(&self, e: &PackumentEntry) -> bool {
        now_ms().saturating_sub(e.checked_at) < self.max_age.as_millis() as u64
    }

    /// The current packument of `name`; `refresh` revalidates even a fresh copy.
    pub async fn packument(
        self: &Arc<Self>,
        name: &PackageName,
        refresh: bool,
    ) -> Result<Packument, FetchError> {
        let asked_at = now_ms();
        Metrics::inc(&self.metrics.packument_requests);
        if !refresh
            && let Some((e, p)) = self.hot.get(name)
            && (self.is_fresh(&e) || !self.can_refresh())
        {
            // A packument in use is as recently used as its tarballs (eviction order).
            self.store.index.touch(&p.id, now_ms());
            Metrics::inc(&self.metrics.packument_hits);
            return Ok(p);
        }
        let entry = self.store.index.packument(name).map_err(store_err)?;
        if let Some(e) = &entry
            && ((!refresh && self.is_fresh(e)) || !self.can_refresh())
            && let Some(p) = self.load(name, e).await?
        {
            Metrics::inc(&self.metrics.packument_hits);
            return Ok(p);
        }
        if !self.can_refresh() {
            return Err(FetchError::NotFound(format!(
                "{name} is not in this node's store, and this node has no upstream and trusts no peers"
            )));
        }
        let this = self.clone();
        let key = name.clone();
        let flight = self.packuments.run(name.clone(), move || async move {
            this.revalidate(&key, asked_at).await
        });
        let (result, role) = match (&entry, refresh) {
            // A stale copy is at hand: wait a little for the upstream, then answer with the copy
            // while the revalidation finishes in the background (stale-while-revalidate).
            (Some(e), false) => match tokio::time::timeout(STALE_GRACE, flight).await {
                Ok(r) => r,
                Err(_) => {
                    if let Some(p) = self.load(name, e).await? {
                        tracing::warn!(%name, "upstream slow; serving the stored packument");
                        Metrics::inc(&self.metrics.stale_served);
                        return Ok(p);
                    }
                    (None, Role::Follower)
                }
            },
            _ => flight.await,
        };
        if role == Role::Follower {
            Metrics::inc(&self.metrics.coalesced);
        }
        result.unwrap_or_else(|| Err(FetchError::Store("packument fetch failed".into())))
    }

    /// Reads a stored revision (and warms the hot cache). A vanished blob drops the entry.
    async fn load(
        &self,
        name: &PackageName,
        e: &PackumentEntry,
    ) -> Result<Option<Packument>, FetchError> {
        match self.store.blobs.read(&e.id).await.map_err(io_err)? {
            Some(bytes) => {
                self.store.index.touch(&e.id, now_ms());
                let p = Packument { id: e.id, bytes };
                self.hot.insert(name.clone(), (e.clone(), p.clone()));
                Ok(Some(p))
            }
            None => {
                tracing::warn!(%name, id = %e.id.short(), "packument blob missing; refetching");
                self.store.index.remove_packument(name).map_err(store_err)?;
                Ok(None)
            }
        }
    }

    /// Asks the sources for a newer revision: the upstream when there is one (it is
    /// authoritative and fresher), trusted peers when there is none or it fails, and finally
    /// the stored revision (stale-if-error). `asked_at` is when the request that started this
    /// flight began: a revalidation that finished after that moment (another flight's) already
    /// did this one's work.
    async fn revalidate(
        self: &Arc<Self>,
        name: &PackageName,
        asked_at: u64,
    ) -> Result<Packument, FetchError> {
        let entry = self.store.index.packument(name).map_err(store_err)?;
        if let Some(e) = &entry
            && e.checked_at > asked_at
            && let Some(p) = self.load(name, e).await?
        {
            return Ok(p);
        }
        let mut failure = None;
        if let Some(upstream) = &self.upstream {
            match self.ask_upstream(upstream, name, &entry).await {
                Ok(p) => return Ok(p),
                // The upstream says the package does not exist: that is an answer, not a failure.
                Err(e @ FetchError::NotFound(_)) => return Err(e),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(p2p) = self.p2p.as_ref().filter(|p| p.trusts_anyone()) {
            match self.ask_peers(p2p, name, &entry, None).await {
                Ok(p) => return Ok(p),
                Err(e) => {
                    tracing::debug!(%name, error = %e, "peers could not provide the packument");
                    failure.get_or_insert(e);
                }
            }
        }
        let failure = failure.unwrap_or_else(|| {
            FetchError::NotFound(format!("{name} is not available from any source"))
        });
        self.stale_or(name, entry, failure).await
    }

    /// One conditional request to the upstream, and what follows from its answer.
    async fn ask_upstream(
        &self,
        upstream: &Upstream,
        name: &PackageName,
        entry: &Option<PackumentEntry>,
    ) -> Result<Packument, FetchError> {
        Metrics::inc(&self.metrics.packument_revalidations);
        let answer = upstream
            .packument(
                name,
                entry.as_ref().and_then(|e| e.etag.as_deref()),
                entry.as_ref().and_then(|e| e.last_modified.as_deref()),
            )
            .await;
        match (answer, entry.clone()) {
            (Ok(PackumentAnswer::NotModified), Some(mut e)) => {
                Metrics::inc(&self.metrics.packument_not_modified);
                e.checked_at = now_ms();
                self.store
                    .index
                    .set_packument(name, &e)
                    .await
                    .map_err(store_err)?;
                let p = self
                    .load(name, &e)
                    .await?
                    .ok_or_else(|| FetchError::Store(format!("packument of {name} vanished")))?;
                self.sign(name, &p, e.checked_at).await;
                Ok(p)
            }
            (Ok(PackumentAnswer::NotModified), None) => Err(FetchError::Upstream(
                UpstreamError::Body("304 to an unconditional request".into()),
            )),
            (
                Ok(PackumentAnswer::Document {
                    bytes,
                    etag,
                    last_modified,
                }),
                _,
            ) => {
                self.ingest_packument(name, bytes, etag, last_modified)
                    .await
            }
            (Err(UpstreamError::NotFound(what)), _) => {
                Err(FetchError::NotFound(format!("{what} (404 from upstream)")))
            }
            (Err(e), _) => Err(e.into()),
        }
    }

    /// The revision that trusted operators agree on, fetched from peers by its CID and
    /// verified. A revision older than what this node signed itself is not taken.
    async fn ask_peers(
        &self,
        p2p: &P2p,
        name: &PackageName,
        entry: &Option<PackumentEntry>,
        hint: Option<&Verified<Pointer>>,
    ) -> Result<Packument, FetchError> {
        let found = p2p.trusted_records(name, hint).await;
        let n = found.len();
        let (cid, agreeing) = p2p.quorum(found).ok_or_else(|| {
            FetchError::NotFound(format!(
                "{name}: {n} trusted records found on the network, {} must agree",
                p2p.policy().threshold()
            ))
        })?;
        let newest = agreeing
            .iter()
            .map(|r| r.1.get().fetched_at)
            .max()
            .unwrap_or(0);
        let ours = self
            .records
            .own_record(name)
            .map_err(store_err)?
            .map_or(0, |r| r.fetched_at);
        if let Some(e) = entry
            && (e.id == cid || ours >= newest)
        {
            // What we hold is the agreed revision, or newer than it.
            let mut e = e.clone();
            e.checked_at = now_ms();
            self.store
                .index
                .set_packument(name, &e)
                .await
                .map_err(store_err)?;
            p2p.keep(&agreeing).await;
            if let Some(p) = self.load(name, &e).await? {
                return Ok(p);
            }
        }
        if !self.store.blobs.contains(&cid) {
            p2p.fetch_blob(&cid, Verifier::id_only, self.max_packument)
                .await?;
        }
        let bytes = self
            .store
            .blobs
            .read(&cid)
            .await
            .map_err(io_err)?
            .ok_or_else(|| FetchError::Store(format!("packument {cid} vanished")))?;
        let dists = parse_dists(name, &bytes)
            .await
            .map_err(|e| FetchError::Invalid(format!("packument of {name} from peers: {e}")))?;
        let e = PackumentEntry {
            id: cid,
            etag: None,
            last_modified: None,
            checked_at: now_ms(),
        };
        self.store
            .index
            .set_packument(name, &e)
            .await
            .map_err(store_err)?;
        p2p.keep(&agreeing).await;
        p2p.announce(&cid).await;
        Metrics::inc(&self.metrics.packument_updates);
        self.ingested.notify_one();
        let p = Packument { id: cid, bytes };
        self.dists.insert(cid, dists);
        self.hot.insert(name.clone(), (e, p.clone()));
        tracing::info!(%name, id = %cid.short(), signers = agreeing.len(), "took a packument revision from peers");
        Ok(p)
    }

    /// Takes a newer revision from peers after a trusted operator announced one on gossip (the
    /// pointer is the hint), without asking the upstream.
    pub async fn update_from_peers(
        &self,
        name: &PackageName,
        hint: &Verified<Pointer>,
    ) -> Result<Packument, FetchError> {
        let p2p = self
            .p2p
            .as_ref()
            .ok_or_else(|| FetchError::NotFound("no peer-to-peer network".into()))?;
        let entry = self.store.index.packument(name).map_err(store_err)?;
        self.ask_peers(p2p, name, &entry, Some(hint)).await
    }

    /// Stale-if-error: the stored revision if there is one, else the error.
    async fn stale_or(
        &self,
        name: &PackageName,
        old: Option<PackumentEntry>,
        err: FetchError,
    ) -> Result<Packument, FetchError> {
        if let Some(e) = old
            && let Some(p) = self.load(name, &e).await?
        {
            tracing::warn!(%name, error = %err, "upstream failed; serving the stored packument");
            Metrics::inc(&self.metrics.stale_served);
            return Ok(p);
        }
        Err(err)
    }

    /// Validates, stores and indexes a packument revision.
    async fn ingest_packument(
        &self,
        name: &PackageName,
        bytes: Bytes,
        etag: Option<String>,
        last_modified: Option<String>,
    ) -> Result<Packument, FetchError> {
        let dists = parse_dists(name, &bytes)
            .await
            .map_err(|e| FetchError::Invalid(format!("upstream packument of {name}: {e}")))?;
        let id = match self
            .store
            .blobs
            .put(&bytes, Verifier::id_only(), u64::MAX)
            .await
        {
            Ok(id) => id,
            // The disk failed, not the document: serve it without caching.
            Err(e) if e.is_local() => {
                Metrics::inc(&self.metrics.store_errors);
                tracing::warn!(%name, error = %e, "cannot store; passing the packument through uncached");
                return Ok(Packument {
                    id: BlobId::of(&bytes),
                    bytes,
                });
            }
            Err(e) => return Err(self.write_err(e)),
        };
        let entry = PackumentEntry {
            id,
            etag,
            last_modified,
            checked_at: now_ms(),
        };
        self.store
            .index
            .set_packument(name, &entry)
            .await
            .map_err(store_err)?;
        Metrics::inc(&self.metrics.packument_updates);
        self.ingested.notify_one();
        let p = Packument { id, bytes };
        self.dists.insert(id, dists);
        self.hot.insert(name.clone(), (entry.clone(), p.clone()));
        self.announce(id);
        self.sign(name, &p, entry.checked_at).await;
        tracing::debug!(%name, id = %id.short(), "stored packument revision");
        Ok(p)
    }

    /// Tarball file → dist of a packument revision, parsed once per revision.
    async fn dist_index(
        &self,
        name: &PackageName,
        p: &Packument,
    ) -> Result<Arc<HashMap<String, DistRef>>, FetchError> {
        if let Some(i) = self.dists.get(&p.id) {
            return Ok(i);
        }
        let i = parse_dists(name, &p.bytes)
            .await
            .map_err(|e| FetchError::Invalid(e.to_string()))?;
        self.dists.insert(p.id, i.clone());
        Ok(i)
    }

    /// Signs a record for a packument revision just confirmed by the upstream. A failure to sign
    /// (the disk) does not fail the request that triggered it.
    async fn sign(&self, name: &PackageName, p: &Packument, fetched_at: u64) {
        let signed = match self.dist_index(name, p).await {
            Ok(dists) => self
                .records
                .sign_packument(&self.store.index, name, p.id, &dists, fetched_at)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match signed {
            Ok(s) => self.publish(s),
            Err(e) => tracing::warn!(%name, error = %e, "could not sign a record"),
        }
    }

    /// Publishes a freshly signed record to the network in the background (the request that
    /// caused it does not wait for the DHT).
    fn publish(&self, signed: open_registry_protocol::Signed) {
        if let Some(p2p) = self.p2p.clone() {
            self.tracker
                .spawn(async move { p2p.publish(&signed).await });
        }
    }

    /// Announces a stored blob in the background.
    fn announce(&self, id: BlobId) {
        if let Some(p2p) = self.p2p.clone() {
            self.tracker.spawn(async move { p2p.announce(&id).await });
        }
    }

    /// What the current packument says about tarball `file`, refreshing once if it is missing.
    async fn dist(self: &Arc<Self>, name: &PackageName, file: &str) -> Result<DistRef, FetchError> {
        self.find_dist(name, |f, _| f == file)
            .await?
            .map(|(_, d)| d)
            .ok_or_else(|| FetchError::NotFound(format!("{name} has no tarball {file}")))
    }

    /// The first (file, dist) of the current packument that `wanted` accepts; when none does,
    /// the packument is revalidated once (a version published since) and searched again.
    async fn find_dist(
        self: &Arc<Self>,
        name: &PackageName,
        wanted: impl Fn(&str, &DistRef) -> bool,
    ) -> Result<Option<(String, DistRef)>, FetchError> {
        for refresh in [false, true] {
            if refresh && self.upstream.is_none() {
                break;
            }
            let p = self.packument(name, refresh).await?;
            let index = self.dist_index(name, &p).await?;
            if let Some((f, d)) = index.iter().find(|(f, d)| wanted(f, d)) {
                return Ok(Some((f.clone(), d.clone())));
            }
        }
        Ok(None)
    }

    /// Makes sure `version` of `name` is stored, fetching it if needed; returns its tarball file
    /// name, blob id and size. This is what pinning calls.
    pub async fn ensure_version(
        self: &Arc<Self>,
        name: &PackageName,
        version: &str,
    ) -> Result<(String, BlobId, u64), FetchError> {
        let (file, _) = self
            .find_dist(name, |_, d| d.version == version)
            .await?
            .ok_or_else(|| FetchError::NotFound(format!("{name} has no version {version}")))?;
        let parsed = TarballFile::parse(&file).map_err(|e| FetchError::Invalid(e.to_string()))?;
        let blob = self.tarball(name, &parsed).await?;
        Ok((file, blob.id, blob.len))
    }

    /// A verified tarball, streamed from the store.
    pub async fn tarball(
        self: &Arc<Self>,
        name: &PackageName,
        file: &TarballFile,
    ) -> Result<Blob, FetchError> {
        Metrics::inc(&self.metrics.tarball_requests);
        if let Some(id) = self
            .store
            .index
            .tarball(name, file.as_str())
            .map_err(store_err)?
        {
            if let Some(blob) = self.open(&id).await? {
                Metrics::inc(&self.metrics.tarball_hits);
                return Ok(blob);
            }
            tracing::warn!(%name, %file, "tarball blob missing; refetching");
            self.store
                .index
                .remove_tarball(name, file.as_str())
                .map_err(store_err)?;
        }
        let this = self.clone();
        let key = (name.clone(), file.as_str().to_owned());
        let (n, f) = key.clone();
        let (result, role) = self
            .tarballs
            .run(key, move || async move {
                this.tarball_from_sources(&n, &f).await
            })
            .await;
        if role == Role::Follower {
            Metrics::inc(&self.metrics.coalesced);
        }
        let fetched =
            result.unwrap_or_else(|| Err(FetchError::Store("tarball fetch panicked".into())))?;
        match fetched {
            Fetched::Stored(id) => self
                .open(&id)
                .await?
                .ok_or_else(|| FetchError::Store(format!("tarball {file} vanished after ingest"))),
            Fetched::Unstored(id, bytes) => Ok(Blob {
                id,
                len: bytes.len() as u64,
                body: Body::Bytes(bytes),
            }),
        }
    }

    /// A stored blob for serving: small ones from memory (read once, then a lookup: the hot
    /// path of a warm install), large ones streamed from disk so they are never held whole.
    async fn open(&self, id: &BlobId) -> Result<Option<Blob>, FetchError> {
        if let Some(bytes) = self.small.get(id) {
            self.store.index.touch(id, now_ms());
            return Ok(Some(Blob {
                id: *id,
                len: bytes.len() as u64,
                body: Body::Bytes(bytes),
            }));
        }
        let Some((file, len)) = self.store.blobs.open_read(id).await.map_err(io_err)? else {
            return Ok(None);
        };
        self.store.index.touch(id, now_ms());
        if len <= SMALL_BLOB {
            let mut buf = Vec::with_capacity(len as usize);
            let mut file = file;
            tokio::io::AsyncReadExt::read_to_end(&mut file, &mut buf)
                .await
                .map_err(io_err)?;
            let bytes = Bytes::from(buf);
            // The file can only be the verified blob (content-addressed); a length that changed
            // under us means it was evicted and replaced mid-read: do not cache that.
            if bytes.len() as u64 == len {
                self.small.insert(*id, bytes.clone());
            }
            return Ok(Some(Blob {
                id: *id,
                len: bytes.len() as u64,
                body: Body::Bytes(bytes),
            }));
        }
        let stream = ReaderStream::with_capacity(file, 64 << 10);
        Ok(Some(Blob {
            id: *id,
            len,
            body: Body::Stream(stream.boxed()),
        }))
    }

    /// Fetches a tarball that is not stored: the one flight for its key.
    async fn tarball_from_sources(
        self: &Arc<Self>,
        name: &PackageName,
        file: &str,
    ) -> Result<Fetched, FetchError> {
        if let Some(id) = self.store.index.tarball(name, file).map_err(store_err)?
            && self.store.blobs.contains(&id)
        {
            return Ok(Fetched::Stored(id));
        }
        let dist = self.dist(name, file).await?;
        let integrity = Integrity::for_dist(dist.integrity.as_deref(), dist.shasum.as_deref())
            .map_err(|e| FetchError::Integrity(format!("{name}@{}: {e}", dist.version)))?;
        // Peers first, by content id: it saves the upstream, and works when there is none.
        let mut failure = None;
        if let Some(p2p) = &self.p2p {
            match self.tarball_from_peers(p2p, name, &dist, &integrity).await {
                Ok(Some(id)) => {
                    return self
                        .stored_tarball(name, file, &dist, id)
                        .await
                        .map(Fetched::Stored);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(%name, %file, error = %e, "peers could not provide the tarball");
                    failure = Some(e);
                }
            }
        }
        let Some(upstream) = &self.upstream else {
            return Err(failure.unwrap_or_else(|| {
                FetchError::NotFound(format!(
                    "{name}/-/{file} is not in this node's store, no trusted peer names it, and no upstream is configured"
                ))
            }));
        };
        let url = upstream.tarball_url(name, file, dist.tarball.as_deref())?;
        let deadline = Instant::now() + upstream.timeout();
        // One budget of attempts for the request and its body: `retries` more after the first.
        let mut attempt = 0;
        let id = loop {
            match self.download(upstream, &url, &integrity, deadline).await {
                Ok(id) => break id,
                Err(FetchError::Upstream(e)) if e.retriable() && attempt < upstream.retries() => {
                    attempt += 1;
                    tracing::debug!(%name, %file, error = %e, attempt, "tarball fetch failed; retrying");
                    upstream.backoff(attempt, deadline).await;
                }
                // The disk, not the bytes, failed (full, read-only): serve without caching.
                Err(FetchError::Store(e)) => {
                    tracing::warn!(%name, %file, error = %e, "cannot store; passing the tarball through uncached");
                    let (id, bytes) = self
                        .download_unstored(upstream, &url, &integrity, deadline)
                        .await?;
                    return Ok(Fetched::Unstored(id, bytes));
                }
                Err(e) => return Err(e),
            }
        };
        self.stored_tarball(name, file, &dist, id)
            .await
            .map(Fetched::Stored)
    }

    /// The tarball's id as trusted records name it (stored ones first, then the network's when
    /// the operator trusts someone), fetched from its providers. `Ok(None)`: no record names it.
    async fn tarball_from_peers(
        &self,
        p2p: &P2p,
        name: &PackageName,
        dist: &DistRef,
        integrity: &Integrity,
    ) -> Result<Option<BlobId>, FetchError> {
        let mut cid = self
            .records
            .tarball_id(name, &dist.version)
            .map_err(store_err)?;
        if cid.is_none()
            && p2p.trusts_anyone()
            && self
                .misses
                .get(name)
                .is_none_or(|at| at.elapsed() >= MISS_TTL)
        {
            let ours = record_integrity(dist);
            let agreeing: Vec<_> = p2p
                .trusted_records(name, None)
                .await
                .into_iter()
                .filter(|(_, v)| {
                    v.get()
                        .versions
                        .get(&dist.version)
                        .map(|e| Some(&e.integrity))
                        == Some(ours.as_ref())
                })
                .collect();
            cid = agreeing
                .iter()
                .find_map(|(_, v)| v.get().versions.get(&dist.version).and_then(|e| e.tarball));
            if cid.is_none() {
                // Do not ask the DHT again for every file of this package for a while.
                self.misses.insert(name.clone(), std::time::Instant::now());
            }
            p2p.keep(&agreeing).await;
        }
        let Some(cid) = cid else {
            return Ok(None);
        };
        let integrity = integrity.clone();
        p2p.fetch_blob(&cid, || Verifier::new(integrity.clone()), self.max_tarball)
            .await
            .map(Some)
    }

    /// Indexes a verified tarball, names it in our record, and announces it.
    async fn stored_tarball(
        &self,
        name: &PackageName,
        file: &str,
        dist: &DistRef,
        id: BlobId,
    ) -> Result<BlobId, FetchError> {
        self.store
            .index
            .set_tarball(name, file, &id)
            .await
            .map_err(store_err)?;
        Metrics::inc(&self.metrics.tarball_ingests);
        self.ingested.notify_one();
        self.announce(id);
        tracing::debug!(%name, %file, id = %id.short(), "stored tarball");
        match self
            .records
            .add_tarball(&self.store.index, name, &dist.version, id)
            .await
        {
            Ok(Some(s)) => self.publish(s),
            Ok(None) => {}
            Err(e) => tracing::warn!(%name, %file, error = %e, "could not re-sign the record"),
        }
        Ok(id)
    }

    /// Downloads and verifies a tarball in memory (bounded), for when it cannot be stored. The
    /// bytes are served only once they verified, like everything else.
    async fn download_unstored(
        &self,
        upstream: &Upstream,
        url: &url::Url,
        integrity: &Integrity,
        deadline: Instant,
    ) -> Result<(BlobId, Bytes), FetchError> {
        let cap = PASS_THROUGH_CAP.min(self.max_tarball);
        let resp = upstream.tarball(url, url.path(), deadline).await?;
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(FetchError::Store(format!(
                "the store cannot take the tarball, and it is larger than {cap} bytes to pass through"
            )));
        }
        let mut verifier = Verifier::new(integrity.clone());
        let mut buf = bytes::BytesMut::new();
        let mut body = resp.bytes_stream();
        loop {
            let next = tokio::time::timeout_at(deadline, body.next())
                .await
                .map_err(|_| UpstreamError::Timeout(upstream.timeout()))?;
            match next {
                None => break,
                Some(Ok(chunk)) => {
                    Metrics::add(&self.metrics.upstream_bytes, chunk.len() as u64);
                    if buf.len() as u64 + chunk.len() as u64 > cap {
                        return Err(FetchError::Store(format!(
                            "the store cannot take the tarball, and it is larger than {cap} bytes to pass through"
                        )));
                    }
                    verifier.update(&chunk);
                    buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    return Err(UpstreamError::Body(crate::fetch::upstream::error_chain(&e)).into());
                }
            }
        }
        if verifier.is_empty() {
            return Err(UpstreamError::Body("empty body".into()).into());
        }
        let id = verifier
            .finish()
            .map_err(|e| self.write_err(WriteError::Integrity(e)))?;
        Ok((id, buf.freeze()))
    }

    /// Streams one upstream tarball through the verifier into the store.
    async fn download(
        &self,
        upstream: &Upstream,
        url: &url::Url,
        integrity: &Integrity,
        deadline: Instant,
    ) -> Result<BlobId, FetchError> {
        let resp = upstream.tarball(url, url.path(), deadline).await?;
        if resp.content_length().is_some_and(|n| n > self.max_tarball) {
            return Err(UpstreamError::TooLarge(self.max_tarball).into());
        }
        let mut w = self
            .store
            .blobs
            .writer(Verifier::new(integrity.clone()), self.max_tarball)
            .await
            .map_err(io_err)?;
        let mut body = resp.bytes_stream();
        loop {
            let next = tokio::time::timeout_at(deadline, body.next())
                .await
                .map_err(|_| UpstreamError::Timeout(upstream.timeout()))?;
            match next {
                None => break,
                Some(Ok(chunk)) => {
                    Metrics::add(&self.metrics.upstream_bytes, chunk.len() as u64);
                    w.write(&chunk).await.map_err(|e| self.write_err(e))?;
                }
                Some(Err(e)) => {
                    Metrics::inc(&self.metrics.upstream_errors);
                    return Err(UpstreamError::Body(crate::fetch::upstream::error_chain(&e)).into());
                }
            }
        }
        w.commit().await.map_err(|e| self.write_err(e))
    }

    fn write_err(&self, e: WriteError) -> FetchError {
        match e {
            WriteError::Integrity(e) => {
                Metrics::inc(&self.metrics.integrity_failures);
                tracing::warn!(error = %e, "refused a blob that does not verify");
                FetchError::Integrity(format!("upstream sent bytes that do not verify: {e}"))
            }
            WriteError::Empty => {
                Metrics::inc(&self.metrics.integrity_failures);
                FetchError::Upstream(UpstreamError::Body("empty body".into()))
            }
            WriteError::TooLarge(n) => FetchError::Upstream(UpstreamError::TooLarge(n)),
            WriteError::Io(e) => {
                Metrics::inc(&self.metrics.store_errors);
                io_err(e)
            }
        }
    }

    /// The keys document of the upstream.
    pub async fn upstream_keys(&self) -> Result<Bytes, FetchError> {
        match &self.upstream {
            Some(u) => Ok(u.keys().await?),
            None => Err(FetchError::NotFound(
                "no signing keys pinned and no upstream configured".into(),
            )),
        }
    }
}

/// Parses packument bytes into their tarball index, off the async workers (a multi-megabyte
/// document is CPU work).
async fn parse_dists(
    name: &PackageName,
    bytes: &Bytes,
) -> Result<Arc<HashMap<String, DistRef>>, String> {
    let (n, b) = (name.clone(), bytes.clone());
    tokio::task::spawn_blocking(move || {
        open_registry_protocol::derive::tarball_index_json(&n, &b)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn store_err(e: crate::store::IndexError) -> FetchError {
    FetchError::Store(e.to_string())
}

fn io_err(e: std::io::Error) -> FetchError {
    tracing::error!(error = %e, "store I/O failed");
    FetchError::Store(format!("local store failed: {e}"))
}

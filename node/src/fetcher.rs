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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use open_registry_gateway::{self as gateway, Blob, Body, Packument};
use open_registry_protocol::packument::{self as doc, DistRef};
use open_registry_protocol::{BlobId, Integrity, PackageName, TarballFile, Verifier};
use tokio::time::Instant;
use tokio_util::io::ReaderStream;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::flight::{Flights, Role};
use crate::metrics::Metrics;
use crate::records::Records;
use crate::store::{PackumentEntry, Store, WriteError, now_ms};
use crate::upstream::{PackumentAnswer, Upstream, UpstreamError};

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
}

impl From<FetchError> for gateway::Error {
    fn from(e: FetchError) -> Self {
        let msg = e.to_string();
        match e {
            FetchError::NotFound(_) | FetchError::Upstream(UpstreamError::NotFound(_)) => {
                gateway::Error::NotFound(msg)
            }
            FetchError::Upstream(UpstreamError::Timeout(_)) => gateway::Error::Timeout(msg),
            FetchError::Upstream(_) | FetchError::Integrity(_) | FetchError::Invalid(_) => {
                gateway::Error::BadGateway(msg)
            }
            FetchError::Store(_) => gateway::Error::Unavailable(msg),
        }
    }
}

type TarballKey = (PackageName, String);

/// How long a request with a stale copy at hand waits for the upstream before it is answered
/// with the copy.
const STALE_GRACE: Duration = Duration::from_secs(3);

/// Orders sources and coalesces fetches.
#[derive(Debug)]
pub struct Fetcher {
    store: Arc<Store>,
    upstream: Option<Upstream>,
    records: Arc<Records>,
    metrics: Arc<Metrics>,
    max_age: Duration,
    max_tarball: u64,
    packuments: Flights<PackageName, Result<Packument, FetchError>>,
    tarballs: Flights<TarballKey, Result<BlobId, FetchError>>,
    /// Hot packuments by name, so a fresh hit reads neither sled nor disk.
    hot: quick_cache::sync::Cache<PackageName, (PackumentEntry, Packument), Weight>,
    /// Tarball file → dist, per packument revision: parsed once, not per cold tarball.
    dists: quick_cache::sync::Cache<BlobId, Arc<HashMap<String, DistRef>>>,
    /// Woken after every blob stored, so the cache cap is enforced promptly.
    ingested: Arc<tokio::sync::Notify>,
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
        metrics: Arc<Metrics>,
        tracker: TaskTracker,
    ) -> Arc<Fetcher> {
        let hot_bytes = (config.memory_cache_size / 2).max(1 << 20);
        Arc::new(Fetcher {
            store,
            upstream,
            records,
            metrics,
            max_age: config.max_age,
            max_tarball: config.max_tarball_size,
            packuments: Flights::new(tracker.clone()),
            tarballs: Flights::new(tracker),
            hot: quick_cache::sync::Cache::with_weighter(4096, hot_bytes, Weight),
            dists: quick_cache::sync::Cache::new(256),
            ingested: Arc::new(tokio::sync::Notify::new()),
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
            && (self.is_fresh(&e) || self.upstream.is_none())
        {
            Metrics::inc(&self.metrics.packument_hits);
            return Ok(p);
        }
        let entry = self.store.index.packument(name).map_err(store_err)?;
        if let Some(e) = &entry
            && ((!refresh && self.is_fresh(e)) || self.upstream.is_none())
            && let Some(p) = self.load(name, e).await?
        {
            Metrics::inc(&self.metrics.packument_hits);
            return Ok(p);
        }
        // Peers will be asked here, before the upstream.
        if self.upstream.is_none() {
            return Err(FetchError::NotFound(format!(
                "{name} is not in this node's store and no upstream is configured"
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

    /// Asks the upstream for a newer revision; falls back to the stored one on failure.
    /// `asked_at` is when the request that started this flight began: a revalidation that
    /// finished after that moment (another flight's) already did this one's work.
    async fn revalidate(
        self: &Arc<Self>,
        name: &PackageName,
        asked_at: u64,
    ) -> Result<Packument, FetchError> {
        let upstream = self.upstream.as_ref().expect("checked by caller");
        let entry = self.store.index.packument(name).map_err(store_err)?;
        if let Some(e) = &entry
            && e.checked_at > asked_at
            && let Some(p) = self.load(name, e).await?
        {
            return Ok(p);
        }
        Metrics::inc(&self.metrics.packument_revalidations);
        let answer = upstream
            .packument(
                name,
                entry.as_ref().and_then(|e| e.etag.as_deref()),
                entry.as_ref().and_then(|e| e.last_modified.as_deref()),
            )
            .await;
        let stored = |entry: &Option<PackumentEntry>| entry.clone();
        match (answer, stored(&entry)) {
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
                old,
            ) => match self
                .ingest_packument(name, bytes, etag, last_modified)
                .await
            {
                Ok(p) => Ok(p),
                Err(e) => self.stale_or(name, old, e).await,
            },
            (Err(UpstreamError::NotFound(what)), _) => {
                Err(FetchError::NotFound(format!("{what} (404 from upstream)")))
            }
            (Err(e), old) => self.stale_or(name, old, e.into()).await,
        }
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
        let id = self
            .store
            .blobs
            .put(&bytes, Verifier::id_only(), u64::MAX)
            .await
            .map_err(|e| self.write_err(e))?;
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
        if let Err(e) = signed {
            tracing::warn!(%name, error = %e, "could not sign a record");
        }
    }

    /// What the current packument says about tarball `file`, refreshing once if it is missing.
    async fn dist(self: &Arc<Self>, name: &PackageName, file: &str) -> Result<DistRef, FetchError> {
        for refresh in [false, true] {
            if refresh && self.upstream.is_none() {
                break;
            }
            let p = self.packument(name, refresh).await?;
            let index = self.dist_index(name, &p).await?;
            if let Some(d) = index.get(file) {
                return Ok(d.clone());
            }
        }
        Err(FetchError::NotFound(format!(
            "{name} has no tarball {file}"
        )))
    }

    /// Makes sure `version` of `name` is stored, fetching it if needed; returns its tarball file
    /// name, blob id and size. This is what pinning calls.
    pub async fn ensure_version(
        self: &Arc<Self>,
        name: &PackageName,
        version: &str,
    ) -> Result<(String, BlobId, u64), FetchError> {
        for refresh in [false, true] {
            if refresh && self.upstream.is_none() {
                break;
            }
            let p = self.packument(name, refresh).await?;
            let index = self.dist_index(name, &p).await?;
            let Some(file) = index
                .iter()
                .find(|(_, d)| d.version == version)
                .map(|(f, _)| f.clone())
            else {
                continue;
            };
            let parsed =
                TarballFile::parse(&file).map_err(|e| FetchError::Invalid(e.to_string()))?;
            let blob = self.tarball(name, &parsed).await?;
            return Ok((file, blob.id, blob.len));
        }
        Err(FetchError::NotFound(format!(
            "{name} has no version {version}"
        )))
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
        let id =
            result.unwrap_or_else(|| Err(FetchError::Store("tarball fetch panicked".into())))?;
        self.open(&id)
            .await?
            .ok_or_else(|| FetchError::Store(format!("tarball {file} vanished after ingest")))
    }

    async fn open(&self, id: &BlobId) -> Result<Option<Blob>, FetchError> {
        let Some((file, len)) = self.store.blobs.open_read(id).await.map_err(io_err)? else {
            return Ok(None);
        };
        self.store.index.touch(id, now_ms());
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
    ) -> Result<BlobId, FetchError> {
        if let Some(id) = self.store.index.tarball(name, file).map_err(store_err)?
            && self.store.blobs.contains(&id)
        {
            return Ok(id);
        }
        let dist = self.dist(name, file).await?;
        let integrity = Integrity::for_dist(dist.integrity.as_deref(), dist.shasum.as_deref())
            .map_err(|e| FetchError::Integrity(format!("{name}@{}: {e}", dist.version)))?;
        // Peers will be asked here, by content id, before the upstream.
        let Some(upstream) = &self.upstream else {
            return Err(FetchError::NotFound(format!(
                "{name}/-/{file} is not in this node's store and no upstream is configured"
            )));
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
                Err(e) => return Err(e),
            }
        };
        self.store
            .index
            .set_tarball(name, file, &id)
            .await
            .map_err(store_err)?;
        Metrics::inc(&self.metrics.tarball_ingests);
        self.ingested.notify_one();
        tracing::debug!(%name, %file, id = %id.short(), "stored tarball");
        if let Err(e) = self
            .records
            .add_tarball(&self.store.index, name, &dist.version, id)
            .await
        {
            tracing::warn!(%name, %file, error = %e, "could not re-sign the record");
        }
        Ok(id)
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
                    return Err(UpstreamError::Body(crate::upstream::error_chain(&e)).into());
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
        doc::parse(&n, &b)
            .map(|d| Arc::new(doc::tarball_index(&n, &d)))
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

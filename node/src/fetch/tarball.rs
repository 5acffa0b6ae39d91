//! The tarball path: the store, then peers by content id, then the upstream; serving from
//! memory or disk; pinning's "make sure this version is stored".

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use open_registry_gateway::access::Source;
use open_registry_gateway::{Blob, Body, Packument};
use open_registry_protocol::packument::DistRef;
use open_registry_protocol::record::attested_integrity;
use open_registry_protocol::{BlobId, Integrity, PackageName, TarballFile};
use tokio::time::Instant;
use tokio_util::io::ReaderStream;

use super::cache::SMALL_BLOB;
use super::download::Into;
use super::error::store_err;
use super::flight::Role;
use super::packument::vanished;
use super::upstream::{self, backoff};
use super::{FetchError, Fetcher, MISS_TTL};
use crate::metrics::Metrics;
use crate::peer;

/// A tarball a flight produced: stored, or (the disk being full or failing) verified in memory
/// and passed through without being cached.
#[derive(Debug, Clone)]
pub(crate) enum Fetched {
    Stored(BlobId),
    Unstored(BlobId, Bytes),
}

impl Fetcher {
    /// A verified tarball, from memory or streamed from the store; one that the request's
    /// flight gets from a trusted peer streams as it arrives ([`peer::stream`]).
    pub(crate) async fn tarball(
        self: &Arc<Self>,
        name: &PackageName,
        file: &TarballFile,
    ) -> Result<Blob, FetchError> {
        self.tarball_as(name, file, true).await
    }

    /// [`Fetcher::tarball`]; `stream`: whether the flight's leader may answer with the bytes
    /// of a peer's transfer while they are verified and stored (otherwise it waits until the
    /// tarball is stored, as every follower does).
    async fn tarball_as(
        self: &Arc<Self>,
        name: &PackageName,
        file: &TarballFile,
        stream: bool,
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
        // Only the leader's request streams: the tap goes into the flight only if this request
        // starts it; followers wait for the stored tarball.
        let (tap, streamed) = match (&self.peers, stream) {
            (Some(_), true) => {
                // Small blobs too: the answer then ends once the bytes are verified, without
                // waiting for the commit that makes them durable.
                let (tap, rx) = peer::stream::Tap::new(self.store.clone());
                (Some(tap), Some(rx))
            }
            _ => (None, None),
        };
        let flight =
            self.tarballs.run(
                key,
                move || async move { this.fetch_tarball(&n, &f, tap).await },
            );
        let (result, role) = match streamed {
            None => flight.await,
            Some(mut streamed) => {
                tokio::pin!(flight);
                tokio::select! {
                    biased;
                    // Errs (disabling this branch) when the flight ends without streaming.
                    Ok(s) = &mut streamed => {
                        return Ok(Blob {
                            id: s.id,
                            len: s.len,
                            body: Body::Verifying(s.body),
                            source: Source::Peer,
                        });
                    }
                    r = &mut flight => r,
                }
            }
        };
        if role == Role::Follower {
            Metrics::inc(&self.metrics.coalesced);
        }
        let (fetched, source) = result.unwrap_or(Err(FetchError::Panicked))?;
        match fetched {
            Fetched::Stored(id) => self
                .open(&id)
                .await?
                .map(|blob| Blob { source, ..blob })
                .ok_or_else(|| vanished(format!("tarball {file}"))),
            Fetched::Unstored(id, bytes) => Ok(Blob {
                id,
                len: bytes.len() as u64,
                body: Body::Bytes(bytes),
                source,
            }),
        }
    }

    /// A stored blob for serving: small ones from memory (read once, then a lookup: the hot
    /// path of a warm install), large ones streamed from disk so they are never held whole.
    async fn open(&self, id: &BlobId) -> Result<Option<Blob>, FetchError> {
        if let Some(bytes) = self.caches.small.get(id) {
            self.store.index.touch(id, self.clock.now_ms());
            return Ok(Some(Blob {
                id: *id,
                len: bytes.len() as u64,
                body: Body::Bytes(bytes),
                source: Source::Memory,
            }));
        }
        let Some((mut file, len)) = self.store.blobs.open_read(id).await.map_err(store_err)? else {
            return Ok(None);
        };
        self.store.index.touch(id, self.clock.now_ms());
        if len <= SMALL_BLOB {
            let mut buf = Vec::with_capacity(len as usize);
            tokio::io::AsyncReadExt::read_to_end(&mut file, &mut buf)
                .await
                .map_err(store_err)?;
            let bytes = Bytes::from(buf);
            // The file can only be the verified blob (content-addressed); a length that changed
            // under us means it was evicted and replaced mid-read: do not cache that.
            if bytes.len() as u64 == len {
                self.caches.small.insert(*id, bytes.clone());
            }
            return Ok(Some(Blob {
                id: *id,
                len: bytes.len() as u64,
                body: Body::Bytes(bytes),
                source: Source::Store,
            }));
        }
        let stream = ReaderStream::with_capacity(file, 64 << 10);
        Ok(Some(Blob {
            id: *id,
            len,
            body: Body::Stream(stream.boxed()),
            source: Source::Store,
        }))
    }

    /// **The tarball order**, the one flight for its key: the store (another flight may have
    /// stored it since), peers by the content id a trusted record names, the upstream. Bytes
    /// from any source are verified against the integrity the current packument promises.
    /// A peer's transfer feeds `tap` (the leader's request) as it arrives; `tap` lives until
    /// the flight ends, so that a body no peer completed can still read what the upstream
    /// stored.
    async fn fetch_tarball(
        self: &Arc<Self>,
        name: &PackageName,
        file: &str,
        tap: Option<peer::stream::Tap>,
    ) -> Result<(Fetched, Source), FetchError> {
        if let Some(id) = self.store.index.tarball(name, file).map_err(store_err)?
            && self.store.blobs.contains(&id)
        {
            return Ok((Fetched::Stored(id), Source::Store));
        }
        let dist = self.dist(name, file).await?;
        let integrity = Integrity::for_dist(dist.integrity.as_deref(), dist.shasum.as_deref())
            .map_err(|e| FetchError::invalid(format!("{name}@{}", dist.version), e))?;
        let mut failure = None;
        if let Some(peers) = &self.peers {
            match self
                .tarball_from_peers(peers.as_ref(), name, &dist, &integrity, tap.clone())
                .await
            {
                Ok(Some(id)) => {
                    return self
                        .stored_tarball(name, file, &dist, id)
                        .await
                        .map(|id| (Fetched::Stored(id), Source::Peer));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(%name, %file, error = %crate::errors::chain(&e), "peers could not provide the tarball");
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
        match self
            .tarball_from_upstream(upstream.as_ref(), name, file, &dist, &integrity)
            .await?
        {
            Fetched::Stored(id) => self
                .stored_tarball(name, file, &dist, id)
                .await
                .map(|id| (Fetched::Stored(id), Source::Upstream)),
            unstored => Ok((unstored, Source::Upstream)),
        }
    }

    /// The tarball's id as trusted records name it (stored ones first, then the network's when
    /// the operator trusts someone, unless the package missed within [`MISS_TTL`]), fetched from
    /// its providers into the store (and `tap`). `Ok(None)`: no record names it.
    async fn tarball_from_peers(
        &self,
        peers: &dyn peer::Source,
        name: &PackageName,
        dist: &DistRef,
        integrity: &Integrity,
        tap: Option<peer::stream::Tap>,
    ) -> Result<Option<BlobId>, FetchError> {
        let mut id = self
            .records
            .tarball_id(name, &dist.version)
            .map_err(store_err)?;
        let missed_lately = self
            .caches
            .misses
            .get(name)
            .is_some_and(|at| self.clock.since(at) < MISS_TTL);
        if id.is_none() && peers.trusts_anyone() && !missed_lately {
            let ours = attested_integrity(dist);
            id = peers
                .agreed_tarball(name, &dist.version, ours.as_deref())
                .await?;
            if id.is_none() {
                // Do not ask the network again for every file of this package for a while.
                self.caches.misses.insert(name.clone(), self.clock.now_ms());
            }
        }
        let Some(id) = id else {
            return Ok(None);
        };
        Ok(Some(
            peers
                .fetch_blob(name, &id, Some(integrity), self.max_tarball, tap)
                .await?,
        ))
    }

    /// Downloads from the upstream, retrying within one budget of attempts for the request and
    /// its body alike. When the disk, not the bytes, fails, the tarball is downloaded again into
    /// memory (bounded) and passed through uncached.
    async fn tarball_from_upstream(
        &self,
        upstream: &dyn upstream::Source,
        name: &PackageName,
        file: &str,
        dist: &DistRef,
        integrity: &Integrity,
    ) -> Result<Fetched, FetchError> {
        let budget = upstream.budget();
        let deadline = Instant::now() + budget.timeout;
        let mut attempt = 0;
        let mut into = Into::Store;
        loop {
            let got = self
                .download(upstream, name, file, dist, integrity, deadline, into)
                .await;
            match got {
                Ok(f) => return Ok(f),
                Err(FetchError::Upstream(e)) if e.retriable() && attempt < budget.retries => {
                    attempt += 1;
                    tracing::debug!(%name, %file, error = %e, attempt, "tarball fetch failed; retrying");
                    backoff(attempt, deadline).await;
                }
                Err(FetchError::Store(e)) if into == Into::Store => {
                    tracing::warn!(%name, %file, error = %e, "cannot store; passing the tarball through uncached");
                    into = Into::Memory;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Indexes a verified tarball, names it in our record, and announces its package.
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
        self.stored();
        self.announce(name);
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
            let p = if refresh {
                self.packument_for_miss(name).await?
            } else {
                self.packument(name, false).await?
            };
            let index = self.dist_index(name, &p).await?;
            if let Some((f, d)) = index.iter().find(|(f, d)| wanted(f, d)) {
                return Ok(Some((f.clone(), d.clone())));
            }
        }
        self.still_missing(name);
        Ok(None)
    }

    /// The current packument of `name` and the version tarball `file` belongs to, revalidated
    /// once when the file is not in it (a version published since); `None` when no version has
    /// that file. What the holds check before a tarball is served.
    pub(crate) async fn tarball_version(
        self: &Arc<Self>,
        name: &PackageName,
        file: &str,
    ) -> Result<Option<(Packument, String)>, FetchError> {
        for refresh in [false, true] {
            if refresh && !self.can_refresh() {
                break;
            }
            // A fresh hot copy is taken as it is, so that a warm tarball does not count as a
            // packument request too.
            let hot = self
                .caches
                .hot
                .get(name)
                .filter(|(e, _)| !refresh && (self.is_fresh(e) || !self.can_refresh()));
            let p = match hot {
                Some((_, p)) => p,
                None if refresh => self.packument_for_miss(name).await?,
                None => self.packument(name, false).await?,
            };
            let index = self.dist_index(name, &p).await?;
            if let Some(d) = index.get(file) {
                let version = d.version.clone();
                return Ok(Some((p, version)));
            }
        }
        // The tarball path looks again; this refresh already did its work.
        self.still_missing(name);
        Ok(None)
    }

    /// Makes sure `version` of `name` is stored, fetching it if needed; returns its tarball file
    /// name, blob id and size. This is what pinning calls.
    pub(crate) async fn ensure_version(
        self: &Arc<Self>,
        name: &PackageName,
        version: &str,
    ) -> Result<(String, BlobId, u64), FetchError> {
        let (file, _) = self
            .find_dist(name, |_, d| d.version == version)
            .await?
            .ok_or_else(|| FetchError::NotFound(format!("{name} has no version {version}")))?;
        let parsed = TarballFile::parse(&file).map_err(|e| FetchError::invalid(file.clone(), e))?;
        // Not streamed: the caller needs it stored when this returns.
        let blob = self.tarball_as(name, &parsed, false).await?;
        Ok((file, blob.id, blob.len))
    }
}

//! The packument path: fresh copies from memory or the store, revalidation with the upstream,
//! revisions agreed by trusted operators, and stale copies when nothing better answers.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use open_registry_gateway::access::Source;
use open_registry_gateway::{Lease, Packument};
use open_registry_protocol::pointer::Pointer;
use open_registry_protocol::record::Verified;
use open_registry_protocol::{BlobId, PackageName, Verifier};

use super::error::store_err;
use super::flight::Role;
use super::upstream::{self, PackumentAnswer, UpstreamError};
use super::{FetchError, Fetcher, MISS_TTL, STALE_GRACE, parse_dists};
use crate::metrics::Metrics;
use crate::peer::{self, PeerError};
use crate::records::SignError;
use crate::store::PackumentEntry;

impl Fetcher {
    /// Whether a stored revision was confirmed less than `max_age` ago.
    pub(super) fn is_fresh(&self, e: &PackumentEntry) -> bool {
        self.clock.since(e.checked_at) < self.max_age
    }

    /// The current packument of `name`; `refresh` revalidates even a fresh copy.
    pub(crate) async fn packument(
        self: &Arc<Self>,
        name: &PackageName,
        refresh: bool,
    ) -> Result<Packument, FetchError> {
        let asked_at = self.clock.now_ms();
        Metrics::inc(&self.metrics.packument_requests);
        if !refresh
            && let Some((e, p)) = self.caches.hot.get(name)
            && (self.is_fresh(&e) || !self.can_refresh())
        {
            // A packument in use is as recently used as its tarballs (eviction order).
            self.store.index.touch(&p.id, self.clock.now_ms());
            Metrics::inc(&self.metrics.packument_hits);
            return Ok(p.from(Source::Memory));
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
        let (result, role) = match (&entry, refresh) {
            // A stale copy is at hand: wait a little for the upstream, then answer with the copy
            // while the revalidation finishes in the background (stale-while-revalidate).
            (Some(e), false) => {
                // The wait is no longer than the upstream usually takes to answer (a hung
                // upstream costs a fraction of a second, not the whole grace), and ends at once
                // when the upstream is known to be down.
                let grace = async {
                    match &self.upstream {
                        Some(u) => {
                            let wait = u
                                .answers_within()
                                .map_or(STALE_GRACE, |d| d.min(STALE_GRACE));
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {}
                                () = u.outage() => {}
                            }
                        }
                        None => tokio::time::sleep(STALE_GRACE).await,
                    }
                };
                let waited = tokio::select! {
                    r = self.packument_flight(name, asked_at) => Some(r),
                    () = grace => None,
                };
                match waited {
                    Some(r) => r,
                    None => {
                        if let Some(p) = self.load(name, e).await? {
                            tracing::warn!(%name, "upstream slow or down; serving the stored packument");
                            Metrics::inc(&self.metrics.stale_served);
                            return Ok(p);
                        }
                        // The copy vanished meanwhile: wait for the flight after all.
                        self.packument_flight(name, asked_at).await
                    }
                }
            }
            _ => self.packument_flight(name, asked_at).await,
        };
        if role == Role::Follower {
            Metrics::inc(&self.metrics.coalesced);
        }
        result.unwrap_or(Err(FetchError::Panicked))
    }

    /// The packument of `name` after a request found no such version, dist-tag or file in the
    /// current one: refreshed once, unless a refresh for a miss of this package found nothing
    /// less than [`MISS_TTL`] ago (the negative cache). So requests for what does not exist
    /// reach the upstream at most once per package per miss TTL.
    pub(crate) async fn packument_for_miss(
        self: &Arc<Self>,
        name: &PackageName,
    ) -> Result<Packument, FetchError> {
        let recent = self
            .caches
            .absent
            .get(name)
            .is_some_and(|at| self.clock.since(at) < MISS_TTL);
        if recent {
            Metrics::inc(&self.metrics.miss_refreshes_skipped);
        }
        self.packument(name, !recent).await
    }

    /// Remembers that a refresh for a miss of `name` found nothing (see
    /// [`packument_for_miss`](Self::packument_for_miss)).
    /// An entry still within its TTL is kept as it is: misses that did not refresh do not
    /// extend it, so a version published meanwhile is found once the TTL has passed.
    pub(crate) fn still_missing(&self, name: &PackageName) {
        let now = self.clock.now_ms();
        let fresh = self
            .caches
            .absent
            .get(name)
            .is_some_and(|at| self.clock.since(at) < MISS_TTL);
        if !fresh {
            self.caches.absent.insert(name.clone(), now);
        }
    }

    /// Joins (or starts) the one flight that fetches `name`'s packument.
    fn packument_flight(
        self: &Arc<Self>,
        name: &PackageName,
        asked_at: u64,
    ) -> impl Future<Output = (Option<Result<Packument, FetchError>>, Role)> + '_ {
        let this = self.clone();
        let key = name.clone();
        self.packuments.run(name.clone(), move || async move {
            this.fetch_packument(&key, asked_at).await
        })
    }

    /// **The packument order.** The upstream when there is one (authoritative and fresher);
    /// the trusted operators' agreed revision when there is none or it failed; finally the
    /// stored revision (stale-if-error). An upstream 404 is an answer, not a failure: peers are
    /// not asked. `asked_at` is when the request that started this flight began: a revision
    /// confirmed after that moment (by another flight) already did this one's work.
    async fn fetch_packument(
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
            match self.ask_upstream(upstream.as_ref(), name, &entry).await {
                Ok(p) => return Ok(p),
                Err(e @ FetchError::NotFound(_)) => return Err(e),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(peers) = self.trusting_peers() {
            match self.ask_peers(peers.as_ref(), name, &entry, None).await {
                Ok(p) => return Ok(p),
                Err(e) => {
                    tracing::debug!(%name, error = %crate::errors::chain(&e), "peers could not provide the packument");
                    failure.get_or_insert(e);
                }
            }
        }
        let failure = failure.unwrap_or_else(|| {
            FetchError::NotFound(format!("{name} is not available from any source"))
        });
        self.stale_or(name, entry, failure).await
    }

    /// Reads a stored revision (and warms the hot cache). A vanished blob drops the entry.
    ///
    /// The bytes are leased from the packument memory before they are read (the caller holds
    /// no lease while it waits), and the lease goes with the packument to the gateway.
    pub(super) async fn load(
        &self,
        name: &PackageName,
        e: &PackumentEntry,
    ) -> Result<Option<Packument>, FetchError> {
        let lease = self
            .memory
            .lease(self.store.blobs.size(&e.id).unwrap_or(0))
            .await;
        match self.store.blobs.read(&e.id).await.map_err(store_err)? {
            Some(bytes) => {
                self.store.index.touch(&e.id, self.clock.now_ms());
                self.keep_hot(name, e, &bytes);
                Ok(Some(Packument {
                    id: e.id,
                    bytes,
                    lease,
                    source: Source::Store,
                    withheld: Vec::new(),
                }))
            }
            None => {
                tracing::warn!(%name, id = %e.id.short(), "packument blob missing; refetching");
                self.store.index.remove_packument(name).map_err(store_err)?;
                Ok(None)
            }
        }
    }

    /// Keeps a revision in the hot cache, which counts its bytes itself (no lease).
    fn keep_hot(&self, name: &PackageName, e: &PackumentEntry, bytes: &Bytes) {
        self.caches.hot.insert(
            name.clone(),
            (e.clone(), Packument::new(e.id, bytes.clone())),
        );
    }

    /// One conditional request to the upstream, and what follows from its answer.
    async fn ask_upstream(
        &self,
        upstream: &dyn upstream::Source,
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
            (Ok(PackumentAnswer::NotModified), Some(e)) => {
                self.unchanged(name, e, None, None, None).await
            }
            (Ok(PackumentAnswer::NotModified), None) => Err(FetchError::Upstream(
                UpstreamError::Body("304 to an unconditional request".into()),
            )),
            // An upstream that sends no validators answers 200 with the same bytes: recognised
            // by the content id, it is a 304 in all but name.
            (
                Ok(PackumentAnswer::Document {
                    bytes,
                    lease,
                    etag,
                    last_modified,
                }),
                Some(e),
            ) if e.id == BlobId::of(&bytes) => {
                self.unchanged(name, e, Some((bytes, lease)), etag, last_modified)
                    .await
            }
            (
                Ok(PackumentAnswer::Document {
                    bytes,
                    lease,
                    etag,
                    last_modified,
                }),
                _,
            ) => {
                let p = Packument {
                    id: BlobId::of(&bytes),
                    bytes,
                    lease,
                    source: Source::Upstream,
                    withheld: Vec::new(),
                };
                self.ingest_packument(name, p, etag, last_modified).await
            }
            (Err(UpstreamError::NotFound(what)), _) => {
                Err(FetchError::NotFound(format!("{what} (404 from upstream)")))
            }
            (Err(e), _) => Err(e.into()),
        }
    }

    /// The upstream confirmed the stored revision (a 304, or the same bytes again): it is fresh
    /// again, counted as not modified, and re-signed only when this node's record for it is
    /// missing or past half its lifetime: a revalidation that changed nothing signs nothing new
    /// and announces nothing.
    async fn unchanged(
        &self,
        name: &PackageName,
        mut e: PackumentEntry,
        bytes: Option<(Bytes, Lease)>,
        etag: Option<String>,
        last_modified: Option<String>,
    ) -> Result<Packument, FetchError> {
        Metrics::inc(&self.metrics.packument_not_modified);
        e.checked_at = self.clock.now_ms();
        if etag.is_some() || last_modified.is_some() {
            e.etag = etag;
            e.last_modified = last_modified;
        }
        self.store
            .index
            .set_packument(name, &e)
            .await
            .map_err(store_err)?;
        let p = match bytes {
            Some((bytes, lease)) => {
                self.keep_hot(name, &e, &bytes);
                Packument {
                    id: e.id,
                    bytes,
                    lease,
                    source: Source::Upstream,
                    withheld: Vec::new(),
                }
            }
            None => self
                .load(name, &e)
                .await?
                .ok_or_else(|| vanished(format!("the stored packument of {name}")))?,
        };
        if !self.record_vouches_for(name, &e.id) {
            self.sign(name, &p, e.checked_at).await;
        }
        Ok(p)
    }

    /// Whether this node's own record names revision `id` and has more than half its lifetime
    /// left.
    fn record_vouches_for(&self, name: &PackageName, id: &BlobId) -> bool {
        match self.records.own_record(name) {
            Ok(Some(r)) => {
                let half = r.fetched_at + r.expires_at.saturating_sub(r.fetched_at) / 2;
                r.packument == *id && self.clock.now_ms() < half
            }
            _ => false,
        }
    }

    /// The revision that trusted operators agree on, fetched from peers by its id and verified.
    /// A revision older than what this node signed itself is not taken.
    async fn ask_peers(
        &self,
        peers: &dyn peer::Source,
        name: &PackageName,
        entry: &Option<PackumentEntry>,
        hint: Option<&Verified<Pointer>>,
    ) -> Result<Packument, FetchError> {
        let agreed = peers
            .agreed_packument(name, hint)
            .await
            .map_err(|e| match e {
                PeerError::NoQuorum { .. } => FetchError::NotFound(format!("{name}: {e}")),
                e => e.into(),
            })?;
        let ours = self
            .records
            .own_record(name)
            .map_err(store_err)?
            .map_or(0, |r| r.fetched_at);
        if let Some(e) = entry
            && (e.id == agreed.id || ours >= agreed.fetched_at)
        {
            // What we hold is the agreed revision, or newer than it.
            let mut e = e.clone();
            e.checked_at = self.clock.now_ms();
            self.store
                .index
                .set_packument(name, &e)
                .await
                .map_err(store_err)?;
            peers.keep(&agreed.records).await;
            if let Some(p) = self.load(name, &e).await? {
                return Ok(p);
            }
        }
        let id = agreed.id;
        if !self.store.blobs.contains(&id) {
            peers
                .fetch_blob(name, &id, None, self.max_packument, None)
                .await?;
        }
        let lease = self
            .memory
            .lease(self.store.blobs.size(&id).unwrap_or(0))
            .await;
        let bytes = self
            .store
            .blobs
            .read(&id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| vanished(format!("packument {id}")))?;
        let dists = parse_dists(name, &bytes, format!("packument of {name} from peers")).await?;
        let e = PackumentEntry {
            id,
            etag: None,
            last_modified: None,
            checked_at: self.clock.now_ms(),
        };
        self.store
            .index
            .set_packument(name, &e)
            .await
            .map_err(store_err)?;
        peers.keep(&agreed.records).await;
        peers.announce(name).await;
        Metrics::inc(&self.metrics.packument_updates);
        self.stored();
        self.caches.dists.insert(id, dists);
        self.note_first_seen(name, &bytes).await;
        self.keep_hot(name, &e, &bytes);
        let p = Packument {
            id,
            bytes,
            lease,
            source: Source::Peer,
            withheld: Vec::new(),
        };
        tracing::info!(%name, id = %id.short(), signers = agreed.records.len(), "took a packument revision from peers");
        Ok(p)
    }

    /// Takes a newer revision from peers after a trusted operator announced one on gossip (the
    /// pointer is the hint), without asking the upstream.
    pub(crate) async fn update_from_peers(
        &self,
        name: &PackageName,
        hint: &Verified<Pointer>,
    ) -> Result<Packument, FetchError> {
        let peers = self
            .peers
            .as_ref()
            .ok_or_else(|| FetchError::NotFound("no peer-to-peer network".into()))?;
        let entry = self.store.index.packument(name).map_err(store_err)?;
        self.ask_peers(peers.as_ref(), name, &entry, Some(hint))
            .await
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
            tracing::warn!(%name, error = %crate::errors::chain(&err), "upstream failed; serving the stored packument");
            Metrics::inc(&self.metrics.stale_served);
            return Ok(p);
        }
        Err(err)
    }

    /// Validates, stores and indexes a packument revision from the upstream, and signs it.
    async fn ingest_packument(
        &self,
        name: &PackageName,
        p: Packument,
        etag: Option<String>,
        last_modified: Option<String>,
    ) -> Result<Packument, FetchError> {
        let dists = parse_dists(name, &p.bytes, format!("upstream packument of {name}")).await?;
        let id = match self
            .store
            .blobs
            .put(&p.bytes, Verifier::id_only(), u64::MAX)
            .await
        {
            Ok(id) => id,
            // The disk failed, not the document: serve it without caching.
            Err(e) if e.is_local() => {
                let e = self.metrics.refused(e);
                tracing::warn!(%name, error = %e, "cannot store; passing the packument through uncached");
                return Ok(p);
            }
            Err(e) => return Err(self.metrics.refused(e).into()),
        };
        let entry = PackumentEntry {
            id,
            etag,
            last_modified,
            checked_at: self.clock.now_ms(),
        };
        self.store
            .index
            .set_packument(name, &entry)
            .await
            .map_err(store_err)?;
        Metrics::inc(&self.metrics.packument_updates);
        self.stored();
        self.caches.dists.insert(id, dists);
        self.note_first_seen(name, &p.bytes).await;
        self.keep_hot(name, &entry, &p.bytes);
        self.announce(name);
        self.sign(name, &p, entry.checked_at).await;
        tracing::debug!(%name, id = %id.short(), "stored packument revision");
        Ok(p)
    }

    /// Signs a record for a packument revision just confirmed by the upstream. A failure to sign
    /// (the disk) does not fail the request that triggered it.
    async fn sign(&self, name: &PackageName, p: &Packument, fetched_at: u64) {
        let signed = match self.dist_index(name, p).await {
            Ok(dists) => self
                .records
                .sign_packument(&self.store.index, name, p.id, &dists, fetched_at)
                .await
                .map_err(|e| {
                    if let SignError::Unsignable(why) = &e {
                        // Served all the same; the count is in the metrics, the package and
                        // the reason in the status.
                        Metrics::inc(&self.metrics.records_unsigned);
                        self.caches.note_unsigned(name, why, self.clock.now_ms());
                    }
                    e.to_string()
                }),
            Err(e) => Err(crate::errors::chain(&e)),
        };
        match signed {
            Ok(s) => self.publish(s),
            Err(e) => tracing::warn!(%name, error = %e, "served without a signed record"),
        }
    }
}

/// A blob the store had a moment ago is gone (evicted or deleted underneath): a store failure.
pub(super) fn vanished(what: String) -> FetchError {
    FetchError::store(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{what} vanished from the store"),
    ))
}

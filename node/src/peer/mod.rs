//! The node on the network: what it announces, and how it gets verified bytes from peers.
//!
//! - Every blob in the store is announced (one provider record per blob CID) and withdrawn when
//!   evicted. Record blobs (a signed record's wire bytes) are announced too.
//! - Each record the node signs is published: its blob is provided, and a small signed
//!   [`Pointer`] to it is put in the DHT under a key made of the package name and this
//!   operator's id, so nodes that trust this operator find the newest record by name.
//! - Fetching: [`P2p::trusted_records`] finds the newest records of the trusted operators for a
//!   name and checks them under the trust policy; [`P2p::fetch_blob`] asks the providers of a
//!   CID one after another (shuffled, bounded in number and time), streams each answer through
//!   a verifier into the store, and moves on to the next provider on an error, a stall, a
//!   timeout or bytes that do not verify.
//!
//! Nothing a peer sends is believed: pointers and records are verified against trusted keys,
//! and blob bytes against their CID (and npm integrity for tarballs) before they are stored.

pub mod popularity;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use open_registry_protocol::pointer::{self, Pointer};
use open_registry_protocol::record::{Record, Signable as _, Signed, Verified};
use open_registry_protocol::{BlobId, PackageName, Policy, Verifier};
use tokio::io::AsyncSeekExt as _;
use tokio::time::Instant;

use crate::fetch::FetchError;
use crate::metrics::Metrics;
use crate::net::{self, BlobSource, Client, NetError, RecordValidator};
use crate::records::Records;
use crate::store::{Store, WriteError, now_ms};

/// A record as it travelled, and as it verified.
pub type Found = (Signed, Verified<Record>);

/// How many untrusted providers a fetch tries at most (after the trusted operators).
const MAX_PROVIDERS: usize = 8;
/// How many provider records a fetch collects to choose from.
const MAX_PROVIDER_RECORDS: usize = 20;
/// How long finding providers or records may take.
const FIND_DEADLINE: Duration = Duration::from_secs(5);

/// Serves the store's verified blobs and stored record blobs to peers.
#[derive(Debug)]
pub struct StoreSource {
    store: Arc<Store>,
    records: Arc<Records>,
}

impl StoreSource {
    /// A source over `store` and `records`.
    pub fn new(store: Arc<Store>, records: Arc<Records>) -> StoreSource {
        StoreSource { store, records }
    }
}

impl BlobSource for StoreSource {
    fn open<'a>(
        &'a self,
        id: &'a BlobId,
        offset: u64,
    ) -> BoxFuture<'a, std::io::Result<Option<net::Blob>>> {
        Box::pin(async move {
            if let Some((mut file, len)) = self.store.blobs.open_read(id).await? {
                if offset > 0 && offset <= len {
                    file.seek(std::io::SeekFrom::Start(offset)).await?;
                }
                return Ok(Some(net::Blob {
                    len,
                    reader: Box::new(file),
                }));
            }
            match self.records.blob(id) {
                Ok(Some(b)) => Ok(Some(net::Blob::from_bytes(b.into(), offset))),
                Ok(None) => Ok(None),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        })
    }
}

/// Admits only correctly signed, unexpired pointers stored under their signer's key, and keeps
/// the newer of two (a replayed older pointer never replaces a newer one: R4).
#[derive(Debug, Clone, Copy, Default)]
pub struct PointerValidator;

impl RecordValidator for PointerValidator {
    fn validate(&self, key: &[u8], value: &[u8]) -> bool {
        pointer::validate(key, value, now_ms()).is_ok()
    }

    fn replaces(&self, key: &[u8], old: &[u8], new: &[u8]) -> bool {
        let seq = |v: &[u8]| {
            pointer::validate(key, v, now_ms())
                .ok()
                .map(|p| p.get().seq)
        };
        match (seq(old), seq(new)) {
            (Some(o), Some(n)) => n > o,
            (None, Some(_)) => true,
            _ => false,
        }
    }
}

/// The node's network side.
#[derive(Debug)]
pub struct P2p {
    net: Client,
    store: Arc<Store>,
    records: Arc<Records>,
    policy: Policy,
    metrics: Arc<Metrics>,
    /// The budget for fetching one blob from peers, all providers included.
    timeout: Duration,
}

impl P2p {
    /// Wraps a started network client.
    pub fn new(
        net: Client,
        store: Arc<Store>,
        records: Arc<Records>,
        policy: Policy,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> P2p {
        P2p {
            net,
            store,
            records,
            policy,
            metrics,
            timeout,
        }
    }

    /// The network client.
    pub fn client(&self) -> &Client {
        &self.net
    }

    /// The trust policy for peers' records.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether metadata may be taken from peers at all (someone is trusted).
    pub fn trusts_anyone(&self) -> bool {
        !self.policy.trusted().is_empty()
    }

    /// Announces a stored blob.
    pub async fn announce(&self, id: &BlobId) {
        if let Err(e) = self.net.provide(id).await {
            tracing::warn!(id = %id.short(), error = %e, "could not announce a blob");
        }
    }

    /// Withdraws an evicted blob.
    pub async fn withdraw(&self, id: &BlobId) {
        if let Err(e) = self.net.unprovide(id).await {
            tracing::warn!(id = %id.short(), error = %e, "could not withdraw a blob");
        }
    }

    /// Announces everything stored and republishes our records' pointers (after a start).
    pub async fn announce_all(&self) {
        let blobs = match self.store.blobs.list() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the store to announce it");
                return;
            }
        };
        for (id, _) in &blobs {
            self.announce(id).await;
        }
        for id in self.records.blob_ids().unwrap_or_default() {
            self.announce(&id).await;
        }
        let own = self.records.own_latest().unwrap_or_default();
        for s in &own {
            self.publish(s).await;
        }
        tracing::info!(
            blobs = blobs.len(),
            records = own.len(),
            "announced the store to the network"
        );
    }

    /// Publishes one of our records: provides its blob and points to it from the DHT.
    pub async fn publish(&self, signed: &Signed) {
        let Ok(v) = signed.verify() else {
            return;
        };
        let r = v.get();
        let wire = signed.to_bytes();
        let id = BlobId::of(&wire);
        self.announce(&id).await;
        let p = Pointer {
            name: r.name.clone(),
            seq: r.seq,
            expires_at: r.expires_at,
            record: id,
        };
        let key = pointer::dht_key(&r.name, &signed.signer);
        let value = p.sign(self.records.identity().signing_key()).to_bytes();
        if let Err(e) = self.net.put_record(key, value.clone()).await {
            tracing::warn!(name = %r.name, error = %e, "could not publish the record pointer");
        }
        // Tell the nodes that cache this package now, rather than when they next look.
        if let Err(e) = self.net.publish(net::RECORDS_TOPIC, value).await {
            tracing::debug!(name = %r.name, error = %e, "could not gossip the record pointer");
        }
    }

    /// The newest records of the trusted operators for `name` that pass the trust policy
    /// (signature, expiry, no rollback below what this node has seen), with their signed form.
    /// `hint` is a pointer heard on gossip: it competes with what the DHT returns.
    pub async fn trusted_records(
        &self,
        name: &PackageName,
        hint: Option<&Verified<Pointer>>,
    ) -> Vec<Found> {
        let lookups = self.policy.trusted().iter().map(|signer| async move {
            let key = pointer::dht_key(name, signer);
            let found = self
                .net
                .get_records(key.clone(), FIND_DEADLINE)
                .await
                .unwrap_or_default();
            // The newest valid pointer any peer returned (or gossip brought).
            let hinted = hint.filter(|h| h.signer() == signer).cloned();
            let best = found
                .iter()
                .filter_map(|f| pointer::validate(&key, &f.value, now_ms()).ok())
                .chain(hinted)
                .max_by_key(|p| p.get().seq)?;
            let wire = self
                .fetch_small(
                    &best.get().record,
                    pointer_record_cap(),
                    net::PeerId::from_bytes(&signer.to_bytes()).ok(),
                )
                .await?;
            let signed = Signed::from_bytes(&wire).ok()?;
            let seen = self.records.seen(name, signer).ok().flatten();
            match self.policy.check(&signed, name, now_ms(), seen) {
                Ok(v) => Some((signed, v)),
                Err(e) => {
                    Metrics::inc(&self.metrics.records_rejected);
                    tracing::warn!(%name, signer = %signer.short(), error = %e, "refused a record from the network");
                    None
                }
            }
        });
        futures::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The packument revision at least `threshold` trusted operators agree on, newest first,
    /// with the records that agree.
    pub fn quorum(&self, found: Vec<Found>) -> Option<(BlobId, Vec<Found>)> {
        let mut groups: HashMap<BlobId, Vec<Found>> = HashMap::new();
        for f in found {
            groups.entry(f.1.get().packument).or_default().push(f);
        }
        groups
            .into_iter()
            .filter(|(_, rs)| rs.len() >= self.policy.threshold())
            .max_by_key(|(_, rs)| rs.iter().map(|r| r.1.get().fetched_at).max())
    }

    /// A pointer heard on gossip, if it is worth acting on: well signed by a trusted operator,
    /// unexpired, and newer than anything seen from that operator for the package.
    pub fn interesting(&self, wire: &[u8]) -> Option<Verified<Pointer>> {
        let signed = Signed::from_bytes(wire).ok()?;
        if !self.policy.trusts(&signed.signer) {
            return None;
        }
        let v = signed.verify_as::<Pointer>().ok()?;
        let p = v.get();
        if p.expires_at <= now_ms() {
            return None;
        }
        let seen = self.records.seen(&p.name, &signed.signer).ok().flatten();
        if seen.is_some_and(|s| s >= p.seq) {
            return None;
        }
        Some(v)
    }

    /// Fetches a small blob (a record) into memory, checking its id.
    /// `first` (the operator that signed the pointer naming it) is asked before any provider
    /// lookup: it serves its own records, and asking it costs one round trip, not a DHT query.
    async fn fetch_small(
        &self,
        id: &BlobId,
        cap: u64,
        first: Option<net::PeerId>,
    ) -> Option<Vec<u8>> {
        if let Ok(Some(b)) = self.records.blob(id) {
            return Some(b);
        }
        let me = self.net.local_peer_id();
        let first: Vec<net::PeerId> = first.into_iter().filter(|p| *p != me).collect();
        if let Some(b) = self.fetch_small_from(&first, id, cap).await {
            return Some(b);
        }
        let providers: Vec<net::PeerId> = self
            .net
            .find_providers(id, MAX_PROVIDERS, FIND_DEADLINE)
            .await
            .ok()?
            .into_iter()
            .filter(|p| !first.contains(p))
            .collect();
        self.fetch_small_from(&providers, id, cap).await
    }

    async fn fetch_small_from(
        &self,
        providers: &[net::PeerId],
        id: &BlobId,
        cap: u64,
    ) -> Option<Vec<u8>> {
        for &peer in providers {
            let Ok(t) = self.net.fetch(peer, id, cap, FIND_DEADLINE).await else {
                continue;
            };
            match t.read_all().await {
                Ok(b) if BlobId::of(&b) == *id => return Some(b.to_vec()),
                Ok(_) => {
                    Metrics::inc(&self.metrics.integrity_failures);
                    tracing::warn!(peer = %peer, "a peer served a record blob that does not match its id");
                }
                Err(_) => {}
            }
        }
        None
    }

    /// Fetches blob `id` from its providers into the store, checking it with `verifier`
    /// (integrity for tarballs) and against `id`. Tries providers in turn until one delivers.
    pub async fn fetch_blob(
        &self,
        id: &BlobId,
        verifier: impl Fn() -> Verifier,
        max_len: u64,
    ) -> Result<BlobId, FetchError> {
        let deadline = Instant::now() + self.timeout;
        // The trusted operators first, listed or not: anyone can announce a blob (R15), and
        // sybils must not crowd out the nodes whose records named it. They are asked before any
        // provider lookup: when one of them has the blob (the usual case: it signed the record
        // naming it), the fetch costs no DHT query at all (benchmark B5).
        let me = self.net.local_peer_id();
        let trusted: Vec<net::PeerId> = self
            .policy
            .trusted()
            .iter()
            .filter_map(|p| net::PeerId::from_bytes(&p.to_bytes()).ok())
            .filter(|p| *p != me)
            .collect();
        let first = if trusted.is_empty() {
            None
        } else {
            match self
                .fetch_from(&trusted, id, &verifier, max_len, deadline)
                .await
            {
                Ok(got) => return Ok(got),
                Err(e) => Some(e),
            }
        };
        let mut providers = match self
            .net
            .find_providers(id, MAX_PROVIDER_RECORDS, FIND_DEADLINE)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                return Err(first.unwrap_or_else(|| {
                    FetchError::Peers(format!("finding providers of {id}: {e}"))
                }));
            }
        };
        // Spread load, and do not let one slow peer always be asked first.
        shuffle(&mut providers);
        let others: Vec<net::PeerId> = providers
            .into_iter()
            .filter(|p| !trusted.contains(p) && *p != me)
            .take(MAX_PROVIDERS)
            .collect();
        if others.is_empty()
            && let Some(e) = first
        {
            return Err(e);
        }
        self.fetch_from(&others, id, &verifier, max_len, deadline)
            .await
    }

    /// [`P2p::fetch_blob`] from an explicit list of providers, in order.
    pub async fn fetch_from(
        &self,
        providers: &[net::PeerId],
        id: &BlobId,
        verifier: impl Fn() -> Verifier,
        max_len: u64,
        deadline: Instant,
    ) -> Result<BlobId, FetchError> {
        if providers.is_empty() {
            return Err(FetchError::Peers(format!("no peer provides {id}")));
        }
        let mut last = String::new();
        for peer in providers {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                last = "the peer fetch deadline passed".into();
                break;
            }
            Metrics::inc(&self.metrics.peer_requests);
            match self.fetch_one(*peer, id, verifier(), max_len, left).await {
                Ok(got) => {
                    Metrics::inc(&self.metrics.peer_ingests);
                    tracing::debug!(%peer, id = %id.short(), "fetched a blob from a peer");
                    return Ok(got);
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.peer_errors);
                    tracing::warn!(%peer, id = %id.short(), error = %e, "peer fetch failed; trying the next provider");
                    last = e.to_string();
                }
            }
        }
        Err(FetchError::Peers(format!(
            "no peer delivered {id} ({last})"
        )))
    }

    async fn fetch_one(
        &self,
        peer: net::PeerId,
        id: &BlobId,
        verifier: Verifier,
        max_len: u64,
        deadline: Duration,
    ) -> Result<BlobId, FetchError> {
        let mut transfer = self
            .net
            .fetch(peer, id, max_len, deadline)
            .await
            .map_err(peer_err)?;
        let mut w = self
            .store
            .blobs
            .writer(verifier, max_len)
            .await
            .map_err(|e| FetchError::Store(e.to_string()))?;
        while let Some(chunk) = transfer.next().await {
            let chunk = chunk.map_err(peer_err)?;
            Metrics::add(&self.metrics.peer_bytes, chunk.len() as u64);
            w.write(&chunk).await.map_err(|e| self.write_err(e))?;
        }
        w.commit_as(Some(id)).await.map_err(|e| self.write_err(e))
    }

    fn write_err(&self, e: WriteError) -> FetchError {
        match e {
            WriteError::Integrity(e) => {
                Metrics::inc(&self.metrics.integrity_failures);
                FetchError::Integrity(format!("a peer sent bytes that do not verify: {e}"))
            }
            WriteError::Empty => FetchError::Integrity("a peer sent an empty blob".into()),
            WriteError::TooLarge(n) => {
                FetchError::Integrity(format!("a peer sent more than {n} bytes"))
            }
            WriteError::Io(e) => FetchError::Store(e.to_string()),
        }
    }

    /// Stores the verified records of the agreeing operators, so that this node serves them,
    /// remembers their sequence numbers, and knows their tarball ids.
    pub async fn keep(&self, records: &[Found]) {
        for (s, v) in records {
            if let Err(e) = self
                .records
                .store_verified(&self.store.index, s, v.get().seq, &v.get().name)
                .await
            {
                tracing::warn!(error = %e, "could not store a verified record");
            } else {
                self.announce(&BlobId::of(&s.to_bytes())).await;
            }
        }
    }
}

fn peer_err(e: NetError) -> FetchError {
    FetchError::Peers(format!("peer: {e}"))
}

/// The largest record blob accepted (records list every version: a few MiB at most).
fn pointer_record_cap() -> u64 {
    open_registry_protocol::record::MAX_RECORD_LEN as u64 + 97
}

/// A Fisher–Yates shuffle seeded from the clock: good enough to spread load, no RNG crate.
fn shuffle<T>(v: &mut [T]) {
    let mut x = now_ms() ^ 0x9e37_79b9_7f4a_7c15 ^ (v.len() as u64);
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

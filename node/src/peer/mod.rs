//! Everything the read path asks of other nodes: records, blobs, and what to tell them.
//!
//! - [`trust`]: which records to believe. The newest record of each trusted operator for a name
//!   (found through its signed DHT pointer, or a pointer heard on gossip), checked under the
//!   trust policy; the packument revision at least `threshold` of them agree on (quorum); the
//!   tarball id their records name for a version whose integrity matches ours.
//! - [`fetch`]: blobs by content id. The trusted operators are asked first (they signed the
//!   records naming the blob), then the providers of the blob's package from the DHT
//!   ([`providers`]: one lookup per package, cached), bounded, and only when those leave
//!   nobody new to ask or none delivers, the providers of the blob's own id; nearest first in each group, each answer streams through a verifier into the store, and a provider that
//!   errs, stalls, runs out of time or sends bytes that do not verify is skipped for the next.
//! - [`stream`]: a tarball's bytes handed to the waiting HTTP client while they are verified
//!   and stored, and the peers that spoiled such an answer, skipped for that blob for a while.
//! - [`hedge`]: how those requests are raced: the next provider is asked when the one before
//!   has not started answering within a delay derived from its round-trip time.
//! - [`announce`]: what this node tells the network. One provider record per package it holds
//!   blobs of (its package key; withdrawn when eviction leaves nothing of the package), sent
//!   at a bounded message rate (`net::pacer`), and for every record it signs a small signed
//!   pointer in the DHT under (name, operator) plus the same pointer on gossip.
//! - [`hooks`]: what the network layer asks of the node (blobs to serve, DHT values to keep).
//! - [`popularity`]: request counts and trusted operators' signed summaries.
//!
//! Nothing a peer sends is believed: pointers and records are verified against trusted keys,
//! blob bytes against their id (and npm integrity for tarballs) before they are stored. The
//! Fetcher reaches all of this through the [`Source`] trait, which tests replace with a fake.

pub(crate) mod announce;
pub(crate) mod error;
pub(crate) mod fetch;
pub(crate) mod hedge;
pub(crate) mod hooks;
pub(crate) mod popularity;
pub(crate) mod providers;
pub(crate) mod stream;
#[cfg(test)]
mod tests;
pub(crate) mod trust;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use open_registry_protocol::pointer::Pointer;
use open_registry_protocol::record::{Record, Signed, Verified};
use open_registry_protocol::{BlobId, Integrity, PackageName, Policy};

pub(crate) use error::PeerError;
pub use hooks::PointerValidator;
pub(crate) use hooks::StoreSource;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::net::Client;
use crate::records::Records;
use crate::store::Store;

/// A record as it travelled, and as it verified.
pub(crate) type Found = (Signed, Verified<Record>);

/// A packument revision that enough trusted operators agree on.
#[derive(Debug, Clone)]
pub(crate) struct Agreed {
    /// The revision's blob id.
    pub id: BlobId,
    /// The newest `fetched_at` among the agreeing records.
    pub fetched_at: u64,
    /// The agreeing records, to keep once the revision is taken.
    pub records: Vec<Found>,
}

/// What the Fetcher asks of the network. [`Peers`] is the real one.
pub(crate) trait Source: Send + Sync + fmt::Debug {
    /// Whether metadata may be taken from peers at all (someone is trusted).
    fn trusts_anyone(&self) -> bool;

    /// The packument revision of `name` that enough trusted operators agree on. `hint` is a
    /// pointer heard on gossip: it competes with what the DHT returns.
    fn agreed_packument<'a>(
        &'a self,
        name: &'a PackageName,
        hint: Option<&'a Verified<Pointer>>,
    ) -> BoxFuture<'a, Result<Agreed, PeerError>>;

    /// The tarball id that trusted operators' records name for `version` of `name`, among those
    /// whose integrity for it is `integrity`; the agreeing records are kept. `Ok(None)`: no
    /// trusted record names one.
    fn agreed_tarball<'a>(
        &'a self,
        name: &'a PackageName,
        version: &'a str,
        integrity: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<BlobId>, PeerError>>;

    /// Stores the verified records of agreeing operators, and announces them.
    fn keep<'a>(&'a self, records: &'a [Found]) -> BoxFuture<'a, ()>;

    /// Fetches blob `id` of package `name` from its providers into the store, checked against
    /// its id and, for a tarball, against `integrity`. With a `tap`, the bytes stream to its
    /// body as they arrive ([`stream`]).
    fn fetch_blob<'a>(
        &'a self,
        name: &'a PackageName,
        id: &'a BlobId,
        integrity: Option<&'a Integrity>,
        max_len: u64,
        tap: Option<stream::Tap>,
    ) -> BoxFuture<'a, Result<BlobId, PeerError>>;

    /// Announces that this node holds blobs of package `name` (one provider record per
    /// package, whatever it holds of it).
    fn announce<'a>(&'a self, name: &'a PackageName) -> BoxFuture<'a, ()>;

    /// Publishes a record this node signed.
    fn publish<'a>(&'a self, signed: &'a Signed) -> BoxFuture<'a, ()>;
}

/// The node's network side, over a started [`Client`].
#[derive(Debug)]
pub(crate) struct Peers {
    net: Client,
    store: Arc<Store>,
    records: Arc<Records>,
    policy: Policy,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// The budget for fetching one blob from peers, all providers included.
    timeout: Duration,
    /// Providers that spoiled a blob lately, skipped for it.
    bad: stream::BadPeers<crate::net::PeerId>,
    /// Each package's providers, looked up once for its misses.
    providers: providers::ProviderCache,
    /// The packages whose provider key this node provides.
    announced: Mutex<HashSet<PackageName>>,
}

impl Peers {
    /// Wraps a started network client.
    pub(crate) fn new(
        net: Client,
        store: Arc<Store>,
        records: Arc<Records>,
        policy: Policy,
        metrics: Arc<Metrics>,
        clock: Clock,
        timeout: Duration,
    ) -> Peers {
        Peers {
            net,
            store,
            records,
            policy,
            metrics,
            clock,
            timeout,
            bad: stream::BadPeers::default(),
            providers: providers::ProviderCache::default(),
            announced: Mutex::default(),
        }
    }

    /// The network client.
    pub(crate) fn client(&self) -> &Client {
        &self.net
    }

    /// The trust policy for peers' records.
    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }
}

impl Source for Peers {
    fn trusts_anyone(&self) -> bool {
        !self.policy.trusted().is_empty()
    }

    fn agreed_packument<'a>(
        &'a self,
        name: &'a PackageName,
        hint: Option<&'a Verified<Pointer>>,
    ) -> BoxFuture<'a, Result<Agreed, PeerError>> {
        Box::pin(self.packument_quorum(name, hint))
    }

    fn agreed_tarball<'a>(
        &'a self,
        name: &'a PackageName,
        version: &'a str,
        integrity: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<BlobId>, PeerError>> {
        Box::pin(self.tarball_agreement(name, version, integrity))
    }

    fn keep<'a>(&'a self, records: &'a [Found]) -> BoxFuture<'a, ()> {
        Box::pin(self.keep_records(records))
    }

    fn fetch_blob<'a>(
        &'a self,
        name: &'a PackageName,
        id: &'a BlobId,
        integrity: Option<&'a Integrity>,
        max_len: u64,
        tap: Option<stream::Tap>,
    ) -> BoxFuture<'a, Result<BlobId, PeerError>> {
        Box::pin(stream::with_tap(
            tap,
            self.fetch_verified(name, id, integrity, max_len),
        ))
    }

    fn announce<'a>(&'a self, name: &'a PackageName) -> BoxFuture<'a, ()> {
        Box::pin(self.announce_package(name))
    }

    fn publish<'a>(&'a self, signed: &'a Signed) -> BoxFuture<'a, ()> {
        Box::pin(self.publish_record(signed))
    }
}

//! The read path's network side across real nodes on loopback: a tarball found through its
//! package's provider record, the package's later misses costing no further lookup, and the
//! blob-id fallback when the package's providers leave nobody to ask or do not deliver.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use open_registry_protocol::pointer::provider_key;
use open_registry_protocol::{BlobId, PackageName, Policy};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Peers;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::net::{self, Blob, BlobSource, Client, Config, NoBlobs, RejectAll};
use crate::records::{Identity, Records};
use crate::store::Store;

/// Blobs held in memory.
struct Held(HashMap<BlobId, Bytes>);

impl BlobSource for Held {
    fn open<'a>(&'a self, id: &'a BlobId, offset: u64) -> BoxFuture<'a, io::Result<Option<Blob>>> {
        let blob = self.0.get(id).map(|b| Blob::from_bytes(b.clone(), offset));
        Box::pin(async move { Ok(blob) })
    }
}

struct Node {
    client: Client,
    addr: net::Multiaddr,
    cancel: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn node(
    seed: u8,
    bootstrap: Option<&Node>,
    blobs: Arc<dyn BlobSource>,
    metrics: Option<Arc<Metrics>>,
) -> Node {
    let identity = Identity::from_seed([seed; 32]);
    let cancel = CancellationToken::new();
    let config = Config {
        bootstrap: bootstrap
            .map(|b| {
                b.addr
                    .clone()
                    .with(libp2p::multiaddr::Protocol::P2p(b.client.local_peer_id()))
            })
            .into_iter()
            .collect(),
        metrics,
        ..Config::loopback()
    };
    let (client, addrs) = Box::pin(net::spawn(
        config,
        &identity,
        blobs,
        Arc::new(RejectAll),
        TaskTracker::new(),
        cancel.clone(),
    ))
    .await
    .unwrap();
    Node {
        client,
        addr: addrs[0].clone(),
        cancel,
    }
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// O is a trusted operator that holds nothing; A is a cache node (trusted by no one) holding
/// two tarballs of `pkg` and providing only the package's key, never the tarballs' ids; B
/// misses both. B finds A through the package key with one lookup for the first tarball, and
/// none for the second.
#[tokio::test]
async fn tarballs_are_found_through_their_package_with_one_lookup() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let name = PackageName::parse("pkg").unwrap();
        let (t1, t2) = (
            Bytes::from_static(b"tarball one"),
            Bytes::from_static(b"tarball two"),
        );
        let (id1, id2) = (BlobId::of(&t1), BlobId::of(&t2));

        let o = node(81, None, Arc::new(NoBlobs), None).await;
        let held = Held([(id1, t1.clone()), (id2, t2.clone())].into_iter().collect());
        let a = node(82, Some(&o), Arc::new(held), None).await;
        let metrics = Arc::new(Metrics::default());
        let b = node(83, Some(&o), Arc::new(NoBlobs), Some(metrics.clone())).await;
        for n in [&a, &b] {
            wait_for("routing tables", || async {
                n.client.peers().await.unwrap().routing_table_size >= 1
            })
            .await;
        }
        a.client.provide(&provider_key(&name)).await.unwrap();
        // A's announcement reaches O (its only Kademlia peer besides B).
        wait_for("A's announcement", || async {
            o.client.peers().await.unwrap().provider_keys_stored >= 1
        })
        .await;

        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::system();
        let store = Arc::new(Store::open(dir.path(), clock.clone()).await.unwrap());
        let records = Arc::new(
            Records::open(
                &store.index,
                Identity::from_seed([83; 32]),
                Duration::from_secs(3600),
                clock.clone(),
            )
            .unwrap(),
        );
        let operator = Identity::from_seed([81; 32]).peer_id();
        let peers = Peers::new(
            b.client.clone(),
            store.clone(),
            records,
            Policy::new([operator], 1),
            metrics.clone(),
            clock,
            Duration::from_secs(10),
        );

        let before = count(&metrics.dht_queries);
        let got = peers
            .fetch_verified(&name, &id1, None, 1 << 20)
            .await
            .unwrap();
        assert_eq!(got, id1);
        assert_eq!(store.blobs.read(&id1).await.unwrap().unwrap(), t1);
        assert_eq!(
            count(&metrics.dht_queries),
            before + 1,
            "one package lookup"
        );
        assert_eq!(count(&metrics.package_provider_lookups), 1);
        assert_eq!(count(&metrics.blob_provider_lookups), 0);

        // The next tarball of the package: the cached providers, no DHT lookup at all.
        let got = peers
            .fetch_verified(&name, &id2, None, 1 << 20)
            .await
            .unwrap();
        assert_eq!(got, id2);
        assert_eq!(store.blobs.read(&id2).await.unwrap().unwrap(), t2);
        assert_eq!(count(&metrics.dht_queries), before + 1, "a second lookup");
        assert_eq!(count(&metrics.package_provider_lookups), 1);
        assert!(count(&metrics.dht_messages_sent) >= 1);

        // Nobody announced the tarballs' own ids: only the package key found A.
        for id in [&id1, &id2] {
            let by_blob = o
                .client
                .find_providers(id, 5, Duration::from_secs(2))
                .await
                .unwrap();
            assert!(by_blob.is_empty(), "{by_blob:?}");
        }
    })
    .await
    .expect("test exceeded its time bound");
}

/// A package nobody announced: the blob's own providers are looked up instead (nodes of
/// earlier versions announced every blob), and the empty package answer is kept, so the next
/// miss of the package asks only by blob id.
#[tokio::test]
async fn a_blob_announced_by_its_id_is_still_found() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let name = PackageName::parse("old-style").unwrap();
        let t = Bytes::from_static(b"announced the old way");
        let id = BlobId::of(&t);
        let o = node(84, None, Arc::new(NoBlobs), None).await;
        let a = node(
            85,
            Some(&o),
            Arc::new(Held([(id, t.clone())].into_iter().collect())),
            None,
        )
        .await;
        let metrics = Arc::new(Metrics::default());
        let b = node(86, Some(&o), Arc::new(NoBlobs), Some(metrics.clone())).await;
        for n in [&a, &b] {
            wait_for("routing tables", || async {
                n.client.peers().await.unwrap().routing_table_size >= 1
            })
            .await;
        }
        a.client.provide(&id).await.unwrap();
        wait_for("A's announcement", || async {
            o.client.peers().await.unwrap().provider_keys_stored >= 1
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::system();
        let store = Arc::new(Store::open(dir.path(), clock.clone()).await.unwrap());
        let records = Arc::new(
            Records::open(
                &store.index,
                Identity::from_seed([86; 32]),
                Duration::from_secs(3600),
                clock.clone(),
            )
            .unwrap(),
        );
        let peers = Peers::new(
            b.client.clone(),
            store.clone(),
            records,
            Policy::new([Identity::from_seed([84; 32]).peer_id()], 1),
            metrics.clone(),
            clock,
            Duration::from_secs(10),
        );
        assert_eq!(
            peers
                .fetch_verified(&name, &id, None, 1 << 20)
                .await
                .unwrap(),
            id
        );
        assert_eq!(count(&metrics.package_provider_lookups), 1);
        assert_eq!(count(&metrics.blob_provider_lookups), 1);
        assert_eq!(count(&metrics.dht_queries), 2);
    })
    .await
    .expect("test exceeded its time bound");
}

/// Waits until a lookup of `key` from `n` finds every one of `want` as a provider.
async fn wait_providers(n: &Node, key: &BlobId, want: &[&Node]) {
    wait_for("the announcements", || async {
        let found = n
            .client
            .find_providers(key, 20, Duration::from_secs(2))
            .await
            .unwrap_or_default();
        want.iter()
            .all(|w| found.contains(&w.client.local_peer_id()))
    })
    .await;
}

/// The scenario of R3 and R4 (tests/tests/p2p.rs) at the level of `Peers`: the package's
/// provider records name only peers that do not deliver (the trusted operator O, which also
/// signed the pointer and so is asked first, and C, which says "not found", as a dead or
/// lying provider would), and the only holder, A, announced the blobs by their ids. A
/// tarball, a record whose signer is O, and a record of a package only O announced are all
/// still found: a package answer that leaves nobody new to ask, or whose providers all fail,
/// falls back to the blob's own providers.
#[tokio::test]
async fn package_providers_that_do_not_deliver_do_not_stop_the_blob_id_fallback() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let name = PackageName::parse("stale-pkg").unwrap();
        let only_o = PackageName::parse("only-signer").unwrap();
        let t = Bytes::from_static(b"a tarball held by an old node");
        let r = Bytes::from_static(b"a record blob held by an old node");
        let r2 = Bytes::from_static(b"another record blob held by an old node");
        let (tid, rid, rid2) = (BlobId::of(&t), BlobId::of(&r), BlobId::of(&r2));

        let o = node(91, None, Arc::new(NoBlobs), None).await;
        let c = node(92, Some(&o), Arc::new(NoBlobs), None).await;
        let held = [(tid, t.clone()), (rid, r.clone()), (rid2, r2.clone())];
        let a = node(
            93,
            Some(&o),
            Arc::new(Held(held.into_iter().collect())),
            None,
        )
        .await;
        let metrics = Arc::new(Metrics::default());
        let b = node(94, Some(&o), Arc::new(NoBlobs), Some(metrics.clone())).await;
        for n in [&c, &a, &b] {
            wait_for("routing tables", || async {
                n.client.peers().await.unwrap().routing_table_size >= 1
            })
            .await;
        }
        o.client.provide(&provider_key(&name)).await.unwrap();
        o.client.provide(&provider_key(&only_o)).await.unwrap();
        c.client.provide(&provider_key(&name)).await.unwrap();
        for id in [&tid, &rid, &rid2] {
            a.client.provide(id).await.unwrap();
        }
        wait_providers(&b, &provider_key(&name), &[&o, &c]).await;
        wait_providers(&b, &provider_key(&only_o), &[&o]).await;
        for id in [&tid, &rid, &rid2] {
            wait_providers(&b, id, &[&a]).await;
        }

        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::system();
        let store = Arc::new(Store::open(dir.path(), clock.clone()).await.unwrap());
        let records = Arc::new(
            Records::open(
                &store.index,
                Identity::from_seed([94; 32]),
                Duration::from_secs(3600),
                clock.clone(),
            )
            .unwrap(),
        );
        let operator = o.client.local_peer_id();
        let peers = Peers::new(
            b.client.clone(),
            store.clone(),
            records,
            Policy::new([Identity::from_seed([91; 32]).peer_id()], 1),
            metrics.clone(),
            clock,
            Duration::from_secs(10),
        );

        // A tarball: O (trusted) is asked first, then C (O is left out of the package's
        // providers, having been asked), then A, found by the tarball's id.
        let got = peers.fetch_verified(&name, &tid, None, 1 << 20).await;
        assert_eq!(got.unwrap(), tid);
        assert_eq!(store.blobs.read(&tid).await.unwrap().unwrap(), t);
        assert_eq!(count(&metrics.package_provider_lookups), 1);
        assert_eq!(count(&metrics.blob_provider_lookups), 1);

        // A record whose pointer O signed: O first, then C (cached), then by the record's id.
        let got = peers
            .fetch_small(&name, &rid, 1 << 16, Some(operator))
            .await;
        assert_eq!(got.as_deref(), Some(r.as_ref()));
        assert_eq!(count(&metrics.package_provider_lookups), 1);
        assert_eq!(count(&metrics.blob_provider_lookups), 2);

        // A record of a package only its signer O announced: after O, nobody is left among the
        // package's providers, and the record's id is looked up.
        let got = peers
            .fetch_small(&only_o, &rid2, 1 << 16, Some(operator))
            .await;
        assert_eq!(got.as_deref(), Some(r2.as_ref()));
        assert_eq!(count(&metrics.package_provider_lookups), 2);
        assert_eq!(count(&metrics.blob_provider_lookups), 3);
    })
    .await
    .expect("test exceeded its time bound");
}

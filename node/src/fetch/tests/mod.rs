//! The Fetcher's decisions, over small fakes of its sources: a real store in a temp dir, an
//! in-memory upstream and an in-memory network, a manual clock for `max_age` and the miss TTL,
//! and tokio's paused time for the stale grace.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use open_registry_gateway::{Body, MemoryBudget, Packument};
use open_registry_protocol::packument::DistRef;
use open_registry_protocol::{BlobId, Integrity, PackageName, TarballFile, Verifier};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::upstream::{Source, UpstreamError};
use super::{FetchError, Fetcher, MISS_TTL, STALE_GRACE, Sources};
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::peer;
use crate::records::{Identity, Records};
use crate::store::Store;
use fakes::{Answer, FakePeers, FakeUpstream};

mod fakes;
mod stream;

/// A package document with one tarball per `(version, bytes)`.
fn packument(name: &str, versions: &[(&str, &Bytes)]) -> Bytes {
    let mut vs = serde_json::Map::new();
    for (v, bytes) in versions {
        vs.insert(
            (*v).into(),
            serde_json::json!({
                "name": name, "version": v,
                "dist": {
                    "tarball": format!("http://upstream.test/{name}/-/{name}-{v}.tgz"),
                    "integrity": Integrity::sha512_sri(bytes),
                }
            }),
        );
    }
    let latest = versions.last().map_or("0.0.0", |v| v.0);
    let doc = serde_json::json!({"name": name, "dist-tags": {"latest": latest}, "versions": vs});
    Bytes::from(serde_json::to_vec(&doc).unwrap())
}

fn name(s: &str) -> PackageName {
    PackageName::parse(s).unwrap()
}

fn file(s: &str) -> TarballFile {
    TarballFile::parse(s).unwrap()
}

/// A fetcher over a fresh store, with the given fakes and a manual clock.
struct Rig {
    fetcher: Arc<Fetcher>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    clock: Clock,
    records: Arc<Records>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new(
        upstream: Option<Arc<FakeUpstream>>,
        peers: impl FnOnce(Arc<Store>) -> Option<Arc<FakePeers>>,
    ) -> (Rig, Option<Arc<FakePeers>>) {
        let defaults = Config::new("/x", None);
        Rig::with_memory(
            upstream,
            peers,
            defaults.packument_memory,
            defaults.memory_cache_size,
        )
        .await
    }

    /// A rig whose packument memory and memory caches are `memory` and `caches` bytes.
    async fn with_memory(
        upstream: Option<Arc<FakeUpstream>>,
        peers: impl FnOnce(Arc<Store>) -> Option<Arc<FakePeers>>,
        memory: u64,
        caches: u64,
    ) -> (Rig, Option<Arc<FakePeers>>) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual();
        let mut config = Config::new(dir.path(), None);
        config.memory_cache_size = caches;
        config.clock = clock.clone();
        config.max_age = Duration::from_secs(300);
        let store = Arc::new(Store::open(dir.path(), clock.clone()).await.unwrap());
        let records = Arc::new(
            Records::open(
                &store.index,
                Identity::from_seed([7; 32]),
                Duration::from_secs(3600),
                clock.clone(),
            )
            .unwrap(),
        );
        let peers = peers(store.clone());
        let metrics = Arc::new(Metrics::default());
        let fetcher = Fetcher::new(
            &config,
            Sources {
                store: store.clone(),
                records: records.clone(),
                upstream: upstream.map(|u| u as Arc<dyn Source>),
                peers: peers.clone().map(|p| p as Arc<dyn peer::Source>),
                memory: MemoryBudget::new(memory),
                first_seen: None,
            },
            metrics.clone(),
            TaskTracker::new(),
        );
        let rig = Rig {
            fetcher,
            store,
            metrics,
            clock,
            records,
            _dir: dir,
        };
        (rig, peers)
    }

    fn counter(&self, f: impl Fn(&Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.metrics).load(Ordering::SeqCst)
    }
}

async fn body(b: Body) -> Bytes {
    match b {
        Body::Bytes(b) => b,
        Body::Stream(s) | Body::Verifying(s) => {
            let chunks: Vec<_> = s.map(|c| c.unwrap()).collect().await;
            Bytes::from(chunks.concat())
        }
    }
}

#[tokio::test]
async fn tarballs_come_from_the_store_then_peers_then_the_upstream() {
    let one = Bytes::from_static(b"tarball one");
    let two = Bytes::from_static(b"tarball two");
    let up = Arc::new(FakeUpstream::new());
    up.answer(
        "p",
        Answer::Document(packument("p", &[("1.0.0", &one), ("2.0.0", &two)]), "\"a\""),
    );
    up.tarball("p-1.0.0.tgz", &one);
    up.tarball("p-2.0.0.tgz", &two);
    let (rig, peers) = Rig::new(Some(up.clone()), |s| Some(Arc::new(FakePeers::new(s)))).await;
    let peers = peers.unwrap();
    peers.holds_tarball("p", "1.0.0", &one);

    // 1.0.0: a trusted record names it, so peers serve it and the upstream is spared.
    let b = rig
        .fetcher
        .tarball(&name("p"), &file("p-1.0.0.tgz"))
        .await
        .unwrap();
    assert_eq!(body(b.body).await, one);
    assert_eq!(
        (FakePeers::count(&peers.fetch_calls), up.tarball_calls()),
        (1, 0)
    );
    // Again: the store answers; nobody is asked.
    let b = rig
        .fetcher
        .tarball(&name("p"), &file("p-1.0.0.tgz"))
        .await
        .unwrap();
    assert_eq!(body(b.body).await, one);
    assert_eq!(
        (FakePeers::count(&peers.fetch_calls), up.tarball_calls()),
        (1, 0)
    );
    // From the store, or (the first answer ended once the bytes were verified, before the
    // commit) from the flight that is storing it: either way no second fetch.
    assert_eq!(
        rig.counter(|m| &m.tarball_hits) + rig.counter(|m| &m.coalesced),
        1
    );
    // 2.0.0: no record names it; the upstream does.
    let b = rig
        .fetcher
        .tarball(&name("p"), &file("p-2.0.0.tgz"))
        .await
        .unwrap();
    assert_eq!(body(b.body).await, two);
    assert_eq!(
        (FakePeers::count(&peers.fetch_calls), up.tarball_calls()),
        (1, 1)
    );
    assert_eq!(rig.counter(|m| &m.tarball_ingests), 2);
    assert!(rig.store.blobs.contains(&BlobId::of(&two)));
}

#[tokio::test]
async fn bytes_that_do_not_verify_are_never_stored_or_served() {
    let good = Bytes::from_static(b"the real tarball");
    let up = Arc::new(FakeUpstream::new());
    up.answer(
        "p",
        Answer::Document(packument("p", &[("1.0.0", &good)]), "\"a\""),
    );
    up.tarball("p-1.0.0.tgz", &Bytes::from_static(b"the real tarbalL"));
    let (rig, _) = Rig::new(Some(up.clone()), |_| None).await;
    let e = rig
        .fetcher
        .tarball(&name("p"), &file("p-1.0.0.tgz"))
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Integrity(_)), "{e:?}");
    assert_eq!(rig.counter(|m| &m.integrity_failures), 1);
    assert_eq!(rig.store.blobs.usage().1, 1, "only the packument is stored");
}

#[tokio::test]
async fn packuments_ask_the_upstream_first_then_the_trusted_operators() {
    let ups = packument("p", &[("1.0.0", &Bytes::from_static(b"x"))]);
    let theirs = packument("r", &[("0.9.0", &Bytes::from_static(b"y"))]);
    let up = Arc::new(FakeUpstream::new());
    up.answer("p", Answer::Document(ups.clone(), "\"a\""));
    let (rig, peers) = Rig::new(Some(up.clone()), |s| Some(Arc::new(FakePeers::new(s)))).await;
    let peers = peers.unwrap();
    peers.agree_on(&theirs, rig.clock.now_ms());

    // The upstream answers: peers are not asked.
    let p = rig.fetcher.packument(&name("p"), false).await.unwrap();
    assert_eq!(p.bytes, ups);
    assert_eq!(FakePeers::count(&peers.agreed_packument_calls), 0);

    // An upstream 404 is an answer: peers are not asked either.
    let e = rig.fetcher.packument(&name("q"), false).await.unwrap_err();
    assert!(matches!(e, FetchError::NotFound(_)), "{e:?}");
    assert_eq!(FakePeers::count(&peers.agreed_packument_calls), 0);

    // The upstream fails on an uncached package: the agreed revision is taken from peers.
    up.answer(
        "r",
        Answer::Fail(UpstreamError::Status {
            status: 503,
            what: "package r".into(),
        }),
    );
    let p = rig.fetcher.packument(&name("r"), false).await.unwrap();
    assert_eq!(p.bytes, theirs);
    assert_eq!(FakePeers::count(&peers.agreed_packument_calls), 1);
    assert_eq!(FakePeers::count(&peers.fetch_calls), 1);
    assert!(
        FakePeers::count(&peers.kept) >= 1,
        "the agreeing records are kept"
    );
}

#[tokio::test]
async fn fresh_copies_are_served_until_max_age_then_revalidated() {
    let doc = packument("p", &[("1.0.0", &Bytes::from_static(b"x"))]);
    let up = Arc::new(FakeUpstream::new());
    up.answer("p", Answer::Document(doc.clone(), "\"a\""));
    let (rig, _) = Rig::new(Some(up.clone()), |_| None).await;
    let n = name("p");
    rig.fetcher.packument(&n, false).await.unwrap();
    assert_eq!(up.packument_calls(), 1);
    // Within max_age: no upstream contact, however many requests.
    rig.clock.advance(Duration::from_secs(299));
    for _ in 0..3 {
        assert_eq!(rig.fetcher.packument(&n, false).await.unwrap().bytes, doc);
    }
    assert_eq!(up.packument_calls(), 1);
    // Past it: one conditional request, answered 304, and the same revision.
    rig.clock.advance(Duration::from_secs(2));
    assert_eq!(rig.fetcher.packument(&n, false).await.unwrap().bytes, doc);
    assert_eq!(up.packument_calls(), 2);
    assert_eq!(rig.counter(|m| &m.packument_not_modified), 1);
    assert_eq!(rig.counter(|m| &m.packument_updates), 1);
    // Confirmed again just now: fresh for another max_age.
    rig.fetcher.packument(&n, false).await.unwrap();
    assert_eq!(up.packument_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_stale_copy_is_served_after_the_grace_when_the_upstream_hangs() {
    let doc = packument("p", &[("1.0.0", &Bytes::from_static(b"x"))]);
    let up = Arc::new(FakeUpstream::new());
    up.answer("p", Answer::Document(doc.clone(), "\"a\""));
    let (rig, _) = Rig::new(Some(up.clone()), |_| None).await;
    let n = name("p");
    rig.fetcher.packument(&n, false).await.unwrap();
    up.answer("p", Answer::Hang);
    rig.clock.advance(Duration::from_secs(600));
    let asked = Instant::now();
    let p = rig.fetcher.packument(&n, false).await.unwrap();
    let waited = asked.elapsed();
    assert_eq!(p.bytes, doc);
    assert!(
        waited >= STALE_GRACE && waited < STALE_GRACE + Duration::from_secs(1),
        "answered after {waited:?}"
    );
    assert_eq!(rig.counter(|m| &m.stale_served), 1);
    assert_eq!(up.packument_calls(), 2);
}

#[tokio::test]
async fn a_network_miss_is_remembered_for_the_miss_ttl() {
    let (a, b, c) = (
        Bytes::from_static(b"a"),
        Bytes::from_static(b"b"),
        Bytes::from_static(b"c"),
    );
    let up = Arc::new(FakeUpstream::new());
    up.answer(
        "p",
        Answer::Document(
            packument("p", &[("1.0.0", &a), ("1.0.1", &b), ("1.0.2", &c)]),
            "\"a\"",
        ),
    );
    for (f, bytes) in [
        ("p-1.0.0.tgz", &a),
        ("p-1.0.1.tgz", &b),
        ("p-1.0.2.tgz", &c),
    ] {
        up.tarball(f, bytes);
    }
    let (rig, peers) = Rig::new(Some(up.clone()), |s| Some(Arc::new(FakePeers::new(s)))).await;
    let peers = peers.unwrap();
    let n = name("p");
    // No trusted record names 1.0.0: the network is asked once, then the upstream.
    rig.fetcher.tarball(&n, &file("p-1.0.0.tgz")).await.unwrap();
    assert_eq!(FakePeers::count(&peers.agreed_tarball_calls), 1);
    // Another file of the same package within the TTL: the network is not asked again.
    rig.clock.advance(MISS_TTL - Duration::from_secs(1));
    rig.fetcher.tarball(&n, &file("p-1.0.1.tgz")).await.unwrap();
    assert_eq!(FakePeers::count(&peers.agreed_tarball_calls), 1);
    // Past it, it is.
    rig.clock.advance(Duration::from_secs(2));
    rig.fetcher.tarball(&n, &file("p-1.0.2.tgz")).await.unwrap();
    assert_eq!(FakePeers::count(&peers.agreed_tarball_calls), 2);
    assert_eq!(up.tarball_calls(), 3);
}

#[tokio::test]
async fn a_full_disk_passes_verified_bytes_through_uncached() {
    let t = Bytes::from_static(b"some tarball bytes");
    let up = Arc::new(FakeUpstream::new());
    up.answer(
        "p",
        Answer::Document(packument("p", &[("1.0.0", &t)]), "\"a\""),
    );
    up.tarball("p-1.0.0.tgz", &t);
    let (rig, _) = Rig::new(Some(up.clone()), |_| None).await;
    // The store's temp dir becomes a file: every blob write fails, as on a full disk.
    let tmp = rig._dir.path().join("tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"").unwrap();
    let b = rig
        .fetcher
        .tarball(&name("p"), &file("p-1.0.0.tgz"))
        .await
        .unwrap();
    assert_eq!(b.id, BlobId::of(&t));
    assert_eq!(body(b.body).await, t);
    assert_eq!(rig.store.blobs.usage(), (0, 0), "nothing was stored");
    assert!(
        rig.counter(|m| &m.store_errors) >= 2,
        "packument and tarball writes failed"
    );
    // Bytes that do not verify are refused in memory too.
    up.tarball("p-1.0.0.tgz", &Bytes::from_static(b"other bytes"));
    let e = rig
        .fetcher
        .tarball(&name("p"), &file("p-1.0.0.tgz"))
        .await
        .unwrap_err();
    assert!(matches!(e, FetchError::Integrity(_)), "{e:?}");
}

#[tokio::test]
async fn without_an_upstream_the_agreed_revision_is_taken_unless_ours_is_newer() {
    let theirs = packument("p", &[("1.0.0", &Bytes::from_static(b"x"))]);
    let ours = packument("p", &[("2.0.0", &Bytes::from_static(b"y"))]);
    let (rig, peers) = Rig::new(None, |s| Some(Arc::new(FakePeers::new(s)))).await;
    let peers = peers.unwrap();
    let n = name("p");
    // Nobody agrees: not found.
    let e = rig.fetcher.packument(&n, false).await.unwrap_err();
    assert!(
        matches!(&e, FetchError::NotFound(m) if m.contains("must agree")),
        "{e:?}"
    );
    // The operators agree on a revision: it is fetched by id, stored and served.
    peers.agree_on(&theirs, rig.clock.now_ms());
    assert_eq!(
        rig.fetcher.packument(&n, false).await.unwrap().bytes,
        theirs
    );
    assert_eq!(FakePeers::count(&peers.fetch_calls), 1);

    // This node holds (and signed) a newer revision than the one they agree on: it keeps its
    // own, fetching nothing.
    let id = rig
        .store
        .blobs
        .put(&ours, Verifier::id_only(), u64::MAX)
        .await
        .unwrap();
    let later = rig.clock.now_ms() + 1000;
    rig.store
        .index
        .set_packument(
            &n,
            &crate::store::PackumentEntry {
                id,
                etag: None,
                last_modified: None,
                checked_at: 0,
            },
        )
        .await
        .unwrap();
    let dists: HashMap<String, DistRef> = HashMap::new();
    rig.records
        .sign_packument(&rig.store.index, &n, id, &dists, later)
        .await
        .unwrap();
    rig.clock.advance(Duration::from_secs(3600));
    let p: Packument = rig.fetcher.packument(&n, false).await.unwrap();
    assert_eq!(p.bytes, ours);
    assert_eq!(FakePeers::count(&peers.fetch_calls), 1);
}

#[tokio::test]
async fn concurrent_cold_requests_share_one_upstream_fetch() {
    let t = Bytes::from_static(b"popular tarball");
    let mut up = FakeUpstream::new();
    let gate = Arc::new(Semaphore::new(0));
    up.gate = Some(gate.clone());
    up.answer(
        "p",
        Answer::Document(packument("p", &[("1.0.0", &t)]), "\"a\""),
    );
    up.tarball("p-1.0.0.tgz", &t);
    let up = Arc::new(up);
    let (rig, _) = Rig::new(Some(up.clone()), |_| None).await;
    let n = name("p");
    let f = file("p-1.0.0.tgz");
    let requests = (0..50).map(|_| rig.fetcher.tarball(&n, &f).map(Result::unwrap));
    // join! polls the requests first: all 50 are in the flight before the upstream answers.
    let (blobs, ()) = tokio::join!(futures::future::join_all(requests), async {
        gate.add_permits(1)
    });
    for b in blobs {
        assert_eq!(body(b.body).await, t);
    }
    assert_eq!(up.tarball_calls(), 1);
    assert_eq!(rig.counter(|m| &m.coalesced), 49);
}

/// A packument whose record would not fit the encoding (a version string longer than its u16
/// length prefix) is still served; it is not signed, and `records_unsigned` says so.
#[tokio::test]
async fn a_packument_too_big_for_a_record_is_served_unsigned() {
    let long = format!("1.0.0-{}", "a".repeat(70_000));
    let tgz = Bytes::from_static(b"x");
    let doc = packument("big", &[(&long, &tgz)]);
    let up = Arc::new(FakeUpstream::new());
    up.answer("big", Answer::Document(doc.clone(), "\"a\""));
    let (rig, _) = Rig::new(Some(up), |_| None).await;
    let p = rig.fetcher.packument(&name("big"), false).await.unwrap();
    assert_eq!(p.bytes, doc);
    assert_eq!(rig.counter(|m| &m.records_unsigned), 1);
    assert!(rig.records.list(&name("big")).unwrap().is_empty());
    // The status says which and why.
    let unsigned = rig.fetcher.unsigned();
    assert_eq!(unsigned.len(), 1, "{unsigned:?}");
    assert_eq!(unsigned[0].name, "big");
    assert!(
        unsigned[0].reason.contains("version"),
        "{}",
        unsigned[0].reason
    );

    // A normal one is signed and not counted.
    let ok = packument("small", &[("1.0.0", &tgz)]);
    let up2 = Arc::new(FakeUpstream::new());
    up2.answer("small", Answer::Document(ok, "\"b\""));
    let (rig, _) = Rig::new(Some(up2), |_| None).await;
    rig.fetcher.packument(&name("small"), false).await.unwrap();
    assert_eq!(rig.counter(|m| &m.records_unsigned), 0);
    assert!(rig.fetcher.unsigned().is_empty());
    assert_eq!(rig.records.list(&name("small")).unwrap().len(), 1);
}

/// `/-/npm/v1/keys`: concurrent first requests share one upstream fetch, and its failure is
/// answered from memory for `KEYS_FAILURE_TTL` (on the node's clock), then tried again. Paused
/// time: the fake upstream's answer takes 20 ms of it, so the requests overlap.
#[tokio::test(start_paused = true)]
async fn registry_keys_share_one_fetch_and_cache_failures_briefly() {
    let up = Arc::new(FakeUpstream::new());
    *up.keys.lock().unwrap() = Some(Err(UpstreamError::Status {
        status: 503,
        what: "signing keys".into(),
    }));
    let (rig, _) = Rig::new(Some(up.clone()), |_| None).await;
    let dir = tempfile::tempdir().unwrap();
    let calls = || up.keys_calls.load(Ordering::SeqCst);

    let all =
        futures::future::join_all((0..8).map(|_| rig.fetcher.registry_keys(dir.path()))).await;
    assert!(all.iter().all(Result::is_err));
    assert_eq!(calls(), 1, "concurrent first requests share one fetch");
    for _ in 0..5 {
        assert!(rig.fetcher.registry_keys(dir.path()).await.is_err());
    }
    assert_eq!(
        calls(),
        1,
        "a recent failure is answered without the upstream"
    );

    rig.clock
        .advance(super::keys::KEYS_FAILURE_TTL + Duration::from_secs(1));
    *up.keys.lock().unwrap() = Some(Err(UpstreamError::NotFound("keys".into())));
    assert_eq!(rig.fetcher.registry_keys(dir.path()).await.unwrap(), None);
    assert_eq!(calls(), 2, "tried again once the failure expired");
}

#[tokio::test(start_paused = true)]
async fn a_stale_request_is_answered_the_moment_the_upstream_is_known_down() {
    let doc = packument("p", &[("1.0.0", &Bytes::from_static(b"x"))]);
    let up = Arc::new(FakeUpstream::new());
    up.answer("p", Answer::Document(doc.clone(), "\"a\""));
    let (rig, _) = Rig::new(Some(up.clone()), |_| None).await;
    let n = name("p");
    rig.fetcher.packument(&n, false).await.unwrap();
    up.answer("p", Answer::Hang);
    rig.clock.advance(Duration::from_secs(600));
    let started = Instant::now();
    let down_after = Duration::from_millis(400);
    let (p, ()) = tokio::join!(rig.fetcher.packument(&n, false), async {
        tokio::time::sleep(down_after).await;
        up.declare_down();
    });
    assert_eq!(p.unwrap().bytes, doc);
    assert_eq!(
        started.elapsed(),
        down_after,
        "not the whole grace of {STALE_GRACE:?}"
    );
    // And once it is down, at once.
    let started = Instant::now();
    rig.fetcher.packument(&n, false).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test]
async fn a_revalidation_that_changes_nothing_signs_and_counts_nothing_new() {
    let doc = packument("p", &[("1.0.0", &Bytes::from_static(b"x"))]);
    for answer in [
        Answer::Document(doc.clone(), "\"a\""),
        Answer::Plain(doc.clone()),
    ] {
        let up = Arc::new(FakeUpstream::new());
        up.answer("p", answer.clone());
        let (rig, _) = Rig::new(Some(up.clone()), |_| None).await;
        let n = name("p");
        let seq = || rig.records.own_record(&n).unwrap().map(|r| r.seq);
        rig.fetcher.packument(&n, false).await.unwrap();
        let first = seq().expect("signed on ingest");
        // Past max_age, twice: the upstream confirms (304, or the same bytes without
        // validators). Fresh again, not modified, and no new record.
        for _ in 0..2 {
            rig.clock.advance(Duration::from_secs(301));
            assert_eq!(rig.fetcher.packument(&n, false).await.unwrap().bytes, doc);
        }
        assert_eq!(up.packument_calls(), 3, "{answer:?}");
        assert_eq!(rig.counter(|m| &m.packument_updates), 1, "{answer:?}");
        assert_eq!(rig.counter(|m| &m.packument_not_modified), 2, "{answer:?}");
        assert_eq!(
            seq(),
            Some(first),
            "{answer:?}: re-signed although nothing changed"
        );
        // Past half the record's lifetime (an hour here), a confirmation re-signs it, so the
        // record never expires while the upstream keeps confirming it.
        rig.clock.advance(Duration::from_secs(1800));
        rig.fetcher.packument(&n, false).await.unwrap();
        assert!(seq().unwrap() > first, "{answer:?}");
        assert_eq!(rig.counter(|m| &m.packument_updates), 1, "{answer:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn packuments_read_for_requests_share_the_packument_memory() {
    // Two stored packuments of ~1.2 MB each (too big for the 1 MiB hot cache); 2 MiB of
    // packument memory holds one at a time.
    let big = |n: &str| {
        let doc = serde_json::json!({
            "name": n, "readme": "r".repeat(1200 << 10),
            "dist-tags": {"latest": "1.0.0"},
            "versions": {"1.0.0": {"name": n, "version": "1.0.0", "dist": {
                "tarball": format!("http://upstream.test/{n}/-/{n}-1.0.0.tgz"),
                "integrity": Integrity::sha512_sri(b"x")}}}
        });
        Bytes::from(serde_json::to_vec(&doc).unwrap())
    };
    let up = Arc::new(FakeUpstream::new());
    up.answer("a", Answer::Plain(big("a")));
    up.answer("b", Answer::Plain(big("b")));
    let (rig, _) = Rig::with_memory(Some(up.clone()), |_| None, 2 << 20, 4 << 20).await;
    let f = &rig.fetcher;
    drop(f.packument(&name("a"), false).await.unwrap());
    drop(f.packument(&name("b"), false).await.unwrap());
    let a = f.packument(&name("a"), false).await.unwrap();
    assert!(a.lease.bytes() >= a.bytes.len() as u64, "{:?}", a.lease);
    assert_eq!(f.memory().in_use(), a.lease.bytes());
    // The second read waits while the first is held, and goes on once it is dropped.
    let b_name = name("b");
    let mut second = Box::pin(f.packument(&b_name, false));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut second)
            .await
            .is_err(),
        "a read went past the packument memory"
    );
    drop(a);
    let b = second.await.unwrap();
    assert_eq!(b.bytes.len(), big("b").len());
    assert!(f.memory().waits() >= 1);
    drop(b);
    assert_eq!(f.memory().in_use(), 0, "every lease went back");
}

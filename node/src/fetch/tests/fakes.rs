//! Small fakes of the Fetcher's sources: an upstream and a network of trusted operators, in
//! memory, that count what they are asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use open_registry_gateway::{Forward, Forwarded, Lease};
use open_registry_protocol::pointer::Pointer;
use open_registry_protocol::record::{Signed, Verified};
use open_registry_protocol::{BlobId, Integrity, PackageName, Verifier};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use url::Url;

use crate::clock::Clock;
use crate::fetch::upstream::{Budget, Download, PackumentAnswer, Source, UpstreamError};
use crate::metrics::Metrics;
use crate::peer::{self, Agreed, Found, PeerError};
use crate::store::Store;

/// How the fake upstream answers a packument request.
#[derive(Debug, Clone)]
pub(super) enum Answer {
    /// 200 with this document and ETag (304 when the request carries the same ETag).
    Document(Bytes, &'static str),
    /// 200 with this document and no validators at all (no ETag, no Last-Modified).
    Plain(Bytes),
    /// Never answers.
    Hang,
    /// Fails.
    Fail(UpstreamError),
}

#[derive(Debug)]
pub(super) struct FakeUpstream {
    base: Url,
    packuments: Mutex<HashMap<String, Answer>>,
    tarballs: Mutex<HashMap<String, Bytes>>,
    packument_calls: AtomicUsize,
    tarball_calls: AtomicUsize,
    /// What `/-/npm/v1/keys` answers (404 unless set), after a short pause so that
    /// concurrent requests overlap.
    pub(super) keys: Mutex<Option<Result<Bytes, UpstreamError>>>,
    pub(super) keys_calls: AtomicUsize,
    /// Tarball answers wait for a permit (tests that need requests to overlap).
    pub(super) gate: Option<Arc<Semaphore>>,
    /// Set when the test declares the upstream down (what a circuit breaker would say).
    down: tokio::sync::watch::Sender<bool>,
}

impl FakeUpstream {
    pub(super) fn new() -> FakeUpstream {
        FakeUpstream {
            base: Url::parse("http://upstream.test/").unwrap(),
            packuments: Mutex::default(),
            tarballs: Mutex::default(),
            packument_calls: AtomicUsize::new(0),
            tarball_calls: AtomicUsize::new(0),
            keys: Mutex::default(),
            keys_calls: AtomicUsize::new(0),
            gate: None,
            down: tokio::sync::watch::channel(false).0,
        }
    }

    /// Says the upstream is down, as a circuit breaker opening would.
    pub(super) fn declare_down(&self) {
        self.down.send_replace(true);
    }

    pub(super) fn answer(&self, name: &str, a: Answer) {
        self.packuments.lock().unwrap().insert(name.into(), a);
    }

    pub(super) fn tarball(&self, file: &str, bytes: &Bytes) {
        self.tarballs
            .lock()
            .unwrap()
            .insert(file.into(), bytes.clone());
    }

    pub(super) fn packument_calls(&self) -> usize {
        self.packument_calls.load(Ordering::SeqCst)
    }

    pub(super) fn tarball_calls(&self) -> usize {
        self.tarball_calls.load(Ordering::SeqCst)
    }
}

impl Source for FakeUpstream {
    fn base(&self) -> &Url {
        &self.base
    }

    fn budget(&self) -> Budget {
        Budget {
            timeout: Duration::from_secs(60),
            retries: 0,
        }
    }

    fn packument<'a>(
        &'a self,
        name: &'a PackageName,
        etag: Option<&'a str>,
        _last_modified: Option<&'a str>,
    ) -> BoxFuture<'a, Result<PackumentAnswer, UpstreamError>> {
        self.packument_calls.fetch_add(1, Ordering::SeqCst);
        let answer = self.packuments.lock().unwrap().get(name.as_str()).cloned();
        Box::pin(async move {
            match answer {
                None => Err(UpstreamError::NotFound(format!("package {name}"))),
                Some(Answer::Document(_, tag)) if etag == Some(tag) => {
                    Ok(PackumentAnswer::NotModified)
                }
                Some(Answer::Document(bytes, tag)) => Ok(PackumentAnswer::Document {
                    bytes,
                    lease: Lease::none(),
                    etag: Some(tag.into()),
                    last_modified: None,
                }),
                Some(Answer::Plain(bytes)) => Ok(PackumentAnswer::Document {
                    bytes,
                    lease: Lease::none(),
                    etag: None,
                    last_modified: None,
                }),
                Some(Answer::Hang) => std::future::pending().await,
                Some(Answer::Fail(e)) => Err(e),
            }
        })
    }

    fn tarball<'a>(
        &'a self,
        _name: &'a PackageName,
        file: &'a str,
        _dist_tarball: Option<&'a str>,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<Download, UpstreamError>> {
        Box::pin(async move {
            if let Some(g) = &self.gate {
                let _permit = g.acquire().await.unwrap();
            }
            self.tarball_calls.fetch_add(1, Ordering::SeqCst);
            let bytes = self
                .tarballs
                .lock()
                .unwrap()
                .get(file)
                .cloned()
                .ok_or_else(|| UpstreamError::NotFound(file.into()))?;
            Ok(Download {
                len: Some(bytes.len() as u64),
                body: futures::stream::once(async move { Ok(bytes) }).boxed(),
            })
        })
    }

    fn keys(&self) -> BoxFuture<'_, Result<Bytes, UpstreamError>> {
        Box::pin(async {
            self.keys_calls.fetch_add(1, Ordering::SeqCst);
            // Takes a while (tokio's paused time in the tests that use it), so that concurrent
            // requests overlap.
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.keys
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_else(|| Err(UpstreamError::NotFound("keys".into())))
        })
    }

    fn forward(&self, _req: Forward) -> BoxFuture<'_, Result<Forwarded, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::Refused("no forwarding here".into())) })
    }

    fn feed<'a>(&'a self, _url: &'a Url, _cap: u64) -> BoxFuture<'a, Result<Bytes, UpstreamError>> {
        Box::pin(async { Err(UpstreamError::NotFound("feed".into())) })
    }

    fn outage(&self) -> BoxFuture<'_, ()> {
        let mut rx = self.down.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|down| *down).await;
        })
    }
}

/// A provider of one blob in [`FakePeers`]: what it sends, in chunks of the blob protocol's
/// size; whether it holds back everything after its first chunk until `hold` has a permit; and
/// whether its transfer breaks after that many chunks.
#[derive(Debug, Clone)]
pub(super) struct FakeProvider {
    pub(super) name: &'static str,
    pub(super) bytes: Bytes,
    pub(super) hold: Option<Arc<Semaphore>>,
    pub(super) fail_after: Option<usize>,
    /// A trusted operator (whose transfer may open a streamed answer), or any provider.
    pub(super) trusted: bool,
}

impl FakeProvider {
    /// The provider's transfer, as `Peers::receive` gets it from the network: its chunks.
    fn transfer(&self) -> impl futures::Stream<Item = Result<Bytes, PeerError>> + Unpin + use<> {
        let chunks: Vec<Bytes> = self
            .bytes
            .chunks(crate::net::CHUNK)
            .map(|c| self.bytes.slice_ref(c))
            .collect();
        let (hold, fail_after) = (self.hold.clone(), self.fail_after);
        futures::stream::iter(chunks.into_iter().enumerate())
            .then(move |(i, c)| {
                let hold = hold.clone();
                async move {
                    if i == 1
                        && let Some(h) = hold
                    {
                        h.acquire().await.unwrap().forget();
                    }
                    if fail_after == Some(i) {
                        return Err(PeerError::Deadline);
                    }
                    Ok(c)
                }
            })
            .boxed()
    }
}

/// A network of trusted operators, in memory: blobs by id (each served by the providers set
/// for it, then by a correct one), tarball ids by (name, version), and the packument revision
/// they agree on.
#[derive(Debug)]
pub(super) struct FakePeers {
    store: Arc<Store>,
    metrics: Metrics,
    clock: Clock,
    blobs: Mutex<HashMap<BlobId, Bytes>>,
    /// Providers asked before the correct one, in order.
    providers: Mutex<HashMap<BlobId, Vec<FakeProvider>>>,
    /// Which providers were asked, in order.
    pub(super) asked: Mutex<Vec<&'static str>>,
    bad: peer::stream::BadPeers<&'static str>,
    tarball_ids: Mutex<HashMap<(String, String), BlobId>>,
    agreed: Mutex<Option<(BlobId, u64)>>,
    pub(super) agreed_tarball_calls: AtomicUsize,
    pub(super) agreed_packument_calls: AtomicUsize,
    pub(super) fetch_calls: AtomicUsize,
    pub(super) kept: AtomicUsize,
}

impl FakePeers {
    pub(super) fn new(store: Arc<Store>) -> FakePeers {
        FakePeers::with_clock(store, Clock::manual())
    }

    /// Fake peers that read `clock` (for how long a spoiling provider is skipped).
    pub(super) fn with_clock(store: Arc<Store>, clock: Clock) -> FakePeers {
        FakePeers {
            store,
            metrics: Metrics::default(),
            clock,
            blobs: Mutex::default(),
            providers: Mutex::default(),
            asked: Mutex::default(),
            bad: Default::default(),
            tarball_ids: Mutex::default(),
            agreed: Mutex::default(),
            agreed_tarball_calls: AtomicUsize::new(0),
            agreed_packument_calls: AtomicUsize::new(0),
            fetch_calls: AtomicUsize::new(0),
            kept: AtomicUsize::new(0),
        }
    }

    /// The network holds `bytes` as `version`'s tarball, named by a trusted record.
    pub(super) fn holds_tarball(&self, name: &str, version: &str, bytes: &Bytes) {
        let id = BlobId::of(bytes);
        self.blobs.lock().unwrap().insert(id, bytes.clone());
        self.tarball_ids
            .lock()
            .unwrap()
            .insert((name.into(), version.into()), id);
    }

    /// Blob `id` is served by `p` before the providers set earlier and the correct one.
    pub(super) fn provider_first(&self, id: &BlobId, p: FakeProvider) {
        self.providers
            .lock()
            .unwrap()
            .entry(*id)
            .or_default()
            .insert(0, p);
    }

    /// The correct provider of `id` is `name` and holds back its tail until `hold` opens.
    pub(super) fn hold_tail(&self, id: &BlobId, name: &'static str, hold: Arc<Semaphore>) {
        let bytes = self.blobs.lock().unwrap().remove(id).expect("a blob held");
        self.provider_first(
            id,
            FakeProvider {
                name,
                bytes,
                hold: Some(hold),
                fail_after: None,
                trusted: true,
            },
        );
    }

    /// The correct provider of `id` goes away (until `holds_tarball` again).
    pub(super) fn withdraw(&self, id: &BlobId) {
        self.blobs.lock().unwrap().remove(id);
    }

    /// The counters of what the peers' receive refused.
    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The trusted operators agree on this packument revision, fetched at `fetched_at`.
    pub(super) fn agree_on(&self, bytes: &Bytes, fetched_at: u64) {
        let id = BlobId::of(bytes);
        self.blobs.lock().unwrap().insert(id, bytes.clone());
        *self.agreed.lock().unwrap() = Some((id, fetched_at));
    }

    pub(super) fn count(c: &AtomicUsize) -> usize {
        c.load(Ordering::SeqCst)
    }
}

impl peer::Source for FakePeers {
    fn trusts_anyone(&self) -> bool {
        true
    }

    fn agreed_packument<'a>(
        &'a self,
        _name: &'a PackageName,
        _hint: Option<&'a Verified<Pointer>>,
    ) -> BoxFuture<'a, Result<Agreed, PeerError>> {
        self.agreed_packument_calls.fetch_add(1, Ordering::SeqCst);
        let agreed = *self.agreed.lock().unwrap();
        Box::pin(async move {
            let (id, fetched_at) = agreed.ok_or(PeerError::NoQuorum {
                found: 0,
                threshold: 1,
            })?;
            Ok(Agreed {
                id,
                fetched_at,
                records: Vec::new(),
            })
        })
    }

    fn agreed_tarball<'a>(
        &'a self,
        name: &'a PackageName,
        version: &'a str,
        _integrity: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<BlobId>, PeerError>> {
        self.agreed_tarball_calls.fetch_add(1, Ordering::SeqCst);
        let id = self
            .tarball_ids
            .lock()
            .unwrap()
            .get(&(name.to_string(), version.to_owned()))
            .copied();
        Box::pin(async move { Ok(id) })
    }

    fn keep<'a>(&'a self, _records: &'a [Found]) -> BoxFuture<'a, ()> {
        self.kept.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }

    fn fetch_blob<'a>(
        &'a self,
        _name: &'a PackageName,
        id: &'a BlobId,
        integrity: Option<&'a Integrity>,
        max_len: u64,
        tap: Option<peer::stream::Tap>,
    ) -> BoxFuture<'a, Result<BlobId, PeerError>> {
        self.fetch_calls.fetch_add(1, Ordering::SeqCst);
        // As `Peers::fetch_from` does: providers in order, those that spoiled this blob lately
        // skipped, each received by the real receive into the store and the tap.
        let mut providers = self
            .providers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or_default();
        if let Some(bytes) = self.blobs.lock().unwrap().get(id).cloned() {
            providers.push(FakeProvider {
                name: "correct",
                bytes,
                hold: None,
                fail_after: None,
                trusted: true,
            });
        }
        let names: Vec<&'static str> = providers.iter().map(|p| p.name).collect();
        let usable = self.bad.usable(id, &names, self.clock.now_ms());
        Box::pin(async move {
            let mut last = PeerError::NoProviders(*id);
            for p in providers.iter().filter(|p| usable.contains(&p.name)) {
                self.asked.lock().unwrap().push(p.name);
                let verifier = match integrity {
                    Some(i) => Verifier::new(i.clone()),
                    None => Verifier::id_only(),
                };
                let got = peer::stream::receive_into(
                    &self.store,
                    &self.metrics,
                    p.transfer(),
                    p.bytes.len() as u64,
                    id,
                    verifier,
                    max_len,
                    tap.as_ref(),
                    p.trusted,
                )
                .await;
                match got {
                    Ok(id) => return Ok(id),
                    Err(f) => {
                        if f.spoiled {
                            self.bad.note(id, &p.name, self.clock.now_ms());
                        }
                        last = f.error;
                    }
                }
            }
            Err(last)
        })
    }

    fn announce<'a>(&'a self, _name: &'a PackageName) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn publish<'a>(&'a self, _signed: &'a Signed) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

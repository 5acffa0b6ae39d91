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

use crate::fetch::upstream::{Budget, Download, PackumentAnswer, Source, UpstreamError};
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

/// A network of trusted operators, in memory: blobs by id, tarball ids by (name, version),
/// and the packument revision they agree on.
#[derive(Debug)]
pub(super) struct FakePeers {
    store: Arc<Store>,
    blobs: Mutex<HashMap<BlobId, Bytes>>,
    tarball_ids: Mutex<HashMap<(String, String), BlobId>>,
    agreed: Mutex<Option<(BlobId, u64)>>,
    pub(super) agreed_tarball_calls: AtomicUsize,
    pub(super) agreed_packument_calls: AtomicUsize,
    pub(super) fetch_calls: AtomicUsize,
    pub(super) kept: AtomicUsize,
}

impl FakePeers {
    pub(super) fn new(store: Arc<Store>) -> FakePeers {
        FakePeers {
            store,
            blobs: Mutex::default(),
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
        id: &'a BlobId,
        integrity: Option<&'a Integrity>,
        max_len: u64,
    ) -> BoxFuture<'a, Result<BlobId, PeerError>> {
        self.fetch_calls.fetch_add(1, Ordering::SeqCst);
        let bytes = self.blobs.lock().unwrap().get(id).cloned();
        Box::pin(async move {
            let bytes = bytes.ok_or(PeerError::NoProviders(*id))?;
            let verifier = match integrity {
                Some(i) => Verifier::new(i.clone()),
                None => Verifier::id_only(),
            };
            let mut w = self
                .store
                .blobs
                .writer(verifier, max_len)
                .await
                .map_err(PeerError::store)?;
            w.write(&bytes).await.map_err(PeerError::store)?;
            w.commit_as(Some(id)).await.map_err(PeerError::store)
        })
    }

    fn announce<'a>(&'a self, _id: &'a BlobId) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn publish<'a>(&'a self, _signed: &'a Signed) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

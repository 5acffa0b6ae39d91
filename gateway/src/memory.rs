//! [`MemoryRegistry`]: a [`Registry`] held in memory, for tests of the gateway and of anything
//! built on it.
//!
//! It behaves like an upstream-backed node seen from the gateway: packuments are documents
//! with real npm integrity, shasums, signatures and attestations (fake keys, real shapes);
//! versions can be staged to appear only when a caller asks for a refresh; failures and latency
//! can be injected; and every call is counted, so tests can assert how the gateway used it.
//!
//! Not behind `cfg(test)`: the node's and the end-to-end tests use it too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use open_registry_protocol::{BlobId, Integrity, NameError, PackageName, Status, TarballFile};
use serde_json::{Value, json};

use crate::access::Source;
use crate::registry::{Blob, Body, Error, Forward, Forwarded, Packument, Registry, Withheld};

/// The host that tarball URLs in the documents point at, as an upstream's would.
pub const UPSTREAM: &str = "https://registry.example.org";

/// See the module docs.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    // std Mutex, not tokio: never held across an await.
    state: Mutex<State>,
    packument_calls: AtomicU64,
    refresh_calls: AtomicU64,
    tarball_calls: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    packages: HashMap<PackageName, Package>,
    tarballs: HashMap<(PackageName, TarballFile), Bytes>,
    /// Versions published "upstream" but not yet seen: applied on `packument(name, true)`.
    staged: HashMap<PackageName, Vec<(String, Bytes)>>,
    keys: Option<Bytes>,
    records: HashMap<PackageName, Bytes>,
    forward_answer: Option<Forwarded>,
    forwarded: Vec<Forward>,
    status: Status,
    metrics: Option<String>,
    failure: Option<Error>,
    stream_chunk: Option<usize>,
    delay: Duration,
    /// Versions withheld per package, as a node would withhold them.
    withheld: HashMap<PackageName, Vec<Withheld>>,
}

#[derive(Debug)]
struct Package {
    /// The document, when it is JSON (raw documents set by tests may not be).
    doc: Option<Value>,
    current: Packument,
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `version` of `name` with `tarball` as its bytes: adds the version document
    /// (dist with integrity, shasum, signatures, attestations and an upstream tarball URL), the
    /// tarball, and moves `latest` (or `next` for a prerelease). Returns the tarball file name.
    pub fn publish(
        &self,
        name: &str,
        version: &str,
        tarball: impl Into<Bytes>,
    ) -> Result<TarballFile, NameError> {
        let name = PackageName::parse(name)?;
        let mut state = self.lock();
        let file = add_version(&mut state, &name, version, tarball.into())?;
        Ok(file)
    }

    /// Publishes like [`publish`](Self::publish), but the version only becomes visible when
    /// the gateway asks for a refresh (`packument(name, true)`): an upstream that has moved on
    /// since the node cached its copy.
    pub fn publish_on_refresh(
        &self,
        name: &str,
        version: &str,
        tarball: impl Into<Bytes>,
    ) -> Result<(), NameError> {
        let name = PackageName::parse(name)?;
        // Validate now so a bad version fails here, not inside a later request.
        TarballFile::parse(&format!("{}-{version}.tgz", name.unscoped()))?;
        self.lock()
            .staged
            .entry(name)
            .or_default()
            .push((version.to_owned(), tarball.into()));
        Ok(())
    }

    /// Sets the packument of `name` to exactly `bytes` (which need not be valid JSON).
    pub fn set_packument(&self, name: &PackageName, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        let package = Package {
            doc: serde_json::from_slice(&bytes).ok(),
            current: Packument::new(BlobId::of(&bytes), bytes).from(Source::Memory),
        };
        self.lock().packages.insert(name.clone(), package);
    }

    /// Points dist-tag `tag` of `name` at `version`. Does nothing for an unknown package.
    pub fn set_dist_tag(&self, name: &PackageName, tag: &str, version: &str) {
        let mut state = self.lock();
        if let Some(doc) = state.packages.get_mut(name).and_then(|p| p.doc.as_mut()) {
            doc["dist-tags"][tag] = Value::String(version.to_owned());
        }
        reencode(&mut state, name);
    }

    /// Withholds versions of `name` as a node does (`None`: none): its packument is served
    /// without them (dist-tags moved, by [`open_registry_protocol::withhold`]) and lists them in
    /// [`Packument::withheld`], and their tarballs answer [`Error::Withheld`] with the message.
    pub fn set_withheld(&self, name: &PackageName, withheld: Vec<Withheld>) {
        let mut state = self.lock();
        if withheld.is_empty() {
            state.withheld.remove(name);
        } else {
            state.withheld.insert(name.clone(), withheld);
        }
    }

    /// Stores a tarball without touching any packument.
    pub fn insert_tarball(&self, name: &PackageName, file: &TarballFile, bytes: impl Into<Bytes>) {
        self.lock()
            .tarballs
            .insert((name.clone(), file.clone()), bytes.into());
    }

    /// The current packument of `name`, as the gateway would get it.
    pub fn packument_of(&self, name: &PackageName) -> Option<Packument> {
        self.lock().packages.get(name).map(|p| p.current.clone())
    }

    /// Sets the `/-/open-registry/records/<name>` document.
    pub fn set_records(&self, name: &PackageName, doc: impl Into<Bytes>) {
        self.lock().records.insert(name.clone(), doc.into());
    }

    /// Sets the `/-/npm/v1/keys` document (default `{"keys":[]}`).
    pub fn set_keys(&self, keys: impl Into<Bytes>) {
        self.lock().keys = Some(keys.into());
    }

    /// Sets what every forwarded request is answered with (default 200 `{}`).
    pub fn set_forward_answer(&self, answer: Forwarded) {
        self.lock().forward_answer = Some(answer);
    }

    /// Sets the status report.
    pub fn set_status(&self, status: Status) {
        self.lock().status = status;
    }

    /// Sets the node metrics text.
    pub fn set_metrics(&self, text: impl Into<String>) {
        self.lock().metrics = Some(text.into());
    }

    /// Makes every packument, tarball, keys and forward call fail with `error` (None: stop).
    pub fn set_failure(&self, error: Option<Error>) {
        self.lock().failure = error;
    }

    /// Serves tarballs as [`Body::Stream`] in chunks of this size (None: as [`Body::Bytes`]).
    pub fn set_stream_chunks(&self, chunk: Option<usize>) {
        self.lock().stream_chunk = chunk.filter(|c| *c > 0);
    }

    /// Makes every packument and tarball call wait this long first.
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// Calls of [`Registry::packument`], refreshes included.
    pub fn packument_calls(&self) -> u64 {
        self.packument_calls.load(Relaxed)
    }

    /// Calls of [`Registry::packument`] with `refresh = true`.
    pub fn refresh_calls(&self) -> u64 {
        self.refresh_calls.load(Relaxed)
    }

    /// Calls of [`Registry::tarball`].
    pub fn tarball_calls(&self) -> u64 {
        self.tarball_calls.load(Relaxed)
    }

    /// Every request forwarded so far, oldest first.
    pub fn forwarded(&self) -> Vec<Forward> {
        self.lock().forwarded.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Test state: a panic elsewhere should not hide behind a poisoned lock here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn pause(&self) {
        let delay = self.lock().delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    fn failure(&self) -> Result<(), Error> {
        self.lock().failure.clone().map_or(Ok(()), Err)
    }
}

/// Adds a version and its tarball to `state`, re-encoding the packument.
fn add_version(
    state: &mut State,
    name: &PackageName,
    version: &str,
    tarball: Bytes,
) -> Result<TarballFile, NameError> {
    let file = TarballFile::parse(&format!("{}-{version}.tgz", name.unscoped()))?;
    let package = state
        .packages
        .entry(name.clone())
        .or_insert_with(|| Package {
            doc: None,
            current: Packument::new(BlobId::of(b""), Bytes::new()).from(Source::Memory),
        });
    let doc = package.doc.get_or_insert_with(|| {
        json!({
            "_id": name.as_str(),
            "name": name.as_str(),
            "description": format!("{name}, served from memory"),
            "dist-tags": {},
            "versions": {},
            "time": {"created": "2024-01-01T00:00:00.000Z"},
            // Weight that the abbreviated document drops.
            "readme": format!("# {name}\n\n{}", "A package for tests. ".repeat(20)),
        })
    });
    let tag = if version.contains('-') {
        "next"
    } else {
        "latest"
    };
    doc["dist-tags"][tag] = json!(version);
    doc["time"]["modified"] = json!("2024-01-02T00:00:00.000Z");
    doc["time"][version] = json!("2024-01-02T00:00:00.000Z");
    doc["versions"][version] = json!({
        "_id": format!("{name}@{version}"),
        "name": name.as_str(),
        "version": version,
        "description": "dropped from the abbreviated document",
        "scripts": {"test": "node test.js"},
        "dependencies": {},
        "dist": {
            "tarball": format!("{UPSTREAM}/{name}/-/{file}"),
            "integrity": Integrity::sha512_sri(&tarball),
            "shasum": Integrity::sha1_hex(&tarball),
            "fileCount": 1,
            "unpackedSize": tarball.len(),
            "signatures": [{
                "keyid": "SHA256:memory-registry",
                "sig": format!("MEUCIQ{}", &BlobId::of(&tarball).to_string()[8..40]),
            }],
            "attestations": {
                "url": format!("{UPSTREAM}/-/npm/v1/attestations/{name}@{version}"),
                "provenance": {"predicateType": "https://slsa.dev/provenance/v1"},
            },
        },
    });
    state.tarballs.insert((name.clone(), file.clone()), tarball);
    reencode(state, name);
    Ok(file)
}

/// Re-encodes the document of `name` into its current revision.
fn reencode(state: &mut State, name: &PackageName) {
    if let Some(package) = state.packages.get_mut(name)
        && let Some(doc) = &package.doc
        && let Ok(bytes) = serde_json::to_vec(doc)
    {
        package.current =
            Packument::new(BlobId::of(&bytes), Bytes::from(bytes)).from(Source::Memory);
    }
}

impl Registry for MemoryRegistry {
    async fn packument(&self, name: &PackageName, refresh: bool) -> Result<Packument, Error> {
        self.packument_calls.fetch_add(1, Relaxed);
        if refresh {
            self.refresh_calls.fetch_add(1, Relaxed);
        }
        self.pause().await;
        self.failure()?;
        let mut state = self.lock();
        if refresh && let Some(staged) = state.staged.remove(name) {
            for (version, tarball) in staged {
                add_version(&mut state, name, &version, tarball)
                    .map_err(|e| Error::Internal(format!("staged version: {e}")))?;
            }
        }
        let package = state
            .packages
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("package not found: {name}")))?;
        let current = package.current.clone();
        // As a node does, only versions the revision has are withheld.
        let present = |v: &str| {
            package
                .doc
                .as_ref()
                .is_some_and(|d| d["versions"].get(v).is_some())
        };
        let withheld: Vec<Withheld> = state
            .withheld
            .get(name)
            .map(|w| w.iter().filter(|w| present(&w.version)).cloned().collect())
            .unwrap_or_default();
        if withheld.is_empty() {
            return Ok(current);
        }
        let hide = |v: &str| withheld.iter().any(|w| w.version == v);
        let notice = Withheld::notice(&withheld);
        let filtered = open_registry_protocol::withhold::withhold_with_notice(
            name,
            &current.bytes,
            &hide,
            Some(&notice),
        )
        .map_err(|e| Error::Internal(format!("withholding: {e}")))?;
        let mut p = match filtered {
            Some(bytes) => {
                Packument::new(BlobId::of(&bytes), Bytes::from(bytes)).from(Source::Memory)
            }
            None => current,
        };
        p.withheld = withheld;
        Ok(p)
    }

    async fn tarball(&self, name: &PackageName, file: &TarballFile) -> Result<Blob, Error> {
        self.tarball_calls.fetch_add(1, Relaxed);
        self.pause().await;
        self.failure()?;
        let state = self.lock();
        if let Some(withheld) = state.withheld.get(name)
            && let Some(doc) = state.packages.get(name).and_then(|p| p.doc.as_ref())
            && let Some(dist) =
                open_registry_protocol::packument::tarball_index(name, doc).remove(file.as_str())
            && let Some(w) = withheld.iter().find(|w| w.version == dist.version)
        {
            return Err(Error::Withheld(w.message.clone()));
        }
        let bytes = state
            .tarballs
            .get(&(name.clone(), file.clone()))
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("tarball not found: {name}/-/{file}")))?;
        let body = match state.stream_chunk {
            Some(chunk) => {
                let chunks: Vec<std::io::Result<Bytes>> = (0..bytes.len())
                    .step_by(chunk)
                    .map(|at| Ok(bytes.slice(at..bytes.len().min(at + chunk))))
                    .collect();
                Body::Stream(Box::pin(futures::stream::iter(chunks)))
            }
            None => Body::Bytes(bytes.clone()),
        };
        Ok(Blob {
            id: BlobId::of(&bytes),
            len: bytes.len() as u64,
            body,
            source: Source::Memory,
        })
    }

    async fn records(&self, name: &PackageName) -> Result<Bytes, Error> {
        self.failure()?;
        self.lock()
            .records
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no signed records for {name}")))
    }

    async fn blob(&self, id: &BlobId) -> Result<Blob, Error> {
        self.failure()?;
        let state = self.lock();
        let bytes = state
            .packages
            .values()
            .map(|p| &p.current.bytes)
            .chain(state.tarballs.values())
            .find(|b| BlobId::of(b) == *id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no blob {id}")))?;
        Ok(Blob {
            id: *id,
            len: bytes.len() as u64,
            body: Body::Bytes(bytes),
            source: Source::Memory,
        })
    }

    async fn keys(&self) -> Result<Bytes, Error> {
        self.failure()?;
        Ok(self
            .lock()
            .keys
            .clone()
            .unwrap_or_else(|| Bytes::from_static(br#"{"keys":[]}"#)))
    }

    async fn forward(&self, req: Forward) -> Result<Forwarded, Error> {
        self.failure()?;
        let mut state = self.lock();
        state.forwarded.push(req);
        Ok(state.forward_answer.clone().unwrap_or_else(|| Forwarded {
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(b"{}"),
        }))
    }

    async fn status(&self) -> Status {
        self.lock().status.clone()
    }

    async fn metrics(&self) -> String {
        self.lock()
            .metrics
            .clone()
            .unwrap_or_else(|| "# TYPE memory_registry_up gauge\nmemory_registry_up 1\n".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use open_registry_protocol::packument;

    #[tokio::test]
    async fn published_versions_verify_and_refresh_applies_staged_ones() {
        let reg = MemoryRegistry::new();
        let file = reg.publish("@s/p", "1.0.0", &b"tarball one"[..]).unwrap();
        let name = PackageName::parse("@s/p").unwrap();
        let first = reg.packument(&name, false).await.unwrap();
        let doc = packument::parse(&name, &first.bytes).unwrap();
        let dist = &doc["versions"]["1.0.0"]["dist"];
        let integrity = Integrity::parse(dist["integrity"].as_str().unwrap()).unwrap();
        let blob = reg.tarball(&name, &file).await.unwrap();
        let Body::Bytes(bytes) = blob.body else {
            panic!("bytes expected")
        };
        assert_eq!(integrity.check(&bytes).unwrap(), blob.id);
        assert_eq!(doc["dist-tags"]["latest"], "1.0.0");

        reg.publish_on_refresh("@s/p", "2.0.0-rc.1", &b"two"[..])
            .unwrap();
        assert_eq!(reg.packument(&name, false).await.unwrap().id, first.id);
        let second = reg.packument(&name, true).await.unwrap();
        assert_ne!(second.id, first.id);
        let doc = packument::parse(&name, &second.bytes).unwrap();
        assert_eq!(doc["dist-tags"]["next"], "2.0.0-rc.1");
        assert_eq!((reg.packument_calls(), reg.refresh_calls()), (3, 1));
    }

    #[tokio::test]
    async fn streams_failures_and_misses() {
        let reg = MemoryRegistry::new();
        let file = reg.publish("x", "1.0.0", vec![7u8; 100]).unwrap();
        reg.set_stream_chunks(Some(30));
        let name = PackageName::parse("x").unwrap();
        let blob = reg.tarball(&name, &file).await.unwrap();
        let Body::Stream(s) = blob.body else {
            panic!("stream expected")
        };
        let chunks: Vec<_> = futures::StreamExt::collect::<Vec<_>>(s).await;
        assert_eq!(chunks.len(), 4);
        let other = PackageName::parse("y").unwrap();
        assert!(matches!(
            reg.packument(&other, false).await,
            Err(Error::NotFound(_))
        ));
        reg.set_failure(Some(Error::Timeout("slow".into())));
        assert_eq!(
            reg.packument(&name, false).await.unwrap_err(),
            Error::Timeout("slow".into())
        );
        assert!(reg.publish("Bad", "1.0.0", Bytes::new()).is_err());
        assert!(reg.publish("x", "1.0.0/..", Bytes::new()).is_err());
    }
}

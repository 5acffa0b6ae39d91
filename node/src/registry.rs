//! [`Node`]: the node as its gateway sees it, the implementation of the gateway's
//! [`Registry`] trait over the Fetcher, the records, the pinned keys and the counters.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt as _;
use open_registry_gateway::{
    self as gateway, Blob, Forward, Forwarded, Packument, Registry, SearchQuery, SearchResults,
};
use open_registry_protocol::{BlobId, PackageName, PeerId, Status, TarballFile};
use tokio::sync::Mutex;
use tokio_util::io::ReaderStream;

use crate::fetch::{FetchError, Fetcher};
use crate::metrics::Metrics;
use crate::peer::popularity::Popularity;
use crate::search::SearchIndex;
use crate::tasks::sync::Sync;
use crate::withhold::Holds;

/// The node as its gateway sees it.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) fetcher: Arc<Fetcher>,
    pub(crate) operator: PeerId,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) started: Instant,
    /// The gateway's public base URL, for the status.
    pub(crate) gateway: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) sync: Arc<Sync>,
    pub(crate) popularity: Arc<Popularity>,
    /// Serializes pinning the upstream's keys. tokio Mutex: held across the fetch so that
    /// concurrent first requests share it.
    pub(crate) keys: Mutex<()>,
    /// The packages this node stores, for search without an upstream search.
    pub(crate) search: Arc<SearchIndex>,
    /// The network view, for its gauges.
    pub(crate) views: Arc<crate::public::Views>,
    /// The versions held back (release cooldown, advisories).
    pub(crate) holds: Arc<Holds>,
}

impl Node {
    /// Makes a search hit name the `latest` of the packument this node serves: a version the
    /// cooldown or an advisory withholds is never offered as the newest (its date goes with
    /// it). Left as it is when nothing can hold it or the packument cannot be read; emptied
    /// when every version is withheld.
    async fn served_latest(&self, pkg: &mut gateway::SearchPackage) {
        let Ok(name) = PackageName::parse(&pkg.name) else {
            return;
        };
        if !self.holds.may_hold_latest(&name, pkg.date.as_deref()) {
            return;
        }
        let Ok(p) = self.fetcher.packument(&name, false).await else {
            return;
        };
        let Ok(served) = self.holds.apply(&name, p).await else {
            return;
        };
        if !served.withheld.iter().any(|w| w.version == pkg.version) {
            return;
        }
        let (latest, date) = latest_of(&served.bytes);
        pkg.version = latest.unwrap_or_default();
        pkg.date = date;
    }
}

/// A packument's `dist-tags.latest` and its `time`, each if present.
fn latest_of(bytes: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(rename = "dist-tags", default)]
        tags: std::collections::HashMap<String, String>,
        #[serde(default)]
        time: std::collections::HashMap<String, serde_json::Value>,
    }
    let Ok(d) = serde_json::from_slice::<Doc>(bytes) else {
        return (None, None);
    };
    let latest = d.tags.get("latest").cloned();
    let date = latest
        .as_ref()
        .and_then(|v| d.time.get(v))
        .and_then(|t| t.as_str().map(str::to_owned));
    (latest, date)
}

impl Registry for Node {
    async fn packument(
        &self,
        name: &PackageName,
        refresh: bool,
    ) -> Result<Packument, gateway::Error> {
        let p = if refresh {
            self.fetcher.packument_for_miss(name).await?
        } else {
            self.fetcher.packument(name, false).await?
        };
        // Only a real package the node could answer counts: requests for names that do not
        // exist (or that fail) must not push a name into `pin add --top`.
        if !refresh {
            self.popularity.count(name);
        }
        self.holds.apply(name, p).await
    }

    fn still_missing(&self, name: &PackageName) {
        self.fetcher.still_missing(name);
    }

    async fn tarball(
        &self,
        name: &PackageName,
        file: &TarballFile,
    ) -> Result<Blob, gateway::Error> {
        // A held version's tarball is refused before it is looked for, stored or not (pins
        // never override a hold). Without the packument the node cannot tell, and refuses.
        if self.holds.applies_to(name)
            && let Some((p, version)) = self.fetcher.tarball_version(name, file.as_str()).await?
            && let Some(message) = self.holds.hold_of(name, &p, &version).await?
        {
            return Err(gateway::Error::Withheld(message));
        }
        Ok(self.fetcher.tarball(name, file).await?)
    }

    async fn records(&self, name: &PackageName) -> Result<Bytes, gateway::Error> {
        match self.fetcher.records().document(name) {
            Ok(Some(doc)) => Ok(Bytes::from(doc)),
            Ok(None) => Err(gateway::Error::NotFound(format!(
                "this node holds no signed records for {name}"
            ))),
            Err(e) => Err(gateway::Error::Internal(e.to_string())),
        }
    }

    async fn blob(&self, id: &BlobId) -> Result<Blob, gateway::Error> {
        let opened = self.fetcher.store().blobs.open_read(id).await;
        match opened {
            Ok(Some((file, len))) => Ok(Blob {
                id: *id,
                len,
                body: gateway::Body::Stream(ReaderStream::with_capacity(file, 64 << 10).boxed()),
                source: gateway::access::Source::Store,
            }),
            // Record blobs live in sled, not in the blob store.
            Ok(None) => match self.fetcher.records().blob(id) {
                Ok(Some(b)) => Ok(Blob {
                    id: *id,
                    len: b.len() as u64,
                    body: gateway::Body::Bytes(Bytes::from(b)),
                    source: gateway::access::Source::Store,
                }),
                Ok(None) => Err(gateway::Error::NotFound(format!(
                    "this node has no blob {id}"
                ))),
                Err(e) => Err(gateway::Error::Internal(e.to_string())),
            },
            Err(e) => Err(gateway::Error::Internal(e.to_string())),
        }
    }

    async fn keys(&self) -> Result<Bytes, gateway::Error> {
        // Concurrent first requests share one upstream fetch, and a failure is answered from
        // memory for a while (`KeysPin`); this lock only keeps the node's own order.
        let _guard = self.keys.lock().await;
        match self.fetcher.registry_keys(&self.data_dir).await {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(gateway::Error::NotFound(
                "this node has no registry signing keys pinned, and its upstream publishes none"
                    .into(),
            )),
            Err(e) => Err(gateway::Error::Unavailable(format!(
                "registry signing keys unavailable: {e}"
            ))),
        }
    }

    async fn forward(&self, req: Forward) -> Result<Forwarded, gateway::Error> {
        match self.fetcher.upstream() {
            Some(u) => Ok(u.forward(req).await.map_err(FetchError::from)?),
            None => Err(gateway::Error::Unavailable(
                "this node has no upstream configured for search and audit".into(),
            )),
        }
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchResults, gateway::Error> {
        let mut results = self.search.search(query);
        for hit in &mut results.hits {
            self.served_latest(&mut hit.package).await;
        }
        // A package whose every version is withheld is not offered at all.
        results.hits.retain(|h| !h.package.version.is_empty());
        Ok(results)
    }

    async fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            gateway: self.gateway.clone(),
            peer_id: self.operator.to_string(),
            upstream: self.fetcher.upstream().map(|u| u.base().to_string()),
            store: self.fetcher.store().stats(),
            counters: {
                let mut c = self.metrics.snapshot();
                let m = self.fetcher.memory();
                c.insert("packument_memory_waits".into(), m.waits());
                c.insert("packument_memory_oversized".into(), m.oversized());
                c
            },
            sync: Some(self.sync.status()),
            upstream_health: self.fetcher.upstream().and_then(|u| u.health()),
            unsigned: self.fetcher.unsigned(),
            cooldown: self.holds.status(),
        }
    }

    async fn metrics(&self) -> String {
        let s = self.fetcher.store().stats();
        let mut text = self.metrics.render(&[
            ("store_bytes", "Bytes of blobs in the local store.", s.bytes),
            ("store_blobs", "Blobs in the local store.", s.blobs),
            (
                "store_packuments",
                "Packages whose packument is stored.",
                s.packuments,
            ),
            (
                "store_tarballs",
                "Tarballs indexed in the store.",
                s.tarballs,
            ),
            (
                "upstream_circuit_open",
                "1 while the upstream's circuit breaker is open (the upstream is not answering).",
                u64::from(
                    self.fetcher
                        .upstream()
                        .and_then(|u| u.health())
                        .is_some_and(|h| h.state != "closed"),
                ),
            ),
            (
                "packument_memory_bytes",
                "Bytes of packument memory leased now (downloads, reads and derivations in progress).",
                self.fetcher.memory().in_use(),
            ),
            (
                "packument_memory_limit_bytes",
                "The packument memory budget (packument_memory).",
                self.fetcher.memory().capacity(),
            ),
            (
                "packument_memory_waits",
                "Requests that waited for packument memory held by others, since start.",
                self.fetcher.memory().waits(),
            ),
            (
                "uptime_seconds",
                "Seconds since the node started.",
                self.started.elapsed().as_secs(),
            ),
        ]);
        text.push_str(&crate::public::prometheus(&self.views.network()));
        text
    }
}

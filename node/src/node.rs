//! A running node: the store, the fetcher and the gateway, wired together, with a handle that
//! shuts them down in order (stop accepting, finish in-flight fetches, flush the store).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use open_registry_gateway::{self as gateway, Blob, Forward, Forwarded, Packument, Registry};
use open_registry_protocol::{BlobId, PackageName, Status, TarballFile};
use tokio::sync::Mutex;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::config::{Config, gateway_url};
use crate::fetch::Fetcher;
use crate::fetch::upstream::Upstream;
use crate::metrics::Metrics;
use crate::net;
use crate::peer::popularity::Popularity;
use crate::peer::{P2p, PointerValidator, StoreSource};
use crate::records::Records;
use crate::records::identity::Identity;
use crate::store::Store;
use crate::store::evict;
use crate::store::pins::Pins;
use crate::tasks::gossip;
use crate::tasks::sync::Sync;

/// The file in the data dir naming the running node's gateway, for `status` and for tests.
pub const RUN_FILE: &str = "node.json";
/// The operator's pinned registry signing keys, if any.
pub const KEYS_FILE: &str = "keys.json";
/// The operator's pinned registry signing keys: `keys.json` in the data dir. When there is none,
/// the upstream's keys are fetched once and pinned (written atomically); an upstream without a
/// keys endpoint leaves nothing pinned (`Ok(None)`).
pub async fn pin_keys(dir: &Path, upstream: Option<&Upstream>) -> anyhow::Result<Option<Bytes>> {
    let pinned = dir.join(KEYS_FILE);
    match tokio::fs::read(&pinned).await {
        Ok(b) => return Ok(Some(Bytes::from(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", pinned.display())),
    }
    let Some(upstream) = upstream else {
        return Ok(None);
    };
    let b = match upstream.keys().await {
        Ok(b) => b,
        Err(crate::fetch::upstream::UpstreamError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    open_registry_protocol::npm_sig::Keys::parse(&b)
        .with_context(|| format!("the upstream's keys at {}-/npm/v1/keys", upstream.base()))?;
    let tmp = dir.join(format!("{KEYS_FILE}.tmp"));
    tokio::fs::write(&tmp, &b).await?;
    tokio::fs::rename(&tmp, &pinned).await?;
    tracing::info!(path = %pinned.display(), "pinned the upstream's registry signing keys");
    Ok(Some(b))
}

/// The node as its gateway sees it: the [`Registry`] implementation.
#[derive(Debug)]
pub struct Node {
    fetcher: Arc<Fetcher>,
    identity: Identity,
    metrics: Arc<Metrics>,
    started: Instant,
    gateway: String,
    data_dir: PathBuf,
    pins: Arc<Pins>,
    sync: Arc<Sync>,
    popularity: Arc<Popularity>,
    /// Serializes pinning the upstream's keys. tokio Mutex: held across the fetch so that
    /// concurrent requests share it.
    keys: Mutex<()>,
}

/// Pinning, for the admin API.
impl Node {
    /// The pin list as served at `/-/open-registry/pins`.
    /// `providers` is, per package, the fewest providers any of its pinned tarballs has on the
    /// network (this node included): the weakest link of its availability.
    pub async fn pin_list(&self) -> anyhow::Result<serde_json::Value> {
        let store = self.fetcher.store();
        let mut rows = Vec::new();
        for (name, e) in self.pins.list()? {
            let mut size = 0;
            let mut ids = Vec::new();
            for file in e.versions.values() {
                if let Some(id) = store.index.tarball(&name, file)? {
                    size += store.blobs.size(&id).unwrap_or(0);
                    ids.push(id);
                }
            }
            rows.push((name, e, size, ids));
        }
        let p2p = self.fetcher.p2p().cloned();
        let counts: Vec<Option<usize>> =
            futures::stream::iter(rows.iter().map(|r| r.3.clone()).collect::<Vec<_>>())
                .map(|ids: Vec<BlobId>| {
                    let p2p = p2p.clone();
                    async move {
                        let p2p = p2p?;
                        let mut fewest: Option<usize> = None;
                        for id in &ids {
                            let n = p2p
                                .client()
                                .find_providers(id, 20, Duration::from_secs(2))
                                .await
                                .map_or(0, |v| v.len())
                                + 1;
                            fewest = Some(fewest.map_or(n, |f| f.min(n)));
                        }
                        fewest
                    }
                })
                .buffered(8)
                .collect()
                .await;
        let out: Vec<serde_json::Value> = rows
            .into_iter()
            .zip(counts)
            .map(|((name, e, size, _), providers)| {
                serde_json::json!({
                    "name": name, "versions": e.versions, "size": size, "since": e.since,
                    "providers": providers,
                })
            })
            .collect();
        Ok(serde_json::json!({ "pins": out }))
    }

    /// Fetches (if needed), verifies, stores and pins one version.
    pub async fn pin(
        &self,
        name: &PackageName,
        version: &str,
    ) -> Result<serde_json::Value, gateway::Error> {
        let (file, id, size) = self.fetcher.ensure_version(name, version).await?;
        self.pins
            .add(&self.fetcher.store().index, name, version, &file)
            .await
            .map_err(|e| gateway::Error::Internal(e.to_string()))?;
        tracing::info!(%name, version, "pinned");
        Ok(serde_json::json!({
            "name": name, "version": version, "file": file, "id": id, "size": size,
        }))
    }

    /// The peer-to-peer view, as served at `/-/open-registry/peers`; `None` without P2P.
    pub async fn peers(&self) -> anyhow::Result<Option<serde_json::Value>> {
        let Some(p2p) = self.fetcher.p2p() else {
            return Ok(None);
        };
        let i = p2p.client().peers().await?;
        let strs = |v: &[net::Multiaddr]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        Ok(Some(serde_json::json!({
            "peer_id": i.local.to_string(),
            "listen": strs(&i.listen),
            "external": strs(&i.external),
            "kad_server": i.kad_server,
            "routing_table_size": i.routing_table_size,
            "connected": i.connected.iter().map(|(p, a)| serde_json::json!({
                "peer_id": p.to_string(), "addrs": strs(a),
            })).collect::<Vec<_>>(),
            "provided": i.provided,
            "records_stored": i.records_stored,
            "provider_keys_stored": i.provider_keys_stored,
            "trusted": p2p.policy().trusted().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "trust_threshold": p2p.policy().threshold(),
        })))
    }

    /// The most requested packages, here and at trusted operators' nodes.
    pub fn popular(&self, limit: usize) -> serde_json::Value {
        let (top, operators) = self.popularity.top(limit);
        serde_json::json!({
            "operators": operators,
            "packages": top.iter().map(|(n, c)| serde_json::json!({"name": n, "count": c})).collect::<Vec<_>>(),
        })
    }

    /// Unpins every version of `name`.
    pub async fn unpin(&self, name: &PackageName) -> anyhow::Result<bool> {
        let removed = self.pins.remove(&self.fetcher.store().index, name).await?;
        if removed {
            tracing::info!(%name, "unpinned");
        }
        Ok(removed)
    }
}

impl Registry for Node {
    async fn packument(
        &self,
        name: &PackageName,
        refresh: bool,
    ) -> Result<Packument, gateway::Error> {
        if !refresh {
            self.popularity.count(name);
        }
        Ok(self.fetcher.packument(name, refresh).await?)
    }

    async fn tarball(
        &self,
        name: &PackageName,
        file: &TarballFile,
    ) -> Result<Blob, gateway::Error> {
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
            }),
            // Record blobs live in sled, not in the blob store.
            Ok(None) => match self.fetcher.records().blob(id) {
                Ok(Some(b)) => Ok(Blob {
                    id: *id,
                    len: b.len() as u64,
                    body: gateway::Body::Bytes(Bytes::from(b)),
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
        // The mutex makes concurrent first requests share one upstream fetch.
        let _guard = self.keys.lock().await;
        match pin_keys(&self.data_dir, self.fetcher.upstream()).await {
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
            Some(u) => Ok(u
                .forward(req)
                .await
                .map_err(crate::fetch::FetchError::from)?),
            None => Err(gateway::Error::Unavailable(
                "this node has no upstream configured for search and audit".into(),
            )),
        }
    }

    async fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            gateway: self.gateway.clone(),
            peer_id: self.identity.peer_id().to_string(),
            upstream: self.fetcher.upstream().map(|u| u.base().to_string()),
            store: self.fetcher.store().stats(),
            counters: self.metrics.snapshot(),
            sync: Some(self.sync.status()),
        }
    }

    async fn metrics(&self) -> String {
        let s = self.fetcher.store().stats();
        self.metrics.render(&[
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
                "uptime_seconds",
                "Seconds since the node started.",
                self.started.elapsed().as_secs(),
            ),
        ])
    }
}

/// A started node. Dropping it without [`NodeHandle::shutdown`] stops the tasks abruptly.
#[derive(Debug)]
pub struct NodeHandle {
    /// Where the gateway listens.
    pub addr: SocketAddr,
    /// The gateway's URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The node, for in-process callers.
    pub node: Arc<Node>,
    store: Arc<Store>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    data_dir: PathBuf,
}

impl NodeHandle {
    /// Resolves when shutdown was requested (by [`NodeHandle::shutdown`] or a fatal error).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Stops accepting requests, lets in-flight work finish (bounded), and flushes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("in-flight work did not finish within 10s; flushing anyway");
        }
        self.store.flush().await.context("flushing the store")?;
        let _ = std::fs::remove_file(self.data_dir.join(RUN_FILE));
        tracing::info!("stopped; store flushed");
        Ok(())
    }
}

/// Opens the store, binds the gateway and starts serving.
pub async fn start(config: Config) -> anyhow::Result<NodeHandle> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = Arc::new(Store::open(&config.data_dir).await?);
    let metrics = Arc::new(Metrics::default());
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let upstream = Upstream::new(&config, metrics.clone())?;
    let identity = Identity::load_or_create(&config.data_dir)?;
    let records = Arc::new(Records::open(
        &store.index,
        identity.clone(),
        config.record_ttl,
    )?);
    let pins = Arc::new(Pins::open(&store.index)?);
    let p2p = match &config.p2p {
        Some(net_config) => {
            let source = Arc::new(StoreSource::new(store.clone(), records.clone()));
            let (client, bound) = net::spawn(
                net::Config {
                    metrics: Some(metrics.clone()),
                    ..net_config.clone()
                },
                &identity,
                source,
                Arc::new(PointerValidator),
                tracker.clone(),
                cancel.clone(),
            )
            .await
            .context("starting the peer-to-peer network")?;
            let shown: Vec<String> = bound.iter().map(ToString::to_string).collect();
            tracing::info!(
                "peer-to-peer on {} as {} (trusting {} operators)",
                shown.join(", "),
                identity.peer_id(),
                config.trust.len()
            );
            Some(Arc::new(P2p::new(
                client,
                store.clone(),
                records.clone(),
                config.policy(),
                metrics.clone(),
                config.peer_timeout,
            )))
        }
        None => None,
    };
    let fetcher = Fetcher::new(
        &config,
        store.clone(),
        upstream,
        records,
        p2p.clone(),
        metrics.clone(),
        tracker.clone(),
    );
    if let Some(p2p) = p2p.clone() {
        tracker.spawn(async move { p2p.announce_all().await });
    }
    let sync = Arc::new(Sync::new(
        fetcher.clone(),
        pins.clone(),
        config.changes_feed.clone(),
        config.changes_poll,
        config.pin_refresh,
    )?);
    tracker.spawn(sync.clone().run(cancel.clone()));
    let popularity = Arc::new(Popularity::default());
    if let Some(p2p) = p2p.clone() {
        gossip::spawn(
            &tracker,
            cancel.clone(),
            p2p,
            fetcher.clone(),
            pins.clone(),
            popularity.clone(),
            identity.clone(),
            config.popularity_interval,
        )
        .await?;
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let url = gateway_url(addr);
    let node = Arc::new(Node {
        fetcher,
        identity: identity.clone(),
        metrics,
        started: Instant::now(),
        gateway: config.public_url.clone().unwrap_or_else(|| url.clone()),
        data_dir: config.data_dir.clone(),
        pins: pins.clone(),
        sync: sync.clone(),
        popularity: popularity.clone(),
        keys: Mutex::new(()),
    });
    let token = admin::load_or_create_token(&config.data_dir)?;
    let router = admin::router(node.clone(), token).merge(gateway::router(
        node.clone(),
        gateway::Config {
            public_url: config.public_url.clone(),
            render_cache_bytes: (config.memory_cache_size / 2) as usize,
        },
    ));
    // Pin the upstream's registry keys on first start (init normally did it already).
    if !config.data_dir.join(KEYS_FILE).exists() && node.fetcher.upstream().is_some() {
        let n = node.clone();
        tracker.spawn(async move {
            if let Err(e) = n.keys().await {
                tracing::warn!(error = %e, "registry signing keys not pinned");
            }
        });
    }
    let stop = cancel.clone();
    tracker.spawn(async move {
        // Without TCP_NODELAY a streamed response waits ~40 ms on Nagle and delayed ACKs.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serve =
            axum::serve(listener, router).with_graceful_shutdown(stop.clone().cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "gateway failed");
            stop.cancel();
        }
    });
    let (st, stop, cap) = (store.clone(), cancel.clone(), config.max_cache_size);
    let ingested = node.fetcher.ingested().clone();
    tracker.spawn(async move {
        // Access times are batched: one sled write per interval, not one per request. The
        // cache cap is checked after every ingest and on the same interval.
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    let index = st.clone();
                    let persisted = tokio::task::spawn_blocking(move || index.index.persist_access()).await;
                    if let Ok(Err(e)) = persisted {
                        tracing::warn!(error = %e, "could not record access times");
                    }
                }
                _ = ingested.notified() => {}
            }
            match evict::evict(&st, &pins, cap).await {
                Ok(report) => {
                    if let Some(p2p) = &p2p {
                        for id in &report.evicted {
                            p2p.withdraw(id).await;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "eviction failed"),
            }
        }
    });
    let run = serde_json::json!({"gateway": url, "pid": std::process::id()});
    std::fs::write(config.data_dir.join(RUN_FILE), run.to_string()).context("writing node.json")?;
    tracing::info!(
        "open-registry listening on {url}/ (upstream: {}; operator: {}; data: {})",
        config
            .upstream
            .as_ref()
            .map_or("none".to_owned(), |u| u.to_string()),
        identity.peer_id(),
        config.data_dir.display()
    );
    Ok(NodeHandle {
        addr,
        url,
        node,
        store,
        cancel,
        tracker,
        data_dir: config.data_dir,
    })
}

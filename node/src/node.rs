//! A running node: the parts wired together, and a handle that shuts them down in order (stop
//! accepting, finish in-flight fetches, flush the store).
//!
//! This file only wires. What each part does is in its module: the store and pins
//! ([`crate::store`]), records and the operator key ([`crate::records`]), the network
//! ([`crate::net`], [`crate::peer`]), the gateway's connection limits (`crate::fdlimit`), the Fetcher and the upstream ([`crate::fetch`]),
//! background work ([`crate::tasks`]), the network's public operation ([`crate::public`]), the operator routes ([`crate::admin`]), the versions held back
//! ([`crate::withhold`]) and the gateway's view of it all ([`crate::registry`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use open_registry_gateway::{self as gateway, MemoryBudget, Registry as _};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin};
use crate::advisory::AdvisoryBook;
use crate::advisory::routes::AdvisoryApi;
use crate::config::{Config, gateway_url};
use crate::fdlimit;
use crate::fetch::keys::KEYS_FILE;
use crate::fetch::{self, Fetcher, upstream};
use crate::history::History;
use crate::metrics::Metrics;
use crate::net;
use crate::peer::popularity::Popularity;
use crate::peer::{self, Peers, PointerValidator, StoreSource};
use crate::public::{Book, OwnStatement, Reporter};
use crate::records::{Identity, Records};
use crate::registry::Node;
use crate::search::{self, SearchIndex};
use crate::store::Store;
use crate::store::pins::Pins;
use crate::tasks::advisories::{Advisories, Publisher};
use crate::tasks::gossip::Gossip;
use crate::tasks::maintenance::Maintenance;
use crate::tasks::public::Public;
use crate::tasks::sync::Sync;
use crate::withhold::{Cooldown, FirstSeen, Holds};

/// The file in the data dir naming the running node's gateway, for `status` and for tests.
pub const RUN_FILE: &str = "node.json";

/// Where a node's peer-to-peer network listens and who can reach it (for `start`'s banner).
#[derive(Debug, Clone)]
pub struct P2pListen {
    /// The listen addresses as bound (with the every-interface IP where that was asked for).
    pub addrs: Vec<net::Multiaddr>,
    /// Who can reach them.
    pub reach: net::Reach,
    /// The Kademlia mode, in words.
    pub kad: &'static str,
}

/// A started node. Dropping it without [`NodeHandle::shutdown`] stops the tasks abruptly.
#[derive(Debug)]
pub struct NodeHandle {
    /// Where the gateway listens.
    pub addr: SocketAddr,
    /// The gateway's URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// Where the peer-to-peer network listens, unless it is off.
    pub p2p: Option<P2pListen>,
    store: Arc<Store>,
    popularity: Arc<Popularity>,
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
        if let Err(e) = self.popularity.save(&self.store.index).await {
            tracing::warn!(error = %e, "could not save the popularity counts");
        }
        self.store.close().await.context("flushing the store")?;
        let _ = std::fs::remove_file(self.data_dir.join(RUN_FILE));
        tracing::info!("stopped; store flushed");
        Ok(())
    }
}

/// Opens the store, joins the network, binds the gateway and starts serving.
pub async fn start(config: Config) -> anyhow::Result<NodeHandle> {
    let fd_limit = fdlimit::raise_limit();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let clock = config.clock.clone();
    let store = Arc::new(Store::open(&config.data_dir, clock.clone()).await?);
    let metrics = Arc::new(Metrics::default());
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    // One packument memory for the upstream's bodies and the fetcher's reads alike.
    let memory = MemoryBudget::new(config.packument_memory);
    let upstream = upstream::Client::new(&config, metrics.clone())
        .context("building the upstream HTTP client")?
        .map(|u| {
            let u = u.with_memory(upstream::body::Memory {
                budget: memory.clone(),
                spill: store.blobs.tmp_dir().to_owned(),
            });
            Arc::new(u) as Arc<dyn upstream::Source>
        });
    let identity = Identity::load_or_create(&config.data_dir)?;
    let records = Arc::new(Records::open(
        &store.index,
        identity.clone(),
        config.record_ttl,
        clock.clone(),
    )?);
    let pins = Arc::new(Pins::open(&store.index, clock.clone())?);
    let (peers, p2p) = match &config.p2p {
        Some(net_config) => {
            let (peers, listen) = join_network(
                &config, net_config, &identity, &store, &records, &metrics, &tracker, &cancel,
            )
            .await?;
            (Some(peers), Some(listen))
        }
        None => (None, None),
    };
    let first_seen = match config.min_release_age {
        Some(_) => Some(Arc::new(FirstSeen::open(&store.index)?)),
        None => None,
    };
    // Signed advisories and their quorum: what the withholding side asks, besides the
    // release cooldown.
    let advisories = Arc::new(AdvisoryBook::open(
        &store.index,
        identity.peer_id(),
        config.policy(),
        config.advisory_threshold(),
        clock.clone(),
    )?);
    let holds = Arc::new(Holds::new(
        config
            .min_release_age
            .map(|age| Cooldown::new(age, &config.cooldown_exempt)),
        Some(advisories.clone() as Arc<dyn crate::withhold::AdvisoryHolds>),
        first_seen.clone(),
        clock.clone(),
        (config.memory_cache_size / 8).max(4 << 20),
    ));
    let fetcher = Fetcher::new(
        &config,
        fetch::Sources {
            store: store.clone(),
            records,
            upstream,
            peers: peers.clone().map(|p| p as Arc<dyn peer::Source>),
            memory,
            first_seen,
        },
        metrics.clone(),
        tracker.clone(),
    );
    if let Some(p) = peers.clone() {
        tracker.spawn(async move { p.announce_all().await });
    }
    let sync = Arc::new(Sync::new(
        fetcher.clone(),
        pins.clone(),
        config.changes_feed.clone(),
        config.changes_poll,
        config.pin_refresh,
        clock.clone(),
    )?);
    tracker.spawn(sync.clone().run(cancel.clone()));
    let popularity = Arc::new(Popularity::open(&store.index, clock.clone())?);
    let popularity_kept = popularity.clone();
    let history = Arc::new(History::open(&store.index, clock.clone())?);
    let search = Arc::new(SearchIndex::new());
    search::watch::spawn(
        search.clone(),
        store.clone(),
        fetcher.memory().clone(),
        &tracker,
        cancel.clone(),
    );
    if let Some(p) = peers.clone() {
        Gossip {
            peers: p,
            fetcher: fetcher.clone(),
            pins: pins.clone(),
            popularity: popularity.clone(),
            identity: identity.clone(),
            interval: config.popularity_interval,
        }
        .spawn(&tracker, cancel.clone())
        .await?;
    }
    let traffic = Arc::new(gateway::Traffic::default());
    let book = Arc::new(Book::new(
        identity.peer_id(),
        config.policy(),
        clock.clone(),
    ));
    Public {
        book: book.clone(),
        reporter: Arc::new(Reporter::new(clock.now_ms(), config.report_interval)),
        statement: Arc::new(OwnStatement::open(&store.index, &config.data_dir)?),
        identity: identity.clone(),
        fetcher: fetcher.clone(),
        metrics: metrics.clone(),
        traffic: traffic.clone(),
        pins: pins.clone(),
        sync: sync.clone(),
        peers: peers.clone(),
        history: history.clone(),
        popularity: popularity.clone(),
        clock: clock.clone(),
        interval: config.report_interval,
    }
    .spawn(&tracker, cancel.clone())
    .await?;
    let publisher = Arc::new(Publisher {
        peers: peers.clone(),
    });
    Advisories {
        book: advisories.clone(),
        publisher: publisher.clone(),
        interval: config.report_interval,
    }
    .spawn(&tracker, cancel.clone())
    .await?;
    tracker.spawn(
        Maintenance {
            store: store.clone(),
            pins: pins.clone(),
            peers: peers.clone(),
            cap: config.max_cache_size,
            ingested: fetcher.ingested().clone(),
        }
        .run(cancel.clone()),
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let url = gateway_url(addr);
    let views = Arc::new(crate::public::Views {
        book: book.clone(),
        advisories: advisories.clone(),
        holds: holds.clone(),
    });
    let node = Arc::new(Node {
        fetcher: fetcher.clone(),
        operator: identity.peer_id(),
        metrics,
        started: Instant::now(),
        gateway: config.public_url.clone().unwrap_or_else(|| url.clone()),
        data_dir: config.data_dir.clone(),
        sync,
        popularity: popularity.clone(),
        keys: Mutex::new(()),
        search,
        views: views.clone(),
        holds,
    });
    let token = admin::token::load_or_create(&config.data_dir)?;
    let advisory_api = Arc::new(AdvisoryApi {
        book: advisories.clone(),
        store: store.clone(),
        identity: identity.clone(),
        publisher,
        token: token.clone(),
    });
    let admin = Arc::new(Admin {
        fetcher: fetcher.clone(),
        pins,
        peers,
        popularity,
        book,
        views,
        history,
        token,
    });
    let router = admin::router(admin).merge(gateway::router(
        node.clone(),
        gateway::Config {
            public_url: config.public_url.clone(),
            render_cache_bytes: (config.memory_cache_size / 2) as usize,
            render_spill_dir: Some(store.blobs.tmp_dir().join("rendered")),
            traffic: Some(traffic),
        },
    ));
    let router = router.merge(crate::advisory::routes::router(advisory_api));
    // Pin the upstream's registry keys on first start (init normally did it already).
    if !config.data_dir.join(KEYS_FILE).exists() && fetcher.upstream().is_some() {
        let n = node.clone();
        tracker.spawn(async move {
            if let Err(e) = n.keys().await {
                tracing::warn!(error = %e, "registry signing keys not pinned");
            }
        });
    }
    let mut limits = config.connections.clone();
    limits.max_connections = fdlimit::connection_cap(limits.max_connections, fd_limit);
    if limits.max_connections < config.connections.max_connections {
        tracing::warn!(
            max_connections = limits.max_connections,
            configured = config.connections.max_connections,
            "max_connections lowered to fit the file descriptor limit"
        );
    }
    let stop = cancel.clone();
    tracker.spawn(async move {
        if let Err(e) = gateway::serve(listener, router, limits, stop.clone()).await {
            tracing::error!(error = %e, "gateway failed");
            stop.cancel();
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
        p2p,
        store,
        popularity: popularity_kept,
        cancel,
        tracker,
        data_dir: config.data_dir,
    })
}

/// Starts the network layer over the store and wraps it for the read path.
#[allow(clippy::too_many_arguments)]
async fn join_network(
    config: &Config,
    net_config: &net::Config,
    identity: &Identity,
    store: &Arc<Store>,
    records: &Arc<Records>,
    metrics: &Arc<Metrics>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<(Arc<Peers>, P2pListen)> {
    let source = Arc::new(StoreSource::new(store.clone(), records.clone()));
    let (client, bound) = net::spawn(
        net::Config {
            metrics: Some(metrics.clone()),
            ..net_config.clone()
        },
        identity,
        source,
        Arc::new(PointerValidator::new(config.clock.clone())),
        tracker.clone(),
        cancel.clone(),
    )
    .await
    .context("starting the peer-to-peer network")?;
    let addrs = net::reach::shown_addrs(&net_config.listen, &bound);
    let listen = P2pListen {
        reach: net::reachability(&addrs, &net_config.external),
        kad: net::kad_mode(net_config),
        addrs,
    };
    let shown: Vec<String> = listen.addrs.iter().map(ToString::to_string).collect();
    tracing::info!(
        "peer-to-peer on {} as {} (trusting {} operators): {}; Kademlia {}",
        shown.join(", "),
        identity.peer_id(),
        config.trust.len(),
        listen.reach,
        listen.kad,
    );
    let peers = Arc::new(Peers::new(
        client,
        store.clone(),
        records.clone(),
        config.policy(),
        metrics.clone(),
        config.clock.clone(),
        config.peer_timeout,
    ));
    Ok((peers, listen))
}

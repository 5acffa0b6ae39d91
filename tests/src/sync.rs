//! Pins, the cache budget and staying in sync: what `tests/tests/sync.rs` reads off nodes, the
//! fake upstream's changes feed, and the DHT.
//!
//! - [`DhtProbe`]: a bare libp2p peer of our network in this process (the node's own network
//!   layer, serving nothing), to ask the DHT who provides a blob, as any newcomer would.
//! - [`feed_requests`]: the changes-feed requests the fake upstream saw, with their `since`.
//! - [`sync_status`], [`pins`], [`popular`], [`operator_id`], [`p2p_addr`]: a node's lag report,
//!   pin list, popularity aggregate, operator id and dialable peer address.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result, anyhow, ensure};
use open_registry_node::{
    Identity, PointerValidator,
    net::{self, Client, Multiaddr},
};
use open_registry_protocol::{
    BlobId,
    record::{Record, Signed},
    status::SyncStatus,
};
use serde_json::Value;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{FakeUpstream, Node, node::cli, probe};

/// How long a CLI command may take in these tests.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A libp2p peer that serves nothing and stores only valid pointers: a newcomer asking the DHT.
pub struct DhtProbe {
    /// Its peer id.
    pub peer: String,
    client: Client,
    cancel: CancellationToken,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for DhtProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtProbe")
            .field("peer", &self.peer)
            .finish()
    }
}

impl DhtProbe {
    /// Starts a peer with the key made from `seed` on `127.0.0.1:0`, dialing `bootstrap`
    /// (`…/p2p/ID` addresses).
    pub fn start(seed: u8, bootstrap: &[&str]) -> Result<DhtProbe> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("dht-probe-{seed}"))
            .enable_all()
            .build()
            .context("building the probe's runtime")?;
        let identity = Identity::from_seed([seed; 32]);
        let mut config = net::Config::loopback();
        config.bootstrap = bootstrap
            .iter()
            .map(|a| a.parse().with_context(|| format!("bootstrap address {a}")))
            .collect::<Result<Vec<Multiaddr>>>()?;
        let cancel = CancellationToken::new();
        let (client, _) = rt
            .block_on(net::spawn(
                config,
                &identity,
                Arc::new(net::NoBlobs),
                Arc::new(PointerValidator::default()),
                TaskTracker::new(),
                cancel.clone(),
            ))
            .context("starting the probe's network")?;
        let peer = client.local_peer_id().to_string();
        eprintln!("[sync] DHT probe {peer} bootstrapping to {bootstrap:?}");
        Ok(DhtProbe {
            peer,
            client,
            cancel,
            rt: Some(rt),
        })
    }

    fn rt(&self) -> Result<&tokio::runtime::Runtime> {
        self.rt
            .as_ref()
            .ok_or_else(|| anyhow!("the probe was stopped"))
    }

    /// Waits until the probe's routing table holds at least `n` peers.
    pub fn wait_routing_table(&self, n: usize, timeout: Duration) -> Result<()> {
        probe::wait_for(
            timeout,
            &format!("the probe's routing table to hold {n}"),
            || {
                self.rt()
                    .ok()?
                    .block_on(self.client.peers())
                    .ok()
                    .filter(|p| p.routing_table_size >= n)
            },
        )
        .map(drop)
    }

    /// The peers the DHT names as providers of `id` within `deadline` (peer ids as text).
    pub fn providers(&self, id: &BlobId, deadline: Duration) -> Result<Vec<String>> {
        let found = self
            .rt()?
            .block_on(self.client.find_providers(id, 20, deadline))
            .map_err(|e| anyhow!("find_providers {id}: {e}"))?;
        Ok(found.iter().map(ToString::to_string).collect())
    }

    /// Asks for providers of `id` until `peer` is among them (a provider record may take a
    /// moment to land), or fails after `timeout`.
    pub fn wait_provider(&self, id: &BlobId, peer: &str, timeout: Duration) -> Result<()> {
        probe::wait_for(
            timeout,
            &format!("{peer} to be listed as provider of {id}"),
            || {
                self.providers(id, Duration::from_secs(3))
                    .ok()
                    .filter(|p| p.iter().any(|x| x == peer))
            },
        )
        .map(drop)
    }
}

impl Drop for DhtProbe {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// One request to the fake upstream's changes feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRequest {
    /// The raw path and query.
    pub raw: String,
    /// The `since` parameter (`"now"` or a number), if sent.
    pub since: Option<String>,
}

impl FeedRequest {
    /// `since` as a number (`None` for `now` or when absent).
    pub fn since_seq(&self) -> Option<u64> {
        self.since.as_deref().and_then(|s| s.parse().ok())
    }
}

/// The changes-feed requests the upstream saw (since its last `reset_hits`), in order.
pub fn feed_requests(up: &FakeUpstream) -> Vec<FeedRequest> {
    up.requests()
        .into_iter()
        .filter(|r| r.path == "/_changes")
        .map(|r| {
            let query = r.raw.split_once('?').map_or("", |(_, q)| q);
            let since = query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| *k == "since")
                .map(|(_, v)| v.to_owned());
            FeedRequest { raw: r.raw, since }
        })
        .collect()
}

/// The upstream requests other than the changes feed, as normalised paths, in order.
pub fn data_requests(up: &FakeUpstream) -> Vec<String> {
    up.requests()
        .into_iter()
        .filter(|r| r.path != "/_changes")
        .map(|r| r.path)
        .collect()
}

/// The node's sync report (`status.sync`).
pub fn sync_status(node: &impl Node) -> Result<SyncStatus> {
    node.status()?
        .sync
        .ok_or_else(|| anyhow!("{} reports no sync section", node.gateway()))
}

/// `GET /-/open-registry/pins`: package name → pinned versions.
pub fn pins(node: &impl Node) -> Result<BTreeMap<String, Vec<String>>> {
    let r = node.get("/-/open-registry/pins", &[])?;
    ensure!(r.status == 200, "pins answered {}: {}", r.status, r.text());
    pins_of(&probe::json(&r)?)
}

/// Package name → pinned versions, from the pin list's JSON (`pin ls --json` prints the same).
pub fn pins_of(v: &Value) -> Result<BTreeMap<String, Vec<String>>> {
    v["pins"]
        .as_array()
        .ok_or_else(|| anyhow!("no pins array: {v}"))?
        .iter()
        .map(|p| {
            let name = p["name"]
                .as_str()
                .ok_or_else(|| anyhow!("a pin without a name: {p}"))?;
            let versions = p["versions"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            Ok((name.to_owned(), versions))
        })
        .collect()
}

/// `GET /-/open-registry/popular?limit=N`: (operators heard from, [(name, count)]).
pub fn popular(node: &impl Node, limit: usize) -> Result<(u64, Vec<(String, u64)>)> {
    let r = node.get(&format!("/-/open-registry/popular?limit={limit}"), &[])?;
    ensure!(
        r.status == 200,
        "popular answered {}: {}",
        r.status,
        r.text()
    );
    let v = probe::json(&r)?;
    let operators = v["operators"]
        .as_u64()
        .ok_or_else(|| anyhow!("no operators: {v}"))?;
    let packages = v["packages"]
        .as_array()
        .ok_or_else(|| anyhow!("no packages: {v}"))?
        .iter()
        .map(|p| {
            Ok((
                p["name"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no name: {p}"))?
                    .to_owned(),
                p["count"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("no count: {p}"))?,
            ))
        })
        .collect::<Result<_>>()?;
    Ok((operators, packages))
}

/// `open-registry id --data-dir DIR`: the operator id, creating the key if there is none (so a
/// node's id is known before it starts).
pub fn operator_id(data_dir: &Path) -> Result<String> {
    let dir = data_dir
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", data_dir.display()))?;
    let out = cli(&["id", "--data-dir", dir], CLI_TIMEOUT)?.ok()?;
    let id = out.stdout.trim().to_owned();
    ensure!(id.starts_with("12D3KooW"), "`id` printed {:?}", out.stdout);
    Ok(id)
}

/// The node's operator id and dialable `/ip4/127.0.0.1/tcp/PORT/p2p/ID` address.
pub fn p2p_addr(node: &impl Node) -> Result<(String, String)> {
    let r = node.get("/-/open-registry/peers", &[])?;
    ensure!(r.status == 200, "peers answered {}: {}", r.status, r.text());
    let v = probe::json(&r)?;
    let id = v["peer_id"]
        .as_str()
        .ok_or_else(|| anyhow!("no peer_id in {v}"))?
        .to_owned();
    let listen = v["listen"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
        .ok_or_else(|| anyhow!("no loopback TCP listen address in {v}"))?;
    Ok((id.clone(), format!("{listen}/p2p/{id}")))
}

/// Whether the node's store holds blob `id` (`GET /-/open-registry/blobs/<cid>`: 200 or 404).
/// Reading a blob this way does not count as a use for eviction.
pub fn has_blob(node: &impl Node, id: &BlobId) -> Result<bool> {
    let r = node.get(&format!("/-/open-registry/blobs/{id}"), &[])?;
    match r.status {
        200 => {
            ensure!(BlobId::of(&r.body) == *id, "blob {id}: the bytes differ");
            Ok(true)
        }
        404 => Ok(false),
        s => Err(anyhow!("blob {id} answered {s}: {}", r.text())),
    }
}

/// The record `operator` signed for `name`, as `node` serves it (signature checked).
pub fn operator_record(node: &impl Node, operator: &str, name: &str) -> Result<Record> {
    let r = node.get(&format!("/-/open-registry/records/{name}"), &[])?;
    ensure!(
        r.status == 200,
        "records of {name} answered {}: {}",
        r.status,
        r.text()
    );
    let v = probe::json(&r)?;
    for j in v["records"]
        .as_array()
        .ok_or_else(|| anyhow!("no records array: {v}"))?
    {
        let signed = Signed::from_json(j).map_err(|e| anyhow!("{e}: {j}"))?;
        if signed.signer.to_string() == operator {
            let verified = signed
                .verify()
                .map_err(|e| anyhow!("{operator}'s record for {name}: {e}"))?;
            return Ok(verified.get().clone());
        }
    }
    Err(anyhow!(
        "{} serves no record of {operator} for {name}",
        node.gateway()
    ))
}

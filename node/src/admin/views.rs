//! The operator routes' answers, built as the typed views of `open_registry_protocol::admin`.

use std::time::Duration;

use futures::StreamExt as _;
use open_registry_gateway::Error;
use open_registry_protocol::admin::{
    Connected, Peers, PinAdded, PinList, Pinned, Popular, PopularPackage, Unpinned,
};
use open_registry_protocol::pointer::provider_key;
use open_registry_protocol::{BlobId, PackageName};

use super::Admin;

/// How long the provider count of one pinned package may take.
const PROVIDERS_DEADLINE: Duration = Duration::from_secs(2);

/// An internal failure: its detail goes to the log (through the gateway's error), not the client.
fn internal(e: impl std::fmt::Display) -> Error {
    Error::Internal(e.to_string())
}

impl Admin {
    /// The pin list. `providers` is, per package, how many nodes announce the package on the
    /// network (this node included), for a package with a pinned tarball stored.
    pub(crate) async fn pin_list(&self) -> Result<PinList, Error> {
        let (store, pins) = (self.fetcher.store().clone(), self.pins.clone());
        // Per-file stats and sled reads: off the runtime.
        let rows = tokio::task::spawn_blocking(move || {
            let mut rows = Vec::new();
            for (name, e) in pins.list()? {
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
            Ok::<_, crate::store::IndexError>(rows)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        // Nodes announce packages, not tarballs: one lookup per pinned package that has a
        // tarball here.
        let keys: Vec<Option<BlobId>> = rows
            .iter()
            .map(|r| (!r.3.is_empty()).then(|| provider_key(&r.0)))
            .collect();
        let counts: Vec<Option<u64>> = futures::stream::iter(keys)
            .map(|key| async move {
                let peers = self.peers.as_ref()?;
                let n = peers
                    .client()
                    .find_providers(&key?, 20, PROVIDERS_DEADLINE)
                    .await
                    .map_or(0, |v| v.len() as u64);
                Some(n + 1)
            })
            .buffered(8)
            .collect()
            .await;
        let pins = rows
            .into_iter()
            .zip(counts)
            .map(|((name, e, size, _), providers)| Pinned {
                name: name.to_string(),
                versions: e.versions,
                size,
                since: e.since,
                providers,
            })
            .collect();
        Ok(PinList { pins })
    }

    /// Fetches (if needed), verifies, stores and pins one version.
    pub(crate) async fn pin(&self, name: &PackageName, version: &str) -> Result<PinAdded, Error> {
        let (file, id, size) = self.fetcher.ensure_version(name, version).await?;
        self.pins
            .add(&self.fetcher.store().index, name, version, &file)
            .await
            .map_err(internal)?;
        tracing::info!(%name, version, "pinned");
        Ok(PinAdded {
            name: name.to_string(),
            version: version.to_owned(),
            file,
            id: id.to_string(),
            size,
        })
    }

    /// Unpins every version of `name`.
    pub(crate) async fn unpin(&self, name: &PackageName) -> Result<Unpinned, Error> {
        let removed = self
            .pins
            .remove(&self.fetcher.store().index, name)
            .await
            .map_err(internal)?;
        if removed {
            tracing::info!(%name, "unpinned");
        }
        Ok(Unpinned {
            name: name.to_string(),
            removed,
        })
    }

    /// The peer-to-peer view; `None` without the network.
    pub(crate) async fn peers(&self) -> Result<Option<Peers>, Error> {
        let Some(peers) = &self.peers else {
            return Ok(None);
        };
        let i = peers.client().peers().await.map_err(internal)?;
        let rtts = peers.client().rtts();
        let strs = |v: &[crate::net::Multiaddr]| v.iter().map(ToString::to_string).collect();
        Ok(Some(Peers {
            peer_id: i.local.to_string(),
            listen: strs(&i.listen),
            external: strs(&i.external),
            kad_server: i.kad_server,
            reachability: i.reachability.as_str().to_owned(),
            relays: i.relays.iter().map(ToString::to_string).collect(),
            relay_offered: i.relay_offered,
            routing_table_size: i.routing_table_size as u64,
            connected: i
                .connected
                .iter()
                .map(|(p, a)| Connected {
                    peer_id: p.to_string(),
                    addrs: strs(a),
                    relayed: !a.is_empty() && a.iter().all(crate::net::reach::is_relayed),
                    dcutr_upgraded: i.dcutr.iter().find(|(d, _)| d == p).map(|(_, u)| *u),
                    rtt_us: rtts.get(p).map(|d| d.as_micros() as u64),
                })
                .collect(),
            provided: i.provided as u64,
            published: i.published as u64,
            announce_rate: i.announcer.rate.round() as u64,
            announce_cost: i.announcer.cost.round() as u64,
            announce_cycle_secs: i.announcer.cycle_secs,
            records_stored: i.records_stored as u64,
            provider_keys_stored: i.provider_keys_stored as u64,
            trusted: peers
                .policy()
                .trusted()
                .iter()
                .map(ToString::to_string)
                .collect(),
            trust_threshold: peers.policy().threshold() as u64,
        }))
    }

    /// The `limit` most requested packages, here and at trusted operators' nodes.
    pub(crate) fn popular(&self, limit: usize) -> Popular {
        let (top, operators) = self.popularity.top(limit);
        Popular {
            operators: operators as u64,
            packages: top
                .into_iter()
                .map(|(name, count)| PopularPackage {
                    name: name.to_string(),
                    count,
                })
                .collect(),
        }
    }
}

/// A held report or statement as JSON: its operator, what it says, and its signed wire form.
fn held_json<T: std::fmt::Debug>(
    id: &open_registry_protocol::PeerId,
    held: &crate::public::Held<T>,
    value: serde_json::Value,
) -> serde_json::Value {
    use base64::Engine as _;
    serde_json::json!({
        "operator": id.to_string(),
        "heard_ms": held.heard_ms,
        "value": value,
        "signed": base64::engine::general_purpose::STANDARD.encode(&held.wire),
    })
}

fn statement_json(s: &open_registry_protocol::statement::SignedStatement) -> serde_json::Value {
    serde_json::json!({"seq": s.seq, "at_ms": s.at_ms, "statement": s.statement})
}

/// Every report and statement held, with their signed wire forms.
pub(crate) fn reports(book: &crate::public::Book) -> serde_json::Value {
    let reports: Vec<serde_json::Value> = book
        .reports()
        .iter()
        .map(|(id, h)| {
            let r = &h.value;
            let v = serde_json::json!({
                "at_ms": r.at_ms, "seq": r.seq, "started_ms": r.started_ms,
                "window_ms": r.window_ms, "version": r.version, "values": r.values,
            });
            held_json(id, h, v)
        })
        .collect();
    let statements: Vec<serde_json::Value> = book
        .statements()
        .iter()
        .map(|(id, h)| held_json(id, h, statement_json(&h.value)))
        .collect();
    serde_json::json!({"reports": reports, "statements": statements})
}

/// This node's own statement, if it publishes one.
pub(crate) fn own_statement(book: &crate::public::Book) -> Option<serde_json::Value> {
    book.statements()
        .iter()
        .find(|(id, _)| *id == book.me())
        .map(|(id, h)| held_json(id, h, statement_json(&h.value)))
}

//! What the node does with gossip: act on new record pointers, collect popularity summaries,
//! and publish its own summary on an interval.
//!
//! A pointer is acted on only if a trusted operator signed it, it is newer than anything seen
//! from that operator for the package, and this node caches or pins the package; then the new
//! revision is taken from peers (verified under the trust policy) without contacting the
//! upstream. Messages are handled one at a time from bounded channels.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fetch::Fetcher;
use crate::net;
use crate::peer::P2p;
use crate::peer::popularity::Popularity;
use crate::records::identity::Identity;
use crate::store::pins::Pins;

/// Subscribes to the topics and starts the tasks.
#[allow(clippy::too_many_arguments)]
pub async fn spawn(
    tracker: &TaskTracker,
    cancel: CancellationToken,
    p2p: Arc<P2p>,
    fetcher: Arc<Fetcher>,
    pins: Arc<Pins>,
    popularity: Arc<Popularity>,
    identity: Identity,
    interval: Duration,
) -> anyhow::Result<()> {
    let mut records = p2p.client().subscribe(net::RECORDS_TOPIC).await?;
    let mut summaries = p2p.client().subscribe(net::POPULARITY_TOPIC).await?;

    let (p, stop) = (p2p.clone(), cancel.clone());
    tracker.spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = records.recv() => match m { Some(m) => m, None => return },
            };
            let Some(pointer) = p.interesting(&msg.data) else {
                continue;
            };
            let name = pointer.get().name.clone();
            let cached = matches!(fetcher.store().index.packument(&name), Ok(Some(_)));
            if !cached && !pins.is_pinned(&name).unwrap_or(false) {
                continue;
            }
            match fetcher.update_from_peers(&name, &pointer).await {
                Ok(_) => tracing::info!(%name, seq = pointer.get().seq, signer = %pointer.signer().short(), "updated from a gossiped record"),
                Err(e) => tracing::warn!(%name, error = %e, "could not take the gossiped revision"),
            }
        }
    });

    let (p, pop, stop) = (p2p.clone(), popularity.clone(), cancel.clone());
    tracker.spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = summaries.recv() => match m { Some(m) => m, None => return },
            };
            if pop.receive(&msg.data, p.policy()) {
                tracing::debug!(from = ?msg.source, "took a popularity summary");
            }
        }
    });

    tracker.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let wire = popularity.summary(&identity).to_bytes();
            if let Err(e) = p2p.client().publish(net::POPULARITY_TOPIC, wire).await {
                tracing::debug!(error = %e, "could not gossip the popularity summary");
            }
        }
    });
    Ok(())
}

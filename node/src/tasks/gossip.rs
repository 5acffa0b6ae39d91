//! What the node does with gossip: act on new record pointers, collect popularity summaries,
//! and publish its own summary on an interval.
//!
//! A pointer is acted on only if [`Peers::interesting`] says so (a trusted operator signed it,
//! it is newer than anything seen from that operator for the package) and this node caches or
//! pins the package; then the new revision is taken from peers (verified under the trust
//! policy) without contacting the upstream. Messages are handled one at a time from bounded
//! channels.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::every;
use crate::fetch::Fetcher;
use crate::net;
use crate::peer::Peers;
use crate::peer::popularity::Popularity;
use crate::records::Identity;
use crate::store::pins::Pins;

/// What the gossip tasks work with.
#[derive(Debug, Clone)]
pub(crate) struct Gossip {
    pub peers: Arc<Peers>,
    pub fetcher: Arc<Fetcher>,
    pub pins: Arc<Pins>,
    pub popularity: Arc<Popularity>,
    pub identity: Identity,
    /// How often this node's popularity summary goes out.
    pub interval: Duration,
}

impl Gossip {
    /// Subscribes to the topics and starts the tasks on `tracker`.
    pub(crate) async fn spawn(
        self,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut records = self.peers.client().subscribe(net::RECORDS_TOPIC).await?;
        let mut summaries = self.peers.client().subscribe(net::POPULARITY_TOPIC).await?;

        let (g, stop) = (self.clone(), cancel.clone());
        tracker.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = records.recv() => match m { Some(m) => m, None => return },
                };
                g.on_pointer(&msg.data).await;
            }
        });

        let (g, stop) = (self.clone(), cancel.clone());
        tracker.spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = summaries.recv() => match m { Some(m) => m, None => return },
                };
                if g.popularity.receive(&msg.data, g.peers.policy()) {
                    tracing::debug!(from = ?msg.source, "took a popularity summary");
                }
            }
        });

        tracker.spawn(async move {
            let this = &self;
            every(self.interval, &cancel, None, |_| async move {
                let wire = this.popularity.summary(&this.identity).to_bytes();
                if let Err(e) = this
                    .peers
                    .client()
                    .publish(net::POPULARITY_TOPIC, wire)
                    .await
                {
                    tracing::debug!(error = %e, "could not gossip the popularity summary");
                }
            })
            .await;
        });
        Ok(())
    }

    /// A record pointer heard on gossip.
    async fn on_pointer(&self, wire: &[u8]) {
        let Some(pointer) = self.peers.interesting(wire) else {
            return;
        };
        let name = pointer.get().name.clone();
        let cached = matches!(self.fetcher.store().index.packument(&name), Ok(Some(_)));
        if !cached && !self.pins.is_pinned(&name).unwrap_or(false) {
            return;
        }
        match self.fetcher.update_from_peers(&name, &pointer).await {
            Ok(_) => {
                tracing::info!(%name, seq = pointer.get().seq, signer = %pointer.signer().short(), "updated from a gossiped record")
            }
            Err(e) => {
                tracing::warn!(%name, error = %crate::errors::chain(&e), "could not take the gossiped revision")
            }
        }
    }
}

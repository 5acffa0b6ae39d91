//! Moving advisories between nodes: every advisory heard on the advisories topic goes into the
//! book (which refuses and counts what is forged, rolled back, expired or oversized); this
//! operator's own advisories and withdrawals are gossiped and put in the DHT (under
//! `/open-registry/advisories/v1/<name>/<operator>`) when they are signed, and again every
//! `report_interval`, so nodes that join later learn them.
//!
//! Without the peer-to-peer network the book still enforces this operator's own advisories.

use std::sync::Arc;
use std::time::Duration;

use open_registry_protocol::advisory;
use open_registry_protocol::record::Signed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::every;
use crate::advisory::AdvisoryBook;
use crate::net;
use crate::peer::Peers;

/// Publishes this operator's signed advisories: gossip and the DHT.
#[derive(Debug)]
pub(crate) struct Publisher {
    pub peers: Option<Arc<Peers>>,
}

impl Publisher {
    /// Gossips `wire` (a signed advisory of this operator) and puts it in the DHT.
    pub(crate) async fn publish(&self, wire: &[u8]) {
        let Some(peers) = &self.peers else { return };
        if let Err(e) = peers
            .client()
            .publish(net::ADVISORIES_TOPIC, wire.to_vec())
            .await
        {
            tracing::debug!(error = %e, "could not gossip an advisory");
        }
        let Some(key) = Signed::from_bytes(wire)
            .ok()
            .and_then(|s| Some((s.signer, s.verify_as::<advisory::Advisory>().ok()?)))
            .map(|(signer, a)| advisory::dht_key(&a.get().name, &signer))
        else {
            return;
        };
        if let Err(e) = peers.client().put_record(key, wire.to_vec()).await {
            tracing::debug!(error = %e, "could not put an advisory in the DHT");
        }
    }
}

/// The advisory tasks.
#[derive(Debug)]
pub(crate) struct Advisories {
    pub book: Arc<AdvisoryBook>,
    pub publisher: Arc<Publisher>,
    /// How often the own advisories are published again.
    pub interval: Duration,
}

impl Advisories {
    /// Subscribes to the advisories topic and starts the tasks on `tracker`.
    pub(crate) async fn spawn(
        self,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        if let Some(peers) = &self.publisher.peers {
            let mut rx = peers.client().subscribe(net::ADVISORIES_TOPIC).await?;
            let (book, stop) = (self.book.clone(), cancel.clone());
            tracker.spawn(async move {
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => return,
                        m = rx.recv() => match m { Some(m) => m, None => return },
                    };
                    if let Err(why) = book.take(&msg.data) {
                        tracing::debug!(from = ?msg.source, ?why, "refused a gossiped advisory");
                    }
                }
            });
        }
        tracker.spawn(async move {
            let this = &self;
            every(self.interval, &cancel, None, |_| this.tick()).await;
        });
        Ok(())
    }

    /// Drops what expired and publishes the own advisories again.
    async fn tick(&self) {
        self.book.prune();
        for wire in self.book.own_wires() {
            self.publisher.publish(&wire).await;
        }
    }
}

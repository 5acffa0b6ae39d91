//! Keeping the store in shape while the node runs: the audit after a crash, access times written
//! in batches, and the cache budget enforced after every ingest and on an interval, evicted
//! blobs withdrawn from the DHT.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Tick, every};
use crate::peer::Peers;
use crate::store::Store;
use crate::store::evict;
use crate::store::pins::Pins;

/// How often access times are written (one sled write per interval, not one per request).
pub(crate) const ACCESS_INTERVAL: Duration = Duration::from_secs(30);

/// The store's upkeep.
#[derive(Debug)]
pub(crate) struct Maintenance {
    pub store: Arc<Store>,
    pub pins: Arc<Pins>,
    pub peers: Option<Arc<Peers>>,
    /// The disk budget (0: unbounded).
    pub cap: u64,
    /// Notified after every blob stored.
    pub ingested: Arc<Notify>,
}

impl Maintenance {
    /// Runs until `cancel` fires: one eviction pass at once, then one on every ingest and
    /// every [`ACCESS_INTERVAL`], after writing the access times.
    pub(crate) async fn run(self, cancel: CancellationToken) {
        if self.store.needs_audit() {
            // After a crash: correct the totals and the access order first (a walk of the blob
            // directory, in the background; the node serves meanwhile).
            if let Err(e) = self.store.audit().await {
                tracing::warn!(error = %e, "the store audit failed; eviction stays off until a clean restart");
            }
        }
        self.evict().await;
        let this = &self;
        every(
            ACCESS_INTERVAL,
            &cancel,
            Some(&self.ingested),
            |why| async move {
                if why == Tick::Period {
                    let store = this.store.clone();
                    let persisted =
                        tokio::task::spawn_blocking(move || store.index.persist_access()).await;
                    if let Ok(Err(e)) = persisted {
                        tracing::warn!(error = %e, "could not record access times");
                    }
                }
                this.evict().await;
            },
        )
        .await;
    }

    async fn evict(&self) {
        match evict::evict(&self.store, &self.pins, self.cap).await {
            Ok(report) => {
                if let Some(peers) = &self.peers
                    && !report.packages.is_empty()
                {
                    peers.withdraw_emptied(&report.packages).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "eviction failed"),
        }
    }
}

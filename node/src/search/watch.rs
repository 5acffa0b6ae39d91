//! Keeps the [`SearchIndex`] up to date with the store: every packument the store holds at
//! start, then every revision stored or removed after (a sled subscription on the packument
//! index, so whatever stores a packument, the Fetcher or sync, is seen without being told).
//!
//! Two tasks, so that sled's writers never wait on the index: one drains the subscription at
//! once into a map of pending names (bounded by the packages stored, one entry per name), the
//! other reads and indexes what is pending. Revalidations that change nothing (same revision)
//! cost a map lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use open_registry_gateway::MemoryBudget;
use open_registry_protocol::{BlobId, PackageName};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::SearchIndex;
use crate::store::Store;
use crate::store::index::PackumentEntry;

/// Packument entries listed at a time for the first pass.
const LIST_PAGE: usize = 1024;

/// Names whose packument changed, with the revision now stored (`None`: removed).
#[derive(Debug, Default)]
struct Pending {
    // std Mutex: held for a map update, never across an await.
    names: Mutex<HashMap<PackageName, Option<BlobId>>>,
    more: Notify,
}

impl Pending {
    fn push(&self, name: PackageName, revision: Option<BlobId>) {
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, revision);
        self.more.notify_one();
    }

    fn take(&self) -> HashMap<PackageName, Option<BlobId>> {
        std::mem::take(&mut *self.names.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Starts following `store` into `index` until `cancel`.
/// Packuments are read within `memory`, the node's packument memory, like a request's.
pub(crate) fn spawn(
    index: Arc<SearchIndex>,
    store: Arc<Store>,
    memory: MemoryBudget,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    let pending = Arc::new(Pending::default());
    // Subscribed before the listing below, so no change falls between them.
    let mut changes = store.index.watch_packuments();
    let drain = pending.clone();
    let stop = cancel.clone();
    tracker.spawn(async move {
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = &mut changes => event,
            };
            match event {
                Some(sled::Event::Insert { key, value }) => {
                    let name = std::str::from_utf8(&key)
                        .ok()
                        .and_then(|n| PackageName::parse(n).ok());
                    let entry = serde_json::from_slice::<PackumentEntry>(&value).ok();
                    if let (Some(name), Some(entry)) = (name, entry) {
                        drain.push(name, Some(entry.id));
                    }
                }
                Some(sled::Event::Remove { key }) => {
                    if let Some(name) = std::str::from_utf8(&key)
                        .ok()
                        .and_then(|n| PackageName::parse(n).ok())
                    {
                        drain.push(name, None);
                    }
                }
                None => return,
            }
        }
    });
    tracker.spawn(async move {
        // Page by page: a store of 100,000 packuments is never listed into memory at once.
        let mut after: Option<PackageName> = None;
        loop {
            let listing = {
                let store = store.clone();
                let after = after.clone();
                tokio::task::spawn_blocking(move || {
                    store
                        .index
                        .packument_entries_after(after.as_ref(), LIST_PAGE)
                })
                .await
            };
            let page = match listing {
                Ok(Ok(page)) => page,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "search index: cannot list packuments");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "search index: listing failed");
                    break;
                }
            };
            let Some((last, _)) = page.last() else {
                tracing::debug!(packages = index.len(), "search index built");
                break;
            };
            after = Some(last.clone());
            for (name, entry) in page {
                if cancel.is_cancelled() {
                    return;
                }
                reindex(&index, &store, &memory, name, Some(entry.id)).await;
            }
        }
        loop {
            for (name, revision) in pending.take() {
                reindex(&index, &store, &memory, name, revision).await;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = pending.more.notified() => {}
            }
        }
    });
}

/// Brings `name` in the index to `revision` (`None`: removes it).
async fn reindex(
    index: &Arc<SearchIndex>,
    store: &Store,
    memory: &MemoryBudget,
    name: PackageName,
    revision: Option<BlobId>,
) {
    let Some(revision) = revision else {
        index.remove(&name);
        return;
    };
    if index.has(&name, &revision) || index.full_without(&name) {
        return;
    }
    // Leased before it is read, and held until it is parsed (nothing else is held meanwhile).
    let lease = memory.lease(store.blobs.size(&revision).unwrap_or(0)).await;
    let bytes = match store.blobs.read(&revision).await {
        Ok(Some(b)) => b,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(%name, error = %e, "search index: packument unreadable");
            return;
        }
    };
    // Parsing a large packument is CPU work: off the runtime's workers.
    let index = index.clone();
    let done = tokio::task::spawn_blocking(move || {
        if let Err(e) = index.upsert(&name, revision, &bytes) {
            tracing::debug!(error = %e, "search index: package left out");
        }
        drop((bytes, lease));
    })
    .await;
    if let Err(e) = done {
        tracing::warn!(error = %e, "search index: indexing task failed");
    }
}

//! Staying in sync with the upstream without every node polling it.
//!
//! - **Changes feed** (when `changes_feed` is configured): follow a CouchDB-style feed
//!   (`GET <feed>?since=SEQ&limit=N` → `{"results": [{"seq", "id"}], "last_seq"}`) and refresh
//!   every pinned or cached package that changed. The last processed sequence is flushed to
//!   sled after each change, so a restart resumes exactly after the last change handled (a
//!   change interrupted mid-refresh is handled again, which is harmless: a refresh is
//!   idempotent). A node with no stored sequence starts at the feed's current position
//!   (`since=now`), not at the beginning of history.
//! - **Interval refresh** (without a feed): pinned packuments are revalidated on an interval,
//!   with conditional requests.
//! - Either way, every refresh that changes a packument is signed, announced in the DHT and
//!   gossiped (see [`crate::peer`]); nodes that hear of it fetch the new revision from peers.
//! - **Lag**: the feed's newest sequence against the processed one, and the age of the oldest
//!   pinned packument, reported in the status.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use open_registry_protocol::PackageName;
use open_registry_protocol::status::SyncStatus;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::every;
use crate::clock::Clock;
use crate::fetch::Fetcher;
use crate::store::IndexError;
use crate::store::pins::Pins;

/// The sled key of the last processed feed sequence.
const SEQ_KEY: &str = "changes_seq";
/// Changes asked for per request.
const BATCH: usize = 100;
/// The largest feed page read: a hundred changes are a few KiB; a feed that sends more is
/// broken or hostile.
pub(crate) const FEED_PAGE_CAP: u64 = 16 << 20;

/// What the sync tasks report.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// When the node last had processed everything the feed had (unix ms; its start at first).
    caught_up_ms: AtomicU64,
    upstream_seq: AtomicU64,
    processed_seq: AtomicU64,
    refreshed: AtomicU64,
    errors: AtomicU64,
}

/// The sync side of a node.
#[derive(Debug)]
pub(crate) struct Sync {
    fetcher: Arc<Fetcher>,
    pins: Arc<Pins>,
    meta: sled::Tree,
    feed: Option<Url>,
    poll: Duration,
    pin_refresh: Duration,
    clock: Clock,
    progress: Progress,
}

impl Sync {
    /// Sync for `fetcher`'s store; follows `feed` if given (through the fetcher's upstream),
    /// else refreshes pins every `pin_refresh`.
    pub(crate) fn new(
        fetcher: Arc<Fetcher>,
        pins: Arc<Pins>,
        feed: Option<Url>,
        poll: Duration,
        pin_refresh: Duration,
        clock: Clock,
    ) -> Result<Sync, IndexError> {
        let meta = fetcher.store().index.tree("meta")?;
        let progress = Progress::default();
        progress
            .caught_up_ms
            .store(clock.now_ms(), Ordering::Relaxed);
        if let Some(seq) = read_seq(&meta)? {
            progress.processed_seq.store(seq, Ordering::Relaxed);
            progress.upstream_seq.store(seq, Ordering::Relaxed);
        }
        Ok(Sync {
            fetcher,
            pins,
            meta,
            feed,
            poll,
            pin_refresh,
            clock,
            progress,
        })
    }

    /// Runs until cancelled: the feed follower, or the pin refresher.
    pub(crate) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        match self.feed.clone() {
            Some(feed) => self.follow(feed, cancel).await,
            None => self.refresh_pins(cancel).await,
        }
    }

    async fn follow(&self, feed: Url, cancel: CancellationToken) {
        tracing::info!(%feed, "following the upstream's changes feed");
        loop {
            let pause = match self.poll_once(&feed).await {
                Ok(0) => {
                    self.progress
                        .caught_up_ms
                        .store(self.clock.now_ms(), Ordering::Relaxed);
                    self.poll
                }
                Ok(_) => Duration::ZERO,
                Err(e) => {
                    self.progress.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "changes feed failed; retrying");
                    self.poll.max(Duration::from_secs(1))
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One request to the feed; returns how many changes it handled.
    pub(crate) async fn poll_once(&self, feed: &Url) -> anyhow::Result<usize> {
        let since = match read_seq(&self.meta)? {
            Some(s) => s.to_string(),
            None => "now".to_owned(),
        };
        let mut url = feed.clone();
        url.query_pairs_mut()
            .append_pair("since", &since)
            .append_pair("limit", &BATCH.to_string());
        let upstream = self
            .fetcher
            .upstream()
            .context("a changes feed needs an upstream")?;
        let page = upstream.feed(&url, FEED_PAGE_CAP).await?;
        let body: Value = tokio::task::spawn_blocking(move || serde_json::from_slice(&page))
            .await
            .context("parsing the feed page stopped")?
            .context("the changes feed did not answer JSON")?;
        let results = body
            .get("results")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let last = body.get("last_seq").and_then(seq_of);
        if let Some(last) = last {
            self.progress
                .upstream_seq
                .fetch_max(last, Ordering::Relaxed);
        }
        if results.is_empty() {
            // Nothing new: the feed's position is where we are (first start: `since=now`).
            if let Some(last) = last
                && read_seq(&self.meta)?.is_none_or(|s| s < last)
            {
                self.store_seq(last).await?;
            }
            return Ok(0);
        }
        for change in &results {
            let Some(seq) = change.get("seq").and_then(seq_of) else {
                continue;
            };
            if let Some(name) = change.get("id").and_then(Value::as_str) {
                self.on_change(name).await;
            }
            self.store_seq(seq).await?;
        }
        Ok(results.len())
    }

    async fn on_change(&self, id: &str) {
        let Ok(name) = PackageName::parse(id) else {
            return; // design documents and names npm would refuse
        };
        let index = &self.fetcher.store().index;
        let wanted = matches!(index.packument(&name), Ok(Some(_)))
            || self.pins.is_pinned(&name).unwrap_or(false);
        if !wanted {
            return;
        }
        let before = index.packument(&name).ok().flatten().map(|e| e.id);
        match self.fetcher.packument(&name, true).await {
            Ok(p) => {
                self.progress.refreshed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%name, "refreshed after an upstream change");
                // Its share of the packument memory goes back first: mirroring reads the
                // packument again, and nothing may wait for memory while holding some.
                let (id, bytes) = (p.id, p.bytes);
                if before != Some(id) {
                    self.mirror_tagged(&name, &bytes).await;
                }
            }
            Err(e) => {
                self.progress.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%name, error = %e, "refresh after an upstream change failed");
            }
        }
    }

    /// Stores the tarballs of every dist-tag's version of a changed package, so the record this
    /// node signs names them and peers without an upstream can install the new release.
    async fn mirror_tagged(&self, name: &PackageName, bytes: &[u8]) {
        let Ok(doc) = open_registry_protocol::packument::parse(name, bytes) else {
            return;
        };
        let mut versions: Vec<String> = doc
            .get("dist-tags")
            .and_then(Value::as_object)
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        versions.sort();
        versions.dedup();
        for v in versions {
            if let Err(e) = self.fetcher.ensure_version(name, &v).await {
                self.progress.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%name, version = %v, error = %e, "could not mirror a tagged version");
            }
        }
    }

    async fn store_seq(&self, seq: u64) -> Result<(), IndexError> {
        self.meta.insert(SEQ_KEY, &seq.to_be_bytes())?;
        self.fetcher.store().index.flush().await?;
        self.progress.processed_seq.store(seq, Ordering::Relaxed);
        Ok(())
    }

    async fn refresh_pins(&self, cancel: CancellationToken) {
        every(self.pin_refresh, &cancel, None, |_| async move {
            let Ok(pins) = self.pins.list() else { return };
            for (name, _) in pins {
                match self.fetcher.packument(&name, true).await {
                    Ok(_) => self.progress.refreshed.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(%name, error = %crate::errors::chain(&e), "pinned packument refresh failed");
                        self.progress.errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
        .await;
    }

    /// The lag report.
    pub(crate) fn status(&self) -> SyncStatus {
        let index = &self.fetcher.store().index;
        let now = self.clock.now_ms();
        let oldest = self
            .pins
            .list()
            .unwrap_or_default()
            .iter()
            .filter_map(|(n, _)| index.packument(n).ok().flatten())
            .map(|e| now.saturating_sub(e.checked_at) / 1000)
            .max();
        let upstream = self.progress.upstream_seq.load(Ordering::Relaxed);
        let processed = self.progress.processed_seq.load(Ordering::Relaxed);
        SyncStatus {
            changes_feed: self.feed.as_ref().map(ToString::to_string),
            upstream_seq: self.feed.as_ref().map(|_| upstream),
            processed_seq: self.feed.as_ref().map(|_| processed),
            lag: self
                .feed
                .as_ref()
                .map(|_| upstream.saturating_sub(processed)),
            oldest_pinned_age_secs: oldest,
            lag_secs: match &self.feed {
                Some(_) if processed >= upstream => Some(0),
                Some(_) => Some(
                    now.saturating_sub(self.progress.caught_up_ms.load(Ordering::Relaxed)) / 1000,
                ),
                None => oldest,
            },
            refreshed: self.progress.refreshed.load(Ordering::Relaxed),
            errors: self.progress.errors.load(Ordering::Relaxed),
        }
    }
}

fn read_seq(meta: &sled::Tree) -> Result<Option<u64>, IndexError> {
    Ok(meta
        .get(SEQ_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes))
}

/// A sequence as a number (npm's feeds use numbers; a CouchDB "N-opaque" string counts by N).
fn seq_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_str()
            .and_then(|s| s.split('-').next())
            .and_then(|n| n.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sequences() {
        assert_eq!(seq_of(&json!(42)), Some(42));
        assert_eq!(seq_of(&json!("17-g1AAAAB")), Some(17));
        assert_eq!(seq_of(&json!("junk")), None);
    }
}

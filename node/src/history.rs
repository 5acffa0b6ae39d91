//! The node's history: hourly buckets of its own counters and of the network totals, kept
//! [`KEPT_HOURS`] (90 days) in the store, for `GET /-/open-registry/history.json`.
//!
//! Each [`record`](History::record) is one sample into the bucket of the current hour (by the
//! injected [`Clock`]): window counts are added to what the hour holds, gauges replace it (the
//! last reading of the hour wins). Buckets live in the `history` tree of the node's sled index,
//! so they survive restarts; an hour in which nothing was recorded has no bucket.
//!
//! Layout of the tree:
//!
//! - key: one series byte (`n` for [`Series::Node`], `t` for [`Series::Network`], the network
//!   totals) then the hour's start as a big-endian u64 (unix ms). Big-endian keeps each series'
//!   buckets in time order, so a view and the pruning are range scans.
//! - value: the bucket's values as a compact JSON object, `{"errors":0,"requests":12}`
//!   (readable with any sled dump; a few hundred bytes an hour).
//!
//! Bounds: a bucket holds at most [`MAX_KEYS`] names of at most [`MAX_KEY_LEN`] bytes; a sample
//! naming more is kept without the extra names, with a warning. Two series of 2160 buckets of
//! 64 values each is the most the tree ever holds (a few MB). Each record drops the buckets that
//! fell out of the kept window with a range scan that stops at the cutoff, so pruning costs
//! what it removes, not what is kept.
//!
//! Durability: [`History::record`] writes to sled but does not flush; the node's next
//! [`Index::flush`] (any store write, the popularity save of the report tick, shutdown) makes it
//! durable. A crash loses at most the samples since then.

use std::collections::BTreeMap;
use std::sync::Mutex;

use open_registry_protocol::history::{Bucket, HOUR_MS, HistoryView, hour_start};

use crate::clock::Clock;
use crate::store::{Index, IndexError};

/// How many hours of buckets are kept: 90 days.
pub(crate) const KEPT_HOURS: u32 = 90 * 24;
/// Most names one bucket holds.
pub(crate) const MAX_KEYS: usize = 64;
/// Longest name a bucket takes, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 64;

/// Which series a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Series {
    /// This node's own counters.
    Node,
    /// The network totals, as this node's network view sums them.
    Network,
}

impl Series {
    /// The key's first byte.
    fn tag(self) -> u8 {
        match self {
            Series::Node => b'n',
            Series::Network => b't',
        }
    }
}

/// The tree key of `series`' bucket starting at `hour_ms`.
fn key(series: Series, hour_ms: u64) -> [u8; 9] {
    let mut k = [0; 9];
    k[0] = series.tag();
    k[1..].copy_from_slice(&hour_ms.to_be_bytes());
    k
}

/// The hour start a key names.
fn hour_of(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// The hourly buckets, over the `history` tree of the node's index.
#[derive(Debug)]
pub(crate) struct History {
    tree: sled::Tree,
    clock: Clock,
    /// Serializes the read-modify-write of a bucket, so two samples cannot lose one another.
    /// std Mutex, not tokio: never held across an await.
    writing: Mutex<()>,
}

impl History {
    /// Opens the `history` tree of `index`; hours are read off `clock`. Buckets that fell out
    /// of the kept window while the node was down are dropped now.
    pub(crate) fn open(index: &Index, clock: Clock) -> Result<History, IndexError> {
        let history = History {
            tree: index.tree("history")?,
            clock,
            writing: Mutex::new(()),
        };
        history.prune(history.clock.now_ms())?;
        Ok(history)
    }

    /// One sample: `adds` are added into the current hour's bucket (window counts: requests
    /// in the last report window...), `gauges` replace the bucket's value for the key (last
    /// value of the hour wins; a name in both ends with the gauge). Drops buckets older than
    /// [`KEPT_HOURS`]. Written to sled, durable at the node's next [`Index::flush`].
    pub(crate) async fn record(
        &self,
        series: Series,
        adds: &BTreeMap<String, u64>,
        gauges: &BTreeMap<String, u64>,
    ) -> Result<(), IndexError> {
        let now = self.clock.now_ms();
        let k = key(series, hour_start(now));
        {
            let _one = self.writing.lock().expect("history lock poisoned");
            let mut values = match self.tree.get(k)? {
                Some(v) => decode(&v).unwrap_or_else(|e| {
                    // One bad bucket must not stop the hour's samples: start it afresh.
                    tracing::warn!(?series, error = %e, "history bucket unreadable; replaced");
                    BTreeMap::new()
                }),
                None => BTreeMap::new(),
            };
            let mut refused = Refused::default();
            for (name, n) in adds {
                if let Some(v) = slot(&mut values, name, &mut refused) {
                    *v = v.saturating_add(*n);
                }
            }
            for (name, n) in gauges {
                if let Some(v) = slot(&mut values, name, &mut refused) {
                    *v = *n;
                }
            }
            if let Some(first) = refused.first {
                tracing::warn!(
                    ?series,
                    refused = refused.count,
                    first = %first,
                    max_keys = MAX_KEYS,
                    max_key_len = MAX_KEY_LEN,
                    "history bucket full or name too long; values dropped"
                );
            }
            self.tree.insert(k, encode(&values))?;
        }
        self.prune(now)
    }

    /// The last `hours` hours of both series, the current one included (clamped to
    /// [`KEPT_HOURS`]; 0 gives empty series). A bucket that cannot be read is left out, with a
    /// warning.
    pub(crate) fn view(&self, hours: u32) -> HistoryView {
        let now = self.clock.now_ms();
        let hours = hours.min(KEPT_HOURS);
        let mut view = HistoryView {
            now_ms: now,
            hour_ms: HOUR_MS,
            kept_hours: KEPT_HOURS,
            ..HistoryView::default()
        };
        if hours == 0 {
            return view;
        }
        let to = hour_start(now);
        let from = to.saturating_sub(u64::from(hours - 1) * HOUR_MS);
        view.node = self.buckets(Series::Node, from, to);
        view.network = self.buckets(Series::Network, from, to);
        view
    }

    /// `series`' buckets starting from `from` to `to` (both included), oldest first.
    fn buckets(&self, series: Series, from: u64, to: u64) -> Vec<Bucket> {
        let mut out = Vec::new();
        for kv in self.tree.range(key(series, from)..=key(series, to)) {
            let (k, v) = match kv {
                Ok(kv) => kv,
                Err(e) => {
                    tracing::warn!(?series, error = %e, "reading the history failed");
                    break;
                }
            };
            match (hour_of(&k), decode(&v)) {
                (Some(at_ms), Ok(values)) => out.push(Bucket { at_ms, values }),
                (_, Err(e)) => tracing::warn!(?series, error = %e, "history bucket unreadable"),
                (None, _) => tracing::warn!(?series, "history key malformed"),
            }
        }
        out
    }

    /// Drops the buckets of both series that start before the kept window ending at `now`.
    fn prune(&self, now: u64) -> Result<(), IndexError> {
        let cutoff = hour_start(now).saturating_sub(u64::from(KEPT_HOURS - 1) * HOUR_MS);
        for series in [Series::Node, Series::Network] {
            // Collected first: the scan stops at the cutoff, so this holds only what goes.
            let old: Vec<sled::IVec> = self
                .tree
                .range(key(series, 0)..key(series, cutoff))
                .keys()
                .collect::<Result<_, _>>()?;
            for k in old {
                self.tree.remove(k)?;
            }
        }
        Ok(())
    }
}

/// Names a sample could not add to a full bucket (for one warning per sample).
#[derive(Debug, Default)]
struct Refused {
    count: usize,
    first: Option<String>,
}

/// The bucket's value for `name`, made if the bucket has room for it.
fn slot<'a>(
    values: &'a mut BTreeMap<String, u64>,
    name: &str,
    refused: &mut Refused,
) -> Option<&'a mut u64> {
    if !values.contains_key(name) {
        if values.len() >= MAX_KEYS || name.is_empty() || name.len() > MAX_KEY_LEN {
            refused.count += 1;
            refused.first.get_or_insert_with(|| {
                // Only its head: the name itself may be what is too long.
                name.chars().take(MAX_KEY_LEN).collect()
            });
            return None;
        }
        values.insert(name.to_owned(), 0);
    }
    values.get_mut(name)
}

fn encode(values: &BTreeMap<String, u64>) -> Vec<u8> {
    serde_json::to_vec(values).expect("a map of strings to numbers serializes")
}

fn decode(bytes: &[u8]) -> Result<BTreeMap<String, u64>, IndexError> {
    serde_json::from_slice(bytes).map_err(|e| IndexError::Corrupt(format!("history bucket: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR: Duration = Duration::from_millis(HOUR_MS);

    /// A manual clock moved to the start of the next hour, so a test knows where hours begin.
    fn clock_on_the_hour() -> Clock {
        let clock = Clock::manual();
        let now = clock.now_ms();
        clock.advance(Duration::from_millis(HOUR_MS - now % HOUR_MS));
        clock
    }

    fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    fn open(dir: &tempfile::TempDir, clock: &Clock) -> (Index, History) {
        let index = Index::open(&dir.path().join("db"), clock.clone()).unwrap();
        let history = History::open(&index, clock.clone()).unwrap();
        (index, history)
    }

    #[tokio::test]
    async fn adds_sum_within_the_hour_and_split_across_hours() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock_on_the_hour();
        let (_index, h) = open(&dir, &clock);
        let first = clock.now_ms();
        let none = BTreeMap::new();
        h.record(Series::Node, &map(&[("requests", 5), ("errors", 1)]), &none)
            .await
            .unwrap();
        clock.advance(Duration::from_secs(59 * 60));
        h.record(Series::Node, &map(&[("requests", 7)]), &none)
            .await
            .unwrap();
        // The next hour is a bucket of its own; the network series is apart from the node's.
        clock.advance(Duration::from_secs(60));
        h.record(Series::Node, &map(&[("requests", 2)]), &none)
            .await
            .unwrap();
        h.record(Series::Network, &map(&[("requests", 100)]), &none)
            .await
            .unwrap();
        let v = h.view(24);
        assert_eq!(v.now_ms, clock.now_ms());
        assert_eq!((v.hour_ms, v.kept_hours), (HOUR_MS, 2160));
        assert_eq!(
            v.node,
            vec![
                Bucket {
                    at_ms: first,
                    values: map(&[("errors", 1), ("requests", 12)]),
                },
                Bucket {
                    at_ms: first + HOUR_MS,
                    values: map(&[("requests", 2)]),
                },
            ]
        );
        assert_eq!(
            v.network,
            vec![Bucket {
                at_ms: first + HOUR_MS,
                values: map(&[("requests", 100)]),
            }]
        );
    }

    #[tokio::test]
    async fn gauges_keep_the_last_value_of_the_hour() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock_on_the_hour();
        let (_index, h) = open(&dir, &clock);
        let adds = map(&[("requests", 1)]);
        h.record(
            Series::Network,
            &adds,
            &map(&[("cached", 10), ("online", 3)]),
        )
        .await
        .unwrap();
        clock.advance(Duration::from_secs(600));
        h.record(Series::Network, &adds, &map(&[("cached", 8)]))
            .await
            .unwrap();
        // A name that is both a count and a gauge in one sample ends with the gauge.
        h.record(
            Series::Network,
            &map(&[("cached", 1000)]),
            &map(&[("cached", 9)]),
        )
        .await
        .unwrap();
        let v = h.view(1);
        assert_eq!(v.network.len(), 1);
        assert_eq!(
            v.network[0].values,
            map(&[("cached", 9), ("online", 3), ("requests", 2)])
        );
        assert!(v.node.is_empty());
    }

    #[tokio::test]
    async fn buckets_older_than_90_days_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock_on_the_hour();
        let (_index, h) = open(&dir, &clock);
        let none = BTreeMap::new();
        let first = clock.now_ms();
        h.record(Series::Node, &map(&[("requests", 1)]), &none)
            .await
            .unwrap();
        h.record(Series::Network, &map(&[("requests", 1)]), &none)
            .await
            .unwrap();
        // 2159 hours later the first hour is the oldest one kept.
        clock.advance(HOUR * (KEPT_HOURS - 1));
        h.record(Series::Node, &map(&[("requests", 2)]), &none)
            .await
            .unwrap();
        let v = h.view(KEPT_HOURS);
        assert_eq!(v.node.len(), 2);
        assert_eq!(v.node[0].at_ms, first);
        assert_eq!(v.network.len(), 1);
        assert_eq!(h.tree.len(), 3);
        // One hour more and it is gone from the store, in both series.
        clock.advance(HOUR);
        h.record(Series::Node, &map(&[("requests", 3)]), &none)
            .await
            .unwrap();
        assert_eq!(h.tree.len(), 2);
        let v = h.view(KEPT_HOURS);
        let hours: Vec<u64> = v.node.iter().map(|b| b.at_ms).collect();
        assert_eq!(
            hours,
            vec![
                first + u64::from(KEPT_HOURS - 1) * HOUR_MS,
                first + u64::from(KEPT_HOURS) * HOUR_MS
            ]
        );
        assert!(v.network.is_empty());
    }

    #[tokio::test]
    async fn old_buckets_go_when_the_store_is_reopened_after_a_long_stop() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock_on_the_hour();
        {
            let (index, h) = open(&dir, &clock);
            h.record(Series::Node, &map(&[("requests", 1)]), &BTreeMap::new())
                .await
                .unwrap();
            index.flush().await.unwrap();
        }
        clock.advance(HOUR * (KEPT_HOURS + 10));
        let (_index, h) = open(&dir, &clock);
        assert_eq!(h.tree.len(), 0);
    }

    #[tokio::test]
    async fn history_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock_on_the_hour();
        let at = clock.now_ms();
        {
            let (index, h) = open(&dir, &clock);
            h.record(
                Series::Node,
                &map(&[("requests", 4)]),
                &map(&[("cached", 2)]),
            )
            .await
            .unwrap();
            h.record(Series::Network, &map(&[("requests", 40)]), &BTreeMap::new())
                .await
                .unwrap();
            index.flush().await.unwrap();
        }
        clock.advance(Duration::from_secs(120));
        let (_index, h) = open(&dir, &clock);
        let v = h.view(168);
        assert_eq!(
            v.node,
            vec![Bucket {
                at_ms: at,
                values: map(&[("cached", 2), ("requests", 4)]),
            }]
        );
        assert_eq!(v.network[0].values, map(&[("requests", 40)]));
    }

    #[tokio::test]
    async fn view_clamps_hours() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock_on_the_hour();
        let (_index, h) = open(&dir, &clock);
        let first = clock.now_ms();
        for _ in 0..5 {
            h.record(Series::Node, &map(&[("requests", 1)]), &BTreeMap::new())
                .await
                .unwrap();
            clock.advance(HOUR * 500);
        }
        // Recorded at hours 0, 500, 1000, 1500 and 2000 from the first; now is hour 2500.
        let at = |v: &HistoryView| v.node.iter().map(|b| b.at_ms).collect::<Vec<_>>();
        let hour = |n: u64| first + n * HOUR_MS;
        assert_eq!(at(&h.view(1)), Vec::<u64>::new());
        assert_eq!(at(&h.view(501)), vec![hour(2000)]);
        assert_eq!(at(&h.view(1001)), vec![hour(1500), hour(2000)]);
        // Asked for more than 90 days, the view is the 90 days kept: the first hour is older.
        let kept = vec![hour(500), hour(1000), hour(1500), hour(2000)];
        assert_eq!(at(&h.view(KEPT_HOURS)), kept);
        assert_eq!(at(&h.view(u32::MAX)), kept);
        assert_eq!(h.view(u32::MAX).kept_hours, KEPT_HOURS);
        let empty = h.view(0);
        assert!(empty.node.is_empty() && empty.network.is_empty());
        assert_eq!(empty.now_ms, clock.now_ms());
    }

    #[tokio::test]
    async fn a_bucket_takes_at_most_max_keys_names() {
        let dir = tempfile::tempdir().unwrap();
        let clock = clock_on_the_hour();
        let (_index, h) = open(&dir, &clock);
        let many: BTreeMap<String, u64> = (0..100).map(|i| (format!("k{i:03}"), 1)).collect();
        h.record(Series::Node, &many, &BTreeMap::new())
            .await
            .unwrap();
        // Known names still count once the bucket is full; new ones and overlong ones do not.
        let long = "x".repeat(MAX_KEY_LEN + 1);
        h.record(
            Series::Node,
            &map(&[("k000", 1), ("k099", 1), (long.as_str(), 1)]),
            &map(&[("k001", 7)]),
        )
        .await
        .unwrap();
        let values = &h.view(1).node[0].values;
        assert_eq!(values.len(), MAX_KEYS);
        assert_eq!(values["k000"], 2);
        assert_eq!(values["k001"], 7);
        assert!(!values.contains_key("k099"));
        assert!(!values.contains_key(&long));
    }
}

//! This node's report: its counters since start (`total.`), their growth since the previous
//! report (`window.`), and what it holds now.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use open_registry_gateway::TrafficSnapshot;
use open_registry_protocol::report::{
    self, ERROR_CLASSES, KEY_LAG_SECONDS, KEY_LAG_SEQ, KEY_PACKUMENTS, KEY_PEERS, KEY_PINS,
    KEY_STATEMENT_SEQ, KEY_STORE_BYTES, KEY_TARBALLS, KEY_UPSTREAM_DOWN, REQUEST_KINDS, Report,
    SOURCES,
};
use open_registry_protocol::status::{StoreStats, SyncStatus};

use crate::metrics::Metrics;

/// What a report is made of, gathered by the caller (some of it needs the network).
#[derive(Debug, Clone, Default)]
pub(crate) struct Gathered {
    /// The gateway's counters.
    pub traffic: TrafficSnapshot,
    /// What the store holds.
    pub store: StoreStats,
    /// Packages pinned.
    pub pins: u64,
    /// Peers connected.
    pub peers: u64,
    /// The sync status.
    pub sync: SyncStatus,
    /// Whether the upstream's circuit is open.
    pub upstream_down: bool,
    /// The sequence of the operator's current statement, if any.
    pub statement_seq: Option<u64>,
}

/// Makes this node's reports, one per window.
#[derive(Debug)]
pub(crate) struct Reporter {
    started_ms: u64,
    window: Duration,
    version: String,
    /// The sequence of the last report and its `total.` values.
    last: Mutex<(u64, BTreeMap<String, u64>)>,
}

impl Reporter {
    /// A reporter for a node that started at `started_ms` and reports every `window`.
    pub(crate) fn new(started_ms: u64, window: Duration) -> Reporter {
        Reporter {
            started_ms,
            window,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            last: Mutex::new((0, BTreeMap::new())),
        }
    }

    /// The report for the window ending at `now_ms`.
    pub(crate) fn make(&self, now_ms: u64, metrics: &Metrics, g: &Gathered) -> Report {
        let totals = totals(metrics, &g.traffic);
        let mut values = BTreeMap::new();
        let mut last = self.last.lock().expect("reporter poisoned");
        for (k, v) in &totals {
            let before = last.1.get(k).copied().unwrap_or(0);
            let window = format!("window.{}", k.strip_prefix("total.").unwrap_or(k));
            values.insert(window, v.saturating_sub(before));
            values.insert(k.clone(), *v);
        }
        let gauges = [
            (KEY_PACKUMENTS, Some(g.store.packuments)),
            (KEY_TARBALLS, Some(g.store.tarballs)),
            (KEY_STORE_BYTES, Some(g.store.bytes)),
            (KEY_PINS, Some(g.pins)),
            (KEY_PEERS, Some(g.peers)),
            (KEY_LAG_SEQ, g.sync.lag),
            (KEY_LAG_SECONDS, g.sync.lag_secs),
            (KEY_UPSTREAM_DOWN, Some(u64::from(g.upstream_down))),
            (KEY_STATEMENT_SEQ, g.statement_seq),
        ];
        for (k, v) in gauges {
            if let Some(v) = v {
                values.insert(k.to_owned(), v);
            }
        }
        last.0 += 1;
        last.1 = totals;
        Report {
            at_ms: now_ms.max(self.started_ms),
            seq: last.0,
            started_ms: self.started_ms,
            window_ms: self.window.as_millis() as u64,
            version: self.version.clone(),
            values,
        }
    }
}

/// The `total.` counters of a report.
fn totals(m: &Metrics, t: &TrafficSnapshot) -> BTreeMap<String, u64> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = BTreeMap::new();
    for k in REQUEST_KINDS {
        let n = t.by_kind.get(k).copied().unwrap_or(0);
        out.insert(format!("total.requests.{k}"), n);
    }
    for s in SOURCES {
        let n = t.by_source.get(s).copied().unwrap_or(0);
        out.insert(format!("total.source.{s}"), n);
    }
    out.insert(report::KEY_TOTAL_BYTES.to_owned(), t.bytes);
    let status = |c: &str| t.by_status.get(c).copied().unwrap_or(0);
    for class in ERROR_CLASSES {
        let n = match class {
            "client" => status("4xx"),
            "server" => status("5xx"),
            "upstream" => m.upstream_errors.load(Relaxed),
            "peer" => m.peer_errors.load(Relaxed),
            "integrity" => m.integrity_failures.load(Relaxed),
            _ => m.store_errors.load(Relaxed),
        };
        out.insert(format!("total.errors.{class}"), n);
    }
    out
}

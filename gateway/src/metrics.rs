//! The gateway's own counters ([`Traffic`]): Prometheus text appended to the node's at
//! `/-/metrics`, and a [`TrafficSnapshot`] the node reads for its signed reports.
//!
//! Fixed label sets (route class × status class, answer source) in plain atomics: recording a
//! request is a few relaxed increments, with no map, lock or allocation on the request path,
//! and the label cardinality can never grow with what clients send.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::access::Source;
use crate::cache::Stats;

/// What kind of route a request took, as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteClass {
    /// `/<name>` and `/-/package/<name>/dist-tags`.
    Packument,
    /// `/<name>/<version-or-tag>`.
    Version,
    /// `/<name>/-/<file>.tgz`.
    Tarball,
    /// Search and audits, passed to the upstream.
    Forward,
    /// Ping, whoami, keys, status, metrics.
    Meta,
    /// Writes refused (this node is a read-only mirror).
    Write,
    /// Invalid or unknown paths and methods.
    Rejected,
}

impl RouteClass {
    const ALL: [RouteClass; 7] = [
        RouteClass::Packument,
        RouteClass::Version,
        RouteClass::Tarball,
        RouteClass::Forward,
        RouteClass::Meta,
        RouteClass::Write,
        RouteClass::Rejected,
    ];

    fn label(self) -> &'static str {
        match self {
            RouteClass::Packument => "packument",
            RouteClass::Version => "version",
            RouteClass::Tarball => "tarball",
            RouteClass::Forward => "forward",
            RouteClass::Meta => "meta",
            RouteClass::Write => "write",
            RouteClass::Rejected => "rejected",
        }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Where answers came from, as reports name them: the store (memory or disk), a peer, the
/// upstream, or the node itself (errors, keys, records, status, the gateway's own answers).
const SOURCES: [&str; 4] = ["store", "peer", "upstream", "node"];

fn source_index(s: Source) -> usize {
    match s {
        Source::Memory | Source::Store => 0,
        Source::Peer => 1,
        Source::Upstream => 2,
        Source::Node | Source::Gateway | Source::Index => 3,
    }
}

/// The gateway's counters since it started. The router makes one unless
/// [`Config::traffic`](crate::Config::traffic) hands it one to share.
#[derive(Debug, Default)]
pub struct Traffic {
    requests: [[AtomicU64; STATUS_CLASSES.len()]; RouteClass::ALL.len()],
    sources: [AtomicU64; SOURCES.len()],
    bytes: AtomicU64,
    not_modified: AtomicU64,
}

/// [`Traffic`] read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficSnapshot {
    /// Requests by kind: `packument` (packuments and dist-tags), `version`, `tarball`, `other`.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Requests by status class, `1xx` to `5xx`.
    pub by_status: BTreeMap<&'static str, u64>,
    /// Requests by where the answer came from: `store`, `peer`, `upstream`, `node`.
    pub by_source: BTreeMap<&'static str, u64>,
    /// Body bytes announced (Content-Length) in answers to GET.
    pub bytes: u64,
}

impl Traffic {
    /// Counts one answered request: its route class, status, source and body bytes.
    pub(crate) fn record(&self, class: RouteClass, status: u16, source: Source, bytes: u64) {
        let s = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class as usize][s].fetch_add(1, Relaxed);
        self.sources[source_index(source)].fetch_add(1, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        if status == 304 {
            self.not_modified.fetch_add(1, Relaxed);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> TrafficSnapshot {
        let mut t = TrafficSnapshot::default();
        for class in RouteClass::ALL {
            let kind = match class {
                RouteClass::Packument => "packument",
                RouteClass::Version => "version",
                RouteClass::Tarball => "tarball",
                _ => "other",
            };
            for (i, status) in STATUS_CLASSES.iter().enumerate() {
                let n = self.requests[class as usize][i].load(Relaxed);
                *t.by_kind.entry(kind).or_default() += n;
                *t.by_status.entry(status).or_default() += n;
            }
        }
        for (i, s) in SOURCES.iter().enumerate() {
            t.by_source.insert(s, self.sources[i].load(Relaxed));
        }
        t.bytes = self.bytes.load(Relaxed);
        t
    }

    /// Requests of `class` answered with a status in `status_class` (1 to 5).
    #[cfg(test)]
    pub(crate) fn count(&self, class: RouteClass, status_class: usize) -> u64 {
        self.requests[class as usize][status_class - 1].load(Relaxed)
    }

    /// The Prometheus text exposition of these counters and the render cache's.
    pub(crate) fn render(&self, cache: Stats) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP open_registry_gateway_requests_total Requests answered by the gateway, by route class and status class.\n\
             # TYPE open_registry_gateway_requests_total counter\n",
        );
        for class in RouteClass::ALL {
            for (i, status) in STATUS_CLASSES.iter().enumerate() {
                let n = self.requests[class as usize][i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "open_registry_gateway_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    class.label()
                );
            }
        }
        let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        counter(
            "open_registry_gateway_not_modified_total",
            "Requests answered 304 Not Modified.",
            "counter",
            self.not_modified.load(Relaxed),
        );
        counter(
            "open_registry_gateway_render_cache_hits_total",
            "Document requests served from the render cache.",
            "counter",
            cache.hits,
        );
        counter(
            "open_registry_gateway_render_cache_misses_total",
            "Document requests that found no rendered document (rendered or waited for one).",
            "counter",
            cache.misses,
        );
        counter(
            "open_registry_gateway_render_cache_renders_total",
            "Documents derived (parse, rewrite, encode, gzip).",
            "counter",
            cache.renders,
        );
        counter(
            "open_registry_gateway_render_cache_evictions_total",
            "Rendered documents dropped to stay under the byte budget.",
            "counter",
            cache.evictions,
        );
        counter(
            "open_registry_gateway_render_cache_bytes",
            "Bytes held by the render cache.",
            "gauge",
            cache.bytes,
        );
        counter(
            "open_registry_gateway_render_cache_entries",
            "Rendered documents held.",
            "gauge",
            cache.entries,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_renders() {
        let m = Traffic::default();
        m.record(RouteClass::Packument, 200, Source::Store, 10);
        m.record(RouteClass::Packument, 304, Source::Memory, 0);
        m.record(RouteClass::Tarball, 599, Source::Upstream, 0);
        m.record(RouteClass::Rejected, 42, Source::Gateway, 5);
        let snap = m.snapshot();
        assert_eq!(snap.by_kind["packument"], 2);
        assert_eq!(snap.by_kind["other"], 1);
        assert_eq!(snap.by_status["5xx"], 1);
        assert_eq!(snap.by_source["store"], 2);
        assert_eq!(snap.by_source["node"], 1);
        assert_eq!(snap.bytes, 15);
        assert_eq!(m.count(RouteClass::Packument, 2), 1);
        assert_eq!(m.count(RouteClass::Packument, 3), 1);
        assert_eq!(m.count(RouteClass::Tarball, 5), 1);
        assert_eq!(m.count(RouteClass::Rejected, 1), 1);
        let text = m.render(Stats {
            renders: 3,
            ..Stats::default()
        });
        assert!(text.contains(
            "open_registry_gateway_requests_total{route=\"packument\",status=\"2xx\"} 1\n"
        ));
        assert!(text.contains("open_registry_gateway_not_modified_total 1\n"));
        assert!(text.contains("open_registry_gateway_render_cache_renders_total 3\n"));
        assert!(text.contains("# TYPE open_registry_gateway_render_cache_bytes gauge\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<u64>().unwrap();
        }
    }
}

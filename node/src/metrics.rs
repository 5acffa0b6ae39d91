//! The node's counters, public at `/-/metrics` (Prometheus text) and in the JSON status.
//!
//! Plain relaxed atomics: counters are monotonic and read for reporting only, so no ordering
//! between them is promised.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::WriteError;

macro_rules! counters {
    ($($field:ident: $help:literal,)*) => {
        /// Monotonic counters since the node started.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $field: AtomicU64,)*
        }

        impl Metrics {
            /// Every counter with its name and help text.
            pub fn all(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($field), $help, self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    packument_requests: "Packument requests handled by the fetcher.",
    packument_hits: "Packuments answered from the local store without asking a source.",
    packument_revalidations: "Packument revalidations with the upstream (conditional requests).",
    packument_not_modified: "Revalidations the upstream answered with 304 Not Modified.",
    packument_updates: "New packument revisions stored.",
    tarball_requests: "Tarball requests handled by the fetcher.",
    tarball_hits: "Tarballs answered from the local store.",
    tarball_ingests: "Tarballs fetched, verified and stored.",
    coalesced: "Requests that joined a fetch already in flight instead of starting one.",
    upstream_requests: "HTTP requests sent to the upstream, retries included (changes feed apart).",
    feed_requests: "Requests to the upstream's changes feed.",
    upstream_errors: "Upstream requests that failed (connection, timeout, 5xx, bad body).",
    upstream_bytes: "Body bytes received from the upstream.",
    upstream_circuit_opened: "Times the upstream's circuit breaker opened (the upstream stopped answering).",
    upstream_fast_failures: "Upstream requests not sent because the circuit breaker was open.",
    packument_spills: "Packument bodies that outgrew their share of the packument memory while downloading and were read through the disk.",
    miss_refreshes_skipped: "Requests for a missing version, dist-tag or tarball answered without a refresh, because one for the same package found nothing less than the miss TTL ago.",
    stale_served: "Packuments served from the store because the upstream failed (stale-if-error).",
    integrity_failures: "Blobs refused because their bytes did not match integrity or content id.",
    store_errors: "Local store failures (disk full, I/O).",
    peer_requests: "Blob requests sent to peers.",
    peer_ingests: "Blobs fetched from peers and verified (each then stored).",
    peer_errors: "Peer fetches that failed (error, stall, timeout, bad bytes); the next source was tried.",
    peer_hedges: "Peer requests sent because the provider asked before had not started answering within its hedge delay.",
    peer_bytes: "Blob bytes received from peers.",
    peer_serves: "Blobs this node served to peers, whole.",
    peer_served_bytes: "Blob bytes this node served to peers.",
    peer_dcutr_upgraded: "Relayed connections DCUtR upgraded to direct ones (hole punching worked).",
    peer_dcutr_failed: "Relayed connections DCUtR could not upgrade; they stayed relayed.",
    relay_reservations: "Reservations relays accepted for this node while it was not reachable from outside.",
    relay_circuits: "Circuits this node relayed between two other peers.",
    records_rejected: "Signed records from the network refused by the trust policy.",
    records_unsigned: "Packument revisions served without a signed record because it would not fit the record encoding (too many versions, strings too long).",
    dht_queries: "DHT lookups finished: providers of a blob, or the values under a key.",
    dht_requests: "Requests those lookups sent to peers.",
    dht_request_successes: "Requests of those lookups that peers answered.",
    dht_query_micros: "Time those lookups took from start to finish, summed, in microseconds.",
    dht_messages_sent: "Kademlia requests this node sent, every query counted: lookups (providers, values, closest peers), announcements (their closest-peers lookup and ADD_PROVIDER messages), record puts and bootstrap steps.",
    dht_announcements: "DHT announcements started at the announcer's message budget: provider records (one per package key due) and our own values (signed pointers, advisories).",
    dht_announce_messages: "Kademlia requests those announcements sent (included in dht_messages_sent).",
    package_provider_lookups: "Tarball or record misses that looked up a package's providers in the DHT (the rest of the package's misses use the cached answer).",
    blob_provider_lookups: "Misses that looked up a blob's own providers in the DHT: the fallback when the package's providers leave nobody new to ask or none of them delivers.",
}

impl Metrics {
    /// Counts and logs a blob write the store refused, the same way whatever the source:
    /// bytes that do not verify (or no bytes) are the source's fault, I/O is the disk's, an
    /// oversized body is neither. Returns the error for the caller to convert.
    pub(crate) fn refused(&self, e: WriteError) -> WriteError {
        match &e {
            WriteError::Integrity(i) => {
                Metrics::inc(&self.integrity_failures);
                tracing::warn!(error = %i, "refused a blob that does not verify");
            }
            WriteError::Empty => Metrics::inc(&self.integrity_failures),
            WriteError::TooLarge(_) => {}
            WriteError::Io(io) => {
                Metrics::inc(&self.store_errors);
                tracing::error!(error = %io, "the store could not write a blob");
            }
        }
        e
    }

    /// Adds one.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters by name, for the JSON status.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.all()
            .into_iter()
            .map(|(n, _, v)| (n.to_owned(), v))
            .collect()
    }

    /// Prometheus text exposition, each counter prefixed `open_registry_` and suffixed `_total`.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        for (name, help, v) in self.all() {
            let _ = writeln!(
                out,
                "# HELP open_registry_{name}_total {help}\n# TYPE open_registry_{name}_total counter\nopen_registry_{name}_total {v}"
            );
        }
        for (name, help, v) in gauges {
            let _ = writeln!(
                out,
                "# HELP open_registry_{name} {help}\n# TYPE open_registry_{name} gauge\nopen_registry_{name} {v}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.tarball_hits);
        Metrics::add(&m.upstream_bytes, 10);
        let text = m.render(&[("store_bytes", "Bytes stored.", 5)]);
        assert!(text.contains("open_registry_tarball_hits_total 1\n"));
        assert!(text.contains("open_registry_upstream_bytes_total 10\n"));
        assert!(
            text.contains("# TYPE open_registry_store_bytes gauge\nopen_registry_store_bytes 5\n")
        );
        assert_eq!(m.snapshot()["tarball_hits"], 1);
    }
}

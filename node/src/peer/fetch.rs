//! Blobs by content id, from whoever provides them, verified into the store.
//!
//! Order: the trusted operators first, listed as providers or not (anyone can announce a blob,
//! R15, and sybils must not crowd out the nodes whose records named it; when one of them has
//! the blob, the usual case, the fetch costs no DHT query at all: benchmark B5), then the
//! providers a DHT lookup returns, bounded in number. Within each group the nearest is asked
//! first (by the round-trip times ping measures; peers not measured yet come after, shuffled
//! to spread load), and a request that has not started answering within a delay derived from
//! its provider's round-trip time is hedged to the next ([`hedge`](super::hedge)). One budget
//! covers every attempt.

use std::time::Duration;

use futures::StreamExt as _;
use open_registry_protocol::{BlobId, Integrity, PackageName, Verifier};
use tokio::time::Instant;

use super::hedge::{self, Failed};
use super::stream;
use super::{PeerError, Peers};
use crate::metrics::Metrics;
use crate::net;

/// How many untrusted providers a fetch tries at most (after the trusted operators).
const MAX_PROVIDERS: usize = 8;
/// How many provider records a fetch collects to choose from.
pub(super) const MAX_PROVIDER_RECORDS: usize = 20;
/// How long finding providers or records may take.
pub(super) const FIND_DEADLINE: Duration = Duration::from_secs(5);

impl Peers {
    /// The trusted operators as peers, without this node, nearest first.
    fn trusted_peers(&self) -> Vec<net::PeerId> {
        let me = self.net.local_peer_id();
        let mut peers: Vec<net::PeerId> = self
            .policy
            .trusted()
            .iter()
            .filter_map(|p| net::PeerId::from_bytes(&p.to_bytes()).ok())
            .filter(|p| *p != me)
            .collect();
        self.net.rtts().nearest_first(&mut peers);
        peers
    }

    /// How long a request to `peer` may go without starting to answer before it is hedged.
    pub(super) fn hedge_delay(&self, peer: &net::PeerId) -> Duration {
        hedge::hedge_delay(self.net.rtts().get(peer))
    }

    /// Fetches blob `id` of package `name` into the store, checking it against `id` and, when
    /// given, `integrity`. After the trusted operators, the package's providers not asked yet
    /// (one cached lookup per package: [`package_providers`](Peers::package_providers)); when
    /// that leaves nobody or none delivers, the blob's own providers
    /// ([`blob_providers`](Peers::blob_providers)). One deadline covers them all.
    pub(super) async fn fetch_verified(
        &self,
        name: &PackageName,
        id: &BlobId,
        integrity: Option<&Integrity>,
        max_len: u64,
    ) -> Result<BlobId, PeerError> {
        let verifier = || match integrity {
            Some(i) => Verifier::new(i.clone()),
            None => Verifier::id_only(),
        };
        let deadline = Instant::now() + self.timeout;
        // Peers on the local network first: a LAN peer that lacks the blob says so within a
        // round trip of a millisecond, one that has it saves the trip out.
        let mut trusted = self.net.rtts().lan_peers();
        for p in self.trusted_peers() {
            if !trusted.contains(&p) {
                trusted.push(p);
            }
        }
        let first = if trusted.is_empty() {
            None
        } else {
            match self
                .fetch_from(&trusted, id, &verifier, max_len, deadline)
                .await
            {
                Ok(got) => return Ok(got),
                Err(e) => Some(e),
            }
        };
        let mut asked = trusted;
        let mut last = first;
        // The package's providers, then, when they leave nobody new to ask or none delivers,
        // the blob's own (`providers`).
        for by_id in [false, true] {
            let found = if by_id {
                let left = deadline.saturating_duration_since(Instant::now());
                self.blob_providers(id, &asked, left).await
            } else {
                self.package_providers(name, &asked).await
            };
            let mut others = match found {
                Ok(p) => p,
                Err(e) => {
                    return Err(last.unwrap_or_else(|| PeerError::Lookup {
                        id: *id,
                        source: e.into(),
                    }));
                }
            };
            shuffle(&mut others, self.clock.now_ms());
            others.truncate(MAX_PROVIDERS);
            // Stable: the providers not measured yet stay shuffled.
            self.net.rtts().nearest_first(&mut others);
            if others.is_empty() {
                continue;
            }
            match self
                .fetch_from(&others, id, &verifier, max_len, deadline)
                .await
            {
                Ok(got) => return Ok(got),
                Err(e) => last = Some(e),
            }
            if Instant::now() >= deadline {
                break;
            }
            asked.extend(others);
        }
        Err(last.unwrap_or(PeerError::NoProviders(*id)))
    }

    /// Asks `providers` (nearest first), hedged, until one delivers.
    pub(crate) async fn fetch_from(
        &self,
        providers: &[net::PeerId],
        id: &BlobId,
        verifier: impl Fn() -> Verifier + Sync,
        max_len: u64,
        deadline: Instant,
    ) -> Result<BlobId, PeerError> {
        let verifier = &verifier;
        // A provider that spoiled this blob lately is not asked again: a client's retry after
        // a cut-short answer goes to the next one.
        let providers = self.bad.usable(id, providers, self.clock.now_ms());
        let r = hedge::race(
            &providers,
            |p| self.hedge_delay(p),
            deadline,
            |peer| {
                Metrics::inc(&self.metrics.peer_requests);
                let left = deadline.saturating_duration_since(Instant::now());
                async move {
                    let t = self.net.fetch(peer, id, max_len, left).await;
                    t.map_err(|e| self.failed(peer, id, e.into()))
                }
            },
            |peer, transfer| async move {
                match self.receive(transfer, id, verifier(), max_len).await {
                    Ok(got) => {
                        tracing::debug!(%peer, id = %id.short(), "fetched a blob from a peer");
                        Ok(got)
                    }
                    Err(e) => Err(self.failed(peer, id, e)),
                }
            },
            || Metrics::inc(&self.metrics.peer_hedges),
        )
        .await;
        r.map_err(|f| match f {
            Failed::NoProviders => PeerError::NoProviders(*id),
            Failed::Deadline => PeerError::Undelivered {
                id: *id,
                last: PeerError::Deadline.into(),
            },
            Failed::All(last) => PeerError::Undelivered {
                id: *id,
                last: last.into(),
            },
        })
    }

    /// Counts and logs a failed request to `peer`, and gives its error back.
    fn failed(&self, peer: net::PeerId, id: &BlobId, e: PeerError) -> PeerError {
        Metrics::inc(&self.metrics.peer_errors);
        tracing::warn!(%peer, id = %id.short(), error = %crate::errors::chain(&e), "peer fetch failed; trying the next provider");
        e
    }

    /// Receives a transfer that started answering into the store, verified, feeding the tap
    /// of the running fetch if it has one ([`stream`](super::stream)): a trusted operator's
    /// transfer may open the streamed answer, any provider's may resume it. A provider that spoiled
    /// the blob is remembered, and skipped for it for a while.
    async fn receive(
        &self,
        transfer: net::Transfer,
        id: &BlobId,
        verifier: Verifier,
        max_len: u64,
    ) -> Result<BlobId, PeerError> {
        let peer = transfer.peer();
        let len = transfer.len();
        let chunks = transfer.map(|chunk| {
            let chunk = chunk?;
            Metrics::add(&self.metrics.peer_bytes, chunk.len() as u64);
            Ok(chunk)
        });
        let tap = stream::current_tap();
        // Only a trusted operator's transfer may open a streamed answer (see `stream`).
        let opens = tap.is_some() && self.trusted_peers().contains(&peer);
        // Boxed: the verifier and the writer make a large future.
        let got = Box::pin(stream::receive_into(
            &self.store,
            &self.metrics,
            chunks,
            len,
            id,
            verifier,
            max_len,
            tap.as_ref(),
            opens,
        ))
        .await;
        got.map_err(|f| {
            if f.spoiled {
                self.bad.note(id, &peer, self.clock.now_ms());
            }
            f.error
        })
    }

    /// Fetches a small blob (a record of package `name`) into memory, checking its id. `first`
    /// (the operator that signed the pointer naming it) is asked before any provider lookup: it
    /// serves its own records, and asking it costs one round trip, not a DHT query; then the
    /// package's providers not asked yet, then, when that leaves nobody or none delivers, the
    /// record blob's own providers (the signer may be gone while its provider record for the
    /// package lives on, and a peer holding the record may have announced it by its id).
    pub(super) async fn fetch_small(
        &self,
        name: &PackageName,
        id: &BlobId,
        cap: u64,
        first: Option<net::PeerId>,
    ) -> Option<Vec<u8>> {
        if let Ok(Some(b)) = self.records.blob(id) {
            return Some(b);
        }
        let mut asked: Vec<net::PeerId> = first
            .into_iter()
            .filter(|p| *p != self.net.local_peer_id())
            .collect();
        if !asked.is_empty()
            && let Some(b) = self.fetch_small_from(&asked, id, cap).await
        {
            return Some(b);
        }
        // The package's providers, then, when they leave nobody new to ask or none delivers,
        // the record blob's own (`providers`): the signer may be gone, and its provider record
        // for the package with it or not.
        let mut others = self.package_providers(name, &asked).await.ok()?;
        others.truncate(MAX_PROVIDERS);
        if !others.is_empty() {
            if let Some(b) = self.fetch_small_from(&others, id, cap).await {
                return Some(b);
            }
            asked.extend(others);
        }
        let mut others = self.blob_providers(id, &asked, FIND_DEADLINE).await.ok()?;
        others.truncate(MAX_PROVIDERS);
        if others.is_empty() {
            return None;
        }
        self.fetch_small_from(&others, id, cap).await
    }

    pub(super) async fn fetch_small_from(
        &self,
        providers: &[net::PeerId],
        id: &BlobId,
        cap: u64,
    ) -> Option<Vec<u8>> {
        let mut providers = providers.to_vec();
        self.net.rtts().nearest_first(&mut providers);
        hedge::race(
            &providers,
            |p| self.hedge_delay(p),
            Instant::now() + FIND_DEADLINE,
            |peer| async move {
                let t = self.net.fetch(peer, id, cap, FIND_DEADLINE).await;
                t.map(|t| (peer, t)).map_err(drop)
            },
            |_, (peer, t)| async move {
                match t.read_all().await {
                    Ok(b) if BlobId::of(&b) == *id => Ok(b.to_vec()),
                    Ok(_) => {
                        Metrics::inc(&self.metrics.integrity_failures);
                        tracing::warn!(peer = %peer, "a peer served a record blob that does not match its id");
                        Err(())
                    }
                    Err(_) => Err(()),
                }
            },
            || Metrics::inc(&self.metrics.peer_hedges),
        )
        .await
        .ok()
    }
}

/// A Fisher–Yates shuffle seeded from `seed` (the clock): good enough to spread load, no RNG
/// crate.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15 ^ (v.len() as u64);
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_keeps_every_element() {
        let mut v: Vec<u32> = (0..50).collect();
        shuffle(&mut v, 12345);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(v, sorted, "a shuffle of 50 left them in order");
    }
}

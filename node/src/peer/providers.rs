//! Who holds a package: the providers of its package key, looked up once and remembered.
//!
//! Nodes announce one provider record per package ([`provider_key`]), not per blob. A miss for
//! any blob of a package (a tarball, a packument, a record) that the trusted operators (for a
//! record: its signer) did not deliver looks up the package's providers once; the answer is
//! cached for [`PROVIDERS_TTL`] (an empty one for [`EMPTY_TTL`]), so the tarballs that follow,
//! an install's dozens of files of one package, ask the same peers without another DHT walk.
//! Concurrent misses of one package wait for the same lookup.
//!
//! Only when the package's providers leave nobody new to ask (none announced it, or the ones
//! that did were asked already or are this node) or none of them delivers is the blob's own
//! id looked up ([`Peers::blob_providers`]), for nodes of earlier versions, which announced
//! every blob.
//!
//! [`provider_key`]: open_registry_protocol::pointer::provider_key

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use open_registry_protocol::pointer::provider_key;
use open_registry_protocol::{BlobId, PackageName};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::Peers;
use super::fetch::{FIND_DEADLINE, MAX_PROVIDER_RECORDS};
use crate::metrics::Metrics;
use crate::net;

/// How long a package's providers are reused before they are looked up again.
pub(crate) const PROVIDERS_TTL: Duration = Duration::from_secs(10 * 60);

/// How long "nobody announced this package" is believed.
pub(crate) const EMPTY_TTL: Duration = Duration::from_secs(60);

/// Packages whose providers are remembered at once; the oldest lookup goes first.
pub(crate) const MAX_PACKAGES: usize = 4096;

type Cell = Arc<OnceCell<Vec<net::PeerId>>>;

/// The cache, keyed by package, each entry filled by one lookup.
#[derive(Debug, Default)]
pub(crate) struct ProviderCache {
    entries: Mutex<HashMap<PackageName, (Instant, Cell)>>,
}

impl ProviderCache {
    /// The providers of `name`: cached, or found by `lookup` (once for concurrent callers).
    /// A failed lookup is not cached. Returns them and whether this call ran the lookup.
    pub(crate) async fn get_or_lookup<F, Fut, E>(
        &self,
        name: &PackageName,
        lookup: F,
    ) -> Result<(Vec<net::PeerId>, bool), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<net::PeerId>, E>>,
    {
        let cell = self.cell(name, Instant::now());
        let mut ran = false;
        let found = cell
            .get_or_try_init(|| {
                ran = true;
                lookup()
            })
            .await?;
        Ok((found.clone(), ran))
    }

    /// The live cell of `name` at `now`, a fresh one if there is none or it expired.
    fn cell(&self, name: &PackageName, now: Instant) -> Cell {
        let mut entries = self.entries.lock().expect("provider cache lock");
        if let Some((at, cell)) = entries.get(name) {
            let ttl = match cell.get() {
                Some(found) if found.is_empty() => EMPTY_TTL,
                _ => PROVIDERS_TTL,
            };
            if now.saturating_duration_since(*at) < ttl {
                return cell.clone();
            }
        }
        if entries.len() >= MAX_PACKAGES && !entries.contains_key(name) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(n, _)| n.clone());
            if let Some(n) = oldest {
                entries.remove(&n);
            }
        }
        let cell = Cell::default();
        entries.insert(name.clone(), (now, cell.clone()));
        cell
    }
}

impl Peers {
    /// The providers of package `name` to ask for one of its blobs, leaving out `asked` (the
    /// peers a fetch tried already: the trusted operators, a record's signer) and this node:
    /// one DHT lookup per package, cached ([`ProviderCache`]), up to
    /// [`MAX_PROVIDER_RECORDS`] of them.
    ///
    /// The cached answer may name only peers already asked, or dead ones: a provider record
    /// outlives its node by up to its TTL (14 days), and an operator that announced its
    /// package before it went away is both the pointer's signer and the package's only
    /// provider. An empty result here is therefore no reason to stop: the caller goes on to
    /// [`blob_providers`](Peers::blob_providers).
    pub(super) async fn package_providers(
        &self,
        name: &PackageName,
        asked: &[net::PeerId],
    ) -> Result<Vec<net::PeerId>, net::NetError> {
        let key = provider_key(name);
        let (found, looked_up) = self
            .providers
            .get_or_lookup(name, || {
                self.net
                    .find_providers(&key, MAX_PROVIDER_RECORDS, FIND_DEADLINE)
            })
            .await?;
        if looked_up {
            Metrics::inc(&self.metrics.package_provider_lookups);
        }
        Ok(self.not_asked(found, asked))
    }

    /// The providers of blob `id` by its own id, leaving out `asked` and this node: the
    /// fallback once the package's providers gave nobody new to ask or none of them delivered
    /// (nodes of earlier versions announce every blob; nodes of this version announce none,
    /// so in a network of this version the lookup finds nobody, and it is paid only on a fetch
    /// that is failing anyway). At most `within` (capped at [`FIND_DEADLINE`]), not cached.
    pub(super) async fn blob_providers(
        &self,
        id: &BlobId,
        asked: &[net::PeerId],
        within: Duration,
    ) -> Result<Vec<net::PeerId>, net::NetError> {
        Metrics::inc(&self.metrics.blob_provider_lookups);
        let found = self
            .net
            .find_providers(id, MAX_PROVIDER_RECORDS, within.min(FIND_DEADLINE))
            .await?;
        Ok(self.not_asked(found, asked))
    }

    /// `found` without the peers of `asked`, this node and repeats, in order.
    fn not_asked(&self, found: Vec<net::PeerId>, asked: &[net::PeerId]) -> Vec<net::PeerId> {
        let me = self.net.local_peer_id();
        let mut out: Vec<net::PeerId> = Vec::with_capacity(found.len());
        for p in found {
            if p != me && !asked.contains(&p) && !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PackageName {
        PackageName::parse(s).unwrap()
    }

    async fn ask(c: &ProviderCache, n: &str, found: Vec<net::PeerId>) -> bool {
        let (got, ran) = c
            .get_or_lookup(&name(n), || async { Ok::<_, ()>(found.clone()) })
            .await
            .unwrap();
        if ran {
            assert_eq!(got, found);
        }
        ran
    }

    #[tokio::test(start_paused = true)]
    async fn one_lookup_per_package_until_it_expires() {
        let c = ProviderCache::default();
        let p = vec![net::PeerId::random()];
        assert!(ask(&c, "a", p.clone()).await);
        assert!(
            !ask(&c, "a", vec![]).await,
            "the second miss looked up again"
        );
        assert!(ask(&c, "b", vec![]).await);
        // Empty answers expire sooner.
        tokio::time::advance(EMPTY_TTL).await;
        assert!(ask(&c, "b", vec![]).await);
        assert!(!ask(&c, "a", vec![]).await);
        tokio::time::advance(PROVIDERS_TTL).await;
        assert!(ask(&c, "a", p.clone()).await);
        assert!(!ask(&c, "a", p).await);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_lookup_and_failures_are_not_kept() {
        let c = ProviderCache::default();
        let runs = std::sync::atomic::AtomicU32::new(0);
        let lookup = || async {
            runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, ()>(vec![net::PeerId::random()])
        };
        let n = name("c");
        let (a, b) = futures::join!(c.get_or_lookup(&n, lookup), c.get_or_lookup(&n, lookup));
        assert_eq!(runs.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(a.unwrap().0, b.unwrap().0);
        let d = name("d");
        let failed = c.get_or_lookup(&d, || async { Err::<Vec<_>, _>("busy") });
        assert!(failed.await.is_err());
        assert!(ask(&c, "d", vec![]).await, "a failed lookup was cached");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded() {
        let c = ProviderCache::default();
        for i in 0..MAX_PACKAGES + 10 {
            ask(&c, &format!("p{i}"), vec![]).await;
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(c.entries.lock().unwrap().len(), MAX_PACKAGES);
        // The oldest went first.
        assert!(ask(&c, "p0", vec![]).await);
    }
}

//! What this node tells the network: which packages it holds, and which records it signed.
//!
//! One provider record per **package**, not per blob: the key is the package's
//! [`provider_key`] (a BLAKE3 of a fixed domain and the name), provided as soon as the node
//! stores anything of the package (packument, tarball, a trusted operator's record) and
//! withdrawn when eviction leaves the index neither its packument nor any of its tarballs. A
//! node with a million blobs of 100,000 packages so keeps 100,000
//! keys, not a million, and the swarm task re-announces them at a bounded message rate
//! (`net::pacer`). Blobs are found through their package: a miss asks the trusted operators,
//! then the package's providers (`peer::providers`). Record blobs are not announced either:
//! their signer is asked first, then the package's providers. Only when those leave nobody to
//! ask or none delivers is a blob's own id looked up (nodes of earlier versions announced it).
//!
//! Each record the node signs is published: a small signed [`Pointer`] to it is put in the DHT
//! under a key made of the package name and this operator's id, so nodes that trust this
//! operator find the newest record by name, and the same pointer goes out on gossip so nodes
//! that cache the package hear of it at once.

use std::collections::BTreeSet;

use open_registry_protocol::pointer::{self, Pointer, provider_key};
use open_registry_protocol::record::{Signable as _, Signed};
use open_registry_protocol::{BlobId, PackageName};

use super::{Found, Peers};
use crate::net;
use crate::store::{IndexError, Store};

impl Peers {
    /// Announces that this node holds blobs of `name`: provides the package's key.
    pub(crate) async fn announce_package(&self, name: &PackageName) {
        if self.is_announced(name) {
            return;
        }
        match self.net.provide(&provider_key(name)).await {
            Ok(()) => {
                self.announced
                    .lock()
                    .expect("announced lock")
                    .insert(name.clone());
            }
            Err(e) => tracing::warn!(%name, error = %e, "could not announce a package"),
        }
    }

    fn is_announced(&self, name: &PackageName) -> bool {
        self.announced
            .lock()
            .expect("announced lock")
            .contains(name)
    }

    /// After an eviction: withdraws those of `packages` (the ones the pass removed entries
    /// of) that this node announced and of which the index holds neither a packument nor a
    /// tarball any more. Point lookups per package, on the blocking pool: the cost grows with
    /// what was evicted, not with what is stored.
    pub(crate) async fn withdraw_emptied(&self, packages: &BTreeSet<PackageName>) {
        let names: Vec<PackageName> = {
            let announced = self.announced.lock().expect("announced lock");
            packages
                .iter()
                .filter(|n| announced.contains(*n))
                .cloned()
                .collect()
        };
        if names.is_empty() {
            return;
        }
        let store = self.store.clone();
        let gone = tokio::task::spawn_blocking(move || {
            // A package's tarballs may outlive its packument: held is either.
            names
                .into_iter()
                .filter(|n| store.index.holds_package(n).is_ok_and(|held| !held))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for name in gone {
            if let Err(e) = self.net.unprovide(&provider_key(&name)).await {
                tracing::warn!(%name, error = %e, "could not withdraw a package");
                continue;
            }
            self.announced.lock().expect("announced lock").remove(&name);
        }
    }

    /// Announces every package held and republishes our records' pointers (after a start).
    /// The set is the packages with a packument or a tarball entry in the index, never a
    /// listing of the blob directory: sled scans, on the blocking pool.
    pub(crate) async fn announce_all(&self) {
        let (store, records) = (self.store.clone(), self.records.clone());
        let listed = tokio::task::spawn_blocking(move || {
            let names = held_packages(&store)?;
            let own = records.own_latest()?;
            Ok::<_, IndexError>((names, own))
        })
        .await;
        let (names, own) = match listed {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not list the packages to announce");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing the packages stopped");
                return;
            }
        };
        let keys: Vec<BlobId> = names.iter().map(provider_key).collect();
        match self.net.provide_many(keys).await {
            Ok(()) => self
                .announced
                .lock()
                .expect("announced lock")
                .extend(names.iter().cloned()),
            Err(e) => tracing::warn!(error = %e, "could not announce every package"),
        }
        for s in &own {
            self.publish_record(s).await;
        }
        tracing::info!(
            packages = names.len(),
            records = own.len(),
            "announced the store to the network"
        );
    }

    /// Publishes one of our records: announces its package and points to it from the DHT.
    pub(super) async fn publish_record(&self, signed: &Signed) {
        let Ok(v) = signed.verify() else {
            return;
        };
        let r = v.get();
        let id = BlobId::of(&signed.to_bytes());
        self.announce_package(&r.name).await;
        let p = Pointer {
            name: r.name.clone(),
            seq: r.seq,
            expires_at: r.expires_at,
            record: id,
        };
        let key = pointer::dht_key(&r.name, &signed.signer);
        let value = p.sign(self.records.identity().signing_key()).to_bytes();
        if let Err(e) = self.net.put_record(key, value.clone()).await {
            tracing::warn!(name = %r.name, error = %e, "could not publish the record pointer");
        }
        // Tell the nodes that cache this package now, rather than when they next look.
        if let Err(e) = self.net.publish(net::RECORDS_TOPIC, value).await {
            tracing::debug!(name = %r.name, error = %e, "could not gossip the record pointer");
        }
    }

    /// Stores the verified records of the agreeing operators, so that this node serves them,
    /// remembers their sequence numbers, and knows their tarball ids.
    pub(super) async fn keep_records(&self, records: &[Found]) {
        for (s, v) in records {
            if let Err(e) = self
                .records
                .store_verified(&self.store.index, s, v.get().seq, &v.get().name)
                .await
            {
                tracing::warn!(error = %e, "could not store a verified record");
            } else {
                self.announce_package(&v.get().name).await;
            }
        }
    }
}

/// The packages of which the index holds a packument or a tarball (tarball keys are
/// `name/file`, and file names hold no `/`).
fn held_packages(store: &Store) -> Result<BTreeSet<PackageName>, IndexError> {
    let mut names: BTreeSet<PackageName> = store
        .index
        .packument_entries()?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for (key, _) in store.index.tarball_entries()? {
        if let Some((name, _)) = std::str::from_utf8(&key)
            .ok()
            .and_then(|k| k.rsplit_once('/'))
            && let Ok(name) = PackageName::parse(name)
        {
            names.insert(name);
        }
    }
    Ok(names)
}

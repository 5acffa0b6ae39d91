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
use std::time::Duration;

use open_registry_protocol::pointer::{self, Pointer, provider_key};
use open_registry_protocol::record::{Signable as _, Signed};
use open_registry_protocol::{BlobId, PackageName};

use super::{Found, Peers};
use crate::net::{self, OwnValue};
use crate::records::Records;
use crate::store::IndexError;

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

    /// Announces every package held and republishes the pointers of our records that still
    /// live (after a start). The set is the packages with a packument or a tarball entry in
    /// the index, never a listing of the blob directory: sled scans, on the blocking pool,
    /// where the pointers are signed too. Both go on the announcement schedule behind anything
    /// fresh, at the message budget's rate; the pointers are not gossiped again (nodes that
    /// follow the package heard them when they were new).
    pub(crate) async fn announce_all(&self) {
        let (store, records) = (self.store.clone(), self.records.clone());
        let now_ms = self.clock.now_ms();
        let listed = tokio::task::spawn_blocking(move || {
            let mut names = store.index.held_packages()?;
            let mut pointers = Vec::new();
            for s in records.own_latest()? {
                if let Some((name, v)) = own_pointer(&s, &records, now_ms) {
                    names.insert(name);
                    pointers.push(v);
                }
            }
            Ok::<_, IndexError>((names, pointers))
        })
        .await;
        let (names, pointers) = match listed {
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
        let records = pointers.len();
        if let Err(e) = self.net.republish_records(pointers).await {
            tracing::warn!(error = %e, "could not republish every record pointer");
        }
        tracing::info!(
            packages = names.len(),
            records,
            "announced the store to the network"
        );
    }

    /// Publishes one of our records: announces its package and points to it from the DHT
    /// (before anything scheduled, for as long as the record lives) and on gossip.
    pub(super) async fn publish_record(&self, signed: &Signed) {
        let Some((name, v)) = own_pointer(signed, &self.records, self.clock.now_ms()) else {
            tracing::debug!("not publishing a record that does not verify or has expired");
            return;
        };
        self.announce_package(&name).await;
        let wire = v.value.clone();
        if let Err(e) = self.net.put_record_for(v.key, v.value, v.lives).await {
            tracing::warn!(%name, error = %e, "could not publish the record pointer");
        }
        // Tell the nodes that cache this package now, rather than when they next look.
        if let Err(e) = self.net.publish(net::RECORDS_TOPIC, wire).await {
            tracing::debug!(%name, error = %e, "could not gossip the record pointer");
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

/// The DHT value pointing to `signed`, one of our records, signed with our key, living until
/// the record expires; `None` when it does not verify or has expired by `now_ms`.
fn own_pointer(signed: &Signed, records: &Records, now_ms: u64) -> Option<(PackageName, OwnValue)> {
    let v = signed.verify().ok()?;
    let r = v.get();
    let lives = r.expires_at.checked_sub(now_ms).filter(|ms| *ms > 0)?;
    let p = Pointer {
        name: r.name.clone(),
        seq: r.seq,
        expires_at: r.expires_at,
        record: BlobId::of(&signed.to_bytes()),
    };
    let value = OwnValue {
        key: pointer::dht_key(&r.name, &signed.signer),
        value: p.sign(records.identity().signing_key()).to_bytes(),
        lives: Duration::from_millis(lives),
    };
    Some((r.name.clone(), value))
}

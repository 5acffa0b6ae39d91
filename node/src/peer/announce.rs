//! What this node tells the network: which blobs it provides, and which records it signed.
//!
//! Every blob in the store is announced (one provider record per blob id) and withdrawn when
//! evicted; record blobs (a signed record's wire bytes) are announced too. Each record the node
//! signs is published: its blob is provided, and a small signed [`Pointer`] to it is put in the
//! DHT under a key made of the package name and this operator's id, so nodes that trust this
//! operator find the newest record by name, and the same pointer goes out on gossip so nodes
//! that cache the package hear of it at once.

use open_registry_protocol::BlobId;
use open_registry_protocol::pointer::{self, Pointer};
use open_registry_protocol::record::{Signable as _, Signed};

use super::{Found, Peers};
use crate::net;

impl Peers {
    /// Announces a stored blob.
    pub(crate) async fn provide(&self, id: &BlobId) {
        if let Err(e) = self.net.provide(id).await {
            tracing::warn!(id = %id.short(), error = %e, "could not announce a blob");
        }
    }

    /// Withdraws an evicted blob.
    pub(crate) async fn withdraw(&self, id: &BlobId) {
        if let Err(e) = self.net.unprovide(id).await {
            tracing::warn!(id = %id.short(), error = %e, "could not withdraw a blob");
        }
    }

    /// Announces everything stored and republishes our records' pointers (after a start). The
    /// listings are directory and sled scans: they run on the blocking pool.
    pub(crate) async fn announce_all(&self) {
        let (store, records) = (self.store.clone(), self.records.clone());
        let listed = tokio::task::spawn_blocking(move || {
            let blobs = store.blobs.list()?;
            let record_blobs = records.blob_ids().unwrap_or_default();
            let own = records.own_latest().unwrap_or_default();
            Ok::<_, std::io::Error>((blobs, record_blobs, own))
        })
        .await;
        let (blobs, record_blobs, own) = match listed {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not list the store to announce it");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing the store stopped");
                return;
            }
        };
        for (id, _) in &blobs {
            self.provide(id).await;
        }
        for id in &record_blobs {
            self.provide(id).await;
        }
        for s in &own {
            self.publish_record(s).await;
        }
        tracing::info!(
            blobs = blobs.len(),
            records = own.len(),
            "announced the store to the network"
        );
    }

    /// Publishes one of our records: provides its blob and points to it from the DHT.
    pub(super) async fn publish_record(&self, signed: &Signed) {
        let Ok(v) = signed.verify() else {
            return;
        };
        let r = v.get();
        let wire = signed.to_bytes();
        let id = BlobId::of(&wire);
        self.provide(&id).await;
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
                self.provide(&BlobId::of(&s.to_bytes())).await;
            }
        }
    }
}

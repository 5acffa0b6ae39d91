//! What the network layer asks of the node: blobs to serve ([`StoreSource`]) and which DHT
//! values to keep ([`PointerValidator`]).

use std::sync::Arc;

use futures::future::BoxFuture;
use open_registry_protocol::{BlobId, PackageName};
use open_registry_protocol::{advisory, pointer};
use tokio::io::AsyncSeekExt as _;

use crate::clock::Clock;
use crate::net::{self, BlobSource, RecordValidator};
use crate::records::Records;
use crate::store::Store;

/// Serves the store's verified blobs and stored record blobs to peers, and says which records
/// it holds for a package.
#[derive(Debug)]
pub(crate) struct StoreSource {
    store: Arc<Store>,
    records: Arc<Records>,
}

impl StoreSource {
    /// A source over `store` and `records`.
    pub(crate) fn new(store: Arc<Store>, records: Arc<Records>) -> StoreSource {
        StoreSource { store, records }
    }
}

impl BlobSource for StoreSource {
    fn open<'a>(
        &'a self,
        id: &'a BlobId,
        offset: u64,
    ) -> BoxFuture<'a, std::io::Result<Option<net::Blob>>> {
        Box::pin(async move {
            if let Some((mut file, len)) = self.store.blobs.open_read(id).await? {
                if offset > 0 && offset <= len {
                    file.seek(std::io::SeekFrom::Start(offset)).await?;
                }
                return Ok(Some(net::Blob {
                    len,
                    reader: Box::new(file),
                }));
            }
            match self.records.blob(id) {
                Ok(Some(b)) => Ok(Some(net::Blob::from_bytes(b.into(), offset))),
                Ok(None) => Ok(None),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            }
        })
    }

    fn record_ids<'a>(&'a self, name: &'a str) -> BoxFuture<'a, std::io::Result<Vec<BlobId>>> {
        Box::pin(async move {
            let Ok(name) = PackageName::parse(name) else {
                return Ok(Vec::new());
            };
            let list = self
                .records
                .list(&name)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(list.iter().map(|s| BlobId::of(&s.to_bytes())).collect())
        })
    }
}

/// Admits only correctly signed, unexpired pointers (and advisories, under their own key
/// prefix) stored under their signer's key, and keeps the newer of two (a replayed older
/// pointer or advisory never replaces a newer one: R4, R35).
#[derive(Debug, Clone, Default)]
pub struct PointerValidator {
    clock: Clock,
}

impl PointerValidator {
    /// A validator that judges expiry by `clock`.
    pub fn new(clock: Clock) -> PointerValidator {
        PointerValidator { clock }
    }
}

impl RecordValidator for PointerValidator {
    fn validate(&self, key: &[u8], value: &[u8]) -> bool {
        let now = self.clock.now_ms();
        if key.starts_with(advisory::KEY_PREFIX.as_bytes()) {
            return advisory::validate(key, value, now).is_ok();
        }
        pointer::validate(key, value, now).is_ok()
    }

    fn replaces(&self, key: &[u8], old: &[u8], new: &[u8]) -> bool {
        let now = self.clock.now_ms();
        let seq = |v: &[u8]| {
            if key.starts_with(advisory::KEY_PREFIX.as_bytes()) {
                return advisory::validate(key, v, now).ok().map(|a| a.get().seq);
            }
            pointer::validate(key, v, now).ok().map(|p| p.get().seq)
        };
        match (seq(old), seq(new)) {
            (Some(o), Some(n)) => n > o,
            (None, Some(_)) => true,
            _ => false,
        }
    }
}

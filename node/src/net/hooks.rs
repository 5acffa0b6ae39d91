//! What the swarm asks of the rest of the node: blobs (and which records it holds) to serve, and
//! whether a DHT record may be stored.
//!
//! Both are trait objects set once at [`spawn`](super::spawn), so `net` depends on neither the
//! store nor the record format. [`BlobSource`] must only expose blobs that are complete and
//! verified (the store's invariant); the swarm serves exactly `len - offset` bytes of them and
//! never reads more. [`RecordValidator`] runs on every record before it enters our Kademlia
//! store, whether we publish it or a peer pushes it, and on every value a query returns.

use std::fmt;
use std::io;

use futures::future::BoxFuture;
use open_registry_protocol::BlobId;
use tokio::io::AsyncRead;

/// A blob opened for serving.
pub struct Blob {
    /// The blob's full length in bytes.
    pub len: u64,
    /// Its bytes from the requested offset on.
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob").field("len", &self.len).finish()
    }
}

impl Blob {
    /// A blob held in memory (tests, small blobs).
    pub fn from_bytes(bytes: bytes::Bytes, offset: u64) -> Blob {
        let len = bytes.len() as u64;
        let start = usize::try_from(offset.min(len)).unwrap_or(bytes.len());
        Blob {
            len,
            reader: Box::new(io::Cursor::new(bytes.slice(start..))),
        }
    }
}

/// Where the swarm finds the blobs it serves: the node's verified store.
pub trait BlobSource: Send + Sync + 'static {
    /// Opens blob `id` with its reader positioned at byte `offset`; `Ok(None)` when we do not
    /// have it. If `offset` is past the end, return the blob anyway (any reader): the swarm
    /// compares `offset` with `len` and refuses the request.
    fn open<'a>(&'a self, id: &'a BlobId, offset: u64) -> BoxFuture<'a, io::Result<Option<Blob>>>;

    /// The blob ids of the signed records held for package `name` (the
    /// [record-ids protocol](super::record_ids)); an unknown or malformed name has none. The
    /// default holds none.
    fn record_ids<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<BlobId>>> {
        let _ = name;
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// Decides which Kademlia value records we store and hand to callers.
pub trait RecordValidator: Send + Sync + 'static {
    /// Whether `value` may be stored under `key`. Must be cheap and must not block: it runs
    /// on the swarm task.
    fn validate(&self, key: &[u8], value: &[u8]) -> bool;

    /// Whether a valid incoming `new` value replaces the `old` one we hold under `key`
    /// (Kademlia keeps one value per key per node). The default always replaces; a signed
    /// record format should keep the newer one, so a replayed old record cannot roll a
    /// storing node back (R4).
    fn replaces(&self, key: &[u8], old: &[u8], new: &[u8]) -> bool {
        let _ = (key, old, new);
        true
    }
}

impl<F> RecordValidator for F
where
    F: Fn(&[u8], &[u8]) -> bool + Send + Sync + 'static,
{
    fn validate(&self, key: &[u8], value: &[u8]) -> bool {
        self(key, value)
    }
}

/// A validator that accepts nothing: a node that stores no one's records.
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectAll;

impl RecordValidator for RejectAll {
    fn validate(&self, _: &[u8], _: &[u8]) -> bool {
        false
    }
}

/// A source with no blobs.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBlobs;

impl BlobSource for NoBlobs {
    fn open<'a>(&'a self, _: &'a BlobId, _: u64) -> BoxFuture<'a, io::Result<Option<Blob>>> {
        Box::pin(async { Ok(None) })
    }
}

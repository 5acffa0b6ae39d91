//! [`PeerError`]: why the network could not provide what the read path asked for.
//!
//! Every variant is worth a retry later (another provider may appear, a peer may come back)
//! except [`PeerError::NoQuorum`], which is an answer: the trusted operators do not agree on a
//! revision (or have none), so the package is not available from peers.

use std::sync::Arc;

use open_registry_protocol::BlobId;

use crate::net::NetError;
use crate::store::WriteError;

/// A failed peer fetch or lookup. Cloneable: one failure is shared by every request of a flight.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Fewer than the threshold of trusted operators agree on a packument revision.
    #[error("{found} trusted records found on the network, {threshold} must agree")]
    NoQuorum { found: usize, threshold: usize },
    /// No provider is known for the blob.
    #[error("no peer provides {0}")]
    NoProviders(BlobId),
    /// Finding providers failed.
    #[error("finding providers of {id}")]
    Lookup {
        id: BlobId,
        #[source]
        source: Arc<NetError>,
    },
    /// Every provider tried failed; `last` is why the last one did.
    #[error("no peer delivered {id}")]
    Undelivered {
        id: BlobId,
        #[source]
        last: Arc<PeerError>,
    },
    /// The fetch's whole budget passed before a provider delivered.
    #[error("the peer fetch deadline passed")]
    Deadline,
    /// A transfer failed on the wire (refused, reset, stalled, too slow).
    #[error("peer transfer")]
    Net(#[source] Arc<NetError>),
    /// A peer's bytes did not match the blob's id or the integrity promised for it.
    #[error("a peer sent bytes that do not verify")]
    Integrity(#[source] open_registry_protocol::IntegrityError),
    /// A peer sent nothing, or more than the size cap.
    #[error("a peer sent {0}")]
    Size(String),
    /// The local store could not take the blob.
    #[error("the local store failed")]
    Store(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

impl From<NetError> for PeerError {
    fn from(e: NetError) -> Self {
        PeerError::Net(Arc::new(e))
    }
}

impl From<WriteError> for PeerError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Integrity(e) => PeerError::Integrity(e),
            WriteError::Empty => PeerError::Size("an empty blob".into()),
            WriteError::TooLarge(n) => PeerError::Size(format!("more than {n} bytes")),
            WriteError::Io(e) => PeerError::store(e),
        }
    }
}

impl PeerError {
    /// A store failure.
    pub fn store(e: impl std::error::Error + Send + Sync + 'static) -> PeerError {
        PeerError::Store(Arc::new(e))
    }
}

//! [`FetchError`]: why the Fetcher could not answer, and what the gateway tells npm about it.

use std::sync::Arc;

use open_registry_gateway as gateway;
use open_registry_protocol::IntegrityError;

use super::upstream::UpstreamError;
use crate::peer::PeerError;
use crate::store::WriteError;

/// Why a fetch failed. Cloneable: one failure is shared by every request of a flight.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// No source has it (an answer, not a failure).
    #[error("{0}")]
    NotFound(String),
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The network failed, or the trusted operators do not agree.
    #[error("peers could not provide it")]
    Peers(#[from] PeerError),
    /// The upstream sent bytes that match neither the promised integrity nor the content id.
    #[error("upstream sent bytes that do not verify")]
    Integrity(#[source] IntegrityError),
    /// A document that does not parse (what, and why).
    #[error("{what}")]
    Invalid {
        what: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The local store failed: the disk, not the bytes.
    #[error("the local store failed")]
    Store(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// The task running a flight panicked.
    #[error("the fetch task failed unexpectedly")]
    Panicked,
}

impl FetchError {
    /// A store failure.
    pub fn store(e: impl std::error::Error + Send + Sync + 'static) -> FetchError {
        FetchError::Store(Arc::new(e))
    }

    /// A document that does not parse.
    pub fn invalid(
        what: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> FetchError {
        FetchError::Invalid {
            what: what.into(),
            source: Arc::new(e),
        }
    }
}

/// A store failure as it reached the Fetcher (an index or a file), logged once here.
pub(super) fn store_err(e: impl std::error::Error + Send + Sync + 'static) -> FetchError {
    tracing::error!(error = %crate::errors::chain(&e), "store failed");
    FetchError::store(e)
}

impl From<WriteError> for FetchError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Integrity(e) => FetchError::Integrity(e),
            WriteError::Empty => FetchError::Upstream(UpstreamError::Body("empty body".into())),
            WriteError::TooLarge(n) => FetchError::Upstream(UpstreamError::TooLarge(n)),
            WriteError::Io(e) => FetchError::store(e),
        }
    }
}

impl From<FetchError> for gateway::Error {
    fn from(e: FetchError) -> Self {
        // The whole chain is the message npm prints: "upstream sent bytes that do not verify:
        // sha512 mismatch ...". Only the store's detail stays in the log.
        let msg = crate::errors::chain(&e);
        match e {
            FetchError::NotFound(_)
            | FetchError::Upstream(UpstreamError::NotFound(_))
            | FetchError::Peers(PeerError::NoQuorum { .. }) => gateway::Error::NotFound(msg),
            FetchError::Upstream(UpstreamError::Timeout(_)) => gateway::Error::Timeout(msg),
            FetchError::Upstream(UpstreamError::Down { .. }) => gateway::Error::Unavailable(msg),
            FetchError::Upstream(_)
            | FetchError::Integrity(_)
            | FetchError::Invalid { .. }
            | FetchError::Peers(_) => gateway::Error::BadGateway(msg),
            FetchError::Store(_) => gateway::Error::Unavailable(
                "this node's local store failed (disk full or failing); its log has the details"
                    .into(),
            ),
            FetchError::Panicked => gateway::Error::Internal(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_messages() {
        let e: gateway::Error = FetchError::Panicked.into();
        assert!(matches!(e, gateway::Error::Internal(_)));
        let e: gateway::Error = FetchError::Peers(PeerError::NoQuorum {
            found: 1,
            threshold: 2,
        })
        .into();
        assert!(
            matches!(&e, gateway::Error::NotFound(m) if m.contains("2 must agree")),
            "{e:?}"
        );
        let e: gateway::Error = FetchError::store(std::io::Error::other("/var/lib/x: EIO")).into();
        assert!(
            matches!(&e, gateway::Error::Unavailable(m) if !m.contains("/var")),
            "{e:?}"
        );
        let e: gateway::Error =
            FetchError::Integrity(IntegrityError::Unsupported("x".into())).into();
        assert!(
            matches!(&e, gateway::Error::BadGateway(m) if m.starts_with("upstream sent bytes that do not verify: ")),
            "{e:?}"
        );
    }
}

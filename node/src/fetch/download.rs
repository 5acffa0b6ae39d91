//! The one download loop: an upstream tarball body, streamed through the verifier into the
//! store, or (when the disk cannot take it) into memory, bounded, to be passed through.
//!
//! Either way the bytes are checked against the promised integrity and the content id before
//! anything is served, every chunk waits at most until the operation's deadline, and body
//! bytes and body failures are counted alike.

use bytes::BytesMut;
use futures::StreamExt as _;
use open_registry_protocol::packument::DistRef;
use open_registry_protocol::{Integrity, PackageName, Verifier};
use tokio::time::Instant;

use super::upstream::{self, UpstreamError};
use super::{FetchError, Fetched, Fetcher, PASS_THROUGH_CAP};
use crate::metrics::Metrics;
use crate::store::{WriteError, Writer};

/// Where a download goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Into {
    /// Into the store (the normal case).
    Store,
    /// Into memory, because the store failed: served once, not cached.
    Memory,
}

/// A download's destination, checking as it goes.
enum Sink<'a> {
    Store(Writer<'a>),
    Memory {
        buf: BytesMut,
        verifier: Verifier,
        cap: u64,
    },
}

fn too_big_to_pass(cap: u64) -> FetchError {
    FetchError::store(std::io::Error::other(format!(
        "the store cannot take the tarball, and it is larger than {cap} bytes to pass through"
    )))
}

impl Fetcher {
    /// One attempt: starts the download of `file` and streams its body into `into`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn download(
        &self,
        upstream: &dyn upstream::Source,
        name: &PackageName,
        file: &str,
        dist: &DistRef,
        integrity: &Integrity,
        deadline: Instant,
        into: Into,
    ) -> Result<Fetched, FetchError> {
        let cap = match into {
            Into::Store => self.max_tarball,
            Into::Memory => PASS_THROUGH_CAP.min(self.max_tarball),
        };
        let download = upstream
            .tarball(name, file, dist.tarball.as_deref(), deadline)
            .await?;
        if download.len.is_some_and(|n| n > cap) {
            return Err(match into {
                Into::Store => UpstreamError::TooLarge(cap).into(),
                Into::Memory => too_big_to_pass(cap),
            });
        }
        let verifier = Verifier::new(integrity.clone());
        let mut sink = match into {
            Into::Store => Sink::Store(
                self.store
                    .blobs
                    .writer(verifier, cap)
                    .await
                    .map_err(|e| FetchError::from(self.metrics.refused(WriteError::Io(e))))?,
            ),
            Into::Memory => Sink::Memory {
                buf: BytesMut::new(),
                verifier,
                cap,
            },
        };
        let mut body = download.body;
        loop {
            let next = tokio::time::timeout_at(deadline, body.next())
                .await
                .map_err(|_| UpstreamError::Timeout(upstream.budget().timeout))?;
            match next {
                None => break,
                Some(Ok(chunk)) => {
                    Metrics::add(&self.metrics.upstream_bytes, chunk.len() as u64);
                    match &mut sink {
                        Sink::Store(w) => w
                            .write(&chunk)
                            .await
                            .map_err(|e| FetchError::from(self.metrics.refused(e)))?,
                        Sink::Memory { buf, verifier, cap } => {
                            if buf.len() as u64 + chunk.len() as u64 > *cap {
                                return Err(too_big_to_pass(*cap));
                            }
                            verifier.update(&chunk);
                            buf.extend_from_slice(&chunk);
                        }
                    }
                }
                Some(Err(e)) => {
                    Metrics::inc(&self.metrics.upstream_errors);
                    return Err(e.into());
                }
            }
        }
        match sink {
            Sink::Store(w) => w
                .commit()
                .await
                .map(Fetched::Stored)
                .map_err(|e| FetchError::from(self.metrics.refused(e))),
            Sink::Memory { buf, verifier, .. } => {
                if verifier.is_empty() {
                    return Err(FetchError::from(self.metrics.refused(WriteError::Empty)));
                }
                let id = verifier.finish().map_err(|e| {
                    FetchError::from(self.metrics.refused(WriteError::Integrity(e)))
                })?;
                Ok(Fetched::Unstored(id, buf.freeze()))
            }
        }
    }
}

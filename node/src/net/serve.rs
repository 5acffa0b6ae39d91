//! Serving blobs to peers: the inbound side of the blob protocol.
//!
//! One task accepts inbound blob streams; each accepted stream is served on its own task,
//! tracked by the node's `TaskTracker` and cancelled with the node. Bounds (R7, R16):
//! at most `max_inbound_transfers` streams are served at once, and at most half of them for
//! any one peer, so a peer that opens streams and never reads them cannot lock the others out
//! (the rest are reset on arrival, so a flood costs us nothing but the reset); the request must
//! arrive within [`REQUEST_READ_TIMEOUT`] (or the stall timeout, if shorter); every read from the store and every write to the peer must
//! progress within `stall_timeout` (a peer reading at 1 byte/s is cut off); and the whole
//! transfer must end within `request_timeout`. Memory per transfer is one [`CHUNK`] buffer.
//!
//! Invariant: after an OK header we send exactly the announced number of bytes, or reset the
//! stream; a source that yields more is cut at the length, one that yields fewer is a reset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream};
use libp2p_stream::{Control, IncomingStreams};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::blob::{self, BLOB_PROTOCOL, CHUNK, Status};
use super::{BlobSource, Limits, NetError};
use crate::metrics::Metrics;

/// How long a peer has to send its (at most 73-byte) request after opening the stream.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers the blob protocol and starts the accept loop.
pub(crate) fn start(
    control: &mut Control,
    blobs: Arc<dyn BlobSource>,
    limits: &Limits,
    metrics: Option<Arc<Metrics>>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<(), NetError> {
    let incoming = control
        .accept(BLOB_PROTOCOL)
        .map_err(|e| NetError::Setup(format!("{BLOB_PROTOCOL}: {e}")))?;
    let server = Server {
        blobs,
        permits: Arc::new(Semaphore::new(limits.max_inbound_transfers)),
        per_peer_max: (limits.max_inbound_transfers / 2).max(1),
        per_peer: Mutex::new(HashMap::new()),
        stall: limits.stall_timeout,
        total: limits.request_timeout,
        metrics,
        tracker: tracker.clone(),
        cancel,
    };
    tracker.spawn(server.run(incoming));
    Ok(())
}

struct Server {
    blobs: Arc<dyn BlobSource>,
    permits: Arc<Semaphore>,
    per_peer_max: usize,
    /// Transfers being served per peer. std Mutex: never held across an await.
    per_peer: Mutex<HashMap<PeerId, usize>>,
    stall: Duration,
    total: Duration,
    /// Where blobs served are counted (`peer_serves`, `peer_served_bytes`).
    metrics: Option<Arc<Metrics>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Server {
    async fn run(self, mut incoming: IncomingStreams) {
        let this = Arc::new(self);
        loop {
            let (peer, stream) = tokio::select! {
                _ = this.cancel.cancelled() => return,
                next = incoming.next() => match next {
                    Some(s) => s,
                    None => return,
                },
            };
            if !this.enter(peer) {
                // Dropping the stream resets it; the peer retries or fails over.
                tracing::debug!(%peer, "peer at its share of the blob server, stream reset");
                continue;
            }
            match this.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let this2 = this.clone();
                    this.tracker.spawn(async move {
                        this2.clone().serve_one(peer, stream, permit).await;
                        this2.leave(peer);
                    });
                }
                Err(_) => {
                    this.leave(peer);
                    tracing::debug!(%peer, "blob server at capacity, stream reset");
                }
            }
        }
    }

    /// Counts a new transfer for `peer`, unless it already has its share.
    fn enter(&self, peer: PeerId) -> bool {
        let mut m = self.per_peer.lock().expect("per-peer map poisoned");
        let n = m.entry(peer).or_default();
        if *n >= self.per_peer_max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, peer: PeerId) {
        let mut m = self.per_peer.lock().expect("per-peer map poisoned");
        if let Some(n) = m.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&peer);
            }
        }
    }

    async fn serve_one(
        self: Arc<Self>,
        peer: PeerId,
        mut stream: Stream,
        _permit: OwnedSemaphorePermit,
    ) {
        let outcome = tokio::select! {
            _ = self.cancel.cancelled() => return,
            r = timeout(self.total, self.serve(&mut stream)) => r,
        };
        match outcome {
            Ok(Ok(Some(sent))) => {
                if let Some(m) = &self.metrics {
                    Metrics::inc(&m.peer_serves);
                    Metrics::add(&m.peer_served_bytes, sent);
                }
                tracing::debug!(%peer, sent, "blob served");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "blob transfer aborted"),
            Err(_) => tracing::debug!(%peer, after = ?self.total, "blob transfer took too long"),
        }
    }

    /// Serves one request; `Ok(Some(n))` after sending `n` bytes, `Ok(None)` after a refusal.
    async fn serve(&self, stream: &mut Stream) -> std::io::Result<Option<u64>> {
        let req = match timeout(
            REQUEST_READ_TIMEOUT.min(self.stall),
            blob::read_request(stream),
        )
        .await
        {
            Ok(Ok(req)) => req,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                self.refuse(stream, Status::BadRequest).await?;
                return Ok(None);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        };
        let Some(id) = req.blob_id() else {
            self.refuse(stream, Status::BadRequest).await?;
            return Ok(None);
        };
        let mut source = match self.stalling(self.blobs.open(&id, req.offset)).await {
            Ok(Some(b)) if req.offset <= b.len => b,
            Ok(Some(_)) => {
                self.refuse(stream, Status::BadRequest).await?;
                return Ok(None);
            }
            Ok(None) => {
                self.refuse(stream, Status::NotFound).await?;
                return Ok(None);
            }
            Err(e) => {
                tracing::warn!(blob = %id.short(), error = %e, "cannot open blob to serve it");
                self.refuse(stream, Status::Unavailable).await?;
                return Ok(None);
            }
        };
        let remaining = source.len - req.offset;
        self.stalling(blob::write_header(stream, Status::Ok, remaining))
            .await?;
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        while sent < remaining {
            let want = usize::try_from(remaining - sent).map_or(CHUNK, |r| r.min(CHUNK));
            let n = self.stalling(source.reader.read(&mut buf[..want])).await?;
            if n == 0 {
                // Returning drops the stream unclosed: the peer sees a reset, not a short blob.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("source ended after {sent} of {remaining} bytes"),
                ));
            }
            self.stalling(stream.write_all(&buf[..n])).await?;
            sent += n as u64;
        }
        self.stalling(stream.close()).await?;
        Ok(Some(sent))
    }

    async fn refuse(&self, stream: &mut Stream, status: Status) -> std::io::Result<()> {
        self.stalling(blob::write_header(stream, status, 0)).await?;
        self.stalling(stream.close()).await
    }

    /// Runs one read or write under the stall deadline.
    async fn stalling<T>(&self, f: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
        timeout(self.stall, f)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "stalled"))?
    }
}

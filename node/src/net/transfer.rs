//! One blob coming in from a peer: the outbound side of the blob protocol.
//!
//! [`Transfer`] is a `Stream` of byte chunks, handed to the Fetcher, which pipes it into its
//! verifier and writer and fails over to the next provider on any error. Bounds (R7): the
//! announced length was checked against the caller's cap before a byte was read, and no byte
//! past it is ever read; every chunk must arrive within the stall deadline; the whole transfer
//! must end by the caller's deadline. Memory is one [`CHUNK`] buffer. After the first error the
//! stream ends. The outbound-transfer permit is released when the transfer ends or is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::AsyncRead;
use libp2p::{PeerId, Stream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::NetError;
use super::blob::CHUNK;

/// A blob being received. Yields the bytes after the requested offset, then ends.
#[must_use = "a transfer does nothing unless polled"]
pub struct Transfer {
    peer: PeerId,
    stream: Option<Stream>,
    len: u64,
    got: u64,
    buf: Vec<u8>,
    stall: Duration,
    total: Duration,
    stall_timer: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("peer", &self.peer)
            .field("len", &self.len)
            .field("got", &self.got)
            .finish()
    }
}

impl Transfer {
    pub(crate) fn new(
        peer: PeerId,
        stream: Stream,
        len: u64,
        stall: Duration,
        started: Instant,
        total: Duration,
        permit: OwnedSemaphorePermit,
    ) -> Transfer {
        Transfer {
            peer,
            stream: Some(stream),
            len,
            got: 0,
            buf: Vec::new(),
            stall,
            total,
            stall_timer: Box::pin(tokio::time::sleep(stall)),
            deadline: Box::pin(tokio::time::sleep_until(started + total)),
            _permit: Some(permit),
        }
    }

    /// The peer sending the blob.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// How many bytes the transfer will yield in total (the peer's announcement, within the cap).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the peer announced zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.got
    }

    /// Reads the whole blob into memory (small blobs and tests; the Fetcher streams).
    pub async fn read_all(mut self) -> Result<Vec<u8>, NetError> {
        use futures::StreamExt as _;
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0).min(1 << 24));
        while let Some(chunk) = self.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// Ends the transfer: drops the stream (resetting it if unfinished) and frees the permit.
    fn finish(&mut self) {
        self.stream = None;
        self._permit = None;
        self.buf = Vec::new();
    }

    fn fail(&mut self, e: NetError) -> Poll<Option<Result<Bytes, NetError>>> {
        self.finish();
        Poll::Ready(Some(Err(e)))
    }
}

impl futures::Stream for Transfer {
    type Item = Result<Bytes, NetError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        if this.got == this.len {
            // Bytes past the announced length are never read; the blob is complete.
            this.finish();
            return Poll::Ready(None);
        }
        if this.deadline.is_elapsed() {
            // A fast peer never leaves us `Pending`; check the deadline between chunks too.
            let e = NetError::Timeout {
                what: "blob transfer",
                after: this.total,
            };
            return this.fail(e);
        }
        let want = usize::try_from(this.len - this.got).map_or(CHUNK, |r| r.min(CHUNK));
        if this.buf.len() < want {
            this.buf.resize(want, 0);
        }
        match Pin::new(stream).poll_read(cx, &mut this.buf[..want]) {
            Poll::Ready(Ok(0)) => {
                let e = NetError::Truncated {
                    peer: this.peer,
                    got: this.got,
                    expected: this.len,
                };
                this.fail(e)
            }
            Poll::Ready(Ok(n)) => {
                this.got += n as u64;
                let next = Instant::now() + this.stall;
                this.stall_timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(Bytes::copy_from_slice(&this.buf[..n]))))
            }
            Poll::Ready(Err(e)) => {
                let e = NetError::Io {
                    peer: this.peer,
                    reason: e.to_string(),
                };
                this.fail(e)
            }
            Poll::Pending => {
                // Both timers are polled only while waiting, so they are registered with `cx`.
                if this.deadline.as_mut().poll(cx).is_ready() {
                    let e = NetError::Timeout {
                        what: "blob transfer",
                        after: this.total,
                    };
                    return this.fail(e);
                }
                if this.stall_timer.as_mut().poll(cx).is_ready() {
                    let e = NetError::Stalled {
                        peer: this.peer,
                        after: this.stall,
                        got: this.got,
                    };
                    return this.fail(e);
                }
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.stream.is_none() {
            return (0, Some(0));
        }
        let left = usize::try_from((self.len - self.got).div_ceil(CHUNK as u64)).ok();
        (0, left.map(|l| l + 1))
    }
}

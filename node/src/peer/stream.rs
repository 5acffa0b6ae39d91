//! A blob from a peer, streamed to the HTTP client while it is verified and stored.
//!
//! The flight that fetches a tarball hands a [`Tap`] down with the fetch. When a trusted
//! operator's transfer starts answering, the tap sends the waiting request a [`Streamed`] body,
//! and from then on every chunk goes to the store writer and to that body at once
//! ([`receive_into`]). Only a trusted operator's transfer opens a body: its announced length
//! bounds what the client is sent, and an untrusted provider could announce any length and fill
//! it with bytes that turn out wrong only at the end, failing the answer. An untrusted
//! provider's blob is received whole and verified before it is served, as before.
//!
//! **The body verifies what it yields.** It hashes every byte it hands the client and holds its
//! last chunk back until the hash of everything is the blob's id and the store's writer has
//! verified the transfer (against the id and the npm integrity), so a client never sees a
//! complete answer whose bytes are not the blob, whichever transfers they came from. The commit
//! that makes the blob durable goes on after the answer has ended: an answer promises the
//! client bytes, not that the node keeps them, and the store still acknowledges nothing before
//! it is durable (a request that comes meanwhile joins the flight, which ends once the blob is
//! stored). The answer carries no Content-Length: it ends when the verified blob does.
//!
//! **A transfer that breaks does not break the answer.** When a provider stalls, runs out of
//! time or goes away mid-transfer, the body stays open, and the next provider's transfer of the
//! same blob (announcing the same length) feeds it from the byte it had reached on
//! (content-addressed: any provider's bytes are the same; the store still receives and verifies
//! each transfer whole). When no provider
//! completes it, the body reads the rest from the store if the blob got there by another way
//! (the upstream), and fails otherwise. A transfer whose bytes do not verify ends the answer at
//! once (some of them may already be out), the blob is not kept, and the peer is remembered in
//! [`BadPeers`] so that the client's retry is served by another provider.
//!
//! A client slower than the peers does not slow the ingest down: the body buffers a bounded
//! number of chunks ([`TAP_CHUNKS`]); when it falls further behind it is detached, and once the
//! blob is stored it reads the rest from the store.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt as _};
use open_registry_protocol::{BlobId, Verifier};
use tokio::io::AsyncSeekExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::io::ReaderStream;

use super::PeerError;
use crate::metrics::Metrics;
use crate::store::Store;

/// How many chunks a streamed body may fall behind the transfer before it is detached (and
/// reads the rest from the store once the blob is stored): 16 MiB of the blob protocol's chunks.
pub(crate) const TAP_CHUNKS: usize = 256;
/// How long a peer that served bad bytes for a blob is skipped for that blob.
pub(crate) const BAD_PEER_TTL: Duration = Duration::from_secs(10 * 60);
/// How many (blob, peer) pairs [`BadPeers`] remembers at most.
pub(crate) const BAD_PEERS_KEPT: usize = 1024;

tokio::task_local! {
    /// The tap of the fetch running in this task, for [`Peers`](super::Peers)'s receive to
    /// feed: set around one `fetch_blob` call, so that the provider lookup between the Fetcher
    /// and the receive does not have to carry it.
    static TAP: Tap;
}

/// Runs `fut` with `tap` (if any) as the tap the receive of a blob within it feeds.
pub(crate) async fn with_tap<F: Future>(tap: Option<Tap>, fut: F) -> F::Output {
    match tap {
        Some(tap) => TAP.scope(tap, fut).await,
        None => fut.await,
    }
}

/// The tap [`with_tap`] set for the running fetch, if any.
pub(crate) fn current_tap() -> Option<Tap> {
    TAP.try_with(Tap::clone).ok()
}

/// What a tap sends the request waiting for the blob when a transfer starts answering.
pub(crate) struct Streamed {
    /// The blob.
    pub id: BlobId,
    /// Its length as the first provider announced it: not promised (the body ends where the
    /// verified blob does).
    pub len: u64,
    /// The bytes, as they are received; the last chunk once all of them verified.
    pub body: BoxStream<'static, io::Result<Bytes>>,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// How the fetch of a streamed blob ended, as its body learns it: stored and verified, or why
/// the body must fail.
type Outcome = Result<(), String>;

/// A body that is out, between the transfers feeding it.
struct Open {
    /// The blob's length as the transfer that opened the body announced it.
    len: u64,
    /// How many bytes of the blob went to the body, whichever transfers sent them: the next
    /// transfer feeds it from there on.
    sent: u64,
    /// `None` once the body was detached (too far behind, or gone).
    chunks: Option<mpsc::Sender<Bytes>>,
    /// Told once a transfer's bytes are all in and verified (or why not), before the blob is
    /// durable: what the body's last chunk waits for when every byte came from the feeds.
    verified: Option<oneshot::Sender<Outcome>>,
    outcome: oneshot::Sender<Outcome>,
}

enum State {
    /// No body yet: the waiting request's channel.
    Waiting(oneshot::Sender<Streamed>),
    /// A body is out; the next transfer of the blob feeds it.
    Open(Open),
    /// A transfer is feeding the body.
    Feeding,
    /// Done: the blob was stored, or the body failed, or its request went away.
    Closed,
}

/// Where the flight's leader waits for the blob's bytes. Cloneable (one shared state); when the
/// last clone is dropped with a body out that nothing completed, the body reads the rest of the
/// blob from the store if it got there by another way (the upstream), and fails otherwise.
#[derive(Clone)]
pub(crate) struct Tap {
    state: Arc<Mutex<State>>,
    store: Arc<Store>,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").finish_non_exhaustive()
    }
}

impl Tap {
    /// A tap, and the receiver its body arrives on. The receiver errs when the fetch ends
    /// without streaming.
    pub(crate) fn new(store: Arc<Store>) -> (Tap, oneshot::Receiver<Streamed>) {
        let (tx, rx) = oneshot::channel();
        let tap = Tap {
            state: Arc::new(Mutex::new(State::Waiting(tx))),
            store,
        };
        (tap, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A transfer of `len` bytes of `id` started answering: the feed for it, when this tap
    /// streams it (the first transfer of the blob from a provider that may open the
    /// body, `opens`: a trusted operator; or the next one of the same length after a transfer
    /// that broke).
    fn begin(&self, id: &BlobId, len: u64, opens: bool) -> Option<Feed> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, State::Feeding) {
            State::Waiting(tx) if opens => {
                let (chunks_tx, chunks_rx) = mpsc::channel(TAP_CHUNKS);
                let (verified_tx, verified_rx) = oneshot::channel();
                let (outcome_tx, outcome_rx) = oneshot::channel();
                let body = Body {
                    id: *id,
                    len,
                    offset: 0,
                    hasher: Box::default(),
                    chunks: Some(chunks_rx),
                    verified: Some(verified_rx),
                    outcome: Some(outcome_rx),
                    file: None,
                    store: self.store.clone(),
                    done: false,
                };
                let streamed = Streamed {
                    id: *id,
                    len,
                    body: body.into_stream(),
                };
                if tx.send(streamed).is_err() {
                    // The request went away; nobody to stream to.
                    *state = State::Closed;
                    return None;
                }
                Some(Feed::new(
                    self.clone(),
                    Open {
                        len,
                        sent: 0,
                        chunks: Some(chunks_tx),
                        verified: Some(verified_tx),
                        outcome: outcome_tx,
                    },
                ))
            }
            State::Open(open) if open.len == len => Some(Feed::new(self.clone(), open)),
            other => {
                *state = other;
                None
            }
        }
    }
}

/// One transfer feeding a body, from the byte the body had reached on. Dropped without
/// [`Feed::done`], it leaves the body open for the next transfer.
struct Feed {
    tap: Tap,
    open: Option<Open>,
    /// How many bytes of this transfer went by.
    at: u64,
    /// Whether this transfer sent the body anything.
    fed: bool,
}

impl Feed {
    fn new(tap: Tap, open: Open) -> Feed {
        Feed {
            tap,
            open: Some(open),
            at: 0,
            fed: false,
        }
    }

    /// Hands the part of `chunk` past what the body already has to it, or detaches a body that
    /// is too far behind or gone.
    fn send(&mut self, chunk: &Bytes) {
        let start = self.at;
        self.at += chunk.len() as u64;
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if self.at <= open.sent {
            return;
        }
        let Some(tx) = open.chunks.as_ref() else {
            return;
        };
        let tail = chunk.slice(open.sent.saturating_sub(start) as usize..);
        match tx.try_send(tail) {
            Ok(()) => {
                open.sent = self.at;
                self.fed = true;
            }
            // Full or closed: the body takes the rest from the store once it is there.
            Err(_) => open.chunks = None,
        }
    }

    /// This transfer's bytes are all in and verified as the blob: the body may end before the
    /// blob is durable.
    fn verified(&mut self) {
        if let Some(tx) = self.open.as_mut().and_then(|o| o.verified.take()) {
            let _ = tx.send(Ok(()));
        }
    }

    /// Ends the feed. `Ok`: the blob is verified and stored. `Err(Some(why))`: the body must
    /// fail (it may have bytes that do not verify). `Err(None)`: the transfer broke; the next
    /// one goes on feeding the body.
    fn end(&mut self, outcome: Result<(), Option<String>>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let mut state = self.tap.lock();
        let outcome = match outcome {
            Ok(()) => Ok(()),
            Err(Some(why)) => Err(why),
            Err(None) => {
                *state = State::Open(open);
                return;
            }
        };
        *state = State::Closed;
        drop(state);
        if let Some(tx) = open.verified {
            let _ = tx.send(outcome.clone());
        }
        let _ = open.outcome.send(outcome);
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.end(Err(None));
    }
}

/// The body of a streamed blob (see the module): chunks as the feeds send them, then (after a
/// detachment, or when the blob was stored another way) the rest from the store; every byte
/// hashed, and the chunk that completes the announced length held back until the hash of all
/// of them is the blob's id and the blob is stored.
struct Body {
    id: BlobId,
    /// Its length as the transfer that opened the body announced it: nothing past it is sent.
    len: u64,
    /// Bytes yielded so far.
    offset: u64,
    /// BLAKE3 of those bytes (boxed: the hasher is large).
    hasher: Box<blake3::Hasher>,
    chunks: Option<mpsc::Receiver<Bytes>>,
    verified: Option<oneshot::Receiver<Outcome>>,
    outcome: Option<oneshot::Receiver<Outcome>>,
    file: Option<ReaderStream<tokio::fs::File>>,
    store: Arc<Store>,
    done: bool,
}

impl Body {
    fn into_stream(self) -> BoxStream<'static, io::Result<Bytes>> {
        futures::stream::unfold(self, |mut b| async move {
            if b.done {
                return None;
            }
            match b.next().await {
                Ok(Some(chunk)) => Some((Ok(chunk), b)),
                Ok(None) => None,
                Err(e) => {
                    b.done = true;
                    Some((Err(e), b))
                }
            }
        })
        .boxed()
    }

    /// Waits for the fetch to end: the blob stored and verified, or why the body fails.
    async fn settled(&mut self) -> io::Result<()> {
        let Some(rx) = self.outcome.take() else {
            return Ok(());
        };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(self.spoiled(&why)),
            // Nothing completed the blob through this body, and nothing will; it may still have
            // been stored by another way (the upstream).
            Err(_) if self.store.blobs.contains(&self.id) => Ok(()),
            Err(_) => Err(io::Error::other(format!(
                "the fetch of blob {} ended without it",
                self.id
            ))),
        }
    }

    /// Waits until a transfer that fed this body has all its bytes in and verified (or, when
    /// no transfer will say, until the fetch ends): the blob need not be durable yet.
    async fn verified(&mut self) -> io::Result<()> {
        let Some(rx) = self.verified.take() else {
            return self.settled().await;
        };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(self.spoiled(&why)),
            Err(_) => self.settled().await,
        }
    }

    fn spoiled(&self, why: &str) -> io::Error {
        io::Error::other(format!(
            "blob {} from a peer did not arrive intact: {why}",
            self.id
        ))
    }

    /// The next chunk of the blob, from the feeds or the store; `None` at its end.
    async fn receive(&mut self) -> io::Result<Option<Bytes>> {
        if let Some(rx) = self.chunks.as_mut() {
            if let Some(chunk) = rx.recv().await {
                return Ok(Some(chunk));
            }
            self.chunks = None;
        }
        if self.file.is_none() {
            self.settled().await?;
            let (mut file, len) = self.store.blobs.open_read(&self.id).await?.ok_or_else(|| {
                io::Error::other(format!("blob {} left the store while streamed", self.id))
            })?;
            if len != self.len {
                return Err(io::Error::other(format!(
                    "blob {} is {len} bytes in the store, {} were announced",
                    self.id, self.len
                )));
            }
            file.seek(io::SeekFrom::Start(self.offset)).await?;
            self.file = Some(ReaderStream::with_capacity(file, 64 << 10));
        }
        let file = self.file.as_mut().expect("opened above");
        file.next().await.transpose()
    }

    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        if self.offset >= self.len {
            return Ok(None);
        }
        let chunk = self.receive().await?.ok_or_else(|| {
            io::Error::other(format!(
                "blob {} ended at {} of {} bytes",
                self.id, self.offset, self.len
            ))
        })?;
        // Feeds send nothing past the length, and the store's copy has exactly that length.
        self.offset += chunk.len() as u64;
        self.hasher.update(&chunk);
        if self.offset >= self.len {
            // The last chunk completes the answer: only if all of it is the blob, and once the
            // store's writer has verified it against the npm integrity too. Every byte from the
            // feeds: that is enough (the commit that makes it durable goes on without the
            // client). Some from the store: it was stored, or the body would not have them.
            let stored = if self.file.is_none() {
                self.verified().await
            } else {
                self.settled().await
            };
            let got = BlobId::from_digest(*self.hasher.finalize().as_bytes());
            if self.offset != self.len || got != self.id {
                return Err(io::Error::other(format!(
                    "the {} bytes received for blob {} are not the blob",
                    self.offset, self.id
                )));
            }
            stored?;
        }
        Ok(Some(chunk))
    }
}

/// Why receiving a transfer failed, and whether its peer is to blame for a spoiled answer.
#[derive(Debug)]
pub(crate) struct Failure {
    /// What went wrong.
    pub error: PeerError,
    /// The peer sent bytes that do not verify, or more or fewer than it announced: skip it for
    /// this blob for a while ([`BadPeers`]).
    pub spoiled: bool,
}

/// Receives a transfer of `len` bytes (`chunks`) into the store, checked by `verifier` and
/// against `id`, feeding `tap`'s body when it streams this blob; `opens`: whether this transfer
/// may open the body (it comes from a trusted operator). Size and integrity failures are counted
/// in `metrics`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn receive_into<S>(
    store: &Store,
    metrics: &Metrics,
    mut chunks: S,
    len: u64,
    id: &BlobId,
    verifier: Verifier,
    max_len: u64,
    tap: Option<&Tap>,
    opens: bool,
) -> Result<BlobId, Failure>
where
    S: Stream<Item = Result<Bytes, PeerError>> + Unpin,
{
    let mut feed = tap.and_then(|t| t.begin(id, len, opens));
    let got = receive(
        store,
        metrics,
        &mut chunks,
        len,
        id,
        verifier,
        max_len,
        &mut feed,
    )
    .await;
    match got {
        Ok(id) => {
            if let Some(mut f) = feed {
                f.end(Ok(()));
            }
            Ok(id)
        }
        Err(error) => {
            let bad_bytes = matches!(error, PeerError::Integrity(_));
            if let Some(mut f) = feed {
                // Bytes that do not verify may be among those the body has: it fails. Any other
                // break leaves it to the next transfer (the body checks every byte anyway).
                let fail = (bad_bytes && f.fed).then(|| crate::errors::chain(&error).to_string());
                f.end(Err(fail));
            }
            // The local store failing is not the peer's doing.
            let spoiled = matches!(error, PeerError::Integrity(_) | PeerError::Size(_));
            Err(Failure { error, spoiled })
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn receive<S>(
    store: &Store,
    metrics: &Metrics,
    chunks: &mut S,
    len: u64,
    id: &BlobId,
    verifier: Verifier,
    max_len: u64,
    feed: &mut Option<Feed>,
) -> Result<BlobId, PeerError>
where
    S: Stream<Item = Result<Bytes, PeerError>> + Unpin,
{
    let mut w = store
        .blobs
        .writer(verifier, max_len)
        .await
        .map_err(PeerError::store)?;
    let mut got = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        got += chunk.len() as u64;
        if got > len {
            return Err(PeerError::Size(format!(
                "more than the {len} bytes announced"
            )));
        }
        if let Some(f) = feed.as_mut() {
            f.send(&chunk);
        }
        w.write(&chunk).await.map_err(|e| metrics.refused(e))?;
    }
    if got < len {
        return Err(PeerError::Size(format!(
            "{got} of the {len} bytes announced"
        )));
    }
    let verified = w
        .verify_as(Some(id))
        .await
        .map_err(|e| metrics.refused(e))?;
    // Counted before the body may end, so that whoever got the answer sees the count.
    Metrics::inc(&metrics.peer_ingests);
    if let Some(f) = feed.as_mut() {
        f.verified();
    }
    Ok(verified.commit().await.map_err(|e| metrics.refused(e))?)
}

/// Peers that served bad bytes for a blob, and when (clock ms): skipped for that blob for
/// [`BAD_PEER_TTL`], at most [`BAD_PEERS_KEPT`] pairs (the oldest forgotten first).
#[derive(Debug)]
pub(crate) struct BadPeers<P> {
    seen: Mutex<HashMap<(BlobId, P), u64>>,
}

impl<P> Default for BadPeers<P> {
    fn default() -> Self {
        BadPeers {
            seen: Mutex::new(HashMap::new()),
        }
    }
}

impl<P: Eq + Hash + Clone> BadPeers<P> {
    /// Remembers that `peer` served bad bytes for `id` at `now_ms`.
    pub(crate) fn note(&self, id: &BlobId, peer: &P, now_ms: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= BAD_PEERS_KEPT && !seen.contains_key(&(*id, peer.clone())) {
            let ttl = BAD_PEER_TTL.as_millis() as u64;
            seen.retain(|_, at| now_ms.saturating_sub(*at) < ttl);
            if seen.len() >= BAD_PEERS_KEPT
                && let Some(oldest) = seen
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
            {
                seen.remove(&oldest);
            }
        }
        seen.insert((*id, peer.clone()), now_ms);
    }

    /// Whether `peer` served bad bytes for `id` less than [`BAD_PEER_TTL`] before `now_ms`.
    pub(crate) fn is_bad(&self, id: &BlobId, peer: &P, now_ms: u64) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&(*id, peer.clone()))
            .is_some_and(|at| now_ms.saturating_sub(*at) < BAD_PEER_TTL.as_millis() as u64)
    }

    /// `providers` without those that served bad bytes for `id` lately, in the same order.
    pub(crate) fn usable(&self, id: &BlobId, providers: &[P], now_ms: u64) -> Vec<P> {
        providers
            .iter()
            .filter(|p| !self.is_bad(id, p, now_ms))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_peer_is_skipped_for_that_blob_until_the_ttl_and_the_memory_is_bounded() {
        let bad = BadPeers::<u32>::default();
        let (a, b) = (BlobId::of(b"a"), BlobId::of(b"b"));
        let t0 = 1_000_000;
        bad.note(&a, &1, t0);
        assert_eq!(bad.usable(&a, &[1, 2, 3], t0 + 1), [2, 3]);
        assert_eq!(
            bad.usable(&b, &[1, 2], t0 + 1),
            [1, 2],
            "only for that blob"
        );
        let ttl = BAD_PEER_TTL.as_millis() as u64;
        assert!(bad.is_bad(&a, &1, t0 + ttl - 1));
        assert!(!bad.is_bad(&a, &1, t0 + ttl), "forgiven after the TTL");

        // Full: the oldest pair goes first, the newest stay.
        for i in 0..BAD_PEERS_KEPT as u32 + 10 {
            bad.note(&b, &i, t0 + u64::from(i));
        }
        assert_eq!(bad.seen.lock().unwrap().len(), BAD_PEERS_KEPT);
        assert!(!bad.is_bad(&b, &0, t0 + 2000));
        assert!(bad.is_bad(&b, &(BAD_PEERS_KEPT as u32 + 9), t0 + 2000));
    }
}

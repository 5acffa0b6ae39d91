//! Malformed input on the blob protocol (R17 in docs/security.md): the request and response header
//! codecs on arbitrary bytes, split anywhere, and a real server fed hundreds of garbage
//! streams by a bare peer.
//!
//! Properties: decoding never panics and never reads past what it decodes (the bytes after a
//! request or header are left for the body); a request carries a CID of 1..=64 bytes or is
//! refused as `InvalidData`; a short input is `UnexpectedEof`, never a partial value. The
//! server answers every garbage stream with a refusal, the exact bytes asked for, or a reset,
//! panics in none of its tasks, and serves an honest fetch afterwards. The allocation bound
//! (a header announcing 4 GiB) is in `node/tests/alloc.rs`, which counts allocations.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Once};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::io::Cursor;
use futures::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use open_registry_protocol::BlobId;
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::net::blob::{MAX_CID_LEN, read_header, read_request, write_header, write_request};

/// A reader that hands out its bytes in the given chunk sizes, the way a network splits them.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    next: usize,
}

impl Chunked {
    fn new(data: Vec<u8>, sizes: Vec<usize>) -> Chunked {
        Chunked {
            data,
            pos: 0,
            sizes,
            next: 0,
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let size = this
            .sizes
            .get(this.next)
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        this.next += 1;
        let n = size.min(buf.len()).min(this.data.len() - this.pos);
        buf[..n].copy_from_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(n))
    }
}

fn splits() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..12, 0..20)
}

proptest! {
    #[test]
    fn requests_decode_exactly_or_not_at_all(
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..120),
            // A plausible length byte, so the CID and offset paths are reached.
            (0u8..=70, prop::collection::vec(any::<u8>(), 0..90)).prop_map(|(l, mut b)| { b.insert(0, l); b }),
        ],
        sizes in splits(),
    ) {
        let mut r = Chunked::new(data.clone(), sizes);
        match futures::executor::block_on(read_request(&mut r)) {
            Ok(req) => {
                let len = req.cid.len();
                prop_assert!((1..=MAX_CID_LEN).contains(&len));
                prop_assert_eq!(usize::from(data[0]), len);
                prop_assert_eq!(&req.cid[..], &data[1..1 + len]);
                let offset: [u8; 8] = data[1 + len..9 + len].try_into().unwrap();
                prop_assert_eq!(req.offset, u64::from_be_bytes(offset));
                prop_assert_eq!(r.pos, 9 + len, "read past the request");
                if let Some(id) = req.blob_id() {
                    prop_assert_eq!(id.to_bytes(), req.cid);
                }
            }
            Err(e) => {
                let bad_len = data.first().is_some_and(|&l| l == 0 || usize::from(l) > MAX_CID_LEN);
                let want = if bad_len { io::ErrorKind::InvalidData } else { io::ErrorKind::UnexpectedEof };
                prop_assert_eq!(e.kind(), want);
                prop_assert!(bad_len || data.is_empty() || data.len() < 9 + usize::from(data[0]));
            }
        }
    }

    #[test]
    fn headers_decode_exactly_or_not_at_all(
        data in prop::collection::vec(any::<u8>(), 0..20),
        zero_first in any::<bool>(),
        sizes in splits(),
    ) {
        let mut data = data;
        if zero_first && !data.is_empty() {
            data[0] = Status::Ok as u8;
        }
        let mut r = Chunked::new(data.clone(), sizes);
        match futures::executor::block_on(read_header(&mut r)) {
            Ok((status, None)) => {
                prop_assert_ne!(status, Status::Ok as u8);
                prop_assert_eq!(status, data[0]);
                prop_assert_eq!(r.pos, 1);
            }
            Ok((status, Some(len))) => {
                prop_assert_eq!(status, Status::Ok as u8);
                prop_assert_eq!(len, u64::from_be_bytes(data[1..9].try_into().unwrap()));
                prop_assert_eq!(r.pos, 9);
            }
            Err(e) => {
                prop_assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
                prop_assert!(data.is_empty() || (data[0] == 0 && data.len() < 9));
            }
        }
    }

    #[test]
    fn what_is_written_is_read_back(bytes in any::<Vec<u8>>(), offset in any::<u64>(), status in 0u8..4, remaining in any::<u64>()) {
        let id = BlobId::of(&bytes);
        let mut w = Cursor::new(Vec::new());
        futures::executor::block_on(write_request(&mut w, &id, offset)).unwrap();
        let req = futures::executor::block_on(read_request(&mut Cursor::new(w.into_inner()))).unwrap();
        prop_assert_eq!(req.blob_id(), Some(id));
        prop_assert_eq!(req.offset, offset);
        let status = Status::from_byte(status).unwrap();
        let mut w = Cursor::new(Vec::new());
        futures::executor::block_on(write_header(&mut w, status, remaining)).unwrap();
        let got = futures::executor::block_on(read_header(&mut Cursor::new(w.into_inner()))).unwrap();
        prop_assert_eq!(got, (status as u8, (status == Status::Ok).then_some(remaining)));
    }
}

// ---- a real server fed garbage -----------------------------------------------------------

/// Names of the threads on which a panic happened (the hook is installed once per binary).
static PANICKED_ON: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Notes every panic's thread, then runs the default hook.
fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or("?").to_owned();
            PANICKED_ON
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(name);
            default(info);
        }));
    });
}

/// Whether a panic happened on this thread (where a current-thread test runtime runs every
/// task it spawns, the server's included).
fn panicked_here() -> bool {
    let me = std::thread::current().name().unwrap_or("?").to_owned();
    PANICKED_ON
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&me)
}

/// A bare peer that opens blob streams by hand; returns its stream control once connected.
async fn bare_dialer(to: Multiaddr) -> (libp2p_stream::Control, CancellationToken) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            Default::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    let control = swarm.behaviour().new_control();
    swarm.dial(to).unwrap();
    loop {
        if let libp2p::swarm::SwarmEvent::ConnectionEstablished { .. } =
            swarm.select_next_some().await
        {
            break;
        }
    }
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = async { loop { swarm.select_next_some().await; } } => {}
        }
    });
    (control, cancel)
}

/// A tiny deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One garbage request: random bytes, a bad CID length, a CID of the wrong kind, or the
/// stored blob's CID with any offset; sometimes cut short. Returns the bytes and, when they
/// form a whole request for the stored blob, its offset.
fn garbage(rng: &mut Rng, id: &BlobId) -> (Vec<u8>, Option<u64>) {
    let cid = id.to_bytes();
    let offset = match rng.next() % 3 {
        0 => rng.next() % 200,
        1 => u64::MAX - rng.next() % 4,
        _ => rng.next(),
    };
    let mut b = match rng.next() % 5 {
        0 => {
            let n = (rng.next() % 120) as usize;
            rng.bytes(n)
        }
        1 => {
            let mut b = vec![[0u8, 65, 255][(rng.next() % 3) as usize]];
            let n = (rng.next() % 80) as usize;
            b.extend(rng.bytes(n));
            b
        }
        2 => {
            let len = 1 + (rng.next() % MAX_CID_LEN as u64) as usize;
            let mut b = vec![len as u8];
            b.extend(rng.bytes(len + 8));
            b
        }
        _ => {
            let mut b = vec![cid.len() as u8];
            b.extend_from_slice(&cid);
            b.extend_from_slice(&offset.to_be_bytes());
            b
        }
    };
    if rng.next().is_multiple_of(4) {
        let cut = (rng.next() as usize) % (b.len() + 1);
        b.truncate(cut);
    }
    let whole = b.len() == 1 + cid.len() + 8 && b[0] as usize == cid.len() && b[1..37] == cid[..];
    (b, whole.then_some(offset))
}

#[tokio::test]
async fn a_server_fed_garbage_streams_refuses_them_and_keeps_serving() {
    watch_panics();
    bounded(async {
        let data = pattern(100);
        let id = BlobId::of(&data);
        let a = start(110, config(&[]), MemBlobs::with(&[&data])).await;
        let (mut control, stop) = bare_dialer(a.p2p()).await;
        let mut rng = Rng(0x17);
        let (mut refused, mut served, mut reset) = (0, 0, 0);
        for i in 0..300 {
            let (bytes, whole) = garbage(&mut rng, &id);
            let mut s = control.open_stream(a.peer, BLOB_PROTOCOL).await.unwrap();
            // A write may fail once the server has refused and reset; what it answered counts.
            let _ = s.write_all(&bytes).await;
            let _ = s.close().await;
            let mut answer = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("stream {i}: no answer to {bytes:?} within 5 s"));
            match (answer.first().copied().and_then(Status::from_byte), whole) {
                (None, _) => {
                    // Reset or closed without a word: only for requests that never completed.
                    assert!(answer.is_empty(), "stream {i}: answered {answer:?}");
                    assert!(
                        whole.is_none(),
                        "stream {i}: a whole request went unanswered ({read:?})"
                    );
                    reset += 1;
                }
                (Some(Status::Ok), Some(offset)) => {
                    let len = data.len() as u64 - offset;
                    assert_eq!(&answer[1..9], &len.to_be_bytes(), "stream {i}");
                    assert_eq!(&answer[9..], &data[offset as usize..], "stream {i}");
                    served += 1;
                }
                (Some(Status::BadRequest), Some(offset)) => {
                    assert!(
                        offset > data.len() as u64,
                        "stream {i}: offset {offset} refused"
                    );
                    assert_eq!(answer.len(), 1, "stream {i}");
                    refused += 1;
                }
                (Some(Status::BadRequest | Status::NotFound), None) => {
                    assert_eq!(answer.len(), 1, "stream {i}: {answer:?}");
                    refused += 1;
                }
                (other, whole) => panic!("stream {i}: {other:?} for {bytes:?} (whole: {whole:?})"),
            }
        }
        assert!(
            refused > 50 && served > 5 && reset > 10,
            "{refused} {served} {reset}"
        );
        stop.cancel();

        // The server is still healthy: an honest fetch, and the swarm answers.
        let b = start(111, config(&[]), Arc::new(NoBlobs)).await;
        b.client
            .dial(a.p2p(), Duration::from_secs(5))
            .await
            .unwrap();
        let got = b
            .client
            .fetch(a.peer, &id, MIB as u64, Duration::from_secs(5))
            .await
            .unwrap()
            .read_all()
            .await
            .unwrap();
        assert_eq!(got, data);
        a.client.peers().await.unwrap();
    })
    .await;
    assert!(!panicked_here(), "a task panicked while serving garbage");
}

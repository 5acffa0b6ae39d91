//! A large tarball from a peer streams to the request while it is verified and stored
//! (`peer::stream`): the first bytes come before the peer sent the rest, a peer whose bytes do
//! not verify cuts the answer short and is skipped by the retry, a provider that fails before
//! sending anything is replaced unseen, and the flight still makes one fetch.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use open_registry_gateway::access::Source as Served;
use open_registry_gateway::{Blob, Body};
use open_registry_protocol::BlobId;
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::fakes::{Answer, FakePeers, FakeProvider, FakeUpstream};
use super::{Rig, body, file, name, packument};
use crate::net::CHUNK;

/// Long enough to tell "waits for something that never comes" from "answers" under tokio's
/// paused clock, which jumps ahead only when everything waits.
const WAIT: Duration = Duration::from_secs(60);

/// `len` bytes that do not repeat.
fn blob(len: usize) -> Bytes {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// A rig whose upstream has the packument of `p@1.0.0` (tarball `t`) but not the tarball, and
/// whose trusted peers' records name `t`.
async fn rigged(t: &Bytes) -> (Rig, Arc<FakePeers>) {
    let up = Arc::new(FakeUpstream::new());
    up.answer(
        "p",
        Answer::Document(packument("p", &[("1.0.0", t)]), "\"a\""),
    );
    let (rig, peers) = Rig::new(Some(up), |s| Some(Arc::new(FakePeers::new(s)))).await;
    let peers = peers.unwrap();
    peers.holds_tarball("p", "1.0.0", t);
    (rig, peers)
}

async fn get(rig: &Rig) -> Blob {
    timeout(WAIT, rig.fetcher.tarball(&name("p"), &file("p-1.0.0.tgz")))
        .await
        .expect("the answer waited for the whole transfer")
        .unwrap()
}

/// Everything a body yields, to its end or its first error.
async fn drain(b: Body) -> Vec<io::Result<Bytes>> {
    match b {
        Body::Bytes(b) => vec![Ok(b)],
        Body::Stream(s) => timeout(WAIT, s.collect()).await.expect("the body hung"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_bytes_of_a_large_tarball_come_before_the_peer_sent_the_rest() {
    let t = blob(1 << 20 | 123);
    let id = BlobId::of(&t);
    let (rig, peers) = rigged(&t).await;
    let hold = Arc::new(Semaphore::new(0));
    peers.hold_tail(&id, "slow", hold.clone());

    let b = get(&rig).await;
    assert_eq!((b.id, b.len, b.source), (id, t.len() as u64, Served::Peer));
    let Body::Stream(mut s) = b.body else {
        panic!("a large tarball is streamed");
    };
    let first = timeout(WAIT, s.next())
        .await
        .expect("the first chunk waited for the rest of the transfer")
        .unwrap()
        .unwrap();
    assert_eq!(first, t.slice(..CHUNK));
    assert!(
        !rig.store.blobs.contains(&id),
        "the bytes reached the client before the blob was stored"
    );

    hold.add_permits(1);
    let rest: Vec<Bytes> = timeout(WAIT, s.map(Result::unwrap).collect())
        .await
        .expect("the body hung");
    assert_eq!(
        [first].into_iter().chain(rest).collect::<Vec<_>>().concat(),
        t
    );
    assert!(rig.store.blobs.contains(&id), "stored once verified");
    // Served again (from the store, or from the flight storing it): no second fetch.
    assert_eq!(body(get(&rig).await.body).await, t);
    assert_eq!(FakePeers::count(&peers.fetch_calls), 1);
    assert_eq!(*peers.asked.lock().unwrap(), ["slow"]);
}

#[tokio::test(start_paused = true)]
async fn bytes_that_do_not_verify_cut_the_answer_short_and_the_retry_goes_to_another_provider() {
    let t = blob(600 << 10);
    let id = BlobId::of(&t);
    let (rig, peers) = rigged(&t).await;
    // At first only a liar provides it: right length, one wrong byte in its first chunk.
    peers.withdraw(&id);
    let mut lie = t.to_vec();
    lie[5] ^= 1;
    peers.provider_first(
        &id,
        FakeProvider {
            name: "liar",
            bytes: lie.into(),
            hold: None,
            fail_after: None,
        },
    );

    let b = get(&rig).await;
    assert_eq!(
        b.len,
        t.len() as u64,
        "Content-Length is the promised length"
    );
    let got = drain(b.body).await;
    let (last, sent) = got.split_last().unwrap();
    assert!(
        last.is_err(),
        "the body ends in an error, not a complete body"
    );
    let sent: usize = sent.iter().map(|c| c.as_ref().unwrap().len()).sum();
    assert!(sent > 0 && sent < t.len(), "{sent} bytes went out");
    assert!(
        !rig.store.blobs.contains(&id),
        "the bad bytes were not kept"
    );
    assert_eq!(peers.metrics().integrity_failures.load(Ordering::SeqCst), 1);

    // A correct provider appears; the client's retry is served by it, the liar not asked again.
    peers.holds_tarball("p", "1.0.0", &t);
    let b = get(&rig).await;
    assert_eq!(body(b.body).await, t);
    assert!(rig.store.blobs.contains(&id));
    assert_eq!(*peers.asked.lock().unwrap(), ["liar", "correct"]);
}

#[tokio::test(start_paused = true)]
async fn a_transfer_that_breaks_before_sending_is_replaced_unseen_and_after_sending_cuts_the_answer()
 {
    let t = blob(700 << 10);
    let id = BlobId::of(&t);
    let (rig, peers) = rigged(&t).await;
    // "broken" fails before its first chunk: the answer goes on with the next provider's bytes.
    let broken = |name, fail_after| FakeProvider {
        name,
        bytes: t.clone(),
        hold: None,
        fail_after: Some(fail_after),
    };
    peers.provider_first(&id, broken("broken", 0));
    let b = get(&rig).await;
    assert_eq!(b.source, Served::Peer);
    assert_eq!(body(b.body).await, t);
    assert_eq!(*peers.asked.lock().unwrap(), ["broken", "correct"]);

    // After two chunks went out, a break cuts the answer; the flight still stores the blob from
    // the next provider for whoever asks again.
    let (rig, peers) = rigged(&t).await;
    peers.provider_first(&id, broken("midway", 2));
    let got = drain(get(&rig).await.body).await;
    assert!(got.last().unwrap().is_err(), "the body ends in an error");
    let sent: usize = got
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .map(Bytes::len)
        .sum();
    assert_eq!(sent, 2 * CHUNK);
    assert_eq!(body(get(&rig).await.body).await, t);
    assert_eq!(*peers.asked.lock().unwrap(), ["midway", "correct"]);
    assert_eq!(FakePeers::count(&peers.fetch_calls), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_for_a_streamed_tarball_share_one_fetch() {
    let t = blob(2 << 20);
    let id = BlobId::of(&t);
    let (rig, peers) = rigged(&t).await;
    let hold = Arc::new(Semaphore::new(0));
    peers.hold_tail(&id, "slow", hold.clone());
    let (n, f) = (name("p"), file("p-1.0.0.tgz"));
    let requests = (0..50).map(|_| rig.fetcher.tarball(&n, &f).map(Result::unwrap));
    // join! polls the requests first: all 50 are in the flight before the peer sends its tail.
    let (blobs, ()) = tokio::join!(futures::future::join_all(requests), async {
        hold.add_permits(1)
    });
    for b in blobs {
        assert_eq!(body(b.body).await, t);
    }
    assert_eq!(FakePeers::count(&peers.fetch_calls), 1);
    assert_eq!(*peers.asked.lock().unwrap(), ["slow"]);
    assert_eq!(rig.counter(|m| &m.coalesced), 49);
}

//! A large tarball from a peer streams to the request while it is verified and stored
//! (`peer::stream`): the first bytes come before the peer sent the rest, a peer whose bytes do
//! not verify cuts the answer short and is skipped by the retry, a provider that breaks is
//! replaced unseen (before sending anything or midway: the next one resumes the answer), bytes
//! that do not make the blob never end an answer, only a trusted operator's transfer opens one,
//! and the flight still makes one fetch.

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

/// Asks for `p@1.0.0` again, as a client's retry or next install would, and checks that it is
/// `t` and stored then: a request that comes while an earlier answer's commit is still going
/// joins that flight, which ends once the blob is durable.
async fn stored(rig: &Rig, t: &Bytes) {
    assert_eq!(body(get(rig).await.body).await, *t);
    assert!(rig.store.blobs.contains(&BlobId::of(t)), "not stored");
}

/// Everything a body yields, to its end or its first error.
async fn drain(b: Body) -> Vec<io::Result<Bytes>> {
    match b {
        Body::Bytes(b) => vec![Ok(b)],
        Body::Stream(s) | Body::Verifying(s) => {
            timeout(WAIT, s.collect()).await.expect("the body hung")
        }
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
    let Body::Verifying(mut s) = b.body else {
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
    // Served again (from the store, or from the flight storing it): no second fetch.
    assert_eq!(body(get(&rig).await.body).await, t);
    assert!(rig.store.blobs.contains(&id), "stored once verified");
    assert_eq!(FakePeers::count(&peers.fetch_calls), 1);
    assert_eq!(*peers.asked.lock().unwrap(), ["slow"]);
}

#[tokio::test(start_paused = true)]
async fn a_small_tarballs_answer_ends_once_verified_without_waiting_for_the_durable_commit() {
    let t = blob(20 << 10);
    let id = BlobId::of(&t);
    let (rig, peers) = rigged(&t).await;
    // The packument is stored first (its commit is not the one under test).
    rig.fetcher.packument(&name("p"), false).await.unwrap();
    // Nothing can be committed while this is held.
    let commits = rig.store.blobs.hold_commits().await;
    let b = get(&rig).await;
    assert_eq!(b.source, Served::Peer);
    assert!(
        matches!(b.body, Body::Verifying(_)),
        "streamed, small as it is"
    );
    let got = drain(b.body).await;
    let got: Vec<Bytes> = got.into_iter().map(Result::unwrap).collect();
    assert_eq!(got.concat(), t, "the whole answer, verified");
    assert!(
        !rig.store.blobs.contains(&id),
        "the answer ended only after the commit"
    );
    drop(commits);
    stored(&rig, &t).await;
    assert_eq!(FakePeers::count(&peers.fetch_calls), 1);
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
            trusted: true,
        },
    );

    let b = get(&rig).await;
    assert_eq!(b.len, t.len() as u64, "the length the provider announced");
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
    stored(&rig, &t).await;
    assert_eq!(*peers.asked.lock().unwrap(), ["liar", "correct"]);
}

#[tokio::test(start_paused = true)]
async fn a_transfer_that_breaks_before_or_after_sending_is_replaced_unseen_by_the_next_provider() {
    let t = blob(700 << 10);
    let id = BlobId::of(&t);
    let (rig, peers) = rigged(&t).await;
    // "broken" fails before its first chunk: the answer goes on with the next provider's bytes.
    let broken = |name, fail_after| FakeProvider {
        name,
        bytes: t.clone(),
        hold: None,
        fail_after: Some(fail_after),
        trusted: true,
    };
    peers.provider_first(&id, broken("broken", 0));
    let b = get(&rig).await;
    assert_eq!(b.source, Served::Peer);
    assert_eq!(body(b.body).await, t);
    assert_eq!(*peers.asked.lock().unwrap(), ["broken", "correct"]);

    // After two chunks went out, the break is not seen either: the next provider's transfer
    // goes on from the third chunk, and the blob is stored once.
    let (rig, peers) = rigged(&t).await;
    peers.provider_first(&id, broken("midway", 2));
    let got = drain(get(&rig).await.body).await;
    let got: Vec<Bytes> = got.into_iter().map(Result::unwrap).collect();
    assert_eq!(got.concat(), t, "the answer is whole");
    stored(&rig, &t).await;
    assert_eq!(*peers.asked.lock().unwrap(), ["midway", "correct"]);
    assert_eq!(FakePeers::count(&peers.fetch_calls), 1);
}

#[tokio::test(start_paused = true)]
async fn bytes_a_broken_transfer_sent_wrong_never_end_an_answer_even_when_the_blob_is_stored() {
    let t = blob(700 << 10);
    let id = BlobId::of(&t);
    let (rig, peers) = rigged(&t).await;
    // A provider flips a byte of its first chunk and breaks after the second: the store never
    // sees its bytes whole, so only the body can tell.
    let mut lie = t.to_vec();
    lie[7] ^= 1;
    peers.provider_first(
        &id,
        FakeProvider {
            name: "flipper",
            bytes: lie.into(),
            hold: None,
            fail_after: Some(2),
            trusted: true,
        },
    );
    let got = drain(get(&rig).await.body).await;
    let (last, sent) = got.split_last().unwrap();
    let error = last.as_ref().expect_err("the body ends in an error");
    assert!(error.to_string().contains("are not the blob"), "{error}");
    let sent: usize = sent.iter().map(|c| c.as_ref().unwrap().len()).sum();
    assert!(
        sent < t.len(),
        "the last chunk was held back: {sent} bytes went out"
    );
    // The correct provider's transfer was stored, verified; the retry gets it whole.
    stored(&rig, &t).await;
    assert_eq!(*peers.asked.lock().unwrap(), ["flipper", "correct"]);
}

#[tokio::test(start_paused = true)]
async fn an_untrusted_providers_transfer_is_received_whole_before_it_is_served() {
    let t = blob(700 << 10);
    let id = BlobId::of(&t);
    let (rig, peers) = rigged(&t).await;
    peers.withdraw(&id);
    let hold = Arc::new(Semaphore::new(0));
    peers.provider_first(
        &id,
        FakeProvider {
            name: "stranger",
            bytes: t.clone(),
            hold: Some(hold.clone()),
            fail_after: None,
            trusted: false,
        },
    );
    let (n, f) = (name("p"), file("p-1.0.0.tgz"));
    let request = rig.fetcher.tarball(&n, &f);
    tokio::pin!(request);
    assert!(
        timeout(WAIT, &mut request).await.is_err(),
        "answered before the stranger's transfer was whole"
    );
    hold.add_permits(1);
    let b = timeout(WAIT, request).await.expect("answered").unwrap();
    assert!(
        !matches!(b.body, Body::Verifying(_)),
        "a stranger's bytes are served once stored, with their length"
    );
    assert_eq!(body(b.body).await, t);
    assert!(rig.store.blobs.contains(&id));
}

#[tokio::test(start_paused = true)]
async fn a_trusted_transfer_that_breaks_is_resumed_by_an_untrusted_provider_of_the_same_length() {
    let t = blob(700 << 10);
    let id = BlobId::of(&t);
    let (rig, peers) = rigged(&t).await;
    peers.withdraw(&id);
    let provider = |name, trusted, fail_after| FakeProvider {
        name,
        bytes: t.clone(),
        hold: None,
        fail_after,
        trusted,
    };
    // Tried in this order: the trusted operator breaks midway, the stranger completes it.
    peers.provider_first(&id, provider("stranger", false, None));
    peers.provider_first(&id, provider("operator", true, Some(3)));
    let b = get(&rig).await;
    assert!(matches!(b.body, Body::Verifying(_)), "streamed");
    assert_eq!(body(b.body).await, t);
    assert_eq!(*peers.asked.lock().unwrap(), ["operator", "stranger"]);
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

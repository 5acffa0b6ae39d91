//! R17 in docs/security.md, no unbounded allocation on the wire: a peer whose blob header announces
//! 4 GiB costs the fetching node memory in proportion to the bytes that actually arrive, not
//! to the announcement, whether the announcement is over the caller's cap (refused before a
//! byte is read) or within it (read into a buffer whose capacity is bounded).
//!
//! This file is its own test binary so that it can count every allocation: the global
//! allocator is `stats_alloc`'s instrumented system allocator. The counters are
//! process-wide, so there is one `#[test]`, on a current-thread runtime.

use std::alloc::System;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use open_registry_node::Identity;
use open_registry_node::net::{self, Blob, BlobSource, Multiaddr, NetError, NoBlobs, RejectAll};
use open_registry_protocol::BlobId;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const MIB: u64 = 1 << 20;
/// What the liar announces.
const CLAIM: u64 = 4 << 30;
/// What it actually sends before giving up.
const SENT: usize = MIB as usize;

/// Announces [`CLAIM`] bytes for any blob and sends [`SENT`] of them.
struct Liar;

impl BlobSource for Liar {
    fn open<'a>(&'a self, _: &'a BlobId, _: u64) -> BoxFuture<'a, io::Result<Option<Blob>>> {
        Box::pin(async {
            Ok(Some(Blob {
                len: CLAIM,
                reader: Box::new(io::Cursor::new(Bytes::from(vec![7u8; SENT]))),
            }))
        })
    }
}

async fn node(
    seed: u8,
    limits: net::Limits,
    blobs: Arc<dyn BlobSource>,
) -> (net::Client, Multiaddr, CancellationToken) {
    let cancel = CancellationToken::new();
    let config = net::Config {
        limits,
        ..net::Config::loopback()
    };
    let (client, addrs) = net::spawn(
        config,
        &Identity::from_seed([seed; 32]),
        blobs,
        Arc::new(RejectAll),
        TaskTracker::new(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let addr = addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(client.local_peer_id()));
    (client, addr, cancel)
}

fn short_limits() -> net::Limits {
    net::Limits {
        stall_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        ..net::Limits::default()
    }
}

/// Bytes allocated (in total, not net) while `f` runs.
async fn allocated<T>(f: impl Future<Output = T>) -> (T, usize) {
    let region = Region::new(GLOBAL);
    let out = f.await;
    (out, region.change().bytes_allocated)
}

#[tokio::test]
async fn a_4_gib_announcement_allocates_nothing_like_4_gib() {
    let (liar_client, liar_addr, stop_liar) = node(120, short_limits(), Arc::new(Liar)).await;
    let liar = liar_client.local_peer_id();
    let id = BlobId::of(b"anything");

    // Over the cap: refused on the header.
    let (client, _, stop) = node(121, short_limits(), Arc::new(NoBlobs)).await;
    client
        .dial(liar_addr.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    let (r, used) = allocated(client.fetch(liar, &id, u64::MAX, Duration::from_secs(10))).await;
    match r {
        Err(NetError::TooLarge { len, .. }) => assert_eq!(len, CLAIM),
        other => panic!("a 4 GiB announcement over a 1 GiB cap: {other:?}"),
    }
    assert!(
        used < 4 * MIB as usize,
        "refusing the header allocated {used} bytes"
    );
    stop.cancel();

    // Within the cap: the transfer says 4 GiB, 1 MiB arrives, the stream ends early.
    let limits = net::Limits {
        max_blob_size: 8 << 30,
        ..short_limits()
    };
    let (client, _, stop) = node(122, limits, Arc::new(NoBlobs)).await;
    client
        .dial(liar_addr.clone(), Duration::from_secs(5))
        .await
        .unwrap();
    let (r, used) = allocated(async {
        let t = client
            .fetch(liar, &id, 8 << 30, Duration::from_secs(10))
            .await?;
        assert_eq!(t.len(), CLAIM);
        t.read_all().await
    })
    .await;
    // The liar's stream ends (reset) after what it sent: never a 4 GiB success.
    match &r {
        Err(NetError::Truncated { got, .. }) => assert!(*got <= SENT as u64, "{r:?}"),
        Err(NetError::Io { .. }) => {}
        other => panic!("an announced 4 GiB of which 1 MiB arrived: {other:?}"),
    }
    assert!(
        used < 64 * MIB as usize,
        "reading 1 MiB of an announced 4 GiB allocated {used} bytes"
    );
    eprintln!(
        "[r17] 4 GiB announced, {SENT} bytes sent: {} MiB allocated while reading",
        used as u64 / MIB
    );
    stop.cancel();
    stop_liar.cancel();
}

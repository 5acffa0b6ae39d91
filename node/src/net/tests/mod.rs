//! Multi-node tests of `net`, in process, on loopback only.
//!
//! Each node gets a fixed identity, a memory [`BlobSource`], and short deadlines, so the whole
//! set runs in seconds. Malicious peers are either our own server fed by a lying source, or
//! (for wire-level lies our server would never tell) a bare libp2p swarm speaking the blob
//! protocol by hand.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use libp2p::multiaddr::Protocol;
use open_registry_protocol::BlobId;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::records::identity::Identity;

mod blobs;
mod dht;
mod wire;

const MIB: usize = 1024 * 1024;

/// Every test finishes well within this, or fails instead of hanging.
const TEST_BOUND: Duration = Duration::from_secs(30);

// ---- helpers -----------------------------------------------------------------------------

#[derive(Default)]
struct MemBlobs(HashMap<BlobId, Bytes>);

impl MemBlobs {
    fn with(blobs: &[&Bytes]) -> Arc<MemBlobs> {
        Arc::new(MemBlobs(
            blobs
                .iter()
                .map(|b| (BlobId::of(b), (*b).clone()))
                .collect(),
        ))
    }
}

impl BlobSource for MemBlobs {
    fn open<'a>(&'a self, id: &'a BlobId, offset: u64) -> BoxFuture<'a, io::Result<Option<Blob>>> {
        let blob = self.0.get(id).map(|b| Blob::from_bytes(b.clone(), offset));
        Box::pin(async move { Ok(blob) })
    }
}

struct TestNode {
    client: Client,
    addr: Multiaddr,
    peer: PeerId,
    cancel: CancellationToken,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl TestNode {
    /// The dialable address with `/p2p/<id>`.
    fn p2p(&self) -> Multiaddr {
        self.addr.clone().with(Protocol::P2p(self.peer))
    }

    async fn routing_table(&self) -> usize {
        self.client.peers().await.unwrap().routing_table_size
    }
}

fn limits() -> Limits {
    Limits {
        stall_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(10),
        ..Limits::default()
    }
}

fn config(bootstrap: &[&TestNode]) -> Config {
    Config {
        bootstrap: bootstrap.iter().map(|n| n.p2p()).collect(),
        limits: limits(),
        ..Config::loopback()
    }
}

/// Logs to the test output when `RUST_LOG` is set.
fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

async fn start_with(
    seed: u8,
    config: Config,
    blobs: Arc<dyn BlobSource>,
    validator: Arc<dyn RecordValidator>,
) -> TestNode {
    trace();
    let identity = Identity::from_seed([seed; 32]);
    let cancel = CancellationToken::new();
    // Boxed: the swarm it builds (every behaviour inline) would make each test's future large.
    let (client, addrs) = Box::pin(spawn(
        config,
        &identity,
        blobs,
        validator,
        TaskTracker::new(),
        cancel.clone(),
    ))
    .await
    .unwrap();
    assert_eq!(
        client.local_peer_id().to_string(),
        identity.peer_id().to_string()
    );
    TestNode {
        peer: client.local_peer_id(),
        client,
        addr: addrs[0].clone(),
        cancel,
    }
}

async fn start(seed: u8, config: Config, blobs: Arc<dyn BlobSource>) -> TestNode {
    start_with(seed, config, blobs, Arc::new(RejectAll)).await
}

async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 12)) as u8)
        .collect::<Vec<_>>()
        .into()
}

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("test exceeded its time bound");
}

// ---- tests -------------------------------------------------------------------------------

#[tokio::test]
async fn bad_configs_fail_to_start() {
    let identity = Identity::from_seed([60; 32]);
    let cfg = Config {
        listen: vec![],
        ..Config::loopback()
    };
    let e = spawn(
        cfg,
        &identity,
        Arc::new(NoBlobs),
        Arc::new(RejectAll),
        TaskTracker::new(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, NetError::Config(_)), "{e}");

    // A port in use.
    let a = start(61, config(&[]), Arc::new(NoBlobs)).await;
    let cfg = Config {
        listen: vec![a.addr.clone()],
        ..Config::loopback()
    };
    let e = spawn(
        cfg,
        &identity,
        Arc::new(NoBlobs),
        Arc::new(RejectAll),
        TaskTracker::new(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, NetError::Listen { .. }), "{e}");
}

#[tokio::test]
async fn shutdown_stops_the_client() {
    let a = start(70, config(&[]), Arc::new(NoBlobs)).await;
    let client = a.client.clone();
    drop(a);
    let mut stopped = false;
    for _ in 0..100 {
        if matches!(client.peers().await, Err(NetError::Stopped)) {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped);
}

#[tokio::test]
async fn connection_limits_hold() {
    bounded(async {
        let mut cfg = config(&[]);
        cfg.limits.max_connections = 1;
        let a = start(90, cfg, Arc::new(NoBlobs)).await;
        let b = start(91, config(&[]), Arc::new(NoBlobs)).await;
        let c = start(92, config(&[]), Arc::new(NoBlobs)).await;
        assert_eq!(
            b.client
                .dial(a.p2p(), Duration::from_secs(5))
                .await
                .unwrap(),
            a.peer
        );
        // C's handshake may complete, but A drops the connection at once.
        let _ = c.client.dial(a.p2p(), Duration::from_secs(5)).await;
        wait_for("A to drop C", || async {
            c.client.peers().await.unwrap().connected.is_empty()
        })
        .await;
        assert_eq!(a.client.peers().await.unwrap().connected.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn ping_measures_each_connected_peer_and_forgets_it_when_it_leaves() {
    bounded(async {
        let a = start(70, config(&[]), Arc::new(NoBlobs)).await;
        let b = start(71, config(&[&a]), Arc::new(NoBlobs)).await;
        // The first ping goes out as the connection opens; both ends measure.
        wait_for("both ends to measure the round trip", || async {
            a.client.rtts().get(&b.peer).is_some() && b.client.rtts().get(&a.peer).is_some()
        })
        .await;
        let rtt = b.client.rtts().get(&a.peer).unwrap();
        assert!(rtt < Duration::from_secs(1), "loopback took {rtt:?}");
        let b_peer = b.peer;
        drop(b);
        wait_for("A to forget B", || async {
            a.client.rtts().get(&b_peer).is_none()
        })
        .await;
    })
    .await;
}

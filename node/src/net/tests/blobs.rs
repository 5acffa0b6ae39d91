//! Blob transfer: size, bounds against lying or slow peers, and QUIC.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::multiaddr::Protocol;
use open_registry_protocol::BlobId;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::*;

/// A blob source that lies: it claims `len` bytes and sends `behaviour`.
struct Liar {
    len: u64,
    behaviour: Lie,
}

#[derive(Clone, Copy)]
enum Lie {
    /// Zeros, forever, as fast as possible.
    Endless,
    /// 10 bytes, then nothing ever again.
    Hang,
    /// One byte every `0`.
    Trickle(Duration),
}

impl BlobSource for Liar {
    fn open<'a>(&'a self, _: &'a BlobId, _: u64) -> BoxFuture<'a, io::Result<Option<Blob>>> {
        let reader = LiarReader {
            lie: self.behaviour,
            sent: 0,
            sleep: None,
        };
        let len = self.len;
        Box::pin(async move {
            Ok(Some(Blob {
                len,
                reader: Box::new(reader),
            }))
        })
    }
}

struct LiarReader {
    lie: Lie,
    sent: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for LiarReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.lie {
            Lie::Endless => {
                let n = buf.remaining();
                buf.put_slice(&vec![0u8; n]);
                Poll::Ready(Ok(()))
            }
            Lie::Hang if self.sent < 10 => {
                buf.put_slice(&[1u8; 10]);
                self.sent += 10;
                Poll::Ready(Ok(()))
            }
            Lie::Hang => Poll::Pending,
            Lie::Trickle(every) => {
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
                futures::ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
                buf.put_slice(&[2u8]);
                self.sent += 1;
                Poll::Ready(Ok(()))
            }
        }
    }
}

#[tokio::test]
async fn two_nodes_exchange_a_blob_larger_than_ten_mib() {
    bounded(async {
        let blob = pattern(12 * MIB);
        let id = BlobId::of(&blob);
        let a = start(1, config(&[]), MemBlobs::with(&[&blob])).await;
        let b = start(2, config(&[&a]), Arc::new(NoBlobs)).await;

        let t0 = Instant::now();
        let mut transfer = b.client.fetch(a.peer, &id, 16 * MIB as u64, Duration::from_secs(20)).await.unwrap();
        assert_eq!(transfer.len(), blob.len() as u64);
        let mut got = Vec::with_capacity(blob.len());
        let mut largest = 0;
        while let Some(chunk) = transfer.next().await {
            let chunk = chunk.unwrap();
            largest = largest.max(chunk.len());
            got.extend_from_slice(&chunk);
        }
        eprintln!("12 MiB over loopback TCP in {:?}", t0.elapsed());
        assert!(got == blob, "bytes differ");
        assert!(largest <= CHUNK, "a chunk of {largest} bytes");
        assert_eq!(BlobId::of(&got), id);

        // A tail, from an offset.
        let tail = b.client.fetch_at(a.peer, &id, 12 * MIB as u64 - 5, 16 * MIB as u64, Duration::from_secs(5)).await.unwrap();
        assert_eq!(tail.read_all().await.unwrap(), &blob[12 * MIB - 5..]);

        // The cap is checked before a byte moves.
        let e = b.client.fetch(a.peer, &id, MIB as u64, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, NetError::TooLarge { len, max, .. } if len == 12 * MIB as u64 && max == MIB as u64), "{e}");

        let e = b.client.fetch(a.peer, &BlobId::of(b"nope"), MIB as u64, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, NetError::NotFound { .. }), "{e}");
        let e = b.client.fetch_at(a.peer, &id, 13 * MIB as u64, 16 * MIB as u64, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, NetError::Refused { .. }), "{e}");

        let info = b.client.peers().await.unwrap();
        assert!(info.connected.iter().any(|(p, _)| *p == a.peer));
        assert!(info.kad_server);
    })
    .await;
}

#[tokio::test]
async fn endless_and_slow_peers_are_cut_off() {
    // Boxed: three nodes' state makes a large future.
    bounded(Box::pin(async {
        let endless = BlobId::of(b"endless");
        let hang = BlobId::of(b"hang");
        let trickle = BlobId::of(b"trickle");
        struct Liars(HashMap<BlobId, Liar>);
        impl BlobSource for Liars {
            fn open<'a>(
                &'a self,
                id: &'a BlobId,
                o: u64,
            ) -> BoxFuture<'a, io::Result<Option<Blob>>> {
                match self.0.get(id) {
                    Some(l) => l.open(id, o),
                    None => Box::pin(async { Ok(None) }),
                }
            }
        }
        let liars = Liars(HashMap::from([
            (
                endless,
                Liar {
                    len: 1 << 40,
                    behaviour: Lie::Endless,
                },
            ),
            (
                hang,
                Liar {
                    len: MIB as u64,
                    behaviour: Lie::Hang,
                },
            ),
            (
                trickle,
                Liar {
                    len: MIB as u64,
                    behaviour: Lie::Trickle(Duration::from_millis(200)),
                },
            ),
        ]));
        let mut cfg = config(&[]);
        cfg.limits.max_inbound_transfers = 2;
        let evil = start(30, cfg, Arc::new(liars)).await;
        let b = start(31, config(&[&evil]), Arc::new(NoBlobs)).await;
        // A second client: with two slots, each peer gets at most one (its share is half).
        let c = start(33, config(&[&evil]), Arc::new(NoBlobs)).await;
        let max = 16 * MIB as u64;

        // Claims 1 TiB: refused on the header.
        let t0 = Instant::now();
        let e = b
            .client
            .fetch(evil.peer, &endless, max, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::TooLarge { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(2));

        // 10 bytes then silence: a stall deadline (1 s) cuts it. Both ends have one: either
        // this client's ends it (Stalled) or the liar's own, waiting on its silent source,
        // gives up first and closes the stream (Truncated); a loaded machine shows both.
        let t0 = Instant::now();
        let e = b
            .client
            .fetch(evil.peer, &hang, max, Duration::from_secs(20))
            .await
            .unwrap()
            .read_all()
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert!(
            matches!(
                e,
                NetError::Stalled { got: 10, .. } | NetError::Truncated { got: 10, .. }
            ),
            "{e}"
        );
        assert!(took < Duration::from_secs(3), "stall cut after {took:?}");

        // 5 bytes/s never stalls, but the 2 s deadline cuts it.
        let t0 = Instant::now();
        let e = b
            .client
            .fetch(evil.peer, &trickle, max, Duration::from_secs(2))
            .await
            .unwrap()
            .read_all()
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert!(matches!(e, NetError::Timeout { .. }), "{e}");
        assert!(took < Duration::from_secs(3), "deadline cut after {took:?}");

        // Inbound concurrency: two hanging transfers (one per peer: each peer's share is half
        // the slots) hold both slots; a third is reset at once.
        // (First let the server notice that the trickle's reader went away: its next write
        // fails within one 200 ms tick.)
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t1 = b
            .client
            .fetch(evil.peer, &hang, max, Duration::from_secs(20))
            .await
            .unwrap();
        let t2 = c
            .client
            .fetch(evil.peer, &hang, max, Duration::from_secs(20))
            .await
            .unwrap();
        let t0 = Instant::now();
        let e = b
            .client
            .fetch(evil.peer, &trickle, max, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{e} after {:?}",
            t0.elapsed()
        );
        drop((t1, t2));
    }))
    .await;
}

/// A bare swarm that speaks the blob protocol by hand: it announces `len` bytes, then sends
/// zeros until the reader goes away.
async fn raw_liar(len: u64) -> (PeerId, Multiaddr, CancellationToken) {
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
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { address, .. } =
            swarm.select_next_some().await
        {
            break address;
        }
    };
    let peer = *swarm.local_peer_id();
    let mut incoming = swarm
        .behaviour()
        .new_control()
        .accept(BLOB_PROTOCOL)
        .unwrap();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = swarm.select_next_some() => {}
                Some((_, mut s)) = incoming.next() => {
                    tokio::spawn(async move {
                        let mut req = [0u8; 1 + 36 + 8];
                        s.read_exact(&mut req).await?;
                        let mut header = vec![0u8];
                        header.extend_from_slice(&len.to_be_bytes());
                        s.write_all(&header).await?;
                        let zeros = vec![0u8; CHUNK];
                        loop {
                            s.write_all(&zeros).await?;
                        }
                        #[allow(unreachable_code)]
                        Ok::<(), io::Error>(())
                    });
                }
            }
        }
    });
    (peer, addr, cancel)
}

#[tokio::test]
async fn a_peer_sending_past_its_length_or_lying_about_it_is_contained() {
    bounded(async {
        let b = start(40, config(&[]), Arc::new(NoBlobs)).await;
        let id = BlobId::of(b"whatever");

        let (peer, addr, stop) = raw_liar(100).await;
        assert_eq!(
            b.client
                .dial(addr.with(Protocol::P2p(peer)), Duration::from_secs(5))
                .await
                .unwrap(),
            peer
        );
        let got = b
            .client
            .fetch(peer, &id, MIB as u64, Duration::from_secs(5))
            .await
            .unwrap()
            .read_all()
            .await
            .unwrap();
        assert_eq!(got.len(), 100, "read past the announced length");
        stop.cancel();

        let (peer, addr, stop) = raw_liar(5 << 30).await;
        b.client.dial(addr, Duration::from_secs(5)).await.unwrap();
        let e = b
            .client
            .fetch(peer, &id, MIB as u64, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(e, NetError::TooLarge { len, .. } if len == 5 << 30),
            "{e}"
        );
        stop.cancel();
    })
    .await;
}

#[tokio::test]
async fn quic_listen_address_works() {
    bounded(async {
        let blob = pattern(2 * MIB);
        let id = BlobId::of(&blob);
        let quic = Config {
            listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap()],
            limits: limits(),
            ..Config::default()
        };
        let a = start(50, quic, MemBlobs::with(&[&blob])).await;
        assert!(
            a.addr.iter().any(|p| matches!(p, Protocol::QuicV1)),
            "{}",
            a.addr
        );
        let b = start(51, config(&[&a]), Arc::new(NoBlobs)).await;
        let got = b
            .client
            .fetch(a.peer, &id, 4 * MIB as u64, Duration::from_secs(10))
            .await
            .unwrap()
            .read_all()
            .await
            .unwrap();
        assert!(got == blob);
        let info = b.client.peers().await.unwrap();
        let (_, addrs) = info.connected.iter().find(|(p, _)| *p == a.peer).unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1))),
            "{addrs:?}"
        );
    })
    .await;
}

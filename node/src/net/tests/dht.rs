//! Discovery and records: providers across hops, values through the validator.

use std::sync::Arc;
use std::time::Duration;

use open_registry_protocol::BlobId;
use tokio::time::Instant;

use super::*;

#[tokio::test]
async fn a_bootstrapped_node_finds_the_provider() {
    bounded(async {
        let blob = pattern(1000);
        let id = BlobId::of(&blob);
        let a = start(3, config(&[]), MemBlobs::with(&[&blob])).await;
        let b = start(4, config(&[&a]), Arc::new(NoBlobs)).await;
        wait_for("B's routing table", || async {
            b.routing_table().await >= 1
        })
        .await;

        assert!(
            b.client
                .find_providers(&id, 5, Duration::from_secs(2))
                .await
                .unwrap()
                .is_empty()
        );
        a.client.provide(&id).await.unwrap();
        let found = b
            .client
            .find_providers(&id, 5, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(found, vec![a.peer]);
        // A does not list itself.
        assert!(
            a.client
                .find_providers(&id, 5, Duration::from_secs(2))
                .await
                .unwrap()
                .is_empty()
        );

        a.client.unprovide(&id).await.unwrap();
        assert_eq!(a.client.peers().await.unwrap().provided, 0);
    })
    .await;
}

#[tokio::test]
async fn a_blob_is_found_and_fetched_across_five_hops() {
    bounded(async {
        let blob = pattern(3 * MIB);
        let id = BlobId::of(&blob);
        let mut chain: Vec<TestNode> = Vec::new();
        for i in 0..5u8 {
            let boot: Vec<&TestNode> = chain.last().into_iter().collect();
            let blobs: Arc<dyn BlobSource> = if i == 4 {
                MemBlobs::with(&[&blob])
            } else {
                Arc::new(NoBlobs)
            };
            chain.push(start(10 + i, config(&boot), blobs).await);
        }
        for n in &chain[1..] {
            wait_for("routing tables", || async { n.routing_table().await >= 1 }).await;
        }
        let (first, last) = (&chain[0], &chain[4]);
        assert!(
            !first
                .client
                .peers()
                .await
                .unwrap()
                .connected
                .iter()
                .any(|(p, _)| *p == last.peer)
        );

        last.client.provide(&id).await.unwrap();
        let t0 = Instant::now();
        let found = first
            .client
            .find_providers(&id, 1, Duration::from_secs(10))
            .await
            .unwrap();
        eprintln!("found across 5 hops in {:?}", t0.elapsed());
        assert_eq!(found, vec![last.peer]);
        let got = first
            .client
            .fetch(last.peer, &id, 4 * MIB as u64, Duration::from_secs(10))
            .await
            .unwrap()
            .read_all()
            .await
            .unwrap();
        assert!(got == blob);
    })
    .await;
}

#[tokio::test]
async fn records_round_trip_and_invalid_ones_are_not_stored() {
    bounded(async {
        // Valid values start with "ok"; a newer one (longer) replaces an older one.
        struct Strict;
        impl RecordValidator for Strict {
            fn validate(&self, _: &[u8], value: &[u8]) -> bool {
                value.starts_with(b"ok")
            }
            fn replaces(&self, _: &[u8], old: &[u8], new: &[u8]) -> bool {
                new.len() >= old.len()
            }
        }
        let lax = |_: &[u8], _: &[u8]| true;

        let a = start_with(20, config(&[]), Arc::new(NoBlobs), Arc::new(Strict)).await;
        let b = start_with(21, config(&[&a]), Arc::new(NoBlobs), Arc::new(Strict)).await;
        let c = start_with(22, config(&[&a]), Arc::new(NoBlobs), Arc::new(lax)).await;
        for n in [&a, &b, &c] {
            wait_for("routing tables", || async { n.routing_table().await >= 2 }).await;
        }

        let key = b"pkg:left-pad".to_vec();
        a.client
            .put_record(key.clone(), b"ok-1".to_vec())
            .await
            .unwrap();
        // The put goes out on the announcement schedule, after the call returns.
        for n in [&b, &c] {
            wait_for("the put", || async {
                n.client.peers().await.unwrap().records_stored == 1
            })
            .await;
        }
        let e = a
            .client
            .put_record(key.clone(), b"bad".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::InvalidRecord), "{e}");
        let found = b
            .client
            .get_records(key.clone(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].value, b"ok-1");

        // C accepts anything and pushes a bad value to A and B, which refuse to store it and
        // filter it from query answers.
        let bad_key = b"pkg:evil".to_vec();
        c.client
            .put_record(bad_key.clone(), b"evil".to_vec())
            .await
            .unwrap();
        // ... and an older (shorter) value for the good key, which must not replace "ok-1".
        c.client
            .put_record(key.clone(), b"ok".to_vec())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            b.client
                .get_records(bad_key.clone(), Duration::from_secs(3))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(a.client.peers().await.unwrap().records_stored, 1);
        let b_stored = b.client.peers().await.unwrap().records_stored;
        assert!(b_stored <= 1, "B stored {b_stored} records");
        // Ending at the first remote answer: B gets a valid value from a peer (besides its
        // own copy, if it kept one), and the invalid value never ends a lookup.
        let found = b
            .client
            .get_first_records(key.clone(), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            found.iter().any(|f| f.from != b.peer)
                && found.iter().all(|f| f.value.starts_with(b"ok")),
            "{found:?}"
        );
        assert!(
            b.client
                .get_first_records(bad_key.clone(), Duration::from_secs(2))
                .await
                .unwrap()
                .is_empty()
        );
        // A and B kept "ok-1": their own copy comes first in their answers. (C's "ok" is valid,
        // so it may be listed after it.)
        for n in [&a, &b] {
            let found = n
                .client
                .get_records(key.clone(), Duration::from_secs(3))
                .await
                .unwrap();
            assert_eq!(found[0].from, n.peer, "{found:?}");
            assert_eq!(found[0].value, b"ok-1", "{found:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn announcements_reach_other_peers_and_outlive_the_provider() {
    bounded(async {
        let blob = pattern(100);
        let id = BlobId::of(&blob);
        let a = start(80, config(&[]), MemBlobs::with(&[&blob])).await;
        // Provided before A has any peer: announced once it has one.
        a.client.provide(&id).await.unwrap();
        let b = start(81, config(&[&a]), Arc::new(NoBlobs)).await;
        wait_for("A's announcement to reach B", || async {
            b.client.peers().await.unwrap().provider_keys_stored == 1
        })
        .await;
        let a_peer = a.peer;
        drop(a);

        // C knows only B; B still holds A's provider record.
        let c = start(82, config(&[&b]), Arc::new(NoBlobs)).await;
        wait_for("C's routing table", || async {
            c.routing_table().await >= 1
        })
        .await;
        let found = c
            .client
            .find_providers(&id, 5, Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(found, vec![a_peer]);
    })
    .await;
}

#[tokio::test]
async fn gossip_reaches_subscribed_peers_and_drops_oversized() {
    bounded(async {
        let a = start(31, Config::loopback(), Arc::new(NoBlobs)).await;
        let b = start(32, config(&[&a]), Arc::new(NoBlobs)).await;
        let mut a_rx = a.client.subscribe(crate::net::RECORDS_TOPIC).await.unwrap();
        let mut b_rx = b.client.subscribe(crate::net::RECORDS_TOPIC).await.unwrap();
        // Subscriptions travel with the connection; publishing fails until A knows B's.
        wait_for("the subscription to propagate", || async {
            a.client
                .publish(crate::net::RECORDS_TOPIC, b"hello".to_vec())
                .await
                .is_ok()
        })
        .await;
        let m = tokio::time::timeout(Duration::from_secs(5), b_rx.recv())
            .await
            .expect("B hears A")
            .unwrap();
        assert_eq!(m.data, b"hello");
        assert_eq!(m.source, Some(a.peer));
        assert_eq!(m.topic, crate::net::RECORDS_TOPIC);
        // Our own messages are not delivered back to us.
        assert!(a_rx.try_recv().is_err());
        // Oversized messages are refused before they leave.
        let big = vec![0u8; crate::net::gossip::MAX_MESSAGE + 1];
        assert!(
            a.client
                .publish(crate::net::RECORDS_TOPIC, big)
                .await
                .is_err()
        );
    })
    .await;
}

#[tokio::test]
async fn finished_lookups_are_counted_with_their_requests() {
    bounded(async {
        let blob = pattern(100);
        let id = BlobId::of(&blob);
        let a = start(70, config(&[]), MemBlobs::with(&[&blob])).await;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let cfg = Config {
            metrics: Some(metrics.clone()),
            ..config(&[&a])
        };
        let b = start(71, cfg, Arc::new(NoBlobs)).await;
        wait_for("B's routing table", || async {
            b.routing_table().await >= 1
        })
        .await;
        a.client.provide(&id).await.unwrap();
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let before = (count(&metrics.dht_queries), count(&metrics.dht_requests));

        // The query ends by itself (one provider, limit 5): counted before the answer comes.
        let found = b
            .client
            .find_providers(&id, 5, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(found, vec![a.peer]);
        assert_eq!(count(&metrics.dht_queries), before.0 + 1);
        let requests = count(&metrics.dht_requests) - before.1;
        assert!(requests >= 1, "A was asked");
        assert!(count(&metrics.dht_request_successes) >= 1);

        // A value lookup counts too; a node without metrics counts nothing and still works.
        let _ = b
            .client
            .get_records(b"no-such-key".to_vec(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(count(&metrics.dht_queries), before.0 + 2);
        assert!(
            a.client
                .find_providers(&id, 5, Duration::from_secs(2))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(count(&metrics.dht_queries), before.0 + 2);
    })
    .await;
}

/// An announcement is paced and counted: it starts once a peer is known, and its lookup
/// requests and ADD_PROVIDER messages go into `dht_messages_sent` and `dht_announce_messages`.
#[tokio::test]
async fn announcements_are_counted_in_the_messages_sent() {
    bounded(async {
        let a = start(72, config(&[]), Arc::new(NoBlobs)).await;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let cfg = Config {
            metrics: Some(metrics.clone()),
            ..config(&[&a])
        };
        let b = start(73, cfg, Arc::new(NoBlobs)).await;
        wait_for("B's routing table", || async {
            b.routing_table().await >= 1
        })
        .await;
        let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let key = open_registry_protocol::pointer::provider_key(
            &open_registry_protocol::PackageName::parse("counted").unwrap(),
        );
        b.client.provide(&key).await.unwrap();
        wait_for("A to store B's provider record", || async {
            a.client.peers().await.unwrap().provider_keys_stored == 1
        })
        .await;
        wait_for("the announcement to finish", || async {
            count(&metrics.dht_announce_messages) >= 2
        })
        .await;
        assert_eq!(count(&metrics.dht_announcements), 1);
        // At least the lookup request to A and the ADD_PROVIDER to A.
        assert!(count(&metrics.dht_messages_sent) >= count(&metrics.dht_announce_messages));
        let info = b.client.peers().await.unwrap();
        assert_eq!(info.provided, 1);
        assert_eq!(
            info.announcer.rate,
            f64::from(Limits::default().announce_rate)
        );
        assert_eq!(
            info.announcer.cycle_secs,
            crate::net::REANNOUNCE_INTERVAL.as_secs()
        );
    })
    .await;
}

//! Single-flight: any number of concurrent requests for the same key share one computation.
//!
//! This is what turns 200 identical cold requests into one upstream fetch (R10 in docs/security.md).
//! The computation runs in its own task, tracked by the node's [`TaskTracker`], so a client
//! that disconnects does not cancel the fetch that the other 199 are waiting for. The key is
//! removed from the in-flight map before the result is published: a request arriving after that
//! finds the result in the store instead of joining a finished flight.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

type Map<K, V> = Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>;

/// Coalesces computations by key.
pub(crate) struct Flights<K, V> {
    // std Mutex, not tokio: only held to look up or insert, never across an await.
    inflight: Map<K, V>,
    tracker: TaskTracker,
}

impl<K, V> fmt::Debug for Flights<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.inflight.lock().map_or(0, |m| m.len());
        f.debug_struct("Flights").field("inflight", &n).finish()
    }
}

/// Whether a caller started the computation or joined one already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Leader,
    Follower,
}

/// Removes the key when the computation ends, even if it panics.
struct Landing<K: Eq + Hash, V> {
    map: Map<K, V>,
    key: Option<K>,
}

impl<K: Eq + Hash, V> Drop for Landing<K, V> {
    fn drop(&mut self) {
        if let (Some(k), Ok(mut m)) = (self.key.take(), self.map.lock()) {
            m.remove(&k);
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A new, empty set of flights whose tasks `tracker` tracks.
    pub(crate) fn new(tracker: TaskTracker) -> Self {
        Self {
            inflight: Arc::new(Mutex::new(HashMap::new())),
            tracker,
        }
    }

    /// Runs `make()` for `key` unless a computation for it is already running, and returns its
    /// result. `None` only if the computation panicked.
    pub(crate) async fn run<F, Fut>(&self, key: K, make: F) -> (Option<V>, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (mut rx, role) = {
            let mut map = self.inflight.lock().expect("flight map poisoned");
            match map.get(&key) {
                Some(rx) => (rx.clone(), Role::Follower),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let landing = Landing {
                        map: self.inflight.clone(),
                        key: Some(key),
                    };
                    let fut = make();
                    self.tracker.spawn(async move {
                        let v = fut.await;
                        drop(landing);
                        let _ = tx.send(Some(v));
                    });
                    (rx, Role::Leader)
                }
            }
        };
        let v = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        (v, role)
    }

    /// How many computations are running.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inflight.lock().map_or(0, |m| m.len())
    }

    /// Whether none is running.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{Semaphore, oneshot};

    #[tokio::test]
    async fn concurrent_calls_share_one_computation() {
        let flights = Flights::<&'static str, usize>::new(TaskTracker::new());
        let runs = Arc::new(AtomicUsize::new(0));
        // The computation waits for the gate, so every call below joins it while it runs.
        let gate = Arc::new(Semaphore::new(0));
        let calls = (0..200).map(|_| {
            let (runs, gate) = (runs.clone(), gate.clone());
            flights.run("k", move || async move {
                let _open = gate.acquire().await;
                runs.fetch_add(1, Ordering::SeqCst) + 41
            })
        });
        // join! polls the calls first: all 200 are registered before the gate opens.
        let (results, ()) = tokio::join!(futures::future::join_all(calls), async {
            gate.add_permits(1)
        });
        let mut leaders = 0;
        for (v, role) in results {
            assert_eq!(v, Some(41));
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(flights.is_empty());
        // A later call computes again.
        let (v, role) = flights.run("k", || async { 7 }).await;
        assert_eq!((v, role), (Some(7), Role::Leader));
    }

    #[tokio::test]
    async fn survives_a_cancelled_leader_and_a_panic() {
        let flights = Arc::new(Flights::<u8, u8>::new(TaskTracker::new()));
        let (started_tx, started_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        let f2 = flights.clone();
        let leader = tokio::spawn(async move {
            f2.run(1, || async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                9
            })
            .await
        });
        // The computation runs; its caller goes away; a second caller joins and gets the result.
        started_rx.await.unwrap();
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        let (v, role) = tokio::join!(flights.run(1, || async { 0 }), async {
            release_tx.send(()).unwrap()
        })
        .0;
        assert_eq!((v, role), (Some(9), Role::Follower));

        let (v, _) = flights
            .run(2, || async {
                if true {
                    panic!("boom");
                }
                0
            })
            .await;
        assert_eq!(v, None);
        assert!(flights.is_empty());
    }
}

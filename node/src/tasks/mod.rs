//! The node's background work: staying in sync with the upstream ([`sync`]), acting on gossip
//! and publishing its popularity summary ([`gossip`]), publishing its signed reports and
//! statement ([`public`]), gossiping signed advisories ([`advisories`]), and keeping the store under its budget ([`maintenance`]). Every task runs on the node's `TaskTracker` and stops on its
//! `CancellationToken`.

pub(crate) mod advisories;
pub(crate) mod gossip;
pub(crate) mod maintenance;
pub(crate) mod public;
pub(crate) mod sync;

use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why [`every`] ran its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// A period passed.
    Period,
    /// The wake-up notification fired before the period passed.
    Woken,
}

/// Runs `body` every `period` (the first time one period after the start) until `cancel`
/// fires, and also whenever `wake` is notified. A body that overruns delays the next tick; no
/// burst of catch-up ticks follows a slow one.
pub(crate) async fn every<F, Fut>(
    period: Duration,
    cancel: &CancellationToken,
    wake: Option<&Notify>,
    mut body: F,
) where
    F: FnMut(Tick) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let why = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => Tick::Period,
            _ = async { match wake { Some(w) => w.notified().await, None => std::future::pending().await } } => Tick::Woken,
        };
        body(why).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn ticks_each_period_and_on_wake_until_cancelled() {
        let cancel = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let (periods, woken) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let task = {
            let (cancel, wake, periods, woken) =
                (cancel.clone(), wake.clone(), periods.clone(), woken.clone());
            tokio::spawn(async move {
                every(Duration::from_secs(10), &cancel, Some(&wake), |t| {
                    let c = if t == Tick::Period { &periods } else { &woken };
                    c.fetch_add(1, Ordering::SeqCst);
                    async {}
                })
                .await;
            })
        };
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert_eq!(
            periods.load(Ordering::SeqCst),
            3,
            "no tick at the start, one per period"
        );
        wake.notify_one();
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(periods.load(Ordering::SeqCst), 3);
    }
}

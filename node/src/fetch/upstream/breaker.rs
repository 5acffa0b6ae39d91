//! [`Breaker`]: a circuit breaker in front of the upstream.
//!
//! An upstream that is down, or hung (it accepts connections and never answers), must not make
//! every request wait for it. The breaker watches each request until the upstream answers it
//! (response headers: any status is an answer, a 5xx or 429 excepted) and counts **outages**:
//! requests that failed (unreachable, timed out, 5xx, 429) and requests still unanswered after
//! a slowness threshold. The threshold follows the upstream's own recent time to answer
//! ([`SLOW_FACTOR`] times its moving average, within [`SLOW_MIN`]..[`SLOW_MAX`];
//! [`SLOW_FIRST`] before the first answer), so a hung upstream on loopback is noticed in a
//! fraction of a second and a distant one is given its usual time. After `breaker_outages`
//! (3 by default)
//! outages with no answer in between the breaker **opens**: every request fails at once with
//! [`UpstreamError::Down`], so the Fetcher serves stale copies without waiting and uncached
//! names get a clear "the upstream is down" at once. Every [`PROBE_EVERY`] one request is let
//! through as a **probe**; an answer closes the breaker, an outage keeps it open. Body
//! downloads are not watched: a big document that takes long to arrive was answered.
//!
//! The probe schedule reads the node's clock; the slowness threshold is a deadline on tokio's.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use open_registry_protocol::status::UpstreamHealth;
use tokio::sync::watch;
use tokio::time::Instant;

use super::UpstreamError;
use crate::clock::Clock;
use crate::metrics::Metrics;

/// Outages in a row that open the breaker, by default.
#[cfg(test)]
pub(crate) const OPEN_AFTER: u32 = 3;
/// How often an open breaker lets one request through to probe the upstream.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(10);
/// A request is slow past this many times the upstream's average time to answer...
pub(crate) const SLOW_FACTOR: f64 = 8.0;
/// ...but never before this...
pub(crate) const SLOW_MIN: Duration = Duration::from_millis(100);
/// ...and always after this.
pub(crate) const SLOW_MAX: Duration = Duration::from_secs(5);
/// The threshold before the upstream answered anything.
pub(crate) const SLOW_FIRST: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct State {
    /// Outages since the last answer.
    outages: u32,
    /// When the breaker opened (clock ms), while it is open.
    open_since: Option<u64>,
    /// When the next probe may go (clock ms).
    probe_at: u64,
    /// A probe is in flight.
    probing: bool,
    /// Moving average of the time to answer, in ms.
    answer_ms: Option<f64>,
}

/// The upstream's circuit breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// Outages in a row that open it; 0: it never opens and watches nothing.
    open_after: u32,
    clock: Clock,
    metrics: std::sync::Arc<Metrics>,
    // std Mutex: held only to read or update the state, never across an await.
    state: Mutex<State>,
    /// Whether the breaker is open, for waiters that want to know the moment it opens.
    open: watch::Sender<bool>,
}

impl Breaker {
    /// A closed breaker that opens after `open_after` outages in a row (never, for 0) and reads
    /// its probe schedule off `clock`.
    pub(crate) fn new(open_after: u32, clock: Clock, metrics: std::sync::Arc<Metrics>) -> Breaker {
        Breaker {
            open_after,
            clock,
            metrics,
            state: Mutex::new(State::default()),
            open: watch::channel(false).0,
        }
    }

    /// The breaker's state, for the status and the dashboard.
    pub(crate) fn health(&self) -> UpstreamHealth {
        let s = self.state.lock().expect("breaker state poisoned");
        UpstreamHealth {
            state: match (s.open_since, s.probing) {
                (None, _) => "closed",
                (Some(_), true) => "probing",
                (Some(_), false) => "open",
            }
            .to_owned(),
            consecutive_failures: u64::from(s.outages),
            open_since_ms: s.open_since,
            next_probe_ms: s.open_since.map(|_| s.probe_at),
        }
    }

    /// Resolves once the breaker is open (at once if it is).
    pub(crate) async fn opened(&self) {
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }

    /// The slowness threshold, once the upstream has answered at least once (and the breaker
    /// is on).
    pub(crate) fn answers_within(&self) -> Option<Duration> {
        if self.open_after == 0 {
            return None;
        }
        let answered = self
            .state
            .lock()
            .expect("breaker state poisoned")
            .answer_ms
            .is_some();
        answered.then(|| self.slow_after())
    }

    /// How long a request may go unanswered before it counts as an outage.
    fn slow_after(&self) -> Duration {
        let s = self.state.lock().expect("breaker state poisoned");
        match s.answer_ms {
            None => SLOW_FIRST,
            Some(ms) => {
                Duration::from_secs_f64(ms * SLOW_FACTOR / 1000.0).clamp(SLOW_MIN, SLOW_MAX)
            }
        }
    }

    /// Whether a request may go: `Ok(true)` for a probe.
    fn admit(&self) -> Result<bool, UpstreamError> {
        let now = self.clock.now_ms();
        let mut s = self.state.lock().expect("breaker state poisoned");
        let Some(since) = s.open_since else {
            return Ok(false);
        };
        if !s.probing && now >= s.probe_at {
            s.probing = true;
            return Ok(true);
        }
        Metrics::inc(&self.metrics.upstream_fast_failures);
        Err(UpstreamError::Down {
            for_secs: now.saturating_sub(since) / 1000,
            probe_in_secs: s.probe_at.saturating_sub(now).div_ceil(1000),
        })
    }

    /// Notes an outage: a failure, or a request slower than the threshold.
    fn outage(&self, probe: bool) {
        let now = self.clock.now_ms();
        let mut s = self.state.lock().expect("breaker state poisoned");
        s.outages = s.outages.saturating_add(1);
        if probe {
            s.probing = false;
        }
        let opens = s.open_since.is_none() && self.open_after > 0 && s.outages >= self.open_after;
        if opens {
            s.open_since = Some(now);
            Metrics::inc(&self.metrics.upstream_circuit_opened);
            tracing::warn!(
                outages = s.outages,
                "the upstream is not answering: circuit open; serving from the store and peers"
            );
        }
        if opens || (probe && s.open_since.is_some()) {
            s.probe_at = now + PROBE_EVERY.as_millis() as u64;
            self.open.send_replace(true);
        }
    }

    /// Notes an answer after `took`: the upstream is there.
    fn answered(&self, took: Duration) {
        let mut s = self.state.lock().expect("breaker state poisoned");
        if s.open_since.is_some() {
            tracing::info!("the upstream answers again: circuit closed");
        }
        let ms = took.as_secs_f64() * 1000.0;
        let avg = s.answer_ms.map_or(ms, |a| a * 0.8 + ms * 0.2);
        *s = State {
            answer_ms: Some(avg),
            ..State::default()
        };
        self.open.send_replace(false);
    }

    /// Runs one request through the breaker: `request` is built only if the breaker lets it go.
    pub(crate) async fn guard<T, F>(&self, request: impl FnOnce() -> F) -> Result<T, UpstreamError>
    where
        F: Future<Output = Result<T, UpstreamError>>,
    {
        if self.open_after == 0 {
            return request().await;
        }
        let probe = self.admit()?;
        let started = Instant::now();
        let mut request = std::pin::pin!(request());
        let slow = tokio::time::sleep_until(started + self.slow_after());
        tokio::pin!(slow);
        let mut counted = false;
        let result = loop {
            tokio::select! {
                r = &mut request => break r,
                () = &mut slow, if !counted => {
                    counted = true;
                    self.outage(false);
                }
            }
        };
        match &result {
            Err(e) if e.is_outage() => {
                if !counted || probe {
                    self.outage(probe);
                }
            }
            _ => self.answered(started.elapsed()),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    fn rig() -> (Breaker, Clock, Arc<Metrics>) {
        let clock = Clock::manual();
        let metrics = Arc::new(Metrics::default());
        (
            Breaker::new(OPEN_AFTER, clock.clone(), metrics.clone()),
            clock,
            metrics,
        )
    }

    fn unavailable() -> UpstreamError {
        UpstreamError::Status {
            status: 503,
            what: "package p".into(),
        }
    }

    async fn fail(b: &Breaker) -> Result<(), UpstreamError> {
        b.guard(|| async { Err::<(), _>(unavailable()) }).await
    }

    async fn answer(b: &Breaker) -> Result<(), UpstreamError> {
        b.guard(|| async { Ok(()) }).await
    }

    #[tokio::test]
    async fn opens_after_outages_fails_fast_and_a_probe_closes_it() {
        let (b, clock, metrics) = rig();
        for _ in 0..OPEN_AFTER {
            assert!(matches!(fail(&b).await, Err(UpstreamError::Status { .. })));
        }
        assert_eq!(b.health().state, "open");
        // Open: the request is not even built, and the error says why.
        let built = std::sync::atomic::AtomicBool::new(false);
        let e = b
            .guard(|| {
                built.store(true, Ordering::SeqCst);
                async { Ok(()) }
            })
            .await
            .unwrap_err();
        assert!(!built.load(Ordering::SeqCst));
        assert!(e.to_string().contains("upstream registry is down"), "{e}");
        assert_eq!(metrics.upstream_fast_failures.load(Ordering::SeqCst), 1);
        assert_eq!(metrics.upstream_circuit_opened.load(Ordering::SeqCst), 1);
        // A probe after PROBE_EVERY: it fails; the breaker stays open for another period.
        clock.advance(PROBE_EVERY);
        assert!(matches!(fail(&b).await, Err(UpstreamError::Status { .. })));
        assert!(matches!(answer(&b).await, Err(UpstreamError::Down { .. })));
        // The upstream is back: the next probe closes it.
        clock.advance(PROBE_EVERY);
        assert!(answer(&b).await.is_ok());
        assert_eq!(b.health().state, "closed");
        assert!(answer(&b).await.is_ok());
    }

    #[tokio::test]
    async fn answers_are_not_outages_and_reset_the_count() {
        let (b, _, _) = rig();
        for _ in 0..10 {
            let r = b
                .guard(|| async { Err::<(), _>(UpstreamError::NotFound("x".into())) })
                .await;
            assert!(matches!(r, Err(UpstreamError::NotFound(_))));
        }
        for _ in 0..OPEN_AFTER - 1 {
            let _ = fail(&b).await;
        }
        answer(&b).await.unwrap();
        for _ in 0..OPEN_AFTER - 1 {
            let _ = fail(&b).await;
        }
        assert_eq!(b.health().state, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_upstream_opens_it_after_the_slowness_threshold() {
        let (b, _, _) = rig();
        let b = Arc::new(b);
        // Before any answer the threshold is SLOW_FIRST.
        let hung = |b: Arc<Breaker>| {
            tokio::spawn(async move {
                b.guard(std::future::pending::<Result<(), UpstreamError>>)
                    .await
            })
        };
        for _ in 0..OPEN_AFTER {
            hung(b.clone());
        }
        let started = Instant::now();
        b.opened().await;
        assert_eq!(started.elapsed(), SLOW_FIRST);
        assert!(matches!(answer(&b).await, Err(UpstreamError::Down { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn the_threshold_follows_the_upstreams_usual_time_to_answer() {
        let (b, _, _) = rig();
        // An upstream that answers in 10 ms: slow means 80 ms, raised to SLOW_MIN.
        for _ in 0..5 {
            b.guard(|| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, UpstreamError>(())
            })
            .await
            .unwrap();
        }
        assert_eq!(b.slow_after(), SLOW_MIN);
        // One that takes 400 ms: 3.2 s.
        let (b, _, _) = rig();
        for _ in 0..30 {
            b.guard(|| async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok::<_, UpstreamError>(())
            })
            .await
            .unwrap();
        }
        let s = b.slow_after();
        assert!(s > Duration::from_secs(3) && s < SLOW_MAX, "{s:?}");
    }
}

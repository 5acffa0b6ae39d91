//! Asking several providers for one blob: nearest first, hedged.
//!
//! A request has two phases: *starting* (connect if needed, open a stream, wait for the
//! provider's answer header) and *finishing* (receive the bytes, verify, store). Providers are
//! asked in the order given (the caller puts the nearest first). When the newest request has
//! not started answering within its provider's hedge delay, derived from that provider's
//! round-trip time ([`hedge_delay`]), the next provider is asked too; a request that fails
//! moves on to the next provider at once. The first to start answering is finished, and the
//! requests still starting are dropped (their providers go back to the front of the queue, to
//! be asked again should that one fail while finishing). So a far or stalled provider costs
//! one hedge delay, not a timeout, and a blob is never received twice in parallel.
//!
//! Everything runs under one deadline. Time is tokio's, so tests run it paused.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

/// The hedge delay for a provider whose round-trip time is not known yet.
pub(crate) const UNKNOWN_RTT_HEDGE: Duration = Duration::from_millis(1000);
/// What a provider may take besides its round trips to start answering (a disk read, a busy
/// runtime), and the least hedge delay.
pub(crate) const HEDGE_SLACK: Duration = Duration::from_millis(100);
/// Round trips a provider needs to start answering on an open connection: one to open the
/// stream and send the request, one for the answer header; a third covers a slow path.
pub(crate) const HEDGE_RTTS: u32 = 3;

/// How long a request to a provider `rtt` away may go without starting to answer before the
/// next provider is asked too.
pub(crate) fn hedge_delay(rtt: Option<Duration>) -> Duration {
    match rtt {
        Some(rtt) => rtt * HEDGE_RTTS + HEDGE_SLACK,
        None => UNKNOWN_RTT_HEDGE,
    }
}

/// Why no provider delivered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failed<E> {
    /// Nobody to ask.
    NoProviders,
    /// The deadline passed first.
    Deadline,
    /// Every provider was asked and failed; the last error.
    All(E),
}

/// Asks `providers` as the module describes: `start(p)` until one starts answering, then
/// `finish(p, started)` of that one. `hedged` is called each time a provider is asked because
/// the one before did not start answering in time.
pub(crate) async fn race<'a, P, S, T, E, Fs, Ff>(
    providers: &[P],
    delay: impl Fn(&P) -> Duration,
    deadline: Instant,
    start: impl Fn(P) -> Fs,
    finish: impl Fn(P, S) -> Ff,
    hedged: impl Fn(),
) -> Result<T, Failed<E>>
where
    P: Clone + Send + 'a,
    S: Send + 'a,
    T: Send + 'a,
    E: Send + 'a,
    Fs: Future<Output = Result<S, E>> + Send + 'a,
    Ff: Future<Output = Result<T, E>> + Send + 'a,
{
    if providers.is_empty() {
        return Err(Failed::NoProviders);
    }
    let mut queue: VecDeque<usize> = (0..providers.len()).collect();
    let mut starting: FuturesUnordered<BoxFuture<'a, (usize, Result<S, E>)>> =
        FuturesUnordered::new();
    // Indices of the requests in `starting`, in the order they were made.
    let mut in_flight: Vec<usize> = Vec::new();
    let mut finishing: Option<BoxFuture<'a, Result<T, E>>> = None;
    let mut hedge_at: Option<Instant> = None;
    let mut last: Option<E> = None;
    let ask = |i: usize,
               starting: &mut FuturesUnordered<BoxFuture<'a, (usize, Result<S, E>)>>,
               in_flight: &mut Vec<usize>|
     -> Instant {
        let f = start(providers[i].clone());
        starting.push(Box::pin(async move { (i, f.await) }));
        in_flight.push(i);
        Instant::now() + delay(&providers[i])
    };
    loop {
        if starting.is_empty() && finishing.is_none() {
            match queue.pop_front() {
                Some(i) => hedge_at = Some(ask(i, &mut starting, &mut in_flight)),
                None => return Err(last.map_or(Failed::NoProviders, Failed::All)),
            }
        }
        let can_hedge = finishing.is_none() && !queue.is_empty();
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return Err(Failed::Deadline),
            Some((i, r)) = starting.next(), if !starting.is_empty() => {
                in_flight.retain(|j| *j != i);
                match r {
                    Ok(s) => {
                        // The first to answer is finished; the others are asked again only
                        // if it fails.
                        starting = FuturesUnordered::new();
                        for j in in_flight.drain(..).rev() {
                            queue.push_front(j);
                        }
                        finishing = Some(Box::pin(finish(providers[i].clone(), s)));
                        hedge_at = None;
                    }
                    Err(e) => {
                        last = Some(e);
                        if finishing.is_none()
                            && let Some(next) = queue.pop_front()
                        {
                            hedge_at = Some(ask(next, &mut starting, &mut in_flight));
                        }
                    }
                }
            }
            r = async { finishing.as_mut().expect("guarded").await }, if finishing.is_some() => {
                finishing = None;
                match r {
                    Ok(t) => return Ok(t),
                    Err(e) => last = Some(e),
                }
            }
            () = async { tokio::time::sleep_until(hedge_at.expect("guarded")).await },
                if can_hedge && hedge_at.is_some() => {
                let next = queue.pop_front().expect("guarded");
                hedged();
                hedge_at = Some(ask(next, &mut starting, &mut in_flight));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A provider in a test: how long it takes to start answering (or fail), and to finish.
    #[derive(Debug, Clone)]
    struct Fake {
        name: &'static str,
        start: Duration,
        start_ok: bool,
        finish: Duration,
        finish_ok: bool,
    }

    fn fake(name: &'static str, start_ms: u64) -> Fake {
        Fake {
            name,
            start: Duration::from_millis(start_ms),
            start_ok: true,
            finish: Duration::from_millis(10),
            finish_ok: true,
        }
    }

    struct Run {
        result: Result<&'static str, Failed<String>>,
        asked: Vec<&'static str>,
        finished: Vec<&'static str>,
        hedges: usize,
        took: Duration,
    }

    async fn run(providers: &[Fake], delay: Duration, budget: Duration) -> Run {
        let asked = Mutex::new(Vec::new());
        let finished = Mutex::new(Vec::new());
        let hedges = AtomicUsize::new(0);
        let t0 = Instant::now();
        let result = race(
            providers,
            |_| delay,
            t0 + budget,
            |p: Fake| {
                asked.lock().unwrap().push(p.name);
                async move {
                    tokio::time::sleep(p.start).await;
                    if p.start_ok {
                        Ok(p)
                    } else {
                        Err(format!("{} refused", p.name))
                    }
                }
            },
            |_, p: Fake| {
                finished.lock().unwrap().push(p.name);
                async move {
                    tokio::time::sleep(p.finish).await;
                    if p.finish_ok {
                        Ok(p.name)
                    } else {
                        Err(format!("{} broke off", p.name))
                    }
                }
            },
            || {
                hedges.fetch_add(1, Ordering::Relaxed);
            },
        )
        .await;
        Run {
            result,
            asked: asked.into_inner().unwrap(),
            finished: finished.into_inner().unwrap(),
            hedges: hedges.into_inner(),
            took: t0.elapsed(),
        }
    }

    const HEDGE: Duration = Duration::from_millis(300);
    const BUDGET: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_answers_in_time_is_the_only_one_asked() {
        let r = run(&[fake("near", 50), fake("far", 10)], HEDGE, BUDGET).await;
        assert_eq!(r.result, Ok("near"));
        assert_eq!(r.asked, ["near"]);
        assert_eq!(r.hedges, 0);
        assert_eq!(r.took, Duration::from_millis(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_provider_is_hedged_after_its_delay_and_the_first_to_answer_wins() {
        let r = run(&[fake("stalled", 60_000), fake("next", 40)], HEDGE, BUDGET).await;
        assert_eq!(r.result, Ok("next"));
        assert_eq!(r.asked, ["stalled", "next"]);
        assert_eq!(
            r.finished,
            ["next"],
            "the stalled request was never finished"
        );
        assert_eq!(r.hedges, 1);
        assert_eq!(r.took, HEDGE + Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_moves_on_at_once_and_a_broken_transfer_retries_the_dropped_request() {
        // The first fails at 5 ms: the second is asked then, not after the hedge delay.
        let mut refusing = fake("refusing", 5);
        refusing.start_ok = false;
        let r = run(&[refusing, fake("ok", 20)], HEDGE, BUDGET).await;
        assert_eq!(r.result, Ok("ok"));
        assert_eq!((r.hedges, r.took), (0, Duration::from_millis(35)));

        // "slow" is hedged by "quick", which answers first and then breaks off while
        // finishing: "slow", dropped when "quick" answered, is asked again and delivers.
        let mut quick = fake("quick", 10);
        quick.finish_ok = false;
        let r = run(&[fake("slow", 400), quick], HEDGE, BUDGET).await;
        assert_eq!(r.result, Ok("slow"));
        assert_eq!(r.asked, ["slow", "quick", "slow"]);
        assert_eq!(r.finished, ["quick", "slow"]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_provider_failing_or_the_deadline_ends_it() {
        let mut a = fake("a", 1);
        a.start_ok = false;
        let mut b = fake("b", 2);
        b.finish_ok = false;
        let r = run(&[a, b], HEDGE, BUDGET).await;
        assert_eq!(r.result, Err(Failed::All("b broke off".into())));

        let r = run(
            &[fake("x", 60_000), fake("y", 60_000)],
            HEDGE,
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(r.result, Err(Failed::Deadline));
        assert_eq!((r.hedges, r.took), (1, Duration::from_secs(2)));

        let r = run(&[], HEDGE, BUDGET).await;
        assert_eq!(r.result, Err(Failed::NoProviders));
    }

    #[test]
    fn the_delay_grows_with_the_round_trip() {
        assert_eq!(hedge_delay(None), UNKNOWN_RTT_HEDGE);
        assert_eq!(
            hedge_delay(Some(Duration::from_millis(90))),
            Duration::from_millis(370)
        );
        assert_eq!(hedge_delay(Some(Duration::ZERO)), HEDGE_SLACK);
    }
}

//! How fast provider announcements may go out: a token bucket of DHT messages.
//!
//! One announcement (Kademlia `start_providing`) is a closest-peers lookup followed by an
//! ADD_PROVIDER to each of the closest peers found: in a large network some 20 lookup requests
//! plus 20 ADD_PROVIDER messages. A node that re-announced each of 100,000 keys every 12 hours
//! would send millions of messages a day whatever else it does (the reprovider problem). So
//! announcements draw from a bucket filled at [`Limits::announce_rate`](super::Limits) messages
//! per second and holding at most [`BURST`] seconds of it; each announcement takes the
//! *estimated* cost of one when it starts, and the estimate is corrected by
//! what the finished query reports (its `num_requests`), so the bucket follows the messages
//! actually sent and the estimate follows the network's size.
//!
//! The re-announcement cycle is stretched to what the rate allows: with `keys` provided, one
//! round costs `keys × cost` messages, so the cycle is
//! `max(REANNOUNCE_INTERVAL, keys × cost / rate)`. Keys are rescheduled one cycle after each
//! announcement, so they stay spread over the cycle rather than all falling due at once.
//! [`PROVIDER_RECORD_TTL`] is set well above the cycle at the node sizes we plan for (see
//! docs/protocol.md, "What a node announces").

use std::time::{Duration, Instant};

use super::dht_store::{PROVIDER_RECORD_TTL, REANNOUNCE_INTERVAL};

/// How many seconds of the rate the bucket holds (the burst after a quiet spell or a start).
pub const BURST: Duration = Duration::from_secs(60);

/// The cost of one announcement assumed before any has finished: 20 lookup requests and 20
/// ADD_PROVIDER messages (Kademlia's replication factor).
pub const INITIAL_COST: f64 = 40.0;

/// The cost estimate never goes below this (a query that reached no one still cost a try).
const MIN_COST: f64 = 1.0;

/// The cost estimate never goes above this, so one runaway query cannot freeze announcing.
const MAX_COST: f64 = 200.0;

/// Rounding slack when comparing tokens: waking at the instant [`Pacer::ready_at`] named must
/// find the bucket ready, whatever the float arithmetic.
const EPSILON: f64 = 1e-6;

/// Weight of a finished announcement's cost in the running estimate.
const COST_WEIGHT: f64 = 1.0 / 8.0;

/// The token bucket and cost estimate. Time is passed in, never read, so tests drive it.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// Messages per second.
    rate: f64,
    /// Messages the bucket can hold.
    capacity: f64,
    /// Messages that may be sent now (negative after queries that cost more than estimated).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
    /// Estimated messages per announcement.
    cost: f64,
}

/// The announcer's state, for the status JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PacerStatus {
    /// The message budget, per second.
    pub rate: f64,
    /// Estimated messages per announcement (running average of finished ones).
    pub cost: f64,
    /// How long one round over every provided key takes at that rate and cost, in seconds.
    pub cycle_secs: u64,
    /// Whether that cycle is longer than half the provider record TTL (records would lapse
    /// after one missed announcement).
    pub cycle_too_long: bool,
}

impl Pacer {
    /// A full bucket at `now`, filled at `rate` messages per second (at least one).
    pub(crate) fn new(rate: u32, now: Instant) -> Pacer {
        let rate = f64::from(rate.max(1));
        let capacity = (rate * BURST.as_secs_f64()).max(MAX_COST);
        Pacer {
            rate,
            capacity,
            tokens: capacity,
            at: now,
            cost: INITIAL_COST,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// The estimated messages of one announcement.
    pub(crate) fn cost(&self) -> f64 {
        self.cost
    }

    /// Takes one announcement's estimated cost if the bucket holds it at `now`; returns what
    /// was taken (to settle with [`Pacer::settle`]), or `None` when the caller must wait.
    pub(crate) fn try_take(&mut self, now: Instant) -> Option<f64> {
        self.refill(now);
        if self.tokens + EPSILON < self.cost {
            return None;
        }
        self.tokens -= self.cost;
        Some(self.cost)
    }

    /// When the bucket will next hold one announcement's cost (`now` if it does).
    pub(crate) fn ready_at(&self, now: Instant) -> Instant {
        let tokens = (self.tokens
            + now.saturating_duration_since(self.at).as_secs_f64() * self.rate)
            .min(self.capacity);
        if tokens + EPSILON >= self.cost {
            return now;
        }
        now + Duration::from_secs_f64((self.cost - tokens) / self.rate)
    }

    /// Settles a finished announcement that was charged `charged` and sent `sent` messages:
    /// the difference goes back to (or is taken from) the bucket, and the estimate moves
    /// towards `sent`.
    pub(crate) fn settle(&mut self, charged: f64, sent: u32, now: Instant) {
        self.refill(now);
        let sent = f64::from(sent);
        self.tokens = (self.tokens + charged - sent).min(self.capacity);
        self.cost =
            (self.cost + COST_WEIGHT * (sent.max(MIN_COST) - self.cost)).clamp(MIN_COST, MAX_COST);
    }

    /// How long one round over `keys` provided keys takes: [`REANNOUNCE_INTERVAL`], or longer
    /// when the rate cannot carry `keys` announcements in that time.
    pub(crate) fn cycle(&self, keys: usize) -> Duration {
        let needed = Duration::from_secs_f64(keys as f64 * self.cost / self.rate);
        needed.max(REANNOUNCE_INTERVAL)
    }

    /// The state, for status output.
    pub(crate) fn status(&self, keys: usize) -> PacerStatus {
        let cycle = self.cycle(keys);
        PacerStatus {
            rate: self.rate,
            cost: (self.cost() * 10.0).round() / 10.0,
            cycle_secs: cycle.as_secs(),
            cycle_too_long: cycle > PROVIDER_RECORD_TTL / 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_waits_and_refills() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10, t0);
        // 600 messages of burst: 15 announcements at 40.
        let taken = (0..100).filter_map(|_| p.try_take(t0)).count();
        assert_eq!(taken, 15);
        let ready = p.ready_at(t0);
        assert_eq!(ready, t0 + Duration::from_secs(4));
        assert!(p.try_take(ready - Duration::from_millis(100)).is_none());
        assert_eq!(p.try_take(ready), Some(40.0));
    }

    #[test]
    fn settling_follows_the_messages_actually_sent() {
        let t0 = Instant::now();
        let mut p = Pacer::new(10, t0);
        while p.try_take(t0).is_some() {}
        // The query cost 100, not 40: 60 more are owed before the next one.
        p.settle(40.0, 100, t0);
        assert!(p.cost() > INITIAL_COST);
        let ready = p.ready_at(t0);
        assert!(ready >= t0 + Duration::from_secs(10), "{:?}", ready - t0);
        // Small networks: the estimate drops towards what queries cost there.
        for _ in 0..100 {
            p.settle(0.0, 4, t0);
        }
        assert!(p.cost() < 5.0, "{}", p.cost());
    }

    #[test]
    fn the_cycle_stretches_with_the_keys() {
        let p = Pacer::new(8, Instant::now());
        assert_eq!(p.cycle(10), REANNOUNCE_INTERVAL);
        // 100,000 packages × 40 messages / 8 per second = 500,000 s ≈ 5.8 days.
        assert_eq!(p.cycle(100_000), Duration::from_secs(500_000));
        let s = p.status(100_000);
        assert_eq!(s.cycle_secs, 500_000);
        assert!(!s.cycle_too_long);
        assert!(p.status(1_000_000).cycle_too_long);
    }
}

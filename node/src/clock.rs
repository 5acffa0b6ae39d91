//! The node's idea of wall-clock time, injected so tests can move it.
//!
//! Every decision a node takes by the calendar reads a [`Clock`]: whether a packument is still
//! fresh (`max_age`), when a record expires and what sequence it gets, how long a miss is
//! remembered, how old a pin is. Production nodes use [`Clock::system`]; tests use
//! [`Clock::manual`], which starts at the current time and moves only when told to, so a test
//! of `max_age` advances the clock instead of sleeping past it.
//!
//! Deadlines on network waits are not calendar decisions: they use tokio's clock, which tests
//! control with paused time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Wall-clock milliseconds: the system's, or a manual one that tests advance.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// `None`: the system clock. `Some`: a manual clock's current time (ms since the epoch).
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that starts at the system's current time and moves only by [`Clock::advance`].
    /// Clones share it.
    pub fn manual() -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicU64::new(now_ms()))),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            Some(t) => t.load(Ordering::SeqCst),
            None => now_ms(),
        }
    }

    /// Moves a manual clock forward by `by`; returns false (and does nothing) for the system
    /// clock, which nobody moves.
    pub fn advance(&self, by: Duration) -> bool {
        match &self.manual {
            Some(t) => {
                t.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }

    /// How long ago `at_ms` was (zero if it lies in the future).
    pub fn since(&self, at_ms: u64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(at_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clocks_move_only_when_told_and_clones_share() {
        let c = Clock::manual();
        let t0 = c.now_ms();
        let shared = c.clone();
        assert!(shared.advance(Duration::from_secs(90)));
        assert_eq!(c.now_ms(), t0 + 90_000);
        assert_eq!(c.since(t0), Duration::from_secs(90));
        assert_eq!(c.since(t0 + 1_000_000), Duration::ZERO);
        assert!(!Clock::system().advance(Duration::from_secs(1)));
    }
}

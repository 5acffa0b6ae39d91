//! [`MemoryBudget`]: the bytes of packuments a node may hold in memory at once while it downloads,
//! checks and derives them, and the [`Lease`] a packument carries while it is held.
//!
//! A packument is megabytes (the largest real ones are over 20 MB), and a client resolving a
//! project asks for a dozen at once. Without a bound, each request buffers its whole document,
//! and the derived forms besides, and memory grows with the traffic. With one, a request first
//! leases the bytes it will hold; when the budget is spent it waits for another request to
//! finish. A lease larger than the whole budget is cut to the budget: that packument is handled
//! alone, but it is handled.
//!
//! Waiting never deadlocks, because nothing waits for a lease while holding one: a download
//! that outgrows its lease gives it back and continues on disk, and leases the exact size only
//! once the body is complete (see the node's upstream client). Clones of a lease share it; the
//! bytes return to the budget when the last clone is dropped.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Leases are counted in units of this many bytes (a semaphore permit each).
const UNIT: u64 = 1024;

/// See the module docs. Cheap to clone: clones share one budget.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    permits: Arc<Semaphore>,
    /// Capacity in units.
    units: u32,
    /// Leases that had to wait for bytes another request held.
    waits: AtomicU64,
    /// Leases asked for more than the whole budget (cut to it).
    oversized: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least one unit, at most 4 TiB).
    pub fn new(bytes: u64) -> MemoryBudget {
        let units = (bytes / UNIT).clamp(1, u64::from(u32::MAX) >> 3) as u32;
        MemoryBudget {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(units as usize)),
                units,
                waits: AtomicU64::new(0),
                oversized: AtomicU64::new(0),
            }),
        }
    }

    /// A budget too large to ever wait (tests, and registries that hold nothing).
    pub fn unbounded() -> MemoryBudget {
        MemoryBudget::new(u64::MAX)
    }

    /// The whole budget in bytes.
    pub fn capacity(&self) -> u64 {
        u64::from(self.inner.units) * UNIT
    }

    /// Bytes leased right now.
    pub fn in_use(&self) -> u64 {
        let free = self.inner.permits.available_permits() as u64;
        (u64::from(self.inner.units) - free.min(u64::from(self.inner.units))) * UNIT
    }

    /// How many leases waited for bytes.
    pub fn waits(&self) -> u64 {
        self.inner.waits.load(Relaxed)
    }

    /// How many leases asked for more than the whole budget.
    pub fn oversized(&self) -> u64 {
        self.inner.oversized.load(Relaxed)
    }

    fn units_for(&self, bytes: u64) -> u32 {
        let units = bytes.div_ceil(UNIT).max(1);
        if units > u64::from(self.inner.units) {
            self.inner.oversized.fetch_add(1, Relaxed);
        }
        units.min(u64::from(self.inner.units)) as u32
    }

    /// Leases `bytes` (cut to the whole budget), waiting while other leases hold it. The caller
    /// must hold no other lease of this budget while it waits.
    pub async fn lease(&self, bytes: u64) -> Lease {
        let units = self.units_for(bytes);
        let permit = match self.inner.permits.clone().try_acquire_many_owned(units) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => {
                self.inner.waits.fetch_add(1, Relaxed);
                self.inner
                    .permits
                    .clone()
                    .acquire_many_owned(units)
                    .await
                    .expect("the budget's semaphore is never closed")
            }
            Err(TryAcquireError::Closed) => unreachable!("the budget's semaphore is never closed"),
        };
        Lease {
            permit: Some(Arc::new(permit)),
        }
    }

    /// Leases `bytes` if they are free now, without waiting.
    pub fn try_lease(&self, bytes: u64) -> Option<Lease> {
        let units = bytes.div_ceil(UNIT).max(1);
        if units > u64::from(self.inner.units) {
            return None;
        }
        self.inner
            .permits
            .clone()
            .try_acquire_many_owned(units as u32)
            .ok()
            .map(|p| Lease {
                permit: Some(Arc::new(p)),
            })
    }
}

impl MemoryBudget {
    /// Adds `bytes` to `lease` if they are free now, without waiting; `false` (the lease
    /// unchanged) when they are not, or when the lease is shared with clones.
    pub fn try_grow(&self, lease: &mut Lease, bytes: u64) -> bool {
        let Some(more) = self.try_lease(bytes) else {
            return false;
        };
        let Some(more) = more.permit.and_then(|p| Arc::try_unwrap(p).ok()) else {
            return false;
        };
        match &mut lease.permit {
            None => {
                lease.permit = Some(Arc::new(more));
                true
            }
            Some(mine) => match Arc::get_mut(mine) {
                Some(mine) => {
                    mine.merge(more);
                    true
                }
                None => false,
            },
        }
    }
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("capacity", &self.capacity())
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// Bytes leased from a [`MemoryBudget`], returned when the last clone is dropped. [`Lease::none`]
/// holds nothing (a packument already counted elsewhere, such as in a cache).
#[derive(Clone, Default)]
pub struct Lease {
    permit: Option<Arc<OwnedSemaphorePermit>>,
}

impl Lease {
    /// A lease of nothing.
    pub fn none() -> Lease {
        Lease { permit: None }
    }

    /// Bytes this lease holds.
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| u64::from(p.num_permits() as u32) * UNIT)
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lease({} bytes)", self.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn leases_wait_for_bytes_and_return_them_when_dropped() {
        let b = MemoryBudget::new(10 * UNIT);
        let a = b.lease(6 * UNIT).await;
        assert_eq!(a.bytes(), 6 * UNIT);
        assert_eq!(b.in_use(), 6 * UNIT);
        let shared = a.clone();
        // 6 + 6 > 10: the second waits.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.lease(6 * UNIT).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        assert!(b.try_lease(6 * UNIT).is_none());
        drop(a);
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A clone still holds it.
        assert!(!waiter.is_finished());
        drop(shared);
        let second = waiter.await.unwrap();
        assert_eq!(second.bytes(), 6 * UNIT);
        assert_eq!(b.waits(), 1);
        drop(second);
        assert_eq!(b.in_use(), 0);
    }

    #[tokio::test]
    async fn a_lease_larger_than_the_budget_takes_all_of_it() {
        let b = MemoryBudget::new(4 * UNIT);
        let all = b.lease(100 * UNIT).await;
        assert_eq!(all.bytes(), 4 * UNIT);
        assert_eq!(b.oversized(), 1);
        assert!(b.try_lease(1).is_none());
        assert!(
            b.try_lease(5 * UNIT).is_none(),
            "never more than the budget"
        );
        drop(all);
        assert!(b.try_lease(4 * UNIT).is_some());
        let mut grown = b.try_lease(UNIT).unwrap();
        assert!(b.try_grow(&mut grown, 2 * UNIT));
        assert_eq!(grown.bytes(), 3 * UNIT);
        assert!(!b.try_grow(&mut grown, 2 * UNIT), "only one unit is left");
        assert_eq!(grown.bytes(), 3 * UNIT);
        let shared = grown.clone();
        assert!(
            !b.try_grow(&mut grown, UNIT),
            "a shared lease does not grow"
        );
        drop((grown, shared));
        let mut empty = Lease::none();
        assert!(b.try_grow(&mut empty, 4 * UNIT));
        assert_eq!(b.in_use(), 4 * UNIT);
        assert_eq!(Lease::none().bytes(), 0);
    }
}

//! The process's file descriptor limit: raised to the hard limit at start, and the gateway's
//! connection cap fitted under it.
//!
//! Every gateway connection holds a descriptor, and so do the store, the peer-to-peer sockets and
//! the upstream's connections. A cap above what the process may open is no cap: the node would
//! run out of descriptors first and stop accepting anyone, which is exactly the outage a flood
//! of half-open connections aims for. So the cap is lowered to leave room for the rest.

/// Descriptors kept for everything but gateway connections (store files, peers, upstream).
const RESERVE: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, logs the outcome, and returns the soft
/// limit now in force (`None` when it cannot be read).
pub(crate) fn raise_limit() -> Option<u64> {
    let before = rlimit::Resource::NOFILE.get().ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => {
            let hard = before.map_or(now, |(_, hard)| hard);
            tracing::info!(
                soft = now,
                hard,
                was = before.map_or(now, |(soft, _)| soft),
                "file descriptor limit"
            );
            Some(now)
        }
        Err(e) => {
            let soft = before.map(|(soft, _)| soft);
            tracing::warn!(error = %e, ?soft, "could not raise the file descriptor limit");
            soft
        }
    }
}

/// `max_connections` lowered, if need be, to fit a soft descriptor limit of `limit`.
pub(crate) fn connection_cap(max_connections: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return max_connections;
    };
    // A tiny limit still gets half of its descriptors for connections rather than none.
    let budget = limit.saturating_sub(RESERVE).max(limit / 2).max(1);
    max_connections.min(usize::try_from(budget).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_fits_under_the_limit() {
        assert_eq!(connection_cap(4096, Some(1024)), 768);
        assert_eq!(connection_cap(4096, Some(1 << 20)), 4096);
        assert_eq!(connection_cap(4096, Some(300)), 150);
        assert_eq!(connection_cap(4096, None), 4096);
        assert_eq!(connection_cap(10, Some(1024)), 10);
    }
}

//! How far each connected peer is: a smoothed round-trip time per peer, measured by libp2p's
//! ping on every connection.
//!
//! The swarm task records every ping sample; the node reads the table to ask the nearest
//! provider first and to decide when a request that has not started answering is hedged to
//! the next one (`peer::hedge`). The estimate is TCP's smoothed RTT (RFC 6298): the first
//! sample as is, then `srtt = 7/8 · srtt + 1/8 · sample`, so one slow ping (a busy peer, a
//! queue) moves it a little and a change of path moves it within a few pings. A peer is
//! forgotten when its last connection closes: a new connection may take another path.
//!
//! The table also knows which peers mDNS found on the local network ([`Rtts::lan_peers`]):
//! those are asked for a blob before anyone else.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;

/// Peers kept at most (connections are bounded far below this; the bound is a backstop).
const MAX_PEERS: usize = 4096;

/// The smoothed round-trip time of each connected peer; clone freely (one shared table).
#[derive(Debug, Clone, Default)]
pub struct Rtts {
    inner: Arc<Mutex<HashMap<PeerId, Duration>>>,
    lan: Arc<Mutex<HashSet<PeerId>>>,
}

impl Rtts {
    /// Adds a ping sample for `peer`.
    pub fn record(&self, peer: PeerId, sample: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_PEERS && !m.contains_key(&peer) {
            return;
        }
        m.entry(peer)
            .and_modify(|srtt| *srtt = (*srtt * 7 + sample) / 8)
            .or_insert(sample);
    }

    /// Drops what is known about `peer` (its last connection closed).
    pub fn forget(&self, peer: &PeerId) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    /// Notes that mDNS found `peer` on the local network.
    pub fn on_lan(&self, peer: PeerId) {
        let mut lan = self.lan.lock().unwrap_or_else(|e| e.into_inner());
        if lan.len() < MAX_PEERS {
            lan.insert(peer);
        }
    }

    /// Notes that mDNS no longer sees `peer` on the local network.
    pub fn off_lan(&self, peer: &PeerId) {
        self.lan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }

    /// The peers mDNS found on the local network (and still sees), nearest first.
    pub fn lan_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .lan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        self.nearest_first(&mut v);
        v
    }

    /// The smoothed round-trip time to `peer`, if it was measured.
    pub fn get(&self, peer: &PeerId) -> Option<Duration> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(peer)
            .copied()
    }

    /// Orders `peers` nearest first. Peers not measured yet keep their relative order and go
    /// after every measured one: a peer known to be near beats one of unknown distance.
    pub fn nearest_first(&self, peers: &mut [PeerId]) {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        peers.sort_by_key(|p| m.get(p).map_or((1, Duration::ZERO), |d| (0, *d)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_estimate_is_smoothed_and_forgotten_with_the_peer() {
        let r = Rtts::default();
        let p = PeerId::random();
        assert_eq!(r.get(&p), None);
        r.record(p, ms(80));
        assert_eq!(r.get(&p), Some(ms(80)));
        // One slow sample moves it by an eighth of the difference.
        r.record(p, ms(160));
        assert_eq!(r.get(&p), Some(ms(90)));
        r.on_lan(p);
        assert_eq!(r.lan_peers(), vec![p]);
        r.forget(&p);
        assert_eq!(r.get(&p), None);
        // Disconnected, it is still on the LAN until mDNS stops seeing it.
        assert_eq!(r.lan_peers(), vec![p]);
        r.off_lan(&p);
        assert!(r.lan_peers().is_empty());
    }

    #[test]
    fn nearest_first_puts_unmeasured_peers_last_in_their_order() {
        let r = Rtts::default();
        let (far, near, unknown_a, unknown_b) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        r.record(far, ms(120));
        r.record(near, ms(8));
        let mut peers = vec![unknown_a, far, unknown_b, near];
        r.nearest_first(&mut peers);
        assert_eq!(peers, vec![near, far, unknown_a, unknown_b]);
    }
}

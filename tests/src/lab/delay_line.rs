//! The delay line: a user-space forwarder on a TUN device in the router namespace.
//!
//! The router's policy routing sends every packet that arrives from a host-facing veth into the
//! TUN device `dl0`; the kernel hands it to this forwarder instead of a wire. A reader thread
//! takes each packet off the device, reads the IPv4 source and destination to find the region
//! pair, draws the pair's loss, and hands the packet with its release time (arrival + the
//! pair's one-way delay) to a writer thread. The writer keeps the held packets in a binary heap
//! keyed by release time (ties broken by arrival order, so a pair's packets stay in order),
//! sleeps until the earliest is due and writes it back into the same TUN device. The kernel
//! then routes it as a packet received on `dl0`, through the main table, out of the veth of the
//! destination host. This is the technique of Mahimahi's delay shells (Netravali et al.,
//! USENIX ATC 2015), with the per-pair delay read from the addresses instead of one delay per
//! shell.
//!
//! Packets whose source or destination is not a laboratory region address (10.R.x.y) pass at
//! once, undelayed and never dropped: they are what the kernel should answer with an ICMP
//! error (a host dialling a laptop's private address). Anything that is not IPv4 is dropped
//! (the namespaces have IPv6 turned off).
//!
//! The reader polls the device with a 50 ms timeout so that stopping the line ends both
//! threads within that time; the writer's sleep is an `mpsc::Receiver::recv_timeout`, which
//! wakes within tens of microseconds of the release time on Linux.

use std::{
    cmp::Ordering as CmpOrdering,
    collections::BinaryHeap,
    io::{ErrorKind, Write},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::regions::Region;

/// How often the threads look at the stop flag when idle.
const POLL: Duration = Duration::from_millis(50);

/// What the delay line does per region pair, indexed by [`Region::index`] − 1 (source, then
/// destination).
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) one_way: [[Duration; 4]; 4],
    pub(crate) loss: [[f64; 4]; 4],
    pub(crate) seed: u64,
}

/// Counters of what the delay line did with the packets it read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayLineStats {
    /// Packets held for their pair's delay and written back.
    pub delayed: u64,
    /// Packets dropped by the pair's loss rate.
    pub lost: u64,
    /// Packets passed at once because an address is not a region's (see the module docs).
    pub undelayed: u64,
    /// Packets that are not IPv4, dropped.
    pub ignored: u64,
    /// Reads or writes of the TUN device that failed.
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    delayed: AtomicU64,
    lost: AtomicU64,
    undelayed: AtomicU64,
    ignored: AtomicU64,
    errors: AtomicU64,
}

/// The running forwarder; [`DelayLine::stop`] (or dropping it) ends its threads.
#[derive(Debug)]
pub(crate) struct DelayLine {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
}

/// A packet waiting for its release time.
#[derive(Debug)]
struct Held {
    release: Instant,
    seq: u64,
    packet: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    /// Reversed, so that [`BinaryHeap`] (a max-heap) pops the earliest release first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.release, other.seq).cmp(&(self.release, self.seq))
    }
}

/// SplitMix64: a small seeded generator, so that a lossy run drops the same packets each time
/// the same packets cross.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Opens the TUN device `name` in the calling thread's network namespace (the device belongs
/// to the namespace it is created in). It is left down and without an address: the caller
/// brings it up and routes into it.
pub(crate) fn open_tun(name: &str) -> Result<tun::Device> {
    let mut config = tun::Configuration::default();
    config.tun_name(name).platform_config(|p| {
        // Do not configure addresses or bring it up from here; `ip` does that.
        p.ensure_root_privileges(false);
    });
    tun::create(&config).with_context(|| {
        format!("creating the TUN device {name} (/dev/net/tun) for the delay line")
    })
}

impl DelayLine {
    /// Starts forwarding on `device` (opened by [`open_tun`] in the router namespace).
    pub(crate) fn start(device: tun::Device, plan: Plan) -> Result<DelayLine> {
        let (reader, writer) = device.split();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel::<Held>();
        let read_thread = {
            let stop = stop.clone();
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("lab-delay-read".into())
                .spawn(move || read_loop(reader, tx, &plan, &stop, &counters))
                .context("spawning the delay line's reader")?
        };
        let write_thread = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("lab-delay-write".into())
                .spawn(move || write_loop(writer, rx, &counters))
                .context("spawning the delay line's writer")?
        };
        Ok(DelayLine {
            stop,
            counters,
            threads: vec![read_thread, write_thread],
        })
    }

    /// What it has done so far.
    pub(crate) fn stats(&self) -> DelayLineStats {
        let c = &self.counters;
        DelayLineStats {
            delayed: c.delayed.load(Ordering::Relaxed),
            lost: c.lost.load(Ordering::Relaxed),
            undelayed: c.undelayed.load(Ordering::Relaxed),
            ignored: c.ignored.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }

    /// Stops both threads (within [`POLL`]) and closes the device; packets still held are
    /// dropped.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_loop(
    reader: tun::Reader,
    tx: mpsc::Sender<Held>,
    plan: &Plan,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let mut rng = SplitMix64(plan.seed);
    let mut buf = vec![0u8; 65_536];
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = match reader.recv_timeout(&mut buf, POLL) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => continue,
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                // The device is gone (the namespace is being torn down): nothing more to read.
                break;
            }
        };
        let arrived = Instant::now();
        let packet = &buf[..n];
        if n < 20 || packet[0] >> 4 != 4 {
            counters.ignored.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let src = [packet[12], packet[13], packet[14], packet[15]].into();
        let dst = [packet[16], packet[17], packet[18], packet[19]].into();
        let delay = match (Region::of_addr(src), Region::of_addr(dst)) {
            (Some(a), Some(b)) => {
                let (i, j) = (usize::from(a.index() - 1), usize::from(b.index() - 1));
                let loss = plan.loss[i][j];
                if loss > 0.0 && rng.next_f64() < loss {
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                counters.delayed.fetch_add(1, Ordering::Relaxed);
                plan.one_way[i][j]
            }
            _ => {
                counters.undelayed.fetch_add(1, Ordering::Relaxed);
                Duration::ZERO
            }
        };
        seq += 1;
        let held = Held {
            release: arrived + delay,
            seq,
            packet: packet.to_vec(),
        };
        if tx.send(held).is_err() {
            break;
        }
    }
}

fn write_loop(mut writer: tun::Writer, rx: mpsc::Receiver<Held>, counters: &Counters) {
    let mut heap = BinaryHeap::<Held>::new();
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|h| h.release <= now) {
            let Some(h) = heap.pop() else { break };
            if writer.write(&h.packet).is_err() {
                counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let wait = heap
            .peek()
            .map_or(POLL, |h| h.release.saturating_duration_since(now).min(POLL));
        match rx.recv_timeout(wait) {
            Ok(h) => {
                heap.push(h);
                // Take whatever else is already queued without sleeping.
                while let Ok(h) = rx.try_recv() {
                    heap.push(h);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_releases_earliest_first_and_keeps_arrival_order_on_ties() {
        let t = Instant::now();
        let mut heap = BinaryHeap::new();
        for (ms, seq) in [(30, 1), (10, 2), (10, 3), (20, 4)] {
            heap.push(Held {
                release: t + Duration::from_millis(ms),
                seq,
                packet: vec![],
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|h| h.seq)).collect();
        assert_eq!(order, [2, 3, 4, 1]);
    }

    #[test]
    fn the_generator_is_seeded_and_uniform_enough() {
        let draws = |seed| {
            let mut g = SplitMix64(seed);
            (0..10_000).map(|_| g.next_f64()).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let d = draws(7);
        assert!(d.iter().all(|x| (0.0..1.0).contains(x)));
        let below = d.iter().filter(|&&x| x < 0.25).count();
        assert!(
            (2_200..2_800).contains(&below),
            "{below} of 10000 below 0.25"
        );
    }
}

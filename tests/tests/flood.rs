//! R16 in docs/security.md, connection and stream flood: one peer opens thousands of connections,
//! then thousands of blob streams, to a node on loopback.
//!
//! The node is the real `open-registry` process; the attacker is a libp2p peer of our network
//! in this process (the node's own network layer with every limit of its own lifted), so it
//! dials and opens streams as fast as the node lets it. Throughout, a sampler reads the node's
//! RSS (`/proc/<pid>/status`) and how many connections it holds from the attacker, and a
//! client times gateway requests (`/-/ping`, a cached packument).
//!
//! Pass criteria: the limits hold (at most `max_connections_per_peer` connections from the
//! attacker at any time; at most `max_inbound_transfers` blob streams served at once, the rest
//! reset), memory stays under a cap, the gateway keeps answering every request with latency
//! within a generous factor of the quiet baseline, and afterwards an honest peer still gets
//! the blob.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, ensure};
use open_registry_node::{
    Identity,
    net::{self, Client, Multiaddr, NoBlobs, PeerId, RejectAll, Transfer},
};
use open_registry_protocol::BlobId;
use open_registry_tests::{FakeUpstream, PackageSpec, http, p2p::P2pNode};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// `net::Limits::default()` as the node runs with it.
const MAX_CONNECTIONS_PER_PEER: usize = 4;
const MAX_INBOUND_TRANSFERS: usize = 32;
/// Connections the attacker opens.
const DIALS: usize = 2000;
/// Dials in flight at once.
const DIAL_WAVE: usize = 100;
/// Blob streams the attacker opens at once.
const STREAMS: usize = 3000;
/// The node's stall deadline: a stream the attacker stops reading is cut after it.
const STALL: Duration = Duration::from_secs(3);
/// How much the node's memory may grow under the floods.
const RSS_GROWTH_CAP_KIB: u64 = 128 * 1024;

/// Logs with the time since this test binary's first line, so slow phases show in CI logs.
fn say(line: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed();
    eprintln!("[r16 +{:.1}s] {line}", t.as_secs_f64());
}

/// Held by each test here for its whole run: the flood saturates the machine's cores, and the
/// other test's timings must not depend on it.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The node's resident set size, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// How many connections `node` holds from `peer`, and in total.
fn connections(node: &P2pNode, peer: &PeerId) -> Result<(usize, usize)> {
    let v = open_registry_tests::p2p::peers(node)?;
    let all = v["connected"]
        .as_array()
        .ok_or_else(|| anyhow!("no connected list: {v}"))?;
    let count = |e: &serde_json::Value| e["addrs"].as_array().map_or(0, Vec::len);
    let from = all
        .iter()
        .filter(|e| e["peer_id"] == peer.to_string().as_str())
        .map(count)
        .sum();
    Ok((from, all.iter().map(count).sum()))
}

/// What the sampler saw while it ran.
#[derive(Debug, Default)]
struct Watch {
    max_rss_kib: u64,
    max_from_attacker: usize,
    max_total: usize,
    samples: usize,
}

/// Samples RSS and connection counts every 50 ms until `stop`.
fn watch(node: &P2pNode, pid: u32, attacker: PeerId, stop: &AtomicBool) -> Result<Watch> {
    let mut w = Watch::default();
    while !stop.load(Ordering::SeqCst) {
        w.max_rss_kib = w.max_rss_kib.max(rss_kib(pid)?);
        let (from, total) = connections(node, &attacker)?;
        w.max_from_attacker = w.max_from_attacker.max(from);
        w.max_total = w.max_total.max(total);
        w.samples += 1;
        thread::sleep(Duration::from_millis(50));
    }
    Ok(w)
}

/// Gateway latencies, sorted.
#[derive(Debug)]
struct Latency(Vec<Duration>);

impl Latency {
    fn pct(&self, p: usize) -> Duration {
        self.0[(self.0.len() - 1) * p / 100]
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms over {}",
            self.pct(50).as_secs_f64() * 1e3,
            self.pct(99).as_secs_f64() * 1e3,
            self.0.len()
        )
    }
}

/// Times `/-/ping` and `packument` alternately until `stop` (and at least `min` requests);
/// every answer must be a 200.
fn time_gateway(base: &str, packument: &str, stop: &AtomicBool, min: usize) -> Result<Latency> {
    let mut out = Vec::new();
    while out.len() < min || !stop.load(Ordering::SeqCst) {
        let path = if out.len() % 2 == 0 {
            "/-/ping"
        } else {
            packument
        };
        let start = Instant::now();
        let r = http::get(&format!("{base}{path}"), Duration::from_secs(10))?;
        out.push(start.elapsed());
        ensure!(
            r.status == 200,
            "{path} under the flood: {} {}",
            r.status,
            r.text()
        );
    }
    out.sort();
    Ok(Latency(out))
}

/// A peer of our network on its own runtime; an attacker has every limit of its own lifted.
struct Peer {
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    cancel: CancellationToken,
}

impl Peer {
    fn start(seed: u8, attacker: bool) -> Result<Peer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("attacker")
            .enable_all()
            .build()?;
        let mut config = net::Config::loopback();
        if attacker {
            let l = &mut config.limits;
            l.max_connections = 1 << 20;
            l.max_connections_per_peer = 1 << 20;
            l.max_pending_connections = 1 << 20;
            l.max_outbound_transfers = 1 << 20;
            l.max_pending_queries = 1 << 20;
            l.stall_timeout = Duration::from_secs(300);
        }
        let cancel = CancellationToken::new();
        let (client, _) = rt
            .block_on(net::spawn(
                config,
                &Identity::from_seed([seed; 32]),
                Arc::new(NoBlobs),
                Arc::new(RejectAll),
                TaskTracker::new(),
                cancel.clone(),
            ))
            .map_err(|e| anyhow!("starting a peer: {e}"))?;
        Ok(Peer {
            rt: Some(rt),
            client,
            cancel,
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the peer")
    }

    /// Dials `addr` (`…/p2p/ID`).
    fn dial(&self, addr: &str) -> Result<()> {
        self.rt()
            .block_on(self.client.dial(addr.parse()?, Duration::from_secs(10)))
            .map(drop)
            .map_err(|e| anyhow!("dialing {addr}: {e}"))
    }

    /// Fetches the whole blob `id` from `peer`.
    fn fetch_all(&self, peer: PeerId, id: &BlobId) -> Result<Vec<u8>, net::NetError> {
        self.rt().block_on(async {
            self.client
                .fetch(peer, id, 1 << 30, Duration::from_secs(20))
                .await?
                .read_all()
                .await
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.cancel.cancel();
        // Bounded: a runtime dropped outright waits for its blocking tasks without limit.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// R16: 2000 connections, then 3000 blob streams, from one peer.
#[test]
fn r16_a_flood_of_connections_and_streams_from_one_peer_is_contained() -> Result<()> {
    let _serial = one_at_a_time();
    let up = FakeUpstream::start()?;
    let stall = format!("{}s", STALL.as_secs());
    let node = P2pNode::start(&["--upstream", up.url(), "--peer-stall-timeout", &stall])?;
    let pid = node.pid().context("the node's pid")?;
    let p = up.publish(&PackageSpec::new("or-r16", "1.0.0").big_file(2 << 20))?;
    for path in [&p.packument_path, &p.tarball_path] {
        let r = node.get(path, &[])?;
        ensure!(r.status == 200, "{path}: {} {}", r.status, r.text());
    }
    let file = p.tarball_path.rsplit('/').next().unwrap_or_default();
    let id = BlobId::of(&up.tarball(&p.name, file).context("the tarball")?);
    let target: PeerId = node.id.parse().map_err(|e| anyhow!("{e}"))?;
    // Without `/p2p/…` a dial carries no peer condition: every one opens a new connection.
    let tcp: Multiaddr = node
        .addr
        .rsplit_once("/p2p/")
        .map(|(a, _)| a)
        .unwrap_or(&node.addr)
        .parse()?;

    let quiet = time_gateway(
        &node.gateway,
        &p.packument_path,
        &AtomicBool::new(true),
        300,
    )?;
    let rss_quiet = rss_kib(pid)?;
    say(&format!(
        "quiet: gateway {quiet}; RSS {} MiB",
        rss_quiet / 1024
    ));

    let attacker = Peer::start(160, true)?;
    say("flooding");
    let me = attacker.client.local_peer_id();
    let stop = AtomicBool::new(false);
    let outcome = Mutex::new(None);
    let (watched, busy) = thread::scope(|s| -> Result<(Watch, Latency)> {
        let watcher = s.spawn(|| watch(&node, pid, me, &stop));
        let timer = s.spawn(|| time_gateway(&node.gateway, &p.packument_path, &stop, 100));
        let run = || -> Result<()> {
            // Phase 1: connections, a wave at a time.
            let start = Instant::now();
            let mut ok = 0;
            for _ in 0..DIALS / DIAL_WAVE {
                let dials = (0..DIAL_WAVE).map(|_| {
                    let c = attacker.client.clone();
                    let a = tcp.clone();
                    async move { c.dial(a, Duration::from_secs(10)).await }
                });
                let r = attacker.rt().block_on(futures::future::join_all(dials));
                ok += r.iter().filter(|r| r.is_ok()).count();
            }
            let dial_time = start.elapsed();

            // Phase 2: streams, all at once, none read: each served one holds a slot until
            // the node's stall deadline cuts it.
            let start = Instant::now();
            let fetches = (0..STREAMS).map(|_| {
                let c = attacker.client.clone();
                async move {
                    let r = c.fetch(target, &id, 1 << 30, Duration::from_secs(30)).await;
                    (r, Instant::now())
                }
            });
            let results: Vec<(Result<Transfer, net::NetError>, Instant)> =
                attacker.rt().block_on(futures::future::join_all(fetches));
            let early = start + STALL - Duration::from_millis(500);
            let served_early = results
                .iter()
                .filter(|(r, at)| r.is_ok() && *at < early)
                .count();
            let served = results.iter().filter(|(r, _)| r.is_ok()).count();
            // Hold what was served past the stall deadline, then let go.
            thread::sleep(STALL.saturating_sub(start.elapsed()) + Duration::from_millis(500));
            drop(results);
            *outcome.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((ok, dial_time, served_early, served, start.elapsed()));
            Ok(())
        };
        let r = run();
        stop.store(true, Ordering::SeqCst);
        let watched = watcher
            .join()
            .map_err(|_| anyhow!("the watcher panicked"))??;
        let busy = timer.join().map_err(|_| anyhow!("the timer panicked"))??;
        r?;
        Ok((watched, busy))
    })?;
    let (dialed, dial_time, served_early, served, stream_time) = outcome
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .context("no outcome")?;
    say(&format!(
        "{DIALS} dials in {dial_time:.1?} ({dialed} handshakes completed); the node held at most \
         {} connections from the attacker, {} in all ({} samples)",
        watched.max_from_attacker, watched.max_total, watched.samples
    ));
    say(&format!(
        "{STREAMS} blob streams in {stream_time:.1?}: {served_early} served before the first stall \
         deadline, {served} in all"
    ));
    say(&format!(
        "flooded: gateway {busy}; RSS at most {} MiB (quiet {} MiB)",
        watched.max_rss_kib / 1024,
        rss_quiet / 1024
    ));

    ensure!(
        watched.max_from_attacker <= MAX_CONNECTIONS_PER_PEER,
        "the node held {} connections from one peer (limit {MAX_CONNECTIONS_PER_PEER})",
        watched.max_from_attacker
    );
    ensure!(watched.samples >= 10, "the sampler barely ran");
    ensure!(
        served_early <= MAX_INBOUND_TRANSFERS,
        "{served_early} blob streams served at once (limit {MAX_INBOUND_TRANSFERS})"
    );
    ensure!(
        served_early > 0,
        "no stream was served at all: the flood did not reach the server"
    );
    ensure!(
        watched.max_rss_kib <= rss_quiet + RSS_GROWTH_CAP_KIB,
        "RSS grew from {} to {} MiB",
        rss_quiet / 1024,
        watched.max_rss_kib / 1024
    );
    // Generous: the attacker shares the machine's cores with the node.
    let p50_cap = quiet.pct(50) * 10 + Duration::from_millis(20);
    let p99_cap = (quiet.pct(99) * 10).max(Duration::from_millis(500));
    ensure!(
        busy.pct(50) <= p50_cap && busy.pct(99) <= p99_cap,
        "gateway latency under the flood: {busy} (quiet: {quiet}; caps p50 {p50_cap:?}, p99 {p99_cap:?})"
    );

    // Afterwards: the attacker gone, an honest peer still gets the blob.
    drop(attacker);
    let honest = Peer::start(161, false)?;
    honest.dial(&node.addr)?;
    let got = honest
        .fetch_all(target, &id)
        .map_err(|e| anyhow!("fetching after the flood: {e}"))?;
    ensure!(BlobId::of(&got) == id, "the blob after the flood differs");
    Ok(())
}

/// R16, fairness: while one peer holds blob streams open without reading them, another peer
/// asking the same node for a blob is still served. The blob server's concurrency limit
/// (`max_inbound_transfers`) is global, so one peer that opens that many streams takes every
/// slot until the stall deadline cuts them, and can keep doing so by asking again.
#[test]
fn r16_one_peer_holding_streams_open_does_not_lock_other_peers_out() -> Result<()> {
    let _serial = one_at_a_time();
    const HOGGED: usize = MAX_INBOUND_TRANSFERS + 16;
    let up = FakeUpstream::start()?;
    let stall = format!("{}s", STALL.as_secs());
    let node = P2pNode::start(&["--upstream", up.url(), "--peer-stall-timeout", &stall])?;
    let p = up.publish(&PackageSpec::new("or-r16-fair", "1.0.0").big_file(2 << 20))?;
    ensure!(node.get(&p.tarball_path, &[])?.status == 200);
    let file = p.tarball_path.rsplit('/').next().unwrap_or_default();
    let id = BlobId::of(&up.tarball(&p.name, file).context("the tarball")?);
    let target: PeerId = node.id.parse().map_err(|e| anyhow!("{e}"))?;

    let hog = Peer::start(170, true)?;
    hog.dial(&node.addr)?;
    let started = Instant::now();
    let streams = (0..HOGGED).map(|_| {
        let c = hog.client.clone();
        async move { c.fetch(target, &id, 1 << 30, Duration::from_secs(20)).await }
    });
    let held: Vec<Transfer> = hog
        .rt()
        .block_on(futures::future::join_all(streams))
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    ensure!(!held.is_empty(), "the hog got no stream served");

    let honest = Peer::start(171, false)?;
    honest.dial(&node.addr)?;
    let r = honest.fetch_all(target, &id);
    let during = started.elapsed();
    ensure!(
        during < STALL,
        "too slow to tell: {during:?} passed, past the stall deadline"
    );
    match r {
        Ok(b) => ensure!(BlobId::of(&b) == id, "other bytes"),
        Err(e) => anyhow::bail!(
            "an honest peer was refused ({e}) while one other peer held {} of the node's \
             {MAX_INBOUND_TRANSFERS} blob slots with streams it does not read",
            held.len()
        ),
    }
    say(&format!(
        "a peer holding {} unread streams; another peer was still served",
        held.len()
    ));
    drop(held);
    Ok(())
}

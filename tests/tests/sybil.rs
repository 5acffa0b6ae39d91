//! R15 in docs/security.md, sybil providers: many peers announce blobs they do not have.
//!
//! The sybils are libp2p peers of our network in this process (the node's own network layer,
//! `open_registry_node::net`), dozens on one runtime, in Kademlia client mode so that every
//! announcement lands on the node processes under test, the only DHT servers; each declares
//! its address, so the records it announces are handed out to whoever asks. Each serves
//! nothing: it answers "not found" at once, or never answers at all (its request hangs until
//! the asker's stall deadline).
//!
//! Pass criteria: the provider store stays bounded per blob (`max_providers_per_key`, the
//! peers closest to the key winning); and a fetch through a node's peer path succeeds from the
//! honest provider within a deadline when that provider is among the ones the node tries
//! (`p2p::MAX_PROVIDERS` = 8 of the providers found, shuffled). Beyond that, sybils can crowd
//! the honest provider out of those 8: the test then requires a fast, clear failure (a JSON
//! 5xx, never wrong bytes) and reports how often the honest provider was reached.

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, ensure};
use futures::future::BoxFuture;
use open_registry_node::{
    Identity,
    net::{self, Blob, BlobSource, Client, Multiaddr, PeerId, RejectAll},
};
use open_registry_protocol::{BlobId, Integrity, PackageName, pointer};
use open_registry_tests::{
    FakeUpstream, PackageSpec, Published, http::Response, p2p::P2pNode, probe, tools,
};
use sha2::{Digest as _, Sha256};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// `net::Limits::default().max_providers_per_key`: the bound under test.
const MAX_PROVIDERS_PER_KEY: usize = 20;
/// How many providers a fetch tries (`p2p::MAX_PROVIDERS`, private to the node).
const TRIED: usize = 8;
/// The node's stall deadline for peers in these tests.
const STALL: Duration = Duration::from_secs(1);
/// How long a node may take to see its bootstrap peer.
const JOIN: Duration = Duration::from_secs(15);

/// Logs with the time since this test binary's first line, so slow phases show in CI logs.
fn say(line: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed();
    eprintln!("[r15 +{:.1}s] {line}", t.as_secs_f64());
}

// ---- the sybils --------------------------------------------------------------------------

/// A request for any blob hangs: the asker waits out its stall deadline.
struct Stall;

impl BlobSource for Stall {
    fn open<'a>(&'a self, _: &'a BlobId, _: u64) -> BoxFuture<'a, io::Result<Option<Blob>>> {
        Box::pin(futures::future::pending())
    }
}

/// Peers of our network in this process, all on one runtime; dropped together.
struct Peers {
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
    peers: Vec<(Client, CancellationToken)>,
}

impl Peers {
    fn new() -> Result<Peers> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sybils")
            .enable_all()
            .build()
            .context("building the sybils' runtime")?;
        Ok(Peers {
            rt: Some(rt),
            peers: Vec::new(),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the peers")
    }

    /// Starts a Kademlia-client peer with the key made from `(tag, n)`, dialing `bootstrap`.
    /// It declares its listen address as external, as a sybil on the internet would, so the
    /// provider records it announces carry an address and the DHT hands them out.
    fn start(
        &mut self,
        tag: u8,
        n: u16,
        bootstrap: &str,
        blobs: Arc<dyn BlobSource>,
    ) -> Result<Client> {
        let mut seed = [tag; 32];
        seed[..2].copy_from_slice(&n.to_be_bytes());
        let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", tools::free_port()?).parse()?;
        let mut config = net::Config::loopback();
        config.listen = vec![listen.clone()];
        config.external = vec![listen];
        config.bootstrap = vec![bootstrap.parse::<Multiaddr>()?];
        config.kad_server = Some(false);
        // Its own deadlines are long: what cuts a stalled request off is the asker's.
        config.limits.stall_timeout = Duration::from_secs(300);
        config.limits.request_timeout = Duration::from_secs(600);
        let cancel = CancellationToken::new();
        let (client, _) = self
            .rt()
            .block_on(net::spawn(
                config,
                &Identity::from_seed(seed),
                blobs,
                Arc::new(RejectAll),
                TaskTracker::new(),
                cancel.clone(),
            ))
            .map_err(|e| anyhow!("starting peer {tag}/{n}: {e}"))?;
        self.peers.push((client.clone(), cancel));
        Ok(client)
    }

    /// `n` sybils announcing every id in `ids`; `stalling` of them hang, the rest say "not
    /// found". Returns their peer ids.
    fn sybils(
        &mut self,
        tag: u8,
        n: u16,
        stalling: u16,
        bootstrap: &str,
        ids: &[BlobId],
    ) -> Result<Vec<PeerId>> {
        let mut out = Vec::new();
        for i in 0..n {
            let blobs: Arc<dyn BlobSource> = if i < stalling {
                Arc::new(Stall)
            } else {
                Arc::new(net::NoBlobs)
            };
            let c = self.start(tag, i, bootstrap, blobs)?;
            for id in ids {
                self.rt()
                    .block_on(c.provide(id))
                    .map_err(|e| anyhow!("provide: {e}"))?;
            }
            out.push(c.local_peer_id());
        }
        Ok(out)
    }

    /// The providers of `id` that the DHT names to `client` within a few seconds.
    fn providers(&self, client: &Client, id: &BlobId) -> Result<Vec<PeerId>> {
        self.rt()
            .block_on(client.find_providers(id, 1000, Duration::from_secs(3)))
            .map_err(|e| anyhow!("find_providers: {e}"))
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for (_, c) in &self.peers {
            c.cancel();
        }
        // Bounded: a runtime dropped outright waits for its blocking tasks without limit.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Kademlia's distance between a peer and a blob's key (SHA-256 of each, XORed), big-endian.
fn distance(peer: &PeerId, id: &BlobId) -> [u8; 32] {
    let p = Sha256::digest(peer.to_bytes());
    let k = Sha256::digest(id.to_bytes());
    std::array::from_fn(|i| p[i] ^ k[i])
}

// ---- honest nodes ------------------------------------------------------------------------

/// An honest node A mirroring `names` from a fake upstream, and a node B that trusts A, has
/// no upstream, and gives up on a silent peer after [`STALL`].
struct Network {
    /// Kept alive: A mirrors from it.
    _up: FakeUpstream,
    a: P2pNode,
    b: P2pNode,
    published: Vec<Published>,
}

impl Network {
    fn start(names: &[&str]) -> Result<Network> {
        let up = FakeUpstream::start()?;
        let a = P2pNode::start(&["--upstream", up.url()])?;
        let mut published = Vec::new();
        for name in names {
            let p = up.publish(&PackageSpec::new(name, "1.0.0").big_file(200 << 10))?;
            for path in [&p.packument_path, &p.tarball_path] {
                let r = a.get(path, &[])?;
                ensure!(r.status == 200, "A: {path}: {} {}", r.status, r.text());
            }
            published.push(p);
        }
        let stall = format!("{}ms", STALL.as_millis());
        let b = P2pNode::start(&[
            "--no-upstream",
            "--bootstrap",
            &a.addr,
            "--trust",
            &a.id,
            "--peer-stall-timeout",
            &stall,
            "--peer-timeout",
            "30s",
        ])?;
        b.wait_routing_table(1, JOIN)?;
        Ok(Network {
            _up: up,
            a,
            b,
            published,
        })
    }

    fn a_peer(&self) -> Result<PeerId> {
        self.a.id.parse().map_err(|e| anyhow!("A's id: {e}"))
    }
}

/// GET through B, timed.
/// The key a node announces for the package `p` (one provider record per package).
fn package_key(p: &Published) -> Result<BlobId> {
    let name = PackageName::parse(&p.name).map_err(|e| anyhow!("{}: {e}", p.name))?;
    Ok(pointer::provider_key(&name))
}

fn timed_get(b: &P2pNode, path: &str) -> Result<(Response, Duration)> {
    let start = Instant::now();
    let r = b.get(path, &[])?;
    Ok((r, start.elapsed()))
}

// ---- tests -------------------------------------------------------------------------------

/// 40 sybils announce one blob to a node: the node keeps at most `max_providers_per_key`
/// provider records for it, exactly the ones whose ids are closest to the blob's key, so a
/// flood of announcements neither grows the store nor, without grinding ids, decides who is
/// kept.
#[test]
fn r15_sybil_announcements_cannot_grow_the_provider_store_past_its_bound() -> Result<()> {
    const SYBILS: u16 = 40;
    let b = P2pNode::start(&["--no-upstream"])?;
    let id = BlobId::of(b"r15: a blob nobody has");
    let mut peers = Peers::new()?;
    let mut sybils = peers.sybils(15, SYBILS, 0, &b.addr, &[id])?;
    sybils.sort_by_key(|p| distance(p, &id));
    let closest = &sybils[..MAX_PROVIDERS_PER_KEY];
    let probe = peers.start(16, 0, &b.addr, Arc::new(net::NoBlobs))?;

    // The only DHT server is B, so the probe sees exactly what B stores.
    let start = Instant::now();
    let mut polls = 0;
    loop {
        let mut found = peers.providers(&probe, &id)?;
        polls += 1;
        ensure!(
            found.len() <= MAX_PROVIDERS_PER_KEY,
            "B names {} providers for one blob (bound {MAX_PROVIDERS_PER_KEY})",
            found.len()
        );
        found.sort_by_key(|p| distance(p, &id));
        if found == closest {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "after 30 s B names {} providers, not the {MAX_PROVIDERS_PER_KEY} closest of {SYBILS}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = open_registry_tests::p2p::peers(&b)?;
    ensure!(
        v["provider_keys_stored"] == 1,
        "B stores providers for other keys: {v}"
    );
    ensure!(b.get("/-/ping", &[])?.status == 200);
    say(&format!(
        "{SYBILS} sybils announced one blob: B keeps {MAX_PROVIDERS_PER_KEY}, the closest to the key \
         ({polls} polls, {:.1}s)",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Seven sybils (four that hang, three that say "not found") and the honest node announce the
/// same packages: with eight providers, all of them are tried, so B, which has no upstream,
/// always gets each tarball from A, verified, within four stall deadlines and some slack.
#[test]
fn r15_with_sybils_among_the_providers_tried_the_honest_one_delivers_in_time() -> Result<()> {
    const SYBILS: u16 = (TRIED - 1) as u16;
    const STALLING: u16 = 4;
    let names = ["or-r15-a", "or-r15-b", "or-r15-c"];
    let net = Network::start(&names)?;
    // Nodes announce packages, not tarballs: the sybils announce the same package keys.
    let ids = net
        .published
        .iter()
        .map(package_key)
        .collect::<Result<Vec<_>>>()?;
    let mut peers = Peers::new()?;
    let sybils = peers.sybils(25, SYBILS, STALLING, &net.b.addr, &ids)?;
    let probe = peers.start(26, 0, &net.b.addr, Arc::new(net::NoBlobs))?;
    let honest = net.a_peer()?;
    for id in &ids {
        probe::wait_for(JOIN, "B to store every announcement", || {
            let found = peers.providers(&probe, id).ok()?;
            (found.contains(&honest) && sybils.iter().all(|s| found.contains(s))).then_some(())
        })?;
    }

    let bound = STALL * u32::from(STALLING) + Duration::from_secs(10);
    for p in &net.published {
        let (r, took) = timed_get(&net.b, &p.packument_path)?;
        ensure!(r.status == 200, "{}: {} {}", p.name, r.status, r.text());
        let (r, took_tgz) = timed_get(&net.b, &p.tarball_path)?;
        ensure!(
            r.status == 200,
            "{} through B with {SYBILS} sybils: {} {}",
            p.tarball_path,
            r.status,
            r.text()
        );
        ensure!(Integrity::sha512_sri(&r.body) == p.integrity);
        ensure!(
            took_tgz < bound,
            "the tarball took {took_tgz:?} (bound {bound:?})"
        );
        say(&format!(
            "{}: packument in {took:?}, tarball in {took_tgz:?} (bound {bound:?})",
            p.name
        ));
    }
    let s = net.b.status()?;
    let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    say(&format!(
        "{SYBILS} sybils ({STALLING} hanging): {} tarballs from the honest node; B asked peers \
         {} times, {} failed",
        names.len(),
        c("peer_requests"),
        c("peer_errors")
    ));
    Ok(())
}

/// Forty sybils that say "not found" announce the same packages as the honest node. B keeps
/// only the 20 providers closest to each package key, so the honest node is often crowded out of B's
/// provider store; B still asks the operators it trusts first, listed or not, so every
/// tarball is delivered, within the bound, with the right bytes.
#[test]
fn r15_sybils_crowding_out_the_honest_provider_cannot_stop_a_trusted_fetch() -> Result<()> {
    const SYBILS: u16 = 40;
    let names = ["or-r15-w", "or-r15-x", "or-r15-y", "or-r15-z"];
    let net = Network::start(&names)?;
    // Nodes announce packages, not tarballs: the sybils announce the same package keys.
    let ids = net
        .published
        .iter()
        .map(package_key)
        .collect::<Result<Vec<_>>>()?;
    let mut peers = Peers::new()?;
    let sybils = peers.sybils(35, SYBILS, 0, &net.b.addr, &ids)?;
    let probe = peers.start(36, 0, &net.b.addr, Arc::new(net::NoBlobs))?;
    let honest = net.a_peer()?;
    let mut kept = 0;
    for id in &ids {
        // B's store is full once it holds the 20 closest of the 41 providers.
        let mut all: Vec<PeerId> = sybils.iter().copied().chain([honest]).collect();
        all.sort_by_key(|p| distance(p, id));
        let closest = &all[..MAX_PROVIDERS_PER_KEY];
        // The probe asks B and A, whose own record A adds to what it stores: at most one more.
        probe::wait_for(JOIN, "B to store the closest providers", || {
            let found = peers.providers(&probe, id).ok()?;
            let settled = closest
                .iter()
                .filter(|p| **p != honest)
                .all(|p| found.contains(p));
            (settled && found.len() <= MAX_PROVIDERS_PER_KEY + 1).then_some(())
        })?;
        kept += usize::from(closest.contains(&honest));
    }

    // Finding providers takes at most 5 s, and a "not found" costs a round trip.
    let bound = Duration::from_secs(15);
    let mut delivered = 0;
    for p in &net.published {
        let (r, _) = timed_get(&net.b, &p.packument_path)?;
        ensure!(r.status == 200, "{}: {} {}", p.name, r.status, r.text());
        let (r, took) = timed_get(&net.b, &p.tarball_path)?;
        ensure!(
            took < bound,
            "{}: {took:?} (bound {bound:?})",
            p.tarball_path
        );
        match r.status {
            200 => {
                ensure!(
                    Integrity::sha512_sri(&r.body) == p.integrity,
                    "{}: other bytes",
                    p.tarball_path
                );
                delivered += 1;
            }
            s => anyhow::bail!("{}: {s} {}", p.tarball_path, r.text()),
        }
    }
    say(&format!(
        "{SYBILS} sybils: B kept the honest provider for {kept} of {} tarballs and delivered {delivered}",
        names.len()
    ));
    ensure!(
        delivered == names.len(),
        "only {delivered} of {} delivered",
        names.len()
    );
    Ok(())
}

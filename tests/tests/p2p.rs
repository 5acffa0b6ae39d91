//! Issue 4's multi-node tests: nodes find and fetch tarballs and metadata from each other over
//! libp2p, and lying or dying peers cost a fetch some time but never its correctness.
//!
//! Every node is a real `open-registry start` process on loopback — except where a test needs a
//! node's packuments to pass their `max_age`: those nodes run in this process
//! ([`P2pNode::in_process`], same arguments) and the test advances their clocks instead of
//! sleeping. The liars are [`EvilPeer`]s, libp2p peers in this process built from the node's own
//! network layer and fed a lying blob source or lying DHT values. Where a test needs one source to be tried first,
//! the honest origin is stopped once the liar has copied (and announced) what it holds, so the
//! liar is the only live provider and the outcome does not depend on the fetcher's shuffle.
//!
//! Rows of the fault table in docs/security.md: R1 (corrupted bytes), R3 (forged metadata), R4
//! (rollback), R7 (endless or slow data), R13 (provider churn).

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use bytes::Bytes;
use open_registry_protocol::{
    BlobId, Integrity,
    pointer::{self, Pointer},
    record::{Record, Signable as _, Signed, VersionEntry},
};
use open_registry_tests::{
    FakeUpstream, Node, Output, PackageSpec, Published,
    fixtures::{self, Tarball},
    http,
    npm::Npm,
    p2p::{EvilPeer, Holdings, P2pNode, Serve, Tripwire, Values, now_ms, operator_record},
    probe,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// How long a node may take to see its bootstrap peer.
const JOIN: Duration = Duration::from_secs(15);

fn say(line: &str) {
    eprintln!("[p2p] {line}");
}

/// npm's summary lines.
fn report(step: &str, out: &Output) {
    say(&format!("{step}: ok in {:.2}s", out.elapsed.as_secs_f64()));
    for line in out.stdout.lines().chain(out.stderr.lines()) {
        let l = line.trim();
        if !l.is_empty() {
            say(&format!("    {l}"));
        }
    }
}

/// Node `require`s each package at its version, and finds each `(path, size)` file whole.
fn check_tree(
    npm: &Npm,
    project: &Path,
    want: &[(&str, &str)],
    files: &[(&str, usize)],
) -> Result<()> {
    let mut script = String::from("const assert = require('assert');\n");
    for (name, version) in want {
        script.push_str(&format!(
            "assert.strictEqual(require({name:?}).version, {version:?});\n"
        ));
    }
    for (path, size) in files {
        script.push_str(&format!(
            "assert.strictEqual(require('fs').statSync(require.resolve({path:?})).size, {size});\n"
        ));
    }
    script.push_str("console.log('tree ok');\n");
    let out = npm
        .node(project, &script)
        .with_context(|| format!("checking the tree in {}", project.display()))?;
    ensure!(out.stdout.contains("tree ok"), "{}", out.describe());
    Ok(())
}

/// `node`'s status once its store holds `tarballs` tarballs (and `packuments` packuments, when
/// given). A peer's blob is answered once verified, and its commit and index entry finish a
/// moment after the client has it.
fn status_holding(
    node: &impl Node,
    packuments: Option<u64>,
    tarballs: u64,
) -> Result<open_registry_protocol::Status> {
    probe::wait_for(
        Duration::from_secs(10),
        "the store to hold the blobs",
        || {
            node.status().ok().filter(|s| {
                s.store.tarballs == tarballs && packuments.is_none_or(|p| s.store.packuments == p)
            })
        },
    )
    .or_else(|_| node.status())
}

fn counters(node: &impl Node, names: &[&str]) -> Result<String> {
    let s = node.status()?;
    Ok(names
        .iter()
        .map(|n| format!("{n}={}", s.counters.get(*n).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(" "))
}

/// `GET /<name>` through `node`: the status, and the packument when it is 200.
fn latest(node: &impl Node, name: &str) -> Result<(u16, Option<serde_json::Value>)> {
    let r = node.get(&format!("/{name}"), &[])?;
    if r.status != 200 {
        return Ok((r.status, None));
    }
    Ok((r.status, Some(probe::json(&r)?)))
}

/// The honest node's copy of `name` goes to the liar, which announces it and stores the
/// honest operator's newest DHT pointer, so that it can stand in for the operator once the
/// operator is gone. Tarballs are served as `tarballs` scripts.
fn take_over(origin: &P2pNode, liar: &EvilPeer, name: &str, tarballs: &Serve) -> Result<Holdings> {
    let h = Holdings::read(origin, &origin.id, name)?;
    liar.serve_holdings(&h, tarballs)?;
    let ptr = liar.wait_pointer(&h.name, &origin.id, h.record.seq, Duration::from_secs(15))?;
    let signer = origin.id.parse().map_err(|e| anyhow!("{e}"))?;
    liar.put_record(pointer::dht_key(&h.name, &signer), ptr)?;
    Ok(h)
}

/// Copies a project and its lockfile (made against another registry: the project's `.npmrc`
/// keeps download addresses out of it, so `npm ci` fetches from whichever registry it is given).
fn copy_project(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for f in ["package.json", "package-lock.json", ".npmrc"] {
        fs::copy(from.join(f), to.join(f)).with_context(|| format!("copying {f}"))?;
    }
    Ok(())
}

// ---- 1. two nodes ------------------------------------------------------------------------

/// A mirrors a small project from the upstream; the upstream goes away; B, with no upstream,
/// bootstrapping to A and trusting A's key, serves `npm ci` (empty cache) entirely from A.
#[test]
fn two_nodes_npm_ci_through_a_node_without_upstream() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let specs = [
        PackageSpec::new("or-p2p-plain", "1.0.0"),
        PackageSpec::new("@or-p2p/scoped", "1.2.0"),
        PackageSpec::new("or-p2p-app", "1.0.0")
            .dep("or-p2p-plain", "^1.0.0")
            .dep("@or-p2p/scoped", "^1.0.0"),
        PackageSpec::new("or-p2p-big", "1.0.0").big_file(2 * MIB),
    ];
    for s in &specs {
        up.publish(s)?;
    }
    let want = [
        ("or-p2p-plain", "1.0.0"),
        ("@or-p2p/scoped", "1.2.0"),
        ("or-p2p-app", "1.0.0"),
        ("or-p2p-big", "1.0.0"),
    ];
    let files = [("or-p2p-big/big.bin", 2 * MIB)];

    let a = P2pNode::start(&["--upstream", up.url()])?;
    let work = tempfile::tempdir()?;
    let project = work.path().join("project");
    fixtures::write_project(
        &project,
        &[("or-p2p-app", "^1.0.0"), ("or-p2p-big", "1.0.0")],
    )?;
    let out = Npm::new(&a.gateway)?.install(&project)?;
    report("npm install through A (upstream up)", &out);
    let s = a.status()?;
    ensure!(
        s.store.tarballs == 4 && s.store.packuments == 4,
        "A holds {:?}",
        s.store
    );

    up.down();
    let b = P2pNode::start(&["--no-upstream", "--bootstrap", &a.addr, "--trust", &a.id])?;
    b.wait_routing_table(1, JOIN)?;

    let ci = work.path().join("ci");
    copy_project(&project, &ci)?;
    let npm = Npm::new(&b.gateway)?;
    let out = npm.ci(&ci)?;
    report(
        "npm ci through B (--no-upstream, empty cache, upstream DOWN)",
        &out,
    );
    check_tree(&npm, &ci, &want, &files)?;

    let s = status_holding(&b, Some(4), 4)?;
    let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    say(&format!(
        "B after npm ci: {} packuments, {} tarballs stored; peer_requests={} peer_ingests={} \
         peer_bytes={} peer_errors={} upstream_requests={} tarball_requests={}",
        s.store.packuments,
        s.store.tarballs,
        c("peer_requests"),
        c("peer_ingests"),
        c("peer_bytes"),
        c("peer_errors"),
        c("upstream_requests"),
        c("tarball_requests"),
    ));
    for l in b.log_tail(400).lines().filter(|l| l.contains("WARN")) {
        say(&format!("    B: {l}"));
    }
    ensure!(
        s.store.tarballs == 4 && s.store.packuments == 4,
        "B holds {:?}",
        s.store
    );
    ensure!(
        c("peer_ingests") >= 8,
        "4 packuments + 4 tarballs from peers: {:?}",
        s.counters
    );
    ensure!(c("peer_bytes") > 2 * MIB as u64, "{:?}", s.counters);
    ensure!(c("upstream_requests") == 0, "{:?}", s.counters);
    ensure!(c("integrity_failures") == 0, "{:?}", s.counters);
    say(&format!("total {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// What npm's parallel fetches do to a node, at the wire: a peer opens 16 blob streams at once
/// (within the node's limit of concurrent transfers) for a blob the node holds, eight rounds.
/// Every request is answered; a node that drops some (its accept queue full) makes a fetcher
/// with no other provider fail the install.
#[test]
fn a_node_answers_every_one_of_simultaneous_blob_requests() -> Result<()> {
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("or-p2p-burst", "1.0.0").big_file(64 * KIB))?;
    let a = P2pNode::start(&["--upstream", up.url()])?;
    ensure!(a.get(&p.packument_path, &[])?.status == 200);
    ensure!(a.get(&p.tarball_path, &[])?.status == 200);
    let h = Holdings::read(&a, &a.id, &p.name)?;
    let (id, bytes) = h.tarball("1.0.0")?;
    let peer = EvilPeer::start(51, &[&a.addr], Values::Pointers)?;
    peer.wait_routing_table(1, JOIN)?;
    for round in 0..8 {
        let got = peer.fetch_many(&a.id, id, 16, Duration::from_secs(20))?;
        let failed: Vec<&String> = got.iter().filter_map(|r| r.as_ref().err()).collect();
        say(&format!(
            "round {round}: 16 streams at once, {} failed: {failed:?}",
            failed.len()
        ));
        ensure!(
            failed.is_empty(),
            "round {round}: {} of 16 simultaneous blob requests failed: {failed:?}",
            failed.len()
        );
        ensure!(
            got.iter().all(|r| r.as_ref().is_ok_and(|b| b == bytes)),
            "wrong bytes"
        );
    }
    Ok(())
}

/// The same for the record-ids protocol, which a node asks of every trusted operator it is
/// connected to on each packument miss, so npm's parallel misses arrive as a burst: 16 requests
/// at once (the server's limit), eight rounds, each answered with the operator's record. A
/// request the server's stream layer dropped on arrival is asked again; one that failed would
/// send the asker on a DHT walk.
#[test]
fn a_node_answers_every_one_of_simultaneous_record_ids_requests() -> Result<()> {
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("or-p2p-ids-burst", "1.0.0"))?;
    let a = P2pNode::start(&["--upstream", up.url()])?;
    ensure!(a.get(&p.packument_path, &[])?.status == 200);
    let record = BlobId::of(&operator_record(&a, &a.id, &p.name)?.to_bytes());
    let peer = EvilPeer::start(52, &[&a.addr], Values::Pointers)?;
    peer.wait_routing_table(1, JOIN)?;
    for round in 0..8 {
        let got = peer.record_ids_many(&a.id, &p.name, 16, Duration::from_secs(20))?;
        let failed: Vec<&String> = got.iter().filter_map(|r| r.as_ref().err()).collect();
        say(&format!(
            "round {round}: 16 record-ids requests at once, {} failed: {failed:?}",
            failed.len()
        ));
        ensure!(
            failed.is_empty(),
            "round {round}: {} of 16 simultaneous record-ids requests failed: {failed:?}",
            failed.len()
        );
        ensure!(
            got.iter()
                .all(|r| r.as_ref().is_ok_and(|ids| ids.contains(&record))),
            "an answer did not name A's record {}: {got:?}",
            record.short()
        );
    }
    Ok(())
}

// ---- 2. five nodes in a line -------------------------------------------------------------

/// N1 ← N2 ← N3 ← N4 ← N5, each bootstrapping only to its neighbour: a package only N5 holds
/// (mirrored from an upstream that is then stopped) installs with npm through N1.
#[test]
fn five_nodes_in_a_line_install_across_hops() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    up.publish(&PackageSpec::new("or-hops-dep", "1.0.0"))?;
    up.publish(&PackageSpec::new("or-hops", "2.0.0").dep("or-hops-dep", "^1.0.0"))?;

    let n5 = P2pNode::start(&["--upstream", up.url()])?;
    let work = tempfile::tempdir()?;
    let mirror = work.path().join("mirror");
    fixtures::write_project(&mirror, &[("or-hops", "^2.0.0")])?;
    Npm::new(&n5.gateway)?.install(&mirror)?;
    up.down();

    let mut line = vec![n5];
    for _ in 0..4 {
        let prev = line.last().context("a previous node")?;
        let args = [
            "--no-upstream",
            "--bootstrap",
            &prev.addr,
            "--trust",
            &line[0].id,
        ];
        let n = P2pNode::start(&args)?;
        n.wait_routing_table(1, JOIN)?;
        line.push(n);
    }
    let (n5, n1) = (&line[0], &line[4]);

    let project = work.path().join("project");
    fixtures::write_project(&project, &[("or-hops", "^2.0.0")])?;
    let npm = Npm::new(&n1.gateway)?;
    let out = npm.install(&project)?;
    report("npm install through N1 (only N5 holds the package)", &out);
    check_tree(
        &npm,
        &project,
        &[("or-hops", "2.0.0"), ("or-hops-dep", "1.0.0")],
        &[],
    )?;

    let s = status_holding(n1, None, 2)?;
    ensure!(s.store.tarballs == 2, "N1 holds {:?}", s.store);
    ensure!(
        s.counters.get("peer_ingests").copied().unwrap_or(0) >= 4,
        "{:?}",
        s.counters
    );
    ensure!(
        s.counters.get("upstream_requests").copied().unwrap_or(0) == 0,
        "{:?}",
        s.counters
    );
    // Nobody in between holds the package: the bytes came from N5, found through the DHT.
    for (i, n) in line.iter().enumerate().skip(1).take(3) {
        let st = n.status()?.store;
        ensure!(
            st.tarballs == 0 && st.packuments == 0,
            "N{} holds {st:?}",
            5 - i
        );
    }
    let connected: Vec<String> = open_registry_tests::p2p::peers(n1)?["connected"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["peer_id"].as_str().map(str::to_owned))
        .collect();
    say(&format!(
        "N1 is connected to {connected:?}; N5 is {}",
        n5.id
    ));
    ensure!(
        connected.contains(&n5.id),
        "N1 got N5's bytes without a connection to N5?"
    );
    say(&format!("total {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

// ---- 3. R1 -------------------------------------------------------------------------------

/// R1: the only live peer holding the tarballs serves each with one byte flipped. The node
/// asks it first (the records name the tarballs' ids), refuses its bytes, and falls back to
/// its upstream; npm installs without an integrity error.
#[test]
fn r1_a_peer_flipping_a_byte_is_refused_and_the_upstream_used() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let pubs = [
        up.publish(&PackageSpec::new("or-r1-dep", "1.0.0").big_file(128 * KIB))?,
        up.publish(&PackageSpec::new("@or-r1/scoped", "1.0.0"))?,
        up.publish(&PackageSpec::new("or-r1-app", "1.0.0").dep("or-r1-dep", "^1.0.0"))?,
    ];
    let mut a = P2pNode::start(&["--upstream", up.url()])?;
    let work = tempfile::tempdir()?;
    let project = work.path().join("project");
    fixtures::write_project(
        &project,
        &[("or-r1-app", "^1.0.0"), ("@or-r1/scoped", "^1.0.0")],
    )?;
    Npm::new(&a.gateway)?.install(&project)?;

    let e = EvilPeer::start(11, &[&a.addr], Values::Pointers)?;
    e.wait_routing_table(1, JOIN)?;
    let mut held = Vec::new();
    for p in &pubs {
        held.push(take_over(&a, &e, &p.name, &Serve::FlipByte)?);
    }
    a.stop()?;

    let b = P2pNode::start(&[
        "--upstream",
        up.url(),
        "--bootstrap",
        &e.addr,
        "--trust",
        &a.id,
    ])?;
    b.wait_routing_table(1, JOIN)?;
    let hits: Vec<usize> = pubs.iter().map(|p| up.hits(&p.tarball_path)).collect();

    let ci = work.path().join("ci");
    copy_project(&project, &ci)?;
    let npm = Npm::new(&b.gateway)?;
    let out = npm.ci(&ci)?;
    report(
        "npm ci through B (the only peer flips a byte of every tarball)",
        &out,
    );
    let all = format!("{}{}", out.stdout, out.stderr);
    ensure!(
        !all.contains("EINTEGRITY"),
        "npm saw an integrity error:\n{all}"
    );
    check_tree(
        &npm,
        &ci,
        &[
            ("or-r1-app", "1.0.0"),
            ("or-r1-dep", "1.0.0"),
            ("@or-r1/scoped", "1.0.0"),
        ],
        &[("or-r1-dep/big.bin", 128 * KIB)],
    )?;

    say(&format!(
        "B: {}",
        counters(
            &b,
            &[
                "peer_requests",
                "peer_errors",
                "peer_ingests",
                "integrity_failures",
                "upstream_requests"
            ]
        )?
    ));
    for ((p, h), before) in pubs.iter().zip(&held).zip(hits) {
        let (id, bytes) = h.tarball(&p.version)?;
        ensure!(
            e.asked(id) >= 1,
            "B never asked the liar for {}",
            p.tarball_path
        );
        ensure!(
            up.hits(&p.tarball_path) > before,
            "{} did not come from the upstream",
            p.tarball_path
        );
        let r = b.get(&p.tarball_path, &[])?;
        ensure!(
            r.status == 200 && r.body == bytes.as_ref(),
            "B serves other bytes for {}",
            p.tarball_path
        );
    }
    ensure!(
        b.counter("integrity_failures")? >= 3,
        "B did not refuse the flipped bytes"
    );
    ensure!(b.counter("peer_errors")? >= 3);
    say(&format!("total {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

// ---- 4. R7 -------------------------------------------------------------------------------

/// B's deadlines in the R7 test.
const STALL: Duration = Duration::from_secs(2);
const PEER_TIMEOUT: Duration = Duration::from_secs(8);

/// R7: the only live provider of four tarballs trickles one at 1 byte/s, streams endless bytes
/// for another (a length within the cap, at a pace that never stalls), announces a length
/// past any cap for the third, and sends half of the fourth and then nothing. Each fetch is
/// cut off — by the deadline, the deadline, the cap and the stall timeout — and falls back to
/// the upstream in bounded time, with the right bytes.
#[test]
fn r7_endless_and_slow_peers_are_cut_off_and_the_fetch_falls_back_in_bounded_time() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let cases: [(&str, Serve, Duration, Duration); 4] = [
        // (package, script, at least, at most): the bounds say which limit ended it.
        (
            "or-r7-trickle",
            Serve::Trickle(Duration::from_secs(1)),
            PEER_TIMEOUT - Duration::from_secs(1),
            PEER_TIMEOUT + Duration::from_secs(7),
        ),
        (
            "or-r7-endless",
            Serve::Endless {
                announced: 256 << 20,
                chunk: 16 * KIB,
                every: Duration::from_millis(100),
            },
            PEER_TIMEOUT - Duration::from_secs(1),
            PEER_TIMEOUT + Duration::from_secs(7),
        ),
        (
            "or-r7-huge",
            Serve::Endless {
                announced: 1 << 40,
                chunk: 64 * KIB,
                every: Duration::from_millis(1),
            },
            Duration::ZERO,
            STALL + Duration::from_secs(3),
        ),
        (
            "or-r7-stall",
            Serve::HangOnce(Tripwire::new()),
            STALL - Duration::from_millis(500),
            PEER_TIMEOUT - Duration::from_secs(1),
        ),
    ];
    let mut pubs = Vec::new();
    for (name, ..) in &cases {
        pubs.push(up.publish(&PackageSpec::new(name, "1.0.0").big_file(64 * KIB))?);
    }
    let mut a = P2pNode::start(&["--upstream", up.url()])?;
    for p in &pubs {
        ensure!(a.get(&p.packument_path, &[])?.status == 200);
        ensure!(a.get(&p.tarball_path, &[])?.status == 200);
    }
    let e = EvilPeer::start(12, &[&a.addr], Values::Pointers)?;
    e.wait_routing_table(1, JOIN)?;
    let mut held = Vec::new();
    for ((name, serve, ..), p) in cases.iter().zip(&pubs) {
        ensure!(*name == p.name);
        held.push(take_over(&a, &e, name, serve)?);
    }
    a.stop()?;

    let (stall, timeout) = (
        format!("{}s", STALL.as_secs()),
        format!("{}s", PEER_TIMEOUT.as_secs()),
    );
    let b = P2pNode::start(&[
        "--upstream",
        up.url(),
        "--bootstrap",
        &e.addr,
        "--trust",
        &a.id,
        "--peer-stall-timeout",
        &stall,
        "--peer-timeout",
        &timeout,
    ])?;
    b.wait_routing_table(1, JOIN)?;
    // Packuments first (from the upstream), so the timings below are the tarballs' alone.
    for p in &pubs {
        ensure!(b.get(&p.packument_path, &[])?.status == 200);
    }

    let gateway = b.gateway.clone();
    let timed: Vec<(Published, Result<(http::Response, Duration)>)> = thread::scope(|s| {
        let handles: Vec<_> = pubs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let url = format!("{gateway}{}", p.tarball_path);
                s.spawn(move || {
                    // Concurrent, but not arriving at once (see
                    // a_node_answers_every_one_of_simultaneous_blob_requests).
                    thread::sleep(Duration::from_millis(300) * i as u32);
                    let t = Instant::now();
                    let r = http::get(&url, Duration::from_secs(60));
                    r.map(|r| (r, t.elapsed()))
                })
            })
            .collect();
        pubs.iter()
            .cloned()
            .zip(
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("panicked")))),
            )
            .collect()
    });
    say(&format!(
        "B: {}",
        counters(
            &b,
            &[
                "peer_requests",
                "peer_errors",
                "peer_ingests",
                "peer_bytes",
                "integrity_failures",
                "upstream_requests"
            ]
        )?
    ));
    for (((p, r), (name, _, at_least, at_most)), h) in timed.into_iter().zip(&cases).zip(&held) {
        let (r, took) = r?;
        say(&format!(
            "{name}: {} in {:.2}s (bounds {at_least:?}..{at_most:?})",
            r.status,
            took.as_secs_f64()
        ));
        let (id, bytes) = h.tarball("1.0.0")?;
        ensure!(r.status == 200, "{name}: {} {}", r.status, r.text());
        ensure!(r.body == bytes.as_ref(), "{name}: wrong bytes");
        ensure!(e.asked(id) >= 1, "{name}: B never asked the slow peer");
        ensure!(
            up.hits(&p.tarball_path) >= 2,
            "{name}: not fetched from the upstream by B"
        );
        ensure!(
            took >= *at_least && took <= *at_most,
            "{name}: took {took:?}, not within {at_least:?}..{at_most:?}"
        );
    }
    ensure!(b.counter("peer_errors")? >= 4);
    say(&format!("total {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

// ---- 5. R13 ------------------------------------------------------------------------------

/// R13, five nodes: A mirrors a project with a 4 MiB tarball; two peers P1 and P2 copy it and
/// stand in for A, which stops; C relays; B (no upstream) installs through C's network. Whichever
/// of P1 and P2 B asks first for the big tarball sends half of it and is then killed
/// mid-transfer; B fails over to the other, and npm install succeeds — long before B's stall
/// timeout could have been what ended the transfer.
#[test]
fn r13_the_serving_peer_dies_mid_transfer_and_another_completes_the_install() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let big = up.publish(&PackageSpec::new("or-r13-big", "1.0.0").big_file(4 * MIB))?;
    let app = up.publish(&PackageSpec::new("or-r13-app", "1.0.0").dep("or-r13-big", "^1.0.0"))?;
    let mut a = P2pNode::start(&["--upstream", up.url()])?;
    let work = tempfile::tempdir()?;
    let project = work.path().join("project");
    fixtures::write_project(&project, &[("or-r13-app", "^1.0.0")])?;
    Npm::new(&a.gateway)?.install(&project)?;
    up.down();

    let wire = Tripwire::new();
    let mut p1 = EvilPeer::start(21, &[&a.addr], Values::Pointers)?;
    p1.wait_routing_table(1, JOIN)?;
    let mut p2 = EvilPeer::start(22, &[&a.addr, &p1.addr], Values::Pointers)?;
    p2.wait_routing_table(2, JOIN)?;
    let mut big_id = None;
    for p in [&p1, &p2] {
        for name in [&app.name, &big.name] {
            let h = take_over(&a, p, name, &Serve::Honest)?;
            if *name == big.name {
                let (id, _) = *h.tarball("1.0.0")?;
                p.script(&id, Serve::HangOnce(wire.clone()))?;
                big_id = Some(id);
            }
        }
    }
    let big_id = big_id.context("the big tarball's id")?;
    let c = P2pNode::start(&["--no-upstream", "--bootstrap", &p1.addr, "--trust", &a.id])?;
    c.wait_routing_table(1, JOIN)?;
    a.stop()?;
    let b = P2pNode::start(&[
        "--no-upstream",
        "--bootstrap",
        &c.addr,
        "--trust",
        &a.id,
        "--peer-stall-timeout",
        "30s",
    ])?;
    b.wait_routing_table(1, JOIN)?;

    let npm = Npm::new(&b.gateway)?;
    let install = work.path().join("install");
    fixtures::write_project(&install, &[("or-r13-app", "^1.0.0")])?;
    let (out, killed_at, victim) = thread::scope(|s| -> Result<_> {
        let npm_run = s.spawn(|| npm.install(&install));
        // Polls `what`, giving up early (with npm's outcome) if npm is done first.
        let until = |what: &str, check: &dyn Fn() -> Option<String>| {
            probe::wait_for(Duration::from_secs(30), what, || {
                check()
                    .map(Some)
                    .or_else(|| npm_run.is_finished().then_some(None))
            })
        };
        let victim = until("a peer to send half the big tarball", &|| {
            wire.hung().map(|p| p.to_string())
        })?;
        // B has received a good part of the tarball: it is mid-transfer.
        let mid = until("B to receive 1 MiB from the peer", &|| {
            (b.counter("peer_bytes").ok()? >= MIB as u64).then(String::new)
        })?;
        let (Some(victim), Some(_)) = (victim, mid) else {
            let out = npm_run.join().map_err(|_| anyhow!("npm thread panicked"))?;
            bail!("npm finished before a peer was killed mid-transfer: {out:?}");
        };
        let killed_at = Instant::now();
        if victim == p1.peer.to_string() {
            p1.kill();
        } else {
            p2.kill();
        }
        say(&format!("killed {victim} mid-transfer"));
        let out = npm_run
            .join()
            .map_err(|_| anyhow!("npm thread panicked"))??;
        Ok((out, killed_at, victim))
    })?;
    let after_kill = killed_at.elapsed();
    report(
        "npm install through B (the serving peer killed mid-transfer)",
        &out,
    );
    say(&format!(
        "install finished {:.2}s after the kill",
        after_kill.as_secs_f64()
    ));
    check_tree(
        &npm,
        &install,
        &[("or-r13-app", "1.0.0"), ("or-r13-big", "1.0.0")],
        &[("or-r13-big/big.bin", 4 * MIB)],
    )?;
    say(&format!(
        "B: {}",
        counters(
            &b,
            &[
                "peer_requests",
                "peer_errors",
                "peer_ingests",
                "peer_bytes",
                "upstream_requests"
            ]
        )?
    ));
    let survivor = if victim == p1.peer.to_string() {
        &p2
    } else {
        &p1
    };
    ensure!(
        survivor.asked(&big_id) >= 1,
        "the surviving peer was never asked"
    );
    ensure!(b.counter("peer_errors")? >= 1);
    ensure!(
        after_kill < Duration::from_secs(20),
        "the install took {after_kill:?} after the kill: the failover waited for a timeout"
    );
    let r = b.get(&big.tarball_path, &[])?;
    ensure!(r.status == 200 && Integrity::sha512_sri(&r.body) == big.integrity);
    say(&format!("total {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

// ---- 6. R3 and R4 ------------------------------------------------------------------------

/// R3: a liar puts a pointer under the trusted operator's DHT key signed by its own key (with
/// a higher sequence, naming its own record of a version 6.6.6), publishes its own records,
/// and, being the only live provider of the operator's genuine record, serves altered bytes
/// for it. The node never follows the forged pointer, refuses the altered record, and serves
/// nothing for the package; once the record is served honestly, it serves the genuine
/// revision — never 6.6.6.
#[test]
fn r3_forged_pointers_and_altered_records_from_a_peer_are_ignored() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("or-r3", "1.0.0"))?;
    let mut a = P2pNode::start(&["--upstream", up.url()])?;
    ensure!(a.get(&p.packument_path, &[])?.status == 200);
    ensure!(a.get(&p.tarball_path, &[])?.status == 200);

    // An honest relay keeps the operator's genuine pointer once the operator is gone.
    let relay = EvilPeer::start(31, &[&a.addr], Values::Pointers)?;
    relay.wait_routing_table(1, JOIN)?;
    let h = Holdings::read(&a, &a.id, &p.name)?;
    let genuine = relay.wait_pointer(&h.name, &a.id, h.record.seq, Duration::from_secs(15))?;
    let a_signer = a.id.parse().map_err(|e| anyhow!("{e}"))?;
    let key = pointer::dht_key(&h.name, &a_signer);
    relay.put_record(key.clone(), genuine)?;

    let e = EvilPeer::start(32, &[&a.addr, &relay.addr], Values::Anything)?;
    e.wait_routing_table(2, JOIN)?;
    // The genuine packument and tarball, honestly; the genuine record, altered (A's signature
    // kept over other bytes).
    e.serve(h.packument.1.clone(), Serve::Honest)?;
    let (tar_id, tar_bytes) = h.tarball("1.0.0")?.clone();
    e.serve(tar_bytes.clone(), Serve::Honest)?;
    let mut altered = h.record.clone();
    altered.versions.insert(
        "1.0.0".into(),
        VersionEntry {
            integrity: Integrity::sha512_sri(b"evil"),
            tarball: Some(tar_id),
        },
    );
    let altered = Signed {
        body: altered.encode(),
        ..h.signed.clone()
    };
    ensure!(
        altered.verify().is_err(),
        "the altered record still verifies"
    );
    e.serve(
        Bytes::from(h.signed.to_bytes()),
        Serve::Instead(Bytes::from(altered.to_bytes())),
    )?;
    // The forgery: a packument with 6.6.6, a record for it signed by the liar, and a pointer to
    // it under A's key (and one under the liar's own).
    let evil_tgz = Tarball::build(&PackageSpec::new("or-r3", "6.6.6").files())?;
    let evil_tar_id = e.serve(Bytes::from(evil_tgz.bytes.clone()), Serve::Honest)?;
    let mut doc = up.packument(&p.name).context("the upstream's packument")?;
    doc["versions"]["6.6.6"] = doc["versions"]["1.0.0"].clone();
    doc["versions"]["6.6.6"]["version"] = "6.6.6".into();
    doc["versions"]["6.6.6"]["dist"]["integrity"] = evil_tgz.integrity.clone().into();
    doc["versions"]["6.6.6"]["dist"]["shasum"] = evil_tgz.shasum.clone().into();
    doc["dist-tags"]["latest"] = "6.6.6".into();
    let evil_doc_id = e.serve(Bytes::from(serde_json::to_vec(&doc)?), Serve::Honest)?;
    let forged = Record {
        name: h.name.clone(),
        seq: h.record.seq + 1_000_000,
        fetched_at: now_ms(),
        expires_at: now_ms() + 3_600_000,
        packument: evil_doc_id,
        versions: [(
            "6.6.6".to_owned(),
            VersionEntry {
                integrity: evil_tgz.integrity.clone(),
                tarball: Some(evil_tar_id),
            },
        )]
        .into(),
    }
    .sign(e.identity.signing_key());
    let forged_id = e.serve(Bytes::from(forged.to_bytes()), Serve::Honest)?;
    let forged_ptr = |seq| {
        Pointer {
            name: h.name.clone(),
            seq,
            expires_at: now_ms() + 3_600_000,
            record: forged_id,
        }
        .sign(e.identity.signing_key())
        .to_bytes()
    };
    e.put_record(key.clone(), forged_ptr(forged.verify()?.get().seq))?;
    let e_signer = e.peer.to_string().parse().map_err(|e| anyhow!("{e}"))?;
    e.put_record(
        pointer::dht_key(&h.name, &e_signer),
        forged_ptr(forged.verify()?.get().seq),
    )?;
    a.stop()?;

    let b = P2pNode::start(&[
        "--no-upstream",
        "--bootstrap",
        &relay.addr,
        "--bootstrap",
        &e.addr,
        "--trust",
        &a.id,
    ])?;
    b.wait_routing_table(2, JOIN)?;

    // Phase 1: the genuine record is only available altered.
    let (status, doc) = latest(&b, &p.name)?;
    say(&format!(
        "B, the genuine record only altered: {status}; liar asked for the genuine record {}×, the forged one {}×; B: {}",
        e.asked(&h.record_id),
        e.asked(&forged_id),
        counters(
            &b,
            &["integrity_failures", "records_rejected", "peer_errors"]
        )?
    ));
    ensure!(status == 404, "B answered {status}: {doc:?}");
    ensure!(
        e.asked(&h.record_id) >= 1,
        "B never followed the genuine pointer"
    );
    ensure!(
        e.asked(&forged_id) == 0,
        "B followed a pointer signed by an untrusted key"
    );
    ensure!(e.asked(&evil_doc_id) == 0);
    ensure!(
        b.counter("integrity_failures")? >= 1,
        "the altered record was not counted"
    );

    // Phase 2: the genuine record, honestly served: the genuine revision, never 6.6.6.
    e.script(&h.record_id, Serve::Honest)?;
    let (status, doc) = latest(&b, &p.name)?;
    let doc = doc.with_context(|| format!("B answered {status} once the record was honest"))?;
    ensure!(doc["dist-tags"]["latest"] == "1.0.0", "{doc}");
    ensure!(
        doc["versions"].get("6.6.6").is_none(),
        "B serves the forged version: {doc}"
    );
    let r = b.get(&p.tarball_path, &[])?;
    ensure!(
        r.status == 200 && r.body == tar_bytes.as_ref(),
        "tarball: {}",
        r.status
    );
    ensure!(b.get("/or-r3/-/or-r3-6.6.6.tgz", &[])?.status == 404);
    ensure!(e.asked(&forged_id) == 0 && e.asked(&evil_tar_id) == 0);
    let held = operator_record(&b, &a.id, &p.name)?;
    ensure!(
        held == h.signed,
        "B holds another record of A than A signed"
    );
    ensure!(
        open_registry_tests::p2p::records(&b, &p.name)?
            .iter()
            .all(|s| s.signer.to_string() == a.id),
        "B keeps a record of an untrusted signer"
    );
    say(&format!("total {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

/// R4: the operator signs a record for 1.0.0, then, once 2.0.0 is out, a newer one. B takes
/// the newer. With the operator gone, a liar replays the operator's older pointer and record
/// (validly signed, and captured off the DHT): B refuses the rollback (records_rejected) and
/// keeps serving the newer revision.
#[test]
fn r4_a_replayed_older_record_never_rolls_a_node_back() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("or-r4", "1.0.0"))?;
    // In this process, so that A's and B's packuments pass their max-age as their clocks are
    // advanced, not as time goes by.
    let past_max_age = Duration::from_millis(1100);
    let mut a = P2pNode::in_process(&["--upstream", up.url(), "--max-age", "1s"])?;
    let e = EvilPeer::start(41, &[&a.addr], Values::Anything)?;
    e.wait_routing_table(1, JOIN)?;
    ensure!(a.get(&p.packument_path, &[])?.status == 200);
    let old = Holdings::read(&a, &a.id, &p.name)?;
    let old_ptr = e.wait_pointer(&old.name, &a.id, old.record.seq, Duration::from_secs(15))?;

    up.publish(&PackageSpec::new("or-r4", "2.0.0"))?;
    // Past A's max-age: A's next request revalidates and finds 2.0.0.
    a.clock().advance(past_max_age);
    let new = probe::wait_for(
        Duration::from_secs(15),
        "A to sign a record for 2.0.0",
        || {
            a.get(&p.packument_path, &[]).ok()?;
            Holdings::read(&a, &a.id, &p.name)
                .ok()
                .filter(|h| h.record.versions.contains_key("2.0.0"))
        },
    )?;
    ensure!(new.record.seq > old.record.seq && new.packument.0 != old.packument.0);

    let b = P2pNode::in_process(&[
        "--no-upstream",
        "--bootstrap",
        &a.addr,
        "--bootstrap",
        &e.addr,
        "--trust",
        &a.id,
        "--max-age",
        "1s",
    ])?;
    b.wait_routing_table(2, JOIN)?;
    let (status, doc) = latest(&b, &p.name)?;
    let doc = doc.with_context(|| format!("B answered {status}"))?;
    ensure!(doc["dist-tags"]["latest"] == "2.0.0", "{doc}");
    ensure!(operator_record(&b, &a.id, &p.name)?.verify()?.get().seq == new.record.seq);

    // The replay: A's older record and packument, and A's older pointer, from the liar only.
    e.serve(Bytes::from(old.signed.to_bytes()), Serve::Honest)?;
    e.serve(old.packument.1.clone(), Serve::Honest)?;
    let a_signer = a.id.parse().map_err(|e| anyhow!("{e}"))?;
    e.put_record(pointer::dht_key(&old.name, &a_signer), old_ptr)?;
    a.stop()?;
    let rejected = b.counter("records_rejected")?;

    // Past B's max-age, every request revalidates with the network.
    for round in 0..3 {
        b.clock().advance(past_max_age);
        let (status, doc) = latest(&b, &p.name)?;
        let doc = doc.with_context(|| format!("B answered {status} after the replay"))?;
        ensure!(
            doc["dist-tags"]["latest"] == "2.0.0" && doc["versions"].get("2.0.0").is_some(),
            "round {round}: B rolled back to {}",
            doc["dist-tags"]
        );
    }
    say(&format!(
        "B after the replay: liar asked for the old record {}×; B: {}",
        e.asked(&old.record_id),
        counters(&b, &["records_rejected", "stale_served", "peer_errors"])?
    ));
    ensure!(
        e.asked(&old.record_id) >= 1,
        "the replayed record never reached B"
    );
    ensure!(
        b.counter("records_rejected")? > rejected,
        "B did not count the rollback"
    );
    ensure!(
        e.asked(&old.packument.0) == 0,
        "B fetched the rolled-back packument"
    );
    ensure!(operator_record(&b, &a.id, &p.name)?.verify()?.get().seq == new.record.seq);
    say(&format!("total {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

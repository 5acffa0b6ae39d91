//! B9: how fast a takedown reaches the network. 20 `open-registry start` processes on
//! loopback (4 in smoke runs).
//!
//! Topology as in B5: O (the operator who signs, with the FakeUpstream) starts first; every
//! other node has the same upstream, trusts O alone (so O's signature is a quorum:
//! `advisory_threshold` defaults to the trust threshold, 1) and bootstraps only to the node
//! started before it, a chain O ← N1 ← … ← N19 that Kademlia and gossipsub then fill in.
//!
//! Each run publishes a fresh package with versions 1.0.0 and 1.0.1, and every node serves
//! 1.0.1's tarball once (200), so every node holds it. Then the clock starts: O's admin API is
//! asked to sign an advisory for `NAME@1.0.1` (what `open-registry advisory add` does), and one
//! thread per node asks that node for the tarball every 2 ms until it answers 451. Reported:
//! per node, the time from the request to O to the first 451; median and max over the nodes
//! and runs. The reference, measured in the same run: a libp2p request round trip on an open
//! loopback connection (what one gossip hop costs at the least) and gossipsub's heartbeat
//! (1 s), which bounds how long a message may wait for a mesh to form. Target: max ≤ 2 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use open_registry_tests::{FakeUpstream, PackageSpec, Published, http};
use serde_json::json;

use crate::perf::{self, Reference as _};
use crate::report::{Report, Table, fmt_ms, median};
use crate::targets::{self, Peer};
use crate::{Ctx, b5};

/// How long a node may take to see the node it bootstraps to.
const JOIN: Duration = Duration::from_secs(20);
/// How long one node may take to answer 451 before the run fails.
const DEADLINE: Duration = Duration::from_secs(30);
/// How often each node is asked.
const POLL: Duration = Duration::from_millis(2);
/// The target for the slowest node.
const TARGET_MS: f64 = 2000.0;

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let nodes = if ctx.smoke { 4 } else { 20 };
    let up = FakeUpstream::start()?;

    let t0 = Instant::now();
    let o = targets::start_peer(ctx, Some(up.url()), &[], &[])?;
    let mut chain: Vec<Peer> = Vec::with_capacity(nodes - 1);
    for _ in 1..nodes {
        let prev = chain.last().map_or(o.addr.as_str(), |p| p.addr.as_str());
        let n = targets::start_peer(ctx, Some(up.url()), &[prev], &[&o.id])?;
        n.wait_routing_table(1, JOIN)?;
        chain.push(n);
    }
    let tables = b5::settle(chain.last().context("no far node")?, &o, &chain)?;
    report.note(format!(
        "{nodes} nodes started in {:.1}s, a chain O ← N1 ← … ← N{}; routing tables (min / max): \
         {} / {}",
        t0.elapsed().as_secs_f64(),
        nodes - 1,
        tables.iter().min().copied().unwrap_or(0),
        tables.iter().max().copied().unwrap_or(0),
    ));
    let token = std::fs::read_to_string(o.node.data_dir.join("admin.token"))
        .context("reading O's admin token")?;
    let everyone: Vec<&Peer> = std::iter::once(&o).chain(&chain).collect();

    let mut all_ms: Vec<f64> = Vec::new();
    let mut runs = Vec::new();
    for run in 0..ctx.runs {
        let name = format!("bench-b9-{run}");
        up.publish(&PackageSpec::new(&name, "1.0.0"))?;
        let bad = up.publish(&PackageSpec::new(&name, "1.0.1"))?;
        for n in &everyone {
            expect(n, &bad, 200)?;
        }
        let started = Instant::now();
        let body = json!({"name": name, "range": "1.0.1", "kind": "compromised",
            "reason": "B9 takedown", "url": "https://example.org/b9"})
        .to_string();
        let r = http::request(
            "POST",
            &format!("{}/-/open-registry/admin/advisory", o.gateway()),
            &[
                ("Authorization", &format!("Bearer {}", token.trim())),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
            DEADLINE,
        )?;
        if r.status != 200 {
            bail!("O refused the advisory: {} {}", r.status, r.text());
        }
        let signed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let times = until_451(&everyone, &bad, started)?;
        let (med, max) = (median(&times), times.iter().copied().fold(0.0, f64::max));
        println!(
            "   run {}/{}: signed in {}, every node 451 after median {} max {}",
            run + 1,
            ctx.runs,
            fmt_ms(signed_ms),
            fmt_ms(med),
            fmt_ms(max)
        );
        all_ms.extend(&times);
        runs.push(json!({"signed_ms": signed_ms, "per_node_ms": times}));
    }

    let lp = perf::Libp2p::start()?;
    let rtt = median(
        &lp.round_trips(200)?
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect::<Vec<_>>(),
    );
    let (med, max) = (median(&all_ms), all_ms.iter().copied().fold(0.0, f64::max));
    let mut t = Table::new(
        "B9 from `advisory add` on O to a 451 for the tarball on every node",
        &[
            "nodes",
            "runs",
            "median",
            "max",
            "libp2p round trip",
            "max / round trip",
        ],
    );
    t.row(vec![
        nodes.to_string(),
        ctx.runs.to_string(),
        fmt_ms(med),
        fmt_ms(max),
        fmt_ms(rtt),
        format!("{:.0}", crate::report::ratio(max, rtt)),
    ]);
    report.table(t);
    report.note(
        "gossipsub's heartbeat is 1 s: a message published before a peer's mesh includes the \
         publisher reaches it through flood publishing or the next heartbeat",
    );
    report.check(
        "B9 propagation, slowest node",
        &format!("≤ {}", fmt_ms(TARGET_MS)),
        format!("{} (median {})", fmt_ms(max), fmt_ms(med)),
        Some(max <= TARGET_MS),
    );
    report.data(
        "summary",
        json!({"nodes": nodes, "median_ms": med, "max_ms": max, "rtt_libp2p_ms": rtt}),
    );
    report.data("runs", json!(runs));
    drop(chain);
    drop(o);
    Ok(report)
}

/// GET the tarball of `p` through `node`, expecting `status`.
fn expect(node: &Peer, p: &Published, status: u16) -> Result<()> {
    let url = format!("{}{}", node.gateway(), p.tarball_path);
    let r = http::request("GET", &url, &[], &[], DEADLINE)?;
    if r.status != status {
        bail!("{url} answered {}, not {status}: {}", r.status, r.text());
    }
    Ok(())
}

/// Asks every node for the tarball until it answers 451, one thread per node; returns each
/// node's time since `started`, in ms.
fn until_451(nodes: &[&Peer], p: &Published, started: Instant) -> Result<Vec<f64>> {
    let path = Arc::new(p.tarball_path.clone());
    let handles: Vec<_> = nodes
        .iter()
        .map(|n| {
            let url = format!("{}{}", n.gateway(), path);
            std::thread::spawn(move || -> Result<f64> {
                loop {
                    let r = http::request("GET", &url, &[], &[], DEADLINE)?;
                    match r.status {
                        451 => return Ok(started.elapsed().as_secs_f64() * 1000.0),
                        200 => {}
                        s => bail!("{url} answered {s}: {}", r.text()),
                    }
                    if started.elapsed() > DEADLINE {
                        bail!("{url} still serves the tarball after {DEADLINE:?}");
                    }
                    std::thread::sleep(POLL);
                }
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a polling thread panicked"))?
        })
        .collect()
}

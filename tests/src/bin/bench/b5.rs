//! B5: a cold miss resolved through the DHT in a network of nodes (20 `open-registry start`
//! processes on loopback; 5 in smoke runs).
//!
//! Topology: H (the holder, with the FakeUpstream) starts first; every other node has no
//! upstream, trusts H's records, and bootstraps only to the node started just before it, so
//! the nodes form a chain H ← N1 ← N2 ← … ← far. Kademlia then fills the routing tables on its
//! own; the harness waits until the far node's table stops growing and reports whether the far
//! node happens to hold a connection to H (with 20 nodes and k = 20, every table can hold every
//! node). Packages (one version, a 20 KiB tarball each, a fresh package per run and requester)
//! are then mirrored by H from the upstream, so H signs their records, publishes their pointers
//! and announces their blobs to the network as it formed.
//!
//! Each run asks the far node, through its gateway, for a package nobody but H holds: the
//! packument (npm's abbreviated Accept), then the tarball, as npm would. Reported per miss:
//! time to first byte and total time, and from the node's own counters (`/-/metrics`): the DHT
//! lookups the miss needed (`dht_queries`), the requests they sent (`dht_requests`) and the time
//! they took (`dht_query_micros`). The same is measured on N1, which bootstrapped to H directly
//! (a one-hop reference).
//!
//! The target, "≤ 2 RTT + transfer", is checked per miss against what this machine's
//! loopback allows, measured in the same run ([`perf`]): RTT is one request on an
//! open libp2p connection (a new stream, a one-byte answer), transfer is the time to stream the
//! same document or tarball over such a connection.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use open_registry_tests::{FakeUpstream, Published, http};
use serde_json::json;

use crate::perf::{self, Reference as _};
use crate::report::{self, Report, Table, fmt_ms, fmt_ratio, median};
use crate::targets::{self, Peer};
use crate::{Ctx, load, synth};

/// How long a node may take to see the node it bootstraps to.
const JOIN: Duration = Duration::from_secs(20);

/// How long one GET may take.
const GET_TIMEOUT: Duration = Duration::from_secs(60);

/// One miss as measured: times in ms and the requester's counter deltas.
#[derive(Debug, Clone, Default)]
struct Miss {
    first_byte_ms: f64,
    total_ms: f64,
    bytes: usize,
    dht_queries: u64,
    dht_requests: u64,
    dht_query_ms: f64,
    peer_requests: u64,
}

impl Miss {
    fn json(&self) -> serde_json::Value {
        json!({"first_byte_ms": self.first_byte_ms, "total_ms": self.total_ms,
            "bytes": self.bytes, "dht_queries": self.dht_queries,
            "dht_requests": self.dht_requests, "dht_query_ms": self.dht_query_ms,
            "peer_requests": self.peer_requests})
    }
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let nodes = if ctx.smoke { 5 } else { 20 };
    let tarball = 20 << 10;
    let up = FakeUpstream::start()?;

    // The network: H, then a chain of nodes without upstream that trust H.
    let t0 = Instant::now();
    let h = targets::start_peer(ctx, Some(up.url()), &[], &[])?;
    let mut chain: Vec<Peer> = Vec::with_capacity(nodes - 1);
    for _ in 1..nodes {
        let prev = chain.last().map_or(h.addr.as_str(), |p| p.addr.as_str());
        let n = targets::start_peer(ctx, None, &[prev], &[&h.id])?;
        n.wait_routing_table(1, JOIN)?;
        chain.push(n);
    }
    let near = &chain[0];
    let far = chain.last().context("no far node")?;
    let tables = settle(far, &h, &chain)?;
    report.note(format!(
        "{nodes} nodes started in {:.1}s, a chain H ← N1 ← … ← N{}; routing tables (min / \
         median / max): {} / {} / {}",
        t0.elapsed().as_secs_f64(),
        nodes - 1,
        tables.iter().min().copied().unwrap_or(0),
        median(&tables.iter().map(|&x| x as f64).collect::<Vec<_>>()),
        tables.iter().max().copied().unwrap_or(0),
    ));

    // The packages: one per run and requester, mirrored by H once the network exists.
    let mut packages: Vec<(Published, Published)> = Vec::new();
    for run in 0..ctx.runs {
        let f = synth::publish_tarball(&up, &format!("bench-b5-far-{run}"), tarball)?;
        let n = synth::publish_tarball(&up, &format!("bench-b5-near-{run}"), tarball)?;
        for p in [&f, &n] {
            get_ok(h.gateway(), &p.packument_path)?;
            get_ok(h.gateway(), &p.tarball_path)?;
        }
        packages.push((f, n));
    }
    // H's announcements go out a few at a time; give them a moment.
    std::thread::sleep(Duration::from_millis(if ctx.smoke { 500 } else { 2000 }));
    let far_to_h = far.connected()?.contains(&h.id);
    let near_to_h = near.connected()?.contains(&h.id);
    report.note(format!(
        "before the misses: the far node has {} peers in its routing table, {} connections, \
         {} to H; N1 {} connected to H",
        far.routing_table()?,
        far.connected()?.len(),
        if far_to_h { "one" } else { "none" },
        if near_to_h { "is" } else { "is not" },
    ));

    let mut far_misses: Vec<(Miss, Miss)> = Vec::new();
    let mut near_misses: Vec<(Miss, Miss)> = Vec::new();
    for (run, (f, n)) in packages.iter().enumerate() {
        let fm = miss(&mut report, far, &up, f, "far")?;
        let nm = miss(&mut report, near, &up, n, "N1")?;
        println!(
            "   run {}/{} far: packument {} ({} lookups, {} DHT requests), tarball {} ({} \
             lookups, {} requests) | N1: packument {}, tarball {}",
            run + 1,
            ctx.runs,
            fmt_ms(fm.0.total_ms),
            fm.0.dht_queries,
            fm.0.dht_requests,
            fmt_ms(fm.1.total_ms),
            fm.1.dht_queries,
            fm.1.dht_requests,
            fmt_ms(nm.0.total_ms),
            fmt_ms(nm.1.total_ms),
        );
        far_misses.push(fm);
        near_misses.push(nm);
    }
    let far_final = far.connected()?.contains(&h.id);

    // The references: round trips and transfers on this machine's loopback.
    let tcp = perf::Tcp::start()?;
    let lp = perf::Libp2p::start()?;
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let rtt_tcp = median(&tcp.round_trips(1000)?.iter().map(ms).collect::<Vec<_>>());
    let rtt_lp = median(&lp.round_trips(200)?.iter().map(ms).collect::<Vec<_>>());
    let (pack_len, tar_len) = (
        median_of(&far_misses, |m| m.0.bytes as f64) as u64,
        median_of(&far_misses, |m| m.1.bytes as f64) as u64,
    );
    let transfer = |len: u64| -> Result<f64> {
        let xs = (0..5)
            .map(|_| lp.many(1, len.max(1), 1).map(|d| ms(&d)))
            .collect::<Result<Vec<_>>>()?;
        Ok(median(&xs))
    };
    let (xfer_pack, xfer_tar) = (transfer(pack_len)?, transfer(tar_len)?);
    report.note(format!(
        "loopback round trip: TCP {}, libp2p request on an open connection (new stream, 1-byte \
         answer) {}; libp2p transfer of the packument ({}) {}, of the tarball ({}) {}",
        fmt_ms(rtt_tcp),
        fmt_ms(rtt_lp),
        report::fmt_bytes(pack_len),
        fmt_ms(xfer_pack),
        report::fmt_bytes(tar_len),
        fmt_ms(xfer_tar),
    ));

    let mut t = Table::new(
        "B5 cold misses through the DHT (medians)",
        &[
            "requester, miss",
            "first byte",
            "total",
            "DHT lookups",
            "DHT requests (per lookup)",
            "DHT time, summed (in RTTs)",
            "minimum: 2 RTT + transfer",
            "total / minimum",
        ],
    );
    let mut data = Vec::new();
    for (who, misses) in [("far", &far_misses), ("N1 (one hop)", &near_misses)] {
        for (what, pick, xfer) in [("packument", 0usize, xfer_pack), ("tarball", 1, xfer_tar)] {
            let get =
                |f: fn(&Miss) -> f64| median_of(misses, |m| f(if pick == 0 { &m.0 } else { &m.1 }));
            let (fb, total) = (get(|m| m.first_byte_ms), get(|m| m.total_ms));
            let (q, r) = (
                get(|m| m.dht_queries as f64),
                get(|m| m.dht_requests as f64),
            );
            let dht_ms = get(|m| m.dht_query_ms);
            let minimum = 2.0 * rtt_lp + xfer;
            let ratio = report::ratio(total, minimum);
            t.row(vec![
                format!("{who}, {what}"),
                fmt_ms(fb),
                fmt_ms(total),
                format!("{q:.0}"),
                format!("{r:.0} ({:.1})", report::ratio(r, q)),
                format!("{} ({:.0})", fmt_ms(dht_ms), report::ratio(dht_ms, rtt_lp)),
                fmt_ms(minimum),
                fmt_ratio(ratio),
            ]);
            if who == "far" {
                report.check(
                    &format!("B5 far node, {what} miss: total vs 2 RTT + transfer"),
                    &format!(
                        "≤ {} (2 × {} + {})",
                        fmt_ms(minimum),
                        fmt_ms(rtt_lp),
                        fmt_ms(xfer)
                    ),
                    format!("{} ({} lookups, {:.0} DHT requests)", fmt_ms(total), q, r),
                    (!ratio.is_nan()).then_some(total <= minimum),
                );
            }
            data.push(json!({"requester": who, "miss": what, "first_byte_ms": fb,
                "total_ms": total, "dht_queries": q, "dht_requests": r, "dht_query_ms": dht_ms,
                "minimum_ms": minimum}));
        }
    }
    report.table(t);
    report.note(format!(
        "the far node {} connected to H after the misses",
        if far_final { "is" } else { "is not" }
    ));
    report.data("summary", json!(data));
    report.data(
        "references_ms",
        json!({"rtt_tcp": rtt_tcp, "rtt_libp2p": rtt_lp, "transfer_packument": xfer_pack,
            "transfer_tarball": xfer_tar}),
    );
    report.data(
        "runs",
        json!({
            "far": far_misses.iter().map(|(p, t)| json!([p.json(), t.json()])).collect::<Vec<_>>(),
            "near": near_misses.iter().map(|(p, t)| json!([p.json(), t.json()])).collect::<Vec<_>>(),
        }),
    );
    report.data("nodes", json!(nodes));
    drop(chain);
    drop(h);
    Ok(report)
}

/// The median over runs of `f` applied to each run's pair of misses.
fn median_of(misses: &[(Miss, Miss)], f: impl Fn(&(Miss, Miss)) -> f64) -> f64 {
    median(&misses.iter().map(f).collect::<Vec<_>>())
}

/// Waits (bounded) until the far node's routing table has not grown for a second; returns
/// every node's routing table size.
pub(crate) fn settle(far: &Peer, h: &Peer, chain: &[Peer]) -> Result<Vec<u64>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut last, mut since) = (far.routing_table()?, Instant::now());
    while Instant::now() < deadline && since.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
        let now = far.routing_table()?;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    std::iter::once(h)
        .chain(chain)
        .map(Peer::routing_table)
        .collect()
}

/// GET `path` through `base` with npm's headers, expecting 200.
fn get_ok(base: &str, path: &str) -> Result<()> {
    let r = targets::get(
        &format!("{base}{path}"),
        &[("Accept", load::NPM_ACCEPT), ("Accept-Encoding", "gzip")],
        GET_TIMEOUT,
    )?;
    if r.status != 200 {
        bail!("{base}{path} answered {}: {}", r.status, r.text());
    }
    Ok(())
}

/// One cold miss of `p` through `node`: the packument, then the tarball, each timed, with the
/// node's counter deltas for each.
fn miss(
    report: &mut Report,
    node: &Peer,
    up: &FakeUpstream,
    p: &Published,
    who: &str,
) -> Result<(Miss, Miss)> {
    let one = |path: &str, headers: &[(&str, &str)]| -> Result<(Miss, Vec<u8>)> {
        let before = node.metrics()?;
        let url = format!("{}{path}", node.gateway());
        let r = http::request_timed("GET", &url, headers, &[], GET_TIMEOUT)?;
        let after = node.metrics()?;
        if r.response.status != 200 {
            bail!(
                "{url} answered {}: {}",
                r.response.status,
                r.response.text()
            );
        }
        let d = |k: &str| targets::delta(&before, &after, k);
        Ok((
            Miss {
                first_byte_ms: r.first_byte.as_secs_f64() * 1000.0,
                total_ms: r.total.as_secs_f64() * 1000.0,
                bytes: r.response.body.len(),
                dht_queries: d("dht_queries"),
                dht_requests: d("dht_requests"),
                dht_query_ms: d("dht_query_micros") as f64 / 1000.0,
                peer_requests: d("peer_requests"),
            },
            r.response.body,
        ))
    };
    // The packument as npm asks for it, but identity-encoded: its size is what moved.
    let (pack, _) = one(&p.packument_path, &[("Accept", load::NPM_ACCEPT)])?;
    let (tar, body) = one(&p.tarball_path, &[("Accept-Encoding", "gzip")])?;
    let file = p.tarball_path.rsplit('/').next().unwrap_or_default();
    let want = up.tarball(&p.name, file).context("the published tarball")?;
    if body[..] != want[..] {
        report.fail(format!(
            "B5 {who}: {} came back with {} bytes that differ from the {} published",
            p.tarball_path,
            body.len(),
            want.len()
        ));
    }
    // No DHT lookup is needed when a trusted operator is connected: it is asked itself for
    // its records (record-ids), so only the peer requests must have moved.
    if pack.peer_requests + tar.peer_requests == 0 {
        report.fail(format!(
            "B5 {who}: {} was not fetched from a peer (peer_requests did not move)",
            p.name
        ));
    }
    Ok((pack, tar))
}

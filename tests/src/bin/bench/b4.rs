//! B4: peer → peer transfer. Node A (with the FakeUpstream) holds (a) one big tarball (100 MiB
//! of incompressible content; a few MiB in smoke runs) and (b) many small ones (1000 versions
//! of one package, 20 KiB tarballs each; 20 in smoke runs). A fresh node B with no upstream,
//! bootstrapping to A and trusting A, is asked for them through its gateway, as npm would ask
//! it: (a) one GET of the big tarball, (b) every small tarball, 16 GETs at a time. Each run
//! starts a new B (cold). B first fetches each packument (untimed), so the timed GETs are
//! tarball transfers: per tarball a provider lookup, a blob stream from A, B's verification and
//! durable write, and B's HTTP answer. As a diagnostic, the same GETs are then repeated, now
//! answered from B's own store: what B's HTTP side alone costs.
//!
//! References in the same run, interleaved ([`perf`]): loopback TCP and a bare
//! libp2p connection on the node's transport stack (TCP + noise + yamux, one stream per
//! request), moving the same byte counts with the same concurrency. Reported: MB/s and
//! tarballs/s, and the ratios. Targets: bulk ≥ 0.7× libp2p, many ≥ 5,000 tarballs/s.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use open_registry_tests::{FakeUpstream, PackageSpec, http};
use serde_json::json;

use crate::perf::{self, Reference as _};
use crate::report::{self, Report, Table, fmt_rate, fmt_ratio, median};
use crate::targets::{self, Peer};
use crate::{Ctx, load, synth, sys};

/// GETs in flight for the many-tarballs case (npm's default `maxsockets` is 16 too).
const CONCURRENCY: usize = 16;

/// B4 many's target: tarballs per second through B's gateway, cold, from A.
const MANY_TARGET: f64 = 5000.0;

/// How long B may take to see A.
const JOIN: Duration = Duration::from_secs(15);

/// How long one GET may take (the big tarball) and one small tarball's GET may take.
const GET_TIMEOUT: Duration = Duration::from_secs(300);
const SMALL_GET_TIMEOUT: Duration = Duration::from_secs(60);

/// One tarball: its URL path and the bytes the upstream published.
struct Item {
    path: String,
    bytes: Bytes,
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let (bulk_size, many, small) = if ctx.smoke {
        (4 << 20, 20, 20 << 10)
    } else {
        (100 << 20, 1000, 20 << 10)
    };
    let up = FakeUpstream::start()?;
    let t0 = Instant::now();
    let bulk = {
        let p = synth::publish_tarball(&up, "bench-b4-bulk", bulk_size)?;
        let file = p.tarball_path.rsplit('/').next().unwrap_or_default();
        Item {
            bytes: up.tarball(&p.name, file).context("the bulk tarball")?,
            path: p.tarball_path,
        }
    };
    let mut smalls = Vec::with_capacity(many);
    for i in 0..many {
        let spec = PackageSpec::new("bench-b4-many", &format!("1.{}.{}", i / 100, i % 100))
            .big_file(small - 700);
        let p = up.publish(&spec)?;
        smalls.push(Item {
            bytes: up
                .tarball(&p.name, &spec.tarball_file())
                .context("a small tarball")?,
            path: p.tarball_path,
        });
    }
    let bulk_bytes = bulk.bytes.len() as u64;
    let small_bytes: u64 = smalls.iter().map(|s| s.bytes.len() as u64).sum();
    report.note(format!(
        "(a) bulk: one tarball of {} ({bulk_bytes} bytes); (b) many: {many} tarballs of one \
         package, {} in all (~{} each), {CONCURRENCY} GETs at a time; published in {:.1}s",
        report::fmt_bytes(bulk_bytes),
        report::fmt_bytes(small_bytes),
        report::fmt_bytes(small_bytes / many as u64),
        t0.elapsed().as_secs_f64()
    ));

    let a = targets::start_peer(ctx, Some(up.url()), &[], &[])?;
    println!("   node A {} (pid {:?}) {}", a.gateway(), a.pid(), a.addr);
    let t0 = Instant::now();
    prepare(a.gateway(), &["/bench-b4-bulk", "/bench-b4-many"])?;
    fetch_all(a.gateway(), std::slice::from_ref(&bulk), 1)?;
    // One at a time: A re-signs the package's record after each tarball it stores (concurrent
    // re-signs lost tarball ids before `c3d9b34`, see b3::warm), and many ingests at once can
    // hang a node's index flushes (docs/benchmarks.md, B4); A's fill is not what is measured.
    fetch_all(a.gateway(), &smalls, 1)?;
    println!("   filled A in {:.1}s", t0.elapsed().as_secs_f64());
    up.reset_hits();

    let tcp = perf::Tcp::start()?;
    let lp = perf::Libp2p::start()?;
    let mut t = BTreeMap::<&str, Vec<f64>>::new();
    let mut dht = Vec::new();
    let mut key = None;
    for run in 0..ctx.runs {
        // The node: a fresh, empty B (the same identity every run), then the references, back
        // to back.
        let b = targets::start_peer_as(ctx, key.as_deref(), None, &[&a.addr], &[&a.id])?;
        key = Some(b.key()?);
        b.wait_routing_table(1, JOIN)?;
        prepare(b.gateway(), &["/bench-b4-bulk", "/bench-b4-many"])?;
        let before = b.metrics()?;
        let node_bulk = fetch_all(b.gateway(), std::slice::from_ref(&bulk), 1)?;
        let mid = b.metrics()?;
        let node_many = fetch_all(b.gateway(), &smalls, CONCURRENCY)?;
        let after = b.metrics()?;
        // Diagnostic: the same GETs again, now answered from B's own store (B's HTTP side).
        let hot_bulk = fetch_all(b.gateway(), std::slice::from_ref(&bulk), 1)?;
        let hot_many = fetch_all(b.gateway(), &smalls, CONCURRENCY)?;
        check_from_peer(&mut report, &b, &before, &mid, bulk_bytes, 1, "bulk");
        check_from_peer(&mut report, &b, &mid, &after, small_bytes, many, "many");
        let lookups = targets::delta(&mid, &after, "dht_queries");
        let requests = targets::delta(&mid, &after, "dht_requests");
        let micros = targets::delta(&mid, &after, "dht_query_micros");
        let lookup_ms = micros as f64 / 1000.0 / lookups.max(1) as f64;
        dht.push(
            json!({"bulk": {"dht_queries": targets::delta(&before, &mid, "dht_queries"),
            "dht_requests": targets::delta(&before, &mid, "dht_requests"),
            "dht_query_micros": targets::delta(&before, &mid, "dht_query_micros")},
            "many": {"dht_queries": lookups, "dht_requests": requests,
            "dht_query_micros": micros}}),
        );
        drop(b);

        let tcp_bulk = tcp.bulk(bulk_bytes)?;
        let lp_bulk = lp.bulk(bulk_bytes)?;
        let tcp_many = tcp.many(many, small_bytes / many as u64, CONCURRENCY)?;
        let lp_many = lp.many(many, small_bytes / many as u64, CONCURRENCY)?;
        let mbs = |d: Duration| perf::mb_per_s(bulk_bytes, d);
        let tps = |d: Duration| many as f64 / d.as_secs_f64();
        for (k, v) in [
            ("node_bulk", mbs(node_bulk)),
            ("hot_bulk", mbs(hot_bulk)),
            ("hot_many", tps(hot_many)),
            ("lp_bulk", mbs(lp_bulk)),
            ("tcp_bulk", mbs(tcp_bulk)),
            ("node_many", tps(node_many)),
            ("lp_many", tps(lp_many)),
            ("tcp_many", tps(tcp_many)),
        ] {
            t.entry(k).or_default().push(v);
        }
        println!(
            "   run {}/{} bulk MB/s: node {:.0} (again {:.0})  libp2p {:.0}  TCP {:.0} | many \
             tarballs/s: node {:.0} (again {:.0})  libp2p {:.0}  TCP {:.0} | B's DHT lookups for \
             the many: {lookups} ({requests} requests, {lookup_ms:.1} ms each)",
            run + 1,
            ctx.runs,
            mbs(node_bulk),
            mbs(hot_bulk),
            mbs(lp_bulk),
            mbs(tcp_bulk),
            tps(node_many),
            tps(hot_many),
            tps(lp_many),
            tps(tcp_many),
        );
    }
    let hits = up.total_hits();
    if hits > 0 {
        report.fail(format!(
            "B4: the upstream saw {hits} requests during the timed runs"
        ));
    }
    let m = |k: &str| median(t.get(k).map_or(&[][..], Vec::as_slice));
    let (nb, lb, tb) = (m("node_bulk"), m("lp_bulk"), m("tcp_bulk"));
    let (nm, lm, tm) = (m("node_many"), m("lp_many"), m("tcp_many"));
    let (hb, hm) = (m("hot_bulk"), m("hot_many"));
    let per = small_bytes as f64 / many as f64 / 1e6;
    let mut table = Table::new(
        "B4 peer → peer through B's gateway vs the transports alone (medians)",
        &[
            "case",
            "node B ← A (cold)",
            "B again (from its store)",
            "libp2p (same stack)",
            "loopback TCP",
            "node / libp2p",
            "libp2p / TCP",
        ],
    );
    table.row(vec![
        format!("(a) 1 × {}, MB/s", report::fmt_bytes(bulk_bytes)),
        format!("{nb:.0}"),
        format!("{hb:.0}"),
        format!("{lb:.0}"),
        format!("{tb:.0}"),
        fmt_ratio(report::ratio(nb, lb)),
        fmt_ratio(report::ratio(lb, tb)),
    ]);
    table.row(vec![
        format!(
            "(b) {many} × {}, tarballs/s (MB/s)",
            report::fmt_bytes(small_bytes / many as u64)
        ),
        format!("{} ({:.1})", fmt_rate(nm), nm * per),
        format!("{} ({:.1})", fmt_rate(hm), hm * per),
        format!("{} ({:.1})", fmt_rate(lm), lm * per),
        format!("{} ({:.1})", fmt_rate(tm), tm * per),
        fmt_ratio(report::ratio(nm, lm)),
        fmt_ratio(report::ratio(lm, tm)),
    ]);
    report.table(table);
    let r = report::ratio(nb, lb);
    report.check(
        "B4 bulk: node B ← A / libp2p",
        "≥ 0.7×",
        fmt_ratio(r),
        (!r.is_nan()).then_some(r >= 0.7),
    );
    report.check(
        "B4 many: node B ← A, tarballs/s",
        "≥ 5,000/s",
        format!("{} tarballs/s", fmt_rate(nm)),
        (!nm.is_nan()).then_some(nm >= MANY_TARGET),
    );
    report.note(format!(
        "the libp2p reference sent {} requests again whose stream its server had dropped \
         unanswered (libp2p-stream drops inbound streams its acceptor is not ready for)",
        perf::dropped_streams()
    ));
    report.data("mb_per_s_and_tarballs_per_s", json!(t));
    report.data("b_dht", json!(dht));
    report.data(
        "sizes",
        json!({"bulk_bytes": bulk_bytes, "many": many, "many_bytes": small_bytes}),
    );
    report.note(format!("A after B4: {}", sys::fmt_rss(a.pid())));
    Ok(report)
}

/// GETs each packument in `paths` through `base` (npm's headers), expecting 200.
fn prepare(base: &str, paths: &[&str]) -> Result<()> {
    for p in paths {
        let r = targets::get(
            &format!("{base}{p}"),
            &[("Accept", load::NPM_ACCEPT), ("Accept-Encoding", "gzip")],
            GET_TIMEOUT,
        )?;
        if r.status != 200 {
            bail!("{base}{p} answered {}: {}", r.status, r.text());
        }
    }
    Ok(())
}

/// GETs every item through `base`, `concurrency` at a time, and checks each answer's bytes;
/// returns the wall time of the whole batch.
fn fetch_all(base: &str, items: &[Item], concurrency: usize) -> Result<Duration> {
    let timeout = if items.len() > 1 {
        SMALL_GET_TIMEOUT
    } else {
        GET_TIMEOUT
    };
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    // After the first failure no new GET starts: a node that stopped answering fails the run
    // within one timeout, not one timeout per remaining tarball.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let url = format!("{base}{}", item.path);
                    let problem = match http::request(
                        "GET",
                        &url,
                        &[("Accept-Encoding", "gzip")],
                        &[],
                        timeout,
                    ) {
                        Ok(r) if r.status == 200 && r.body[..] == item.bytes[..] => continue,
                        Ok(r) if r.status == 200 => format!(
                            "{url}: {} bytes that differ from the {} published",
                            r.body.len(),
                            item.bytes.len()
                        ),
                        Ok(r) => format!("{url}: {} {}", r.status, r.text()),
                        Err(e) => format!("{url}: {e:#}"),
                    };
                    stop.store(true, Ordering::Relaxed);
                    failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(problem);
                }
            });
        }
    });
    let elapsed = t0.elapsed();
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(first) = failed.first() {
        bail!(
            "{} of {} GETs failed (no new one was sent after the first failure), e.g. {first}",
            failed.len(),
            items.len()
        );
    }
    Ok(elapsed)
}

/// Fails the report unless B got `bytes` (at least) from peers in `n` blobs, and nothing from
/// an upstream, between the two metric readings.
fn check_from_peer(
    report: &mut Report,
    b: &Peer,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    bytes: u64,
    n: usize,
    case: &str,
) {
    let got = targets::delta(before, after, "peer_bytes");
    let ingests = targets::delta(before, after, "peer_ingests");
    let upstream = targets::delta(before, after, "upstream_requests");
    if got < bytes || ingests < n as u64 || upstream > 0 {
        report.fail(format!(
            "B4 {case}: B ({}) got {got} bytes in {ingests} blobs from peers and sent {upstream} \
             upstream requests; expected ≥ {bytes} bytes in {n} blobs, none upstream",
            b.gateway()
        ));
    }
}

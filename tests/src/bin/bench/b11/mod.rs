//! B11: how a node's costs grow with what it stores. Stores of 10 k, 100 k and 1 M blobs
//! (smoke: 1 k and 5 k) are generated with the node's own store code (`open_registry_node::
//! store`), so the layout and the persisted totals are exactly what the node reads, and kept
//! between runs (keyed by size and by a fingerprint of the node's store code). At each size the
//! real `open-registry` process is started on a copy of the store (blob files hard-linked,
//! the index copied: the cached store is never touched by a node) with `--no-upstream`, so
//! everything it serves comes from the store, and one small peer on the network:
//!
//! - start: spawn → the gateway answers `/-/ping` (median of `runs` starts);
//! - RSS after a few seconds idle;
//! - `GET /-/open-registry/status` latency, p50 and p99 of sequential requests;
//! - DHT messages per minute over a window (`dht_messages_sent` from `/-/metrics` when the
//!   node has it, else `dht_requests`; the table names the one used);
//! - the B1 / B2 hot paths (an abbreviated packument and a tarball of the store, under the
//!   B1 load), compared with the same figures at the smallest size;
//! - eviction: a restart with a cache budget just under what is stored, so one pass evicts
//!   10 % of the budget (the node evicts down to 90 % of it): time from spawn until the status
//!   reports the store under 90 % of the budget, and the blobs evicted.
//!
//! It prints a table of every metric × size with the targets' verdicts and writes an SVG of the
//! cost growth (log-x) next to the JSON results.

mod plot;
mod stores;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use open_registry_tests::{NodeProcess, http};
use serde_json::{Value, json};

use crate::b1;
use crate::load::{self, LoadGen, NPM_ACCEPT, Spec};
use crate::report::{Report, Table, fmt_bytes, fmt_ms, fmt_rate, fmt_ratio, median, ratio};
use crate::targets::{self, Peer, parse_metrics};
use crate::{Ctx, sys};

use plot::plot;
pub(crate) use stores::parse_size;
use stores::*;

/// The node's `dht_messages_sent` counter (every outbound Kademlia request), and the older one
/// that counts only the requests of lookups.
const DHT_COUNTERS: [&str; 2] = ["dht_messages_sent", "dht_requests"];

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// What was measured at one size.
#[derive(Debug, Clone, Default)]
struct Figures {
    blobs: u64,
    bytes: u64,
    packuments: u64,
    tarballs: u64,
    gen_secs: f64,
    gen_fresh: bool,
    /// Every start, ms.
    starts_ms: Vec<f64>,
    /// Every stop (SIGTERM → exit), ms.
    stops_ms: Vec<f64>,
    start_ms: f64,
    rss_kib: Option<u64>,
    status_p50_ms: f64,
    status_p99_ms: f64,
    status_n: usize,
    /// Counter used, messages in the window, the window.
    dht_counter: String,
    dht_messages: u64,
    dht_window_secs: f64,
    b1_rps: f64,
    b1_p99_ms: f64,
    b2_rps: f64,
    b2_p99_ms: f64,
    evict_ms: f64,
    evict_ready_ms: f64,
    evicted_blobs: u64,
    evicted_bytes: u64,
    evict_cap: u64,
}

impl Figures {
    fn dht_per_min(&self) -> f64 {
        if self.dht_window_secs > 0.0 {
            self.dht_messages as f64 * 60.0 / self.dht_window_secs
        } else {
            f64::NAN
        }
    }

    fn rss_mb(&self) -> f64 {
        self.rss_kib.map_or(f64::NAN, |k| k as f64 * 1024.0 / 1e6)
    }

    fn json(&self) -> Value {
        json!({
            "blobs": self.blobs, "bytes": self.bytes, "packuments": self.packuments,
            "tarballs": self.tarballs, "generated_secs": self.gen_secs,
            "generated_this_run": self.gen_fresh,
            "starts_ms": self.starts_ms, "start_ms": self.start_ms, "stops_ms": self.stops_ms, "rss_idle_kib": self.rss_kib,
            "status_p50_ms": self.status_p50_ms, "status_p99_ms": self.status_p99_ms,
            "status_requests": self.status_n,
            "dht_counter": self.dht_counter, "dht_messages": self.dht_messages,
            "dht_window_secs": self.dht_window_secs, "dht_per_min": self.dht_per_min(),
            "b1_rps": self.b1_rps, "b1_p99_ms": self.b1_p99_ms,
            "b2_rps": self.b2_rps, "b2_p99_ms": self.b2_p99_ms,
            "evict_cap": self.evict_cap, "evict_ms": self.evict_ms,
            "evict_after_ready_ms": self.evict_ready_ms,
            "evicted_blobs": self.evicted_blobs, "evicted_bytes": self.evicted_bytes,
        })
    }
}

/// The node's counters from `/-/metrics`, by short name.
fn metrics(node: &NodeProcess) -> Result<BTreeMap<String, u64>> {
    let r = node.get("/-/metrics", &[])?;
    if r.status != 200 {
        bail!("{}/-/metrics answered {}", node.gateway(), r.status);
    }
    Ok(parse_metrics(&r.text()))
}

/// A big node on `data`: no upstream (all it serves is the store), bootstrapped to `peer`.
fn start_big(ctx: &Ctx, data: &Path, peer: &Peer, extra: &[String]) -> Result<(NodeProcess, f64)> {
    let b = NodeProcess::builder()
        .binary(&ctx.node_bin)
        .data_dir(data)
        .args([
            "--no-upstream",
            "--max-age",
            "1h",
            "--bootstrap",
            &peer.addr,
        ])
        .args(extra.iter().map(String::as_str))
        .env("RUST_LOG", "warn");
    let t0 = Instant::now();
    let node = b.start()?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    sys::register_pid(node.pid());
    Ok((node, ms))
}

/// How long a stop may take: the node lets in-flight work (an announcement of the whole
/// store, say) run for up to 10 s before it closes the store, longer than the test harness's
/// own grace.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// SIGTERM and wait for the exit (milliseconds): the store is closed cleanly, so the next start
/// trusts its totals. A node that had to be killed is a failure.
pub(super) fn stop(node: &mut NodeProcess, report: &mut Report) -> Result<f64> {
    let Some(mut child) = node.child.take() else {
        return Ok(0.0);
    };
    let t0 = Instant::now();
    let status = open_registry_tests::process::stop_group(&mut child, STOP_GRACE)?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if let Some(s) = status
        && !s.success()
    {
        report.fail(format!(
            "the node did not stop cleanly ({s})\n{}",
            node.log_tail(20)
        ));
    }
    Ok(ms)
}

/// Everything at one size.
fn measure(
    ctx: &Ctx,
    lg: LoadGen,
    g: &Generated,
    work: &Path,
    window: Duration,
    report: &mut Report,
) -> Result<Figures> {
    let label = size_label(g.nominal);
    let mut f = Figures {
        blobs: g.blobs,
        bytes: g.bytes,
        packuments: g.packuments,
        tarballs: g.tarballs,
        gen_secs: g.secs,
        gen_fresh: g.fresh,
        ..Figures::default()
    };
    let t0 = Instant::now();
    working_copy(&g.data, work)?;
    println!(
        "   [{label}] working copy in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let peer = targets::start_peer(ctx, None, &[], &[])?;

    // Starts: spawn → the gateway answers; every one but the last is stopped again.
    let mut node = None;
    for run in 0..ctx.runs {
        let (mut n, ms) = start_big(ctx, work, &peer, &[])?;
        println!(
            "   [{label}] start {}/{}: {}",
            run + 1,
            ctx.runs,
            fmt_ms(ms)
        );
        f.starts_ms.push(ms);
        if run + 1 < ctx.runs {
            f.stops_ms.push(stop(&mut n, report)?);
        } else {
            node = Some(n);
        }
    }
    let mut node = node.context("no start")?;
    f.start_ms = median(&f.starts_ms);
    let dht_t0 = Instant::now();
    let before = metrics(&node)?;
    let counter = DHT_COUNTERS
        .iter()
        .find(|c| before.contains_key(**c))
        .map(|c| (*c).to_owned());
    let st = node.status()?;
    if (st.store.blobs, st.store.packuments, st.store.tarballs)
        != (g.blobs, g.packuments, g.tarballs)
    {
        report.fail(format!(
            "[{label}] the node reports {} blobs, {} packuments, {} tarballs; the store holds {}, {}, {}",
            st.store.blobs, st.store.packuments, st.store.tarballs, g.blobs, g.packuments, g.tarballs
        ));
    }

    // Idle, then RSS.
    std::thread::sleep(if ctx.smoke {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });
    f.rss_kib = node.pid().and_then(sys::rss_kib).map(|(rss, _)| rss);

    // Status latency: `n` requests, or as many as fit in `budget` (a busy node answers slowly).
    let (n, budget) = if ctx.smoke {
        (50, Duration::from_secs(3))
    } else {
        (500, Duration::from_secs(30))
    };
    let url = format!("{}/-/open-registry/status", node.gateway());
    let mut ms = Vec::with_capacity(n);
    let began = Instant::now();
    while ms.len() < n && (ms.is_empty() || began.elapsed() < budget) {
        let t = Instant::now();
        let r = http::get(&url, Duration::from_secs(10))?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.status != 200 {
            report.fail(format!("[{label}] status answered {}", r.status));
            break;
        }
    }
    ms.sort_by(f64::total_cmp);
    (f.status_p50_ms, f.status_p99_ms, f.status_n) = (pct(&ms, 0.5), pct(&ms, 0.99), ms.len());

    // The hot paths: a packument and a tarball of the store (the same ones at every size).
    let i = 0;
    let name = pkg(i);
    let (file, bytes) = tarball(i, 0);
    let pack_url = format!("{}/{name}", node.gateway());
    let plain = targets::get(
        &pack_url,
        &[("Accept", NPM_ACCEPT)],
        Duration::from_secs(30),
    )?;
    let abbreviated = plain
        .header("content-type")
        .is_some_and(|c| c.contains("vnd.npm.install-v1"));
    let versions = serde_json::from_slice::<Value>(&plain.body)
        .ok()
        .and_then(|v| v["versions"].as_object().map(serde_json::Map::len));
    if plain.status != 200 || !abbreviated || versions != Some(TARBALLS) {
        report.fail(format!(
            "[{label}] GET /{name}: {} {:?}, {versions:?} versions (wanted the abbreviated document with {TARBALLS})",
            plain.status,
            plain.header("content-type")
        ));
    }
    let tar_path = format!("/{name}/-/{file}");
    let tar = targets::get(
        &format!("{}{tar_path}", node.gateway()),
        &[("Accept-Encoding", "gzip")],
        Duration::from_secs(30),
    )?;
    if tar.status != 200 || tar.body != bytes {
        report.fail(format!(
            "[{label}] GET {tar_path}: {} with {} bytes, not the stored {} bytes",
            tar.status,
            tar.body.len(),
            bytes.len()
        ));
    }
    let cases = [
        ("B1", format!("/{name}"), b1::npm_headers()),
        (
            "B2",
            tar_path.clone(),
            vec![("Accept-Encoding".to_owned(), "gzip".to_owned())],
        ),
    ];
    for (what, path, headers) in cases {
        let mut outs = Vec::new();
        for run in 0..ctx.runs {
            let o = load::run(
                lg,
                &Spec {
                    url: format!("{}{path}", node.gateway()),
                    headers: headers.clone(),
                    connections: b1::CONNECTIONS,
                    duration: ctx.duration,
                },
            )?;
            println!(
                "   [{label}] {what} run {}/{}: {} req/s p99 {} {}",
                run + 1,
                ctx.runs,
                fmt_rate(o.rps),
                fmt_ms(o.p99_ms),
                o.problems()
            );
            if o.requests == 0 || o.non_2xx > 0 {
                report.fail(format!(
                    "[{label}] {what} {path}: {} requests, {}",
                    o.requests,
                    o.problems()
                ));
            }
            outs.push(o);
        }
        let (rps, p99) = b1::med(&outs);
        if what == "B1" {
            (f.b1_rps, f.b1_p99_ms) = (rps, p99);
        } else {
            (f.b2_rps, f.b2_p99_ms) = (rps, p99);
        }
    }

    // The rest of the DHT window, then its count.
    let left = window.saturating_sub(dht_t0.elapsed());
    if !left.is_zero() {
        println!(
            "   [{label}] DHT window: {:.0}s more",
            left.as_secs_f64().ceil()
        );
        std::thread::sleep(left);
    }
    let after = metrics(&node)?;
    f.dht_window_secs = dht_t0.elapsed().as_secs_f64();
    match &counter {
        Some(c) => {
            f.dht_counter = c.clone();
            f.dht_messages = targets::delta(&before, &after, c);
        }
        None => report.fail(format!("[{label}] /-/metrics has none of {DHT_COUNTERS:?}")),
    }
    if let Ok(peers) = open_registry_tests::p2p::peers(&node)
        && peers["connected"].as_array().is_none_or(Vec::is_empty)
    {
        report.fail(format!("[{label}] the node has no peer connected"));
    }
    f.stops_ms.push(stop(&mut node, report)?);
    drop(node);

    // Eviction: a budget just under what is stored; one pass takes it to 90 % of the budget.
    let used = st.store.bytes;
    let cap = used - used / 1000;
    let low = cap - cap / 10;
    f.evict_cap = cap;
    let t0 = Instant::now();
    let (mut node, _) = start_big(
        ctx,
        work,
        &peer,
        &["--max-cache-size".into(), cap.to_string()],
    )?;
    let ready = t0.elapsed();
    let deadline = Instant::now()
        + if ctx.smoke {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(900)
        };
    let after = loop {
        let s = node.status()?;
        if s.store.bytes <= low {
            f.evict_ms = t0.elapsed().as_secs_f64() * 1000.0;
            f.evict_ready_ms = (t0.elapsed() - ready).as_secs_f64() * 1000.0;
            break s;
        }
        if Instant::now() >= deadline {
            report.fail(format!(
                "[{label}] eviction: the store still holds {} bytes after {:?} (budget {cap}, \
                 a pass ends at {low})",
                s.store.bytes,
                t0.elapsed()
            ));
            f.evict_ms = f64::NAN;
            f.evict_ready_ms = f64::NAN;
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    f.evicted_blobs = st.store.blobs.saturating_sub(after.store.blobs);
    f.evicted_bytes = used.saturating_sub(after.store.bytes);
    println!(
        "   [{label}] eviction: {} blobs ({}) in {}",
        f.evicted_blobs,
        fmt_bytes(f.evicted_bytes),
        fmt_ms(f.evict_ms)
    );
    stop(&mut node, report)?;
    drop(node);
    drop(peer);
    fs::remove_dir_all(work)?;
    Ok(f)
}

/// The commit measured, for the report (`git rev-parse --short HEAD`).
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(open_registry_tests::tools::repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let lg = b1::describe_gen(ctx, &mut report)?;
    let sizes = ctx.sizes.clone().unwrap_or_else(|| {
        if ctx.smoke {
            vec![1000, 5000]
        } else {
            vec![10_000, 100_000, 1_000_000]
        }
    });
    let window = ctx.window.unwrap_or(if ctx.smoke {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(600)
    });
    let format = store_format();
    let cache = ctx.results.join("tmp");
    fs::create_dir_all(&cache)?;
    report.note(format!(
        "commit {}, store format {format}, stores cached in {}",
        commit(),
        cache.display()
    ));
    report.note(format!("node binary {}", ctx.node_bin.display()));
    report.note(format!(
        "DHT window {:.0}s, {} start(s) per size",
        window.as_secs_f64(),
        ctx.runs
    ));
    let mut all: Vec<Figures> = Vec::new();
    for &n in &sizes {
        let g = cached_store(ctx, &cache, n, &format)?;
        let work = cache.join(format!("b11-run-{}", size_label(n)));
        let f = measure(ctx, lg, &g, &work, window, &mut report)?;
        all.push(f);
    }
    table(&mut report, &sizes, &all);
    checks(ctx, &mut report, &sizes, &all);
    report.data(
        "sizes",
        json!(
            sizes
                .iter()
                .zip(&all)
                .map(|(n, f)| json!({"size": n, "figures": f.json()}))
                .collect::<Vec<_>>()
        ),
    );
    let svg = plot(&sizes, &all, ctx.smoke);
    fs::create_dir_all(&ctx.results)?;
    let path = ctx
        .results
        .join(format!("B11{}.svg", if ctx.smoke { "-smoke" } else { "" }));
    fs::write(&path, svg)?;
    report.note(format!("plot: {}", path.display()));
    Ok(report)
}

/// Every metric × size.
fn table(report: &mut Report, sizes: &[u64], all: &[Figures]) {
    let mut header = vec!["metric".to_owned()];
    header.extend(sizes.iter().map(|n| format!("{} blobs", size_label(*n))));
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new("B11 cost growth with the store", &header_refs);
    let base = all.first();
    let row = |name: &str, cell: &dyn Fn(&Figures) -> String| {
        let mut r = vec![name.to_owned()];
        r.extend(all.iter().map(cell));
        r
    };
    t.row(row("stored: blobs / packuments / tarballs", &|f| {
        format!("{} / {} / {}", f.blobs, f.packuments, f.tarballs)
    }));
    t.row(row("stored bytes", &|f| fmt_bytes(f.bytes)));
    t.row(row("store generated", &|f| {
        format!(
            "{:.0}s{}",
            f.gen_secs,
            if f.gen_fresh { "" } else { " (cached)" }
        )
    }));
    t.row(row("start: spawn → gateway answers (median)", &|f| {
        fmt_ms(f.start_ms)
    }));
    t.row(row("stop: SIGTERM → exit (median)", &|f| {
        fmt_ms(median(&f.stops_ms))
    }));
    t.row(row("RSS idle", &|f| {
        if f.rss_mb().is_nan() {
            "n/a".into()
        } else {
            format!("{:.1} MB", f.rss_mb())
        }
    }));
    t.row(row("status latency p50 / p99", &|f| {
        format!("{} / {}", fmt_ms(f.status_p50_ms), fmt_ms(f.status_p99_ms))
    }));
    let counter = all
        .iter()
        .map(|f| f.dht_counter.as_str())
        .find(|c| !c.is_empty())
        .unwrap_or("dht");
    t.row(row(&format!("DHT messages / min ({counter})"), &|f| {
        format!(
            "{} ({} in {:.0}s)",
            fmt_rate(f.dht_per_min()),
            f.dht_messages,
            f.dht_window_secs
        )
    }));
    // A hot path's rate, its p99, and the rate against the smallest store's.
    let hot = |rps: f64, p99: f64, base_rps: Option<f64>| {
        format!(
            "{} ({}), {}",
            fmt_rate(rps),
            fmt_ms(p99),
            fmt_ratio(base_rps.map_or(f64::NAN, |b| ratio(rps, b)))
        )
    };
    t.row(row("B1 packument req/s (p99), vs smallest", &|f| {
        hot(f.b1_rps, f.b1_p99_ms, base.map(|b| b.b1_rps))
    }));
    t.row(row("B2 tarball req/s (p99), vs smallest", &|f| {
        hot(f.b2_rps, f.b2_p99_ms, base.map(|b| b.b2_rps))
    }));
    t.row(row(
        "eviction of 10 % of the budget: spawn → done",
        &|f| fmt_ms(f.evict_ms),
    ));
    t.row(row("eviction: after the gateway answered", &|f| {
        fmt_ms(f.evict_ready_ms)
    }));
    t.row(row("eviction: blobs (bytes) evicted", &|f| {
        format!("{} ({})", f.evicted_blobs, fmt_bytes(f.evicted_bytes))
    }));
    report.table(t);
}

/// The targets: start and idle RSS at the largest size (1 M in a full run), DHT messages,
/// and the hot paths at every size against the smallest.
fn checks(ctx: &Ctx, report: &mut Report, sizes: &[u64], all: &[Figures]) {
    let (Some(&n), Some(big)) = (sizes.last(), all.last()) else {
        return;
    };
    let at = size_label(n);
    let note = if ctx.smoke || n < 1_000_000 {
        " (target is at 1M)"
    } else {
        ""
    };
    report.check(
        &format!("B11: start at {at} blobs{note}"),
        "≤ 2 s",
        fmt_ms(big.start_ms),
        (!big.start_ms.is_nan()).then_some(big.start_ms <= 2000.0),
    );
    report.check(
        &format!("B11: RSS idle at {at} blobs{note}"),
        "≤ 64 MB",
        format!("{:.1} MB", big.rss_mb()),
        (!big.rss_mb().is_nan()).then_some(big.rss_mb() <= 64.0),
    );
    // `dht_requests` counts only the requests of lookups, not announcements: no verdict on it.
    let per_s = big.dht_per_min() / 60.0;
    let counted = big.dht_counter == DHT_COUNTERS[0];
    report.check(
        &format!("B11: DHT messages at {at} blobs ({})", big.dht_counter),
        "≤ 10 /s",
        if counted {
            format!("{per_s:.1} /s")
        } else {
            format!(
                "{per_s:.1} /s (lookups only: no {} counter)",
                DHT_COUNTERS[0]
            )
        },
        (counted && !per_s.is_nan()).then_some(per_s <= 10.0),
    );
    let Some(base) = all.first() else { return };
    for (n, f) in sizes.iter().zip(all).skip(1) {
        for (what, x, b) in [
            ("B1 packument", f.b1_rps, base.b1_rps),
            ("B2 tarball", f.b2_rps, base.b2_rps),
        ] {
            let r = ratio(x, b);
            report.check(
                &format!(
                    "B11: {what} req/s at {} vs {}",
                    size_label(*n),
                    size_label(sizes[0])
                ),
                "≥ 0.9×",
                fmt_ratio(r),
                (!r.is_nan()).then_some(r >= 0.9),
            );
        }
    }
}

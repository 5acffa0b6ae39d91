//! B3p: B3's `npm ci` (the same generated lockfile, an empty npm cache) through a node B that
//! has no upstream (`--no-upstream`), bootstraps to node A and trusts A's records, so every
//! record, packument and tarball comes from A over libp2p. A is warm (filled from the
//! FakeUpstream, as in B3). B is cold in every run: a fresh node on a fresh data dir, started
//! just before its `npm ci` and stopped after it. Reference, in the same run and interleaved:
//! B3 itself, i.e. the same `npm ci` through A. Target: B ≤ 1.5× A.
//!
//! Checked on B after each run, through its `/-/metrics`: no upstream request, peer bytes > 0,
//! every tarball of the lockfile ingested from a peer; otherwise the run failed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use open_registry_tests::{FakeUpstream, Npm};
use serde_json::json;

use crate::report::{self, Report, Table, fmt_ratio, median};
use crate::targets::{self, Peer};
use crate::{Ctx, b3, sys};

/// How long B may take to see A.
const JOIN: Duration = Duration::from_secs(15);

/// Extra `npm ci` arguments for both A and B: a node that stops answering fails the run within
/// a minute instead of npm's five minutes per request and its retries.
const CI_EXTRA: &[&str] = &["--fetch-timeout=60000", "--fetch-retries=0"];

/// B's counters reported per run (deltas over the run; B is fresh, so totals).
const COUNTERS: &[&str] = &[
    "peer_requests",
    "peer_ingests",
    "peer_errors",
    "peer_bytes",
    "dht_queries",
    "dht_requests",
    "dht_query_micros",
    "upstream_requests",
];

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let up = FakeUpstream::start()?;
    let (variants, entries, graph) = b3::setup(ctx, &up)?;
    b3::describe(&mut report, entries, &graph);
    let a = targets::start_peer(ctx, Some(up.url()), &[], &[])?;
    println!("   node A {} (pid {:?}) {}", a.gateway(), a.pid(), a.addr);
    let a_npm = Npm::new(a.gateway())?;

    let mut raw = Vec::new();
    // Every B runs under the same identity (fresh and empty otherwise), so that A's routing
    // table does not fill with the dead Bs of earlier runs.
    let mut key: Option<Vec<u8>> = None;
    for v in &variants {
        let dir = v.dir.path();
        let t0 = Instant::now();
        let n = b3::warm(a.gateway(), dir)?;
        println!(
            "   {}: filled A with {n} requests in {:.1}s",
            v.label,
            t0.elapsed().as_secs_f64()
        );
        let t = b3::ci(&a_npm, dir, &[])?;
        println!("   {}: warm-up npm ci through A {t:.2}s", v.label);
        up.reset_hits();
        let (mut a_t, mut b_t, mut counters) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..ctx.runs {
            a_npm.clear_cache()?;
            a_t.push(b3::ci(&a_npm, dir, CI_EXTRA)?);
            let (secs, c) = through_cold_peer(ctx, &a, &mut key, dir, &mut report, v.label)?;
            b_t.push(secs);
            println!(
                "   run {}/{} {:<12} B3 (A) {:.2}s  B3p (B, cold, from A) {:.2}s  {}",
                run + 1,
                ctx.runs,
                v.label,
                a_t[run],
                b_t[run],
                COUNTERS
                    .iter()
                    .map(|k| format!("{k}={}", c.get(*k).copied().unwrap_or(0)))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            counters.push(c);
        }
        let hits = up.total_hits();
        if hits > 0 {
            report.fail(format!(
                "B3p {}: the upstream saw {hits} requests during the timed runs (A not warm)",
                v.label
            ));
        }
        let (am, bm) = (median(&a_t), median(&b_t));
        let r = report::ratio(bm, am);
        let med = |k: &str| {
            let xs: Vec<f64> = counters
                .iter()
                .map(|c| c.get(k).copied().unwrap_or(0) as f64)
                .collect();
            median(&xs)
        };
        let mut t = Table::new(
            &format!(
                "B3p npm ci, {entries} packages, lockfile {}: seconds, medians",
                v.label
            ),
            &[
                "B3: through warm A",
                "B3p: through cold B (no upstream, from A)",
                "B3p / B3",
                "B: blobs from A (bytes)",
                "B: DHT lookups (requests, time)",
            ],
        );
        t.row(vec![
            format!("{am:.2}"),
            format!("{bm:.2}"),
            fmt_ratio(r),
            format!(
                "{:.0} ({})",
                med("peer_ingests"),
                report::fmt_bytes(med("peer_bytes") as u64)
            ),
            format!(
                "{:.0} ({:.0}, {:.2} s summed)",
                med("dht_queries"),
                med("dht_requests"),
                med("dht_query_micros") / 1e6
            ),
        ]);
        report.table(t);
        report.check(
            &format!("B3p {}: cold B (from peer A) / warm A", v.label),
            "≤ 1.5×",
            fmt_ratio(r),
            (!r.is_nan()).then_some(r <= 1.5),
        );
        raw.push(json!({"variant": v.label, "b3_a": a_t, "b3p_b": b_t, "b_counters": counters}));
    }
    report.data("runs", json!(raw));
    report.data("lockfile_packages", json!(entries));
    report.note(format!("A after B3p: {}", sys::fmt_rss(a.pid())));
    Ok(report)
}

/// Starts a fresh B (no upstream, bootstrapping to and trusting A; under `key` when given, and
/// `key` is set to B's), runs `npm ci` in `dir` through it with an empty cache, checks B's
/// counters, stops B. Returns the `npm ci` time and B's counters.
fn through_cold_peer(
    ctx: &Ctx,
    a: &Peer,
    key: &mut Option<Vec<u8>>,
    dir: &std::path::Path,
    report: &mut Report,
    label: &str,
) -> Result<(f64, BTreeMap<String, u64>)> {
    let b = targets::start_peer_as(ctx, key.as_deref(), None, &[&a.addr], &[&a.id])?;
    *key = Some(b.key()?);
    b.wait_routing_table(1, JOIN)?;
    let npm = Npm::new(b.gateway())?;
    let secs = b3::ci(&npm, dir, CI_EXTRA)?;
    let m = b.metrics()?;
    let c: BTreeMap<String, u64> = COUNTERS
        .iter()
        .map(|k| ((*k).to_owned(), m.get(*k).copied().unwrap_or(0)))
        .collect();
    let tarballs = m.get("store_tarballs").copied().unwrap_or(0);
    if c["upstream_requests"] != 0 {
        report.fail(format!(
            "B3p {label}: B sent {} upstream requests (it has none configured)",
            c["upstream_requests"]
        ));
    }
    if c["peer_bytes"] == 0 || c["peer_ingests"] == 0 {
        report.fail(format!(
            "B3p {label}: B got nothing from peers ({c:?}): the install did not go through A"
        ));
    }
    if c["peer_ingests"] < tarballs {
        report.fail(format!(
            "B3p {label}: B stores {tarballs} tarballs but ingested only {} blobs from peers",
            c["peer_ingests"]
        ));
    }
    drop(b);
    Ok((secs, c))
}

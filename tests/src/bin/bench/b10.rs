//! B10: the regional benchmark, in the network laboratory (`open_registry_tests::lab`): is
//! `npm ci` through the network, in every region, as fast as npm straight from the upstream in
//! North America, and at least twice as fast as npm straight from the upstream in that region?
//!
//! The laboratory: the FakeUpstream on the host `npm` (North America); per region R one
//! community node `R-1` (a public address, `--upstream` that FakeUpstream, `--kad-server`) and
//! one laptop `R-laptop` behind its home router's NAT (`R-home`). Delays are the published
//! inter-region round trips at full scale (smoke runs: a tenth), no bandwidth limit.
//!
//! The workload: a generated dependency graph of ~250 packages (the same generator as B3, with
//! tarball sizes spread like npm's: most 5–50 KiB, some 50–100 KiB, a few 100 KiB–2 MiB;
//! packuments with histories of up to ~250 versions), published to the FakeUpstream, and its
//! `package-lock.json`, made by `npm install --package-lock-only` on the host `npm`. Its
//! `resolved` URLs name the FakeUpstream; every `npm ci` here passes
//! `--replace-registry-host=always`, so npm fetches them from the registry it is given, as it
//! does for npm's public registry by default.
//!
//! Before timing, every community node is made warm for the whole lockfile: every packument
//! and tarball GET through its gateway (so it mirrors them from the upstream, signs their
//! records and announces their blobs).
//!
//! Each run, for each region in turn:
//! - **direct from the region**: `npm ci` on `R-laptop`, straight against the FakeUpstream,
//!   empty npm cache. The NA laptop's is the "direct from NA" reference.
//! - **through the network**: a fresh node on `R-laptop` (empty data dir, the same identity in
//!   every run; `--no-upstream`, bootstrapped to `R-1` alone, trusting every community
//!   operator, threshold 1), started and connected to `R-1` (its round trip measured) before
//!   the clock starts; then `npm ci` through its gateway, empty npm cache. Bytes by region: the
//!   `peer_served_bytes` deltas of each community node over the install; the upstream's
//!   request count over it (it should be 0: the laptop has no upstream, the community nodes
//!   are warm).
//!
//! Targets, on the medians: through the network ≤ 1.2× the direct time from NA, and ≤ 0.5× the
//! direct time from the same region.
//!
//! B5 in the laboratory, after the runs: per region, a fresh laptop node asks for a package
//! (packument, then tarball, as npm does) that only one community node holds — the region's own
//! (the nearest holder) and the one farthest from the region. Each miss is compared with 2 ×
//! the configured round trip laptop ↔ holder + the transfer of the same bytes over a libp2p
//! connection on loopback, measured in the same run (the delay line adds latency, not
//! bandwidth, so that is the transfer time).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use open_registry_tests::lab::{Lab, Region};
use open_registry_tests::public::Operator;
use open_registry_tests::{
    FakeUpstream, LabNode, Node as _, Npm, Published, UpstreamOptions, http,
};
use serde_json::{Value, json};

use crate::perf::{self, Reference as _};
use crate::report::{self, Report, Table, fmt_bytes, fmt_ms, fmt_ratio, median};
use crate::synth::{self, Rng};
use crate::{Ctx, b3, load, sys, targets};

/// Extra `npm ci` arguments: a registry that stops answering fails the run within two
/// minutes instead of npm's five minutes per request and its retries.
const CI_EXTRA: &[&str] = &["--fetch-timeout=120000", "--fetch-retries=0"];

/// How long a fresh laptop node may take to connect to its region's community node.
const JOIN: Duration = Duration::from_secs(30);

/// How long a fresh laptop node is given, after that, to connect to the other community nodes
/// too (it goes on without them after this).
const SETTLE: Duration = Duration::from_secs(5);

/// How long one GET of the B5 misses may take.
const GET_TIMEOUT: Duration = Duration::from_secs(60);

/// The B5 misses' tarball size (as in B5).
const MISS_TARBALL: usize = 20 << 10;

/// The targets.
const TARGET_VS_NA: f64 = 1.2;
const TARGET_VS_REGION: f64 = 0.5;

/// The laptop node's counters reported per run.
const LAPTOP_COUNTERS: &[&str] = &[
    "peer_requests",
    "peer_ingests",
    "peer_errors",
    "peer_bytes",
    "dht_queries",
    "dht_requests",
    "dht_query_micros",
    "upstream_requests",
];

fn community(r: Region) -> String {
    format!("{}-1", r.short())
}

fn laptop(r: Region) -> String {
    format!("{}-laptop", r.short())
}

/// Tarball sizes of the installed versions: 80 % log-uniform 5–50 KiB, 15 % 50–100 KiB, 5 %
/// log-uniform 100 KiB–2 MiB.
fn npm_like_size(rng: &mut Rng) -> usize {
    let x = rng.next() as f64 / u64::MAX as f64;
    let (lo, hi): (f64, f64) = match rng.range(0, 99) {
        0..=79 => (5.0 * 1024.0, 50.0 * 1024.0),
        80..=94 => (50.0 * 1024.0, 100.0 * 1024.0),
        _ => (100.0 * 1024.0, 2048.0 * 1024.0),
    };
    (lo * (hi / lo).powf(x)) as usize
}

/// A community node, its region and its operator (kept for its data dir).
struct Community<'l> {
    region: Region,
    node: LabNode<'l>,
    _op: Operator,
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let regions: Vec<Region> = if ctx.smoke {
        vec![Region::NorthAmerica, Region::Europe]
    } else {
        Region::ALL.to_vec()
    };
    let scale = if ctx.smoke { 0.1 } else { 1.0 };
    let mut b = Lab::builder().upstream("npm").delay_scale(scale);
    for &r in &regions {
        b = b
            .host(&community(r), r)
            .laptop(&laptop(r), r, &format!("{}-home", r.short()));
    }
    let lab = b
        .build()
        .context("building the laboratory (it needs root)")?;
    report.note(format!(
        "laboratory: delays at {scale}× the published round trips (upstream ↔ eu {}, sa {}, \
         asia {}), no bandwidth limit; regions {}",
        fmt_ms(
            lab.one_way(Region::NorthAmerica, Region::Europe)
                .as_secs_f64()
                * 2000.0
        ),
        fmt_ms(
            lab.one_way(Region::NorthAmerica, Region::SouthAmerica)
                .as_secs_f64()
                * 2000.0
        ),
        fmt_ms(
            lab.one_way(Region::NorthAmerica, Region::Asia)
                .as_secs_f64()
                * 2000.0
        ),
        regions
            .iter()
            .map(|r| r.short())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // The upstream and the workload.
    let up = lab.enter("npm", || {
        FakeUpstream::start_with(UpstreamOptions {
            bind: Some(lab.addr("npm").into()),
            ..UpstreamOptions::default()
        })
    })??;
    let (packages, roots) = if ctx.smoke { (8, 3) } else { (250, 25) };
    let mut rng = Rng::new(10);
    let graph = synth::publish_graph_sized(&up, packages, roots, &mut rng, npm_like_size)?;
    let project = tempfile::Builder::new().prefix("bench-b10-").tempdir()?;
    let entries = make_project(&lab, &up, &graph, project.path())?;
    let dir = project.path();
    let lock_tarballs = lockfile_tarball_bytes(&up, dir)?;
    b3::describe(&mut report, entries, &graph);
    report.note(format!(
        "lockfile tarballs: {} in all; {} of them ≥ 100 KiB",
        fmt_bytes(lock_tarballs.iter().sum::<u64>()),
        lock_tarballs.iter().filter(|&&b| b >= 100 << 10).count()
    ));

    // The community nodes, warm.
    let t0 = Instant::now();
    let mut nodes: Vec<Community<'_>> = Vec::new();
    for (i, &r) in regions.iter().enumerate() {
        let op = Operator::new(141 + i as u8)?;
        let mut args = vec!["--upstream", up.url(), "--kad-server", "--max-age", "1h"];
        let first = nodes.first().map(|c| c.node.addr.clone());
        if let Some(b) = &first {
            args.extend(["--bootstrap", b.as_str()]);
        }
        let node = LabNode::start_binary(
            &lab,
            &community(r),
            Some(&ctx.node_bin),
            Some(op.dir()),
            &args,
        )?;
        sys::register_pid(node.pid());
        nodes.push(Community {
            region: r,
            node,
            _op: op,
        });
    }
    let warmed: Vec<Result<(usize, f64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|c| {
                s.spawn(|| {
                    let t = Instant::now();
                    let n = c.node.enter(|| b3::warm(c.node.gateway(), dir))??;
                    Ok((n, t.elapsed().as_secs_f64()))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a warm-up thread panicked"))
            })
            .collect()
    });
    let mut warm_notes = Vec::new();
    for (c, w) in nodes.iter().zip(warmed) {
        let (n, secs) = w.with_context(|| format!("warming {}", c.node.host))?;
        let held = metrics(&c.node)?
            .get("store_tarballs")
            .copied()
            .unwrap_or(0);
        if (held as usize) < lock_tarballs.len() {
            bail!(
                "{} holds {held} tarballs after its warm-up, the lockfile has {}",
                c.node.host,
                lock_tarballs.len()
            );
        }
        warm_notes.push(format!("{} {n} requests in {secs:.1}s", c.node.host));
    }
    // Their announcements go out a few at a time; give them a moment.
    std::thread::sleep(Duration::from_secs(if ctx.smoke { 1 } else { 5 }));
    report.note(format!(
        "community nodes started and warmed (every packument and tarball GET through each) in \
         {:.1}s: {}",
        t0.elapsed().as_secs_f64(),
        warm_notes.join(", ")
    ));
    let trust = nodes
        .iter()
        .map(|c| c.node.id.clone())
        .collect::<Vec<_>>()
        .join(",");

    // The runs: per region, direct then through the network.
    let laptop_ops: Vec<Operator> = (0..regions.len())
        .map(|i| Operator::new(151 + i as u8))
        .collect::<Result<_>>()?;
    let mut direct: BTreeMap<Region, Vec<f64>> = BTreeMap::new();
    let mut network: BTreeMap<Region, Vec<f64>> = BTreeMap::new();
    let mut served: BTreeMap<Region, Vec<BTreeMap<Region, u64>>> = BTreeMap::new();
    let mut raw = Vec::new();
    up.reset_hits();
    let mut hits_through_network = 0;
    for run in 0..ctx.runs {
        for (i, &r) in regions.iter().enumerate() {
            let host = laptop(r);
            let d = lab.enter(&host, || -> Result<f64> {
                let npm = Npm::new(up.url())?;
                b3::ci(&npm, dir, CI_EXTRA)
            })??;
            direct.entry(r).or_default().push(d);

            let home = &nodes[i].node;
            let key = fs::read(laptop_ops[i].dir().join(open_registry_node::KEY_FILE))?;
            let fresh = tempfile::Builder::new()
                .prefix("bench-b10-laptop-")
                .tempdir()?;
            write_key(fresh.path(), &key)?;
            let node = LabNode::start_binary(
                &lab,
                &host,
                Some(&ctx.node_bin),
                Some(fresh.path()),
                &[
                    "--no-upstream",
                    "--bootstrap",
                    home.addr.as_str(),
                    "--trust",
                    trust.as_str(),
                    "--trust-threshold",
                    "1",
                ],
            )?;
            sys::register_pid(node.pid());
            node.wait_measured(&[home.id.as_str()], JOIN)?;
            let others: Vec<&str> = nodes.iter().map(|c| c.node.id.as_str()).collect();
            let all_measured = node.wait_measured(&others, SETTLE).is_ok();
            let measured = node.rtts()?.iter().filter(|(_, r)| r.is_some()).count();

            let before = served_by(&nodes)?;
            let hits0 = up.total_hits();
            let t = node.enter(|| -> Result<f64> {
                let npm = Npm::new(node.gateway())?;
                b3::ci(&npm, dir, CI_EXTRA)
            })??;
            let after = served_by(&nodes)?;
            let hits = up.total_hits() - hits0;
            hits_through_network += hits;
            let bytes: BTreeMap<Region, u64> = nodes
                .iter()
                .map(|c| (c.region, after[&c.region] - before[&c.region]))
                .collect();
            let m = metrics(&node)?;
            let counters: BTreeMap<&str, u64> = LAPTOP_COUNTERS
                .iter()
                .map(|k| (*k, m.get(*k).copied().unwrap_or(0)))
                .collect();
            let ingested = counters["peer_ingests"];
            if (ingested as usize) < lock_tarballs.len() {
                report.fail(format!(
                    "B10 {r} run {}: the laptop node ingested {ingested} blobs from peers, the \
                     lockfile has {} tarballs",
                    run + 1,
                    lock_tarballs.len()
                ));
            }
            drop(node);
            network.entry(r).or_default().push(t);
            println!(
                "   run {}/{} {:<4} direct {d:.2}s  network {t:.2}s  (laptop measured {measured} \
                 peers{}; served: {}; upstream requests {hits}; {})",
                run + 1,
                ctx.runs,
                r.short(),
                if all_measured {
                    ", all community nodes"
                } else {
                    ""
                },
                fmt_served(&bytes),
                counters
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            raw.push(json!({"run": run, "region": r.short(), "direct_s": d, "network_s": t,
                "served_bytes": bytes.iter().map(|(r, b)| (r.short(), *b)).collect::<BTreeMap<_, _>>(),
                "upstream_requests": hits, "laptop": counters,
                "laptop_measured_peers": measured}));
            served.entry(r).or_default().push(bytes);
        }
    }
    if hits_through_network > 0 {
        report.fail(format!(
            "B10: the upstream saw {hits_through_network} requests during the installs through \
             the network (the laptops have no upstream: the community nodes were not warm)"
        ));
    }

    // The table.
    let na_direct = median(direct.get(&Region::NorthAmerica).map_or(&[][..], |v| v));
    let mut t = Table::new(
        &format!(
            "B10 npm ci, {entries} packages, empty npm cache: seconds, medians of {} runs",
            ctx.runs
        ),
        &[
            "region",
            "direct from NA",
            "direct from region",
            "through network",
            "× NA-direct",
            "× region-direct",
            "verdicts (≤ 1.2× NA, ≤ 0.5× region)",
            "bytes by region (median per install)",
        ],
    );
    let mut summary = Vec::new();
    for &r in &regions {
        let (dr, nw) = (median(&direct[&r]), median(&network[&r]));
        let (vs_na, vs_r) = (report::ratio(nw, na_direct), report::ratio(nw, dr));
        let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
        let bytes: BTreeMap<Region, u64> = nodes
            .iter()
            .map(|c| {
                let xs: Vec<f64> = served[&r].iter().map(|b| b[&c.region] as f64).collect();
                (c.region, median(&xs) as u64)
            })
            .collect();
        t.row(vec![
            r.short().to_owned(),
            format!("{na_direct:.2}"),
            format!("{dr:.2}"),
            format!("{nw:.2}"),
            fmt_ratio(vs_na),
            fmt_ratio(vs_r),
            format!(
                "{} / {}",
                verdict(vs_na <= TARGET_VS_NA),
                verdict(vs_r <= TARGET_VS_REGION)
            ),
            fmt_served(&bytes),
        ]);
        report.check(
            &format!("B10 {r}: through the network / direct from NA"),
            &format!("≤ {TARGET_VS_NA}×"),
            format!("{} ({nw:.2}s / {na_direct:.2}s)", fmt_ratio(vs_na)),
            (!vs_na.is_nan()).then_some(vs_na <= TARGET_VS_NA),
        );
        report.check(
            &format!("B10 {r}: through the network / direct from {r}"),
            &format!("≤ {TARGET_VS_REGION}×"),
            format!("{} ({nw:.2}s / {dr:.2}s)", fmt_ratio(vs_r)),
            (!vs_r.is_nan()).then_some(vs_r <= TARGET_VS_REGION),
        );
        summary.push(json!({"region": r.short(), "direct_na_s": na_direct, "direct_s": dr,
            "network_s": nw, "vs_na": vs_na, "vs_region": vs_r,
            "served_bytes": bytes.iter().map(|(r, b)| (r.short(), *b)).collect::<BTreeMap<_, _>>()}));
    }
    report.table(t);
    report.data("summary", json!(summary));
    report.data("runs", json!(raw));

    // B5 in the laboratory.
    cold_misses(
        ctx,
        &lab,
        &up,
        &nodes,
        &laptop_ops,
        &regions,
        &trust,
        &mut report,
    )?;
    report.data("lockfile_packages", json!(entries));
    report.data("delay_scale", json!(scale));
    drop(nodes);
    drop(up);
    lab.shutdown()?;
    Ok(report)
}

/// Writes `package.json` for the graph's roots into `dir` and makes `package-lock.json` with
/// `npm install --package-lock-only` on the host `npm`; returns the lockfile's package count.
fn make_project(lab: &Lab, up: &FakeUpstream, graph: &synth::Graph, dir: &Path) -> Result<usize> {
    let deps: serde_json::Map<String, Value> = graph
        .root_deps
        .iter()
        .map(|(n, r)| (n.clone(), json!(r)))
        .collect();
    let pkg = json!({"name": "bench-b10-app", "version": "1.0.0", "private": true,
        "dependencies": deps});
    fs::write(dir.join("package.json"), serde_json::to_vec_pretty(&pkg)?)?;
    lab.enter("npm", || -> Result<()> {
        let npm = Npm::new(up.url())?;
        npm.run(
            dir,
            &[
                "install",
                "--package-lock-only",
                "--ignore-scripts",
                "--loglevel=error",
            ],
        )?
        .ok()
        .context("making the lockfile against the fake upstream")?;
        Ok(())
    })??;
    let lock: Value = serde_json::from_slice(&fs::read(dir.join("package-lock.json"))?)?;
    Ok(lock["packages"]
        .as_object()
        .map_or(0, |p| p.keys().filter(|k| !k.is_empty()).count()))
}

/// The size of each distinct tarball the lockfile installs (a version nested in several
/// places is one tarball).
fn lockfile_tarball_bytes(up: &FakeUpstream, dir: &Path) -> Result<Vec<u64>> {
    let lock: Value = serde_json::from_slice(&fs::read(dir.join("package-lock.json"))?)?;
    let mut out = BTreeMap::new();
    for (key, p) in lock["packages"].as_object().into_iter().flatten() {
        let (Some(name), Some(version)) = (
            key.rsplit("node_modules/").next().filter(|n| !n.is_empty()),
            p["version"].as_str(),
        ) else {
            continue;
        };
        let file = format!("{}-{version}.tgz", name.rsplit('/').next().unwrap_or(name));
        let bytes = up
            .tarball(name, &file)
            .with_context(|| format!("no tarball {name}/{file}"))?;
        out.insert((name.to_owned(), file), bytes.len() as u64);
    }
    Ok(out.into_values().collect())
}

/// A fresh data dir holding the operator key `key` (a laptop's identity, the same each run).
fn write_key(dir: &Path, key: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(open_registry_node::KEY_FILE);
    fs::write(&path, key)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A node's `/-/metrics` counters by short name (see [`targets::parse_metrics`]).
fn metrics(node: &LabNode<'_>) -> Result<BTreeMap<String, u64>> {
    let r = node.get("/-/metrics", &[])?;
    if r.status != 200 {
        bail!("/-/metrics on {} answered {}", node.host, r.status);
    }
    Ok(targets::parse_metrics(&r.text()))
}

/// Every community node's `peer_served_bytes`, by region.
fn served_by(nodes: &[Community<'_>]) -> Result<BTreeMap<Region, u64>> {
    nodes
        .iter()
        .map(|c| {
            Ok((
                c.region,
                metrics(&c.node)?
                    .get("peer_served_bytes")
                    .copied()
                    .unwrap_or(0),
            ))
        })
        .collect()
}

/// `eu 1.2 MB, na 0 B, …`.
fn fmt_served(bytes: &BTreeMap<Region, u64>) -> String {
    bytes
        .iter()
        .map(|(r, b)| format!("{} {}", r.short(), fmt_bytes(*b)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One timed GET through a laptop node, with its counter deltas.
#[derive(Debug, Clone, Default)]
struct Miss {
    total_ms: f64,
    bytes: usize,
    dht_queries: u64,
    dht_query_ms: f64,
    peer_requests: u64,
}

/// One cold miss as npm makes it: the packument, then the tarball.
type MissPair = (Miss, Miss);

/// B5 in the laboratory: per region and run, a fresh laptop node misses a package only the
/// region's community node holds, and one only the farthest community node holds.
#[allow(clippy::too_many_arguments)]
fn cold_misses(
    ctx: &Ctx,
    lab: &Lab,
    up: &FakeUpstream,
    nodes: &[Community<'_>],
    laptop_ops: &[Operator],
    regions: &[Region],
    trust: &str,
    report: &mut Report,
) -> Result<()> {
    // Which regions ask: every one in full runs, one in smoke runs.
    let askers: Vec<usize> = if ctx.smoke {
        vec![regions.len() - 1]
    } else {
        (0..regions.len()).collect()
    };
    // (asker index, holder index, label, packages per run)
    let mut cases: Vec<(usize, usize, &'static str, Vec<Published>)> = Vec::new();
    for &i in &askers {
        let r = regions[i];
        let far = (0..nodes.len())
            .max_by_key(|&j| r.rtt(nodes[j].region))
            .context("no community node")?;
        for (holder, label) in [(i, "own region"), (far, "farthest")] {
            if holder == i && label == "farthest" {
                continue;
            }
            let mut ps = Vec::new();
            for run in 0..ctx.runs {
                let name = format!(
                    "bench-b10-miss-{}-{}-{run}",
                    r.short(),
                    nodes[holder].region.short()
                );
                let p = synth::publish_tarball(up, &name, MISS_TARBALL)?;
                let h = &nodes[holder].node;
                for path in [&p.packument_path, &p.tarball_path] {
                    let r = h.get(
                        path,
                        &[("Accept", load::NPM_ACCEPT), ("Accept-Encoding", "gzip")],
                    )?;
                    if r.status != 200 {
                        bail!("{path} on {}: {}", h.host, r.status);
                    }
                }
                ps.push(p);
            }
            cases.push((i, holder, label, ps));
        }
    }
    std::thread::sleep(Duration::from_secs(if ctx.smoke { 1 } else { 3 }));

    let mut results: Vec<(usize, usize, &str, Vec<MissPair>)> = Vec::new();
    for (i, holder, label, ps) in &cases {
        let r = regions[*i];
        let host = laptop(r);
        let key = fs::read(laptop_ops[*i].dir().join(open_registry_node::KEY_FILE))?;
        let mut misses = Vec::new();
        for p in ps {
            let fresh = tempfile::Builder::new()
                .prefix("bench-b10-laptop-")
                .tempdir()?;
            write_key(fresh.path(), &key)?;
            let node = LabNode::start_binary(
                lab,
                &host,
                Some(&ctx.node_bin),
                Some(fresh.path()),
                &[
                    "--no-upstream",
                    "--bootstrap",
                    nodes[*i].node.addr.as_str(),
                    "--trust",
                    trust,
                    "--trust-threshold",
                    "1",
                ],
            )?;
            sys::register_pid(node.pid());
            node.wait_measured(&[nodes[*i].node.id.as_str()], JOIN)?;
            let others: Vec<&str> = nodes.iter().map(|c| c.node.id.as_str()).collect();
            let _ = node.wait_measured(&others, SETTLE);
            let connected_to_holder = node
                .rtts()?
                .iter()
                .any(|(id, rtt)| *id == nodes[*holder].node.id && rtt.is_some());
            let pack = timed_get(&node, &p.packument_path, &[("Accept", load::NPM_ACCEPT)])?;
            let tar = timed_get(&node, &p.tarball_path, &[("Accept-Encoding", "gzip")])?;
            if tar.bytes != p.size {
                report.fail(format!(
                    "B10/B5 {}: {} came back with {} bytes, {} published",
                    r.short(),
                    p.tarball_path,
                    tar.bytes,
                    p.size
                ));
            }
            if pack.peer_requests + tar.peer_requests == 0 {
                report.fail(format!(
                    "B10/B5 {}: {} was not fetched from a peer",
                    r.short(),
                    p.name
                ));
            }
            println!(
                "   B5 {:<4} holder {} ({label}{}): packument {} ({} lookups, {}), tarball {} \
                 ({} lookups, {})",
                r.short(),
                nodes[*holder].node.host,
                if connected_to_holder {
                    ", measured before"
                } else {
                    ", not connected before"
                },
                fmt_ms(pack.total_ms),
                pack.dht_queries,
                fmt_ms(pack.dht_query_ms),
                fmt_ms(tar.total_ms),
                tar.dht_queries,
                fmt_ms(tar.dht_query_ms),
            );
            drop(node);
            misses.push((pack, tar));
        }
        results.push((*i, *holder, label, misses));
    }

    // The transfer reference: the same bytes over a libp2p connection on loopback.
    let lp = perf::Libp2p::start()?;
    let transfer = |len: u64| -> Result<f64> {
        let xs = (0..5)
            .map(|_| lp.many(1, len.max(1), 1).map(|d| d.as_secs_f64() * 1000.0))
            .collect::<Result<Vec<_>>>()?;
        Ok(median(&xs))
    };
    let mut t = Table::new(
        "B10/B5 cold misses through a fresh laptop node (medians)",
        &[
            "laptop",
            "holder",
            "RTT to holder",
            "packument (DHT lookups)",
            "tarball (DHT lookups)",
            "minimum: 2 RTT + transfer (packument / tarball)",
            "× minimum (packument / tarball)",
            "verdicts",
        ],
    );
    let mut data = Vec::new();
    for (i, holder, label, misses) in &results {
        let r = regions[*i];
        let rtt = lab.rtt(&laptop(r), &nodes[*holder].node.host).as_secs_f64() * 1000.0;
        let med =
            |f: &dyn Fn(&(Miss, Miss)) -> f64| median(&misses.iter().map(f).collect::<Vec<_>>());
        let (pt, tt) = (med(&|m| m.0.total_ms), med(&|m| m.1.total_ms));
        let (pq, tq) = (
            med(&|m| m.0.dht_queries as f64),
            med(&|m| m.1.dht_queries as f64),
        );
        let (pb, tb) = (med(&|m| m.0.bytes as f64), med(&|m| m.1.bytes as f64));
        let (pmin, tmin) = (
            2.0 * rtt + transfer(pb as u64)?,
            2.0 * rtt + transfer(tb as u64)?,
        );
        let (pr, tr) = (report::ratio(pt, pmin), report::ratio(tt, tmin));
        let v = |ok: bool| if ok { "PASS" } else { "MISS" };
        t.row(vec![
            laptop(r),
            format!("{} ({label})", nodes[*holder].node.host),
            fmt_ms(rtt),
            format!("{} ({pq:.0})", fmt_ms(pt)),
            format!("{} ({tq:.0})", fmt_ms(tt)),
            format!("{} / {}", fmt_ms(pmin), fmt_ms(tmin)),
            format!("{} / {}", fmt_ratio(pr), fmt_ratio(tr)),
            format!("{} / {}", v(pt <= pmin), v(tt <= tmin)),
        ]);
        for (what, total, min) in [("packument", pt, pmin), ("tarball", tt, tmin)] {
            report.check(
                &format!(
                    "B5 in the lab, {} laptop, holder {} ({label}), {what} miss",
                    r.short(),
                    nodes[*holder].node.host
                ),
                &format!("≤ {} (2 × {} + transfer)", fmt_ms(min), fmt_ms(rtt)),
                fmt_ms(total),
                (!total.is_nan()).then_some(total <= min),
            );
        }
        data.push(
            json!({"laptop": r.short(), "holder": nodes[*holder].region.short(),
            "case": label, "rtt_ms": rtt, "packument_ms": pt, "tarball_ms": tt,
            "packument_dht_queries": pq, "tarball_dht_queries": tq,
            "packument_dht_ms": med(&|m| m.0.dht_query_ms),
            "tarball_dht_ms": med(&|m| m.1.dht_query_ms),
            "minimum_packument_ms": pmin, "minimum_tarball_ms": tmin}),
        );
    }
    report.table(t);
    report.data("cold_misses", json!(data));
    Ok(())
}

/// GET `path` through the laptop node, from inside its namespace, timed, with its counter
/// deltas.
fn timed_get(node: &LabNode<'_>, path: &str, headers: &[(&str, &str)]) -> Result<Miss> {
    let before = metrics(node)?;
    let url = format!("{}{path}", node.gateway());
    let r = node.enter(|| http::request_timed("GET", &url, headers, &[], GET_TIMEOUT))??;
    let after = metrics(node)?;
    if r.response.status != 200 {
        bail!(
            "{path} through the {} node answered {}: {}",
            node.host,
            r.response.status,
            r.response.text()
        );
    }
    let d = |k: &str| targets::delta(&before, &after, k);
    Ok(Miss {
        total_ms: r.total.as_secs_f64() * 1000.0,
        bytes: r.response.body.len(),
        dht_queries: d("dht_queries"),
        dht_query_ms: d("dht_query_micros") as f64 / 1000.0,
        peer_requests: d("peer_requests"),
    })
}

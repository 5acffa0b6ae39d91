//! B3: `npm ci` of a realistic lockfile (a generated graph of a few hundred packages, with
//! nested duplicates and 2–200 KB tarballs) with an empty npm cache, through a warm node, vs
//! `npm ci --offline` on a warm cache (the client-only floor) and vs a warm Verdaccio
//! (proxying the same FakeUpstream). Reported: the node's overhead above the floor as a ratio
//! to Verdaccio's; target ≤ 0.3.
//!
//! Two lockfile variants, both run by default:
//! - `resolved`: as real lockfiles are, with `resolved` tarball URLs (made against the
//!   FakeUpstream) that npm points at the registry under test (`--replace-registry-host=always`,
//!   as it does for npm's public registry by default): npm downloads tarballs only.
//! - `no-resolved`: without `resolved` (`omit-lockfile-registry-resolved`): npm fetches every
//!   abbreviated packument, then the tarball.

use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use open_registry_tests::{FakeUpstream, Npm};
use serde_json::{Value, json};

use crate::report::{self, Report, Table, fmt_ratio, median};
use crate::synth::{self, Rng};
use crate::targets::{self, Nginx, Verdaccio};
use crate::{Ctx, sys};

/// Arguments of every timed `npm ci`.
const CI_ARGS: &[&str] = &[
    "ci",
    "--replace-registry-host=always",
    "--ignore-scripts",
    "--loglevel=error",
];

/// The project (package.json + lockfile) of one variant.
#[derive(Debug)]
pub(crate) struct Variant {
    pub(crate) label: &'static str,
    pub(crate) dir: tempfile::TempDir,
}

/// Publishes the graph and writes the two project variants; returns them with the lockfile's
/// package count.
pub(crate) fn setup(ctx: &Ctx, up: &FakeUpstream) -> Result<(Vec<Variant>, usize, synth::Graph)> {
    let (packages, roots) = if ctx.smoke { (8, 3) } else { (240, 24) };
    let mut rng = Rng::new(3);
    let graph = synth::publish_graph(up, packages, roots, &mut rng)?;
    let base = tempfile::Builder::new().prefix("bench-b3-").tempdir()?;
    let deps: serde_json::Map<String, Value> = graph
        .root_deps
        .iter()
        .map(|(n, r)| (n.clone(), json!(r)))
        .collect();
    let pkg = json!({"name": "bench-b3-app", "version": "1.0.0", "private": true,
        "dependencies": deps});
    fs::write(
        base.path().join("package.json"),
        serde_json::to_vec_pretty(&pkg)?,
    )?;
    let npm = Npm::new(up.url())?;
    npm.run(
        base.path(),
        &[
            "install",
            "--package-lock-only",
            "--ignore-scripts",
            "--loglevel=error",
        ],
    )?
    .ok()
    .context("making the lockfile against the fake upstream")?;
    let lock: Value = serde_json::from_slice(&fs::read(base.path().join("package-lock.json"))?)?;
    let entries = lock["packages"]
        .as_object()
        .map_or(0, |p| p.keys().filter(|k| !k.is_empty()).count());
    let mut variants = Vec::new();
    for label in ["resolved", "no-resolved"] {
        if ctx.smoke && label == "no-resolved" {
            continue;
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("bench-b3-{label}-"))
            .tempdir()?;
        let mut lock = lock.clone();
        if label == "no-resolved"
            && let Some(pkgs) = lock["packages"].as_object_mut()
        {
            for (_, p) in pkgs.iter_mut() {
                if let Some(o) = p.as_object_mut() {
                    o.remove("resolved");
                }
            }
        }
        fs::write(
            dir.path().join("package.json"),
            serde_json::to_vec_pretty(&pkg)?,
        )?;
        fs::write(
            dir.path().join("package-lock.json"),
            serde_json::to_vec_pretty(&lock)?,
        )?;
        if label == "no-resolved" {
            fs::write(
                dir.path().join(".npmrc"),
                "omit-lockfile-registry-resolved=true\n",
            )?;
        }
        variants.push(Variant { label, dir });
    }
    Ok((variants, entries, graph))
}

/// `npm ci ARGS` in `dir`; its wall time in seconds.
pub(crate) fn ci(npm: &Npm, dir: &Path, extra: &[&str]) -> Result<f64> {
    let mut args = CI_ARGS.to_vec();
    args.extend_from_slice(extra);
    let out = npm.run(dir, &args)?.ok()?;
    if !dir.join("node_modules").exists() {
        bail!("npm ci left no node_modules in {}", dir.display());
    }
    Ok(out.elapsed.as_secs_f64())
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let up = FakeUpstream::start()?;
    let (variants, entries, graph) = setup(ctx, &up)?;
    describe(&mut report, entries, &graph);
    let node = targets::start_node(ctx, up.url(), &[])?;
    println!("   node {} (pid {:?})", node.gateway(), node.pid());
    let verdaccio = if Verdaccio::wanted(ctx, &mut report) {
        let v = Verdaccio::start(up.url())?;
        println!("   verdaccio {} (pid {:?})", v.url(), v.pid());
        Some(v)
    } else {
        None
    };
    let floor_npm = Npm::new(node.gateway())?;
    let node_npm = Npm::new(node.gateway())?;
    let verd_npm = verdaccio.as_ref().map(|v| Npm::new(v.url())).transpose()?;
    // A diagnostic reference for the tarball-only variant: nginx serving the same tarballs as
    // static files, i.e. the overhead any server leaves to the npm client itself.
    let nginx = match variants.iter().find(|v| v.label == "resolved") {
        Some(v) if ctx.nginx && Nginx::available() => {
            Some(Nginx::start(&tarball_files(&up, v.dir.path())?)?)
        }
        _ => {
            report.note("skipped: nginx (static tarballs) reference");
            None
        }
    };
    let nginx_npm = nginx.as_ref().map(|n| Npm::new(n.url())).transpose()?;

    let mut raw = Vec::new();
    for v in &variants {
        let dir = v.dir.path();
        // Fill the node first with parallel GETs of every packument and tarball: quick, and it
        // keeps the cold ingest clear of the node's 30 s access-time flush (which can
        // deadlock sled; see docs/benchmarks.md).
        let t0 = std::time::Instant::now();
        let n = warm(node.gateway(), dir)?;
        println!(
            "   {}: filled the node with {n} requests in {:.1}s",
            v.label,
            t0.elapsed().as_secs_f64()
        );
        // Warm everything: the node and Verdaccio fetch from the upstream, the floor's npm
        // cache fills (from the node).
        let t = ci(&floor_npm, dir, &[])?;
        println!("   {}: warm-up through the node {t:.2}s", v.label);
        if let (Some(n), Some(_)) = (&verd_npm, &verdaccio) {
            let t = ci(n, dir, &[])?;
            println!("   {}: warm-up through Verdaccio {t:.2}s", v.label);
        }
        up.reset_hits();
        let (mut floor, mut node_t, mut verd_t) = (Vec::new(), Vec::new(), Vec::new());
        let mut nginx_t = Vec::new();
        for run in 0..ctx.runs {
            if let Some(n) = nginx_npm.as_ref().filter(|_| v.label == "resolved") {
                n.clear_cache()?;
                nginx_t.push(ci(n, dir, &[])?);
            }
            floor.push(ci(&floor_npm, dir, &["--offline"])?);
            node_npm.clear_cache()?;
            node_t.push(ci(&node_npm, dir, &[])?);
            if let Some(n) = &verd_npm {
                n.clear_cache()?;
                verd_t.push(ci(n, dir, &[])?);
            }
            println!(
                "   run {}/{} {:<12} floor {:.2}s  node {:.2}s  verdaccio {}  nginx {}",
                run + 1,
                ctx.runs,
                v.label,
                floor[run],
                node_t[run],
                verd_t
                    .get(run)
                    .map_or("skipped".into(), |t| format!("{t:.2}s")),
                nginx_t.get(run).map_or("-".into(), |t| format!("{t:.2}s"))
            );
        }
        let hits = up.total_hits();
        if hits > 0 {
            report.fail(format!(
                "B3 {}: the upstream saw {hits} requests during the timed runs (not warm, or npm \
                 went around the registry under test)",
                v.label
            ));
        }
        let (f, n, vd) = (median(&floor), median(&node_t), median(&verd_t));
        let (no, vo) = (n - f, vd - f);
        let r = report::ratio(no, vo);
        let mut t = Table::new(
            &format!(
                "B3 npm ci, {entries} packages, lockfile {}: seconds, medians",
                v.label
            ),
            &[
                "floor (--offline, warm cache)",
                "node (empty cache)",
                "Verdaccio (empty cache)",
                "node overhead",
                "Verdaccio overhead",
                "node / Verdaccio overhead",
                "nginx, static tarballs (overhead)",
            ],
        );
        let s = |x: f64| {
            if x.is_nan() {
                "skipped".into()
            } else {
                format!("{x:.2}")
            }
        };
        let ng = median(&nginx_t);
        let ng_cell = if ng.is_nan() {
            "-".into()
        } else {
            format!("{ng:.2} ({:.2})", ng - f)
        };
        t.row(vec![s(f), s(n), s(vd), s(no), s(vo), fmt_ratio(r), ng_cell]);
        report.table(t);
        report.check(
            &format!("B3 {}: node overhead / Verdaccio overhead", v.label),
            "≤ 0.3×",
            fmt_ratio(r),
            (!r.is_nan()).then_some(r <= 0.3),
        );
        raw.push(json!({"variant": v.label, "floor": floor, "node": node_t,
            "verdaccio": verd_t, "nginx_static": nginx_t}));
    }
    report.data("runs", json!(raw));
    report.data("lockfile_packages", json!(entries));
    report.note(format!("node after B3: {}", sys::fmt_rss(node.pid())));
    if let Some(v) = &verdaccio {
        report.note(format!("Verdaccio after B3: {}", sys::fmt_rss(v.pid())));
    }
    Ok(report)
}

/// Notes the lockfile's size and npm's version in the report.
pub(crate) fn describe(report: &mut Report, entries: usize, graph: &synth::Graph) {
    report.note(format!(
        "lockfile: {entries} packages installed ({} packages / {} versions published, {:.1} MB of tarballs)",
        graph.packages,
        graph.versions,
        graph.tarball_bytes as f64 / 1e6
    ));
    report.note(format!("npm {}", npm_version()));
}

/// The lockfile's tarballs as (URL path, bytes), for nginx.
fn tarball_files(up: &FakeUpstream, dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let lock: Value = serde_json::from_slice(&fs::read(dir.join("package-lock.json"))?)?;
    let mut out = Vec::new();
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
        out.push((format!("/{name}/-/{file}"), bytes.to_vec()));
    }
    Ok(out)
}

/// GETs every packument and tarball of the lockfile in `dir` from `base`, 16 packages at a
/// time, each package's packument first and then its tarballs one after the other; returns the
/// number of requests.
///
/// One package's tarballs are never fetched at once: a node re-signs its record for the
/// package after each tarball it stores, and before `c3d9b34` two concurrent re-signs could
/// lose one tarball's id from the record (peers then cannot find that tarball; B3p needs them
/// all).
pub(crate) fn warm(base: &str, dir: &Path) -> Result<usize> {
    let lock: Value = serde_json::from_slice(&fs::read(dir.join("package-lock.json"))?)?;
    let mut packages =
        std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for (key, p) in lock["packages"].as_object().into_iter().flatten() {
        let Some(name) = key.rsplit("node_modules/").next().filter(|n| !n.is_empty()) else {
            continue;
        };
        let Some(version) = p["version"].as_str() else {
            continue;
        };
        let file = name.rsplit('/').next().unwrap_or(name);
        packages
            .entry(format!("/{name}"))
            .or_default()
            .insert(format!("/{name}/-/{file}-{version}.tgz"));
    }
    let groups: Vec<Vec<String>> = packages
        .into_iter()
        .map(|(packument, tarballs)| std::iter::once(packument).chain(tarballs).collect())
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(group) = groups.get(i) else { break };
                    for p in group {
                        let r = targets::get(
                            &format!("{base}{p}"),
                            &[
                                ("Accept", crate::load::NPM_ACCEPT),
                                ("Accept-Encoding", "gzip"),
                            ],
                            std::time::Duration::from_secs(60),
                        );
                        let problem = match r {
                            Ok(r) if r.status == 200 => continue,
                            Ok(r) => format!("{p}: {} {}", r.status, r.text()),
                            Err(e) => format!("{p}: {e:#}"),
                        };
                        failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(problem);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    if !failed.is_empty() {
        bail!(
            "{} warm-up requests failed, e.g. {}",
            failed.len(),
            failed[0]
        );
    }
    Ok(groups.iter().map(Vec::len).sum())
}

/// `npm --version`.
pub(crate) fn npm_version() -> String {
    std::process::Command::new("npm")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

//! B8: memory in real use. `npm install` without a lockfile (empty npm cache, 16 sockets) of
//! a generated project that depends on packages whose full packuments range from 1 to 25 MB
//! (thousands of versions each, like the largest real ones), served by a FakeUpstream that
//! behaves like the mirrors reachable here: it ignores npm's abbreviated Accept header (always
//! the full document) and sends no validators.
//!
//! Measured, back to back in one run: npm straight against the FakeUpstream (the floor); a cold
//! node at default settings, then a repeat install through it (empty npm cache, no lockfile,
//! no node_modules) with the render cache's hit ratio from its metrics; a cold Verdaccio and
//! its repeat install. For each: install times, peak RSS (VmHWM) and RSS after. Target: the
//! node's peak RSS ≤ 96 MB.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use open_registry_tests::{FakeUpstream, Npm, UpstreamOptions};
use serde_json::{Value, json};

use crate::report::{Report, Table, fmt_bytes};
use crate::synth::{self, Rng};
use crate::targets::{self, Verdaccio};
use crate::{Ctx, b3, sys};

/// The peak RSS target, bytes.
const TARGET_PEAK: f64 = 96e6;

/// Arguments of every timed install: no lockfile in the project, so npm resolves every
/// dependency from its packument; npm's default of 16 sockets, said explicitly.
const INSTALL_ARGS: &[&str] = &[
    "install",
    "--maxsockets=16",
    "--ignore-scripts",
    "--loglevel=error",
];

/// The packuments' full sizes: `n` sizes spaced evenly on a log scale from `lo` to `hi`.
fn sizes(ctx: &Ctx) -> Vec<usize> {
    let (n, lo, hi): (usize, f64, f64) = if ctx.smoke {
        (3, 20e3, 300e3)
    } else {
        (24, 1e6, 25e6)
    };
    (0..n)
        .map(|i| (lo * (hi / lo).powf(i as f64 / (n - 1) as f64)) as usize)
        .collect()
}

/// What was published.
#[derive(Debug)]
struct Published {
    /// (name, latest version).
    packages: Vec<(String, String)>,
    bytes: Vec<usize>,
    versions: Vec<usize>,
}

/// Generates the packuments into `up` and writes the project into `dir`.
fn setup(ctx: &Ctx, up: &FakeUpstream, dir: &Path) -> Result<Published> {
    let mut rng = Rng::new(8);
    let mut p = Published {
        packages: Vec::new(),
        bytes: Vec::new(),
        versions: Vec::new(),
    };
    let t0 = std::time::Instant::now();
    for (i, target) in sizes(ctx).into_iter().enumerate() {
        let name = format!("b8-{}-{i}", synth::WORDS[i * 7 % synth::WORDS.len()]);
        let doc = synth::big_packument(up.url(), &name, target, &mut rng)?;
        p.bytes.push(doc.body.len());
        p.versions.push(doc.versions);
        p.packages.push((name.clone(), doc.latest.clone()));
        let (file, tarball) = doc.tarball;
        up.put_packument(
            &name,
            Bytes::from(doc.body),
            vec![(file, Bytes::from(tarball))],
        );
    }
    println!(
        "   generated {} packuments, {} in all, in {:.2}s",
        p.packages.len(),
        fmt_bytes(p.bytes.iter().sum::<usize>() as u64),
        t0.elapsed().as_secs_f64()
    );
    let deps: serde_json::Map<String, Value> = p
        .packages
        .iter()
        .map(|(n, v)| (n.clone(), json!(format!("^{v}"))))
        .collect();
    let pkg = json!({"name": "bench-b8-app", "version": "1.0.0", "private": true,
        "dependencies": deps});
    fs::write(dir.join("package.json"), serde_json::to_vec_pretty(&pkg)?)?;
    Ok(p)
}

/// One install from scratch: empty npm cache, no lockfile, no node_modules. Returns its wall
/// time in seconds after checking that every package was installed.
fn install(npm: &Npm, dir: &Path, packages: &[(String, String)]) -> Result<f64> {
    npm.clear_cache()?;
    for p in ["node_modules", "package-lock.json"] {
        let p = dir.join(p);
        if p.is_dir() {
            fs::remove_dir_all(&p)?;
        } else if p.exists() {
            fs::remove_file(&p)?;
        }
    }
    let out = npm.run(dir, INSTALL_ARGS)?.ok()?;
    for (name, version) in packages {
        let m = dir.join("node_modules").join(name).join("package.json");
        let v: Value = serde_json::from_slice(
            &fs::read(&m).with_context(|| format!("npm install left no {}", m.display()))?,
        )?;
        if v["version"].as_str() != Some(version) {
            bail!("{name}: installed {}, not {version}", v["version"]);
        }
    }
    Ok(out.elapsed.as_secs_f64())
}

/// One target's figures.
#[derive(Debug)]
struct Figures {
    cold: f64,
    repeat: f64,
    /// (VmRSS, VmHWM) KiB after the cold install and after the repeat.
    after_cold: Option<(u64, u64)>,
    after_repeat: Option<(u64, u64)>,
    /// Requests the upstream saw during each install.
    upstream_cold: usize,
    upstream_repeat: usize,
}

impl Figures {
    fn json(&self) -> Value {
        json!({"cold_secs": self.cold, "repeat_secs": self.repeat,
            "rss_hwm_kib_after_cold": self.after_cold,
            "rss_hwm_kib_after_repeat": self.after_repeat,
            "upstream_requests": {"cold": self.upstream_cold, "repeat": self.upstream_repeat}})
    }
}

/// A cold install through a freshly started server (process `pid`), `between`, then a repeat
/// install.
fn measure(
    label: &str,
    up: &FakeUpstream,
    npm: &Npm,
    dir: &Path,
    packages: &[(String, String)],
    pid: Option<u32>,
    between: impl FnOnce() -> Result<()>,
) -> Result<Figures> {
    up.reset_hits();
    let cold = install(npm, dir, packages)?;
    let after_cold = pid.and_then(sys::rss_kib);
    let upstream_cold = up.total_hits();
    println!(
        "   {label} cold {cold:.2}s ({upstream_cold} upstream requests), {}",
        sys::fmt_rss(pid)
    );
    between()?;
    up.reset_hits();
    let repeat = install(npm, dir, packages)?;
    let after_repeat = pid.and_then(sys::rss_kib);
    let upstream_repeat = up.total_hits();
    println!(
        "   {label} repeat {repeat:.2}s ({upstream_repeat} upstream requests), {}",
        sys::fmt_rss(pid)
    );
    Ok(Figures {
        cold,
        repeat,
        after_cold,
        after_repeat,
        upstream_cold,
        upstream_repeat,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// MB (decimal) of a KiB count, as the targets are written.
fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// The node's metrics (short names, see [`targets::parse_metrics`]).
fn metrics(node: &open_registry_tests::NodeProcess) -> Result<BTreeMap<String, u64>> {
    let r = node.get("/-/metrics", &[])?;
    if r.status != 200 {
        bail!("{}/-/metrics answered {}", node.gateway(), r.status);
    }
    Ok(targets::parse_metrics(&r.text()))
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let up = FakeUpstream::start_with(UpstreamOptions {
        no_validators: true,
        ..UpstreamOptions::default()
    })?;
    let project = tempfile::Builder::new().prefix("bench-b8-").tempdir()?;
    let dir = project.path();
    let published = setup(ctx, &up, dir)?;
    let packages = &published.packages;
    let total: usize = published.bytes.iter().sum();
    report.note(format!(
        "project: {} dependencies; full packuments {} to {} ({} in all), {} to {} versions; \
         upstream: full documents whatever the Accept header, no ETag or Last-Modified",
        packages.len(),
        fmt_bytes(*published.bytes.iter().min().unwrap_or(&0) as u64),
        fmt_bytes(*published.bytes.iter().max().unwrap_or(&0) as u64),
        fmt_bytes(total as u64),
        published.versions.iter().min().unwrap_or(&0),
        published.versions.iter().max().unwrap_or(&0),
    ));
    report.note(format!(
        "npm {}: `npm {}`, empty npm cache, no lockfile",
        b3::npm_version(),
        INSTALL_ARGS.join(" ")
    ));

    // The floor: npm straight against the upstream.
    let floor_npm = Npm::new(up.url())?;
    let floor = install(&floor_npm, dir, packages)?;
    println!("   floor (npm against the upstream) {floor:.2}s");

    // The node, cold.
    let mut data = json!({"floor_secs": floor, "packument_bytes": published.bytes,
        "versions": published.versions});
    let node = targets::start_node(ctx, up.url(), &[])?;
    println!("   node {} (pid {:?})", node.gateway(), node.pid());
    // Let the start-up key fetch finish before counting: wait for the request itself.
    open_registry_tests::probe::wait_for(
        Duration::from_secs(10),
        "the node's start-up key fetch",
        || (up.hits("/-/npm/v1/keys") > 0).then_some(()),
    )?;
    let idle = node.pid().and_then(sys::rss_kib);
    let npm = Npm::new(node.gateway())?;
    let mut before = BTreeMap::new();
    let nf = measure("node", &up, &npm, dir, packages, node.pid(), || {
        before = metrics(&node)?;
        Ok(())
    })?;
    let after = metrics(&node)?;
    drop(node);
    let d = |k: &str| targets::delta(&before, &after, k);
    let (hits, misses, renders) = (
        d("gateway_render_cache_hits"),
        d("gateway_render_cache_misses"),
        d("gateway_render_cache_renders"),
    );
    let packument_2xx = d("gateway_requests_total{route=\"packument\",status=\"2xx\"}");
    let ratio = if hits + misses > 0 {
        hits as f64 / (hits + misses) as f64
    } else {
        f64::NAN
    };
    let cache = |k: &str| after.get(k).copied().unwrap_or(0);

    // Verdaccio, cold, then a repeat.
    let mut vf = None;
    if Verdaccio::wanted(ctx, &mut report) {
        let v = Verdaccio::start(up.url())?;
        println!("   verdaccio {} (pid {:?})", v.url(), v.pid());
        let vnpm = Npm::new(v.url())?;
        let f = measure("verdaccio", &up, &vnpm, dir, packages, v.pid(), || Ok(()))?;
        vf = Some(f);
    }

    let mut t = Table::new(
        &format!(
            "B8 npm install, no lockfile, {} packages, {} of full packuments, 16 sockets",
            packages.len(),
            fmt_bytes(total as u64)
        ),
        &[
            "target",
            "cold install",
            "repeat install",
            "peak RSS (VmHWM) after cold",
            "peak RSS (VmHWM) after repeat",
            "RSS after repeat",
        ],
    );
    let hwm = |m: Option<(u64, u64)>| m.map_or("n/a".into(), |(_, h)| mib(h));
    let rss = |m: Option<(u64, u64)>| m.map_or("n/a".into(), |(r, _)| mib(r));
    t.row(vec![
        "npm → upstream (floor)".into(),
        format!("{floor:.2} s"),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    t.row(vec![
        "node".into(),
        format!("{:.2} s", nf.cold),
        format!("{:.2} s", nf.repeat),
        hwm(nf.after_cold),
        hwm(nf.after_repeat),
        rss(nf.after_repeat),
    ]);
    match &vf {
        Some(f) => t.row(vec![
            "Verdaccio".into(),
            format!("{:.2} s", f.cold),
            format!("{:.2} s", f.repeat),
            hwm(f.after_cold),
            hwm(f.after_repeat),
            rss(f.after_repeat),
        ]),
        None => t.row(vec![
            "Verdaccio".into(),
            "skipped".into(),
            "skipped".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]),
    }
    report.table(t);

    let mut t = Table::new(
        "B8 the node's render cache on the repeat install",
        &[
            "packument requests (2xx)",
            "render cache hits",
            "misses",
            "renders",
            "hit ratio",
            "cache bytes / entries after",
            "upstream requests (cold / repeat)",
        ],
    );
    let ratio_cell = if ratio.is_nan() {
        "n/a".into()
    } else {
        format!("{:.0} %", ratio * 100.0)
    };
    t.row(vec![
        packument_2xx.to_string(),
        hits.to_string(),
        misses.to_string(),
        renders.to_string(),
        ratio_cell.clone(),
        format!(
            "{} / {}",
            fmt_bytes(cache("gateway_render_cache_bytes")),
            cache("gateway_render_cache_entries")
        ),
        format!("{} / {}", nf.upstream_cold, nf.upstream_repeat),
    ]);
    report.table(t);
    if let Some((r, h)) = idle {
        report.note(format!(
            "node idle before the installs: RSS {}, peak {}",
            mib(r),
            mib(h)
        ));
    }

    let peak = nf.after_repeat.or(nf.after_cold).map(|(_, h)| h);
    match peak {
        Some(h) => report.check(
            "B8: node peak RSS (VmHWM), default settings",
            "≤ 96 MB",
            format!("{:.1} MB", mb(h)),
            Some(mb(h) * 1e6 <= TARGET_PEAK),
        ),
        None => report.fail("B8: the node's /proc status could not be read"),
    }
    report.note(format!(
        "render cache hit ratio on the repeat install: {ratio_cell} ({hits} hits, {misses} misses)"
    ));
    if let Some(h) = peak {
        println!(
            "   peak RSS ≤ 96 MB: {} ({:.1} MB)",
            if mb(h) * 1e6 <= TARGET_PEAK {
                "met"
            } else {
                "not met"
            },
            mb(h)
        );
    }
    data["node"] = nf.json();
    data["node"]["idle_rss_hwm_kib"] = json!(idle);
    data["node"]["render_cache"] = json!({"hits": hits, "misses": misses, "renders": renders,
        "hit_ratio": (!ratio.is_nan()).then_some(ratio), "packument_requests_2xx": packument_2xx,
        "bytes_after": cache("gateway_render_cache_bytes"),
        "entries_after": cache("gateway_render_cache_entries")});
    if let Some(f) = &vf {
        data["verdaccio"] = f.json();
    }
    report.data("b8", data);
    Ok(report)
}

//! B7: 200 concurrent cold GETs of one tarball (nothing cached: not the packument, not the
//! tarball) with every upstream answer delayed 50 ms: how many fetches reach the upstream (the
//! FakeUpstream counts them), the latency distribution, and the node's peak RSS (VmHWM). Then
//! the B1, B2 and B3 workloads run against the same node and its RSS is read again (target
//! ≤ 64 MB). Verdaccio gets 100 cold GETs (docs/benchmarks.md: 100 upstream fetches) and the same
//! workloads, for its RSS.

use std::time::Duration;

use anyhow::Result;
use open_registry_tests::{FakeUpstream, Fault, Npm, Target};
use serde_json::json;

use crate::b1::{self, Case};
use crate::load::{self, LoadGen, Spec};
use crate::report::{Report, Table, fmt_ms, fmt_rate};
use crate::synth::{self, Rng};
use crate::targets::{self, Verdaccio};
use crate::{Ctx, b3, sys};

/// Latency percentiles of a burst: min, p50, p90, p99, max.
fn percentiles(ms: &[f64]) -> [f64; 5] {
    let mut v: Vec<f64> = ms.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return [f64::NAN; 5];
    }
    let at = |p: f64| v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1];
    [v[0], at(0.5), at(0.9), at(0.99), v[v.len() - 1]]
}

/// Fires `n` cold GETs at `base + path`; returns (200 answers, percentiles, upstream tarball
/// fetches, upstream packument fetches, answers of exactly `size` bytes with Content-Length).
fn cold_burst(
    up: &FakeUpstream,
    base: &str,
    name: &str,
    path: &str,
    n: usize,
    size: usize,
) -> Result<(usize, [f64; 5], usize, usize, usize)> {
    up.reset_hits();
    let res = load::burst(&format!("{base}{path}"), n, Duration::from_secs(60))?;
    let ok = res.iter().filter(|(s, _, _)| *s == 200).count();
    let exact = res
        .iter()
        .filter(|(s, _, len)| *s == 200 && *len == size)
        .count();
    let ms: Vec<f64> = res.iter().map(|r| r.1).collect();
    Ok((
        ok,
        percentiles(&ms),
        up.hits(path),
        up.hits(&format!("/{name}")),
        exact,
    ))
}

/// The B1, B2 and B3 workloads (published into `up` beforehand) against `base`.
fn workloads(
    ctx: &Ctx,
    lg: LoadGen,
    base: &str,
    cases: &[Case],
    b3_dir: &std::path::Path,
    verdaccio: Option<&Verdaccio>,
) -> Result<()> {
    for c in cases {
        let _ = targets::get(
            &format!("{base}{}", c.path),
            &[("Accept", load::NPM_ACCEPT), ("Accept-Encoding", "gzip")],
            Duration::from_secs(120),
        );
        let o = load::run(
            lg,
            &Spec {
                url: format!("{base}{}", c.path),
                headers: c.headers.clone(),
                connections: b1::CONNECTIONS,
                duration: ctx.duration,
            },
        )?;
        println!(
            "   {base} {:<10} {:>9} req/s p99 {} {}",
            c.label,
            fmt_rate(o.rps),
            fmt_ms(o.p99_ms),
            o.problems()
        );
        if let Some(v) = verdaccio
            && (o.timeouts > 0 || o.errors > 0)
        {
            v.recover(Duration::from_secs(180));
        }
    }
    // Fill quickly first (see b3::warm), then install twice with an empty npm cache.
    b3::warm(base, b3_dir)?;
    let npm = Npm::new(base)?;
    for _ in 0..2 {
        npm.clear_cache()?;
        let out = npm
            .run(
                b3_dir,
                &[
                    "ci",
                    "--replace-registry-host=always",
                    "--ignore-scripts",
                    "--loglevel=error",
                ],
            )?
            .ok()?;
        println!("   {base} npm ci {:.2}s", out.elapsed.as_secs_f64());
    }
    Ok(())
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let lg = b1::describe_gen(ctx, &mut report)?;
    let (n_node, n_verd, size) = if ctx.smoke {
        (50, 20, 20 << 10)
    } else {
        (200, 100, 40 << 10)
    };
    let up = FakeUpstream::start()?;
    let p = synth::publish_tarball(&up, "bench-b7-cold", size)?;
    let size = p.size;
    up.set_fault(Target::All, Fault::Delay(Duration::from_millis(50)));
    let node = targets::start_node(ctx, up.url(), &[])?;
    println!("   node {} (pid {:?})", node.gateway(), node.pid());
    // Let the start-up key fetch finish before counting.
    std::thread::sleep(Duration::from_millis(300));
    let (ok, pct, tar_hits, pack_hits, exact) =
        cold_burst(&up, node.gateway(), &p.name, &p.tarball_path, n_node, size)?;
    let node_mem = node.pid().and_then(sys::rss_kib);
    let mut t = Table::new(
        "B7 concurrent cold GETs of one tarball, upstream delay 50 ms",
        &[
            "server",
            "requests (ok)",
            "upstream tarball fetches",
            "upstream packument fetches",
            "latency min / p50 / p90 / p99 / max",
            "RSS after (peak)",
        ],
    );
    let fmt_pct = |p: [f64; 5]| p.iter().map(|x| fmt_ms(*x)).collect::<Vec<_>>().join(" / ");
    let fmt_mem = |m: Option<(u64, u64)>| {
        m.map_or("n/a".into(), |(r, h)| {
            format!(
                "{:.1} MiB ({:.1} MiB)",
                r as f64 / 1024.0,
                h as f64 / 1024.0
            )
        })
    };
    t.row(vec![
        "node".into(),
        format!("{n_node} ({ok})"),
        tar_hits.to_string(),
        pack_hits.to_string(),
        fmt_pct(pct),
        fmt_mem(node_mem),
    ]);
    if exact != n_node {
        report.fail(format!(
            "B7: only {exact} of {n_node} cold GETs got the whole tarball ({ok} answered 200)"
        ));
    }
    report.check(
        &format!("B7: upstream tarball fetches for {n_node} cold GETs"),
        "1",
        tar_hits.to_string(),
        Some(tar_hits == 1),
    );
    let mut data = json!({"node": {"requests": n_node, "ok": ok, "tarball_fetches": tar_hits,
        "packument_fetches": pack_hits, "latency_ms": pct, "rss_kib": node_mem}});

    let verdaccio = if Verdaccio::wanted(ctx, &mut report) {
        let v = Verdaccio::start(up.url())?;
        println!("   verdaccio {} (pid {:?})", v.url(), v.pid());
        let (ok, pct, tar_hits, pack_hits, _) =
            cold_burst(&up, v.url(), &p.name, &p.tarball_path, n_verd, size)?;
        let mem = v.pid().and_then(sys::rss_kib);
        t.row(vec![
            "Verdaccio".into(),
            format!("{n_verd} ({ok})"),
            tar_hits.to_string(),
            pack_hits.to_string(),
            fmt_pct(pct),
            fmt_mem(mem),
        ]);
        data["verdaccio"] = json!({"requests": n_verd, "ok": ok, "tarball_fetches": tar_hits,
            "packument_fetches": pack_hits, "latency_ms": pct, "rss_kib": mem});
        Some(v)
    } else {
        None
    };
    report.table(t);
    up.clear_faults();

    // RSS after the B1–B3 workloads.
    let mut rng = Rng::new(1);
    let sizes: &[(&str, usize)] = if ctx.smoke {
        &[("small", 4_800), ("mid", 20_000)]
    } else {
        &[("small", 4_800), ("mid", 111_000), ("huge", 2_100_000)]
    };
    let mut cases = Vec::new();
    for (label, target) in sizes {
        let name = format!("bench-b1-{label}");
        synth::publish_sized(&up, &name, *target, &mut rng)?;
        cases.push(Case {
            label: format!("B1 {label}"),
            path: format!("/{name}"),
            headers: b1::npm_headers(),
        });
    }
    let b2 = synth::publish_tarball(
        &up,
        "bench-b2-tarball",
        if ctx.smoke { 20 << 10 } else { 40 << 10 },
    )?;
    cases.push(Case {
        label: "B2".into(),
        path: b2.tarball_path.clone(),
        headers: vec![("Accept-Encoding".into(), "gzip".into())],
    });
    let (variants, entries, _) = b3::setup(ctx, &up)?;
    let b3_dir = variants[0].dir.path();
    println!(
        "   workloads: {} HTTP cases, npm ci of {entries} packages",
        cases.len()
    );
    let mut t = Table::new(
        "B7 memory after the B1–B3 workloads",
        &["server", "RSS", "peak RSS (VmHWM)"],
    );
    workloads(ctx, lg, node.gateway(), &cases, b3_dir, None)?;
    let after = node.pid().and_then(sys::rss_kib);
    let mib = |kib: u64| kib as f64 / 1024.0;
    if let Some((rss, hwm)) = after {
        t.row(vec![
            "node".into(),
            format!("{:.1} MiB", mib(rss)),
            format!("{:.1} MiB", mib(hwm)),
        ]);
        report.check(
            "B7: node RSS after B1–B3",
            "≤ 64 MB",
            format!("{:.1} MB", rss as f64 * 1024.0 / 1e6),
            Some(rss as f64 * 1024.0 <= 64e6),
        );
    }
    data["node_after"] = json!(after);
    if let Some(v) = &verdaccio {
        workloads(ctx, lg, v.url(), &cases, b3_dir, Some(v))?;
        let mem = v.pid().and_then(sys::rss_kib);
        if let Some((rss, hwm)) = mem {
            t.row(vec![
                "Verdaccio".into(),
                format!("{:.1} MiB", mib(rss)),
                format!("{:.1} MiB", mib(hwm)),
            ]);
        }
        data["verdaccio_after"] = json!(mem);
    }
    report.table(t);
    report.data("b7", data);
    Ok(report)
}

//! B1: hot abbreviated packuments (small ~4.8 KB, mid ~111 KB, huge ~2.1 MB abbreviated),
//! npm's Accept header and `Accept-Encoding: gzip`, `wrk -t1 -c50`: req/s and p99 of the node
//! vs nginx serving the node's own final bytes (identity and `.gz`, `gzip_static on`) and vs a
//! warm Verdaccio serving the same package.
//!
//! [`matrix`] (shared with B2 and B7) runs every case against every target, back to back,
//! `runs` times, and keeps every outcome; the tables quote medians.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{Result, bail};
use open_registry_tests::{FakeUpstream, UpstreamOptions};
use serde_json::json;

use crate::load::{self, LoadGen, NPM_ACCEPT, Outcome, Spec};
use crate::report::{self, Report, Table, fmt_bytes, fmt_ms, fmt_rate, fmt_ratio, median};
use crate::synth::{self, Rng};
use crate::targets::{self, Nginx, Verdaccio};
use crate::{Ctx, profile, sys};

/// Connections, as docs/benchmarks.md's `wrk -c50`.
pub(crate) const CONNECTIONS: usize = 50;

/// One URL path measured on every target, with the request headers.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) label: String,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
}

/// A server under load: its name and base URL.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) base: String,
    /// Verdaccio may be left overloaded by a run: wait for it before the next one.
    pub(crate) verdaccio: Option<String>,
    /// The process to profile with `--profile` (the node).
    pub(crate) profile_pid: Option<u32>,
}

/// `outcomes[case][target]` = one outcome per run.
pub(crate) type Matrix = Vec<Vec<Vec<Outcome>>>;

/// Runs every case on every target, `ctx.runs` times, interleaved (case by case, target after
/// target) so that drift on a noisy machine hits all targets alike.
pub(crate) fn matrix(
    ctx: &Ctx,
    lg: LoadGen,
    cases: &[Case],
    targets: &[Target],
    verdaccio: Option<&Verdaccio>,
) -> Result<Matrix> {
    let mut m: Matrix = vec![vec![Vec::new(); targets.len()]; cases.len()];
    for run in 0..ctx.runs {
        for (ci, case) in cases.iter().enumerate() {
            for (ti, t) in targets.iter().enumerate() {
                let spec = Spec {
                    url: format!("{}{}", t.base, case.path),
                    headers: case.headers.clone(),
                    connections: CONNECTIONS,
                    duration: ctx.duration,
                };
                let perf = match t.profile_pid {
                    Some(pid) if ctx.profile && run == 0 => {
                        profile::start(ctx, pid, &format!("{}-{}", case.label, t.name))
                    }
                    _ => None,
                };
                let o = load::run(lg, &spec)?;
                if let Some(p) = perf {
                    p.finish();
                }
                println!(
                    "   run {}/{} {:<14} {:<10} {:>9} req/s  p50 {:>9}  p99 {:>9}  {}",
                    run + 1,
                    ctx.runs,
                    case.label,
                    t.name,
                    fmt_rate(o.rps),
                    fmt_ms(o.p50_ms),
                    fmt_ms(o.p99_ms),
                    o.problems()
                );
                if t.verdaccio.is_some()
                    && (o.timeouts > 0 || o.errors > 0)
                    && let Some(v) = verdaccio
                    && !v.recover(Duration::from_secs(180))
                {
                    println!("   Verdaccio did not recover within 180 s");
                }
                m[ci][ti].push(o);
            }
        }
    }
    Ok(m)
}

/// Median req/s and p99 over the runs.
pub(crate) fn med(outcomes: &[Outcome]) -> (f64, f64) {
    let rps: Vec<f64> = outcomes.iter().map(|o| o.rps).collect();
    let p99: Vec<f64> = outcomes.iter().map(|o| o.p99_ms).collect();
    (median(&rps), median(&p99))
}

/// `12,345 (p99 1.20 ms)`.
pub(crate) fn cell(outcomes: &[Outcome]) -> String {
    let (rps, p99) = med(outcomes);
    let problems: Vec<String> = outcomes
        .iter()
        .map(Outcome::problems)
        .filter(|p| !p.is_empty())
        .collect();
    let mut s = format!("{} (p99 {})", fmt_rate(rps), fmt_ms(p99));
    if let Some(p) = problems.first() {
        s.push_str(&format!(" [{p}]"));
    }
    s
}

pub(crate) fn npm_headers() -> Vec<(String, String)> {
    vec![
        ("Accept".into(), NPM_ACCEPT.into()),
        ("Accept-Encoding".into(), "gzip".into()),
    ]
}

/// The load generator line for the report.
pub(crate) fn describe_gen(ctx: &Ctx, report: &mut Report) -> Result<LoadGen> {
    let lg = ctx.loadgen.resolve()?;
    let how = format!(
        "-t1 -c{CONNECTIONS} -d{}s, {} run(s) per target, median quoted",
        ctx.duration.as_secs_f64(),
        ctx.runs
    );
    match lg {
        LoadGen::Wrk => report.note(format!("load: wrk {how}")),
        _ => report.note(format!(
            "load: built-in generator (wrk {}), {how}",
            if sys::which("wrk").is_some() {
                "not chosen"
            } else {
                "not installed"
            }
        )),
    }
    Ok(lg)
}

pub(crate) fn gunzip(b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out)?;
    Ok(out)
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let lg = describe_gen(ctx, &mut report)?;
    let sizes: &[(&str, usize)] = if ctx.smoke {
        &[("small", 4_800), ("mid", 20_000)]
    } else {
        &[("small", 4_800), ("mid", 111_000), ("huge", 2_100_000)]
    };
    let up = FakeUpstream::start_with(UpstreamOptions {
        sign: true,
        ..UpstreamOptions::default()
    })?;
    let mut rng = Rng::new(1);
    let mut cases = Vec::new();
    for (label, target) in sizes {
        let name = format!("bench-b1-{label}");
        let versions = synth::publish_sized(&up, &name, *target, &mut rng)?;
        cases.push((label.to_string(), name, versions));
    }
    let node = targets::start_node(ctx, up.url(), &[])?;
    println!("   node {} (pid {:?})", node.gateway(), node.pid());

    // The node's final bytes, checked: abbreviated, gzip decodes to identity.
    let mut files = Vec::new();
    let mut sizes_row = Vec::new();
    for (label, name, versions) in &cases {
        let url = format!("{}/{name}", node.gateway());
        let plain = targets::get(&url, &[("Accept", NPM_ACCEPT)], Duration::from_secs(60))?;
        let gz = targets::get(
            &url,
            &[("Accept", NPM_ACCEPT), ("Accept-Encoding", "gzip")],
            Duration::from_secs(60),
        )?;
        if plain.status != 200 || gz.status != 200 {
            bail!(
                "the node answered {} / {} for {name}",
                plain.status,
                gz.status
            );
        }
        if !plain
            .header("content-type")
            .is_some_and(|c| c.contains("vnd.npm.install-v1"))
        {
            report.fail(format!(
                "{name}: content-type {:?}, not the abbreviated form",
                plain.header("content-type")
            ));
        }
        if gz.header("content-encoding") != Some("gzip") {
            report.fail(format!(
                "{name}: no Content-Encoding: gzip with Accept-Encoding: gzip"
            ));
        } else if gunzip(&gz.body)? != plain.body {
            report.fail(format!(
                "{name}: the gzip body does not decode to the identity body"
            ));
        }
        sizes_row.push(json!({"case": label, "versions": versions,
            "abbreviated": plain.body.len(), "gzip": gz.body.len()}));
        println!(
            "   {label}: {name}, {versions} versions, abbreviated {} / gzip {}",
            fmt_bytes(plain.body.len() as u64),
            fmt_bytes(gz.body.len() as u64)
        );
        files.push((format!("/{name}"), plain.body.clone()));
        files.push((format!("/{name}.gz"), gz.body.clone()));
    }
    report.data("documents", json!(sizes_row));

    let mut tlist = Vec::new();
    let nginx = start_nginx(ctx, &mut report, &files)?;
    if let Some(n) = &nginx {
        for (_, name, _) in &cases {
            let r = targets::get(
                &format!("{}/{name}", n.url()),
                &[("Accept-Encoding", "gzip")],
                Duration::from_secs(10),
            )?;
            if r.header("content-encoding") != Some("gzip") {
                report.fail(format!("nginx did not serve {name}.gz (gzip_static)"));
            }
        }
        tlist.push(Target {
            name: "nginx",
            base: n.url().to_owned(),
            verdaccio: None,
            profile_pid: None,
        });
    }
    tlist.push(Target {
        name: "node",
        base: node.gateway().to_owned(),
        verdaccio: None,
        profile_pid: node.pid(),
    });
    let verdaccio = if Verdaccio::wanted(ctx, &mut report) {
        let v = Verdaccio::start(up.url())?;
        println!("   verdaccio {} (pid {:?})", v.url(), v.pid());
        for (label, name, _) in &cases {
            // Warm: Verdaccio fetches from its uplink and stores the package.
            let r = targets::get(
                &format!("{}/{name}", v.url()),
                &[("Accept", NPM_ACCEPT), ("Accept-Encoding", "gzip")],
                Duration::from_secs(120),
            )?;
            println!(
                "   verdaccio {label}: {} {} bytes, content-encoding {:?}",
                r.status,
                r.body.len(),
                r.header("content-encoding")
            );
            if r.status != 200 {
                bail!(
                    "Verdaccio answered {} for {name}\n{}",
                    r.status,
                    v.log_tail()
                );
            }
        }
        tlist.push(Target {
            name: "verdaccio",
            base: v.url().to_owned(),
            verdaccio: Some(v.url().to_owned()),
            profile_pid: None,
        });
        Some(v)
    } else {
        None
    };

    let cases_spec: Vec<Case> = cases
        .iter()
        .map(|(label, name, _)| Case {
            label: label.clone(),
            path: format!("/{name}"),
            headers: npm_headers(),
        })
        .collect();
    let m = matrix(ctx, lg, &cases_spec, &tlist, verdaccio.as_ref())?;

    let idx = |n: &str| tlist.iter().position(|t| t.name == n);
    let (ni, vi, gi) = (idx("node"), idx("verdaccio"), idx("nginx"));
    let mut t = Table::new(
        "B1 hot abbreviated packuments: req/s (p99), medians",
        &[
            "size (abbr / gzip)",
            "nginx",
            "node",
            "Verdaccio",
            "node / nginx",
            "node / Verdaccio",
        ],
    );
    let mut raw = Vec::new();
    for (ci, (label, _, _)) in cases.iter().enumerate() {
        let docs = &sizes_row[ci];
        let get = |i: Option<usize>| i.map(|i| m[ci][i].clone());
        let (node_o, nginx_o, verd_o) = (get(ni), get(gi), get(vi));
        let node_rps = node_o.as_deref().map_or(f64::NAN, |o| med(o).0);
        let node_p99 = node_o.as_deref().map_or(f64::NAN, |o| med(o).1);
        let nginx_rps = nginx_o.as_deref().map_or(f64::NAN, |o| med(o).0);
        let verd_rps = verd_o.as_deref().map_or(f64::NAN, |o| med(o).0);
        let vs_nginx = report::ratio(node_rps, nginx_rps);
        t.row(vec![
            format!(
                "{label} ({} / {})",
                fmt_bytes(docs["abbreviated"].as_u64().unwrap_or(0)),
                fmt_bytes(docs["gzip"].as_u64().unwrap_or(0))
            ),
            nginx_o.as_deref().map_or("skipped".into(), cell),
            node_o.as_deref().map_or("n/a".into(), cell),
            verd_o.as_deref().map_or("skipped".into(), cell),
            fmt_ratio(vs_nginx),
            fmt_ratio(report::ratio(node_rps, verd_rps)),
        ]);
        report.check(
            &format!("B1 {label}: node / nginx req/s"),
            "≥ 0.5×",
            fmt_ratio(vs_nginx),
            (!vs_nginx.is_nan()).then_some(vs_nginx >= 0.5),
        );
        if *label != "huge" {
            report.check(
                &format!("B1 {label}: node p99"),
                "< 10 ms",
                fmt_ms(node_p99),
                (!node_p99.is_nan()).then_some(node_p99 < 10.0),
            );
        }
        if node_o
            .iter()
            .flatten()
            .any(|o| o.non_2xx > 0 || o.requests == 0)
        {
            report.fail(format!("B1 {label}: the node answered errors or nothing"));
        }
        let j = |o: &Option<Vec<Outcome>>| {
            o.as_ref()
                .map(|v| json!(v.iter().map(Outcome::json).collect::<Vec<_>>()))
        };
        raw.push(json!({"case": label, "nginx": j(&nginx_o), "node": j(&node_o), "verdaccio": j(&verd_o)}));
    }
    report.table(t);
    report.data("runs", json!(raw));
    report.note(format!("node after B1: {}", sys::fmt_rss(node.pid())));
    if let Some(v) = &verdaccio {
        report.note(format!("Verdaccio after B1: {}", sys::fmt_rss(v.pid())));
    }
    Ok(report)
}

/// nginx when wanted and installed; a `skipped:` note otherwise.
pub(crate) fn start_nginx(
    ctx: &Ctx,
    report: &mut Report,
    files: &[(String, Vec<u8>)],
) -> Result<Option<Nginx>> {
    if !ctx.nginx {
        report.note("skipped: nginx (--no-nginx)");
        return Ok(None);
    }
    if !Nginx::available() {
        if ctx.smoke {
            report.note("skipped: nginx not installed");
            return Ok(None);
        }
        bail!("nginx is not installed (tests/bench/run installs it; or pass --no-nginx)");
    }
    let n = Nginx::start(files)?;
    println!("   nginx {}", n.url());
    Ok(Some(n))
}

//! B2: a hot tarball (40 KiB; 20 KiB in smoke runs) with `Accept-Encoding: gzip` under
//! `wrk -t1 -c50`: the node vs nginx serving the same file and vs a warm Verdaccio. Also checks
//! what the node sends: the exact bytes, `Content-Length`, and no `Content-Encoding` (a `.tgz`
//! is never compressed again).

use std::time::Duration;

use anyhow::{Result, bail};
use open_registry_tests::FakeUpstream;
use serde_json::json;

use crate::b1::{self, Case, Target, cell, med};
use crate::load::Outcome;
use crate::report::{self, Report, Table, fmt_bytes, fmt_ratio};
use crate::targets::{self, Verdaccio};
use crate::{Ctx, synth, sys};

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let lg = b1::describe_gen(ctx, &mut report)?;
    let size = if ctx.smoke { 20 << 10 } else { 40 << 10 };
    let up = FakeUpstream::start()?;
    let p = synth::publish_tarball(&up, "bench-b2-tarball", size)?;
    let expected = up
        .tarball(
            &p.name,
            p.tarball_path.rsplit('/').next().unwrap_or_default(),
        )
        .ok_or_else(|| anyhow::anyhow!("the tarball was not published"))?;
    println!(
        "   tarball {} ({})",
        p.tarball_path,
        fmt_bytes(p.size as u64)
    );
    let node = targets::start_node(ctx, up.url(), &[])?;
    println!("   node {} (pid {:?})", node.gateway(), node.pid());
    let gz = [("Accept-Encoding", "gzip")];
    let url = format!("{}{}", node.gateway(), p.tarball_path);
    // Cold (fetch, verify, store), then hot: the checks are made on the hot answer.
    let cold = targets::get(&url, &gz, Duration::from_secs(60))?;
    if cold.status != 200 {
        bail!("the node answered {} for {url}", cold.status);
    }
    let r = targets::get(&url, &gz, Duration::from_secs(60))?;
    let len = r.header("content-length").map(str::to_owned);
    let checks = [
        (
            "Content-Length present and exact",
            len.as_deref() == Some(expected.len().to_string().as_str()),
        ),
        (
            "no Content-Encoding (never re-compressed)",
            r.header("content-encoding").is_none(),
        ),
        ("body = the upstream's bytes", r.body == expected.as_ref()),
    ];
    for (what, ok) in checks {
        report.check(
            &format!("B2 node: {what}"),
            "yes",
            if ok { "yes" } else { "no" }.into(),
            Some(ok),
        );
        if !ok {
            report.fail(format!("B2 node: {what}: headers {:?}", r.headers));
        }
    }

    let mut tlist = Vec::new();
    let files = vec![(p.tarball_path.clone(), expected.to_vec())];
    let nginx = b1::start_nginx(ctx, &mut report, &files)?;
    if let Some(n) = &nginx {
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
        // Warm: the packument, then the tarball (cached by Verdaccio).
        let _ = targets::get(
            &format!("{}/{}", v.url(), p.name),
            &gz,
            Duration::from_secs(60),
        )?;
        let r = targets::get(
            &format!("{}{}", v.url(), p.tarball_path),
            &gz,
            Duration::from_secs(60),
        )?;
        println!(
            "   verdaccio: {} {} bytes, content-length {:?}, content-encoding {:?}",
            r.status,
            r.body.len(),
            r.header("content-length"),
            r.header("content-encoding")
        );
        if r.status != 200 {
            bail!("Verdaccio answered {}\n{}", r.status, v.log_tail());
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
    let cases = [Case {
        label: "tarball".into(),
        path: p.tarball_path.clone(),
        headers: vec![("Accept-Encoding".into(), "gzip".into())],
    }];
    let m = b1::matrix(ctx, lg, &cases, &tlist, verdaccio.as_ref())?;
    let idx = |n: &str| tlist.iter().position(|t| t.name == n);
    let get = |i: Option<usize>| i.map(|i| m[0][i].clone());
    let (node_o, nginx_o, verd_o) = (get(idx("node")), get(idx("nginx")), get(idx("verdaccio")));
    let rps = |o: &Option<Vec<Outcome>>| o.as_deref().map_or(f64::NAN, |o| med(o).0);
    let vs_nginx = report::ratio(rps(&node_o), rps(&nginx_o));
    let mut t = Table::new(
        "B2 hot tarball: req/s (p99), medians",
        &[
            "tarball",
            "nginx",
            "node",
            "Verdaccio",
            "node / nginx",
            "node / Verdaccio",
        ],
    );
    t.row(vec![
        fmt_bytes(expected.len() as u64),
        nginx_o.as_deref().map_or("skipped".into(), cell),
        node_o.as_deref().map_or("n/a".into(), cell),
        verd_o.as_deref().map_or("skipped".into(), cell),
        fmt_ratio(vs_nginx),
        fmt_ratio(report::ratio(rps(&node_o), rps(&verd_o))),
    ]);
    report.table(t);
    report.check(
        "B2: node / nginx req/s",
        "≥ 0.5×",
        fmt_ratio(vs_nginx),
        (!vs_nginx.is_nan()).then_some(vs_nginx >= 0.5),
    );
    if node_o
        .iter()
        .flatten()
        .any(|o| o.non_2xx > 0 || o.requests == 0)
    {
        report.fail("B2: the node answered errors or nothing");
    }
    let j = |o: &Option<Vec<Outcome>>| {
        o.as_ref()
            .map(|v| json!(v.iter().map(Outcome::json).collect::<Vec<_>>()))
    };
    report.data(
        "runs",
        json!({"bytes": expected.len(), "nginx": j(&nginx_o), "node": j(&node_o), "verdaccio": j(&verd_o)}),
    );
    report.note(format!("node after B2: {}", sys::fmt_rss(node.pid())));
    if let Some(v) = &verdaccio {
        report.note(format!("Verdaccio after B2: {}", sys::fmt_rss(v.pid())));
    }
    Ok(report)
}

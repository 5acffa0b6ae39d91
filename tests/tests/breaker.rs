//! R24 in docs/security.md, a hung upstream: it accepts connections and never answers. The
//! node's circuit breaker notices within a fraction of its usual time to answer, serves its
//! stored packuments at once, fails uncached names at once with a message that says the
//! upstream is down, and closes again once the upstream answers.
//!
//! The pass criterion is the user's: a lockfile-only resolve (`npm install --package-lock-only`
//! with an empty npm cache) of a project the node already holds, with every packument past its
//! `max_age`, takes at most twice as long with the upstream hung as with it healthy.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use open_registry_tests::{
    FakeUpstream, Fault, InProcessNode, Node as _, Npm, PackageSpec, Target, fixtures, probe,
};

/// Packages the project depends on (each with one dependency of its own).
const PACKAGES: usize = 12;

fn say(line: &str) {
    eprintln!("[breaker] {line}");
}

#[test]
fn r24_a_hung_upstream_costs_a_warm_resolve_at_most_twice_a_healthy_one() -> Result<()> {
    let up = FakeUpstream::start()?;
    let mut deps = Vec::new();
    for i in 0..PACKAGES {
        let leaf = format!("or-cb-leaf-{i}");
        up.publish(&PackageSpec::new(&leaf, "1.0.0"))?;
        let top = format!("or-cb-top-{i}");
        up.publish(&PackageSpec::new(&top, "1.0.0").dep(&leaf, "^1.0.0"))?;
        deps.push(top);
    }
    // Outside the project: fetched once, so that later it is stale with no flight of its own.
    up.publish(&PackageSpec::new("or-cb-aside", "1.0.0"))?;
    let node = InProcessNode::start(&[
        "--upstream",
        up.url(),
        "--max-age",
        "1s",
        "--upstream-timeout",
        "60s",
    ])?;
    let npm = Npm::new(&node.gateway)?;
    let work = tempfile::tempdir()?;
    let project = work.path().join("project");
    let pairs: Vec<(&str, &str)> = deps.iter().map(|d| (d.as_str(), "^1.0.0")).collect();
    fixtures::write_project(&project, &pairs)?;
    // Warm the node: every packument and tarball is stored.
    npm.install(&project)?
        .ok()
        .context("npm install through the node")?;

    let resolve = |what: &str| -> Result<Duration> {
        npm.clear_cache()?;
        let _ = std::fs::remove_file(project.join("package-lock.json"));
        // Without node_modules, npm must read every packument to resolve the tree.
        let _ = std::fs::remove_dir_all(project.join("node_modules"));
        node.clock().advance(Duration::from_secs(2));
        let t = Instant::now();
        let out = npm
            .run(&project, &["install", "--package-lock-only"])?
            .ok()
            .with_context(|| format!("npm install --package-lock-only ({what})"))?;
        let took = t.elapsed();
        ensure!(
            project.join("package-lock.json").is_file(),
            "no lockfile ({what}): {}",
            out.describe()
        );
        say(&format!(
            "lockfile-only resolve, {what}: {:.2}s",
            took.as_secs_f64()
        ));
        Ok(took)
    };
    ensure!(node.get("/or-cb-aside", &[])?.status == 200);
    let healthy = resolve("upstream healthy")?;
    ensure!(node.status()?.upstream_health.map(|h| h.state) == Some("closed".into()));

    up.set_fault(Target::All, Fault::Hang);
    // A stale packument is answered from the store within the upstream's usual time to answer
    // (a fraction of a second here), not after the whole 3 s stale grace.
    node.clock().advance(Duration::from_secs(2));
    let t = Instant::now();
    let r = node.get("/or-cb-top-1", &[])?;
    ensure!(r.status == 200, "stale GET: {}", r.status);
    say(&format!(
        "one stale GET with the upstream hung: {:?}",
        t.elapsed()
    ));
    ensure!(
        t.elapsed() < Duration::from_secs(1),
        "it took {:?}",
        t.elapsed()
    );
    let hung = resolve("upstream hung")?;
    let status = node.status()?;
    let health = status
        .upstream_health
        .context("no upstream health in the status")?;
    say(&format!(
        "breaker {} after {} outages; {} requests answered without asking the upstream",
        health.state,
        health.consecutive_failures,
        node.counter("upstream_fast_failures")?
    ));
    let c = |n: &str| node.counter(n).unwrap_or(0);
    ensure!(
        health.state != "closed",
        "the breaker did not open: {health:?}; revalidations {}, stale {}, upstream requests {}, hits {}",
        c("packument_revalidations"),
        c("stale_served"),
        c("upstream_requests"),
        c("packument_hits")
    );
    ensure!(node.counter("upstream_circuit_opened")? == 1);
    ensure!(
        hung <= healthy * 2,
        "with the upstream hung the resolve took {hung:?}, more than twice the healthy {healthy:?}"
    );

    // An uncached name fails at once, saying why.
    let t = Instant::now();
    let r = node.get("/or-cb-never-seen", &[])?;
    ensure!(r.status == 503, "uncached name: {} {}", r.status, r.text());
    ensure!(
        probe::error_message(&r)?.contains("upstream registry is down"),
        "{}",
        r.text()
    );
    ensure!(
        t.elapsed() < Duration::from_secs(1),
        "it took {:?}",
        t.elapsed()
    );
    let metrics = node.get("/-/metrics", &[])?.text();
    ensure!(
        metrics.contains("open_registry_upstream_circuit_open 1\n"),
        "{metrics}"
    );

    // The upstream answers again: a probe (one request per PROBE_EVERY, 10 s on the node's
    // clock) closes the breaker. The package asked for has no revalidation of its own still
    // waiting on a hung connection.
    up.clear_fault(Target::All);
    probe::wait_for(
        Duration::from_secs(10),
        "the breaker to close after a good probe",
        || {
            node.clock().advance(Duration::from_secs(11));
            let r = node.get("/or-cb-aside", &[]).ok()?;
            let state = node.status().ok()?.upstream_health?.state;
            (r.status == 200 && state == "closed").then_some(())
        },
    )
    .with_context(|| {
        format!(
            "{:?}; the upstream saw {} requests for or-cb-aside",
            node.status().ok().and_then(|s| s.upstream_health),
            up.hits("/or-cb-aside")
        )
    })?;
    Ok(())
}

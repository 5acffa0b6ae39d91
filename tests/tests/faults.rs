//! Fault injection against the real `open-registry` binary: a [`FakeUpstream`] that truncates,
//! empties, corrupts, fails, hangs or goes away (R2 and R14 in docs/security.md).
//!
//! Tests that need a stored packument to pass its `max_age` run the node in this process
//! ([`InProcessNode`], same arguments) and advance its clock past it instead of sleeping.
//!
//! Pass criterion throughout: no unverified byte is ever served or stored, a failure the client
//! sees is a retriable 5xx with a JSON error, the node keeps answering, and once the fault is
//! gone the next request fetches again and succeeds.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use open_registry_protocol::{Integrity, status::StoreStats};
use open_registry_tests::{
    FakeUpstream, Fault, InProcessNode, Node as _, NodeProcess, PackageSpec, Target,
    http::Response,
    probe::{self, error_message},
};

/// Just past the 1 s `--max-age` these tests give their nodes.
const PAST_MAX_AGE: Duration = Duration::from_millis(1100);

/// R2: a tarball whose body is cut short, empty, or has one byte flipped is answered with a 5xx,
/// never with a 200; nothing is stored; integrity failures are counted; without the fault the
/// next request fetches again and serves the verified bytes.
#[test]
fn r2_broken_tarball_bodies_are_never_served_or_stored() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node = NodeProcess::start(&["--upstream", up.url(), "--retries", "0"])?;
    for (fault, name, integrity_failure) in [
        (Fault::Truncate, "or-r2-truncated", false),
        (Fault::EmptyBody, "or-r2-empty", true),
        (Fault::FlipByte, "or-r2-flipped", true),
    ] {
        let spec = PackageSpec::new(name, "1.0.0").big_file(128 << 10);
        let p = up.publish(&spec)?;
        // The packument first, so that the store counts below move only with the tarball.
        ensure!(node.get(&p.packument_path, &[])?.status == 200);
        let before = node.status()?;
        up.set_fault(p.tarball_path.as_str(), fault);

        for attempt in 0..2 {
            let hits = up.hits(&p.tarball_path);
            let r = node.get(&p.tarball_path, &[])?;
            expect_retriable_error(&r, &format!("{fault:?} tarball, request {attempt}"))?;
            ensure!(
                up.hits(&p.tarball_path) > hits,
                "{fault:?}: request {attempt} did not go to the upstream (a cached failure?)"
            );
        }
        let after = node.status()?;
        ensure!(
            same_store(&before.store, &after.store),
            "{fault:?}: the store changed: {:?} → {:?}",
            before.store,
            after.store
        );
        let failures = |s: &open_registry_protocol::Status| {
            s.counters.get("integrity_failures").copied().unwrap_or(0)
        };
        let errors = |s: &open_registry_protocol::Status| {
            s.counters.get("upstream_errors").copied().unwrap_or(0)
        };
        if integrity_failure {
            ensure!(
                failures(&after) > failures(&before),
                "{fault:?}: integrity_failures did not move: {:?}",
                after.counters
            );
        } else {
            ensure!(
                errors(&after) > errors(&before),
                "{fault:?}: upstream_errors did not move: {:?}",
                after.counters
            );
        }

        up.clear_fault(p.tarball_path.as_str());
        let hits = up.hits(&p.tarball_path);
        let r = node.get(&p.tarball_path, &[])?;
        ensure!(
            r.status == 200,
            "{fault:?} cleared: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            Integrity::sha512_sri(&r.body) == p.integrity,
            "{fault:?} cleared: served bytes do not match the integrity"
        );
        ensure!(up.hits(&p.tarball_path) == hits + 1);
        let stored = node.status()?.store;
        ensure!(stored.tarballs == before.store.tarballs + 1, "{stored:?}");
        eprintln!(
            "[r2] {fault:?}: 5xx twice, store unchanged, integrity_failures {} → {}, then 200 after clearing",
            failures(&before),
            failures(&after)
        );
    }
    Ok(())
}

/// R2 under a herd: 100 concurrent cold GETs of a tarball whose bytes arrive corrupted all get
/// a 5xx; not one gets a 200.
#[test]
fn r2_a_corrupt_tarball_under_a_herd_never_yields_a_200() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node = NodeProcess::start(&["--upstream", up.url(), "--retries", "0"])?;
    let p = up.publish(&PackageSpec::new("or-r2-herd", "1.0.0").big_file(512 << 10))?;
    up.set_fault(p.tarball_path.as_str(), Fault::FlipByte);
    let url = format!("{}{}", node.gateway, p.tarball_path);
    let rt = probe::runtime()?;
    let client = probe::client(Duration::from_secs(30))?;
    let answers = rt.block_on(probe::get_all(&client, vec![(url, Vec::new()); 100]));
    for (i, a) in answers.iter().enumerate() {
        let (status, body) = a
            .as_ref()
            .map_err(|e| anyhow::anyhow!("request {i}: {e}"))?;
        ensure!(
            *status >= 500,
            "request {i}: {status} with {} bytes (sha512 matches: {})",
            body.len(),
            Integrity::sha512_sri(body) == p.integrity
        );
    }
    let s = node.status()?;
    ensure!(s.store.tarballs == 0, "{:?}", s.store);
    eprintln!(
        "[r2] 100 concurrent GETs of a corrupted tarball: 100 × 5xx, {} upstream fetches, integrity_failures {}",
        up.hits(&p.tarball_path),
        s.counters.get("integrity_failures").copied().unwrap_or(0)
    );
    up.clear_fault(p.tarball_path.as_str());
    let r = node.get(&p.tarball_path, &[])?;
    ensure!(r.status == 200 && Integrity::sha512_sri(&r.body) == p.integrity);
    Ok(())
}

/// The promise a tarball is checked against is the packument's: `dist.shasum` when a version has
/// no `dist.integrity`, and a (forged) integrity that the real bytes do not match is refused.
#[test]
fn r2_tarballs_are_checked_against_shasum_and_forged_integrity() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node = NodeProcess::start(&["--upstream", up.url(), "--retries", "0"])?;

    // Only a sha1 shasum.
    let p = up.publish(&PackageSpec::new("or-r2-sha1", "1.0.0").big_file(32 << 10))?;
    up.edit_version(&p.name, &p.version, |m| {
        if let Some(dist) = m["dist"].as_object_mut() {
            dist.remove("integrity");
        }
    })?;
    up.set_fault(p.tarball_path.as_str(), Fault::FlipByte);
    let r = node.get(&p.tarball_path, &[])?;
    expect_retriable_error(&r, "flipped byte, shasum-only version")?;
    up.clear_fault(p.tarball_path.as_str());
    let r = node.get(&p.tarball_path, &[])?;
    ensure!(
        r.status == 200,
        "shasum-only version: {} {}",
        r.status,
        r.text()
    );
    ensure!(Integrity::sha1_hex(&r.body) == p.shasum);

    // A packument whose integrity does not describe the bytes the upstream serves.
    let q = up.publish(&PackageSpec::new("or-r2-forged", "1.0.0").big_file(32 << 10))?;
    let other = PackageSpec::new("or-r2-forged", "9.9.9").tarball()?;
    up.edit_version(&q.name, &q.version, |m| {
        m["dist"]["integrity"] = serde_json::Value::String(other.integrity.clone());
    })?;
    for attempt in 0..2 {
        let r = node.get(&q.tarball_path, &[])?;
        expect_retriable_error(&r, &format!("forged integrity, request {attempt}"))?;
    }
    let s = node.status()?;
    ensure!(s.store.tarballs == 1, "{:?}", s.store);
    Ok(())
}

/// R2 for metadata: an empty or cut-short packument is not cached, neither cold (a 5xx) nor over
/// a stored revision (the stored one is served, unchanged).
#[test]
fn r2_broken_packument_bodies_are_never_cached() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node =
        InProcessNode::start(&["--upstream", up.url(), "--retries", "0", "--max-age", "1s"])?;

    // Cold: nothing to fall back on.
    for (fault, name) in [
        (Fault::EmptyBody, "or-r2-empty-doc"),
        (Fault::Truncate, "or-r2-truncated-doc"),
    ] {
        let p = up.publish(&PackageSpec::new(name, "1.0.0").big_file(64 << 10))?;
        up.set_fault(p.packument_path.as_str(), fault);
        let before = node.status()?.store;
        for path in [
            p.packument_path.clone(),
            format!("{}/1.0.0", p.packument_path),
        ] {
            let r = node.get(&path, &[])?;
            expect_retriable_error(&r, &format!("{fault:?} packument, GET {path}"))?;
        }
        // A tarball needs the packument: it fails the same way.
        let r = node.get(&p.tarball_path, &[])?;
        expect_retriable_error(&r, &format!("{fault:?} packument, GET {}", p.tarball_path))?;
        let after = node.status()?.store;
        ensure!(
            same_store(&before, &after),
            "{fault:?}: {before:?} → {after:?}"
        );

        up.clear_fault(p.packument_path.as_str());
        let r = node.get(&p.packument_path, &[])?;
        ensure!(
            r.status == 200,
            "{fault:?} cleared: {} {}",
            r.status,
            r.text()
        );
        ensure!(probe::json(&r)?["versions"]["1.0.0"]["dist"]["integrity"] == p.integrity.as_str());
        ensure!(node.status()?.store.packuments == before.packuments + 1);
    }

    // Warm: the stored revision survives a broken revalidation byte for byte.
    let p = up.publish(&PackageSpec::new("or-r2-warm-doc", "1.0.0"))?;
    let good = node.get(&p.packument_path, &[])?;
    ensure!(good.status == 200);
    up.publish(&PackageSpec::new("or-r2-warm-doc", "1.1.0"))?;
    // Past max-age once: a broken revalidation must leave the copy stale, so the second fault
    // is revalidated too.
    node.clock().advance(PAST_MAX_AGE);
    for fault in [Fault::EmptyBody, Fault::Truncate] {
        up.set_fault(p.packument_path.as_str(), fault);
        let stale = node.counter("stale_served")?;
        let hits = up.hits(&p.packument_path);
        let r = node.get(&p.packument_path, &[])?;
        ensure!(
            r.status == 200,
            "{fault:?} over a stored copy: {} {}",
            r.status,
            r.text()
        );
        ensure!(
            r.body == good.body,
            "{fault:?}: served something other than the stored copy"
        );
        ensure!(
            up.hits(&p.packument_path) > hits,
            "{fault:?}: not revalidated"
        );
        ensure!(node.counter("stale_served")? > stale);
    }
    up.clear_fault(p.packument_path.as_str());
    let r = node.get(&p.packument_path, &[])?;
    ensure!(r.status == 200);
    ensure!(
        probe::json(&r)?["versions"]["1.1.0"].is_object(),
        "the fixed upstream's new version is not served"
    );
    Ok(())
}

/// One transient failure (a cut body, an empty body, a 503) is retried inside the request the
/// client made: the client sees a 200.
#[test]
fn transient_upstream_failures_are_retried_within_the_request() -> Result<()> {
    let up = FakeUpstream::start()?;
    let node = NodeProcess::start(&["--upstream", up.url(), "--retries", "2"])?;
    for (i, fault) in [Fault::Truncate, Fault::EmptyBody, Fault::Status(503)]
        .into_iter()
        .enumerate()
    {
        let p =
            up.publish(&PackageSpec::new(&format!("or-retry-{i}"), "1.0.0").big_file(64 << 10))?;
        up.set_fault_times(p.packument_path.as_str(), fault, 1);
        let r = node.get(&p.packument_path, &[])?;
        // An empty packument body is not retried (it is a document that does not parse), so
        // only the cut body and the 503 must come through.
        if fault != Fault::EmptyBody {
            ensure!(
                r.status == 200,
                "packument after one {fault:?}: {} {}",
                r.status,
                r.text()
            );
            ensure!(up.hits(&p.packument_path) == 2);
        } else if r.status != 200 {
            expect_retriable_error(&r, "one empty packument body")?;
            ensure!(node.get(&p.packument_path, &[])?.status == 200);
        }
        up.set_fault_times(p.tarball_path.as_str(), fault, 1);
        let r = node.get(&p.tarball_path, &[])?;
        ensure!(
            r.status == 200,
            "tarball after one {fault:?}: {} {}",
            r.status,
            r.text()
        );
        ensure!(Integrity::sha512_sri(&r.body) == p.integrity);
        ensure!(
            up.hits(&p.tarball_path) == 2,
            "{fault:?}: {} tarball fetches",
            up.hits(&p.tarball_path)
        );
    }
    Ok(())
}

/// `--retries N` bounds the attempts at one upstream fetch: N + 1 requests, for packuments and
/// tarballs alike, whatever the failure.
#[test]
fn retries_follow_the_retries_flag() -> Result<()> {
    let up = FakeUpstream::start()?;
    // The breaker off: this test counts every attempt the retries make (R24's breaker, which
    // stops sending to an upstream that keeps failing, is tested in tests/tests/breaker.rs).
    let node = NodeProcess::start(&[
        "--upstream",
        up.url(),
        "--retries",
        "1",
        "--breaker-outages",
        "0",
    ])?;
    let mut report = Vec::new();
    for (i, fault) in [Fault::Status(500), Fault::Truncate, Fault::EmptyBody]
        .into_iter()
        .enumerate()
    {
        let p =
            up.publish(&PackageSpec::new(&format!("or-bounded-{i}"), "1.0.0").big_file(64 << 10))?;
        ensure!(node.get(&p.packument_path, &[])?.status == 200);
        up.set_fault(p.tarball_path.as_str(), fault);
        let r = node.get(&p.tarball_path, &[])?;
        expect_retriable_error(&r, &format!("tarball {fault:?}"))?;
        report.push(format!(
            "tarball {fault:?}: {} requests",
            up.hits(&p.tarball_path)
        ));
        if fault != Fault::EmptyBody {
            let q = up.publish(&PackageSpec::new(&format!("or-bounded-doc-{i}"), "1.0.0"))?;
            up.set_fault(q.packument_path.as_str(), fault);
            let r = node.get(&q.packument_path, &[])?;
            expect_retriable_error(&r, &format!("packument {fault:?}"))?;
            report.push(format!(
                "packument {fault:?}: {} requests",
                up.hits(&q.packument_path)
            ));
            ensure!(
                up.hits(&q.packument_path) == 2,
                "--retries 1, packument {fault:?}: {} upstream requests",
                up.hits(&q.packument_path)
            );
        }
    }
    eprintln!("[retries] with --retries 1: {}", report.join("; "));
    let wrong: Vec<&String> = report
        .iter()
        .filter(|l| !l.ends_with(": 2 requests"))
        .collect();
    ensure!(
        wrong.is_empty(),
        "--retries 1 must mean 2 upstream requests per fetch; got {wrong:?}"
    );
    Ok(())
}

/// R14: the upstream goes away. What is stored is still served (fresh, then stale-if-error);
/// what is not fails fast with a JSON 502; when the upstream returns, fetching resumes.
#[test]
fn r14_upstream_down_serves_the_store_and_fails_fast_otherwise() -> Result<()> {
    let up = FakeUpstream::start()?;
    let cached = up.publish(&PackageSpec::new("or-down-cached", "1.0.0").big_file(64 << 10))?;
    let uncached = up.publish(&PackageSpec::new("or-down-uncached", "1.0.0"))?;
    let timeout = Duration::from_secs(3);
    let node = InProcessNode::start(&[
        // Without the breaker: these are the deadlines and the stale grace alone (the
        // breaker is tested in tests/tests/breaker.rs).
        "--breaker-outages",
        "0",
        "--upstream",
        up.url(),
        "--max-age",
        "1s",
        "--upstream-timeout",
        "3s",
        "--connect-timeout",
        "1s",
        "--retries",
        "1",
    ])?;
    let doc = node.get(&cached.packument_path, &[])?;
    ensure!(doc.status == 200);
    let tgz = node.get(&cached.tarball_path, &[])?;
    ensure!(tgz.status == 200);

    up.down();
    // Still fresh.
    let r = node.get(&cached.packument_path, &[])?;
    ensure!(
        r.status == 200 && r.body == doc.body,
        "fresh copy with the upstream down: {}",
        r.status
    );
    // Stale: revalidation fails, the stored copy is served.
    node.clock().advance(PAST_MAX_AGE);
    let (r, took) = probe::timed(|| node.get(&cached.packument_path, &[]));
    let r = r?;
    ensure!(
        r.status == 200,
        "stale copy with the upstream down: {} {}",
        r.status,
        r.text()
    );
    ensure!(r.body == doc.body);
    ensure!(took < timeout, "the stale copy took {took:?}");
    ensure!(
        node.counter("stale_served")? > 0,
        "stale_served did not move"
    );
    let r = node.get(&format!("{}/1.0.0", cached.packument_path), &[])?;
    ensure!(
        r.status == 200,
        "version route with the upstream down: {}",
        r.status
    );
    let r = node.get(&cached.tarball_path, &[])?;
    ensure!(
        r.status == 200 && r.body == tgz.body,
        "tarball with the upstream down: {}",
        r.status
    );
    eprintln!("[r14] upstream down: stale packument in {took:?}");

    // Not stored: a clear error, well within the deadline.
    for path in [
        uncached.packument_path.clone(),
        uncached.tarball_path.clone(),
        format!("{}/1.0.0", uncached.packument_path),
    ] {
        let (r, took) = probe::timed(|| node.get(&path, &[]));
        let r = r?;
        ensure!(
            r.status == 502 || r.status == 504,
            "GET {path} with the upstream down: {} {}",
            r.status,
            r.text()
        );
        let msg = error_message(&r)?;
        ensure!(
            took < timeout + Duration::from_millis(500),
            "GET {path} took {took:?}"
        );
        eprintln!(
            "[r14] upstream down: GET {path} → {} in {took:?}: {msg}",
            r.status
        );
    }

    up.up()?;
    let r = node.get(&uncached.packument_path, &[])?;
    ensure!(r.status == 200, "after up(): {} {}", r.status, r.text());
    let r = node.get(&uncached.tarball_path, &[])?;
    ensure!(r.status == 200 && Integrity::sha512_sri(&r.body) == uncached.integrity);
    let before = up.hits(&cached.packument_path);
    let r = node.get(&cached.packument_path, &[])?;
    ensure!(r.status == 200);
    ensure!(
        up.hits(&cached.packument_path) == before + 1,
        "the stale copy was not revalidated"
    );
    ensure!(node.counter("packument_not_modified")? >= 1);
    Ok(())
}

/// R14 with an upstream that answers badly: 500s and a hang (with a 2 s upstream timeout) over a
/// stored packument give the stored copy within the deadline; an uncached package that hangs is
/// a JSON 504 at the deadline.
#[test]
fn r14_upstream_500s_and_hangs_serve_the_stale_copy() -> Result<()> {
    let up = FakeUpstream::start()?;
    let a = up.publish(&PackageSpec::new("or-sick-a", "1.0.0"))?;
    let cold = up.publish(&PackageSpec::new("or-sick-cold", "1.0.0"))?;
    let node = InProcessNode::start(&[
        // Without the breaker: these are the deadlines and the stale grace alone (the
        // breaker is tested in tests/tests/breaker.rs).
        "--breaker-outages",
        "0",
        "--upstream",
        up.url(),
        "--max-age",
        "1s",
        "--upstream-timeout",
        "2s",
        "--retries",
        "0",
    ])?;
    let good = node.get(&a.packument_path, &[])?;
    ensure!(good.status == 200);
    ensure!(node.get(&a.tarball_path, &[])?.status == 200);
    node.clock().advance(PAST_MAX_AGE);

    up.set_fault(Target::All, Fault::Status(500));
    let (r, took) = probe::timed(|| node.get(&a.packument_path, &[]));
    let r = r?;
    ensure!(
        r.status == 200 && r.body == good.body,
        "500 upstream: {} {}",
        r.status,
        r.text()
    );
    ensure!(
        took < Duration::from_secs(2),
        "500 upstream: stale copy took {took:?}"
    );
    eprintln!("[r14] upstream 500: stale packument in {took:?}");
    let r = node.get(&cold.packument_path, &[])?;
    ensure!(
        r.status == 502,
        "500 upstream, uncached: {} {}",
        r.status,
        r.text()
    );
    error_message(&r)?;

    up.set_fault(Target::All, Fault::Hang);
    let stale = node.counter("stale_served")?;
    let (r, took) = probe::timed(|| node.get(&a.packument_path, &[]));
    let r = r?;
    ensure!(
        r.status == 200 && r.body == good.body,
        "hanging upstream: {} {}",
        r.status,
        r.text()
    );
    ensure!(
        took < Duration::from_secs(4),
        "hanging upstream: stale copy took {took:?}"
    );
    ensure!(node.counter("stale_served")? > stale);
    let r = node.get(&a.tarball_path, &[])?;
    ensure!(
        r.status == 200,
        "hanging upstream, stored tarball: {}",
        r.status
    );
    eprintln!("[r14] upstream hangs (2 s timeout): stale packument in {took:?}");

    let (r, took) = probe::timed(|| node.get(&cold.packument_path, &[]));
    let r = r?;
    ensure!(
        r.status == 504,
        "hanging upstream, uncached: {} {}",
        r.status,
        r.text()
    );
    let msg = error_message(&r)?;
    ensure!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "hanging upstream, uncached: 504 after {took:?}"
    );
    eprintln!("[r14] upstream hangs, uncached: 504 after {took:?}: {msg}");

    up.clear_faults();
    let r = node.get(&cold.packument_path, &[])?;
    ensure!(r.status == 200, "after clearing: {} {}", r.status, r.text());
    Ok(())
}

/// With a stored copy at hand, a slow upstream costs a request at most about 3 s
/// (stale-while-revalidate), however long the upstream deadline is.
#[test]
fn r14_a_hanging_upstream_costs_at_most_3s_with_a_stored_copy() -> Result<()> {
    let up = FakeUpstream::start()?;
    let a = up.publish(&PackageSpec::new("or-slow", "1.0.0"))?;
    let node = InProcessNode::start(&[
        // Without the breaker: these are the deadlines and the stale grace alone (the
        // breaker is tested in tests/tests/breaker.rs).
        "--breaker-outages",
        "0",
        "--upstream",
        up.url(),
        "--max-age",
        "1s",
        "--upstream-timeout",
        "30s",
    ])?;
    let good = node.get(&a.packument_path, &[])?;
    ensure!(good.status == 200);
    node.clock().advance(PAST_MAX_AGE);
    up.set_fault(a.packument_path.as_str(), Fault::Hang);
    let (r, took) = probe::timed(|| node.get(&a.packument_path, &[]));
    let r = r?;
    ensure!(
        r.status == 200 && r.body == good.body,
        "{} {}",
        r.status,
        r.text()
    );
    ensure!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(4),
        "stale-while-revalidate answered after {took:?}"
    );
    eprintln!("[r14] upstream hangs (30 s timeout): stale packument in {took:?}");
    Ok(())
}

/// A 5xx with a JSON `{"error"}`: what npm retries and prints.
fn expect_retriable_error(r: &Response, what: &str) -> Result<()> {
    ensure!(
        r.status >= 500,
        "{what}: answered {} (want a 5xx) with {} bytes",
        r.status,
        r.body.len()
    );
    let msg = error_message(r).with_context(|| what.to_owned())?;
    eprintln!("[faults] {what}: {} {msg}", r.status);
    Ok(())
}

fn same_store(a: &StoreStats, b: &StoreStats) -> bool {
    a.tarballs == b.tarballs && a.blobs == b.blobs && a.packuments == b.packuments
}

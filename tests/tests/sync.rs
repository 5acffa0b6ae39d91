//! Issue 5's tests: pins keep a project installable with the upstream gone, the cache stays
//! under its budget (least recently used first, packuments included; pins never; a package
//! whose packument is evicted withdrawn from the DHT), a node following the upstream's changes feed refreshes what changed and a peer with no
//! upstream takes the new revision over gossip, a restart resumes the feed at the stored
//! sequence, and `pin add --top N` pins what the network requests most.
//!
//! Every node is a real `open-registry start` process on loopback, the upstream is a
//! [`FakeUpstream`] (whose request log shows exactly what reached it, changes-feed queries
//! included), and the DHT is asked by a bare in-process peer ([`DhtProbe`]) that joins after
//! the fact, as a newcomer would.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, ensure};
use open_registry_protocol::{BlobId, PackageName, pointer};
use open_registry_tests::{
    FakeUpstream, NodeProcess, Output, PackageSpec, Published, fixtures, http,
    node::cli,
    npm::Npm,
    probe,
    sync::{self, CLI_TIMEOUT, DhtProbe, FeedRequest},
};

const KIB: usize = 1024;

/// How long a refresh may take to travel: feed poll, upstream fetch, signing, gossip.
const PROPAGATION: Duration = Duration::from_secs(20);
/// How soon after a publish the node following the feed must have refreshed ("within seconds").
const REFRESH: Duration = Duration::from_secs(5);

fn say(line: &str) {
    eprintln!("[sync] {line}");
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// `GET path` through `node`, which must answer 200.
fn get_ok(node: &NodeProcess, path: &str) -> Result<http::Response> {
    let r = node.get(path, &[])?;
    ensure!(
        r.status == 200,
        "{}{path} answered {}: {}\n--- node log ---\n{}",
        node.gateway,
        r.status,
        r.text(),
        node.log_tail(40)
    );
    Ok(r)
}

/// Fetches a package's packument and the published tarball through `node`, as npm would.
fn fetch(node: &NodeProcess, p: &Published, bytes: &[u8]) -> Result<()> {
    get_ok(node, &p.packument_path)?;
    let r = get_ok(node, &p.tarball_path)?;
    ensure!(
        r.body == bytes,
        "{} came back with other bytes",
        p.tarball_path
    );
    Ok(())
}

/// Runs `open-registry ARGS`, which must succeed.
fn run_cli(args: &[&str]) -> Result<Output> {
    cli(args, CLI_TIMEOUT)?.ok()
}

/// The store's size now.
fn store_bytes(node: &NodeProcess) -> Result<u64> {
    Ok(node.status()?.store.bytes)
}

/// Waits until the store holds at most `limit` bytes (eviction runs right after an ingest,
/// in the background).
fn wait_store_at_most(node: &NodeProcess, limit: u64) -> Result<u64> {
    probe::wait_for(
        Duration::from_secs(10),
        &format!("the store to shrink to {limit} bytes"),
        || store_bytes(node).ok().filter(|&b| b <= limit),
    )
}

/// Waits until `node`'s routing table holds at least `n` peers.
fn wait_routing(node: &NodeProcess, n: u64) -> Result<()> {
    probe::wait_for(
        Duration::from_secs(15),
        &format!("{}'s routing table to hold {n}", node.gateway),
        || {
            let r = node.get("/-/open-registry/peers", &[]).ok()?;
            let v = probe::json(&r).ok()?;
            v["routing_table_size"].as_u64().filter(|&s| s >= n)
        },
    )
    .map(drop)
}

/// Checks with node that each package resolves to its version in `project`.
fn check_tree(npm: &Npm, project: &Path, want: &[(&str, &str)]) -> Result<()> {
    let mut script = String::from("const assert = require('assert');\n");
    for (name, version) in want {
        script.push_str(&format!(
            "assert.strictEqual(require({name:?}).version, {version:?});\n"
        ));
    }
    script.push_str("console.log('tree ok');\n");
    let out = npm.node(project, &script)?;
    ensure!(out.stdout.contains("tree ok"), "{}", out.describe());
    Ok(())
}

fn copy_project(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for f in ["package.json", "package-lock.json", ".npmrc"] {
        fs::copy(from.join(f), to.join(f)).with_context(|| format!("copying {f}"))?;
    }
    Ok(())
}

/// Publishes `spec` and returns it with its tarball's bytes and blob id.
fn publish(up: &FakeUpstream, spec: &PackageSpec) -> Result<(Published, Vec<u8>, BlobId)> {
    let bytes = spec.tarball()?.bytes;
    let p = up.publish(spec)?;
    let id = BlobId::of(&bytes);
    Ok((p, bytes, id))
}

// ---- 1. a pinned lockfile installs with the upstream gone ---------------------------------

#[test]
fn a_pinned_lockfile_installs_with_the_upstream_gone() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let right_old = publish(&up, &PackageSpec::new("sync-right", "1.0.0"))?;
    let right = publish(&up, &PackageSpec::new("sync-right", "1.1.0"))?;
    let left = publish(
        &up,
        &PackageSpec::new("sync-left", "1.0.0").dep("sync-right", "^1.0.0"),
    )?;
    let solo = publish(&up, &PackageSpec::new("sync-solo", "2.0.0"))?;
    let fillers = (1..=3)
        .map(|i| {
            publish(
                &up,
                &PackageSpec::new(&format!("sync-filler-{i}"), "1.0.0").big_file(120 * KIB),
            )
        })
        .collect::<Result<Vec<_>>>()?;

    // The project's lockfile, made against the upstream itself: the node has seen none of it.
    let tmp = tempfile::tempdir()?;
    let made = tmp.path().join("made");
    fixtures::write_project(&made, &[("sync-left", "^1.0.0"), ("sync-solo", "^2.0.0")])?;
    Npm::new(up.url())?.install(&made)?;
    let lockfile = made.join("package-lock.json");

    let cap: u64 = 256 * 1024;
    let cap_flag = cap.to_string();
    let node = NodeProcess::start(&["--upstream", up.url(), "--max-cache-size", &cap_flag])?;
    let data = arg(&node.data_dir);
    let out = run_cli(&[
        "pin",
        "add",
        "--lockfile",
        arg(&lockfile),
        "--data-dir",
        data,
    ])?;
    say(&format!("pin add --lockfile: {}", out.stdout.trim()));
    ensure!(
        out.stdout.contains("pinned 3 versions of 3 packages"),
        "{}",
        out.describe()
    );
    // Exactly the lockfile's versions: sync-right 1.1.0, not 1.0.0.
    let want: BTreeMap<String, Vec<String>> = [
        ("sync-left", "1.0.0"),
        ("sync-right", "1.1.0"),
        ("sync-solo", "2.0.0"),
    ]
    .iter()
    .map(|(n, v)| ((*n).to_owned(), vec![(*v).to_owned()]))
    .collect();
    ensure!(sync::pins(&node)? == want, "pins: {:?}", sync::pins(&node)?);
    let ls = run_cli(&["pin", "ls", "--data-dir", data])?;
    eprintln!(
        "[sync] $ open-registry pin ls --data-dir <node>\n{}",
        ls.stdout
    );
    ensure!(ls.stdout.contains("3 packages pinned"), "{}", ls.describe());
    for (name, versions) in &want {
        ensure!(
            ls.stdout
                .lines()
                .any(|l| l.starts_with(name.as_str()) && l.contains(&versions[0])),
            "pin ls lacks {name}:\n{}",
            ls.stdout
        );
    }
    ensure!(
        !sync::has_blob(&node, &right_old.2)?,
        "sync-right 1.0.0 is stored, but the lockfile does not name it"
    );

    // Other packages fill the cache past its cap: unpinned blobs go, pinned ones stay.
    for (p, bytes, _) in &fillers {
        fetch(&node, p, bytes)?;
        wait_store_at_most(&node, cap)?;
    }
    let gone = fillers
        .iter()
        .filter(|(_, _, id)| !sync::has_blob(&node, id).unwrap_or(true))
        .count();
    ensure!(gone >= 1, "no filler was evicted; the cap is not enforced");
    for (p, _, id) in [&left, &right, &solo] {
        ensure!(
            sync::has_blob(&node, id)?,
            "the pinned {}@{} was evicted",
            p.name,
            p.version
        );
    }
    say(&format!(
        "cache filled past {cap} bytes: {gone} of {} fillers evicted, store {} bytes",
        fillers.len(),
        store_bytes(&node)?
    ));

    // Upstream gone, npm's cache empty: npm ci through the node.
    up.down();
    let offline = tmp.path().join("offline");
    copy_project(&made, &offline)?;
    let npm = Npm::new(node.gateway())?.timeout(Duration::from_secs(120));
    npm.clear_cache()?;
    let out = npm
        .ci(&offline)
        .with_context(|| format!("npm ci with the upstream down\n{}", node.log_tail(40)))?;
    say(&format!(
        "npm ci with the upstream down: ok in {:.2}s",
        out.elapsed.as_secs_f64()
    ));
    check_tree(
        &npm,
        &offline,
        &[
            ("sync-left", "1.0.0"),
            ("sync-right", "1.1.0"),
            ("sync-solo", "2.0.0"),
        ],
    )?;
    say(&format!(
        "test took {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

// ---- 2. the cache cap: LRU, pins survive, evicted blobs leave the DHT ----------------------

#[test]
fn the_cache_cap_evicts_least_recently_used_keeps_pins_and_withdraws() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let big = 64 * KIB;
    let keep = publish(&up, &PackageSpec::new("sync-keep", "1.0.0").big_file(big))?;
    let mut lru = BTreeMap::new();
    for x in ["a", "b", "c", "d", "e"] {
        let spec = PackageSpec::new(&format!("sync-lru-{x}"), "1.0.0").big_file(big);
        lru.insert(x, publish(&up, &spec)?);
    }
    // Tarballs of about the same size T; the cap fits four and a bit, so the fifth unpinned
    // tarball makes one pass evict exactly one tarball (down to 90% of the cap).
    let sizes: Vec<u64> = std::iter::once(&keep)
        .chain(lru.values())
        .map(|(_, b, _)| b.len() as u64)
        .collect();
    let (t_min, t_max) = (
        *sizes.iter().min().unwrap_or(&0),
        *sizes.iter().max().unwrap_or(&0),
    );
    ensure!(
        t_max - t_min < 512,
        "tarball sizes differ too much: {sizes:?}"
    );
    let cap = t_max * 455 / 100;
    let low = cap - cap / 10;
    say(&format!(
        "tarballs ~{t_max} bytes, cap {cap}, evicting down to {low}"
    ));
    let cap_flag = cap.to_string();
    let node = NodeProcess::start(&[
        "--upstream",
        up.url(),
        "--max-cache-size",
        &cap_flag,
        "--max-age",
        "1h",
    ])?;
    let data = arg(&node.data_dir);
    let (node_id, node_addr) = sync::p2p_addr(&node)?;

    run_cli(&["pin", "add", "sync-keep@1.0.0", "--data-dir", data])?;
    let packument_size = store_bytes(&node)?.saturating_sub(keep.1.len() as u64);
    ensure!(
        packument_size * 11 <= t_max,
        "packuments ({packument_size} bytes) are too big for this test's arithmetic"
    );

    let stored = |x: &str| -> Result<bool> { sync::has_blob(&node, &lru[x].2) };
    let tarball_hits = |x: &str| up.hits(&lru[x].0.tarball_path);
    for x in ["a", "b", "c"] {
        fetch(&node, &lru[x].0, &lru[x].1)?;
    }
    ensure!(
        store_bytes(&node)? <= cap,
        "over the cap before the test began"
    );
    for x in ["a", "b", "c"] {
        ensure!(stored(x)?, "sync-lru-{x} was evicted under the cap");
    }
    // a is used again: now b is the least recently used.
    let hits_before = node.counter("tarball_hits")?;
    get_ok(&node, &lru["a"].0.tarball_path)?;
    ensure!(node.counter("tarball_hits")? == hits_before + 1);
    ensure!(tarball_hits("a") == 1, "a was not served from the store");

    // d goes over the cap: b (least recently used) is evicted, nothing else.
    fetch(&node, &lru["d"].0, &lru["d"].1)?;
    let after_d = wait_store_at_most(&node, low)?;
    let state = |xs: &[&str]| -> Result<String> {
        xs.iter()
            .map(|x| {
                Ok(format!(
                    "{x}={}",
                    if stored(x)? { "stored" } else { "evicted" }
                ))
            })
            .collect::<Result<Vec<_>>>()
            .map(|v| v.join(" "))
    };
    say(&format!(
        "after d: {} ({after_d} bytes; {} packuments indexed)",
        state(&["a", "b", "c", "d"])?,
        node.status()?.store.packuments
    ));
    ensure!(!stored("b")?, "b, the least recently used, is still stored");
    for x in ["a", "c", "d"] {
        ensure!(
            stored(x)?,
            "{x} was evicted before b and c: {}",
            state(&["a", "b", "c", "d"])?
        );
    }
    // e goes over the cap: c is now the least recently used.
    fetch(&node, &lru["e"].0, &lru["e"].1)?;
    let after_e = wait_store_at_most(&node, low)?;
    let all = ["a", "b", "c", "d", "e"];
    say(&format!("after e: {} ({after_e} bytes)", state(&all)?));
    ensure!(!stored("c")?, "c, the least recently used, is still stored");
    for x in ["a", "d", "e"] {
        ensure!(stored(x)?, "{x} was evicted out of order: {}", state(&all)?);
    }
    // The pin survives: its tarball, and the packument its record names.
    ensure!(
        sync::has_blob(&node, &keep.2)?,
        "the pinned tarball was evicted"
    );
    let record = sync::operator_record(&node, &node_id, "sync-keep")?;
    ensure!(
        sync::has_blob(&node, &record.packument)?,
        "the pinned package's packument was evicted"
    );
    ensure!(sync::pins(&node)?.contains_key("sync-keep"));
    let status = node.status()?;
    ensure!(
        status.store.bytes <= cap,
        "store {} bytes over the cap {cap}",
        status.store.bytes
    );

    // A newcomer asks the DHT: the node provides the packages it keeps (one key per package),
    // and no tarball by its own id, evicted or not.
    let dht = DhtProbe::start(0x51, &[&node_addr])?;
    dht.wait_routing_table(1, Duration::from_secs(15))?;
    let package = |n: &str| PackageName::parse(n).map(|n| pointer::provider_key(&n));
    dht.wait_provider(&package("sync-keep")?, &node_id, Duration::from_secs(15))
        .context("the pinned package is not provided")?;
    dht.wait_provider(&package("sync-lru-a")?, &node_id, Duration::from_secs(15))
        .context("a stored package is not provided")?;
    for x in ["a", "b", "c"] {
        let providers = dht.providers(&lru[x].2, Duration::from_secs(3))?;
        ensure!(
            !providers.contains(&node_id),
            "the DHT lists the node for the tarball of {x} by its id: {providers:?}"
        );
    }
    say("DHT: the node provides the pinned and the kept packages, and no tarball id");

    // What the store kept is served from it; what it evicted comes from the upstream again.
    let ingests = node.counter("tarball_ingests")?;
    for x in ["a", "d", "e"] {
        get_ok(&node, &lru[x].0.tarball_path)?;
        ensure!(
            tarball_hits(x) == 1,
            "{x} was fetched from the upstream again"
        );
    }
    get_ok(&node, &keep.0.tarball_path)?;
    ensure!(up.hits(&keep.0.tarball_path) == 1);
    ensure!(node.counter("tarball_ingests")? == ingests);
    let r = get_ok(&node, &lru["b"].0.tarball_path)?;
    ensure!(r.body == lru["b"].1);
    ensure!(
        tarball_hits("b") == 2,
        "the evicted b was not fetched again"
    );
    ensure!(node.counter("tarball_ingests")? == ingests + 1);
    wait_store_at_most(&node, cap)?;
    say(&format!(
        "test took {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Least recently used covers packuments too: a packument served a moment ago is not evicted
/// while a tarball nobody asked for since is kept.
#[test]
fn a_packument_in_use_is_not_evicted_before_older_tarballs() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let big = 64 * KIB;
    let mut pkgs = BTreeMap::new();
    for x in ["cold-1", "cold-2", "hot", "cold-3"] {
        let spec = PackageSpec::new(&format!("sync-{x}"), "1.0.0").big_file(big);
        pkgs.insert(x, publish(&up, &spec)?);
    }
    let t = pkgs["hot"].1.len() as u64;
    // Three tarballs and their packuments fit; a fourth makes a pass free one tarball's worth.
    let cap = t * 35 / 10;
    let cap_flag = cap.to_string();
    let node = NodeProcess::start(&[
        "--upstream",
        up.url(),
        "--max-cache-size",
        &cap_flag,
        "--max-age",
        "1h",
    ])?;
    let node_id = node.status()?.peer_id;
    for x in ["cold-1", "cold-2", "hot"] {
        fetch(&node, &pkgs[x].0, &pkgs[x].1)?;
    }
    let hot = sync::operator_record(&node, &node_id, "sync-hot")?.packument;
    ensure!(sync::has_blob(&node, &hot)?);
    // The hot package's metadata is what clients keep asking for.
    for _ in 0..3 {
        get_ok(&node, &pkgs["hot"].0.packument_path)?;
    }
    fetch(&node, &pkgs["cold-3"].0, &pkgs["cold-3"].1)?;
    wait_store_at_most(&node, cap - cap / 10)?;
    let cold_1 = sync::has_blob(&node, &pkgs["cold-1"].2)?;
    let hot_kept = sync::has_blob(&node, &hot)?;
    let indexed = node.status()?.store.packuments;
    let word = |kept: bool| if kept { "stored" } else { "evicted" };
    say(&format!(
        "after the pass: cold-1 tarball {}, hot packument {}, {indexed} packuments indexed",
        word(cold_1),
        word(hot_kept),
    ));
    ensure!(
        hot_kept,
        "the packument of sync-hot, served a moment ago, was evicted before older tarballs \
         ({indexed} packuments left in the index)"
    );
    ensure!(
        !cold_1,
        "the least recently used tarball (sync-cold-1) is still stored"
    );
    say(&format!(
        "test took {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

// ---- 3. a change on the feed reaches a peer that has no upstream ------------------------

#[test]
fn a_change_on_the_feed_reaches_a_peer_without_an_upstream() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let v1 = publish(&up, &PackageSpec::new("sync-news", "1.0.0"))?; // seq 1
    // A pins another package, so that its lag report has a pinned packument to age.
    up.publish(&PackageSpec::new("sync-anchor", "1.0.0"))?; // seq 2
    let feed = format!("{}/_changes", up.url());
    let a = NodeProcess::start(&[
        "--upstream",
        up.url(),
        "--changes-feed",
        &feed,
        "--changes-poll",
        "200ms",
    ])?;
    let (a_id, a_addr) = sync::p2p_addr(&a)?;
    fetch(&a, &v1.0, &v1.1)?;
    run_cli(&["pin", "add", "sync-anchor", "--data-dir", arg(&a.data_dir)])?;

    let b = NodeProcess::start(&[
        "--no-upstream",
        "--bootstrap",
        &a_addr,
        "--trust",
        &a_id,
        "--max-age",
        "1h",
    ])?;
    wait_routing(&b, 1)?;
    // B caches the package, from A.
    probe::wait_for(PROPAGATION, "B to take sync-news from A", || {
        b.get(&v1.0.packument_path, &[])
            .ok()
            .filter(|r| r.status == 200)
    })?;
    let r = get_ok(&b, &v1.0.tarball_path)?;
    ensure!(r.body == v1.1);
    ensure!(b.counter("peer_ingests")? >= 2, "B did not fetch from A");

    // A is at the feed's head (two changes so far).
    probe::wait_for(PROPAGATION, "A to process the feed up to 2", || {
        sync::sync_status(&a)
            .ok()
            .filter(|s| s.processed_seq == Some(2) && s.lag == Some(0))
    })?;
    let a_requests = a.counter("upstream_requests")?;
    up.reset_hits();

    let t0 = Instant::now();
    let v2 = publish(&up, &PackageSpec::new("sync-news", "1.1.0"))?; // seq 3
    let s = probe::wait_for(REFRESH, "A to refresh sync-news from the feed", || {
        sync::sync_status(&a)
            .ok()
            .filter(|s| s.processed_seq == Some(3) && s.refreshed >= 1)
    })
    .with_context(|| a.log_tail(40))?;
    let a_took = t0.elapsed();
    say(&format!(
        "A refreshed in {:.2}s: upstream seq {:?}, processed {:?}, refreshed {}",
        a_took.as_secs_f64(),
        s.upstream_seq,
        s.processed_seq,
        s.refreshed
    ));
    let record = sync::operator_record(&a, &a_id, "sync-news")?;
    ensure!(
        record.versions.contains_key("1.1.0"),
        "A's signed record lacks 1.1.0: {:?}",
        record.versions.keys()
    );

    // B hears of it (gossip), fetches the revision from A, and serves it.
    probe::wait_for(PROPAGATION, "B to serve 1.1.0 as latest", || {
        let r = b.get(&v1.0.packument_path, &[]).ok()?;
        let v = probe::json(&r).ok()?;
        (v["dist-tags"]["latest"] == "1.1.0").then_some(())
    })
    .with_context(|| {
        format!(
            "--- B ---\n{}\n--- A ---\n{}",
            b.log_tail(30),
            a.log_tail(30)
        )
    })?;
    say(&format!(
        "B serves 1.1.0 {:.2}s after the publish",
        t0.elapsed().as_secs_f64()
    ));
    ensure!(
        b.log_tail(200).contains("updated from a gossiped record"),
        "B did not take the revision from gossip:\n{}",
        b.log_tail(40)
    );

    let npm = Npm::new(b.gateway())?.timeout(Duration::from_secs(120));
    let tmp = tempfile::tempdir()?;
    // Installing 1.1.0 needs its tarball, which B (no upstream) can only take from a peer
    // whose signed record names it: A, the node that follows the feed and caches the package.
    let named = probe::wait_for(
        PROPAGATION,
        "A's record to name the tarball of 1.1.0",
        || {
            sync::operator_record(&a, &a_id, "sync-news")
                .ok()?
                .versions
                .get("1.1.0")?
                .tarball
        },
    )
    .with_context(|| {
        format!(
            "A refreshed sync-news after the change but stored no tarball of 1.1.0, so no \
             peer can give it to B, which has no upstream\n--- A ---\n{}",
            a.log_tail(20)
        )
    })?;
    ensure!(named == v2.2, "A's record names another tarball for 1.1.0");
    let view = npm
        .run(tmp.path(), &["view", "sync-news", "version"])?
        .ok()?;
    ensure!(
        view.stdout.trim() == "1.1.0",
        "npm view: {}",
        view.describe()
    );
    let project = tmp.path().join("project");
    fixtures::write_project(&project, &[("sync-news", "1.1.0")])?;
    let out = npm.install(&project).with_context(|| {
        format!(
            "npm install sync-news@1.1.0 through B\n--- B ---\n{}\n--- A ---\n{}",
            b.log_tail(30),
            a.log_tail(30)
        )
    })?;
    say(&format!(
        "npm install sync-news@1.1.0 through B: ok in {:.2}s",
        out.elapsed.as_secs_f64()
    ));
    check_tree(&npm, &project, &[("sync-news", "1.1.0")])?;
    ensure!(
        npm.run(tmp.path(), &["view", "sync-news", "dist.integrity"])?
            .ok()?
            .stdout
            .trim()
            == v2.0.integrity
    );

    // The upstream saw A's requests only: B has no upstream and sent nothing.
    let b_status = b.status()?;
    ensure!(b_status.upstream.is_none());
    ensure!(b.counter("upstream_requests")? == 0);
    let data = sync::data_requests(&up);
    ensure!(
        data.iter()
            .all(|p| p.starts_with("/sync-news") || p == "/-/npm/v1/keys"),
        "the upstream saw other requests: {data:?}"
    );
    probe::wait_for(
        Duration::from_secs(5),
        "A's count to match the upstream's log",
        || {
            let sent = a.counter("upstream_requests").ok()? - a_requests;
            (sent == sync::data_requests(&up).len() as u64).then_some(())
        },
    )
    .with_context(|| format!("upstream log: {:?}", sync::data_requests(&up)))?;
    say(&format!(
        "upstream requests since the publish (besides the feed): {data:?}"
    ));

    let report = run_cli(&["status", "--data-dir", arg(&a.data_dir)])?;
    eprintln!(
        "[sync] $ open-registry status --data-dir <A>\n{}",
        report.stdout
    );
    ensure!(
        report.stdout.contains("upstream seq 3, processed 3, lag 0")
            && report.stdout.contains("oldest pinned packument confirmed"),
        "{}",
        report.stdout
    );
    say(&format!(
        "test took {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

// ---- 4. a restart resumes the feed at the stored sequence --------------------------------

#[test]
fn a_restart_resumes_the_feed_at_the_stored_sequence() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    let cached = publish(&up, &PackageSpec::new("sync-cached", "1.0.0"))?; // seq 1
    let feed = format!("{}/_changes", up.url());
    let mut a = NodeProcess::start(&[
        "--upstream",
        up.url(),
        "--changes-feed",
        &feed,
        "--changes-poll",
        "200ms",
        "--max-age",
        "1h",
    ])?;
    let a_id = a.status()?.peer_id;
    let at = |a: &NodeProcess, seq: u64| {
        probe::wait_for(
            PROPAGATION,
            &format!("A to process the feed up to {seq}"),
            || {
                sync::sync_status(a)
                    .ok()
                    .filter(|s| s.processed_seq == Some(seq) && s.upstream_seq == Some(seq))
            },
        )
    };
    // A first start begins at the feed's head.
    at(&a, 1)?;
    let first = sync::feed_requests(&up);
    ensure!(
        first.first().and_then(|r| r.since.as_deref()) == Some("now"),
        "a first start should begin at the head: {first:?}"
    );
    fetch(&a, &cached.0, &cached.1)?;
    publish(&up, &PackageSpec::new("sync-cached", "1.1.0"))?; // seq 2, handled while running
    at(&a, 2)?;
    ensure!(
        sync::operator_record(&a, &a_id, "sync-cached")?
            .versions
            .contains_key("1.1.0")
    );

    a.stop()?;
    up.reset_hits();
    publish(&up, &PackageSpec::new("sync-cached", "1.2.0"))?; // seq 3: cached here
    publish(&up, &PackageSpec::new("sync-uncached", "1.0.0"))?; // seq 4: not cached here
    a.restart()?;
    let s = at(&a, 4).with_context(|| a.log_tail(40))?;
    // Let it poll a few more times, to see where it stays.
    probe::wait_for(Duration::from_secs(10), "three feed polls", || {
        (sync::feed_requests(&up).len() >= 3).then_some(())
    })?;
    let requests = sync::feed_requests(&up);
    say(&format!(
        "feed requests after the restart: {:?}",
        requests.iter().map(|r| r.raw.as_str()).collect::<Vec<_>>()
    ));
    ensure!(
        requests.first().and_then(FeedRequest::since_seq) == Some(2),
        "the first request after the restart should ask since=2: {requests:?}"
    );
    let sinces: Vec<Option<u64>> = requests.iter().map(FeedRequest::since_seq).collect();
    ensure!(
        sinces.iter().all(|s| s.is_some_and(|s| s >= 2)),
        "a request went back before the stored sequence (or to `now`): {requests:?}"
    );
    ensure!(
        sinces.windows(2).all(|w| w[0] <= w[1]),
        "the feed position went backwards: {requests:?}"
    );
    ensure!(sinces.last() == Some(&Some(4)), "{requests:?}");

    // The cached package's change was handled once; the uncached package was not fetched.
    ensure!(
        s.refreshed == 1,
        "refreshed {} packages since the restart, expected 1",
        s.refreshed
    );
    let data = sync::data_requests(&up);
    let count = |path: &str| data.iter().filter(|p| *p == path).count();
    ensure!(
        count("/sync-cached") == 1,
        "sync-cached was fetched {} times: {data:?}",
        count("/sync-cached")
    );
    ensure!(
        count("/sync-uncached") == 0,
        "the uncached package was fetched: {data:?}"
    );
    let record = sync::operator_record(&a, &a_id, "sync-cached")?;
    ensure!(
        record.versions.contains_key("1.2.0"),
        "A's record lacks 1.2.0: {:?}",
        record.versions.keys()
    );
    ensure!(s.lag == Some(0) && s.errors == 0, "{s:?}");
    say(&format!(
        "test took {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

// ---- 5. pin add --top N --------------------------------------------------------------------

#[test]
fn pin_add_top_pins_what_the_network_requests_most() -> Result<()> {
    let started = Instant::now();
    let up = FakeUpstream::start()?;
    for x in ["a", "b", "c", "d", "e", "f"] {
        up.publish(&PackageSpec::new(&format!("sync-pop-{x}"), "1.0.0"))?;
    }
    let tmp = tempfile::tempdir()?;
    let dirs: Vec<_> = (1..=3).map(|i| tmp.path().join(format!("n{i}"))).collect();
    let ids = dirs
        .iter()
        .map(|d| sync::operator_id(d))
        .collect::<Result<Vec<_>>>()?;
    let mut nodes: Vec<NodeProcess> = Vec::new();
    let mut addr: Option<String> = None;
    for (i, dir) in dirs.iter().enumerate() {
        let mut b = NodeProcess::builder().data_dir(dir).args([
            "--upstream",
            up.url(),
            "--popularity-interval",
            "1s",
        ]);
        for (j, id) in ids.iter().enumerate() {
            if j != i {
                b = b.args(["--trust", id.as_str()]);
            }
        }
        // Bootstrap in a line: n2 knows n1, n3 knows n2.
        if let Some(a) = &addr {
            b = b.args(["--bootstrap", a.as_str()]);
        }
        let node = b.start()?;
        let (id, a) = sync::p2p_addr(&node)?;
        ensure!(id == ids[i], "node {i} runs as {id}, `id` said {}", ids[i]);
        addr = Some(a);
        nodes.push(node);
    }
    for n in &nodes {
        wait_routing(n, 1)?;
    }

    // Requests per node: every node's own top 3 differs from the network's.
    let plan: [&[(&str, u64)]; 3] = [
        &[("a", 5), ("b", 4), ("c", 3)],
        &[("d", 4), ("e", 3), ("f", 2)],
        &[("d", 4), ("e", 3), ("c", 1)],
    ];
    let top3 = |counts: &BTreeMap<String, u64>| -> Vec<String> {
        let mut v: Vec<(&String, &u64)> = counts.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
        v.into_iter().take(3).map(|(n, _)| n.clone()).collect()
    };
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    let mut own_tops = Vec::new();
    for (node, requests) in nodes.iter().zip(plan) {
        let mut own = BTreeMap::new();
        for (x, times) in requests {
            let name = format!("sync-pop-{x}");
            for _ in 0..*times {
                get_ok(node, &format!("/{name}"))?;
            }
            own.insert(name.clone(), *times);
            *total.entry(name).or_default() += times;
        }
        own_tops.push(top3(&own));
    }
    let want = top3(&total);
    for own in &own_tops {
        ensure!(
            own.iter().collect::<BTreeSet<_>>() != want.iter().collect::<BTreeSet<_>>(),
            "the plan is wrong: a node's own top 3 {own:?} is the network's"
        );
    }
    say(&format!(
        "requests: {total:?}; network top 3 {want:?}; own top 3s {own_tops:?}"
    ));

    // n1 hears both other operators' summaries, with every request counted.
    let t0 = Instant::now();
    let target = &nodes[0];
    let heard = probe::wait_for(PROPAGATION, "n1 to aggregate every node's requests", || {
        let (operators, packages) = sync::popular(target, 50).ok()?;
        let got: BTreeMap<String, u64> = packages.into_iter().collect();
        (operators == 2 && got == total).then_some(got)
    })
    .with_context(|| {
        format!(
            "n1 has {:?}\n{}",
            sync::popular(target, 50).ok(),
            target.log_tail(30)
        )
    })?;
    say(&format!(
        "n1 aggregated {heard:?} from 2 operators in {:.2}s",
        t0.elapsed().as_secs_f64()
    ));

    let data = arg(&target.data_dir);
    let out = run_cli(&["pin", "add", "--top", "3", "--data-dir", data])?;
    say(&format!("pin add --top 3: {}", out.stdout.trim()));
    ensure!(
        out.stdout
            .contains(&format!("most requested: {}", want.join(", "))),
        "{}",
        out.describe()
    );
    let ls = run_cli(&["pin", "ls", "--json", "--data-dir", data])?;
    let v: serde_json::Value = serde_json::from_str(&ls.stdout)
        .map_err(|e| anyhow!("pin ls --json: {e}: {}", ls.stdout))?;
    let pinned: BTreeSet<String> = sync::pins_of(&v)?.into_keys().collect();
    ensure!(
        pinned == want.iter().cloned().collect::<BTreeSet<_>>(),
        "pinned {pinned:?}, the network's top 3 is {want:?}"
    );
    say(&format!(
        "test took {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

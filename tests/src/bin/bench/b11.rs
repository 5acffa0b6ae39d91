//! B11: how a node's costs grow with what it stores. Stores of 10 k, 100 k and 1 M blobs
//! (smoke: 1 k and 5 k) are generated with the node's own store code (`open_registry_node::
//! store`), so the layout and the persisted totals are exactly what the node reads, and kept
//! between runs (keyed by size and by a fingerprint of the node's store code). At each size the
//! real `open-registry` process is started on a copy of the store (blob files hard-linked,
//! the index copied: the cached store is never touched by a node) with `--no-upstream`, so
//! everything it serves comes from the store, and one small peer on the network:
//!
//! - start: spawn → the gateway answers `/-/ping` (median of `runs` starts);
//! - RSS after a few seconds idle;
//! - `GET /-/open-registry/status` latency, p50 and p99 of sequential requests;
//! - DHT messages per minute over a window (`dht_messages_sent` from `/-/metrics` when the
//!   node has it, else `dht_requests`; the table names the one used);
//! - the B1 / B2 hot paths (an abbreviated packument and a tarball of the store, under the
//!   B1 load), compared with the same figures at the smallest size;
//! - eviction: a restart with a cache budget just under what is stored, so one pass evicts
//!   10 % of the budget (the node evicts down to 90 % of it): time from spawn until the status
//!   reports the store under 90 % of the budget, and the blobs evicted.
//!
//! It prints a table of every metric × size with the targets' verdicts and writes an SVG of the
//! cost growth (log-x) next to the JSON results.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use open_registry_node::clock::Clock;
use open_registry_node::store::{PackumentEntry, Store};
use open_registry_protocol::status::StoreStats;
use open_registry_protocol::{Integrity, PackageName, Verifier};
use open_registry_tests::fixtures::pseudo_random_bytes;
use open_registry_tests::{NodeProcess, Tarball, http};
use serde_json::{Value, json};
use sha2::Digest as _;

use crate::b1;
use crate::load::{self, LoadGen, NPM_ACCEPT, Spec};
use crate::report::{Report, Table, fmt_bytes, fmt_ms, fmt_rate, fmt_ratio, median, ratio};
use crate::synth::{self, Rng};
use crate::targets::{self, Peer, parse_metrics};
use crate::{Ctx, sys};

/// Bumped when what the generator writes changes (names, contents, documents).
const GENERATOR: u32 = 1;
/// Tarballs per package; each package adds one packument blob as well.
const TARBALLS: usize = 10;
/// Packages written at once while generating: their durable writes share fsyncs (the store's
/// group commit).
const WRITERS: usize = 64;
/// Where the generated packuments say their tarballs are (`.invalid` never resolves; the
/// gateway rewrites tarball URLs to itself anyway).
const ORIGIN: &str = "http://upstream.invalid";
/// The largest blob the generator writes is well under this.
const MAX_BLOB: u64 = 1 << 20;
/// The node's `dht_messages_sent` counter (every outbound Kademlia request), and the older one
/// that counts only the requests of lookups.
const DHT_COUNTERS: [&str; 2] = ["dht_messages_sent", "dht_requests"];

/// The package name of package `i`.
fn pkg(i: usize) -> String {
    format!("pkg-{i}")
}

/// Tarball `k` of package `i`: file name and bytes (200 B – 2 KiB, incompressible like a
/// `.tgz`; the same for a given `(i, k)` at every size).
fn tarball(i: usize, k: usize) -> (String, Vec<u8>) {
    let seed = ((i as u64) << 8) | k as u64;
    let mut rng = Rng::new(seed ^ 0xb11);
    let len = rng.range(200, 2048) as usize;
    (
        format!("pkg-{i}-1.0.{k}.tgz"),
        pseudo_random_bytes(seed, len),
    )
}

/// `1k`, `10k`, `1M`.
pub(crate) fn size_label(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// `10k` → 10 000, `1M` → 1 000 000 (for `--sizes`).
pub(crate) fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1000),
        Some('m' | 'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("a store size is a number of blobs (10k, 1M), not {s:?}"))?;
    if n * mult < 2 * (TARBALLS as u64 + 1) {
        bail!("a store of {s} blobs is too small");
    }
    Ok(n * mult)
}

/// A fingerprint of the node's store format: the generator's version and the node's store
/// code (`node/src/store/*.rs`). When either changes, cached stores are generated again.
fn store_format() -> String {
    let mut h = sha2::Sha256::new();
    h.update(GENERATOR.to_le_bytes());
    let dir = open_registry_tests::tools::repo_root().join("node/src/store");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    for f in files {
        h.update(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.update(fs::read(&f).unwrap_or_default());
    }
    hex::encode(&h.finalize()[..6])
}

/// A generated store, as its marker file describes it.
#[derive(Debug, Clone)]
struct Generated {
    /// The size asked for (blobs).
    nominal: u64,
    /// The data dir (blobs/, db/).
    data: PathBuf,
    packages: usize,
    blobs: u64,
    bytes: u64,
    packuments: u64,
    tarballs: u64,
    /// Seconds it took to generate, and whether this run did it.
    secs: f64,
    fresh: bool,
}

impl Generated {
    fn json(&self) -> Value {
        json!({"packages": self.packages, "blobs": self.blobs, "bytes": self.bytes,
            "packuments": self.packuments, "tarballs": self.tarballs, "secs": self.secs})
    }
}

/// The cached store of `blobs` blobs (format `format`), generated first when missing.
fn cached_store(ctx: &Ctx, root: &Path, blobs: u64, format: &str) -> Result<Generated> {
    let packages = (blobs as usize).div_ceil(TARBALLS + 1);
    let dir = root.join(format!("b11-store-{}-{format}", size_label(blobs)));
    let marker = dir.join("b11-store.json");
    if let Ok(b) = fs::read(&marker)
        && let Ok(v) = serde_json::from_slice::<Value>(&b)
        && v["format"] == format
        && v["packages"] == packages
    {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        println!(
            "   store of {} blobs: cached in {}",
            size_label(blobs),
            dir.display()
        );
        return Ok(Generated {
            nominal: blobs,
            data: dir.join("data"),
            packages,
            blobs: n("blobs"),
            bytes: n("bytes"),
            packuments: n("packuments"),
            tarballs: n("tarballs"),
            secs: v["secs"].as_f64().unwrap_or(f64::NAN),
            fresh: false,
        });
    }
    // Stores of this size in an older format: gone, for the disk's sake.
    let prefix = format!("b11-store-{}-", size_label(blobs));
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            println!("   removing {} (another format)", e.path().display());
            fs::remove_dir_all(e.path())?;
        }
    }
    fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    println!(
        "   generating a store of {} blobs ({packages} packages) in {}",
        size_label(blobs),
        dir.display()
    );
    let t0 = Instant::now();
    let usage = generate(&data, packages)?;
    seal(ctx, &data, &usage)?;
    let secs = t0.elapsed().as_secs_f64();
    let g = Generated {
        nominal: blobs,
        data,
        packages,
        blobs: usage.blobs,
        bytes: usage.bytes,
        packuments: usage.packuments,
        tarballs: usage.tarballs,
        secs,
        fresh: true,
    };
    println!(
        "   generated {} blobs ({}) in {secs:.1}s",
        g.blobs,
        fmt_bytes(g.bytes)
    );
    let mut doc = g.json();
    doc["format"] = json!(format);
    fs::write(&marker, serde_json::to_vec_pretty(&doc)?)?;
    Ok(g)
}

/// Writes `packages` packages into a new store in `data` with the node's store code, many at
/// once, and closes it cleanly (so the node trusts its totals and audits nothing).
fn generate(data: &Path, packages: usize) -> Result<StoreStats> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Arc::new(
            Store::open(data, Clock::system())
                .await
                .map_err(|e| anyhow!("{e}"))?,
        );
        let next = Arc::new(AtomicUsize::new(0));
        let mut writers = tokio::task::JoinSet::new();
        for _ in 0..WRITERS {
            let (store, next) = (store.clone(), next.clone());
            writers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= packages {
                        return anyhow::Ok(());
                    }
                    write_package(&store, i).await?;
                }
            });
        }
        let mut last = Instant::now();
        let t0 = Instant::now();
        loop {
            tokio::select! {
                r = writers.join_next() => match r {
                    Some(r) => r??,
                    None => break,
                },
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
            }
            if last.elapsed() >= Duration::from_secs(10) {
                last = Instant::now();
                let done = next.load(Ordering::Relaxed).min(packages);
                println!(
                    "   … {done}/{packages} packages, {:.0} blobs/s",
                    (done * (TARBALLS + 1)) as f64 / t0.elapsed().as_secs_f64()
                );
            }
        }
        store.flush().await.map_err(|e| anyhow!("{e}"))?;
        Ok(store.stats())
    })
}

/// Runs the node once on a freshly generated store, without the network, until it reports
/// the totals the generator wrote, and stops it (SIGTERM): whatever the node does on its first
/// start and at a clean shutdown (keys made, totals recounted and saved) is done before
/// anything is measured.
fn seal(ctx: &Ctx, data: &Path, want: &StoreStats) -> Result<()> {
    let mut node = NodeProcess::builder()
        .binary(&ctx.node_bin)
        .data_dir(data)
        .args(["--no-upstream", "--no-p2p"])
        .env("RUST_LOG", "warn")
        .start()?;
    sys::register_pid(node.pid());
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = node.status()?.store;
        if s == *want {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the node on the generated store reports {s:?}, not {want:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut scratch = Report::new();
    stop(&mut node, &mut scratch)?;
    if scratch.failed() {
        bail!("the node on the generated store did not stop cleanly");
    }
    Ok(())
}

/// Package `i`: its tarballs (stored with their npm integrity checked, as an ingest does) and
/// then its packument, a real document naming them.
async fn write_package(store: &Store, i: usize) -> Result<()> {
    let name = pkg(i);
    let pname = PackageName::parse(&name)?;
    let tarballs = (0..TARBALLS).map(|k| {
        let pname = &pname;
        async move {
            let (file, bytes) = tarball(i, k);
            let t = Tarball::from_bytes(bytes);
            let integrity = Integrity::parse(&t.integrity)?;
            let id = store
                .blobs
                .put(&t.bytes, Verifier::new(integrity), MAX_BLOB)
                .await?;
            store.index.set_tarball(pname, &file, &id).await?;
            anyhow::Ok((k, file, t.integrity, t.shasum))
        }
    });
    let dists = futures::future::try_join_all(tarballs).await?;
    let doc = packument(&name, i, &dists);
    let bytes = serde_json::to_vec(&doc)?;
    let id = store
        .blobs
        .put(&bytes, Verifier::id_only(), MAX_BLOB)
        .await?;
    let entry = PackumentEntry {
        id,
        etag: Some(format!("\"b11-{i}\"")),
        last_modified: None,
        checked_at: open_registry_node::clock::now_ms(),
    };
    store.index.set_packument(&pname, &entry).await?;
    Ok(())
}

/// A full packument for `name` whose versions' `dist` name the stored tarballs.
fn packument(name: &str, i: usize, dists: &[(usize, String, String, String)]) -> Value {
    let mut rng = Rng::new(i as u64 + 11);
    let mut versions = serde_json::Map::new();
    let mut time = serde_json::Map::new();
    time.insert("created".into(), json!("2024-01-01T00:00:00.000Z"));
    for (k, file, integrity, shasum) in dists {
        let version = format!("1.0.{k}");
        let mut m = synth::manifest(name, &version, &mut rng);
        m["_id"] = json!(format!("{name}@{version}"));
        m["dist"] = json!({
            "tarball": format!("{ORIGIN}/{name}/-/{file}"),
            "integrity": integrity,
            "shasum": shasum,
        });
        time.insert(
            version.clone(),
            json!(format!("2024-01-{:02}T00:00:00.000Z", k + 2)),
        );
        versions.insert(version, m);
    }
    time.insert(
        "modified".into(),
        json!(format!("2024-01-{:02}T00:00:00.000Z", TARBALLS + 1)),
    );
    json!({
        "_id": name,
        "name": name,
        "description": format!("generated package {i}"),
        "dist-tags": {"latest": format!("1.0.{}", TARBALLS - 1)},
        "versions": versions,
        "time": time,
        "license": "MIT",
        "readme": format!("# {name}\n\nA package of the B11 store."),
    })
}

/// A working copy of a generated data dir: blob files hard-linked (the node only ever adds or
/// deletes them, never writes one in place), everything else copied.
fn working_copy(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        fs::remove_dir_all(dst)?;
    }
    fs::create_dir_all(dst)?;
    for e in fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_name() == "blobs" {
            let shards: Vec<PathBuf> = fs::read_dir(e.path())?
                .filter_map(|s| s.ok().map(|s| s.path()))
                .collect();
            fs::create_dir_all(&to)?;
            // A few threads: a million links is mostly system calls.
            let chunks: Vec<Vec<PathBuf>> = shards.chunks(64).map(<[PathBuf]>::to_vec).collect();
            std::thread::scope(|s| {
                let handles: Vec<_> = chunks
                    .into_iter()
                    .map(|chunk| {
                        let to = &to;
                        s.spawn(move || -> Result<()> {
                            for shard in chunk {
                                let name = shard.file_name().context("shard name")?;
                                let out = to.join(name);
                                fs::create_dir_all(&out)?;
                                for f in fs::read_dir(&shard)? {
                                    let f = f?;
                                    fs::hard_link(f.path(), out.join(f.file_name()))?;
                                }
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().map_err(|_| anyhow!("a link thread panicked"))??;
                }
                anyhow::Ok(())
            })?;
        } else {
            copy_tree(&e.path(), &to)?;
        }
    }
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    if src.is_dir() {
        fs::create_dir_all(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
    } else {
        fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    }
    Ok(())
}

/// Percentile `p` (0..1) of sorted `v`.
fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// What was measured at one size.
#[derive(Debug, Clone, Default)]
struct Figures {
    blobs: u64,
    bytes: u64,
    packuments: u64,
    tarballs: u64,
    gen_secs: f64,
    gen_fresh: bool,
    /// Every start, ms.
    starts_ms: Vec<f64>,
    /// Every stop (SIGTERM → exit), ms.
    stops_ms: Vec<f64>,
    start_ms: f64,
    rss_kib: Option<u64>,
    status_p50_ms: f64,
    status_p99_ms: f64,
    status_n: usize,
    /// Counter used, messages in the window, the window.
    dht_counter: String,
    dht_messages: u64,
    dht_window_secs: f64,
    b1_rps: f64,
    b1_p99_ms: f64,
    b2_rps: f64,
    b2_p99_ms: f64,
    evict_ms: f64,
    evict_ready_ms: f64,
    evicted_blobs: u64,
    evicted_bytes: u64,
    evict_cap: u64,
}

impl Figures {
    fn dht_per_min(&self) -> f64 {
        if self.dht_window_secs > 0.0 {
            self.dht_messages as f64 * 60.0 / self.dht_window_secs
        } else {
            f64::NAN
        }
    }

    fn rss_mb(&self) -> f64 {
        self.rss_kib.map_or(f64::NAN, |k| k as f64 * 1024.0 / 1e6)
    }

    fn json(&self) -> Value {
        json!({
            "blobs": self.blobs, "bytes": self.bytes, "packuments": self.packuments,
            "tarballs": self.tarballs, "generated_secs": self.gen_secs,
            "generated_this_run": self.gen_fresh,
            "starts_ms": self.starts_ms, "start_ms": self.start_ms, "stops_ms": self.stops_ms, "rss_idle_kib": self.rss_kib,
            "status_p50_ms": self.status_p50_ms, "status_p99_ms": self.status_p99_ms,
            "status_requests": self.status_n,
            "dht_counter": self.dht_counter, "dht_messages": self.dht_messages,
            "dht_window_secs": self.dht_window_secs, "dht_per_min": self.dht_per_min(),
            "b1_rps": self.b1_rps, "b1_p99_ms": self.b1_p99_ms,
            "b2_rps": self.b2_rps, "b2_p99_ms": self.b2_p99_ms,
            "evict_cap": self.evict_cap, "evict_ms": self.evict_ms,
            "evict_after_ready_ms": self.evict_ready_ms,
            "evicted_blobs": self.evicted_blobs, "evicted_bytes": self.evicted_bytes,
        })
    }
}

/// The node's counters from `/-/metrics`, by short name.
fn metrics(node: &NodeProcess) -> Result<BTreeMap<String, u64>> {
    let r = node.get("/-/metrics", &[])?;
    if r.status != 200 {
        bail!("{}/-/metrics answered {}", node.gateway(), r.status);
    }
    Ok(parse_metrics(&r.text()))
}

/// A big node on `data`: no upstream (all it serves is the store), bootstrapped to `peer`.
fn start_big(ctx: &Ctx, data: &Path, peer: &Peer, extra: &[String]) -> Result<(NodeProcess, f64)> {
    let b = NodeProcess::builder()
        .binary(&ctx.node_bin)
        .data_dir(data)
        .args([
            "--no-upstream",
            "--max-age",
            "1h",
            "--bootstrap",
            &peer.addr,
        ])
        .args(extra.iter().map(String::as_str))
        .env("RUST_LOG", "warn");
    let t0 = Instant::now();
    let node = b.start()?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    sys::register_pid(node.pid());
    Ok((node, ms))
}

/// How long a stop may take: the node lets in-flight work (an announcement of the whole
/// store, say) run for up to 10 s before it closes the store, longer than the test harness's
/// own grace.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// SIGTERM and wait for the exit (milliseconds): the store is closed cleanly, so the next start
/// trusts its totals. A node that had to be killed is a failure.
fn stop(node: &mut NodeProcess, report: &mut Report) -> Result<f64> {
    let Some(mut child) = node.child.take() else {
        return Ok(0.0);
    };
    let t0 = Instant::now();
    let status = open_registry_tests::process::stop_group(&mut child, STOP_GRACE)?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if let Some(s) = status
        && !s.success()
    {
        report.fail(format!(
            "the node did not stop cleanly ({s})\n{}",
            node.log_tail(20)
        ));
    }
    Ok(ms)
}

/// Everything at one size.
fn measure(
    ctx: &Ctx,
    lg: LoadGen,
    g: &Generated,
    work: &Path,
    window: Duration,
    report: &mut Report,
) -> Result<Figures> {
    let label = size_label(g.nominal);
    let mut f = Figures {
        blobs: g.blobs,
        bytes: g.bytes,
        packuments: g.packuments,
        tarballs: g.tarballs,
        gen_secs: g.secs,
        gen_fresh: g.fresh,
        ..Figures::default()
    };
    let t0 = Instant::now();
    working_copy(&g.data, work)?;
    println!(
        "   [{label}] working copy in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let peer = targets::start_peer(ctx, None, &[], &[])?;

    // Starts: spawn → the gateway answers; every one but the last is stopped again.
    let mut node = None;
    for run in 0..ctx.runs {
        let (mut n, ms) = start_big(ctx, work, &peer, &[])?;
        println!(
            "   [{label}] start {}/{}: {}",
            run + 1,
            ctx.runs,
            fmt_ms(ms)
        );
        f.starts_ms.push(ms);
        if run + 1 < ctx.runs {
            f.stops_ms.push(stop(&mut n, report)?);
        } else {
            node = Some(n);
        }
    }
    let mut node = node.context("no start")?;
    f.start_ms = median(&f.starts_ms);
    let dht_t0 = Instant::now();
    let before = metrics(&node)?;
    let counter = DHT_COUNTERS
        .iter()
        .find(|c| before.contains_key(**c))
        .map(|c| (*c).to_owned());
    let st = node.status()?;
    if (st.store.blobs, st.store.packuments, st.store.tarballs)
        != (g.blobs, g.packuments, g.tarballs)
    {
        report.fail(format!(
            "[{label}] the node reports {} blobs, {} packuments, {} tarballs; the store holds {}, {}, {}",
            st.store.blobs, st.store.packuments, st.store.tarballs, g.blobs, g.packuments, g.tarballs
        ));
    }

    // Idle, then RSS.
    std::thread::sleep(if ctx.smoke {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    });
    f.rss_kib = node.pid().and_then(sys::rss_kib).map(|(rss, _)| rss);

    // Status latency: `n` requests, or as many as fit in `budget` (a busy node answers slowly).
    let (n, budget) = if ctx.smoke {
        (50, Duration::from_secs(3))
    } else {
        (500, Duration::from_secs(30))
    };
    let url = format!("{}/-/open-registry/status", node.gateway());
    let mut ms = Vec::with_capacity(n);
    let began = Instant::now();
    while ms.len() < n && (ms.is_empty() || began.elapsed() < budget) {
        let t = Instant::now();
        let r = http::get(&url, Duration::from_secs(10))?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.status != 200 {
            report.fail(format!("[{label}] status answered {}", r.status));
            break;
        }
    }
    ms.sort_by(f64::total_cmp);
    (f.status_p50_ms, f.status_p99_ms, f.status_n) = (pct(&ms, 0.5), pct(&ms, 0.99), ms.len());

    // The hot paths: a packument and a tarball of the store (the same ones at every size).
    let i = 0;
    let name = pkg(i);
    let (file, bytes) = tarball(i, 0);
    let pack_url = format!("{}/{name}", node.gateway());
    let plain = targets::get(
        &pack_url,
        &[("Accept", NPM_ACCEPT)],
        Duration::from_secs(30),
    )?;
    let abbreviated = plain
        .header("content-type")
        .is_some_and(|c| c.contains("vnd.npm.install-v1"));
    let versions = serde_json::from_slice::<Value>(&plain.body)
        .ok()
        .and_then(|v| v["versions"].as_object().map(serde_json::Map::len));
    if plain.status != 200 || !abbreviated || versions != Some(TARBALLS) {
        report.fail(format!(
            "[{label}] GET /{name}: {} {:?}, {versions:?} versions (wanted the abbreviated document with {TARBALLS})",
            plain.status,
            plain.header("content-type")
        ));
    }
    let tar_path = format!("/{name}/-/{file}");
    let tar = targets::get(
        &format!("{}{tar_path}", node.gateway()),
        &[("Accept-Encoding", "gzip")],
        Duration::from_secs(30),
    )?;
    if tar.status != 200 || tar.body != bytes {
        report.fail(format!(
            "[{label}] GET {tar_path}: {} with {} bytes, not the stored {} bytes",
            tar.status,
            tar.body.len(),
            bytes.len()
        ));
    }
    let cases = [
        ("B1", format!("/{name}"), b1::npm_headers()),
        (
            "B2",
            tar_path.clone(),
            vec![("Accept-Encoding".to_owned(), "gzip".to_owned())],
        ),
    ];
    for (what, path, headers) in cases {
        let mut outs = Vec::new();
        for run in 0..ctx.runs {
            let o = load::run(
                lg,
                &Spec {
                    url: format!("{}{path}", node.gateway()),
                    headers: headers.clone(),
                    connections: b1::CONNECTIONS,
                    duration: ctx.duration,
                },
            )?;
            println!(
                "   [{label}] {what} run {}/{}: {} req/s p99 {} {}",
                run + 1,
                ctx.runs,
                fmt_rate(o.rps),
                fmt_ms(o.p99_ms),
                o.problems()
            );
            if o.requests == 0 || o.non_2xx > 0 {
                report.fail(format!(
                    "[{label}] {what} {path}: {} requests, {}",
                    o.requests,
                    o.problems()
                ));
            }
            outs.push(o);
        }
        let (rps, p99) = b1::med(&outs);
        if what == "B1" {
            (f.b1_rps, f.b1_p99_ms) = (rps, p99);
        } else {
            (f.b2_rps, f.b2_p99_ms) = (rps, p99);
        }
    }

    // The rest of the DHT window, then its count.
    let left = window.saturating_sub(dht_t0.elapsed());
    if !left.is_zero() {
        println!(
            "   [{label}] DHT window: {:.0}s more",
            left.as_secs_f64().ceil()
        );
        std::thread::sleep(left);
    }
    let after = metrics(&node)?;
    f.dht_window_secs = dht_t0.elapsed().as_secs_f64();
    match &counter {
        Some(c) => {
            f.dht_counter = c.clone();
            f.dht_messages = targets::delta(&before, &after, c);
        }
        None => report.fail(format!("[{label}] /-/metrics has none of {DHT_COUNTERS:?}")),
    }
    if let Ok(peers) = open_registry_tests::p2p::peers(&node)
        && peers["connected"].as_array().is_none_or(Vec::is_empty)
    {
        report.fail(format!("[{label}] the node has no peer connected"));
    }
    f.stops_ms.push(stop(&mut node, report)?);
    drop(node);

    // Eviction: a budget just under what is stored; one pass takes it to 90 % of the budget.
    let used = st.store.bytes;
    let cap = used - used / 1000;
    let low = cap - cap / 10;
    f.evict_cap = cap;
    let t0 = Instant::now();
    let (mut node, _) = start_big(
        ctx,
        work,
        &peer,
        &["--max-cache-size".into(), cap.to_string()],
    )?;
    let ready = t0.elapsed();
    let deadline = Instant::now()
        + if ctx.smoke {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(900)
        };
    let after = loop {
        let s = node.status()?;
        if s.store.bytes <= low {
            f.evict_ms = t0.elapsed().as_secs_f64() * 1000.0;
            f.evict_ready_ms = (t0.elapsed() - ready).as_secs_f64() * 1000.0;
            break s;
        }
        if Instant::now() >= deadline {
            report.fail(format!(
                "[{label}] eviction: the store still holds {} bytes after {:?} (budget {cap}, \
                 a pass ends at {low})",
                s.store.bytes,
                t0.elapsed()
            ));
            f.evict_ms = f64::NAN;
            f.evict_ready_ms = f64::NAN;
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    f.evicted_blobs = st.store.blobs.saturating_sub(after.store.blobs);
    f.evicted_bytes = used.saturating_sub(after.store.bytes);
    println!(
        "   [{label}] eviction: {} blobs ({}) in {}",
        f.evicted_blobs,
        fmt_bytes(f.evicted_bytes),
        fmt_ms(f.evict_ms)
    );
    stop(&mut node, report)?;
    drop(node);
    drop(peer);
    fs::remove_dir_all(work)?;
    Ok(f)
}

/// The commit measured, for the report (`git rev-parse --short HEAD`).
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(open_registry_tests::tools::repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let lg = b1::describe_gen(ctx, &mut report)?;
    let sizes = ctx.sizes.clone().unwrap_or_else(|| {
        if ctx.smoke {
            vec![1000, 5000]
        } else {
            vec![10_000, 100_000, 1_000_000]
        }
    });
    let window = ctx.window.unwrap_or(if ctx.smoke {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(600)
    });
    let format = store_format();
    let cache = ctx.results.join("tmp");
    fs::create_dir_all(&cache)?;
    report.note(format!(
        "commit {}, store format {format}, stores cached in {}",
        commit(),
        cache.display()
    ));
    report.note(format!("node binary {}", ctx.node_bin.display()));
    report.note(format!(
        "DHT window {:.0}s, {} start(s) per size",
        window.as_secs_f64(),
        ctx.runs
    ));
    let mut all: Vec<Figures> = Vec::new();
    for &n in &sizes {
        let g = cached_store(ctx, &cache, n, &format)?;
        let work = cache.join(format!("b11-run-{}", size_label(n)));
        let f = measure(ctx, lg, &g, &work, window, &mut report)?;
        all.push(f);
    }
    table(&mut report, &sizes, &all);
    checks(ctx, &mut report, &sizes, &all);
    report.data(
        "sizes",
        json!(
            sizes
                .iter()
                .zip(&all)
                .map(|(n, f)| json!({"size": n, "figures": f.json()}))
                .collect::<Vec<_>>()
        ),
    );
    let svg = plot(&sizes, &all, ctx.smoke);
    fs::create_dir_all(&ctx.results)?;
    let path = ctx
        .results
        .join(format!("B11{}.svg", if ctx.smoke { "-smoke" } else { "" }));
    fs::write(&path, svg)?;
    report.note(format!("plot: {}", path.display()));
    Ok(report)
}

/// Every metric × size.
fn table(report: &mut Report, sizes: &[u64], all: &[Figures]) {
    let mut header = vec!["metric".to_owned()];
    header.extend(sizes.iter().map(|n| format!("{} blobs", size_label(*n))));
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new("B11 cost growth with the store", &header_refs);
    let base = all.first();
    let row = |name: &str, cell: &dyn Fn(&Figures) -> String| {
        let mut r = vec![name.to_owned()];
        r.extend(all.iter().map(cell));
        r
    };
    t.row(row("stored: blobs / packuments / tarballs", &|f| {
        format!("{} / {} / {}", f.blobs, f.packuments, f.tarballs)
    }));
    t.row(row("stored bytes", &|f| fmt_bytes(f.bytes)));
    t.row(row("store generated", &|f| {
        format!(
            "{:.0}s{}",
            f.gen_secs,
            if f.gen_fresh { "" } else { " (cached)" }
        )
    }));
    t.row(row("start: spawn → gateway answers (median)", &|f| {
        fmt_ms(f.start_ms)
    }));
    t.row(row("stop: SIGTERM → exit (median)", &|f| {
        fmt_ms(median(&f.stops_ms))
    }));
    t.row(row("RSS idle", &|f| {
        if f.rss_mb().is_nan() {
            "n/a".into()
        } else {
            format!("{:.1} MB", f.rss_mb())
        }
    }));
    t.row(row("status latency p50 / p99", &|f| {
        format!("{} / {}", fmt_ms(f.status_p50_ms), fmt_ms(f.status_p99_ms))
    }));
    let counter = all
        .iter()
        .map(|f| f.dht_counter.as_str())
        .find(|c| !c.is_empty())
        .unwrap_or("dht");
    t.row(row(&format!("DHT messages / min ({counter})"), &|f| {
        format!(
            "{} ({} in {:.0}s)",
            fmt_rate(f.dht_per_min()),
            f.dht_messages,
            f.dht_window_secs
        )
    }));
    t.row(row("B1 packument req/s (p99), vs smallest", &|f| {
        format!(
            "{} ({}), {}",
            fmt_rate(f.b1_rps),
            fmt_ms(f.b1_p99_ms),
            fmt_ratio(base.map_or(f64::NAN, |b| ratio(f.b1_rps, b.b1_rps)))
        )
    }));
    t.row(row("B2 tarball req/s (p99), vs smallest", &|f| {
        format!(
            "{} ({}), {}",
            fmt_rate(f.b2_rps),
            fmt_ms(f.b2_p99_ms),
            fmt_ratio(base.map_or(f64::NAN, |b| ratio(f.b2_rps, b.b2_rps)))
        )
    }));
    t.row(row(
        "eviction of 10 % of the budget: spawn → done",
        &|f| fmt_ms(f.evict_ms),
    ));
    t.row(row("eviction: after the gateway answered", &|f| {
        fmt_ms(f.evict_ready_ms)
    }));
    t.row(row("eviction: blobs (bytes) evicted", &|f| {
        format!("{} ({})", f.evicted_blobs, fmt_bytes(f.evicted_bytes))
    }));
    report.table(t);
}

/// The targets: start and idle RSS at the largest size (1 M in a full run), DHT messages,
/// and the hot paths at every size against the smallest.
fn checks(ctx: &Ctx, report: &mut Report, sizes: &[u64], all: &[Figures]) {
    let (Some(&n), Some(big)) = (sizes.last(), all.last()) else {
        return;
    };
    let at = size_label(n);
    let note = if ctx.smoke || n < 1_000_000 {
        " (target is at 1M)"
    } else {
        ""
    };
    report.check(
        &format!("B11: start at {at} blobs{note}"),
        "≤ 2 s",
        fmt_ms(big.start_ms),
        (!big.start_ms.is_nan()).then_some(big.start_ms <= 2000.0),
    );
    report.check(
        &format!("B11: RSS idle at {at} blobs{note}"),
        "≤ 64 MB",
        format!("{:.1} MB", big.rss_mb()),
        (!big.rss_mb().is_nan()).then_some(big.rss_mb() <= 64.0),
    );
    // `dht_requests` counts only the requests of lookups, not announcements: no verdict on it.
    let per_s = big.dht_per_min() / 60.0;
    let counted = big.dht_counter == DHT_COUNTERS[0];
    report.check(
        &format!("B11: DHT messages at {at} blobs ({})", big.dht_counter),
        "≤ 10 /s",
        if counted {
            format!("{per_s:.1} /s")
        } else {
            format!(
                "{per_s:.1} /s (lookups only: no {} counter)",
                DHT_COUNTERS[0]
            )
        },
        (counted && !per_s.is_nan()).then_some(per_s <= 10.0),
    );
    let Some(base) = all.first() else { return };
    for (n, f) in sizes.iter().zip(all).skip(1) {
        for (what, x, b) in [
            ("B1 packument", f.b1_rps, base.b1_rps),
            ("B2 tarball", f.b2_rps, base.b2_rps),
        ] {
            let r = ratio(x, b);
            report.check(
                &format!(
                    "B11: {what} req/s at {} vs {}",
                    size_label(*n),
                    size_label(sizes[0])
                ),
                "≥ 0.9×",
                fmt_ratio(r),
                (!r.is_nan()).then_some(r >= 0.9),
            );
        }
    }
}

/// Four panels (start, idle RSS, status latency, eviction) against the store size, log-x,
/// as a self-contained SVG.
fn plot(sizes: &[u64], all: &[Figures], smoke: bool) -> String {
    /// A line: name, colour, one value per size.
    type Series<'a> = (&'a str, &'a str, Vec<f64>);
    /// A panel: title, target line, lines.
    type Panel<'a> = (&'a str, Option<(f64, &'a str)>, Vec<Series<'a>>);
    let panels: Vec<Panel<'_>> = vec![
        (
            "start: spawn → gateway answers (ms)",
            Some((2000.0, "target 2 s")),
            vec![("start", "#1f77b4", all.iter().map(|f| f.start_ms).collect())],
        ),
        (
            "RSS idle (MB)",
            Some((64.0, "target 64 MB")),
            vec![("RSS", "#2ca02c", all.iter().map(Figures::rss_mb).collect())],
        ),
        (
            "status latency (ms)",
            None,
            vec![
                (
                    "p50",
                    "#ff7f0e",
                    all.iter().map(|f| f.status_p50_ms).collect(),
                ),
                (
                    "p99",
                    "#d62728",
                    all.iter().map(|f| f.status_p99_ms).collect(),
                ),
            ],
        ),
        (
            "eviction of 10 % of the budget (ms)",
            None,
            vec![
                (
                    "spawn → done",
                    "#9467bd",
                    all.iter().map(|f| f.evict_ms).collect(),
                ),
                (
                    "after ready",
                    "#8c564b",
                    all.iter().map(|f| f.evict_ready_ms).collect(),
                ),
            ],
        ),
    ];
    let (pw, ph) = (420.0, 260.0);
    let (ml, mr, mt, mb) = (64.0, 16.0, 34.0, 40.0);
    let (w, h) = (pw * 2.0, ph * 2.0 + 40.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">B11: a node's costs against the blobs it stores{}</text>"#,
        w / 2.0,
        if smoke { " (smoke)" } else { "" }
    );
    let xs: Vec<f64> = sizes.iter().map(|n| (*n as f64).log10()).collect();
    // A quarter of a decade of room on either side of the sizes measured.
    let (mut x0, mut x1) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min) - 0.25,
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max) + 0.25,
    );
    if !x0.is_finite() || !x1.is_finite() {
        (x0, x1) = (3.0, 6.0);
    }
    for (pi, (title, target, series)) in panels.iter().enumerate() {
        let ox = (pi % 2) as f64 * pw;
        let oy = 40.0 + (pi / 2) as f64 * ph;
        let (left, right, top, bottom) = (ox + ml, ox + pw - mr, oy + mt, oy + ph - mb);
        let mut ymax = series
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        if let Some((t, _)) = target
            && *t < ymax * 3.0
        {
            ymax = ymax.max(*t);
        }
        let ymax = nice(ymax * 1.1);
        let px = |x: f64| left + (x - x0) / (x1 - x0) * (right - left);
        let py = |y: f64| bottom - y / ymax * (bottom - top);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
            (left + right) / 2.0,
            oy + 20.0,
            esc(title)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            right - left,
            bottom - top
        );
        // y grid: 4 steps.
        for k in 0..=4 {
            let y = ymax * f64::from(k) / 4.0;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{0}" x2="{right}" y2="{0}" stroke="#eee"/><text x="{1}" y="{2}" text-anchor="end">{3}</text>"##,
                py(y),
                left - 4.0,
                py(y) + 4.0,
                fmt_axis(y)
            );
        }
        // x: the sizes measured (log scale).
        for (x, n) in xs.iter().zip(sizes) {
            let _ = writeln!(
                s,
                r##"<line x1="{0}" y1="{top}" x2="{0}" y2="{bottom}" stroke="#eee"/><text x="{0}" y="{1}" text-anchor="middle">{2}</text>"##,
                px(*x),
                bottom + 14.0,
                size_label(*n)
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">blobs stored (log scale)</text>"##,
            (left + right) / 2.0,
            bottom + 30.0
        );
        if let Some((t, what)) = target
            && *t <= ymax
        {
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{0}" x2="{right}" y2="{0}" stroke="#d62728" stroke-dasharray="5,4"/><text x="{1}" y="{2}" text-anchor="end" fill="#d62728">{3}</text>"##,
                py(*t),
                right - 4.0,
                py(*t) - 4.0,
                esc(what)
            );
        }
        for (si, (name, color, v)) in series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = xs
                .iter()
                .zip(v)
                .filter(|(_, y)| y.is_finite())
                .map(|(x, y)| (px(*x), py(*y)))
                .collect();
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (x, y) in &pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{color}"/>"#
                );
            }
            let ly = top + 14.0 + si as f64 * 14.0;
            let _ = writeln!(
                s,
                r#"<line x1="{0}" y1="{1}" x2="{2}" y2="{1}" stroke="{color}" stroke-width="2"/><text x="{3}" y="{4}">{5}</text>"#,
                left + 8.0,
                ly - 4.0,
                left + 24.0,
                left + 28.0,
                ly,
                esc(name)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// A round axis maximum at or above `x`: 1, 2 or 5 × a power of ten.
fn nice(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * p)
}

fn fmt_axis(y: f64) -> String {
    if y >= 100.0 || y == 0.0 {
        format!("{y:.0}")
    } else if y >= 1.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_axes() {
        assert_eq!(parse_size("10k").unwrap(), 10_000);
        assert_eq!(parse_size("1M").unwrap(), 1_000_000);
        assert_eq!(parse_size("5000").unwrap(), 5000);
        assert!(parse_size("ten").is_err());
        assert_eq!(size_label(100_000), "100k");
        assert_eq!(size_label(1_000_000), "1M");
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(73.0), 100.0);
        assert_eq!(nice(1.2), 2.0);
        let (a, b) = tarball(3, 4);
        assert_eq!(a, "pkg-3-1.0.4.tgz");
        assert!((200..=2048).contains(&b.len()));
        assert_eq!(tarball(3, 4).1, b);
    }

    #[test]
    fn the_plot_is_an_svg() {
        let f = Figures {
            start_ms: 120.0,
            rss_kib: Some(30_000),
            status_p50_ms: 0.4,
            status_p99_ms: 1.2,
            evict_ms: 300.0,
            evict_ready_ms: 200.0,
            ..Figures::default()
        };
        let svg = plot(&[1000, 5000], &[f.clone(), f], true);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 6);
    }
}

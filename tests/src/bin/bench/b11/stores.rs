//! B11's stores: generated with the node's own store code, cached between runs by size and
//! by a fingerprint of that code, and copied (blob files hard-linked) for each measurement.

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
use open_registry_tests::{NodeProcess, Tarball};
use serde_json::{Value, json};
use sha2::Digest as _;

use super::stop;
use crate::report::{Report, fmt_bytes};
use crate::synth::{self, Rng};
use crate::{Ctx, sys};

/// Bumped when what the generator writes changes (names, contents, documents).
pub(super) const GENERATOR: u32 = 1;
/// Tarballs per package; each package adds one packument blob as well.
pub(super) const TARBALLS: usize = 10;
/// Packages written at once while generating: their durable writes share fsyncs (the store's
/// group commit).
pub(super) const WRITERS: usize = 64;
/// Where the generated packuments say their tarballs are (`.invalid` never resolves; the
/// gateway rewrites tarball URLs to itself anyway).
pub(super) const ORIGIN: &str = "http://upstream.invalid";
/// The largest blob the generator writes is well under this.
pub(super) const MAX_BLOB: u64 = 1 << 20;

/// The package name of package `i`.
pub(super) fn pkg(i: usize) -> String {
    format!("pkg-{i}")
}

/// Tarball `k` of package `i`: file name and bytes (200 B – 2 KiB, incompressible like a
/// `.tgz`; the same for a given `(i, k)` at every size).
pub(super) fn tarball(i: usize, k: usize) -> (String, Vec<u8>) {
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
pub(super) fn store_format() -> String {
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
pub(super) struct Generated {
    /// The size asked for (blobs).
    pub(super) nominal: u64,
    /// The data dir (blobs/, db/).
    pub(super) data: PathBuf,
    pub(super) packages: usize,
    pub(super) blobs: u64,
    pub(super) bytes: u64,
    pub(super) packuments: u64,
    pub(super) tarballs: u64,
    /// Seconds it took to generate, and whether this run did it.
    pub(super) secs: f64,
    pub(super) fresh: bool,
}

impl Generated {
    fn json(&self) -> Value {
        json!({"packages": self.packages, "blobs": self.blobs, "bytes": self.bytes,
            "packuments": self.packuments, "tarballs": self.tarballs, "secs": self.secs})
    }
}

/// The cached store of `blobs` blobs (format `format`), generated first when missing.
pub(super) fn cached_store(ctx: &Ctx, root: &Path, blobs: u64, format: &str) -> Result<Generated> {
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
pub(super) fn generate(data: &Path, packages: usize) -> Result<StoreStats> {
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
pub(super) fn seal(ctx: &Ctx, data: &Path, want: &StoreStats) -> Result<()> {
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
pub(super) async fn write_package(store: &Store, i: usize) -> Result<()> {
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
pub(super) fn packument(name: &str, i: usize, dists: &[(usize, String, String, String)]) -> Value {
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
pub(super) fn working_copy(src: &Path, dst: &Path) -> Result<()> {
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

pub(super) fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(parse_size("10k").unwrap(), 10_000);
        assert_eq!(parse_size("1M").unwrap(), 1_000_000);
        assert_eq!(parse_size("5000").unwrap(), 5000);
        assert!(parse_size("ten").is_err());
        assert_eq!(size_label(100_000), "100k");
        assert_eq!(size_label(1_000_000), "1M");
        let (a, b) = tarball(3, 4);
        assert_eq!(a, "pkg-3-1.0.4.tgz");
        assert!((200..=2048).contains(&b.len()));
        assert_eq!(tarball(3, 4).1, b);
    }
}

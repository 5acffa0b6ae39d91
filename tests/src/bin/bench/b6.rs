//! B6: ingest throughput — the node's own store (`open_registry_node::store`: stream the bytes
//! through `Verifier`, npm sha512 integrity + BLAKE3 content id, and commit them durably under
//! their CID, grouped with whatever else is being committed) fed by [`WRITERS`] concurrent
//! writers as a node receiving an install is, vs sha512 alone over the same bytes in memory on
//! one thread.
//!
//! Two workloads: many small tarballs (40 KiB each: durability dominates) and one bulk blob
//! (hashing dominates). Breakdown columns, one blob at a time on one thread: verify only;
//! verify + write + link without fsync; and the per-blob durable write (fsync the file, link,
//! fsync the directory) that the store did before its group commit. Same 64 KiB chunks, runs
//! interleaved, medians.

use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::Instant;

use anyhow::{Result, anyhow};
use open_registry_node::clock::Clock;
use open_registry_node::store::Store;
use open_registry_protocol::{Integrity, Verifier};
use open_registry_tests::fixtures::pseudo_random_bytes;
use serde_json::json;
use sha2::{Digest as _, Sha512};

use crate::report::{Report, Table, fmt_ratio, median};
use crate::{Ctx, sys};

const CHUNK: usize = 64 << 10;

/// Concurrent writers into the store (npm's default `maxsockets`).
const WRITERS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// sha512 alone (the reference).
    Sha512,
    /// sha512 + BLAKE3 (`Verifier`), no I/O.
    Verify,
    /// Verify + write + link, no fsync.
    NoSync,
    /// Verify + write + fsync + link + fsync dir, one blob at a time.
    Ingest,
    /// The node's store, [`WRITERS`] writers at once.
    Store,
}

fn ingest_one(dir: &Path, bytes: &[u8], integrity: &Integrity, mode: Mode) -> Result<()> {
    if mode == Mode::Sha512 {
        let mut h = Sha512::new();
        for c in bytes.chunks(CHUNK) {
            h.update(c);
        }
        std::hint::black_box(h.finalize());
        return Ok(());
    }
    let mut v = Verifier::new(integrity.clone());
    if mode == Mode::Verify {
        for c in bytes.chunks(CHUNK) {
            v.update(c);
        }
        std::hint::black_box(v.finish()?);
        return Ok(());
    }
    let tmp = tempfile::Builder::new()
        .prefix("blob-")
        .tempfile_in(dir.join("tmp"))?;
    let (file, path) = tmp.keep()?;
    let mut w = BufWriter::with_capacity(256 << 10, file);
    for c in bytes.chunks(CHUNK) {
        v.update(c);
        w.write_all(c)?;
    }
    let id = v.finish()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    if mode == Mode::Ingest {
        file.sync_all()?;
    }
    drop(file);
    let shard = dir.join("blobs").join(format!("{:02x}", id.digest()[0]));
    fs::create_dir_all(&shard)?;
    fs::hard_link(&path, shard.join(id.to_string()))?;
    if mode == Mode::Ingest {
        fs::File::open(&shard)?.sync_all()?;
    }
    fs::remove_file(&path)?;
    Ok(())
}

/// MB/s of `mode` over `blobs`.
fn measure(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    blobs: &std::sync::Arc<Vec<(Vec<u8>, Integrity)>>,
    mode: Mode,
) -> Result<f64> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("tmp"))?;
    let total: usize = blobs.iter().map(|b| b.0.len()).sum();
    if mode == Mode::Store {
        let store = rt
            .block_on(Store::open(dir, Clock::system()))
            .map_err(|e| anyhow!("opening the store: {e}"))?;
        let store = std::sync::Arc::new(store);
        let t0 = Instant::now();
        rt.block_on(store_all(&store, blobs))?;
        let secs = t0.elapsed().as_secs_f64();
        ensure_stored(&store, blobs.len())?;
        return Ok(total as f64 / 1e6 / secs);
    }
    let t0 = Instant::now();
    for (bytes, integrity) in blobs.iter() {
        ingest_one(dir, bytes, integrity, mode)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(total as f64 / 1e6 / secs)
}

/// Every blob into the store, [`WRITERS`] at a time, each streamed in [`CHUNK`]s.
async fn store_all(
    store: &std::sync::Arc<Store>,
    blobs: &std::sync::Arc<Vec<(Vec<u8>, Integrity)>>,
) -> Result<()> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WRITERS.min(blobs.len()) {
        let (store, blobs, next) = (store.clone(), blobs.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((bytes, integrity)) = blobs.get(i) else {
                    return anyhow::Ok(());
                };
                let mut w = store
                    .blobs
                    .writer(Verifier::new(integrity.clone()), u64::MAX)
                    .await?;
                for c in bytes.chunks(CHUNK) {
                    w.write(c).await?;
                }
                w.commit().await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// The store holds exactly `n` blobs: nothing was lost or counted twice.
fn ensure_stored(store: &Store, n: usize) -> Result<()> {
    let (_, blobs) = store.blobs.usage();
    let listed = store.blobs.list()?.len();
    if blobs != n as u64 || listed != n {
        anyhow::bail!("the store counts {blobs} blobs and holds {listed}, {n} were written");
    }
    Ok(())
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let dir = tempfile::Builder::new().prefix("bench-b6-").tempdir()?;
    report.note(format!(
        "store dir {} ({}), the store with {WRITERS} writers, the rest single thread, {} run(s), median",
        dir.path().display(),
        sys::fs_type(dir.path()),
        ctx.runs
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let work = dir.path().join("store");
    let workloads: &[(&str, usize, usize)] = if ctx.smoke {
        &[("tarballs", 20, 40 << 10), ("bulk", 1, 4 << 20)]
    } else {
        &[("tarballs", 1000, 40 << 10), ("bulk", 1, 64 << 20)]
    };
    let mut t = Table::new(
        "B6 ingest: MB/s, medians",
        &[
            "workload",
            "sha512 alone",
            "sha512 + blake3",
            "+ write, no fsync",
            "one at a time, fsync file & dir",
            "the store, 16 writers",
            "store / sha512",
            "target",
        ],
    );
    let mut raw = Vec::new();
    for (label, count, size) in workloads {
        let blobs: Vec<(Vec<u8>, Integrity)> = (0..*count)
            .map(|i| {
                let b = pseudo_random_bytes(i as u64 + 1, *size);
                let sri = Integrity::parse(&Integrity::sha512_sri(&b))?;
                Ok((b, sri))
            })
            .collect::<Result<_>>()?;
        let blobs = std::sync::Arc::new(blobs);
        let modes = [
            Mode::Sha512,
            Mode::Verify,
            Mode::NoSync,
            Mode::Ingest,
            Mode::Store,
        ];
        let mut got: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        // One untimed pass warms the page cache and the allocator.
        measure(&rt, &work, &blobs, Mode::NoSync)?;
        for _ in 0..ctx.runs {
            for (i, m) in modes.iter().enumerate() {
                got[i].push(measure(&rt, &work, &blobs, *m)?);
            }
        }
        let med: Vec<f64> = got.iter().map(|v| median(v)).collect();
        let r = med[4] / med[0];
        // Small blobs: the target for grouped durable writes; bulk: hashing dominates.
        let target = if *count > 1 { 0.3 } else { 0.6 };
        let name = format!("{label} ({count} × {} KiB)", size >> 10);
        println!(
            "   {name}: sha512 {:.0} MB/s, verify {:.0}, no-fsync {:.0}, one-at-a-time {:.0}, store {:.0} → {}",
            med[0],
            med[1],
            med[2],
            med[3],
            med[4],
            fmt_ratio(r)
        );
        t.row(vec![
            name.clone(),
            format!("{:.0}", med[0]),
            format!("{:.0}", med[1]),
            format!("{:.0}", med[2]),
            format!("{:.0}", med[3]),
            format!("{:.0}", med[4]),
            fmt_ratio(r),
            format!("≥ {target}×"),
        ]);
        report.check(
            &format!("B6 {label}: store / sha512"),
            &format!("≥ {target}×"),
            fmt_ratio(r),
            Some(r >= target),
        );
        raw.push(json!({"workload": label, "count": count, "size": size,
            "sha512": got[0], "verify": got[1], "no_fsync": got[2], "one_at_a_time": got[3],
            "store": got[4]}));
    }
    report.table(t);
    report.data("runs", json!(raw));
    Ok(report)
}

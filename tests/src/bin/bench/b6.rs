//! B6: ingest throughput — what the node's store does with every blob (node/src/store/blobs.rs):
//! stream the bytes through `Verifier` (npm sha512 integrity + BLAKE3 content id) into a temp
//! file (256 KiB buffered writes), fsync it, hard-link it under its CID in a shard directory,
//! fsync the directory, drop the temp name — vs sha512 alone over the same bytes in memory.
//!
//! Two workloads: many small tarballs (40 KiB each: fsyncs dominate) and one bulk blob (hashing
//! dominates). Breakdown columns (verify only; verify + write without fsync) show where the
//! time goes. Same thread, same 64 KiB chunks, runs interleaved, medians.

use std::fs;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use open_registry_protocol::{Integrity, Verifier};
use open_registry_tests::fixtures::pseudo_random_bytes;
use serde_json::json;
use sha2::{Digest as _, Sha512};

use crate::report::{Report, Table, fmt_ratio, median};
use crate::{Ctx, sys};

const CHUNK: usize = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// sha512 alone (the reference).
    Sha512,
    /// sha512 + BLAKE3 (`Verifier`), no I/O.
    Verify,
    /// Verify + write + link, no fsync.
    NoSync,
    /// What the store does: verify + write + fsync + link + fsync dir.
    Ingest,
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
fn measure(dir: &Path, blobs: &[(Vec<u8>, Integrity)], mode: Mode) -> Result<f64> {
    let _ = fs::remove_dir_all(dir.join("blobs"));
    fs::create_dir_all(dir.join("tmp"))?;
    let total: usize = blobs.iter().map(|b| b.0.len()).sum();
    let t0 = Instant::now();
    for (bytes, integrity) in blobs {
        ingest_one(dir, bytes, integrity, mode)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(total as f64 / 1e6 / secs)
}

pub(crate) fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = Report::new();
    let dir = tempfile::Builder::new().prefix("bench-b6-").tempdir()?;
    report.note(format!(
        "store dir {} ({}), single thread, {} run(s), median",
        dir.path().display(),
        sys::fs_type(dir.path()),
        ctx.runs
    ));
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
            "ingest (+ fsync file & dir)",
            "ingest / sha512",
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
        let modes = [Mode::Sha512, Mode::Verify, Mode::NoSync, Mode::Ingest];
        let mut got: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        // One untimed pass warms the page cache and the allocator.
        measure(dir.path(), &blobs, Mode::NoSync)?;
        for _ in 0..ctx.runs {
            for (i, m) in modes.iter().enumerate() {
                got[i].push(measure(dir.path(), &blobs, *m)?);
            }
        }
        let med: Vec<f64> = got.iter().map(|v| median(v)).collect();
        let r = med[3] / med[0];
        let name = format!("{label} ({count} × {} KiB)", size >> 10);
        println!(
            "   {name}: sha512 {:.0} MB/s, verify {:.0}, no-fsync {:.0}, ingest {:.0} → {}",
            med[0],
            med[1],
            med[2],
            med[3],
            fmt_ratio(r)
        );
        t.row(vec![
            name.clone(),
            format!("{:.0}", med[0]),
            format!("{:.0}", med[1]),
            format!("{:.0}", med[2]),
            format!("{:.0}", med[3]),
            fmt_ratio(r),
        ]);
        report.check(
            &format!("B6 {label}: ingest / sha512"),
            "≥ 0.6×",
            fmt_ratio(r),
            Some(r >= 0.6),
        );
        raw.push(json!({"workload": label, "count": count, "size": size,
            "sha512": got[0], "verify": got[1], "no_fsync": got[2], "ingest": got[3]}));
    }
    report.table(t);
    report.data("runs", json!(raw));
    Ok(report)
}

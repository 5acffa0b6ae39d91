//! `open-registry-crashloop DIR SEED`: ingests pseudo-random blobs into the node's store in
//! `DIR` until it is killed, the way the fetcher does (stream into a verifying writer, commit,
//! then name the blob in the index), and reports each one once it is durable.
//!
//! The R11 test (`tests/tests/crash.rs`) starts it over and over on one data dir, SIGKILLs it
//! at a random moment, and checks the store after every crash. Protocol on stdout, one line
//! each, flushed at once:
//!
//! - `ready` once [`Store::open`] has returned;
//! - `ack tarball <name> <file> <cid>` after `index.set_tarball` returned (blob and entry
//!   durable);
//! - `ack packument <name> <cid>` after `index.set_packument` returned.
//!
//! Keys are unique per `SEED` and item, so every acknowledged entry must survive exactly as
//! acknowledged. One item in four reuses bytes shared by every run, so a blob that is already
//! stored is written again (the hard link that finds its target in place). Two writers run at
//! once, so sled flushes race as they do in the node.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use open_registry_node::clock::{Clock, now_ms};
use open_registry_node::store::{PackumentEntry, Store};
use open_registry_protocol::{Integrity, PackageName, Verifier};
use open_registry_tests::fixtures::pseudo_random_bytes;

/// Concurrent writers.
const WRITERS: u64 = 2;
/// Bytes handed to the writer at a time: blobs span several writes, so a kill can land mid-blob.
const CHUNK: usize = 1024;
/// Largest blob written; small, so a thousand runs keep the store small.
const MAX_BLOB: u64 = 6 * 1024;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context("usage: crashloop DIR SEED")?);
    let seed: u64 = args
        .next()
        .context("usage: crashloop DIR SEED")?
        .parse()
        .context("SEED is a number")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(dir, seed))
}

async fn run(dir: PathBuf, seed: u64) -> Result<()> {
    let store = Arc::new(
        Store::open(&dir, Clock::system())
            .await
            .map_err(|e| anyhow!("opening the store: {e}"))?,
    );
    let out = Arc::new(Mutex::new(std::io::stdout()));
    say(&out, "ready")?;
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (store, out) = (store.clone(), out.clone());
        writers.spawn(async move {
            for i in 0.. {
                Box::pin(ingest(&store, &out, seed, w * 1_000_000 + i)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = writers.join_next().await {
        r??;
    }
    Ok(())
}

/// Writes item `i` of run `seed`: a tarball, and for one item in three a packument too.
async fn ingest(store: &Store, out: &Mutex<std::io::Stdout>, seed: u64, i: u64) -> Result<()> {
    let name = PackageName::parse(&format!("crash-{seed}-{i}"))?;
    let file = format!("crash-{seed}-{i}-1.0.0.tgz");
    let mix = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i;
    let bytes = if i % 4 == 3 {
        // Shared by every run: the blob is often stored already.
        pseudo_random_bytes(i % 5, 700 + (i % 5) as usize * 300)
    } else {
        pseudo_random_bytes(mix, 1 + (mix % MAX_BLOB) as usize)
    };
    let integrity = Integrity::parse(&Integrity::sha512_sri(&bytes))?;
    let mut w = store
        .blobs
        .writer(Verifier::new(integrity), MAX_BLOB)
        .await?;
    for c in bytes.chunks(CHUNK) {
        w.write(c).await?;
    }
    let id = w.commit().await?;
    store.index.set_tarball(&name, &file, &id).await?;
    say(out, &format!("ack tarball {name} {file} {id}"))?;

    if i.is_multiple_of(3) {
        let doc = format!("{{\"name\":\"{name}\",\"versions\":{{\"1.0.0\":{{\"n\":{mix}}}}}}}");
        let id = store
            .blobs
            .put(doc.as_bytes(), Verifier::id_only(), MAX_BLOB)
            .await?;
        let entry = PackumentEntry {
            id,
            etag: Some(format!("\"{mix:x}\"")),
            last_modified: None,
            checked_at: now_ms(),
        };
        store.index.set_packument(&name, &entry).await?;
        say(out, &format!("ack packument {name} {id}"))?;
    }
    Ok(())
}

/// One line to stdout, flushed: once written, the test has it even if we die the next instant.
fn say(out: &Mutex<std::io::Stdout>, line: &str) -> Result<()> {
    let mut out = out.lock().map_err(|_| anyhow!("stdout lock poisoned"))?;
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

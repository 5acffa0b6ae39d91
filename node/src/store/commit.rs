//! Group commit for blobs: every blob verified while a batch was being made durable is made
//! durable by the next batch, together.
//!
//! A batch, on the blocking pool: write the small blobs' temp files; make every temp file's
//! bytes durable; hard-link each under its id; make the links durable; enter each in the
//! [`Ledger`]; drop the temp names; then answer every writer. On Linux both "make durable" steps
//! are one `syncfs(2)` of the store's file system each (two system calls per batch, however many
//! blobs it holds); elsewhere each temp file is fsynced, then each shard directory a link went
//! into, once per batch. Nothing is acknowledged before the second step has returned, so the
//! invariant of [`super::blobs`] holds: a blob is visible under its id only complete, verified
//! and durable.
//!
//! One batch runs at a time; the writer whose blob starts a batch runs it (no task of its own),
//! the others wait for their answer.

use std::collections::BTreeSet;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use open_registry_protocol::BlobId;
use tokio::sync::oneshot;

use super::ledger::Ledger;

/// A verified blob waiting to be made durable.
#[derive(Debug)]
pub(crate) struct Job {
    /// Its id; the file goes to `dest`.
    pub(crate) id: BlobId,
    pub(crate) len: u64,
    pub(crate) dest: PathBuf,
    pub(crate) data: Data,
}

/// Where a waiting blob's bytes are.
#[derive(Debug)]
pub(crate) enum Data {
    /// In memory (a small blob): the batch writes its temp file.
    Bytes(Vec<u8>),
    /// Already written (not yet durable) to this temp file.
    File(PathBuf),
}

type Waiting = (Job, oneshot::Sender<io::Result<()>>);

/// The commit queue of one store.
#[derive(Debug)]
pub(crate) struct Group {
    tmp: PathBuf,
    ledger: Arc<Ledger>,
    /// std Mutex: never held across an await.
    queue: Mutex<Vec<Waiting>>,
    /// One batch at a time. tokio Mutex: held across the batch.
    running: tokio::sync::Mutex<()>,
}

impl Group {
    pub(crate) fn new(tmp: PathBuf, ledger: Arc<Ledger>) -> Group {
        Group {
            tmp,
            ledger,
            queue: Mutex::new(Vec::new()),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Makes `job` durable under its id (with whatever else is waiting) and enters it in the
    /// ledger. A blob already stored under the id counts as success.
    pub(crate) async fn commit(self: &Arc<Self>, job: Job) -> io::Result<()> {
        let (tx, mut rx) = oneshot::channel();
        self.queue
            .lock()
            .expect("commit queue poisoned")
            .push((job, tx));
        let one = self.running.lock().await;
        // A batch that ran while we waited may have taken our job.
        if let Ok(r) = rx.try_recv() {
            return r;
        }
        let batch = std::mem::take(&mut *self.queue.lock().expect("commit queue poisoned"));
        if !batch.is_empty() {
            let this = self.clone();
            // Each job's answer is sent from the batch; a panic drops the senders, which the
            // waiting writers see as an error.
            let _ = tokio::task::spawn_blocking(move || this.run(batch)).await;
        }
        drop(one);
        rx.await
            .unwrap_or_else(|_| Err(io::Error::other("the blob commit batch stopped")))
    }

    /// Keeps any batch from starting until the guard is dropped.
    #[cfg(test)]
    pub(crate) async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.running.lock().await
    }

    fn run(&self, batch: Vec<Waiting>) {
        let (jobs, senders): (Vec<Job>, Vec<_>) = batch.into_iter().unzip();
        let results = self.durable(jobs);
        for (r, tx) in results.into_iter().zip(senders) {
            let _ = tx.send(r);
        }
    }

    /// The batch itself; one result per job, in order.
    fn durable(&self, jobs: Vec<Job>) -> Vec<io::Result<()>> {
        let mut results: Vec<io::Result<()>> = Vec::with_capacity(jobs.len());
        let mut temps: Vec<Option<PathBuf>> = Vec::with_capacity(jobs.len());
        for job in &jobs {
            match &job.data {
                Data::File(p) => {
                    temps.push(Some(p.clone()));
                    results.push(Ok(()));
                }
                Data::Bytes(b) => match write_temp(&self.tmp, b) {
                    Ok(p) => {
                        temps.push(Some(p));
                        results.push(Ok(()));
                    }
                    Err(e) => {
                        temps.push(None);
                        results.push(Err(e));
                    }
                },
            }
        }
        let files: Vec<&Path> = temps.iter().flatten().map(PathBuf::as_path).collect();
        if let Err(e) = sync_files(&self.tmp, &files) {
            return fail_all(temps, &e);
        }
        let mut dirs = BTreeSet::new();
        for ((job, temp), r) in jobs.iter().zip(&temps).zip(results.iter_mut()) {
            let Some(temp) = temp else { continue };
            if r.is_err() {
                continue;
            }
            *r = link(temp, &job.dest).map(|new| {
                if new && let Some(d) = job.dest.parent() {
                    dirs.insert(d.to_owned());
                }
            });
        }
        if let Err(e) = sync_dirs(&self.tmp, &dirs) {
            return fail_all(temps, &e);
        }
        for (job, r) in jobs.iter().zip(results.iter_mut()) {
            if r.is_ok()
                && let Err(e) = self.ledger.enter(&job.id, job.len)
            {
                // The blob is durable; the ledger's audit finds it after a restart.
                tracing::warn!(id = %job.id.short(), error = %e, "could not enter a stored blob in the ledger");
            }
        }
        for temp in temps.into_iter().flatten() {
            let _ = std::fs::remove_file(temp);
        }
        results
    }
}

fn fail_all(temps: Vec<Option<PathBuf>>, e: &io::Error) -> Vec<io::Result<()>> {
    temps
        .into_iter()
        .map(|t| {
            if let Some(t) = t {
                let _ = std::fs::remove_file(t);
            }
            Err(io::Error::new(e.kind(), e.to_string()))
        })
        .collect()
}

/// Writes a small blob's temp file (not yet durable).
fn write_temp(tmp: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let (mut file, path) = tempfile::Builder::new()
        .prefix("blob-")
        .tempfile_in(tmp)?
        .keep()
        .map_err(|e| e.error)?;
    if let Err(e) = file.write_all(bytes) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// Publishes `temp` under `dest`; `false` if a file was there already (same id, same bytes).
/// A hard link, unlike a rename, never replaces an existing file.
fn link(temp: &Path, dest: &Path) -> io::Result<bool> {
    let first = std::fs::hard_link(temp, dest);
    let r = match first {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = dest.parent().expect("blob paths have a shard dir");
            std::fs::create_dir_all(dir)?;
            std::fs::hard_link(temp, dest)
        }
        r => r,
    };
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes the bytes of `files` (all under `tmp`) durable.
#[cfg(target_os = "linux")]
fn sync_files(tmp: &Path, files: &[&Path]) -> io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    syncfs(tmp)
}

#[cfg(not(target_os = "linux"))]
fn sync_files(_tmp: &Path, files: &[&Path]) -> io::Result<()> {
    for f in files {
        std::fs::File::open(f)?.sync_all()?;
    }
    Ok(())
}

/// Makes the links made into `dirs` durable.
#[cfg(target_os = "linux")]
fn sync_dirs(tmp: &Path, dirs: &BTreeSet<PathBuf>) -> io::Result<()> {
    if dirs.is_empty() {
        return Ok(());
    }
    syncfs(tmp)
}

#[cfg(not(target_os = "linux"))]
fn sync_dirs(_tmp: &Path, dirs: &BTreeSet<PathBuf>) -> io::Result<()> {
    for d in dirs {
        std::fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

/// `syncfs(2)` of the file system holding `path`: every file's data and metadata on it is
/// durable when this returns (and since Linux 5.8 a write-back error is reported).
#[cfg(target_os = "linux")]
fn syncfs(path: &Path) -> io::Result<()> {
    let dir = std::fs::File::open(path)?;
    nix::unistd::syncfs(&dir).map_err(io::Error::from)
}

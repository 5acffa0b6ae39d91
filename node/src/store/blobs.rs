//! Content-addressed blob files.
//!
//! Layout: `blobs/<first two hex digits of the BLAKE3 digest>/<CID>`; writes go to `tmp/` first.
//!
//! Invariant: a blob is visible under its id only once it is completely written, verified
//! (its bytes hash to the id, and match the npm integrity it was promised) and durable: its
//! bytes are durable before it is hard-linked under its id, and the link is durable before the
//! commit returns (the store's group commit, `store/commit.rs`, does both for every blob
//! waiting, in one batch). A crash at any point leaves either no file under the id or the whole
//! verified file; leftovers in `tmp/` are deleted on open. A writer dropped before commit (an error, a cancelled request) deletes
//! its temp file.
//!
//! A writer keeps a small blob in memory (up to [`SPILL`] bytes, hashed as it arrives); a larger
//! one goes to a thread of its own that hashes and writes each chunk while the caller receives
//! the next from the network.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use open_registry_protocol::{BlobId, IntegrityError, Verifier};

use super::commit::{Data, Group, Job};
use super::ledger::Ledger;

/// Blobs up to this size are kept in memory until committed.
pub const SPILL: usize = 256 << 10;

/// Chunks queued for a large blob's hashing and writing thread.
const SINK_DEPTH: usize = 8;

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("blob is larger than the {0}-byte cap")]
    TooLarge(u64),
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    #[error("blob is empty")]
    Empty,
    #[error("store I/O: {0}")]
    Io(#[from] io::Error),
}

impl WriteError {
    /// Whether the disk, not the bytes, was at fault (disk full, permissions).
    pub fn is_local(&self) -> bool {
        matches!(self, WriteError::Io(_))
    }
}

/// The blob directory.
#[derive(Debug)]
pub struct Blobs {
    root: PathBuf,
    tmp: PathBuf,
    ledger: Arc<Ledger>,
    group: Arc<Group>,
}

impl Blobs {
    /// Opens (creating) the blob directory under `dir` and deletes interrupted writes. Sizes
    /// and totals come from `ledger`: nothing is listed.
    pub(crate) fn open(dir: &Path, ledger: Arc<Ledger>) -> io::Result<Blobs> {
        let root = dir.join("blobs");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Blobs {
            group: Arc::new(Group::new(tmp.clone(), ledger.clone())),
            root,
            tmp,
            ledger,
        })
    }

    /// The directory for files being written (emptied at every start).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Where the blob `id` lives.
    pub fn path(&self, id: &BlobId) -> PathBuf {
        let shard = format!("{:02x}", id.digest()[0]);
        self.root.join(shard).join(id.to_string())
    }

    /// The size of a stored blob.
    pub fn size(&self, id: &BlobId) -> Option<u64> {
        std::fs::metadata(self.path(id)).ok().map(|m| m.len())
    }

    /// Whether the blob is stored.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.path(id).is_file()
    }

    /// Holds every commit back until the guard is dropped (tests of what waits for one).
    #[cfg(test)]
    pub(crate) async fn hold_commits(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.group.hold().await
    }

    /// Total bytes and number of blobs stored, from the ledger (no scan).
    pub fn usage(&self) -> (u64, u64) {
        self.ledger.usage()
    }

    /// Opens a blob for streaming: the file and its length.
    pub async fn open_read(&self, id: &BlobId) -> io::Result<Option<(tokio::fs::File, u64)>> {
        match tokio::fs::File::open(self.path(id)).await {
            Ok(f) => {
                let len = f.metadata().await?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a whole blob (packuments).
    pub async fn read(&self, id: &BlobId) -> io::Result<Option<Bytes>> {
        match tokio::fs::read(self.path(id)).await {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every blob file with its size: a directory walk, which only the store's audit (after a
    /// crash) makes.
    pub fn list(&self) -> io::Result<Vec<(BlobId, u64)>> {
        let mut out = Vec::new();
        self.walk(|id, len| {
            out.push((id, len));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every blob file and its size.
    pub(crate) fn walk(&self, mut f: impl FnMut(BlobId, u64) -> io::Result<()>) -> io::Result<()> {
        for shard in std::fs::read_dir(&self.root)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for e in std::fs::read_dir(shard.path())? {
                let e = e?;
                let id = e
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<BlobId>().ok());
                if let Some(id) = id {
                    f(id, e.metadata()?.len())?;
                }
            }
        }
        Ok(())
    }

    /// Deletes a blob and forgets it in the ledger; returns whether it existed.
    pub fn remove(&self, id: &BlobId) -> io::Result<bool> {
        let existed = match std::fs::remove_file(self.path(id)) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        self.ledger
            .forget(id)
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(existed)
    }

    /// Starts writing a blob that `verifier` checks, refusing more than `cap` bytes.
    pub async fn writer(&self, verifier: Verifier, cap: u64) -> io::Result<Writer<'_>> {
        Ok(Writer {
            blobs: self,
            verifier: Some(verifier),
            buf: Vec::new(),
            sink: None,
            len: 0,
            cap,
        })
    }

    /// Writes a whole blob in one go.
    pub async fn put(
        &self,
        bytes: &[u8],
        verifier: Verifier,
        cap: u64,
    ) -> Result<BlobId, WriteError> {
        let mut w = self.writer(verifier, cap).await?;
        w.write(bytes).await?;
        w.commit().await
    }
}

/// A large blob's thread: it hashes and writes the chunks it is sent, and gives the verifier
/// back when the sender closes.
#[derive(Debug)]
struct Sink {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    thread: tokio::task::JoinHandle<io::Result<Verifier>>,
    path: PathBuf,
}

impl Sink {
    fn start(tmp: &Path, mut verifier: Verifier, first: Vec<u8>) -> io::Result<Sink> {
        let (file, path) = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(tmp)?
            .keep()
            .map_err(|e| e.error)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(SINK_DEPTH);
        let thread = tokio::task::spawn_blocking(move || {
            let mut out = io::BufWriter::with_capacity(SPILL, file);
            // The bytes kept in memory so far were hashed as they came.
            out.write_all(&first)?;
            drop(first);
            while let Some(chunk) = rx.blocking_recv() {
                verifier.update(&chunk);
                out.write_all(&chunk)?;
            }
            out.flush()?;
            Ok(verifier)
        });
        Ok(Sink { tx, thread, path })
    }
}

/// A blob being written. Dropping it without [`commit`](Writer::commit) deletes the temp file.
#[derive(Debug)]
pub struct Writer<'a> {
    blobs: &'a Blobs,
    /// Until the blob spills to a [`Sink`] (which then holds it).
    verifier: Option<Verifier>,
    buf: Vec<u8>,
    sink: Option<Sink>,
    len: u64,
    cap: u64,
}

impl<'a> Writer<'a> {
    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), WriteError> {
        if self.len + chunk.len() as u64 > self.cap {
            return Err(WriteError::TooLarge(self.cap));
        }
        self.len += chunk.len() as u64;
        if let Some(sink) = &self.sink {
            if sink.tx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                // The thread stopped: its error says why.
                return Err(self.sink_error().await);
            }
            return Ok(());
        }
        let v = self
            .verifier
            .as_mut()
            .ok_or_else(|| io::Error::other("writer already committed"))?;
        v.update(chunk);
        if self.buf.len() + chunk.len() <= SPILL {
            self.buf.extend_from_slice(chunk);
            return Ok(());
        }
        let mut first = std::mem::take(&mut self.buf);
        first.extend_from_slice(chunk);
        let v = self.verifier.take().expect("checked above");
        self.sink = Some(Sink::start(&self.blobs.tmp, v, first)?);
        Ok(())
    }

    async fn sink_error(&mut self) -> WriteError {
        let Some(sink) = self.sink.as_mut() else {
            return io::Error::other("no sink").into();
        };
        match (&mut sink.thread).await {
            Ok(Err(e)) => e.into(),
            Ok(Ok(_)) => io::Error::other("the blob writer stopped early").into(),
            Err(e) => io::Error::other(format!("the blob writer failed: {e}")).into(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Verifies, makes durable, and publishes the blob under its id.
    pub async fn commit(self) -> Result<BlobId, WriteError> {
        self.commit_as(None).await
    }

    /// Like [`Writer::commit`], and the blob must also be `expected`: bytes a peer sent for
    /// one id are never stored under another.
    pub async fn commit_as(self, expected: Option<&BlobId>) -> Result<BlobId, WriteError> {
        self.verify_as(expected).await?.commit().await
    }

    /// The first half of [`Writer::commit_as`]: every byte is written (not yet durable) and
    /// verified, the blob is `expected` when given; nothing is published until
    /// [`VerifiedBlob::commit`]. Dropped instead, it deletes its temp file.
    pub async fn verify_as(
        mut self,
        expected: Option<&BlobId>,
    ) -> Result<VerifiedBlob<'a>, WriteError> {
        // A spilled blob's temp file is deleted by the guard on every early return below,
        // and by the `VerifiedBlob` if it is never committed.
        let (verifier, spilled) = match self.sink.take() {
            Some(Sink { tx, thread, path }) => {
                drop(tx);
                let guard = TempGuard(Some(path));
                let v = thread
                    .await
                    .map_err(|e| io::Error::other(format!("the blob writer failed: {e}")))??;
                (v, Some(guard))
            }
            None => {
                let v = self
                    .verifier
                    .take()
                    .ok_or_else(|| io::Error::other("committed twice"))?;
                (v, None)
            }
        };
        if verifier.is_empty() {
            return Err(WriteError::Empty);
        }
        let len = verifier.len();
        let id = match expected {
            Some(e) => verifier.finish_as(e)?,
            None => verifier.finish()?,
        };
        let data = match spilled {
            Some(guard) => Pending::File(guard),
            None => Pending::Bytes(std::mem::take(&mut self.buf)),
        };
        Ok(VerifiedBlob {
            blobs: self.blobs,
            id,
            len,
            data,
        })
    }
}

/// A blob whose bytes are complete and verified, not yet durable nor visible under its id.
#[derive(Debug)]
pub struct VerifiedBlob<'a> {
    blobs: &'a Blobs,
    id: BlobId,
    len: u64,
    data: Pending,
}

/// Where a verified blob's bytes wait for the commit.
#[derive(Debug)]
enum Pending {
    Bytes(Vec<u8>),
    File(TempGuard),
}

impl VerifiedBlob<'_> {
    /// Makes the blob durable and publishes it under its id, with whatever else is waiting
    /// (the store's group commit); returns once it is durable.
    pub async fn commit(self) -> Result<BlobId, WriteError> {
        let data = match self.data {
            Pending::File(guard) => Data::File(guard.take()),
            Pending::Bytes(b) => Data::Bytes(b),
        };
        let job = Job {
            id: self.id,
            len: self.len,
            dest: self.blobs.path(&self.id),
            data,
        };
        self.blobs.group.commit(job).await?;
        Ok(self.id)
    }
}

/// Deletes a temp file on drop unless taken.
#[derive(Debug)]
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn take(mut self) -> PathBuf {
        self.0.take().expect("taken once")
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        // Uncommitted and spilled: the thread stops when its sender goes; the file goes now.
        if let Some(sink) = self.sink.take() {
            let _ = std::fs::remove_file(&sink.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::store::Store;
    use open_registry_protocol::Integrity;

    async fn store(dir: &Path) -> Arc<Store> {
        Arc::new(Store::open(dir, Clock::system()).await.unwrap())
    }

    fn tmp_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("tmp")).unwrap().count()
    }

    #[tokio::test]
    async fn write_verify_read_small_and_large() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let small = b"tarball bytes".repeat(1000);
        // Larger than SPILL: hashed and written by the writer's own thread.
        let large = open_registry_tests_bytes(SPILL * 3 + 17);
        let mut total = 0;
        for (n, data) in [small, large].into_iter().enumerate() {
            let integrity = Integrity::parse(&Integrity::sha512_sri(&data)).unwrap();
            let mut w = s
                .blobs
                .writer(Verifier::new(integrity), 1 << 30)
                .await
                .unwrap();
            for c in data.chunks(10_000) {
                w.write(c).await.unwrap();
            }
            assert_eq!(w.len(), data.len() as u64);
            let id = w.commit().await.unwrap();
            assert_eq!(id, BlobId::of(&data));
            assert_eq!(s.blobs.read(&id).await.unwrap().unwrap(), data);
            total += data.len() as u64;
            assert_eq!(s.blobs.usage(), (total, n as u64 + 1));
            // Same bytes again: no double count.
            s.blobs
                .put(&data, Verifier::id_only(), 1 << 30)
                .await
                .unwrap();
            assert_eq!(s.blobs.usage(), (total, n as u64 + 1));
        }
        assert_eq!(tmp_files(dir.path()), 0);
        // A clean close keeps the totals for the next start, without an audit.
        s.close().await.unwrap();
        drop(s);
        let s = store(dir.path()).await;
        assert!(!s.needs_audit());
        assert_eq!(s.blobs.usage(), (total, 2));
        let id = BlobId::of(&b"tarball bytes".repeat(1000));
        assert!(s.blobs.remove(&id).unwrap());
        assert!(!s.blobs.remove(&id).unwrap());
        assert_eq!(s.blobs.usage().1, 1);
        assert!(s.blobs.read(&id).await.unwrap().is_none());
    }

    /// Incompressible-looking bytes of length `n`.
    fn open_registry_tests_bytes(n: usize) -> Vec<u8> {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn mismatch_cap_and_empty_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let integrity = Integrity::parse(&Integrity::sha512_sri(b"good")).unwrap();
        let e = s
            .blobs
            .put(b"evil", Verifier::new(integrity.clone()), 100)
            .await;
        assert!(matches!(e, Err(WriteError::Integrity(_))), "{e:?}");
        let e = s
            .blobs
            .put(b"good", Verifier::new(integrity.clone()), 3)
            .await;
        assert!(matches!(e, Err(WriteError::TooLarge(3))), "{e:?}");
        let e = s.blobs.put(b"", Verifier::new(integrity), 3).await;
        assert!(matches!(e, Err(WriteError::Empty)), "{e:?}");
        // A large blob that fails its check, and one dropped half written.
        let big = open_registry_tests_bytes(SPILL * 2);
        let wrong = Integrity::parse(&Integrity::sha512_sri(b"other")).unwrap();
        let e = s.blobs.put(&big, Verifier::new(wrong), 1 << 30).await;
        assert!(matches!(e, Err(WriteError::Integrity(_))), "{e:?}");
        let mut w = s.blobs.writer(Verifier::id_only(), 1 << 30).await.unwrap();
        w.write(&big).await.unwrap();
        drop(w);
        assert_eq!(s.blobs.usage(), (0, 0));
        assert_eq!(tmp_files(dir.path()), 0);
        assert!(s.blobs.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_commits_share_batches_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let data = format!("blob {i}").repeat(100 + i as usize);
                    let id = s
                        .blobs
                        .put(data.as_bytes(), Verifier::id_only(), 1 << 20)
                        .await
                        .unwrap();
                    (id, data)
                })
            })
            .collect();
        for t in tasks {
            let (id, data) = t.await.unwrap();
            assert_eq!(BlobId::of(data.as_bytes()), id);
            assert_eq!(
                std::fs::read(s.blobs.path(&id)).unwrap(),
                data.as_bytes(),
                "acknowledged, so in place"
            );
        }
        assert_eq!(s.blobs.usage().1, 64);
        assert_eq!(tmp_files(dir.path()), 0);
    }

    #[tokio::test]
    async fn leftovers_of_a_crash_are_removed_and_the_audit_recounts() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path()).await;
        let id = s
            .blobs
            .put(b"kept", Verifier::id_only(), 100)
            .await
            .unwrap();
        s.flush().await.unwrap();
        drop(s);
        // What a crash leaves: a half-written temp file, a blob linked but never entered in the
        // ledger, and no `clean` marker.
        std::fs::write(dir.path().join("tmp/blob-partial"), b"half").unwrap();
        let orphan = BlobId::of(b"orphan");
        let shard = dir
            .path()
            .join("blobs")
            .join(format!("{:02x}", orphan.digest()[0]));
        std::fs::create_dir_all(&shard).unwrap();
        std::fs::write(shard.join(orphan.to_string()), b"orphan").unwrap();
        let s = store(dir.path()).await;
        assert_eq!(tmp_files(dir.path()), 0);
        assert!(s.needs_audit());
        assert_eq!(
            s.blobs.usage(),
            (0, 0),
            "before the audit: the totals last saved (none)"
        );
        let a = s.audit().await.unwrap();
        assert_eq!((a.entered, a.forgotten), (1, 0));
        assert_eq!(s.blobs.usage(), (10, 2));
        assert!(!s.needs_audit());
        assert!(s.blobs.contains(&id));
    }
}

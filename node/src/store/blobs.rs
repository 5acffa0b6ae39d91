//! Content-addressed blob files.
//!
//! Layout: `blobs/<first two hex digits of the BLAKE3 digest>/<CID>`; writes go to `tmp/` first.
//!
//! Invariant: a blob is visible under its id only once it is completely written, verified
//! (its bytes hash to the id, and match the npm integrity it was promised) and durable: the
//! temp file is fsynced, renamed into place, and the directory fsynced. A crash at any point
//! leaves either no file under the id or the whole verified file; leftovers in `tmp/` are
//! deleted on open. A writer dropped before commit (an error, a cancelled request) deletes its
//! temp file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use open_registry_protocol::{BlobId, IntegrityError, Verifier};
use tokio::io::{AsyncWriteExt as _, BufWriter};

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
    bytes: AtomicU64,
    count: AtomicU64,
}

impl Blobs {
    /// Opens (creating) the blob directory under `dir`, deletes interrupted writes, and counts
    /// what is there.
    pub fn open(dir: &Path) -> io::Result<Blobs> {
        let root = dir.join("blobs");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&root)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let (mut bytes, mut count) = (0, 0);
        for shard in std::fs::read_dir(&root)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(shard.path())? {
                let f = f?;
                bytes += f.metadata()?.len();
                count += 1;
            }
        }
        Ok(Blobs {
            root,
            tmp,
            bytes: AtomicU64::new(bytes),
            count: AtomicU64::new(count),
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

    /// Total bytes and number of blobs stored.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.count.load(Ordering::Relaxed),
        )
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

    /// Every stored blob with its size (a directory scan).
    pub fn list(&self) -> io::Result<Vec<(BlobId, u64)>> {
        let mut out = Vec::new();
        for shard in std::fs::read_dir(&self.root)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(shard.path())? {
                let f = f?;
                let id = f
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<BlobId>().ok());
                if let Some(id) = id {
                    out.push((id, f.metadata()?.len()));
                }
            }
        }
        Ok(out)
    }

    /// Deletes a blob; returns whether it existed.
    pub fn remove(&self, id: &BlobId) -> io::Result<bool> {
        let path = self.path(id);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        std::fs::remove_file(&path)?;
        self.bytes.fetch_sub(len, Ordering::Relaxed);
        self.count.fetch_sub(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Starts writing a blob that `verifier` checks, refusing more than `cap` bytes.
    pub async fn writer(&self, verifier: Verifier, cap: u64) -> io::Result<Writer<'_>> {
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&self.tmp)?;
        // Keep the path ourselves: the writer deletes it on drop unless committed.
        let (file, path) = tmp.keep().map_err(|e| e.error)?;
        Ok(Writer {
            blobs: self,
            file: Some(BufWriter::with_capacity(
                256 << 10,
                tokio::fs::File::from_std(file),
            )),
            path,
            verifier: Some(verifier),
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

/// A blob being written. Dropping it without [`commit`](Writer::commit) deletes the temp file.
#[derive(Debug)]
pub struct Writer<'a> {
    blobs: &'a Blobs,
    file: Option<BufWriter<tokio::fs::File>>,
    path: PathBuf,
    verifier: Option<Verifier>,
    cap: u64,
}

impl Writer<'_> {
    /// Appends bytes.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), WriteError> {
        let (Some(v), Some(f)) = (self.verifier.as_mut(), self.file.as_mut()) else {
            return Err(io::Error::other("writer already committed").into());
        };
        if v.len() + chunk.len() as u64 > self.cap {
            return Err(WriteError::TooLarge(self.cap));
        }
        v.update(chunk);
        f.write_all(chunk).await?;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.verifier.as_ref().map_or(0, Verifier::len)
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verifies, makes durable, and publishes the blob under its id.
    pub async fn commit(self) -> Result<BlobId, WriteError> {
        self.commit_as(None).await
    }

    /// Like [`Writer::commit`], and the blob must also be `expected`: bytes a peer sent for
    /// one id are never stored under another.
    pub async fn commit_as(mut self, expected: Option<&BlobId>) -> Result<BlobId, WriteError> {
        let verifier = self
            .verifier
            .take()
            .ok_or_else(|| io::Error::other("committed twice"))?;
        if verifier.is_empty() {
            return Err(WriteError::Empty);
        }
        let len = verifier.len();
        let id = match expected {
            Some(e) => verifier.finish_as(e)?,
            None => verifier.finish()?,
        };
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("committed twice"))?;
        file.flush().await?;
        let file = file.into_inner();
        file.sync_all().await?;
        drop(file);
        let dest = self.blobs.path(&id);
        let dir = dest
            .parent()
            .expect("blob paths have a shard dir")
            .to_owned();
        tokio::fs::create_dir_all(&dir).await?;
        // A hard link publishes atomically and, unlike rename, never replaces an existing file:
        // when two writers race on the same id, exactly one of them counts it.
        match tokio::fs::hard_link(&self.path, &dest).await {
            Ok(()) => {}
            // Same id, same bytes: the first copy wins and this one is discarded on drop.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(id),
            Err(e) => return Err(e.into()),
        }
        tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
            .await
            .map_err(io::Error::other)??;
        self.blobs.bytes.fetch_add(len, Ordering::Relaxed);
        self.blobs.count.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use open_registry_protocol::Integrity;

    #[tokio::test]
    async fn write_verify_read() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let data = b"tarball bytes".repeat(1000);
        let integrity = Integrity::parse(&Integrity::sha512_sri(&data)).unwrap();
        let mut w = blobs
            .writer(Verifier::new(integrity), 1 << 20)
            .await
            .unwrap();
        for c in data.chunks(100) {
            w.write(c).await.unwrap();
        }
        let id = w.commit().await.unwrap();
        assert_eq!(id, BlobId::of(&data));
        assert_eq!(blobs.read(&id).await.unwrap().unwrap(), data);
        assert_eq!(blobs.usage(), (data.len() as u64, 1));
        // Same bytes again: no double count.
        blobs
            .put(&data, Verifier::id_only(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(blobs.usage(), (data.len() as u64, 1));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        // Reopen counts what is there.
        drop(blobs);
        let blobs = Blobs::open(dir.path()).unwrap();
        assert_eq!(blobs.usage(), (data.len() as u64, 1));
        assert!(blobs.remove(&id).unwrap());
        assert_eq!(blobs.usage(), (0, 0));
        assert!(blobs.read(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn mismatch_cap_and_empty_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let integrity = Integrity::parse(&Integrity::sha512_sri(b"good")).unwrap();
        let e = blobs
            .put(b"evil", Verifier::new(integrity.clone()), 100)
            .await;
        assert!(matches!(e, Err(WriteError::Integrity(_))), "{e:?}");
        let e = blobs
            .put(b"good", Verifier::new(integrity.clone()), 3)
            .await;
        assert!(matches!(e, Err(WriteError::TooLarge(3))), "{e:?}");
        let e = blobs.put(b"", Verifier::new(integrity), 3).await;
        assert!(matches!(e, Err(WriteError::Empty)), "{e:?}");
        assert_eq!(blobs.usage(), (0, 0));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[tokio::test]
    async fn leftovers_of_a_crash_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        drop(Blobs::open(dir.path()).unwrap());
        std::fs::write(dir.path().join("tmp/blob-partial"), b"half").unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert_eq!(blobs.usage(), (0, 0));
    }
}

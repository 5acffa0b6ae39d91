//! Deriving the documents the gateway serves from a packument revision, in their final form:
//! encoded JSON, its gzip, and its ETag.
//!
//! This is the expensive part of a packument request (parsing a multi-megabyte document,
//! re-serializing, compressing), so it runs once per (revision, base URL, form) on a blocking
//! thread and its output is kept by [`crate::cache::RenderCache`]. A hot request never comes
//! here.
//!
//! Invariant (from `open_registry_protocol::packument`): apart from `dist.tarball`, every value
//! is carried over untouched, so `integrity`, `shasum`, `signatures` and `attestations` are
//! exactly what the upstream sent.

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::http::HeaderValue;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use open_registry_protocol::PackageName;
use open_registry_protocol::derive;
use open_registry_protocol::packument::{self, ABBREVIATED_MEDIA_TYPE};

use crate::registry::Error;

/// Which document is derived from a packument.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Form {
    /// The full document, tarballs rewritten.
    Full,
    /// npm's abbreviated document, tarballs rewritten.
    Abbreviated,
    /// One version's document, by exact version or dist-tag.
    Version(String),
    /// The `dist-tags` object (`npm dist-tag ls`).
    DistTags,
}

/// Documents up to this size keep their uncompressed bytes beside the gzip; larger ones keep
/// only the gzip (every npm client asks for it) and are decompressed on the way out for a
/// client that does not. A 20 MB packument's full form is then held as its ~3 MB gzip, and it
/// is never held uncompressed at all: it is derived straight into the compressor.
pub(crate) const IDENTITY_KEPT: usize = 256 << 10;

/// Forms whose gzip is larger than this go to a file when the gateway has a spill directory.
pub(crate) const SPILL_AT: usize = 256 << 10;

/// The directory large derived forms are kept in, as files, instead of memory.
#[derive(Debug)]
pub(crate) struct Spill {
    dir: PathBuf,
    next: AtomicU64,
}

impl Spill {
    /// Keeps large forms in `dir` (created if missing).
    pub(crate) fn new(dir: PathBuf) -> Arc<Spill> {
        Arc::new(Spill {
            dir,
            next: AtomicU64::new(0),
        })
    }

    /// Writes `gzip` to a new file; `None` (kept in memory) if the disk refuses.
    fn keep(&self, gzip: &[u8]) -> Option<Arc<SpillFile>> {
        let n = self.next.fetch_add(1, Relaxed);
        let path = self.dir.join(format!("{n:012}.json.gz"));
        let written = std::fs::create_dir_all(&self.dir).and_then(|()| std::fs::write(&path, gzip));
        match written {
            Ok(()) => Some(Arc::new(SpillFile {
                path,
                len: gzip.len(),
            })),
            Err(e) => {
                tracing::debug!(error = %e, "cannot keep a derived form on disk; keeping it in memory");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }
}

/// A derived form's gzip in a file of the spill directory, removed when the last reference to
/// it goes (a response still streaming it keeps its open descriptor).
#[derive(Debug)]
pub(crate) struct SpillFile {
    path: PathBuf,
    len: usize,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A form's gzip: in memory, or in a file.
#[derive(Debug, Clone)]
pub(crate) enum Gzip {
    /// The bytes.
    Memory(Bytes),
    /// A file of the spill directory.
    File(Arc<SpillFile>),
}

impl Gzip {
    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Gzip::Memory(b) => b.len(),
            Gzip::File(f) => f.len,
        }
    }

    /// Its bytes as a stream (a file is read 64 KiB at a time).
    pub(crate) fn stream(&self) -> futures::stream::BoxStream<'static, std::io::Result<Bytes>> {
        use futures::{StreamExt as _, TryStreamExt as _};
        match self {
            Gzip::Memory(b) => futures::stream::once(std::future::ready(Ok(b.clone()))).boxed(),
            Gzip::File(f) => {
                let f = f.clone();
                futures::stream::once(async move {
                    let file = tokio::fs::File::open(&f.path).await?;
                    // The stream holds `f`, so the file outlives the response.
                    Ok::<_, std::io::Error>(
                        tokio_util::io::ReaderStream::with_capacity(file, 64 << 10).map(move |c| {
                            let _held = &f;
                            c
                        }),
                    )
                })
                .try_flatten()
                .boxed()
            }
        }
    }
}

/// A document ready to send: a hot request only clones these (reference-counted) bytes.
pub(crate) struct Rendered {
    /// The JSON, uncompressed, when it is at most [`IDENTITY_KEPT`] bytes.
    pub(crate) identity: Option<Bytes>,
    /// The length of the uncompressed JSON.
    pub(crate) identity_len: usize,
    /// The same JSON, gzip-compressed.
    pub(crate) gzip: Gzip,
    /// Weak ETag over the uncompressed JSON, shared by both encodings (weak comparison allows
    /// that).
    pub(crate) etag: HeaderValue,
    /// The Content-Type to send.
    pub(crate) content_type: HeaderValue,
}

/// Where a document is derived into: its hash, its gzip, and its first [`IDENTITY_KEPT`] bytes
/// (dropped when it outgrows them), all in one pass.
struct Sink {
    hash: blake3::Hasher,
    gz: GzEncoder<Vec<u8>>,
    identity: Option<Vec<u8>>,
    len: usize,
}

impl Sink {
    fn new(hint: usize) -> Sink {
        Sink {
            hash: blake3::Hasher::new(),
            gz: GzEncoder::new(Vec::with_capacity(hint / 6 + 64), Compression::default()),
            identity: Some(Vec::with_capacity(hint.min(IDENTITY_KEPT))),
            len: 0,
        }
    }

    fn finish(self, content_type: &'static str, spill: Option<&Spill>) -> Result<Rendered, Error> {
        let gzip = self
            .gz
            .finish()
            .map_err(|e| Error::Internal(format!("gzip: {e}")))?;
        let kept = match spill {
            Some(s) if gzip.len() > SPILL_AT => s.keep(&gzip),
            _ => None,
        };
        let gzip = match kept {
            Some(f) => Gzip::File(f),
            None => Gzip::Memory(Bytes::from(gzip)),
        };
        let hash = self.hash.finalize().to_hex();
        // 128 bits of the hash: collisions are not a concern, header bytes per request are.
        let etag = HeaderValue::from_str(&format!("W/\"{}\"", &hash.as_str()[..32]))
            .map_err(|e| Error::Internal(format!("etag: {e}")))?;
        Ok(Rendered {
            identity: self.identity.map(Bytes::from),
            identity_len: self.len,
            gzip,
            etag,
            content_type: HeaderValue::from_static(content_type),
        })
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.gz.write_all(buf)?;
        self.hash.update(buf);
        self.len += buf.len();
        if self.len > IDENTITY_KEPT {
            self.identity = None;
        } else if let Some(id) = &mut self.identity {
            id.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Rendered {
    /// Derives the gzip and ETag of already encoded JSON.
    pub(crate) fn from_bytes(identity: Bytes, content_type: &'static str) -> Result<Self, Error> {
        let mut sink = Sink::new(identity.len());
        sink.write_all(&identity)
            .map_err(|e| Error::Internal(format!("gzip: {e}")))?;
        sink.finish(content_type, None)
    }

    /// The uncompressed JSON: kept, or decompressed from the gzip.
    #[cfg(test)]
    pub(crate) fn identity_bytes(&self) -> Result<Bytes, Error> {
        if let Some(b) = &self.identity {
            return Ok(b.clone());
        }
        let mut out = Vec::with_capacity(self.identity_len);
        gzip_reader(&self.gzip)
            .and_then(|r| flate2::read::GzDecoder::new(r).read_to_end(&mut out))
            .map_err(|e| Error::Internal(format!("gunzip: {e}")))?;
        Ok(Bytes::from(out))
    }

    /// Bytes this entry holds, for the cache's budget.
    pub(crate) fn weight(&self) -> usize {
        let gzip = match &self.gzip {
            Gzip::Memory(b) => b.len(),
            // On disk: it weighs an eighth, so the disk the cache uses is bounded too.
            Gzip::File(f) => f.len / 8 + f.path.as_os_str().len(),
        };
        self.identity.as_ref().map_or(0, Bytes::len)
            + gzip
            + self.etag.len()
            + self.content_type.len()
    }
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("identity", &self.identity_len)
            .field("gzip", &self.gzip.len())
            .field("etag", &self.etag)
            .finish()
    }
}

/// Derives `form` of the packument `bytes` of `name`, with tarballs pointing at `base`.
///
/// `Ok(None)` means the form does not exist in this revision (a version or dist-tag it lacks).
/// A packument that does not parse is the source's fault: 502.
///
/// With `spill`, a form whose gzip is over [`SPILL_AT`] is kept in a file there.
pub(crate) fn render(
    name: &PackageName,
    bytes: &[u8],
    base: &str,
    form: &Form,
    spill: Option<&Spill>,
) -> Result<Option<Rendered>, Error> {
    let unusable = |e: packument::PackumentError| {
        Error::BadGateway(format!("the packument of {name} is unusable: {e}"))
    };
    // Every form is derived from the bytes directly (no JSON tree: a popular packument is
    // megabytes, and its tree many times that), straight into the compressor; and every form
    // reads the document the same way, so no route refuses a document another one serves.
    match form {
        Form::Full => {
            let mut sink = Sink::new(bytes.len());
            derive::write_full(&mut sink, name, bytes, base).map_err(unusable)?;
            sink.finish("application/json", spill).map(Some)
        }
        Form::Abbreviated => {
            let mut sink = Sink::new(bytes.len() / 2);
            derive::write_abbreviated(&mut sink, name, bytes, base).map_err(unusable)?;
            sink.finish(ABBREVIATED_MEDIA_TYPE, spill).map(Some)
        }
        Form::Version(spec) => {
            let mut sink = Sink::new(4096);
            if !derive::write_version(&mut sink, name, bytes, base, spec).map_err(unusable)? {
                return Ok(None);
            }
            sink.finish("application/json", spill).map(Some)
        }
        Form::DistTags => {
            let tags = derive::dist_tags_json(name, bytes).map_err(unusable)?;
            Rendered::from_bytes(Bytes::from(tags), "application/json").map(Some)
        }
    }
}

/// A reader of the gzip bytes, wherever they are.
fn gzip_reader(gzip: &Gzip) -> std::io::Result<Box<dyn Read + Send>> {
    Ok(match gzip {
        Gzip::Memory(b) => Box::new(std::io::Cursor::new(b.clone())),
        Gzip::File(f) => Box::new(KeepOpen {
            file: std::fs::File::open(&f.path)?,
            _held: f.clone(),
        }),
    })
}

/// A spilled form's file, open, holding the form so that it is not removed meanwhile.
struct KeepOpen {
    file: std::fs::File,
    _held: Arc<SpillFile>,
}

impl Read for KeepOpen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

/// Decompresses `gzip` on a blocking thread, a chunk at a time, as the receiver takes them:
/// at most two chunks are in memory whatever the document's size.
pub(crate) fn gunzip_stream(
    gzip: Gzip,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    const CHUNK: usize = 64 << 10;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        let reader = match gzip_reader(&gzip) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut dec = flate2::read::GzDecoder::new(reader);
        loop {
            let mut buf = vec![0; CHUNK];
            match dec.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        return; // The client went away.
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn doc() -> Vec<u8> {
        serde_json::to_vec(&json!({
            "name": "@s/p",
            "readme": "long",
            "dist-tags": {"latest": "1.0.0"},
            "versions": {"1.0.0": {
                "name": "@s/p", "version": "1.0.0", "description": "d",
                "dist": {
                    "tarball": "https://up.example/@s/p/-/p-1.0.0.tgz",
                    "integrity": "sha512-AA==", "shasum": "ab",
                    "signatures": [{"keyid": "k", "sig": "s"}],
                    "attestations": {"url": "u", "provenance": {"predicateType": "t"}}
                }
            }}
        }))
        .unwrap()
    }

    fn json_of(r: &Rendered) -> Value {
        serde_json::from_slice(&r.identity_bytes().unwrap()).unwrap()
    }

    #[test]
    fn forms() {
        let name = PackageName::parse("@s/p").unwrap();
        let base = "http://gw:1";
        let full = render(&name, &doc(), base, &Form::Full, None)
            .unwrap()
            .unwrap();
        let full_json = json_of(&full);
        assert_eq!(full_json["readme"], "long");
        let dist = &full_json["versions"]["1.0.0"]["dist"];
        assert_eq!(dist["tarball"], "http://gw:1/@s/p/-/p-1.0.0.tgz");
        assert_eq!(dist["signatures"][0]["sig"], "s");
        assert_eq!(dist["attestations"]["provenance"]["predicateType"], "t");
        assert_eq!(full.content_type, "application/json");

        let abbr = render(&name, &doc(), base, &Form::Abbreviated, None)
            .unwrap()
            .unwrap();
        let abbr_json = json_of(&abbr);
        assert!(abbr_json.get("readme").is_none());
        assert_eq!(
            abbr_json["versions"]["1.0.0"]["dist"]["tarball"],
            dist["tarball"]
        );
        assert_eq!(
            abbr_json["versions"]["1.0.0"]["dist"]["integrity"],
            "sha512-AA=="
        );
        assert_eq!(abbr.content_type, ABBREVIATED_MEDIA_TYPE);
        assert_ne!(abbr.etag, full.etag);

        let v = render(&name, &doc(), base, &Form::Version("latest".into()), None)
            .unwrap()
            .unwrap();
        assert_eq!(json_of(&v)["version"], "1.0.0");
        assert_eq!(json_of(&v)["dist"]["tarball"], dist["tarball"]);
        assert!(
            render(&name, &doc(), base, &Form::Version("2.0.0".into()), None)
                .unwrap()
                .is_none()
        );

        let tags = render(&name, &doc(), base, &Form::DistTags, None)
            .unwrap()
            .unwrap();
        assert_eq!(json_of(&tags), json!({"latest": "1.0.0"}));
    }

    #[test]
    fn gzip_round_trips_and_etag_is_stable() {
        let name = PackageName::parse("@s/p").unwrap();
        let a = render(&name, &doc(), "http://gw:1", &Form::Full, None)
            .unwrap()
            .unwrap();
        let b = render(&name, &doc(), "http://gw:1", &Form::Full, None)
            .unwrap()
            .unwrap();
        assert_eq!(a.etag, b.etag);
        let etag = a.etag.to_str().unwrap();
        assert!(
            etag.starts_with("W/\"") && etag.ends_with('"') && etag.len() == 36,
            "{etag}"
        );
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(gzip_reader(&a.gzip).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, a.identity_bytes().unwrap());
        let c = render(&name, &doc(), "http://other:2", &Form::Full, None)
            .unwrap()
            .unwrap();
        assert_ne!(a.etag, c.etag);
    }

    #[test]
    fn bad_documents_are_the_sources_fault() {
        let name = PackageName::parse("x").unwrap();
        for bad in [&b"{"[..], b"[]", br#"{"name":"y","versions":{}}"#] {
            assert!(matches!(
                render(&name, bad, "http://gw", &Form::Full, None),
                Err(Error::BadGateway(_))
            ));
        }
    }
}

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

/// A document ready to send: a hot request only clones these (reference-counted) bytes.
pub(crate) struct Rendered {
    /// The JSON, uncompressed, when it is at most [`IDENTITY_KEPT`] bytes.
    pub(crate) identity: Option<Bytes>,
    /// The length of the uncompressed JSON.
    pub(crate) identity_len: usize,
    /// The same JSON, gzip-compressed.
    pub(crate) gzip: Bytes,
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

    fn finish(self, content_type: &'static str) -> Result<Rendered, Error> {
        let gzip = self
            .gz
            .finish()
            .map_err(|e| Error::Internal(format!("gzip: {e}")))?;
        let hash = self.hash.finalize().to_hex();
        // 128 bits of the hash: collisions are not a concern, header bytes per request are.
        let etag = HeaderValue::from_str(&format!("W/\"{}\"", &hash.as_str()[..32]))
            .map_err(|e| Error::Internal(format!("etag: {e}")))?;
        Ok(Rendered {
            identity: self.identity.map(Bytes::from),
            identity_len: self.len,
            gzip: Bytes::from(gzip),
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
        sink.finish(content_type)
    }

    /// The uncompressed JSON: kept, or decompressed from the gzip.
    #[cfg(test)]
    pub(crate) fn identity_bytes(&self) -> Result<Bytes, Error> {
        if let Some(b) = &self.identity {
            return Ok(b.clone());
        }
        let mut out = Vec::with_capacity(self.identity_len);
        flate2::read::GzDecoder::new(&self.gzip[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::Internal(format!("gunzip: {e}")))?;
        Ok(Bytes::from(out))
    }

    /// Bytes this entry holds, for the cache's budget.
    pub(crate) fn weight(&self) -> usize {
        self.identity.as_ref().map_or(0, Bytes::len)
            + self.gzip.len()
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
pub(crate) fn render(
    name: &PackageName,
    bytes: &[u8],
    base: &str,
    form: &Form,
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
            sink.finish("application/json").map(Some)
        }
        Form::Abbreviated => {
            let mut sink = Sink::new(bytes.len() / 2);
            derive::write_abbreviated(&mut sink, name, bytes, base).map_err(unusable)?;
            sink.finish(ABBREVIATED_MEDIA_TYPE).map(Some)
        }
        Form::Version(spec) => {
            let mut sink = Sink::new(4096);
            if !derive::write_version(&mut sink, name, bytes, base, spec).map_err(unusable)? {
                return Ok(None);
            }
            sink.finish("application/json").map(Some)
        }
        Form::DistTags => {
            let tags = derive::dist_tags_json(name, bytes).map_err(unusable)?;
            Rendered::from_bytes(Bytes::from(tags), "application/json").map(Some)
        }
    }
}

/// Decompresses `gzip` on a blocking thread, a chunk at a time, as the receiver takes them:
/// at most two chunks are in memory whatever the document's size.
pub(crate) fn gunzip_stream(
    gzip: Bytes,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    const CHUNK: usize = 64 << 10;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        let mut dec = flate2::read::GzDecoder::new(&gzip[..]);
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
        let full = render(&name, &doc(), base, &Form::Full).unwrap().unwrap();
        let full_json = json_of(&full);
        assert_eq!(full_json["readme"], "long");
        let dist = &full_json["versions"]["1.0.0"]["dist"];
        assert_eq!(dist["tarball"], "http://gw:1/@s/p/-/p-1.0.0.tgz");
        assert_eq!(dist["signatures"][0]["sig"], "s");
        assert_eq!(dist["attestations"]["provenance"]["predicateType"], "t");
        assert_eq!(full.content_type, "application/json");

        let abbr = render(&name, &doc(), base, &Form::Abbreviated)
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

        let v = render(&name, &doc(), base, &Form::Version("latest".into()))
            .unwrap()
            .unwrap();
        assert_eq!(json_of(&v)["version"], "1.0.0");
        assert_eq!(json_of(&v)["dist"]["tarball"], dist["tarball"]);
        assert!(
            render(&name, &doc(), base, &Form::Version("2.0.0".into()))
                .unwrap()
                .is_none()
        );

        let tags = render(&name, &doc(), base, &Form::DistTags)
            .unwrap()
            .unwrap();
        assert_eq!(json_of(&tags), json!({"latest": "1.0.0"}));
    }

    #[test]
    fn gzip_round_trips_and_etag_is_stable() {
        let name = PackageName::parse("@s/p").unwrap();
        let a = render(&name, &doc(), "http://gw:1", &Form::Full)
            .unwrap()
            .unwrap();
        let b = render(&name, &doc(), "http://gw:1", &Form::Full)
            .unwrap()
            .unwrap();
        assert_eq!(a.etag, b.etag);
        let etag = a.etag.to_str().unwrap();
        assert!(
            etag.starts_with("W/\"") && etag.ends_with('"') && etag.len() == 36,
            "{etag}"
        );
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&a.gzip[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, a.identity_bytes().unwrap());
        let c = render(&name, &doc(), "http://other:2", &Form::Full)
            .unwrap()
            .unwrap();
        assert_ne!(a.etag, c.etag);
    }

    #[test]
    fn bad_documents_are_the_sources_fault() {
        let name = PackageName::parse("x").unwrap();
        for bad in [&b"{"[..], b"[]", br#"{"name":"y","versions":{}}"#] {
            assert!(matches!(
                render(&name, bad, "http://gw", &Form::Full),
                Err(Error::BadGateway(_))
            ));
        }
    }
}

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
use std::io::Write as _;

use axum::http::HeaderValue;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use open_registry_protocol::PackageName;
use open_registry_protocol::derive;
use open_registry_protocol::packument::{self, ABBREVIATED_MEDIA_TYPE};
use serde_json::Value;

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

/// A document ready to send: a hot request only clones these (reference-counted) bytes.
pub(crate) struct Rendered {
    /// The JSON, uncompressed.
    pub(crate) identity: Bytes,
    /// The same JSON, gzip-compressed.
    pub(crate) gzip: Bytes,
    /// Weak ETag over `identity`, shared by both encodings (weak comparison allows that).
    pub(crate) etag: HeaderValue,
    /// The Content-Type to send.
    pub(crate) content_type: HeaderValue,
}

impl Rendered {
    /// Encodes `doc` and derives its gzip and ETag.
    pub(crate) fn new(doc: &Value, content_type: &'static str) -> Result<Self, Error> {
        let identity = serde_json::to_vec(doc)
            .map_err(|e| Error::Internal(format!("encoding a document: {e}")))?;
        Self::from_bytes(Bytes::from(identity), content_type)
    }

    /// Derives the gzip and ETag of already encoded JSON.
    pub(crate) fn from_bytes(identity: Bytes, content_type: &'static str) -> Result<Self, Error> {
        let mut gz = GzEncoder::new(
            Vec::with_capacity(identity.len() / 4 + 64),
            Compression::default(),
        );
        gz.write_all(&identity)
            .map_err(|e| Error::Internal(format!("gzip: {e}")))?;
        let gzip = gz
            .finish()
            .map_err(|e| Error::Internal(format!("gzip: {e}")))?;
        let hash = blake3::hash(&identity).to_hex();
        // 128 bits of the hash: collisions are not a concern, header bytes per request are.
        let etag = HeaderValue::from_str(&format!("W/\"{}\"", &hash.as_str()[..32]))
            .map_err(|e| Error::Internal(format!("etag: {e}")))?;
        Ok(Self {
            identity,
            gzip: Bytes::from(gzip),
            etag,
            content_type: HeaderValue::from_static(content_type),
        })
    }

    /// Bytes this entry holds, for the cache's budget.
    pub(crate) fn weight(&self) -> usize {
        self.identity.len() + self.gzip.len() + self.etag.len() + self.content_type.len()
    }
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rendered")
            .field("identity", &self.identity.len())
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
    // The two forms npm installs from are derived from the bytes directly (no JSON tree: a
    // popular packument is megabytes, and its tree many times that).
    match form {
        Form::Full => {
            let json = derive::full_json(name, bytes, base).map_err(unusable)?;
            return Rendered::from_bytes(Bytes::from(json), "application/json").map(Some);
        }
        Form::Abbreviated => {
            let json = derive::abbreviated_json(name, bytes, base).map_err(unusable)?;
            return Rendered::from_bytes(Bytes::from(json), ABBREVIATED_MEDIA_TYPE).map(Some);
        }
        Form::Version(_) | Form::DistTags => {}
    }
    let mut doc = packument::parse(name, bytes).map_err(unusable)?;
    let rendered = match form {
        Form::Full | Form::Abbreviated => unreachable!("derived above"),
        Form::Version(spec) => {
            packument::rewrite_tarballs(&mut doc, name, base);
            match packument::resolve(&doc, spec) {
                Some(version) => Rendered::new(version, "application/json")?,
                None => return Ok(None),
            }
        }
        Form::DistTags => {
            let tags = doc
                .get("dist-tags")
                .cloned()
                .unwrap_or_else(|| Value::Object(Default::default()));
            Rendered::new(&tags, "application/json")?
        }
    };
    Ok(Some(rendered))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Read as _;

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
        serde_json::from_slice(&r.identity).unwrap()
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
        assert_eq!(out, a.identity);
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

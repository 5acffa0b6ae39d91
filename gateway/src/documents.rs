//! Serving packuments, single versions and dist-tags: the hot path.
//!
//! Each request asks the registry for the current revision (an id and shared bytes), then
//! looks up the rendered form under (revision, base URL, form) in the render cache. On a hit
//! the answer is the cached bytes, identity or gzip, with the cached ETag: a lookup and a
//! write. Only a miss parses, and it does so on a blocking thread, once for all concurrent
//! requests of that key (see [`crate::cache`]).
//!
//! A version or dist-tag missing from the current revision triggers exactly one refresh
//! (`Registry::packument(name, true)`) before the 404: the package may have been published to
//! since the node cached it.
//!
//! Versions the registry withholds are already absent from the revision it hands over (their
//! dist-tags moved); asked for by name, one answers 451 with the registry's message.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use open_registry_protocol::PackageName;

use crate::access::{self, Source};
use crate::cache::{Entry, Key};
use crate::error::ApiError;
use crate::negotiate;
use crate::registry::{Error, Packument, Registry};
use crate::render::{self, Form, Gzip, Rendered};
use crate::shared::Shared;

/// Packuments change when a version is published: clients may reuse one for five minutes.
const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("public, max-age=300");
/// Both the form and the encoding depend on request headers; shared caches must key on them.
const VARY: HeaderValue = HeaderValue::from_static("Accept, Accept-Encoding");
const GZIP: HeaderValue = HeaderValue::from_static("gzip");

/// `GET /<name>`: full or abbreviated by `Accept`.
pub(crate) async fn packument<R: Registry>(
    shared: &Shared<R>,
    name: PackageName,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> Result<Response, ApiError> {
    let form = if negotiate::wants_abbreviated(headers) {
        Form::Abbreviated
    } else {
        Form::Full
    };
    let base = negotiate::base_url(shared.public_url.as_deref(), headers, authority)?;
    let pack = shared.registry.packument(&name, false).await?;
    let source = pack.source;
    match lookup(shared, name, pack, base, form).await? {
        Some(doc) => Ok(marked(respond(&doc, headers), source)),
        // Full and abbreviated forms always exist; a None here would be a renderer bug.
        None => Err(Error::Internal("packument form rendered as missing".into()).into()),
    }
}

/// `GET /<name>/<version-or-dist-tag>`. A version the registry withholds answers 451 with its
/// message (a dist-tag never points at one: the registry moved it).
pub(crate) async fn version<R: Registry>(
    shared: &Shared<R>,
    name: PackageName,
    spec: String,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> Result<Response, ApiError> {
    let base = negotiate::base_url(shared.public_url.as_deref(), headers, authority)?;
    let pack = shared.registry.packument(&name, false).await?;
    if let Some(message) = pack.withheld(&spec) {
        return Err(Error::Withheld(message.to_owned()).into());
    }
    let form = Form::Version(spec);
    let source = pack.source;
    if let Some(doc) = lookup(shared, name.clone(), pack, base.clone(), form.clone()).await? {
        return Ok(marked(respond(&doc, headers), source));
    }
    // Absent from this revision: refresh once, then answer from whatever that returned.
    let pack = shared.registry.packument(&name, true).await?;
    if let Form::Version(spec) = &form
        && let Some(message) = pack.withheld(spec)
    {
        return Err(Error::Withheld(message.to_owned()).into());
    }
    let source = pack.source;
    match lookup(shared, name.clone(), pack, base, form.clone()).await? {
        Some(doc) => Ok(marked(respond(&doc, headers), source)),
        None => {
            shared.registry.still_missing(&name);
            let Form::Version(spec) = form else {
                return Err(Error::Internal("version form expected".into()).into());
            };
            Err(Error::NotFound(format!("version not found: {spec}")).into())
        }
    }
}

/// `GET /-/package/<name>/dist-tags`.
pub(crate) async fn dist_tags<R: Registry>(
    shared: &Shared<R>,
    name: PackageName,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> Result<Response, ApiError> {
    // The tags hold no URLs, but the key still needs a base; use the same one so the entry
    // sits beside its packument's.
    let base = negotiate::base_url(shared.public_url.as_deref(), headers, authority)?;
    let pack = shared.registry.packument(&name, false).await?;
    let source = pack.source;
    match lookup(shared, name, pack, base, Form::DistTags).await? {
        Some(doc) => Ok(marked(respond(&doc, headers), source)),
        None => Err(Error::Internal("dist-tags rendered as missing".into()).into()),
    }
}

/// `res`, marked for the access log as coming from `source`.
fn marked(mut res: Response, source: Source) -> Response {
    access::mark(&mut res, source);
    res
}

/// The rendered `form` of `pack`, from the cache or rendered now.
async fn lookup<R: Registry>(
    shared: &Shared<R>,
    name: PackageName,
    pack: Packument,
    base: String,
    form: Form,
) -> Result<Entry, Error> {
    let key = Key {
        id: pack.id,
        base,
        form,
    };
    let spill = shared.spill.clone();
    // The closure owns the name and the (reference-counted) bytes, so a hit clones nothing.
    shared
        .cache
        .get_or_render(key, move |key| {
            render::render(&name, &pack.bytes, &key.base, &key.form, spill.as_deref())
                .map(|r| r.map(Into::into))
        })
        .await
}

/// The response for a rendered document: 304 if the client has it, else the bytes in the
/// best encoding it accepts. Content-Length is always the length of what the body would be.
pub(crate) fn respond(doc: &Rendered, headers: &HeaderMap) -> Response {
    let not_modified = doc
        .etag
        .to_str()
        .is_ok_and(|etag| negotiate::none_match(headers, etag));
    let mut res = if not_modified {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        res
    } else {
        let gzip = negotiate::accepts_gzip(headers);
        let (body, len) = match (&doc.identity, gzip) {
            (_, true) => match &doc.gzip {
                Gzip::Memory(b) => (Body::from(b.clone()), b.len()),
                // Kept on disk: streamed from its file.
                file => (Body::from_stream(file.stream()), file.len()),
            },
            (Some(identity), false) => (Body::from(identity.clone()), identity.len()),
            // A large document for a client that takes no gzip: decompressed as it is sent,
            // a chunk at a time, so it is never held uncompressed.
            (None, false) => (
                Body::from_stream(crate::render::gunzip_stream(doc.gzip.clone())),
                doc.identity_len,
            ),
        };
        let mut res = Response::new(body);
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, doc.content_type.clone());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if gzip {
            h.insert(header::CONTENT_ENCODING, GZIP);
        }
        res
    };
    let h = res.headers_mut();
    h.insert(header::ETAG, doc.etag.clone());
    h.insert(header::CACHE_CONTROL, CACHE_CONTROL);
    h.insert(header::VARY, VARY);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn doc() -> Rendered {
        Rendered::from_bytes(Bytes::from_static(br#"{"name":"x"}"#), "application/json").unwrap()
    }

    fn req(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn identity_gzip_and_not_modified() {
        let d = doc();
        let res = respond(&d, &HeaderMap::new());
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()[header::CONTENT_LENGTH],
            d.identity_len.to_string()
        );
        assert!(res.headers().get(header::CONTENT_ENCODING).is_none());
        assert_eq!(res.headers()[header::VARY], "Accept, Accept-Encoding");
        assert_eq!(res.headers()[header::CACHE_CONTROL], "public, max-age=300");

        let res = respond(&d, &req(&[(header::ACCEPT_ENCODING, "gzip, br")]));
        assert_eq!(res.headers()[header::CONTENT_ENCODING], "gzip");
        assert_eq!(
            res.headers()[header::CONTENT_LENGTH],
            d.gzip.len().to_string()
        );

        let etag = d.etag.to_str().unwrap();
        let res = respond(&d, &req(&[(header::IF_NONE_MATCH, etag)]));
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(res.headers()[header::ETAG], etag);
    }
}

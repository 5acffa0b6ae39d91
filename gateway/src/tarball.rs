//! Serving tarballs: the bytes exactly as verified, streamed, never re-compressed.
//!
//! A tarball is immutable under its file name (npm forbids republishing a version), and its
//! content id names its bytes, so the id is a strong ETag and clients may cache it for a year.
//! The body is passed through as the registry hands it over: a stream from disk stays a
//! stream, so a 50 MiB tarball is never held whole in memory. Content-Length is always sent
//! (npm and proxies use it), and there is no Content-Encoding: a `.tgz` is already gzip, and
//! compressing it again would cost CPU to grow it.

use axum::body::Body as HttpBody;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use open_registry_protocol::{PackageName, TarballFile};

use crate::error::ApiError;
use crate::negotiate;
use crate::registry::{Body, Error, Registry};
use crate::shared::Shared;

const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// `GET /<name>/-/<file>.tgz`.
pub(crate) async fn serve<R: Registry>(
    shared: &Shared<R>,
    name: &PackageName,
    file: &TarballFile,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let blob = shared.registry.tarball(name, file).await?;
    let source = blob.source;
    let mut res = respond(blob, headers)?;
    crate::access::mark(&mut res, source);
    Ok(res)
}

/// Answers with a verified blob (a tarball, or any blob by id): ETag from its id, 304 when the
/// client has it, else the bytes, with Content-Length unless they are still being verified.
pub(crate) fn respond(
    blob: crate::registry::Blob,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    // A CID's text form is base32: always a valid header value.
    let etag = HeaderValue::from_str(&format!("\"{}\"", blob.id))
        .map_err(|e| Error::Internal(format!("tarball etag: {e}")))?;

    let mut res = match etag.to_str() {
        // The body (perhaps an open file) is dropped unread.
        Ok(tag) if negotiate::none_match(headers, tag) => {
            let mut res = Response::new(HttpBody::empty());
            *res.status_mut() = StatusCode::NOT_MODIFIED;
            res
        }
        _ => {
            let mut len = Some(blob.len);
            let body = match blob.body {
                Body::Bytes(bytes) => {
                    // Content-Length is promised from `len`: a mismatch would hang or cut the
                    // client, so refuse it here as the node's bug.
                    if bytes.len() as u64 != blob.len {
                        return Err(Error::Internal(format!(
                            "blob {} has {} bytes but claims {}",
                            blob.id,
                            bytes.len(),
                            blob.len
                        ))
                        .into());
                    }
                    HttpBody::from(bytes)
                }
                Body::Stream(stream) => HttpBody::from_stream(stream),
                Body::Verifying(stream) => {
                    len = None;
                    HttpBody::from_stream(stream)
                }
            };
            let mut res = Response::new(body);
            let h = res.headers_mut();
            h.insert(header::CONTENT_TYPE, OCTET_STREAM);
            if let Some(len) = len {
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            res
        }
    };
    let h = res.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, CACHE_CONTROL);
    Ok(res)
}

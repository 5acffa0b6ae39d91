//! The `/-/` routes that are not packages: ping, keys, status, metrics, and the audit requests
//! passed through to the upstream (search is `crate::search`, which forwards through here).
//!
//! Forwarding is deliberately dumb: the body and its Content-Type and Content-Encoding go to
//! [`Registry::forward`] as received (npm gzips audit bodies), and the upstream's status,
//! Content-Type and body come back. Request bodies are capped, since a mirror has no reason to
//! buffer more than an audit of a large lockfile. An upstream without audits (404, 405, 501) or
//! with an empty answer gets the client a JSON `{"error": ...}` that npm prints.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use crate::error::{ApiError, json_response};
use crate::registry::{Error, Forward, ForwardMethod, Forwarded, Registry};
use crate::shared::Shared;

/// The largest body forwarded: npm's bulk advisory request for a big lockfile is a few MiB.
pub const MAX_FORWARD_BODY: usize = 10 * 1024 * 1024;

const PROMETHEUS_TEXT: HeaderValue = HeaderValue::from_static("text/plain; version=0.0.4");

/// `GET /-/ping`.
pub(crate) fn ping() -> Response {
    json_response(StatusCode::OK, &Bytes::from_static(b"{}"))
}

/// `GET /-/npm/v1/keys`: the registry's signing keys, as the node has them.
pub(crate) async fn keys<R: Registry>(shared: &Shared<R>) -> Result<Response, ApiError> {
    let keys = shared.registry.keys().await?;
    Ok(json_response(StatusCode::OK, &keys))
}

/// `GET /-/open-registry/records/<name>`: the signed records the node holds for a package.
pub(crate) async fn records<R: Registry>(
    shared: &Shared<R>,
    name: &open_registry_protocol::PackageName,
) -> Result<Response, ApiError> {
    let doc = shared.registry.records(name).await?;
    Ok(json_response(StatusCode::OK, &doc))
}

/// `GET /-/open-registry/status`.
pub(crate) async fn status<R: Registry>(shared: &Shared<R>) -> Result<Response, ApiError> {
    let status = shared.registry.status().await;
    let body = serde_json::to_vec(&status)
        .map_err(|e| Error::Internal(format!("encoding status: {e}")))?;
    Ok(json_response(StatusCode::OK, &Bytes::from(body)))
}

/// `GET /-/metrics`: the node's metrics, then the gateway's.
pub(crate) async fn metrics<R: Registry>(shared: &Shared<R>) -> Response {
    let mut text = shared.registry.metrics().await;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&shared.metrics.render(shared.cache.stats()));
    let len = text.len();
    let mut res = Response::new(Body::from(text));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, PROMETHEUS_TEXT);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Passes a search or audit request to the upstream and returns its answer as it came.
/// `path` is the canonical path of the route (never the raw one the client sent); the raw
/// query string is kept.
pub(crate) async fn forward_raw<R: Registry>(
    shared: &Shared<R>,
    method: ForwardMethod,
    path: &str,
    req: Request,
) -> Result<Forwarded, ApiError> {
    let (parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let body = match method {
        ForwardMethod::Get => Bytes::new(),
        ForwardMethod::Post => read_capped(&parts.headers, body).await?,
    };
    Ok(shared
        .registry
        .forward(Forward {
            method,
            path_and_query,
            content_type: header_string(&parts.headers, header::CONTENT_TYPE),
            content_encoding: header_string(&parts.headers, header::CONTENT_ENCODING),
            body,
        })
        .await?)
}

/// The upstream's answer as the client's: its status, Content-Type and body.
pub(crate) fn respond(answer: Forwarded) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(answer.status)
        .map_err(|_| Error::BadGateway(format!("upstream answered status {}", answer.status)))?;
    let content_type = answer
        .content_type
        .as_deref()
        .and_then(|ct| HeaderValue::from_str(ct).ok())
        .unwrap_or(HeaderValue::from_static("application/json"));
    let len = answer.body.len();
    let mut res = Response::new(Body::from(answer.body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(res)
}

/// `POST` of an audit (`path` is the route's canonical path): the upstream's answer, or, when
/// the upstream has no such endpoint (404, 405, 501) or answers with an empty body, a JSON
/// error that npm prints instead of an empty answer.
pub(crate) async fn audit<R: Registry>(
    shared: &Shared<R>,
    path: &str,
    req: Request,
) -> Result<Response, ApiError> {
    let answer = forward_raw(shared, ForwardMethod::Post, path, req).await?;
    if matches!(answer.status, 404 | 405 | 501) {
        return Err(ApiError::NoEndpoint(format!(
            "the upstream registry provides no audit endpoint (POST {path} answered {})",
            answer.status
        )));
    }
    if answer.body.iter().all(u8::is_ascii_whitespace) {
        let status = StatusCode::from_u16(answer.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        return Err(ApiError::Upstream(
            status,
            format!(
                "the upstream registry answered the audit (POST {path}) with status {} and an empty body",
                answer.status
            ),
        ));
    }
    respond(answer)
}

/// The request body, refused past [`MAX_FORWARD_BODY`] (early, when Content-Length says so).
async fn read_capped(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let too_large = ApiError::Body {
        limit: MAX_FORWARD_BODY,
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORWARD_BODY as u64) {
        return Err(too_large);
    }
    axum::body::to_bytes(body, MAX_FORWARD_BODY)
        .await
        .map_err(|_| too_large)
}

fn header_string(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

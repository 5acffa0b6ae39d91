//! [`ApiError`]: every way a gateway request can fail, turned into the status code and the
//! `{"error": "..."}` body that npm prints.
//!
//! The detail is logged here, once, with the status; handlers just return `Err`. Messages are
//! written for the person reading npm's output: what is wrong and, where there is one, what to
//! do instead. Internal errors are the exception: their detail goes to the log only, since it
//! may describe the node's disk or configuration.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::negotiate::HostError;
use crate::path::PathError;
use crate::registry::Error;

/// What to tell npm when a write (publish, unpublish, dist-tag edit, login) arrives.
pub const READ_ONLY_MESSAGE: &str = "this node is a read-only mirror: publish, unpublish, \
     dist-tag changes and logins are not accepted here; publish to the upstream registry instead";

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The registry behind the gateway could not answer.
    #[error(transparent)]
    Registry(#[from] Error),
    /// The path names nothing valid.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The base URL could not be derived from the request.
    #[error(transparent)]
    Host(#[from] HostError),
    /// 405 for writes.
    #[error("{READ_ONLY_MESSAGE}")]
    ReadOnly,
    /// 405 for a method a read route does not take.
    #[error("method not allowed here; this route takes {allow}")]
    Method { allow: &'static str },
    /// 401 for `/-/whoami`: nobody is logged in to a mirror.
    #[error("not logged in: this node is a read-only mirror and has no user accounts")]
    Anonymous,
    /// 501: the upstream has no such endpoint (audits, search) and there is nothing to answer
    /// with instead.
    #[error("{0}")]
    NoEndpoint(String),
    /// An upstream answer that cannot be passed on (an empty body), with the status to answer.
    #[error("{1}")]
    Upstream(StatusCode, String),
    /// 413: a forwarded body over the cap, or one that could not be read.
    #[error("request body is larger than {limit} bytes or could not be read")]
    Body { limit: usize },
}

impl ApiError {
    /// The status code this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Registry(e) => match e {
                Error::NotFound(_) => StatusCode::NOT_FOUND,
                Error::BadRequest(_) => StatusCode::BAD_REQUEST,
                Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                Error::BadGateway(_) => StatusCode::BAD_GATEWAY,
                Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
                Error::Withheld(_) => StatusCode::UNAVAILABLE_FOR_LEGAL_REASONS,
            },
            ApiError::Path(e) if e.is_bad_request() => StatusCode::BAD_REQUEST,
            ApiError::Path(_) => StatusCode::NOT_FOUND,
            ApiError::Host(_) => StatusCode::BAD_REQUEST,
            ApiError::ReadOnly | ApiError::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Anonymous => StatusCode::UNAUTHORIZED,
            ApiError::Body { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoEndpoint(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Upstream(status, _) => *status,
        }
    }

    /// The message npm shows.
    fn public_message(&self) -> String {
        match self {
            ApiError::Registry(Error::Internal(_)) => {
                "internal error in the registry node; its log has the details".to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut res = json_response(status, &error_body(&self.public_message()));
        match self {
            ApiError::ReadOnly => {
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ApiError::Method { allow } => {
                res.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        res
    }
}

/// `{"error": message}`, encoded.
pub(crate) fn error_body(message: &str) -> Bytes {
    let body = serde_json::json!({ "error": message });
    // Serializing a map of one string cannot fail; fall back to a fixed body rather than panic.
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .unwrap_or_else(|_| Bytes::from_static(br#"{"error":"error"}"#))
}

/// A JSON response with Content-Length.
pub(crate) fn json_response(status: StatusCode, body: &Bytes) -> Response {
    let mut res = (status, body.clone()).into_response();
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_map_to_statuses() {
        for (e, code) in [
            (Error::NotFound("x".into()), 404),
            (Error::BadRequest("x".into()), 400),
            (Error::Unauthorized("x".into()), 401),
            (Error::BadGateway("x".into()), 502),
            (Error::Timeout("x".into()), 504),
            (Error::Unavailable("x".into()), 503),
            (Error::Internal("x".into()), 500),
            (Error::Withheld("x".into()), 451),
        ] {
            assert_eq!(ApiError::from(e).status().as_u16(), code);
        }
        assert_eq!(ApiError::ReadOnly.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(ApiError::Anonymous.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ApiError::from(PathError::Traversal).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            ApiError::from(PathError::NoRoute("/x".into())).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn internal_detail_stays_in_the_log() {
        let e = ApiError::from(Error::Internal("/var/lib/secret: EIO".into()));
        assert!(!e.public_message().contains("secret"));
        let e = ApiError::from(Error::NotFound("no such package: x".into()));
        assert_eq!(e.public_message(), "no such package: x");
    }

    #[test]
    fn withheld_message_reaches_the_client() {
        let e = ApiError::from(Error::Withheld("p@1.0.1 is in its release cooldown".into()));
        assert_eq!(e.public_message(), "p@1.0.1 is in its release cooldown");
    }

    #[test]
    fn body_is_json_with_an_error_field() {
        let body = error_body("quote \" and \\ survive");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "quote \" and \\ survive");
    }
}

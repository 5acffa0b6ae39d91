//! Router tests: the whole gateway over a [`MemoryRegistry`], through `oneshot` (most) and over
//! a real TCP socket (a few), plus fuzzed paths.
//!
//! - `documents`: packuments, versions, dist-tags: forms, rewriting, ETags, gzip, the cache.
//! - `tarballs`: headers, streaming, 304, ownership.
//! - `access`: the access log's lines, and turning it off.
//! - `api`: the `/-/` routes, forwarding, writes, bad paths and error mapping.
//! - `socket`: HTTP/1.1 over 127.0.0.1 with a hand-written client.
//! - `fuzz`: proptest over paths.
//! - `parsers`: proptest on the path parser and header readers themselves (R17).
//! - `withheld`: versions a registry withholds (451, moved dist-tags).

mod access;
mod api;
mod documents;
mod fuzz;
mod parsers;
mod socket;
mod tarballs;
mod withheld;

use std::io::Read as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

use crate::{Config, MemoryRegistry, router};

/// The Host every test request carries unless it sets its own.
const HOST: &str = "gw.test:7373";
/// npm's Accept header for installs.
const NPM_ACCEPT: &str = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

/// A registry with `left-pad@1.3.0` and `@s/p@1.0.0` + `2.0.0-beta.1` (tagged `next`), and a
/// gateway over it.
fn gateway() -> (Arc<MemoryRegistry>, Router) {
    gateway_with(Config::default())
}

fn gateway_with(config: Config) -> (Arc<MemoryRegistry>, Router) {
    let reg = Arc::new(MemoryRegistry::new());
    reg.publish("left-pad", "1.3.0", &b"left-pad tarball bytes"[..])
        .expect("publish");
    reg.publish("@s/p", "1.0.0", vec![1u8; 5000])
        .expect("publish");
    reg.publish("@s/p", "2.0.0-beta.1", vec![2u8; 300])
        .expect("publish");
    let app = router(reg.clone(), config);
    (reg, app)
}

/// An answer, collected.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The body, gunzipped if it was sent gzip.
    fn decoded(&self) -> Vec<u8> {
        if self.header("content-encoding") == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&self.body[..])
                .read_to_end(&mut out)
                .expect("gunzip");
            out
        } else {
            self.body.to_vec()
        }
    }

    /// Asserts an error answer: `status`, JSON content type, and an `error` string.
    fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {self:?}"))
            .to_owned()
    }
}

/// Sends `method path` with `headers` (and Host) and collects the answer.
async fn send(
    app: &Router,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req = req.header("host", HOST);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::from(body)).expect("request");
    let res = app.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(app: &Router, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(app, Method::GET, path, headers, Bytes::new()).await
}

/// The value of a sample in Prometheus text.
async fn metric(app: &Router, sample: &str) -> u64 {
    let text = get(app, "/-/metrics", &[]).await;
    let text = String::from_utf8_lossy(&text.body).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

//! The access log: one `info` line per request under [`TARGET`], written by [`crate::serve()`]
//! for every route it serves (the gateway's and any merged into its router), so no route logs
//! for itself.
//!
//! A line carries the method, the path (without the query: search text is the client's
//! business), the status, the bytes the body will carry (its Content-Length; 0 for HEAD and
//! bodies of unknown length), where the answer came from ([`Source`]), the milliseconds until
//! the response head was ready, and the client's IP address. Off with `Limits::access_log`.
//!
//! The source is what the gateway knows: the registry says where a packument or a blob came
//! from (`Packument::source`, `Blob::source`), a handler marks its response with that
//! [`Source`] as an extension, and unmarked responses (the operator routes) log `-`.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::{Method, Response, header};

/// The tracing target of access lines (filter with `RUST_LOG=open_registry::access=off`).
pub const TARGET: &str = "open_registry::access";

/// Where an answer came from, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The gateway answered by itself: ping, whoami, refused writes, bad paths.
    Gateway,
    /// The node behind the gateway answered, without saying from where (errors, keys,
    /// records, status).
    Node,
    /// The node's memory (a hot packument, a small tarball).
    Memory,
    /// The node's store on disk.
    Store,
    /// Fetched from another node just now.
    Peer,
    /// Fetched from the upstream registry just now, or passed through to it (search, audits).
    Upstream,
    /// The node's own search index (search without an upstream that has one).
    Index,
}

impl Source {
    /// The word in the log.
    pub fn label(self) -> &'static str {
        match self {
            Source::Gateway => "gateway",
            Source::Node => "node",
            Source::Memory => "memory",
            Source::Store => "store",
            Source::Peer => "peer",
            Source::Upstream => "upstream",
            Source::Index => "index",
        }
    }
}

/// Marks `res` as coming from `source`.
pub(crate) fn mark<B>(res: &mut Response<B>, source: Source) {
    res.extensions_mut().insert(source);
}

/// Logs one answered request.
pub(crate) fn log<B>(
    method: &Method,
    path: &str,
    client: IpAddr,
    res: &Response<B>,
    elapsed: Duration,
) {
    let bytes = if method == Method::HEAD {
        0
    } else {
        res.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let source = res.extensions().get::<Source>().map_or("-", |s| s.label());
    tracing::info!(
        target: TARGET,
        method = %method,
        path = %path,
        status = res.status().as_u16(),
        bytes,
        source = %source,
        ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        client = %client,
        "request"
    );
}

//! The upstream registry, as the Fetcher sees it: the [`Source`] trait, what it answers, and
//! how it fails.
//!
//! [`http::Client`] is the real one and the only code that talks HTTP to another registry:
//! every wait has a deadline (connect, and a total budget per operation that its retries
//! share), failures are retried a bounded number of times with backoff, bodies are size-capped,
//! and only the configured upstream is ever contacted (a tarball URL found in metadata
//! contributes its path, never its host: R9 in docs/security.md). Tests replace it with a fake.

pub(crate) mod body;
pub(crate) mod breaker;
pub(crate) mod http;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use open_registry_gateway::{Forward, Forwarded, Lease};
use open_registry_protocol::PackageName;
use open_registry_protocol::status::UpstreamHealth;
use tokio::time::Instant;
use url::Url;

pub(crate) use http::Client;

/// Why the upstream did not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream has no {0}")]
    NotFound(String),
    #[error("upstream answered {status} for {what}")]
    Status { status: u16, what: String },
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream body was cut short or unreadable: {0}")]
    Body(String),
    #[error("upstream body exceeds the {0}-byte cap")]
    TooLarge(u64),
    #[error("{0}")]
    Refused(String),
    /// The circuit breaker is open: the upstream did not answer lately, so it is not asked.
    #[error(
        "the upstream registry is down (not answering for {for_secs}s); this node serves what it stores and what its peers hold, and asks the upstream again in {probe_in_secs}s"
    )]
    Down { for_secs: u64, probe_in_secs: u64 },
}

impl UpstreamError {
    /// Whether this failure means the upstream is not there (as opposed to an answer, even an
    /// unwelcome one): what the circuit breaker counts.
    pub(crate) fn is_outage(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => *status >= 500 || *status == 429,
            UpstreamError::Timeout(_) | UpstreamError::Unreachable(_) | UpstreamError::Body(_) => {
                true
            }
            _ => false,
        }
    }

    /// Whether trying again may help.
    pub fn retriable(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => *status >= 500 || *status == 429,
            UpstreamError::Unreachable(_) | UpstreamError::Body(_) => true,
            _ => false,
        }
    }
}

/// A packument as the upstream answered a (conditional) request.
#[derive(Debug, Clone)]
pub(crate) enum PackumentAnswer {
    /// 304: the revision we hold is current.
    NotModified,
    /// 200: a document.
    Document {
        bytes: Bytes,
        /// The share of the packument memory `bytes` hold.
        lease: Lease,
        etag: Option<String>,
        last_modified: Option<String>,
    },
}

/// A tarball body on its way: its announced length, and its chunks.
pub(crate) struct Download {
    /// Content-Length, if the upstream sent one.
    pub len: Option<u64>,
    /// The body; a failed chunk ends it.
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download").field("len", &self.len).finish()
    }
}

/// How long one operation may take, all its attempts included, and how many retries follow a
/// failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub timeout: Duration,
    pub retries: u32,
}

/// Waits before retry number `attempt` (1-based): 100 ms, 400 ms, 1.6 s..., never past
/// `deadline`.
pub(crate) async fn backoff(attempt: u32, deadline: Instant) {
    let wait = Duration::from_millis(100 * 4u64.pow(attempt.saturating_sub(1).min(5)));
    tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
}

/// What the Fetcher (and sync, and the keys route) ask of the upstream.
pub(crate) trait Source: Send + Sync + fmt::Debug {
    /// The upstream's base URL (always ends with `/`).
    fn base(&self) -> &Url;

    /// The budget of one operation.
    fn budget(&self) -> Budget;

    /// The full packument of `name`, conditionally when `etag` or `last_modified` is known.
    /// Retries (with backoff, inside the budget) cover cut-short bodies too.
    fn packument<'a>(
        &'a self,
        name: &'a PackageName,
        etag: Option<&'a str>,
        last_modified: Option<&'a str>,
    ) -> BoxFuture<'a, Result<PackumentAnswer, UpstreamError>>;

    /// Starts one tarball download attempt for `file` of `name`, at the path `dist_tarball`
    /// names (as the packument wrote it) on the upstream, or the conventional path. The caller
    /// retries, counting body failures too, and reads the body before `deadline`.
    fn tarball<'a>(
        &'a self,
        name: &'a PackageName,
        file: &'a str,
        dist_tarball: Option<&'a str>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Download, UpstreamError>>;

    /// The registry signing keys document (`/-/npm/v1/keys`).
    fn keys(&self) -> BoxFuture<'_, Result<Bytes, UpstreamError>>;

    /// A search or audit request, passed on unchanged.
    fn forward(&self, req: Forward) -> BoxFuture<'_, Result<Forwarded, UpstreamError>>;

    /// One page of a configured changes feed: the body of `GET url`, at most `cap` bytes.
    fn feed<'a>(&'a self, url: &'a Url, cap: u64) -> BoxFuture<'a, Result<Bytes, UpstreamError>>;

    /// Resolves when the upstream is known to be down (a circuit breaker opened); never, for a
    /// source that does not track its health.
    fn outage(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }

    /// How long this upstream usually takes to answer at most, if it is known: a request with a
    /// stale copy at hand waits no longer than this (nor than the stale grace) before it is
    /// answered with the copy.
    fn answers_within(&self) -> Option<Duration> {
        None
    }

    /// The upstream's health as a circuit breaker sees it, if this source tracks it.
    fn health(&self) -> Option<UpstreamHealth> {
        None
    }
}

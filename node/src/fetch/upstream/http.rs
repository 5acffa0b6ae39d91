//! [`Client`]: the upstream over HTTP (reqwest), with deadlines, retries, size caps and
//! redirects confined to the upstream's origin.
//!
//! Content codings are handled here, not by reqwest: documents (packuments, keys, the changes
//! feed, forwarded answers) are requested with `Accept-Encoding: gzip` and decoded by
//! [`body::read`], which caps the *decoded* size (and holds packuments within the node's
//! packument memory); tarballs are requested with
//! `Accept-Encoding: identity` and passed on exactly as sent, whatever `Content-Encoding` the
//! upstream labels them with (their integrity is over those bytes). reqwest's own decoding
//! would decode any response labelled gzip, even one asked for as identity, so it is off.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use open_registry_gateway::{Forward, ForwardMethod, Forwarded};
use open_registry_protocol::{PackageName, packument};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use tokio::time::Instant;
use url::Url;

use super::body::{self, Memory};
use super::breaker::Breaker;
use super::{Budget, Download, PackumentAnswer, Source, UpstreamError, backoff};
use crate::config::Config;
use crate::errors::chain as error_chain;
use crate::metrics::Metrics;
use open_registry_protocol::status::UpstreamHealth;

/// What `send` calls a changes-feed request.
const FEED: &str = "changes feed";

/// The one content coding documents are accepted in (and decoded by [`body::read`]).
const GZIP: &str = "gzip";

/// The upstream over HTTP.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    base: Url,
    http: reqwest::Client,
    timeout: Duration,
    retries: u32,
    max_packument: u64,
    metrics: Arc<Metrics>,
    /// Whether the upstream answers lately; every request goes through it.
    breaker: Arc<Breaker>,
    /// The packument memory packument bodies are read within; none: unbounded.
    memory: Option<Memory>,
}

impl Client {
    /// A client for `config.upstream`; `None` when no upstream is configured.
    pub(crate) fn new(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Client>, reqwest::Error> {
        let Some(base) = config.upstream.clone() else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.upstream_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("open-registry/", env!("CARGO_PKG_VERSION")))
            .redirect(same_origin_redirects(&base))
            // Decoding is `body::read`'s (see the module docs); reqwest's would also decode
            // tarballs, which must be stored as sent.
            .no_gzip()
            .build()?;
        Ok(Some(Client {
            base,
            http,
            timeout: config.upstream_timeout,
            retries: config.retries,
            max_packument: config.max_packument_size,
            breaker: Arc::new(Breaker::new(
                config.breaker_outages,
                config.clock.clone(),
                metrics.clone(),
            )),
            metrics,
            memory: None,
        }))
    }

    /// Reads packument bodies within `memory` (see [`body`]).
    pub(crate) fn with_memory(mut self, memory: Memory) -> Client {
        self.memory = Some(memory);
        self
    }

    /// Sends a request built by `build` with retries and backoff inside one deadline; returns the
    /// response once its status is final (2xx, 304 or 404).
    async fn send(
        &self,
        what: &str,
        deadline: Instant,
        retries: u32,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(UpstreamError::Timeout(self.timeout));
            }
            // Feed polls are counted apart: they are the node's own schedule, not traffic.
            if what == FEED {
                Metrics::inc(&self.metrics.feed_requests);
            } else {
                Metrics::inc(&self.metrics.upstream_requests);
            }
            let result = self
                .breaker
                .guard(|| async {
                    match tokio::time::timeout(left, build().timeout(left).send()).await {
                        Err(_) => Err(UpstreamError::Timeout(self.timeout)),
                        Ok(Err(e)) if e.is_timeout() => Err(UpstreamError::Timeout(self.timeout)),
                        Ok(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e))),
                        Ok(Ok(r)) => match r.status() {
                            s if s.is_success() || s == StatusCode::NOT_MODIFIED => Ok(r),
                            StatusCode::NOT_FOUND => Err(UpstreamError::NotFound(what.to_owned())),
                            s => Err(UpstreamError::Status {
                                status: s.as_u16(),
                                what: what.to_owned(),
                            }),
                        },
                    }
                })
                .await;
            if let Err(e @ (UpstreamError::NotFound(_) | UpstreamError::Down { .. })) = result {
                return Err(e);
            }
            match result {
                Ok(r) => return Ok(r),
                Err(e) if e.retriable() && attempt < retries => {
                    Metrics::inc(&self.metrics.upstream_errors);
                    attempt += 1;
                    tracing::debug!(%e, attempt, "upstream request failed; retrying");
                    backoff(attempt, deadline).await;
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.upstream_errors);
                    return Err(e);
                }
            }
        }
    }

    async fn get_packument(
        &self,
        name: &PackageName,
        etag: Option<&str>,
        last_modified: Option<&str>,
    ) -> Result<PackumentAnswer, UpstreamError> {
        let url = self
            .base
            .join(&name.url_segment())
            .map_err(|e| UpstreamError::Refused(e.to_string()))?;
        let deadline = Instant::now() + self.timeout;
        let what = format!("package {name}");
        let mut attempt = 0;
        loop {
            // Retries are counted here, for the status and the body alike: `retries` more
            // attempts after the first, whatever failed.
            let sent = self
                .send(&what, deadline, 0, || {
                    let mut req = self
                        .http
                        .get(url.clone())
                        // The full document: abbreviated forms are derived here, never trusted
                        // from an upstream that may ignore the header anyway.
                        .header(header::ACCEPT, "application/json")
                        .header(header::ACCEPT_ENCODING, GZIP);
                    if let Some(e) = etag {
                        req = req.header(header::IF_NONE_MATCH, e);
                    } else if let Some(lm) = last_modified {
                        req = req.header(header::IF_MODIFIED_SINCE, lm);
                    }
                    req
                })
                .await;
            let r = match sent {
                Ok(r) => r,
                Err(e) if e.retriable() && attempt < self.retries => {
                    attempt += 1;
                    backoff(attempt, deadline).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if r.status() == StatusCode::NOT_MODIFIED {
                return Ok(PackumentAnswer::NotModified);
            }
            let etag = header_string(r.headers(), header::ETAG);
            let last_modified = header_string(r.headers(), header::LAST_MODIFIED);
            let read = body::read(
                r,
                self.max_packument,
                deadline,
                &self.metrics,
                self.memory.as_ref(),
            );
            match read.await {
                Ok((bytes, lease)) => {
                    return Ok(PackumentAnswer::Document {
                        bytes,
                        lease,
                        etag,
                        last_modified,
                    });
                }
                Err(e) if e.retriable() && attempt < self.retries => {
                    attempt += 1;
                    Metrics::inc(&self.metrics.upstream_errors);
                    tracing::debug!(%e, "packument body failed; retrying");
                    backoff(attempt, deadline).await;
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.upstream_errors);
                    return Err(e);
                }
            }
        }
    }

    /// The upstream URL of a tarball: the path of `dist_tarball` (as the packument wrote it) on
    /// the configured upstream, or the registry's conventional path when it is absent or unusable.
    fn tarball_url(
        &self,
        name: &PackageName,
        file: &str,
        dist_tarball: Option<&str>,
    ) -> Result<Url, UpstreamError> {
        let conventional = || format!("{name}/-/{file}");
        let url = match dist_tarball.and_then(packument::url_path) {
            Some(path) => self.base.join(path),
            None => self.base.join(&conventional()),
        }
        .map_err(|e| UpstreamError::Refused(format!("bad tarball path: {e}")))?;
        if url.origin() != self.base.origin() {
            return Err(UpstreamError::Refused(format!(
                "tarball URL {url} is not on the upstream"
            )));
        }
        Ok(url)
    }

    async fn start_tarball(
        &self,
        name: &PackageName,
        file: &str,
        dist_tarball: Option<&str>,
        deadline: Instant,
    ) -> Result<Download, UpstreamError> {
        let url = self.tarball_url(name, file, dist_tarball)?;
        let r = self
            .send(url.path(), deadline, 0, || {
                // The bytes as published: their integrity is what is checked and stored.
                self.http
                    .get(url.clone())
                    .header(header::ACCEPT_ENCODING, "identity")
            })
            .await?;
        let len = r.content_length();
        let body = r
            .bytes_stream()
            .map(|c| c.map_err(|e| UpstreamError::Body(error_chain(&e))))
            .boxed();
        Ok(Download { len, body })
    }

    async fn get_keys(&self) -> Result<Bytes, UpstreamError> {
        let url = self
            .base
            .join("-/npm/v1/keys")
            .map_err(|e| UpstreamError::Refused(e.to_string()))?;
        let deadline = Instant::now() + self.timeout;
        let r = self
            .send("signing keys", deadline, self.retries, || {
                self.http
                    .get(url.clone())
                    .header(header::ACCEPT_ENCODING, GZIP)
            })
            .await?;
        read_capped(r, 1 << 20, deadline, &self.metrics).await
    }

    async fn pass_on(&self, req: Forward) -> Result<Forwarded, UpstreamError> {
        let path = req.path_and_query.trim_start_matches('/');
        let url = self
            .base
            .join(path)
            .map_err(|e| UpstreamError::Refused(e.to_string()))?;
        if url.origin() != self.base.origin() {
            return Err(UpstreamError::Refused(
                "forward path leaves the upstream".into(),
            ));
        }
        let deadline = Instant::now() + self.timeout;
        Metrics::inc(&self.metrics.upstream_requests);
        let mut b = match req.method {
            ForwardMethod::Get => self.http.get(url),
            ForwardMethod::Post => self.http.post(url).body(req.body.clone()),
        };
        if let Some(ct) = &req.content_type {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        if let Some(ce) = &req.content_encoding {
            b = b.header(header::CONTENT_ENCODING, ce);
        }
        b = b.header(header::ACCEPT_ENCODING, GZIP);
        // No retries: audits are POSTs, and a search is cheap for npm to repeat.
        let timeout = self.timeout;
        let r = self
            .breaker
            .guard(|| async move {
                match tokio::time::timeout(timeout, b.timeout(timeout).send()).await {
                    Err(_) => Err(UpstreamError::Timeout(timeout)),
                    Ok(Err(e)) if e.is_timeout() => Err(UpstreamError::Timeout(timeout)),
                    Ok(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e))),
                    Ok(Ok(r)) if r.status().as_u16() >= 500 => Err(UpstreamError::Status {
                        status: r.status().as_u16(),
                        what: "a forwarded request".into(),
                    }),
                    Ok(Ok(r)) => Ok(r),
                }
            })
            .await?;
        let status = r.status().as_u16();
        let content_type = header_string(r.headers(), header::CONTENT_TYPE);
        let body = read_capped(r, 32 << 20, deadline, &self.metrics).await?;
        Ok(Forwarded {
            status,
            content_type,
            body,
        })
    }
}

impl Source for Client {
    fn base(&self) -> &Url {
        &self.base
    }

    fn budget(&self) -> Budget {
        Budget {
            timeout: self.timeout,
            retries: self.retries,
        }
    }

    fn packument<'a>(
        &'a self,
        name: &'a PackageName,
        etag: Option<&'a str>,
        last_modified: Option<&'a str>,
    ) -> BoxFuture<'a, Result<PackumentAnswer, UpstreamError>> {
        Box::pin(self.get_packument(name, etag, last_modified))
    }

    fn tarball<'a>(
        &'a self,
        name: &'a PackageName,
        file: &'a str,
        dist_tarball: Option<&'a str>,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Download, UpstreamError>> {
        Box::pin(self.start_tarball(name, file, dist_tarball, deadline))
    }

    fn keys(&self) -> BoxFuture<'_, Result<Bytes, UpstreamError>> {
        Box::pin(self.get_keys())
    }

    fn forward(&self, req: Forward) -> BoxFuture<'_, Result<Forwarded, UpstreamError>> {
        Box::pin(self.pass_on(req))
    }

    fn outage(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.breaker.opened())
    }

    fn health(&self) -> Option<UpstreamHealth> {
        Some(self.breaker.health())
    }

    fn answers_within(&self) -> Option<Duration> {
        self.breaker.answers_within()
    }

    fn feed<'a>(&'a self, url: &'a Url, cap: u64) -> BoxFuture<'a, Result<Bytes, UpstreamError>> {
        Box::pin(async move {
            let deadline = Instant::now() + self.timeout;
            let r = self
                .send(FEED, deadline, 0, || {
                    self.http
                        .get(url.clone())
                        .header(header::ACCEPT_ENCODING, GZIP)
                })
                .await?;
            read_capped(r, cap, deadline, &self.metrics).await
        })
    }
}

/// Follows up to 5 redirects, and only within the upstream's origin: the upstream is the only
/// host this node ever talks to.
fn same_origin_redirects(base: &Url) -> reqwest::redirect::Policy {
    let origin = base.origin();
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if attempt.url().origin() != origin {
            let to = attempt.url().to_string();
            attempt.error(format!("refusing a redirect off the upstream, to {to}"))
        } else {
            attempt.follow()
        }
    })
}

/// A small document's body, decoded and capped (see [`body::read`]).
async fn read_capped(
    r: reqwest::Response,
    cap: u64,
    deadline: Instant,
    metrics: &Metrics,
) -> Result<Bytes, UpstreamError> {
    body::read(r, cap, deadline, metrics, None)
        .await
        .map(|(bytes, _)| bytes)
}

fn header_string(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str) -> Client {
        let c = Config::new("/x", Some(Url::parse(base).unwrap()));
        Client::new(&c, Arc::default()).unwrap().unwrap()
    }

    #[test]
    fn tarball_urls_stay_on_the_upstream() {
        let u = upstream("http://10.0.0.1:4873/npm/");
        let name = PackageName::parse("@s/p").unwrap();
        // The path is kept, the host is replaced (R9: no SSRF through metadata).
        let url = u
            .tarball_url(
                &name,
                "p-1.0.0.tgz",
                Some("http://evil.example:1/npm/@s/p/-/p-1.0.0.tgz"),
            )
            .unwrap();
        assert_eq!(url.as_str(), "http://10.0.0.1:4873/npm/@s/p/-/p-1.0.0.tgz");
        let url = u.tarball_url(&name, "p-1.0.0.tgz", None).unwrap();
        assert_eq!(url.as_str(), "http://10.0.0.1:4873/npm/@s/p/-/p-1.0.0.tgz");
        let url = u
            .tarball_url(&name, "p-1.0.0.tgz", Some("//evil.example/x.tgz"))
            .unwrap();
        assert_eq!(url.host_str(), Some("10.0.0.1"));
        let url = u
            .tarball_url(&name, "p-1.0.0.tgz", Some("http://h/../../x/-/p-1.0.0.tgz"))
            .unwrap();
        assert_eq!(url.host_str(), Some("10.0.0.1"));
    }
}

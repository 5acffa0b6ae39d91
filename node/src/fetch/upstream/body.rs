//! Reading a document body from the upstream: its content coding decoded here, its *decoded*
//! size capped, and — for packuments — held within the node's packument memory ([`MemoryBudget`]).
//!
//! A packument body is read into memory only as far as a lease of the budget covers it. The
//! lease is taken before the first byte (the exact size when the upstream announced an
//! uncompressed length, else a first slice) and grown without waiting as the body comes in.
//! When it cannot grow, the body *spills*: what was read goes to an unnamed temporary file in
//! the store's `tmp` directory, the lease is given back, and the rest streams to the file. Once
//! the body is complete its size is known; the reader then waits for a lease of exactly that
//! size (holding nothing meanwhile) and reads the file back once. So no request waits for
//! memory while holding some, and no packument is held in memory without its lease.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;

use bytes::Bytes;
use futures::StreamExt as _;
use open_registry_gateway::{Lease, MemoryBudget};
use reqwest::header::{self, HeaderMap};
use tokio::time::Instant;

use super::UpstreamError;
use crate::errors::chain as error_chain;
use crate::metrics::Metrics;

/// What a body read first leases when the upstream did not say how long it is.
const FIRST_SLICE: u64 = 1 << 20;

/// The node's packument memory: its budget, and where bodies that outgrow it spill.
#[derive(Debug, Clone)]
pub(crate) struct Memory {
    /// Bytes of packuments held at once.
    pub(crate) budget: MemoryBudget,
    /// A directory for unnamed temporary files (the store's `tmp`, emptied at start).
    pub(crate) spill: PathBuf,
}

/// The content coding of a response: `true` for gzip; any other coding is refused.
fn is_gzip(h: &HeaderMap) -> Result<bool, UpstreamError> {
    let coding = h
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity");
    match coding.as_deref() {
        None => Ok(false),
        Some("gzip" | "x-gzip") => Ok(true),
        Some(other) => Err(UpstreamError::Body(format!(
            "unsupported Content-Encoding {other:?} (only gzip was accepted)"
        ))),
    }
}

/// Reads `r`'s body, decoded, refusing more than `cap` bytes, within `deadline`. With `memory`,
/// the body is held within its budget (see the module docs) and returned with its lease;
/// without, in memory whatever its size (small documents: keys, feed pages, forwarded answers).
pub(crate) async fn read(
    r: reqwest::Response,
    cap: u64,
    deadline: Instant,
    metrics: &Metrics,
    memory: Option<&Memory>,
) -> Result<(Bytes, Lease), UpstreamError> {
    let gzip = is_gzip(r.headers())?;
    // The decoded body is what is capped; the compressed one is held too, so it gets the same
    // cap (a document that does not compress below its own size has no reason to be gzip).
    if r.content_length().is_some_and(|n| n > cap) {
        return Err(UpstreamError::TooLarge(cap));
    }
    let announced = r.content_length().filter(|_| !gzip);
    let mut sink = Sink {
        mem: Vec::new(),
        lease: Lease::none(),
        memory: memory.cloned(),
        file: None,
        len: 0,
        cap,
    };
    match memory {
        // Announced bigger than the whole budget: straight to disk.
        Some(m) if announced.is_some_and(|n| n > m.budget.capacity()) => {
            sink.spill(&[])
                .map_err(|e| UpstreamError::Body(format!("spill file: {e}")))?;
        }
        Some(m) => {
            sink.lease = m.budget.lease(announced.unwrap_or(FIRST_SLICE)).await;
            sink.mem = Vec::with_capacity(announced.unwrap_or(0).min(cap) as usize);
        }
        None => sink.mem = Vec::with_capacity(announced.unwrap_or(0).min(cap) as usize),
    }
    let mut out = if gzip {
        Out::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink)))
    } else {
        Out::Plain(sink)
    };
    let mut body = r.bytes_stream();
    loop {
        let next = tokio::time::timeout_at(deadline, body.next())
            .await
            .map_err(|_| UpstreamError::Timeout(std::time::Duration::ZERO))?;
        match next {
            None => break,
            Some(Ok(chunk)) => {
                Metrics::add(&metrics.upstream_bytes, chunk.len() as u64);
                out.write(&chunk, cap)?;
            }
            Some(Err(e)) => return Err(UpstreamError::Body(error_chain(&e))),
        }
    }
    let sink = out.finish(cap)?;
    if sink.file.is_some() {
        Metrics::inc(&metrics.packument_spills);
    }
    sink.into_bytes().await
}

/// The decoder in front of the sink, if the body is gzip.
enum Out {
    Plain(Sink),
    Gzip(Box<flate2::write::MultiGzDecoder<Sink>>),
}

impl Out {
    fn write(&mut self, chunk: &[u8], cap: u64) -> Result<(), UpstreamError> {
        match self {
            Out::Plain(s) => s.write_all(chunk).map_err(|e| body_error(e, cap, false)),
            Out::Gzip(d) => d.write_all(chunk).map_err(|e| body_error(e, cap, true)),
        }
    }

    fn finish(self, cap: u64) -> Result<Sink, UpstreamError> {
        match self {
            Out::Plain(s) => Ok(s),
            Out::Gzip(mut d) => {
                d.flush().map_err(|e| body_error(e, cap, true))?;
                (*d).finish().map_err(|e| body_error(e, cap, true))
            }
        }
    }
}

/// Over the cap, a disk failure while spilling, or (for gzip) a corrupt stream.
fn body_error(e: std::io::Error, cap: u64, gzip: bool) -> UpstreamError {
    match e.kind() {
        std::io::ErrorKind::FileTooLarge => UpstreamError::TooLarge(cap),
        std::io::ErrorKind::Other if e.get_ref().is_some_and(|i| i.is::<SpillError>()) => {
            UpstreamError::Body(format!("spilling the body to disk: {e}"))
        }
        _ if gzip => UpstreamError::Body(format!("bad gzip body: {e}")),
        _ => UpstreamError::Body(e.to_string()),
    }
}

/// Marks an I/O error of the spill file (as opposed to a decoding error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SpillError(std::io::Error);

fn spill_error(e: std::io::Error) -> std::io::Error {
    std::io::Error::other(SpillError(e))
}

/// Where the decoded body goes: memory as far as the lease reaches, then a spill file.
struct Sink {
    mem: Vec<u8>,
    lease: Lease,
    memory: Option<Memory>,
    file: Option<std::fs::File>,
    len: u64,
    cap: u64,
}

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.len + b.len() as u64 > self.cap {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "decoded body over the cap",
            ));
        }
        self.len += b.len() as u64;
        if let Some(f) = &mut self.file {
            f.write_all(b).map_err(spill_error)?;
            return Ok(b.len());
        }
        if let Some(m) = &self.memory {
            let need = (self.mem.len() + b.len()) as u64;
            if need > self.lease.bytes() {
                // Grow by doubling, so that a body is not re-leased for every chunk.
                let want = need.max(2 * self.lease.bytes()) - self.lease.bytes();
                if m.budget.try_grow(&mut self.lease, want) {
                    self.mem
                        .reserve_exact(self.lease.bytes() as usize - self.mem.len());
                } else {
                    self.spill(b).map_err(spill_error)?;
                    return Ok(b.len());
                }
            }
        }
        self.mem.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    /// Moves what is in memory, then `b`, to a new spill file, and gives the lease back.
    fn spill(&mut self, b: &[u8]) -> std::io::Result<()> {
        let dir = self
            .memory
            .as_ref()
            .map(|m| m.spill.clone())
            .unwrap_or_else(std::env::temp_dir);
        let mut f = tempfile::tempfile_in(&dir)?;
        f.write_all(&self.mem)?;
        f.write_all(b)?;
        self.mem = Vec::new();
        self.lease = Lease::none();
        self.file = Some(f);
        Ok(())
    }

    /// The whole body, with the lease that covers it.
    async fn into_bytes(self) -> Result<(Bytes, Lease), UpstreamError> {
        let Some(mut f) = self.file else {
            return Ok((Bytes::from(self.mem), self.lease));
        };
        let budget = self
            .memory
            .map(|m| m.budget)
            .expect("only a body with a budget spills");
        // Holding nothing, wait for exactly what the body needs, then read it back once.
        let lease = budget.lease(self.len).await;
        let len = self.len as usize;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(len);
            f.seek(SeekFrom::Start(0))?;
            f.read_to_end(&mut buf)?;
            Ok::<_, std::io::Error>(buf)
        })
        .await
        .map_err(|_| UpstreamError::Body("reading the spilled body panicked".into()))?
        .map_err(|e| UpstreamError::Body(format!("reading the spilled body back: {e}")))?;
        Ok((Bytes::from(bytes), lease))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use axum::http::header::CONTENT_ENCODING;
    use axum::routing::get;

    use super::*;

    /// A JSON-ish document of `n` bytes that compresses like a packument.
    fn doc(n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0u64;
        while v.len() < n {
            v.extend_from_slice(format!("\"{i}\":\"v{}\",", i * 7919 % 10007).as_bytes());
            i += 1;
        }
        v.truncate(n);
        v
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    /// Serves `/plain` (identity, with its length) and `/gz` (gzip) of `body` on loopback.
    async fn serve(body: Vec<u8>) -> String {
        let gz = gzip(&body);
        let app = axum::Router::new()
            .route("/plain", get(move || async move { body }))
            .route(
                "/gz",
                get(move || async move { ([(CONTENT_ENCODING, "gzip")], gz) }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        format!("http://{addr}")
    }

    async fn get_body(
        url: &str,
        cap: u64,
        metrics: &Metrics,
        memory: Option<&Memory>,
    ) -> Result<(Bytes, Lease), UpstreamError> {
        let http = reqwest::Client::builder().no_gzip().build().unwrap();
        let r = http.get(url).send().await.unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        read(r, cap, deadline, metrics, memory).await
    }

    #[tokio::test]
    async fn bodies_beyond_their_share_spill_to_disk_and_come_back_whole() {
        let body = doc(3 << 20);
        let base = serve(body.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let memory = Memory {
            budget: MemoryBudget::new(1 << 20),
            spill: dir.path().to_owned(),
        };
        for path in ["/plain", "/gz"] {
            let metrics = Metrics::default();
            let (bytes, lease) =
                get_body(&format!("{base}{path}"), 8 << 20, &metrics, Some(&memory))
                    .await
                    .unwrap();
            assert!(bytes == body, "{path}: the body came back altered");
            // Bigger than the whole budget: it holds all of it, and no more.
            assert_eq!(lease.bytes(), 1 << 20, "{path}");
            assert_eq!(
                memory.budget.oversized(),
                if path == "/plain" { 1 } else { 2 }
            );
            assert_eq!(
                metrics
                    .packument_spills
                    .load(std::sync::atomic::Ordering::Relaxed),
                1
            );
            drop(lease);
            assert_eq!(memory.budget.in_use(), 0);
        }
        // Unnamed files: nothing is left behind in the spill directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn bodies_within_their_share_stay_in_memory_and_the_cap_is_on_decoded_bytes() {
        let body = doc(300 << 10);
        let base = serve(body.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let memory = Memory {
            budget: MemoryBudget::new(4 << 20),
            spill: dir.path().to_owned(),
        };
        let metrics = Metrics::default();
        for path in ["/plain", "/gz"] {
            let (bytes, lease) =
                get_body(&format!("{base}{path}"), 1 << 20, &metrics, Some(&memory))
                    .await
                    .unwrap();
            assert!(bytes == body);
            assert!(
                lease.bytes() >= body.len() as u64 && lease.bytes() <= 2 << 20,
                "{lease:?}"
            );
        }
        assert_eq!(
            metrics
                .packument_spills
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        // 300 KiB decoded over a 100 KiB cap: refused, whatever the wire size.
        for path in ["/plain", "/gz"] {
            let e = get_body(&format!("{base}{path}"), 100 << 10, &metrics, Some(&memory))
                .await
                .unwrap_err();
            assert!(matches!(e, UpstreamError::TooLarge(_)), "{path}: {e}");
        }
        assert_eq!(
            memory.budget.in_use(),
            0,
            "a refused body gives its lease back"
        );
    }
}

//! Small helpers the node's end-to-end tests share: reading `{"error": "..."}` answers, firing
//! many concurrent requests, polling with a deadline.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use serde_json::Value;

use crate::http;

/// The `error` message of a JSON error answer; an error if the body is not JSON with a non-empty
/// string `error` (the shape npm prints).
pub fn error_message(r: &http::Response) -> Result<String> {
    let v: Value = serde_json::from_slice(&r.body)
        .with_context(|| format!("{} answer is not JSON: {:?}", r.status, r.text()))?;
    match v["error"].as_str() {
        Some(m) if !m.trim().is_empty() => Ok(m.to_owned()),
        _ => bail!("{} answer has no \"error\" message: {}", r.status, r.text()),
    }
}

/// The body as JSON.
pub fn json(r: &http::Response) -> Result<Value> {
    serde_json::from_slice(&r.body)
        .with_context(|| format!("{} answer is not JSON: {:?}", r.status, r.text()))
}

/// A multi-threaded tokio runtime for a synchronous test that needs concurrency.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

/// A reqwest client for concurrent test traffic: no pooling limits worth hitting, a deadline
/// on every request, and no transparent decompression (bodies are compared byte for byte).
pub fn client(timeout: Duration) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .no_gzip()
        .build()
        .context("building a reqwest client")
}

/// One answer of [`get_all`]: status and body, or the transport error.
pub type Answer = std::result::Result<(u16, Bytes), String>;

/// Sends every `(url, headers)` request at once, each from its own task, and returns the
/// answers in the same order.
pub async fn get_all(
    client: &reqwest::Client,
    requests: Vec<(String, Vec<(String, String)>)>,
) -> Vec<Answer> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(url, headers)| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut req = client.get(&url);
                for (k, v) in &headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let resp = req.send().await.map_err(|e| format!("{url}: {e:#}"))?;
                let status = resp.status().as_u16();
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| format!("{url}: body: {e:#}"))?;
                Ok((status, body))
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(format!("task failed: {e}"))));
    }
    out
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(anyhow!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `f` and returns its output with how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let v = f();
    (v, start.elapsed())
}

/// Async [`timed`].
pub async fn timed_async<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let v = f.await;
    (v, start.elapsed())
}

//! HTTP load: `wrk -t1 -cN --latency` when installed (docs/benchmarks.md's generator), else a
//! built-in generator with the same shape (one thread, N keep-alive connections, a fixed duration,
//! a per-request timeout of 2 s like wrk's default), so the smoke runs work on machines without
//! wrk. Both report requests per second, latency percentiles and errors.

use std::net::SocketAddr;
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::sys;

/// npm's Accept header for installs (abbreviated documents preferred).
pub(crate) const NPM_ACCEPT: &str =
    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

/// Which load generator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadGen {
    /// wrk when installed, else built in.
    Auto,
    Wrk,
    Builtin,
}

impl FromStr for LoadGen {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(LoadGen::Auto),
            "wrk" => Ok(LoadGen::Wrk),
            "builtin" => Ok(LoadGen::Builtin),
            _ => bail!("--loadgen is auto, wrk or builtin, not {s}"),
        }
    }
}

impl LoadGen {
    /// The generator that will actually run.
    pub(crate) fn resolve(self) -> Result<LoadGen> {
        let wrk = sys::which("wrk").is_some();
        match self {
            LoadGen::Auto if wrk => Ok(LoadGen::Wrk),
            LoadGen::Auto => Ok(LoadGen::Builtin),
            LoadGen::Wrk if !wrk => bail!("--loadgen wrk, but wrk is not installed"),
            g => Ok(g),
        }
    }
}

/// One load run.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
}

/// What a load run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// Completed requests per second (any status).
    pub(crate) rps: f64,
    pub(crate) requests: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Non-2xx/3xx answers.
    pub(crate) non_2xx: u64,
    /// Connect, read and write errors.
    pub(crate) errors: u64,
    /// Requests not answered within the timeout.
    pub(crate) timeouts: u64,
}

impl Outcome {
    /// `12 timeouts, 3 errors`, or empty.
    pub(crate) fn problems(&self) -> String {
        let mut p = Vec::new();
        if self.timeouts > 0 {
            p.push(format!("{} timeouts", self.timeouts));
        }
        if self.errors > 0 {
            p.push(format!("{} socket errors", self.errors));
        }
        if self.non_2xx > 0 {
            p.push(format!("{} non-2xx", self.non_2xx));
        }
        p.join(", ")
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "rps": self.rps, "requests": self.requests, "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms, "max_ms": self.max_ms, "non_2xx": self.non_2xx,
            "errors": self.errors, "timeouts": self.timeouts,
        })
    }
}

/// Runs `spec` with `lg` (already resolved).
pub(crate) fn run(lg: LoadGen, spec: &Spec) -> Result<Outcome> {
    match lg {
        LoadGen::Wrk => wrk(spec),
        _ => builtin(spec),
    }
}

fn wrk(spec: &Spec) -> Result<Outcome> {
    let mut cmd = Command::new("wrk");
    cmd.arg("-t1")
        .arg(format!("-c{}", spec.connections))
        .arg(format!(
            "-d{}s",
            spec.duration.as_secs_f64().ceil().max(1.0)
        ))
        .args(["--latency", "--timeout", "2s"]);
    for (k, v) in &spec.headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(&spec.url);
    let out = cmd.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("parsing wrk's output:\n{text}"))
}

/// Parses `wrk --latency` output.
pub(crate) fn parse_wrk(text: &str) -> Result<Outcome> {
    let mut o = Outcome::default();
    let mut max_seen = false;
    for line in text.lines() {
        let t = line.trim();
        let words: Vec<&str> = t.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => o.rps = v.parse()?,
            ["50%", v] => o.p50_ms = parse_duration_ms(v)?,
            ["99%", v] => o.p99_ms = parse_duration_ms(v)?,
            ["Latency", _avg, _stdev, max, ..] if !max_seen => {
                o.max_ms = parse_duration_ms(max)?;
                max_seen = true;
            }
            [n, "requests", "in", ..] => o.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => o.non_2xx = n.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                let joined = rest.join(" ");
                for part in joined.split(',') {
                    let kv: Vec<&str> = part.split_whitespace().collect();
                    if let [k, v] = kv.as_slice() {
                        let n: u64 = v.parse()?;
                        if *k == "timeout" {
                            o.timeouts += n;
                        } else {
                            o.errors += n;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if !text.contains("Requests/sec:") {
        bail!("no Requests/sec line");
    }
    if o.requests == 0 {
        // wrk prints latency statistics of nothing as 0; make that visible.
        o.p50_ms = f64::NAN;
        o.p99_ms = f64::NAN;
        o.max_ms = f64::NAN;
    }
    Ok(o)
}

/// `812.00us`, `3.45ms`, `1.20s`, `2.00m` → milliseconds.
fn parse_duration_ms(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| anyhow!("no unit in {s:?}"))?;
    let (num, unit) = s.split_at(split);
    let x: f64 = num.parse().with_context(|| format!("number in {s:?}"))?;
    Ok(match unit {
        "us" => x / 1000.0,
        "ms" => x,
        "s" => x * 1000.0,
        "m" => x * 60_000.0,
        "h" => x * 3_600_000.0,
        _ => bail!("unit {unit:?} in {s:?}"),
    })
}

/// The built-in generator: one runtime thread, `connections` keep-alive connections.
fn builtin(spec: &Spec) -> Result<Outcome> {
    let (addr, host, path) = split_url(&spec.url)?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in &spec.headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let req: Arc<[u8]> = Arc::from(req.into_bytes());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let duration = spec.duration;
    let conns = spec.connections;
    let per_conn: Vec<ConnStats> = rt.block_on(async move {
        let deadline = tokio::time::Instant::now() + duration;
        let tasks: Vec<_> = (0..conns)
            .map(|_| tokio::spawn(conn_loop(addr, req.clone(), deadline)))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(s) = t.await {
                out.push(s);
            }
        }
        out
    });
    let mut lat: Vec<u32> = Vec::new();
    let mut o = Outcome::default();
    for s in per_conn {
        lat.extend(s.latencies_us);
        o.non_2xx += s.non_2xx;
        o.errors += s.errors;
        o.timeouts += s.timeouts;
    }
    lat.sort_unstable();
    o.requests = lat.len() as u64;
    o.rps = lat.len() as f64 / duration.as_secs_f64();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    o.p50_ms = pct(0.50);
    o.p99_ms = pct(0.99);
    o.max_ms = pct(1.0);
    Ok(o)
}

/// `http://127.0.0.1:PORT/path` → (address, `127.0.0.1:PORT`, `/path`).
pub(crate) fn split_url(url: &str) -> Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("only http:// URLs: {url}"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("{host} is not IP:PORT"))?;
    Ok((addr, host.to_owned(), path.to_owned()))
}

#[derive(Debug, Default)]
struct ConnStats {
    latencies_us: Vec<u32>,
    non_2xx: u64,
    errors: u64,
    timeouts: u64,
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

async fn conn_loop(addr: SocketAddr, req: Arc<[u8]>, deadline: tokio::time::Instant) -> ConnStats {
    let mut st = ConnStats::default();
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(64 << 10);
    let mut scratch = vec![0u8; 64 << 10];
    while tokio::time::Instant::now() < deadline {
        let s = match stream.as_mut() {
            Some(s) => s,
            None => match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream.insert(s)
                }
                Err(_) => {
                    st.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let t0 = Instant::now();
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange(s, &req, &mut buf, &mut scratch)).await
        {
            Ok(Ok((status, keep_alive))) => {
                st.latencies_us
                    .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                if !(200..400).contains(&status) {
                    st.non_2xx += 1;
                }
                if !keep_alive {
                    stream = None;
                }
            }
            Ok(Err(_)) => {
                st.errors += 1;
                stream = None;
            }
            // A request cut by the end of the run is not a timeout.
            Err(_) if left < REQUEST_TIMEOUT => break,
            Err(_) => {
                st.timeouts += 1;
                stream = None;
            }
        }
    }
    st
}

/// Sends one request and reads one whole response; returns (status, keep-alive).
async fn exchange(
    s: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
    scratch: &mut [u8],
) -> Result<(u16, bool)> {
    s.write_all(req).await?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(s, buf, scratch).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("header bytes")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line"))?;
    let (mut len, mut chunked, mut close) = (None, false, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            len = Some(v.parse::<usize>()?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    if chunked {
        let mut pos = head_end;
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[pos..], b"\r\n") {
                    break pos + i;
                }
                read_more(s, buf, scratch).await?;
            };
            let size_str = std::str::from_utf8(&buf[pos..line_end])?;
            let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)?;
            pos = line_end + 2;
            if size == 0 {
                // Trailers (normally none), then the final CRLF.
                while find(&buf[pos..], b"\r\n").is_none() {
                    read_more(s, buf, scratch).await?;
                }
                break;
            }
            while buf.len() < pos + size + 2 {
                read_more(s, buf, scratch).await?;
            }
            pos += size + 2;
            // Keep the buffer small for big bodies.
            buf.drain(..pos);
            pos = 0;
        }
    } else if let Some(len) = len {
        let mut have = buf.len() - head_end;
        buf.clear();
        while have < len {
            let n = s.read(scratch).await?;
            if n == 0 {
                bail!("connection closed in the body");
            }
            have += n;
        }
    } else if status != 304 && status != 204 {
        // Body until close.
        while s.read(scratch).await? > 0 {}
        close = true;
    }
    Ok((status, !close))
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>, scratch: &mut [u8]) -> Result<()> {
    let n = s.read(scratch).await?;
    if n == 0 {
        bail!("connection closed");
    }
    buf.extend_from_slice(&scratch[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Latencies of `n` requests sent at once, each on its own connection (for cold-miss tests):
/// (status, milliseconds, body length) per request, in completion order.
pub(crate) fn burst(url: &str, n: usize, timeout: Duration) -> Result<Vec<(u16, f64, usize)>> {
    let (addr, host, path) = split_url(url)?;
    let req: Arc<[u8]> = Arc::from(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
            .into_bytes(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // Connect everything first, then send every request at once.
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let s = TcpStream::connect(addr).await.context("connecting")?;
            let _ = s.set_nodelay(true);
            streams.push(s);
        }
        let start = Arc::new(tokio::sync::Barrier::new(n));
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                let req = req.clone();
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    let t0 = Instant::now();
                    let r = tokio::time::timeout(timeout, async {
                        s.write_all(&req).await?;
                        let mut raw = Vec::new();
                        s.read_to_end(&mut raw).await?;
                        anyhow::Ok(raw)
                    })
                    .await;
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    match r {
                        Ok(Ok(raw)) => {
                            let end = find(&raw, b"\r\n\r\n").map_or(raw.len(), |i| i + 4);
                            let status = std::str::from_utf8(&raw[..end.min(raw.len())])
                                .ok()
                                .and_then(|h| h.split(' ').nth(1))
                                .and_then(|c| c.parse().ok())
                                .unwrap_or(0);
                            (status, ms, raw.len() - end)
                        }
                        _ => (0, ms, 0),
                    }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(n);
        for t in tasks {
            out.push(t.await.unwrap_or((0, f64::NAN, 0)));
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:8080/x
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.34us  120.00us   8.21ms   90.00%
    Req/Sec   120.00k     3.00k  125.00k    80.00%
  Latency Distribution
     50%  390.00us
     75%  450.00us
     90%  520.00us
     99%    1.02ms
  600000 requests in 5.00s, 800.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 7
  Non-2xx or 3xx responses: 3
Requests/sec: 119999.50
Transfer/sec:    160.00MB
";

    #[test]
    fn parses_wrk() {
        let o = parse_wrk(WRK).unwrap();
        assert_eq!(o.rps, 119_999.5);
        assert_eq!(o.requests, 600_000);
        assert!((o.p50_ms - 0.39).abs() < 1e-9);
        assert!((o.p99_ms - 1.02).abs() < 1e-9);
        assert!((o.max_ms - 8.21).abs() < 1e-9);
        assert_eq!((o.errors, o.timeouts, o.non_2xx), (2, 7, 3));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("1.50s").unwrap(), 1500.0);
        assert_eq!(parse_duration_ms("250.00us").unwrap(), 0.25);
        assert!(parse_duration_ms("12").is_err());
    }
}

//! The gateway over a real TCP socket on 127.0.0.1, spoken to by a hand-written HTTP/1.1
//! client: what hyper does to HEAD, Content-Length and raw paths is part of what is tested, and
//! so are [`crate::serve`]'s limits (duplicate Host, header-read timeout, connection caps).

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::Limits;

/// A gateway served by [`crate::serve`]; [`Server::shutdown`] ends it.
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(app: Router) -> Self {
        Self::start_with(app, Limits::default()).await
    }

    pub(super) async fn start_with(app: Router, limits: Limits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let task = tokio::spawn(crate::serve(listener, app, limits, stop.clone()));
        Self {
            addr,
            stop,
            task: Some(task),
        }
    }

    pub(super) async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("serve");
        }
    }
}

/// A raw response.
#[derive(Debug)]
pub(super) struct Raw {
    pub(super) status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request (`Connection: close`; `extra` is header lines, each ending in CRLF) and
/// reads the whole answer.
pub(super) async fn exchange(addr: SocketAddr, method: &str, target: &str, extra: &str) -> Raw {
    exchange_with_body(addr, method, target, extra, "").await
}

async fn exchange_with_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    extra: &str,
    body: &str,
) -> Raw {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n{body}"
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(raw[..split].to_vec()).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Raw {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

#[tokio::test]
async fn packuments_tarballs_and_head_over_tcp() {
    let (_, app) = gateway();
    let server = Server::start(app).await;
    let addr = server.addr;

    let gz = exchange(
        addr,
        "GET",
        "/@s%2fp",
        &format!("Accept: {NPM_ACCEPT}\r\nAccept-Encoding: gzip\r\n"),
    )
    .await;
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(
        gz.header("content-length"),
        Some(gz.body.len().to_string().as_str())
    );
    let mut doc = Vec::new();
    flate2::read::GzDecoder::new(&gz.body[..])
        .read_to_end(&mut doc)
        .expect("gunzip");
    let doc: serde_json::Value = serde_json::from_slice(&doc).expect("json");
    // The Host this client sent is the base the tarball URLs point at.
    assert_eq!(
        doc["versions"]["1.0.0"]["dist"]["tarball"],
        format!("http://{addr}/@s/p/-/p-1.0.0.tgz")
    );

    let head = exchange(
        addr,
        "HEAD",
        "/@s%2fp",
        &format!("Accept: {NPM_ACCEPT}\r\nAccept-Encoding: gzip\r\n"),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), gz.header("content-length"));
    assert!(head.body.is_empty());

    let tgz = exchange(
        addr,
        "GET",
        "/@s/p/-/p-1.0.0.tgz",
        "Accept-Encoding: gzip\r\n",
    )
    .await;
    assert_eq!(tgz.status, 200);
    assert_eq!(tgz.header("content-length"), Some("5000"));
    assert!(tgz.header("content-encoding").is_none());
    assert!(tgz.header("transfer-encoding").is_none());
    assert_eq!(tgz.body, vec![1u8; 5000]);

    let head = exchange(addr, "HEAD", "/@s/p/-/p-1.0.0.tgz", "").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("5000"));
    assert!(head.body.is_empty());

    let etag = tgz.header("etag").expect("etag");
    let cached = exchange(
        addr,
        "GET",
        "/@s/p/-/p-1.0.0.tgz",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());

    server.shutdown().await;
}

/// Paths reach the parser as sent: hyper does not normalize dot segments or decode.
#[tokio::test]
async fn raw_traversal_paths_over_tcp() {
    let (reg, app) = gateway();
    let server = Server::start(app).await;
    for target in [
        "/%2e%2e/x",
        "/..%2f..%2fetc%2fpasswd",
        "/a%00b",
        "/left-pad/-/..%5c..%5cx.tgz",
    ] {
        let r = exchange(server.addr, "GET", target, "").await;
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert!(v["error"].is_string(), "{target}");
    }
    let r = exchange_with_body(
        server.addr,
        "PUT",
        "/left-pad",
        "Content-Length: 2\r\n",
        "{}",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(reg.packument_calls(), 0);
    server.shutdown().await;
}

/// Two Host headers: 400 with a JSON error, whatever the route (R18's neighbour: a proxy and the
/// node could each read a different one).
#[tokio::test]
async fn two_host_headers_are_400() {
    let (_, app) = gateway();
    let server = Server::start(app).await;
    for target in ["/left-pad", "/-/ping"] {
        let r = exchange(server.addr, "GET", target, "Host: other.test\r\n").await;
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("Host")),
            "{v}"
        );
    }
    server.shutdown().await;
}

/// Reads until the peer closes (`Ok(bytes)`) or `within` passes (`Err`).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Result<Vec<u8>, ()> {
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .map_err(|_| ())?;
    Ok(got)
}

/// A half-sent request line is closed after the header-read timeout, and meanwhile others are
/// served.
#[tokio::test]
async fn half_sent_requests_are_closed_after_the_header_timeout() {
    let (_, app) = gateway();
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = Server::start_with(app, limits).await;
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /left-pad HT").await.expect("write");
    let started = Instant::now();
    let r = exchange(server.addr, "GET", "/-/ping", "").await;
    assert_eq!(r.status, 200);
    closed_within(&mut slow, Duration::from_secs(10))
        .await
        .expect("closed by the server");
    assert!(started.elapsed() >= Duration::from_millis(250));
    server.shutdown().await;
}

/// Over the per-address cap, new connections from that address are closed at once, unanswered,
/// while another address is served; closing one gives its slot back.
#[tokio::test]
async fn connections_over_the_per_address_cap_are_closed_at_once() {
    let (_, app) = gateway();
    let limits = Limits {
        max_connections_per_address: 2,
        ..Limits::default()
    };
    let server = Server::start_with(app, limits).await;
    let from = |ip: &str| {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(ip.parse().expect("ip"), 0))
            .expect("bind");
        socket.connect(server.addr)
    };
    let held_1 = from("127.0.0.2").await.expect("connect");
    let _held_2 = from("127.0.0.2").await.expect("connect");
    let mut over = from("127.0.0.2").await.expect("connect");
    // Whatever it sends, the third is closed without an answer.
    let _ = over
        .write_all(b"GET /-/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = closed_within(&mut over, Duration::from_secs(5))
        .await
        .expect("closed at once");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    // 127.0.0.1 is another address: served.
    assert_eq!(
        exchange(server.addr, "GET", "/-/ping", "").await.status,
        200
    );
    drop(held_1);
    // The freed slot is taken again once the server has seen the close (polled, not slept).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = from("127.0.0.2").await.expect("connect");
        again
            .write_all(b"GET /-/ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let got = closed_within(&mut again, Duration::from_secs(5))
            .await
            .expect("answered");
        if got.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::task::yield_now().await;
    }
    server.shutdown().await;
}

/// A keep-alive connection left idle after its answer is closed after the idle timeout, well
/// before the (longer) header-read timeout.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let (_, app) = gateway();
    let limits = Limits {
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = Server::start_with(app, limits).await;
    let mut conn = TcpStream::connect(server.addr).await.expect("connect");
    conn.write_all(b"GET /-/ping HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let got = closed_within(&mut conn, Duration::from_secs(10))
        .await
        .expect("closed by the server");
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    let idle = started.elapsed();
    assert!(idle >= Duration::from_millis(250), "closed after {idle:?}");
    server.shutdown().await;
}

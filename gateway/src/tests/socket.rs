//! The gateway over a real TCP socket on 127.0.0.1, spoken to by a hand-written HTTP/1.1
//! client: what hyper does to HEAD, Content-Length and raw paths is part of what is tested.

use std::io::Read as _;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

/// A served gateway; dropping `stop` ends it.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    async fn start(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("serve");
        }
    }
}

/// A raw response.
#[derive(Debug)]
struct Raw {
    status: u16,
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
async fn exchange(addr: SocketAddr, method: &str, target: &str, extra: &str) -> Raw {
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

//! The fake upstream's HTTP side: an accept loop that owns every connection, and the handler
//! that answers from [`Shared`] state and applies faults.
//!
//! The accept loop is hand-rolled over hyper (rather than `axum::serve`) because going down
//! must cut open connections too: `axum::serve` detaches connection tasks, so a keep-alive or
//! hanging connection would outlive the listener. Here connections live in a `JoinSet` that is
//! aborted when the server stops.

use std::{convert::Infallible, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header},
};
use bytes::Bytes;
use futures::{StreamExt, stream};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, runtime::Handle, sync::oneshot, task::JoinSet};

use super::{Fault, RequestRecord, Shared, normalize_path};

/// A running accept loop.
#[derive(Debug)]
pub(super) struct Server {
    stop: oneshot::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Server {
    /// Starts serving `listener` on `rt`.
    pub(super) fn start(
        rt: &Handle,
        listener: std::net::TcpListener,
        shared: Arc<Shared>,
    ) -> Result<Server> {
        listener.set_nonblocking(true)?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let listener = {
            let _guard = rt.enter();
            TcpListener::from_std(listener).context("registering the listener")?
        };
        rt.spawn(async move {
            accept_loop(listener, shared, stop_rx).await;
            let _ = done_tx.send(());
        });
        Ok(Server {
            stop: stop_tx,
            done: done_rx,
        })
    }

    /// Stops accepting, closes the port, aborts every connection, and waits for all of it.
    pub(super) fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.done.recv_timeout(Duration::from_secs(10));
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, shared.clone()));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(shared, req.map(Body::new)).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A response before faults are applied.
struct Reply {
    status: StatusCode,
    content_type: &'static str,
    headers: Vec<(header::HeaderName, String)>,
    body: Bytes,
}

impl Reply {
    fn json(status: StatusCode, v: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        }
    }

    fn not_found() -> Reply {
        Reply::json(StatusCode::NOT_FOUND, &json!({ "error": "Not found" }))
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Body>) -> Response<Body> {
    // The body is never read (audit requests are answered from canned JSON); dropping it here
    // keeps the future Send, as the body type is not Sync.
    let (req, _body) = req.into_parts();
    let raw = req
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let path = normalize_path(&raw);
    let header = |name: header::HeaderName| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let record = RequestRecord {
        method: req.method.to_string(),
        path: path.clone(),
        raw: raw.clone(),
        accept: header(header::ACCEPT),
        if_none_match: header(header::IF_NONE_MATCH),
        accept_encoding: header(header::ACCEPT_ENCODING),
    };
    let fault = {
        let mut st = shared.state();
        *st.hits.entry(path.clone()).or_default() += 1;
        st.log.push(record);
        st.take_fault(&path)
    };
    if let Some(Fault::Delay(d)) = fault {
        tokio::time::sleep(d).await;
    }
    if fault == Some(Fault::Hang) {
        // Cancelled when the connection is cut (client gone, `down()`, shutdown).
        std::future::pending::<()>().await;
    }
    let query = raw
        .split_once('?')
        .map(|(_, q)| q.to_owned())
        .unwrap_or_default();
    let reply = route(&shared, &req.method, &path, &query, &req.headers);
    respond(reply, fault)
}

fn route(shared: &Shared, method: &Method, path: &str, query: &str, headers: &HeaderMap) -> Reply {
    let lacks = |p: &str| {
        shared.options.no_search_or_audit
            && matches!(
                p,
                "/-/v1/search"
                    | "/-/npm/v1/security/advisories/bulk"
                    | "/-/npm/v1/security/audits/quick"
            )
    };
    match (method.as_str(), path) {
        (_, p) if lacks(p) => Reply::not_found(),
        ("GET", "/-/ping") => Reply::json(StatusCode::OK, &json!({})),
        ("GET", "/-/npm/v1/keys") => match &shared.key {
            Some(k) => Reply::json(
                StatusCode::OK,
                &crate::npmsig::keys_document(std::slice::from_ref(k)),
            ),
            None => Reply::not_found(),
        },
        ("GET", "/-/v1/search") => search(shared, query),
        ("POST", "/-/npm/v1/security/advisories/bulk") => {
            let body = shared.state().advisories.clone();
            Reply::json(StatusCode::OK, &body.unwrap_or_else(|| json!({})))
        }
        ("POST", "/-/npm/v1/security/audits/quick") => {
            let body = shared.state().audit.clone();
            Reply::json(StatusCode::OK, &body.unwrap_or_else(clean_audit))
        }
        ("GET", "/_changes") => changes(shared, query),
        ("GET", _) | ("HEAD", _) => package_route(shared, path, headers),
        _ => Reply::json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({ "error": "the fake upstream is read-only" }),
        ),
    }
}

/// `/<name>`, `/<name>/<version-or-tag>`, `/<name>/-/<file>`; names may be scoped.
fn package_route(shared: &Shared, path: &str, headers: &HeaderMap) -> Reply {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let name_len = if segs[0].starts_with('@') { 2 } else { 1 };
    if segs.len() < name_len || segs.iter().any(|s| s.is_empty()) {
        return Reply::not_found();
    }
    let name = segs[..name_len].join("/");
    let rest = &segs[name_len..];
    let st = shared.state();
    let Some(pkg) = st.packages.get(&name) else {
        return Reply::not_found();
    };
    match rest {
        [] => {
            let wants_abbrev = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/vnd.npm.install-v1+json"));
            let abbreviate = shared.options.abbreviated && wants_abbrev;
            let (body, content_type) = match &pkg.raw {
                // Given bytes go out as they are (a cheap clone; the lock is released at once).
                Some(raw) if !abbreviate => (raw.clone(), "application/json"),
                _ => {
                    let full = pkg.document(&name);
                    let (doc, content_type) = if abbreviate {
                        (
                            open_registry_protocol::packument::abbreviate(&full),
                            "application/vnd.npm.install-v1+json",
                        )
                    } else {
                        (full, "application/json")
                    };
                    (
                        Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()),
                        content_type,
                    )
                }
            };
            drop(st);
            let mut reply = Reply {
                status: StatusCode::OK,
                content_type,
                headers: vec![
                    (header::CACHE_CONTROL, "public, max-age=300".into()),
                    (header::VARY, "Accept, Accept-Encoding".into()),
                ],
                body,
            };
            if !shared.options.no_validators {
                let etag = format!("\"{}\"", hex::encode(&Sha256::digest(&reply.body)[..16]));
                let matches = headers
                    .get(header::IF_NONE_MATCH)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|inm| {
                        inm.split(',')
                            .any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*")
                    });
                if matches {
                    reply.status = StatusCode::NOT_MODIFIED;
                    reply.body = Bytes::new();
                }
                reply.headers.insert(0, (header::ETAG, etag));
            }
            reply
        }
        ["-", file] => match pkg.tarballs.get(*file) {
            Some(bytes) => Reply {
                status: StatusCode::OK,
                content_type: "application/octet-stream",
                headers: Vec::new(),
                body: bytes.clone(),
            },
            None => Reply::not_found(),
        },
        [spec] if pkg.raw.is_some() => {
            let doc = pkg.document(&name);
            let version = doc["dist-tags"][*spec].as_str().unwrap_or(spec);
            match doc["versions"].get(version) {
                Some(m) => Reply::json(StatusCode::OK, m),
                None => Reply::not_found(),
            }
        }
        [spec] => {
            let version = pkg.dist_tags.get(*spec).map(String::as_str).unwrap_or(spec);
            match pkg.versions.get(version) {
                Some(m) => Reply::json(StatusCode::OK, m),
                None => Reply::not_found(),
            }
        }
        _ => Reply::not_found(),
    }
}

/// `GET /-/v1/search?text=…&size=…`: packages whose name or description contains the text.
fn search(shared: &Shared, query: &str) -> Reply {
    let mut text = String::new();
    let mut size = 20usize;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("text", v)) => text = percent_decode(&v.replace('+', " ")),
            Some(("size", v)) => size = v.parse().unwrap_or(20),
            _ => {}
        }
    }
    let st = shared.state();
    let objects: Vec<Value> = st
        .packages
        .iter()
        .filter_map(|(name, pkg)| {
            let latest = pkg.dist_tags.get("latest")?;
            let m = pkg.versions.get(latest)?;
            let desc = m["description"].as_str().unwrap_or_default();
            (name.contains(&text) || desc.contains(&text)).then(|| {
                json!({
                    "package": {
                        "name": name,
                        "version": latest,
                        "description": desc,
                        "date": pkg.modified,
                        "links": {},
                    },
                    "score": {
                        "final": 1.0,
                        "detail": { "quality": 1.0, "popularity": 1.0, "maintenance": 1.0 },
                    },
                    "searchScore": 1.0,
                })
            })
        })
        .take(size)
        .collect();
    Reply::json(
        StatusCode::OK,
        &json!({ "objects": objects, "total": objects.len(), "time": super::iso_now() }),
    )
}

/// Decodes `%XX` escapes (invalid ones are kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /_changes?since=N|now[&limit=M]`, CouchDB style.
fn changes(shared: &Shared, query: &str) -> Reply {
    let mut since = 0u64;
    let mut limit = usize::MAX;
    for pair in query.split('&') {
        match pair.split_once('=') {
            // CouchDB's `since=now`: nothing old, just the current sequence.
            Some(("since", "now")) => since = shared.state().seq,
            Some(("since", v)) => since = v.parse().unwrap_or(0),
            Some(("limit", v)) => limit = v.parse().unwrap_or(usize::MAX),
            _ => {}
        }
    }
    let st = shared.state();
    let results: Vec<Value> = st
        .changes
        .iter()
        .filter(|(seq, _)| *seq > since)
        .take(limit)
        .map(
            |(seq, id)| json!({ "seq": seq, "id": id, "changes": [{ "rev": format!("{seq}-x") }] }),
        )
        .collect();
    // CouchDB: the seq of the last result, or the current seq when nothing is newer.
    let last_seq = results
        .last()
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or(st.seq.max(since));
    Reply::json(
        StatusCode::OK,
        &json!({ "results": results, "last_seq": last_seq }),
    )
}

/// npm's answer to `audits/quick` when nothing is vulnerable.
fn clean_audit() -> Value {
    json!({
        "actions": [],
        "advisories": {},
        "muted": [],
        "metadata": {
            "vulnerabilities": { "info": 0, "low": 0, "moderate": 0, "high": 0, "critical": 0 },
            "dependencies": 0,
            "devDependencies": 0,
            "optionalDependencies": 0,
            "totalDependencies": 0,
        },
    })
}

/// Turns a reply into a response, broken as `fault` says.
fn respond(reply: Reply, fault: Option<Fault>) -> Response<Body> {
    let mut status = reply.status;
    let mut body = reply.body;
    let mut truncate = false;
    match fault {
        Some(Fault::Status(code)) => {
            status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            body = Bytes::from(
                json!({ "error": format!("injected fault: status {code}") }).to_string(),
            );
        }
        Some(Fault::EmptyBody) => {
            status = StatusCode::OK;
            body = Bytes::new();
        }
        Some(Fault::FlipByte) if !body.is_empty() => {
            let mut v = body.to_vec();
            let i = v.len() / 2;
            v[i] ^= 0x01;
            body = Bytes::from(v);
        }
        Some(Fault::Truncate) => truncate = true,
        Some(Fault::Gzip { pad }) => body = gzip(&body, pad),
        Some(Fault::DuplicateVersions) if body.ends_with(b"}") => {
            let mut v = body[..body.len() - 1].to_vec();
            v.extend_from_slice(br#","versions":{}}"#);
            body = Bytes::from(v);
        }
        _ => {}
    }
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, reply.content_type);
    if matches!(fault, Some(Fault::Gzip { .. } | Fault::LabelGzip)) {
        builder = builder.header(header::CONTENT_ENCODING, "gzip");
    }
    if status != StatusCode::NOT_MODIFIED {
        builder = builder.header(header::CONTENT_LENGTH, body.len());
    }
    for (k, v) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            builder = builder.header(k, v);
        }
    }
    let body = if truncate {
        // The announced length stays the full one; the stream fails halfway, which makes hyper
        // close the connection without completing the body.
        // The pause lets hyper flush the headers and the half before the error aborts the
        // connection; without it the client may see no response at all.
        let half = body.slice(..body.len() / 2);
        let cut = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<Bytes, _>(std::io::Error::other("injected fault: truncated body"))
        };
        Body::from_stream(stream::once(async { Ok(half) }).chain(stream::once(cut)))
    } else {
        Body::from(body)
    };
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::from("bad injected response")))
}

/// `body` followed by `pad` spaces, gzip-compressed (the padding costs next to nothing).
fn gzip(body: &[u8], pad: usize) -> Bytes {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let spaces = [b' '; 64 << 10];
    let written = enc.write_all(body).and_then(|()| {
        let mut left = pad;
        while left > 0 {
            let n = left.min(spaces.len());
            enc.write_all(&spaces[..n])?;
            left -= n;
        }
        Ok(())
    });
    match written.and_then(|()| enc.finish()) {
        Ok(v) => Bytes::from(v),
        Err(_) => Bytes::from_static(b"gzip failed"),
    }
}

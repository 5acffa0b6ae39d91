//! The access log: one line per request, written by `serve`, with the fields operators read;
//! and `Limits::access_log = false` writes none.

use std::io;
use std::sync::{Arc, Mutex};

use super::socket::{Server, exchange};
use super::*;
use crate::Limits;
use crate::access::TARGET;

/// A log writer into memory.
#[derive(Debug, Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self, target: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .filter(|l| l.contains(target))
            .map(str::to_owned)
            .collect()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Serves the test gateway with `access_log`, sends three requests, and returns the log.
async fn three_requests(access_log: bool) -> Captured {
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // Thread-local: the current-thread test runtime runs the connection tasks on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);
    let (_, app) = gateway();
    let server = Server::start_with(
        app,
        Limits {
            access_log,
            ..Limits::default()
        },
    )
    .await;
    let doc = exchange(server.addr, "GET", "/left-pad", "").await;
    assert_eq!(doc.status, 200);
    assert_eq!(
        exchange(server.addr, "GET", "/-/ping?write=true", "")
            .await
            .status,
        200
    );
    assert_eq!(
        exchange(server.addr, "PUT", "/left-pad", "").await.status,
        405
    );
    server.shutdown().await;
    log
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

#[tokio::test]
async fn one_line_per_request_with_its_fields() {
    let log = three_requests(true).await;
    let lines = log.lines(TARGET);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let doc = &lines[0];
    assert!(doc.contains(" INFO "), "{doc}");
    assert_eq!(field(doc, "method"), Some("GET"));
    assert_eq!(field(doc, "path"), Some("/left-pad"));
    assert_eq!(field(doc, "status"), Some("200"));
    assert_eq!(field(doc, "source"), Some("memory"));
    assert_eq!(field(doc, "client"), Some("127.0.0.1"));
    let bytes: u64 = field(doc, "bytes").unwrap().parse().unwrap();
    assert!(bytes > 100, "{doc}");
    field(doc, "ms").unwrap().parse::<u64>().unwrap();

    // The query string is not logged; the gateway answered ping by itself.
    let ping = &lines[1];
    assert_eq!(field(ping, "path"), Some("/-/ping"));
    assert_eq!(field(ping, "source"), Some("gateway"));
    assert_eq!(field(ping, "bytes"), Some("2"));

    let write = &lines[2];
    assert_eq!(field(write, "method"), Some("PUT"));
    assert_eq!(field(write, "status"), Some("405"));
    assert_eq!(field(write, "source"), Some("gateway"));
}

#[tokio::test]
async fn the_setting_turns_it_off() {
    let log = three_requests(false).await;
    assert_eq!(log.lines(TARGET), Vec::<String>::new());
}

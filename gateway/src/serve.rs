//! [`serve`]: the gateway's HTTP/1.1 server, bounded against hostile connections.
//!
//! A connection costs the node a file descriptor and a task for as long as the client keeps it
//! open, so every way of keeping one open without doing anything is bounded ([`Limits`]):
//!
//! - a client has `header_read_timeout` to send a request's headers, counted from when the
//!   server starts waiting for them (a half-sent request line is closed after it);
//! - a connection with no request in flight and no byte moving in either direction for
//!   `idle_timeout` is closed (an idle keep-alive, or a client that stopped reading a body);
//! - at most `max_connections` are open at once, and at most `max_connections_per_address`
//!   from one IP address.
//!
//! A connection over a cap is accepted and closed at once rather than left in the listen
//! backlog, where an attacker's connections would queue ahead of everyone else's.
//!
//! Every request answered is logged here, once, as one access line ([`crate::access`]),
//! unless `access_log` is off.
//!
//! Requests are otherwise served exactly as `axum::serve` serves them (hyper's HTTP/1.1 server
//! with keep-alive, TCP_NODELAY on every connection); HEAD, bodies and Content-Length are the
//! router's business. Shutdown is graceful: on cancellation the listener closes, idle
//! connections close, and requests in flight finish before [`serve`] returns.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// How long hostile or idle clients may hold connections, and how many they may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Time a connection may sit with no request in flight and no byte moving.
    pub idle_timeout: Duration,
    /// Connections open at once, over all clients.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_address: usize,
    /// Whether each request is logged (one `info` line under [`crate::access::TARGET`]).
    pub access_log: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_address: 256,
            access_log: true,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` is cancelled, then waits for
/// the open connections to finish their requests.
///
/// Accept errors do not end the server: connection-level ones are skipped, and the others (out
/// of file descriptors, above all) are logged and retried after a short pause.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Slots::new(
        limits.max_connections,
        limits.max_connections_per_address,
    ));
    let connections = TaskTracker::new();
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE and the like: the backlog keeps the connection, so pause and retry
                // rather than spin.
                tracing::warn!(error = %e, "gateway cannot accept a connection; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Some(slot) = slots.take(peer.ip()) else {
            refused += 1;
            // Logged sparsely: under a flood this line would otherwise be the flood.
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, "connection cap reached; closing new connections");
            }
            drop(tcp);
            continue;
        };
        // Without TCP_NODELAY a streamed response waits ~40 ms on Nagle and delayed ACKs.
        let _ = tcp.set_nodelay(true);
        connections.spawn(connection(
            tcp,
            peer.ip(),
            router.clone(),
            limits.clone(),
            slot,
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Serves one connection until the client closes it, a timeout fires, or shutdown has let its
/// last request finish.
async fn connection(
    tcp: TcpStream,
    client: IpAddr,
    router: Router,
    limits: Limits,
    _slot: Slot,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: tcp,
        activity: activity.clone(),
    });
    let busy = activity.clone();
    let access_log = limits.access_log;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let guard = Busy::new(busy.clone());
        let asked = access_log.then(|| {
            (
                Instant::now(),
                req.method().clone(),
                req.uri().path().to_owned(),
            )
        });
        async move {
            let res = router.oneshot(req.map(Body::new)).await;
            drop(guard);
            if let (Some((at, method, path)), Ok(res)) = (&asked, &res) {
                crate::access::log(method, path, client, res, at.elapsed());
            }
            res
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "gateway connection ended");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = activity.idle_for(limits.idle_timeout) => {
                tracing::debug!("gateway connection idle; closing");
                return;
            }
        }
    }
}

/// True for accept errors about one connection (the client went away before it was accepted),
/// after which the next accept can go on at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Open connections, counted overall and per address.
#[derive(Debug)]
struct Slots {
    max: usize,
    max_per_address: usize,
    // std Mutex, not tokio: held for a map update, never across an await.
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Slots {
    fn new(max: usize, max_per_address: usize) -> Self {
        Self {
            max,
            max_per_address,
            open: Mutex::new(Open::default()),
        }
    }

    /// A slot for a connection from `ip`, or `None` when a cap is reached.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = open.by_address.get(&ip).copied().unwrap_or(0);
        if open.total >= self.max || from_ip >= self.max_per_address {
            return None;
        }
        open.total += 1;
        open.by_address.insert(ip, from_ip + 1);
        Some(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

/// One open connection's place under the caps; given back on drop.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(n) = open.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.by_address.remove(&self.ip);
            }
        }
    }
}

/// When a connection last moved a byte, and how many of its requests are being answered.
#[derive(Debug)]
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once the connection has been idle (nothing in flight, no byte moved) for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + limit;
            if self.in_flight.load(Ordering::Relaxed) == 0 && Instant::now() >= deadline {
                return;
            }
            // A handler still working (waiting on the upstream, say) is not idleness; look
            // again a full period later.
            let next = if self.in_flight.load(Ordering::Relaxed) > 0 {
                Instant::now() + limit
            } else {
                deadline
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// A request being answered, for [`Activity`]; the response's body counts as bytes moving.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that records each byte moved in [`Activity`].
#[derive(Debug)]
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl Tracked {
    fn moved<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Ok(_)) = &poll {
            self.activity.touch();
        }
        poll
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.moved(poll)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.moved(poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.moved(poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_overall_and_per_address() {
        let slots = Arc::new(Slots::new(3, 2));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = slots.take(a).unwrap();
        let _a2 = slots.take(a).unwrap();
        assert!(slots.take(a).is_none(), "per-address cap");
        let _b1 = slots.take(b).unwrap();
        assert!(slots.take(b).is_none(), "overall cap");
        drop(a1);
        assert!(
            slots.take(a).is_some(),
            "a closed connection gives its slot back"
        );
    }
}

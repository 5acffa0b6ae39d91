//! Transport references for the peer benchmarks (B4, B5): what loopback TCP and a bare libp2p
//! connection move when no node is around them, measured in this process.
//!
//! - [`Tcp`]: tokio sockets on 127.0.0.1 with `TCP_NODELAY`.
//! - [`Libp2p`]: two swarms on the node's own TCP stack (TCP with `TCP_NODELAY`, noise,
//!   yamux) speaking one stream protocol through `libp2p-stream`, as the node's blob protocol
//!   does: one request per stream, the connection stays up.
//!
//! Both speak the same toy protocol: the client sends a size (big-endian `u64`), the server
//! answers with that many bytes, written [`CHUNK`] at a time (the node's chunk size), and the
//! client reads them into a [`CHUNK`] buffer and counts them. Over TCP one connection carries
//! its requests one after the other; over libp2p each request opens a new stream on the one
//! connection and the server closes it when done. Connections are set up before any timing.
//! Both sides run on one tokio runtime with two workers (the machine has two cores, as the
//! two node processes share them).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder, noise, tcp, yamux};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// Bytes per write on the server and per read on the client (the node's blob protocol uses the
/// same).
pub(crate) const CHUNK: usize = 64 * 1024;

/// How long any one reference measurement may take.
const DEADLINE: Duration = Duration::from_secs(300);

/// The toy protocol's id.
const PROTOCOL: StreamProtocol = StreamProtocol::new("/open-registry-bench/perf/1");

/// What a transport reference can do; every method returns the wall time of the whole job.
pub(crate) trait Reference {
    /// One transfer of `bytes`.
    fn bulk(&self, bytes: u64) -> Result<Duration>;
    /// `n` transfers of `size` bytes each, `concurrency` at a time.
    fn many(&self, n: usize, size: u64, concurrency: usize) -> Result<Duration>;
    /// `n` one-byte requests in a row: each a round trip (over libp2p: a new stream each).
    fn round_trips(&self, n: usize) -> Result<Vec<Duration>>;
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-perf")
        .enable_all()
        .build()
        .context("building the reference runtime")
}

/// The bytes every server writes from (contents do not matter: nothing compresses them).
fn payload() -> Arc<Vec<u8>> {
    Arc::new(open_registry_tests::fixtures::pseudo_random_bytes(
        0xb4, CHUNK,
    ))
}

/// Runs `jobs` jobs, `concurrency` at a time, each made by `job(i)`.
async fn bounded<F>(jobs: usize, concurrency: usize, job: F) -> Result<()>
where
    F: Fn(usize) -> BoxFuture<'static, Result<()>> + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let job = Arc::new(job);
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, jobs.max(1)) {
        let (next, job) = (next.clone(), job.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs {
                    return anyhow::Ok(());
                }
                job(i).await?;
            }
        }));
    }
    for w in workers {
        w.await.context("a reference worker panicked")??;
    }
    Ok(())
}

// ---- TCP ---------------------------------------------------------------------------------

/// Loopback TCP: a tokio server answering sizes with bytes.
pub(crate) struct Tcp {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    cancel: CancellationToken,
}

impl Tcp {
    pub(crate) fn start() -> Result<Tcp> {
        let rt = runtime()?;
        let cancel = CancellationToken::new();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let stop = cancel.clone();
        rt.spawn(async move {
            let payload = payload();
            loop {
                let (sock, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let _ = sock.set_nodelay(true);
                tokio::spawn(tcp_serve(sock, payload.clone()));
            }
        });
        Ok(Tcp { rt, addr, cancel })
    }

    async fn connect(addr: std::net::SocketAddr) -> Result<tokio::net::TcpStream> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Answers each size read from `sock` with that many bytes, until the client hangs up.
async fn tcp_serve(mut sock: tokio::net::TcpStream, payload: Arc<Vec<u8>>) -> Result<()> {
    let mut size = [0u8; 8];
    while sock.read_exact(&mut size).await.is_ok() {
        let mut left = u64::from_be_bytes(size);
        while left > 0 {
            let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            sock.write_all(&payload[..n]).await?;
            left -= n as u64;
        }
    }
    Ok(())
}

/// Sends one request on `sock` and reads its `size` bytes.
async fn tcp_fetch(sock: &mut tokio::net::TcpStream, size: u64, buf: &mut [u8]) -> Result<()> {
    sock.write_all(&size.to_be_bytes()).await?;
    let mut got = 0u64;
    while got < size {
        let want = usize::try_from(size - got).map_or(buf.len(), |w| w.min(buf.len()));
        let n = sock.read(&mut buf[..want]).await?;
        if n == 0 {
            bail!("the TCP reference server closed after {got} of {size} bytes");
        }
        got += n as u64;
    }
    Ok(())
}

impl Reference for Tcp {
    fn bulk(&self, bytes: u64) -> Result<Duration> {
        let addr = self.addr;
        self.rt.block_on(async move {
            let mut sock = Tcp::connect(addr).await?;
            let mut buf = vec![0u8; CHUNK];
            let t0 = Instant::now();
            tokio::time::timeout(DEADLINE, tcp_fetch(&mut sock, bytes, &mut buf))
                .await
                .map_err(|_| anyhow!("TCP bulk transfer timed out"))??;
            Ok(t0.elapsed())
        })
    }

    fn many(&self, n: usize, size: u64, concurrency: usize) -> Result<Duration> {
        let addr = self.addr;
        self.rt.block_on(async move {
            let c = concurrency.clamp(1, n.max(1));
            let mut socks = Vec::with_capacity(c);
            for _ in 0..c {
                socks.push(Tcp::connect(addr).await?);
            }
            let next = Arc::new(AtomicUsize::new(0));
            let t0 = Instant::now();
            let workers: Vec<_> = socks
                .into_iter()
                .map(|mut sock| {
                    let next = next.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; CHUNK];
                        while next.fetch_add(1, Ordering::Relaxed) < n {
                            tcp_fetch(&mut sock, size, &mut buf).await?;
                        }
                        anyhow::Ok(())
                    })
                })
                .collect();
            for w in workers {
                tokio::time::timeout(DEADLINE, w)
                    .await
                    .map_err(|_| anyhow!("TCP transfers timed out"))???;
            }
            Ok(t0.elapsed())
        })
    }

    fn round_trips(&self, n: usize) -> Result<Vec<Duration>> {
        let addr = self.addr;
        self.rt.block_on(async move {
            let mut sock = Tcp::connect(addr).await?;
            let mut buf = vec![0u8; 1];
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let t0 = Instant::now();
                tcp_fetch(&mut sock, 1, &mut buf).await?;
                out.push(t0.elapsed());
            }
            Ok(out)
        })
    }
}

impl Drop for Tcp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

// ---- libp2p ------------------------------------------------------------------------------

/// A swarm on the node's transport stack with nothing but `libp2p-stream` on top.
fn swarm() -> Result<Swarm<libp2p_stream::Behaviour>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build())
}

/// Two libp2p peers in this process, connected: a client and a server of the toy protocol.
pub(crate) struct Libp2p {
    rt: tokio::runtime::Runtime,
    control: libp2p_stream::Control,
    server: PeerId,
    cancel: CancellationToken,
}

impl Libp2p {
    pub(crate) fn start() -> Result<Libp2p> {
        let rt = runtime()?;
        let cancel = CancellationToken::new();
        let (control, server) = rt.block_on(Self::connect(cancel.clone()))?;
        Ok(Libp2p {
            rt,
            control,
            server,
            cancel,
        })
    }

    async fn connect(cancel: CancellationToken) -> Result<(libp2p_stream::Control, PeerId)> {
        // The server: listen, accept streams of the protocol, serve each in its own task.
        let mut server = swarm()?;
        let server_id = *server.local_peer_id();
        server.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let listen: Multiaddr = loop {
            match tokio::time::timeout(Duration::from_secs(10), server.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => break address,
                Ok(_) => {}
                Err(_) => bail!("the libp2p reference server bound no address"),
            }
        };
        let mut incoming = server
            .behaviour()
            .new_control()
            .accept(PROTOCOL)
            .map_err(|e| anyhow!("{e}"))?;
        let stop = cancel.clone();
        tokio::spawn(async move {
            let payload = payload();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    Some((_, stream)) = incoming.next() => {
                        tokio::spawn(libp2p_serve(stream, payload.clone()));
                    }
                }
            }
        });
        let stop = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = server.select_next_some() => {}
                }
            }
        });

        // The client: dial, wait for the connection, then keep driving its swarm.
        let mut client = swarm()?;
        let control = client.behaviour().new_control();
        client.dial(listen.with(libp2p::multiaddr::Protocol::P2p(server_id)))?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), client.select_next_some()).await {
                Ok(SwarmEvent::ConnectionEstablished { peer_id, .. }) if peer_id == server_id => {
                    break;
                }
                Ok(SwarmEvent::OutgoingConnectionError { error, .. }) => {
                    bail!("the libp2p reference client could not connect: {error}")
                }
                Ok(_) => {}
                Err(_) => bail!("the libp2p reference client did not connect in time"),
            }
        }
        let stop = cancel;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = client.select_next_some() => {}
                }
            }
        });
        Ok((control, server_id))
    }
}

/// Reads a size from `stream`, writes that many bytes, closes.
async fn libp2p_serve(mut stream: libp2p::Stream, payload: Arc<Vec<u8>>) -> Result<()> {
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut size = [0u8; 8];
    stream.read_exact(&mut size).await?;
    let mut left = u64::from_be_bytes(size);
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        stream.write_all(&payload[..n]).await?;
        left -= n as u64;
    }
    stream.close().await?;
    Ok(())
}

/// How often a request whose stream was dropped unanswered is sent again. `libp2p-stream`
/// hands inbound streams to the acceptor through a channel with no room to spare and drops the
/// ones that find it full; the node's blob client retries those too
/// (`open_registry_node::net::client::DROPPED_STREAM_RETRIES`).
const DROPPED_STREAM_RETRIES: u64 = 16;

/// Streams the libp2p reference server dropped unanswered (and the client sent again).
static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many requests of the libp2p reference were sent again so far (see
/// [`DROPPED_STREAM_RETRIES`]).
pub(crate) fn dropped_streams() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Opens a stream to `peer`, asks for `size` bytes and reads them to the end (again on a new
/// stream when the server dropped the first one unanswered).
async fn libp2p_fetch(
    control: libp2p_stream::Control,
    peer: PeerId,
    size: u64,
    buf: &mut [u8],
) -> Result<()> {
    let mut got = 0;
    for attempt in 0..=DROPPED_STREAM_RETRIES {
        if attempt > 0 {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            // Let the server's acceptor drain its queue before asking again.
            tokio::time::sleep(Duration::from_millis(attempt)).await;
        }
        got = libp2p_fetch_once(control.clone(), peer, size, buf).await?;
        if got > 0 || size == 0 {
            break;
        }
    }
    ensure!(
        got == size,
        "the libp2p reference server sent {got} of {size} bytes"
    );
    Ok(())
}

/// One request on a new stream; the bytes read until the server closed it.
async fn libp2p_fetch_once(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    size: u64,
    buf: &mut [u8],
) -> Result<u64> {
    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = control
        .open_stream(peer, PROTOCOL)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    // A dropped stream may already be reset when the request goes out.
    if stream.write_all(&size.to_be_bytes()).await.is_err() || stream.flush().await.is_err() {
        return Ok(0);
    }
    let mut got = 0u64;
    loop {
        let n = match stream.read(buf).await {
            Ok(n) => n,
            Err(_) if got == 0 => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(got);
        }
        got += n as u64;
    }
}

impl Reference for Libp2p {
    fn bulk(&self, bytes: u64) -> Result<Duration> {
        let (control, peer) = (self.control.clone(), self.server);
        self.rt.block_on(async move {
            let mut buf = vec![0u8; CHUNK];
            let t0 = Instant::now();
            tokio::time::timeout(DEADLINE, libp2p_fetch(control, peer, bytes, &mut buf))
                .await
                .map_err(|_| anyhow!("libp2p bulk transfer timed out"))??;
            Ok(t0.elapsed())
        })
    }

    fn many(&self, n: usize, size: u64, concurrency: usize) -> Result<Duration> {
        let (control, peer) = (self.control.clone(), self.server);
        self.rt.block_on(async move {
            let t0 = Instant::now();
            let job = move |_| -> BoxFuture<'static, Result<()>> {
                let control = control.clone();
                Box::pin(async move {
                    let mut buf = vec![0u8; CHUNK];
                    libp2p_fetch(control, peer, size, &mut buf).await
                })
            };
            tokio::time::timeout(DEADLINE, bounded(n, concurrency, job))
                .await
                .map_err(|_| anyhow!("libp2p transfers timed out"))??;
            Ok(t0.elapsed())
        })
    }

    fn round_trips(&self, n: usize) -> Result<Vec<Duration>> {
        let (control, peer) = (self.control.clone(), self.server);
        self.rt.block_on(async move {
            let mut buf = vec![0u8; 16];
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let t0 = Instant::now();
                libp2p_fetch(control.clone(), peer, 1, &mut buf).await?;
                out.push(t0.elapsed());
            }
            Ok(out)
        })
    }
}

impl Drop for Libp2p {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// MB/s (decimal megabytes, as docs/benchmarks.md writes sizes) for `bytes` in `d`.
pub(crate) fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_references_move_the_bytes_they_are_asked_for() {
        let refs: Vec<Box<dyn Reference>> = vec![
            Box::new(Tcp::start().unwrap()),
            Box::new(Libp2p::start().unwrap()),
        ];
        for r in &refs {
            r.bulk(3 * CHUNK as u64 + 17).unwrap();
            r.many(20, 1000, 4).unwrap();
            assert_eq!(r.round_trips(3).unwrap().len(), 3);
        }
    }
}

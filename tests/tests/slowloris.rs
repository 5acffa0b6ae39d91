//! R18 of docs/security.md: slowloris and half-sent requests against the real `open-registry`
//! binary, run with a file descriptor limit of 1,024 (soft and hard, through `sh -c 'ulimit …'`,
//! so the node cannot raise it and the gateway's caps and timeouts are what has to hold).
//!
//! The attackers connect from 127.0.0.2 and 127.0.0.3 (all of 127/8 is loopback on Linux), so
//! the per-address cap applies to them and not to the test's own requests from 127.0.0.1.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use open_registry_tests::{FakeUpstream, NodeProcess, PackageSpec, http, tools};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Runtime;

/// What each attacker sends: half a request line, never finished.
const HALF_REQUEST: &[u8] = b"GET /-/ping HT";
/// The bound within which the node must answer its honest clients during the flood.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A script that runs the node binary with `ulimit -n 1024` (soft and hard).
fn limited_binary(dir: &Path, soft_only: bool) -> Result<PathBuf> {
    let binary = tools::node_binary()?;
    let ulimit = if soft_only {
        "ulimit -Sn 1024"
    } else {
        "ulimit -Sn 1024 && ulimit -Hn 1024"
    };
    let script = dir.join("open-registry-limited");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\n{ulimit} || exit 97\nexec '{}' \"$@\"\n",
            binary.display()
        ),
    )?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

/// The node's `Max open files` (soft, hard) from /proc.
fn open_files_limit(pid: u32) -> Result<(String, String)> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no Max open files line")?;
    let mut cols = line["Max open files".len()..].split_whitespace();
    Ok((
        cols.next().unwrap_or_default().to_owned(),
        cols.next().unwrap_or_default().to_owned(),
    ))
}

/// Opens `n` connections from `source` to `gateway`, each sending half a request line. A
/// connection the node closes at once may fail its write; that is expected and ignored.
async fn half_open(n: usize, source: &str, gateway: SocketAddr) -> Result<Vec<TcpStream>> {
    let ip: IpAddr = source.parse()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(ip, 0))?;
        let mut stream = socket.connect(gateway).await.context("connecting")?;
        let _ = stream.write_all(HALF_REQUEST).await;
        out.push(stream);
    }
    Ok(out)
}

/// True once the peer has closed `stream` (EOF or reset), false if it is still open after
/// `wait`.
async fn is_closed(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // Whatever the node sent (a 408, say), what matters is that it closes.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Polls until every stream has been closed by the node, or `deadline`; returns how many are
/// still open.
async fn wait_closed(streams: &mut Vec<TcpStream>, deadline: Instant) -> usize {
    while !streams.is_empty() && Instant::now() < deadline {
        let mut open = Vec::with_capacity(streams.len());
        for mut s in streams.drain(..) {
            if !is_closed(&mut s, Duration::from_millis(1)).await {
                open.push(s);
            }
        }
        *streams = open;
        if !streams.is_empty() {
            // Block on the oldest until it closes or a short while passes: a bounded wait on
            // the event itself, not a sleep.
            let _ = is_closed(&mut streams[0], Duration::from_millis(200)).await;
        }
    }
    streams.len()
}

fn gateway_addr(node: &NodeProcess) -> Result<SocketAddr> {
    node.gateway
        .strip_prefix("http://")
        .context("gateway URL")?
        .parse()
        .context("gateway address")
}

/// A GET from 127.0.0.1 that must answer 200 within [`ANSWER_WITHIN`]; returns how long it took.
fn answers(node: &NodeProcess, path: &str) -> Result<Duration> {
    let started = Instant::now();
    let r = http::request(
        "GET",
        &format!("{}{path}", node.gateway),
        &[],
        &[],
        ANSWER_WITHIN,
    )
    .with_context(|| format!("GET {path} during the flood"))?;
    let took = started.elapsed();
    ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.text());
    ensure!(took <= ANSWER_WITHIN, "GET {path} took {took:?}");
    Ok(took)
}

/// 1,100 connections each holding half a request line, against a node with 1,024 descriptors:
/// ping, a packument and a tarball (through a fake upstream) still answer 200 within 5 s while
/// they are connected, and every half-sent connection is closed by the node once the 5 s
/// header-read timeout has passed.
#[test]
fn r18_half_sent_requests_do_not_take_the_gateway_dark() -> Result<()> {
    let _ = rlimit::increase_nofile_limit(8192);
    let up = FakeUpstream::start()?;
    let p = up.publish(&PackageSpec::new("or-r18-slowloris", "1.0.0"))?;
    let scripts = tempfile::tempdir()?;
    let mut node = NodeProcess::builder()
        .binary(&limited_binary(scripts.path(), false)?)
        .args(["--upstream", up.url(), "--no-p2p"])
        .args(["--header-read-timeout", "5s"])
        .start()?;
    let pid = node.pid().context("pid")?;
    ensure!(
        open_files_limit(pid)? == ("1024".into(), "1024".into()),
        "the node's limit: {:?}",
        open_files_limit(pid)?
    );
    // 4,096 connections do not fit in 1,024 descriptors: the node says it lowered the cap.
    ensure!(
        node.log_tail(50).contains("max_connections lowered"),
        "no warning about max_connections:\n{}",
        node.log_tail(50)
    );
    let gateway = gateway_addr(&node)?;
    let rt = Runtime::new()?;

    let flood_started = Instant::now();
    let mut attackers = rt.block_on(half_open(1100, "127.0.0.2", gateway))?;
    let flooded_in = flood_started.elapsed();
    // The node holds the attackers within the per-address cap (256) until the header-read
    // timeout; the rest it closed at once. The checks below run while those are connected.
    let ping = answers(&node, "/-/ping")?;
    let packument = answers(&node, &p.packument_path)?;
    let tarball = answers(&node, &p.tarball_path)?;
    let held = rt.block_on(async {
        let mut held = 0;
        for s in attackers.iter_mut() {
            if !is_closed(s, Duration::from_millis(1)).await {
                held += 1;
            }
        }
        held
    });
    println!(
        "1100 half-sent connections opened in {flooded_in:?}; with {held} of them held open: \
         ping {ping:?}, packument {packument:?}, tarball {tarball:?}"
    );
    ensure!(
        (200..=256).contains(&held),
        "{held} attackers held during the checks, expected the per-address cap's 256"
    );

    let open = rt.block_on(wait_closed(
        &mut attackers,
        Instant::now() + Duration::from_secs(20),
    ));
    let closed_in = flood_started.elapsed();
    println!("all half-sent connections closed by the node {closed_in:?} after the flood began");
    if open > 0 {
        bail!(
            "{open} half-sent connections still open 20 s after the flood; log:\n{}",
            node.log_tail(30)
        );
    }
    answers(&node, "/-/ping")?;
    ensure!(node.is_running(), "the node exited");
    node.stop()?;
    Ok(())
}

/// More connections from one address than `max_connections_per_address` (8): the surplus is
/// closed at once, long before the header-read timeout (60 s here), the 8 within the cap stay
/// open, and another address is served meanwhile.
#[test]
fn r18_connections_over_the_per_address_cap_are_closed_at_once() -> Result<()> {
    let up = FakeUpstream::start()?;
    let mut node = NodeProcess::builder()
        .args(["--upstream", up.url(), "--no-p2p"])
        .args(["--header-read-timeout", "60s"])
        .args(["--max-connections-per-address", "8"])
        .start()?;
    let gateway = gateway_addr(&node)?;
    let rt = Runtime::new()?;
    let started = Instant::now();
    let mut streams = rt.block_on(half_open(20, "127.0.0.3", gateway))?;
    let ping = answers(&node, "/-/ping")?;
    // Poll until the 12 over the cap are closed, well before the 60 s timeout.
    let deadline = Instant::now() + Duration::from_secs(10);
    let open = rt.block_on(async {
        loop {
            let mut open = 0;
            for s in streams.iter_mut() {
                if !is_closed(s, Duration::from_millis(1)).await {
                    open += 1;
                }
            }
            if open <= 8 || Instant::now() >= deadline {
                return open;
            }
            tokio::task::yield_now().await;
        }
    });
    let took = started.elapsed();
    ensure!(
        open == 8,
        "{open} of 20 still open, expected the 8 within the cap"
    );
    ensure!(took < Duration::from_secs(10), "closing took {took:?}");
    println!("12 connections over the cap closed within {took:?}; ping took {ping:?}");
    // Another address of the attacker's own range is not affected either.
    let mut other = rt.block_on(half_open(1, "127.0.0.4", gateway))?;
    ensure!(!rt.block_on(is_closed(&mut other[0], Duration::from_millis(300))));
    node.stop()?;
    Ok(())
}

/// With only the soft limit at 1,024, the node raises it to the hard limit at start.
#[test]
fn r18_the_node_raises_its_soft_descriptor_limit() -> Result<()> {
    let scripts = tempfile::tempdir()?;
    let mut node = NodeProcess::builder()
        .binary(&limited_binary(scripts.path(), true)?)
        .args(["--no-upstream", "--no-p2p"])
        .start()?;
    let pid = node.pid().context("pid")?;
    let (soft, hard) = open_files_limit(pid)?;
    ensure!(soft == hard, "soft {soft}, hard {hard}");
    ensure!(
        node.log_tail(50).contains("file descriptor limit"),
        "not logged:\n{}",
        node.log_tail(50)
    );
    node.stop()?;
    Ok(())
}

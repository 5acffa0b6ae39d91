//! The network laboratory itself (tests/src/lab): that its delay line delays by the published
//! figures, that its laptops are behind NAT, that losses are seeded, and that nothing outlives
//! a lab. These need root; without it `Lab::builder().build()` fails and so do they.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    panic::AssertUnwindSafe,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use open_registry_tests::{
    Lab, Region,
    lab::{self, Kind},
    probe, process,
};

const PORT: u16 = 7000;

/// A TCP server on `host`'s `0.0.0.0:PORT` for `connections` connections: each is greeted with
/// the peer's address as the server sees it (one line), then echoed until it closes.
fn tcp_echo_server(lab: &Lab, host: &str, connections: usize) -> Result<JoinHandle<Result<()>>> {
    let listener = lab.enter(host, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))??;
    Ok(std::thread::spawn(move || {
        for _ in 0..connections {
            let (mut s, peer) = listener.accept()?;
            s.set_nodelay(true)?;
            s.write_all(format!("{}\n", peer.ip()).as_bytes())?;
            let mut buf = [0u8; 1024];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n])?;
            }
        }
        Ok(())
    }))
}

/// A TCP connection from inside `from` to `to`, with how long the handshake took.
fn connect(lab: &Lab, from: &str, to: SocketAddr) -> Result<(TcpStream, Duration)> {
    let (stream, took) = lab.enter(from, || {
        probe::timed(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
    })?;
    let stream = stream.with_context(|| format!("connecting from {from} to {to}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok((stream, took))
}

/// The greeting line: the address the server saw this connection come from.
fn greeting(stream: &TcpStream) -> Result<Ipv4Addr> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    line.trim()
        .parse()
        .with_context(|| format!("greeting {line:?}"))
}

/// `n` echo round trips of 8 bytes on `stream`.
fn round_trips(stream: &mut TcpStream, n: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let msg = (i as u64).to_be_bytes();
        let start = Instant::now();
        stream.write_all(&msg)?;
        let mut back = [0u8; 8];
        stream.read_exact(&mut back)?;
        out.push(start.elapsed());
        ensure!(back == msg, "echo {i} came back as {back:?}");
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The namespaces `ip netns list` shows.
fn listed_namespaces() -> Result<Vec<String>> {
    let out = process::run(
        Command::new("ip").args(["netns", "list"]),
        Duration::from_secs(10),
    )?
    .ok()?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

#[test]
fn round_trips_between_regions_take_the_published_rtt() -> Result<()> {
    let lab = Lab::builder()
        .host("eu-1", Region::Europe)
        .host("eu-2", Region::Europe)
        .upstream("na-1")
        .host("sa-1", Region::SouthAmerica)
        .host("asia-1", Region::Asia)
        .build()?;
    let peers = ["eu-2", "na-1", "sa-1", "asia-1"];
    let mut servers = Vec::new();
    for p in peers {
        servers.push(tcp_echo_server(&lab, p, 1)?);
    }
    println!("eu-1 → peer   configured   handshake   echo min / median / max (ms)");
    for p in peers {
        let want = lab.rtt("eu-1", p);
        let to = SocketAddr::from((lab.addr(p), PORT));
        let (mut stream, handshake) = connect(&lab, "eu-1", to)?;
        assert_eq!(
            greeting(&stream)?,
            lab.addr("eu-1"),
            "{p} sees eu-1 as itself"
        );
        let mut rtts = round_trips(&mut stream, 5)?;
        rtts.sort();
        drop(stream);
        println!(
            "{p:<12} {:>10.2}   {:>9.2}   {:.2} / {:.2} / {:.2}",
            ms(want),
            ms(handshake),
            ms(rtts[0]),
            ms(rtts[rtts.len() / 2]),
            ms(rtts[rtts.len() - 1])
        );
        // The delay line holds each direction for the pair's one-way delay: nothing is faster.
        assert!(
            handshake >= want,
            "eu-1 → {p}: handshake {handshake:?} < {want:?}"
        );
        for rtt in rtts.iter().chain([&handshake]) {
            assert!(*rtt >= want, "eu-1 → {p}: round trip {rtt:?} < {want:?}");
            assert!(
                *rtt < want + Duration::from_millis(50),
                "eu-1 → {p}: round trip {rtt:?} ≫ {want:?}"
            );
        }
    }
    for s in servers {
        s.join().expect("echo server panicked")?;
    }
    assert_eq!(lab.rtt("eu-1", "na-1"), Duration::from_micros(88_660));
    assert_eq!(lab.rtt("eu-1", "eu-2"), lab::INTRA_REGION_RTT);
    let stats = lab.delay_line_stats();
    assert_eq!((stats.lost, stats.errors), (0, 0), "{stats:?}");
    assert!(stats.delayed > 0, "{stats:?}");
    lab.shutdown()
}

#[test]
fn laptops_are_behind_their_home_routers_nat() -> Result<()> {
    let lab = Lab::builder()
        .delay_scale(0.1)
        .host("eu-1", Region::Europe)
        .laptop("eu-laptop-1", Region::Europe, "eu-home")
        .laptop("eu-laptop-2", Region::Europe, "eu-home")
        .build()?;
    let home_wan = lab.addr("eu-home");
    assert_eq!(lab.public_addr("eu-laptop-1"), home_wan);
    assert_eq!(lab.node("eu-home").kind, Kind::Home);
    let laptop_1 = lab.addr("eu-laptop-1");
    assert!(
        laptop_1.is_private() && laptop_1.octets()[0] == 192,
        "{laptop_1}"
    );

    // Out through the NAT: the host sees the home router's WAN address, not the laptop's.
    let host_server = tcp_echo_server(&lab, "eu-1", 1)?;
    let (mut s, _) = connect(&lab, "eu-laptop-1", (lab.addr("eu-1"), PORT).into())?;
    let seen = greeting(&s)?;
    assert_eq!(seen, home_wan, "eu-1 saw the laptop as {seen}");
    assert_ne!(seen, laptop_1);
    let rtts = round_trips(&mut s, 3)?;
    let want = lab.rtt("eu-laptop-1", "eu-1");
    assert!(rtts.iter().all(|r| *r >= want), "{rtts:?} < {want:?}");
    drop(s);
    host_server.join().expect("echo server panicked")?;

    // In from outside: neither the private address nor the WAN address reaches the laptop.
    let laptop_server = tcp_echo_server(&lab, "eu-laptop-1", 1)?;
    for target in [laptop_1, home_wan] {
        let to = SocketAddr::from((target, PORT));
        let attempt = lab.enter("eu-1", || {
            TcpStream::connect_timeout(&to, Duration::from_secs(3))
        })?;
        match attempt {
            Ok(_) => bail!("eu-1 connected to eu-laptop-1's port through {to}"),
            Err(e) => println!("eu-1 → {to}: {e} ({:?})", e.kind()),
        }
    }

    // On the LAN: the other laptop reaches it directly, seen as its own private address.
    let (s, _) = connect(&lab, "eu-laptop-2", (laptop_1, PORT).into())?;
    assert_eq!(greeting(&s)?, lab.addr("eu-laptop-2"));
    drop(s);
    laptop_server.join().expect("echo server panicked")?;
    assert_eq!(lab.rtt("eu-laptop-1", "eu-laptop-2"), Duration::ZERO);

    // Multicast, what mDNS uses, reaches the other laptop of the LAN and not the host beyond.
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let join = |name: &str| -> Result<UdpSocket> {
        let s = lab.enter(name, || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5353))?;
            s.join_multicast_v4(&group, &Ipv4Addr::UNSPECIFIED)?;
            Ok(s)
        })??;
        Ok(s)
    };
    let on_lan = join("eu-laptop-1")?;
    let beyond = join("eu-1")?;
    let sender = lab.enter("eu-laptop-2", || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
    })??;
    sender.send_to(b"who is there?", (group, 5353))?;
    let mut buf = [0u8; 64];
    on_lan.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (n, from) = on_lan
        .recv_from(&mut buf)
        .context("the multicast datagram did not reach the other laptop")?;
    assert_eq!(&buf[..n], b"who is there?");
    assert_eq!(from.ip(), lab.addr("eu-laptop-2"));
    beyond.set_read_timeout(Some(
        lab.rtt("eu-1", "eu-home") * 3 + Duration::from_millis(300),
    ))?;
    if let Ok((_, from)) = beyond.recv_from(&mut buf) {
        bail!("the host beyond the home router received the LAN's multicast from {from}");
    }
    lab.shutdown()
}

#[test]
fn nothing_outlives_a_lab_even_when_its_test_panics() -> Result<()> {
    let lab = Lab::builder()
        .delay_scale(0.0)
        .host("eu-1", Region::Europe)
        .laptop("eu-laptop", Region::Europe, "eu-home")
        .build()?;
    let names = lab.namespaces();
    assert_eq!(names.len(), 4, "{names:?}");
    let listed = listed_namespaces()?;
    for n in &names {
        assert!(n.starts_with(lab.prefix()), "{n}");
        assert!(listed.contains(n), "{n} not in `ip netns list`: {listed:?}");
    }
    // A command inside one of them sees only the lab's interface.
    let out = process::run(
        lab.command("eu-1", "ip")
            .args(["-4", "-o", "addr", "show", "eth0"]),
        Duration::from_secs(10),
    )?
    .ok()?;
    assert!(
        out.stdout.contains(&format!("{}/24", lab.addr("eu-1"))),
        "{}",
        out.stdout
    );
    // A process left running inside the laptop's namespace.
    let mut sleeper = lab
        .command("eu-laptop", "sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .context("starting sleep inside the lab")?;

    let outcome = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let _lab = lab;
        panic!("this panic is deliberate: a test failing while its lab is up");
    }));
    assert!(outcome.is_err());

    let status = process::wait_timeout(&mut sleeper, Duration::from_secs(10))?;
    assert!(status.is_some(), "the process inside the lab survived it");
    let listed = listed_namespaces()?;
    for n in &names {
        assert!(!listed.contains(n), "{n} is still there: {listed:?}");
    }

    // A crashed run's namespaces (a process id that cannot exist) are removed by the next lab.
    let stale = "orlab4294967295x0-stale";
    process::run(
        Command::new("ip").args(["netns", "add", stale]),
        Duration::from_secs(10),
    )?
    .ok()?;
    lab::cleanup_stale();
    let listed = listed_namespaces()?;
    assert!(!listed.iter().any(|n| n == stale), "{listed:?}");
    Ok(())
}

/// A UDP echo server on `host`'s `0.0.0.0:PORT` until `stop` is set.
fn udp_echo_server(lab: &Lab, host: &str, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    let socket = lab.enter(host, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, PORT)))??;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(&buf[..n], peer);
            }
        }
    }))
}

/// Sends `n` numbered datagrams from `from` to `to` and counts the echoes that come back
/// before the last one's round trip has long passed.
fn udp_echoes(lab: &Lab, from: &str, to: &str, n: u32) -> Result<u32> {
    let socket = lab.enter(from, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    let target = SocketAddr::from((lab.addr(to), PORT));
    for i in 0..n {
        socket.send_to(&i.to_be_bytes(), target)?;
    }
    let deadline = Instant::now() + lab.rtt(from, to) * 4 + Duration::from_millis(500);
    let mut seen = vec![false; n as usize];
    let mut buf = [0u8; 64];
    while seen.iter().any(|s| !s) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok((4, _)) => {
                let i = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                seen[i as usize] = true;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(seen.iter().filter(|s| **s).count() as u32)
}

#[test]
fn loss_drops_a_seeded_share_of_the_pairs_packets_only() -> Result<()> {
    const SENT: u32 = 200;
    let lab = Lab::builder()
        .delay_scale(0.1)
        .loss_between(Region::Europe, Region::NorthAmerica, 0.2)
        .seed(13)
        .host("eu-1", Region::Europe)
        .host("eu-2", Region::Europe)
        .host("na-1", Region::NorthAmerica)
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers = [
        udp_echo_server(&lab, "na-1", stop.clone())?,
        udp_echo_server(&lab, "eu-2", stop.clone())?,
    ];

    let within = udp_echoes(&lab, "eu-1", "eu-2", SENT)?;
    assert_eq!(within, SENT, "Europe ↔ Europe has no loss");
    assert_eq!(lab.delay_line_stats().lost, 0);

    let across = udp_echoes(&lab, "eu-1", "na-1", SENT)?;
    let lost = SENT - across;
    // Each round trip crosses twice: 1 − 0.8² = 36% expected.
    println!("Europe ↔ North America at 20% loss each way: {lost} of {SENT} round trips lost");
    assert!(
        (SENT / 5..=SENT * 11 / 20).contains(&lost),
        "{lost} of {SENT} lost"
    );
    // A lost request is never answered, so every lost round trip is exactly one lost packet.
    assert_eq!(lab.delay_line_stats().lost, u64::from(lost));

    stop.store(true, Ordering::Relaxed);
    for s in servers {
        s.join().expect("udp echo server panicked");
    }
    lab.shutdown()
}

#[test]
fn a_bulk_transfer_crosses_the_delay_line_intact() -> Result<()> {
    const BYTES: usize = 16 << 20;
    let lab = Lab::builder()
        .delay_scale(0.1)
        .host("eu-1", Region::Europe)
        .host("asia-1", Region::Asia)
        .build()?;
    let listener = lab.enter("asia-1", || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT))
    })??;
    let sink = std::thread::spawn(move || -> Result<(usize, u64)> {
        let (mut s, _) = listener.accept()?;
        let (mut total, mut sum) = (0usize, 0u64);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok((total, sum));
            }
            for (i, b) in buf[..n].iter().enumerate() {
                sum = sum.wrapping_add(u64::from(*b) * ((total + i) as u64 % 251 + 1));
            }
            total += n;
        }
    });
    let data: Vec<u8> = (0..BYTES).map(|i| (i * 7 % 256) as u8).collect();
    let want = data.iter().enumerate().fold(0u64, |sum, (i, b)| {
        sum.wrapping_add(u64::from(*b) * (i as u64 % 251 + 1))
    });
    let (mut s, _) = connect(&lab, "eu-1", (lab.addr("asia-1"), PORT).into())?;
    let start = Instant::now();
    s.write_all(&data)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let (got, sum) = sink.join().expect("sink panicked")?;
    let took = start.elapsed();
    assert_eq!((got, sum), (BYTES, want), "the bytes arrived changed");
    let stats = lab.delay_line_stats();
    println!(
        "16 MiB Europe → Asia at RTT {:.1} ms: {:.0} ms, {:.1} MB/s; {stats:?}",
        ms(lab.rtt("eu-1", "asia-1")),
        ms(took),
        BYTES as f64 / took.as_secs_f64() / 1e6
    );
    assert_eq!(stats.errors, 0, "{stats:?}");
    lab.shutdown()
}

/// Set in the child of [`without_privileges_a_lab_fails_and_says_why`].
const PROBE_ENV: &str = "OPEN_REGISTRY_LAB_UNPRIVILEGED_PROBE";

#[test]
#[ignore = "the child process of without_privileges_a_lab_fails_and_says_why"]
fn unprivileged_probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        println!("{PROBE_ENV} is not set: nothing to probe");
        return;
    }
    let err = Lab::builder()
        .host("eu-1", Region::Europe)
        .build()
        .expect_err("a lab was built without any capability");
    println!("LAB-ERROR: {err:#}");
}

#[test]
fn without_privileges_a_lab_fails_and_says_why() -> Result<()> {
    // This very test binary, its capabilities dropped (still uid 0, so it can read its files).
    let out = process::run(
        Command::new("setpriv")
            .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
            .arg(std::env::current_exe()?)
            .args([
                "--exact",
                "unprivileged_probe",
                "--include-ignored",
                "--nocapture",
            ])
            .env(PROBE_ENV, "1"),
        Duration::from_secs(60),
    )?;
    let printed = format!("{}{}", out.stdout, out.stderr);
    ensure!(out.success(), "the probe failed: {}", out.describe());
    let line = printed
        .lines()
        .find(|l| l.starts_with("LAB-ERROR: "))
        .with_context(|| format!("the probe printed no error: {printed}"))?;
    println!("{line}");
    ensure!(
        line.contains("needs root") && line.contains("namespace"),
        "the error does not say what is missing: {line}"
    );
    Ok(())
}

//! Node configuration, in two stages: what was parsed ([`Settings`], from flags, `OPEN_REGISTRY_*`
//! environment variables and `config.toml`, every field optional) becomes one validated
//! [`Config`] that is passed by value. No globals.
//!
//! Precedence: command-line flag, then environment variable (both handled by clap), then the
//! data dir's `config.toml`, then the built-in default. The upstream is never built in: without
//! one configured, the node takes the npm client's own registry (`npm config get registry`), or
//! runs without an upstream.

mod render;
mod settings;
pub mod units;

pub use render::render_toml;
pub use settings::Settings;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};

use url::Url;

use open_registry_gateway as gateway;
use open_registry_protocol::{PeerId, Policy};

use crate::clock::Clock;
use crate::config::units::{parse_duration, parse_size};
use crate::net;

/// The gateway's default address: loopback only, so a fresh node is never exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7373";
/// The highest `announce_rate` accepted: above it one node's re-announcements would be a
/// noticeable load on the peers closest to its keys.
pub const MAX_ANNOUNCE_RATE: u32 = 1000;
/// The config file's name inside the data dir.
pub const CONFIG_FILE: &str = "config.toml";
/// The validated configuration a node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store, indexes and keys live.
    pub data_dir: PathBuf,
    /// The gateway's listening address.
    pub listen: SocketAddr,
    /// Base URL for rewritten tarball links, if fixed.
    pub public_url: Option<String>,
    /// The upstream registry, if any (always ends with `/`).
    pub upstream: Option<Url>,
    /// Packument freshness.
    pub max_age: Duration,
    /// Deadline for one upstream request.
    pub upstream_timeout: Duration,
    /// Deadline for connecting to the upstream.
    pub connect_timeout: Duration,
    /// Retries after a failed upstream request.
    pub retries: u32,
    /// Outages in a row that open the upstream's circuit breaker (0: no breaker).
    pub breaker_outages: u32,
    /// Largest tarball accepted.
    pub max_tarball_size: u64,
    /// Largest packument accepted.
    pub max_packument_size: u64,
    /// Memory for hot packuments.
    pub memory_cache_size: u64,
    /// Memory for packuments being downloaded, checked and derived, all requests together.
    pub packument_memory: u64,
    /// The gateway's timeouts and connection caps, and whether it writes the access log.
    pub connections: gateway::Limits,
    /// Operators whose records are trusted.
    pub trust: Vec<PeerId>,
    /// How many of them must agree.
    pub trust_threshold: usize,
    /// Validity of the records this node signs.
    pub record_ttl: Duration,
    /// Disk budget for blobs (0: unbounded).
    pub max_cache_size: u64,
    /// Newest versions `pin add NAME` pins.
    pub pin_latest: usize,
    /// The peer-to-peer network, unless disabled.
    pub p2p: Option<net::Config>,
    /// Budget for fetching one blob from peers.
    pub peer_timeout: Duration,
    /// The upstream's changes feed, if followed.
    pub changes_feed: Option<Url>,
    /// Poll interval of the changes feed.
    pub changes_poll: Duration,
    /// Interval of pinned packument refreshes (without a feed).
    pub pin_refresh: Duration,
    /// Interval of popularity summaries.
    pub popularity_interval: Duration,
    /// Interval of signed node reports and statement gossip (the network view's window).
    pub report_interval: Duration,
    /// The release cooldown: versions published less than this long ago are not served yet
    /// (`None`: off, the default).
    pub min_release_age: Option<Duration>,
    /// Packages (names, or scopes as `@scope/*`) the release cooldown never holds.
    pub cooldown_exempt: Vec<String>,
    /// Trusted operators (this one included) that must sign an advisory before it is in
    /// force; `None`: the trust threshold ([`Config::advisory_threshold`]).
    pub advisory_threshold: Option<usize>,
    /// What "now" is for every calendar decision (the system clock; tests inject a manual one).
    pub clock: Clock,
}

impl Config {
    /// A configuration with defaults for `data_dir` and an optional upstream; used by tests and
    /// embedders.
    pub fn new(data_dir: impl Into<PathBuf>, upstream: Option<Url>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            public_url: None,
            upstream,
            max_age: Duration::from_secs(300),
            upstream_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            retries: 2,
            breaker_outages: 3,
            max_tarball_size: 1 << 30,
            max_packument_size: 256 << 20,
            memory_cache_size: 24 << 20,
            packument_memory: 32 << 20,
            connections: gateway::Limits::default(),
            trust: Vec::new(),
            trust_threshold: 1,
            record_ttl: Duration::from_secs(7 * 86400),
            max_cache_size: 20 << 30,
            pin_latest: 3,
            p2p: Some(net::Config {
                limits: net::Limits {
                    stall_timeout: Duration::from_secs(10),
                    ..net::Limits::default()
                },
                ..net::Config::default()
            }),
            peer_timeout: Duration::from_secs(60),
            changes_feed: None,
            changes_poll: Duration::from_secs(5),
            pin_refresh: Duration::from_secs(600),
            popularity_interval: Duration::from_secs(300),
            report_interval: Duration::from_secs(300),
            min_release_age: None,
            cooldown_exempt: Vec::new(),
            advisory_threshold: None,
            clock: Clock::system(),
        }
    }

    /// The trust policy for records from peers.
    pub fn policy(&self) -> Policy {
        Policy::new(self.trust.iter().copied(), self.trust_threshold)
    }

    /// How many trusted operators (this one included) must sign an advisory before its
    /// versions are withheld: `advisory_threshold`, else the trust threshold.
    pub fn advisory_threshold(&self) -> usize {
        self.advisory_threshold.unwrap_or(self.trust_threshold)
    }

    /// Validates merged settings. `npm_registry` is asked for the npm client's registry only when
    /// no upstream was configured either way.
    pub fn resolve(
        data_dir: PathBuf,
        s: Settings,
        npm_registry: impl FnOnce() -> Option<String>,
    ) -> anyhow::Result<Config> {
        let mut c = Config::new(data_dir, None);
        if let Some(l) = &s.listen {
            c.listen = parse_listen(l)?;
        }
        c.public_url = s.public_url.map(|u| u.trim_end_matches('/').to_owned());
        if let Some(p) = &c.public_url {
            let u = Url::parse(p).with_context(|| format!("public_url {p:?} is not a URL"))?;
            if !matches!(u.scheme(), "http" | "https") {
                bail!("public_url {p:?} must be http or https");
            }
        }
        let upstream = if s.no_upstream == Some(true) {
            None
        } else {
            s.upstream.or_else(npm_registry)
        };
        c.upstream = upstream.map(|u| parse_upstream(&u, c.listen)).transpose()?;
        let dur = |v: &Option<String>, d: Duration| v.as_deref().map_or(Ok(d), parse_duration);
        let size = |v: &Option<String>, d: u64| v.as_deref().map_or(Ok(d), parse_size);
        c.max_age = dur(&s.max_age, c.max_age)?;
        c.upstream_timeout = dur(&s.upstream_timeout, c.upstream_timeout)?;
        c.connect_timeout = dur(&s.connect_timeout, c.connect_timeout)?;
        c.retries = s.retries.unwrap_or(c.retries).min(10);
        c.breaker_outages = s.breaker_outages.unwrap_or(c.breaker_outages);
        c.max_tarball_size = size(&s.max_tarball_size, c.max_tarball_size)?;
        c.max_packument_size = size(&s.max_packument_size, c.max_packument_size)?;
        c.memory_cache_size = size(&s.memory_cache_size, c.memory_cache_size)?;
        c.packument_memory = size(&s.packument_memory, c.packument_memory)?;
        if c.packument_memory < 1 << 20 {
            bail!(
                "packument_memory must be at least 1MiB, not {}",
                units::format_size_exact(c.packument_memory)
            );
        }
        let l = &mut c.connections;
        l.header_read_timeout = dur(&s.header_read_timeout, l.header_read_timeout)?;
        l.idle_timeout = dur(&s.idle_timeout, l.idle_timeout)?;
        l.max_connections = s.max_connections.unwrap_or(l.max_connections);
        l.max_connections_per_address = s
            .max_connections_per_address
            .unwrap_or(l.max_connections_per_address);
        l.access_log = s.access_log.unwrap_or(l.access_log);
        if l.header_read_timeout.is_zero() || l.idle_timeout.is_zero() {
            bail!("header_read_timeout and idle_timeout must be more than 0s");
        }
        if l.max_connections == 0 || l.max_connections_per_address == 0 {
            bail!("max_connections and max_connections_per_address must be at least 1");
        }
        c.record_ttl = dur(&s.record_ttl, c.record_ttl)?;
        c.max_cache_size = size(&s.max_cache_size, c.max_cache_size)?;
        c.pin_latest = s.pin_latest.unwrap_or(c.pin_latest);
        c.peer_timeout = dur(&s.peer_timeout, c.peer_timeout)?;
        c.changes_poll = dur(&s.changes_poll, c.changes_poll)?;
        c.pin_refresh = dur(&s.pin_refresh, c.pin_refresh)?;
        c.popularity_interval = dur(&s.popularity_interval, c.popularity_interval)?;
        c.report_interval = dur(&s.report_interval, c.report_interval)?;
        if c.report_interval < Duration::from_secs(1)
            || c.report_interval > Duration::from_secs(3600)
        {
            bail!("report_interval must be between 1s and 1h (a report's window is at most 1h)");
        }
        c.min_release_age = s
            .min_release_age
            .as_deref()
            .map(parse_duration)
            .transpose()?
            .filter(|d| !d.is_zero());
        for e in s.cooldown_exempt.unwrap_or_default() {
            crate::withhold::check_exempt(&e).map_err(anyhow::Error::msg)?;
            let e = e.trim().to_owned();
            if !c.cooldown_exempt.contains(&e) {
                c.cooldown_exempt.push(e);
            }
        }
        c.changes_feed = s
            .changes_feed
            .as_deref()
            .map(|f| {
                Url::parse(f.trim()).with_context(|| format!("changes feed {f:?} is not a URL"))
            })
            .transpose()?;
        c.p2p = if s.no_p2p == Some(true) {
            None
        } else {
            let mut n = c.p2p.take().unwrap_or_default();
            let addrs = |v: &Option<Vec<String>>,
                         what: &str|
             -> anyhow::Result<Option<Vec<net::Multiaddr>>> {
                v.as_ref()
                    .map(|v| {
                        v.iter()
                            .map(|a| {
                                a.trim().parse::<net::Multiaddr>().with_context(|| {
                                    format!("{what} {a:?} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/7374)")
                                })
                            })
                            .collect()
                    })
                    .transpose()
            };
            if let Some(l) = addrs(&s.p2p_listen, "--p2p-listen")? {
                n.listen = l;
            }
            n.bootstrap = addrs(&s.bootstrap, "--bootstrap")?.unwrap_or_default();
            n.external = addrs(&s.external_addr, "--external-addr")?.unwrap_or_default();
            n.kad_server = s.kad_server;
            n.mdns = s.mdns;
            n.relay = s.relay;
            if let Some(st) = &s.peer_stall_timeout {
                n.limits.stall_timeout = parse_duration(st)?;
            }
            if let Some(r) = s.announce_rate {
                if !(1..=MAX_ANNOUNCE_RATE).contains(&r) {
                    bail!(
                        "announce_rate must be between 1 and {MAX_ANNOUNCE_RATE} DHT messages per second, not {r}"
                    );
                }
                n.limits.announce_rate = r;
            }
            n.limits.max_blob_size = c.max_tarball_size.max(c.max_packument_size);
            n.check()
                .map_err(|e| anyhow::anyhow!("peer-to-peer settings: {e}"))?;
            Some(n)
        };
        for t in s.trust.unwrap_or_default() {
            let id: PeerId = t
                .parse()
                .with_context(|| format!("--trust {t:?} is not an operator id (a PeerId)"))?;
            if !c.trust.contains(&id) {
                c.trust.push(id);
            }
        }
        c.trust_threshold = s.trust_threshold.unwrap_or(1);
        if c.trust_threshold == 0 {
            bail!("trust_threshold must be at least 1");
        }
        if !c.trust.is_empty() && c.trust_threshold > c.trust.len() {
            bail!(
                "trust_threshold {} is more than the {} trusted operators",
                c.trust_threshold,
                c.trust.len()
            );
        }
        c.advisory_threshold = s.advisory_threshold;
        if let Some(k) = c.advisory_threshold {
            // This node's own operator signs too.
            let signers = c.trust.len() + 1;
            if k == 0 {
                bail!("advisory_threshold must be at least 1");
            }
            if k > signers {
                bail!(
                    "advisory_threshold {k} is more than the {signers} operators that can sign (this one and the {} trusted)",
                    c.trust.len()
                );
            }
        }
        if c.changes_feed.is_some() && c.upstream.is_none() {
            bail!(
                "changes_feed follows the upstream's changes, and this node has no upstream: set upstream, or remove changes_feed"
            );
        }
        Ok(c)
    }

    /// The URL this node's gateway answers on, as seen from this machine.
    pub fn gateway_url(&self) -> String {
        gateway_url(self.listen)
    }
}

/// The URL a client on this machine uses to reach a gateway listening on `addr`.
pub fn gateway_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// The default data dir: `<user data dir>/open-registry`.
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("open-registry")
}

fn parse_listen(s: &str) -> anyhow::Result<SocketAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix("localhost:")
        .map_or_else(|| s.to_owned(), |p| format!("127.0.0.1:{p}"));
    s.parse()
        .with_context(|| format!("listen address {s:?} is not HOST:PORT (e.g. 127.0.0.1:7373)"))
}

/// Validates an upstream URL and refuses one that is this node's own gateway.
pub fn parse_upstream(s: &str, listen: SocketAddr) -> anyhow::Result<Url> {
    let mut u = Url::parse(s.trim()).with_context(|| format!("upstream {s:?} is not a URL"))?;
    if !matches!(u.scheme(), "http" | "https") {
        bail!("upstream {s:?} must be an http:// or https:// URL");
    }
    if u.host_str().is_none() {
        bail!("upstream {s:?} has no host");
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    if points_at(&u, listen) {
        bail!(
            "upstream {u} is this node's own gateway ({}); a node cannot mirror itself",
            gateway_url(listen)
        );
    }
    Ok(u)
}

/// Whether `u` would reach a gateway listening on `listen` on this machine.
fn points_at(u: &Url, listen: SocketAddr) -> bool {
    if u.port_or_known_default() != Some(listen.port()) {
        return false;
    }
    let host_is_local = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        None => false,
    };
    let host_ip = match u.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    let listen_local = listen.ip().is_loopback() || listen.ip().is_unspecified();
    (host_is_local && listen_local)
        || host_ip == Some(listen.ip())
        || listen.ip().is_unspecified() && host_is_local
}

/// The npm client's configured registry, if npm is installed.
pub fn npm_registry() -> Option<String> {
    let out = std::process::Command::new("npm")
        .args(["config", "get", "registry"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let line = s.lines().map(str::trim).find(|l| l.starts_with("http"))?;
    Some(line.to_owned())
}

#[cfg(test)]
mod tests;

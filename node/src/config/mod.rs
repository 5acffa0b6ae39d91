//! Node configuration, in two stages: what was parsed ([`Settings`], from flags, `OPEN_REGISTRY_*`
//! environment variables and `config.toml`, every field optional) becomes one validated
//! [`Config`] that is passed by value. No globals.
//!
//! Precedence: command-line flag, then environment variable (both handled by clap), then the
//! data dir's `config.toml`, then the built-in default. The upstream is never built in: without
//! one configured, the node takes the npm client's own registry (`npm config get registry`), or
//! runs without an upstream.

pub mod units;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use url::Url;

use open_registry_protocol::{PeerId, Policy};

use crate::clock::Clock;
use crate::config::units::{parse_duration, parse_size};
use crate::net;

/// The gateway's default address: loopback only, so a fresh node is never exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7373";
/// The config file's name inside the data dir.
pub const CONFIG_FILE: &str = "config.toml";

/// Every setting, each optional: one source's view (flags and env, or the TOML file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Gateway address (HOST:PORT) [default: 127.0.0.1:7373]
    #[arg(long, env = "OPEN_REGISTRY_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,

    /// Upstream npm registry to mirror from [default: the npm client's registry]
    #[arg(
        long,
        env = "OPEN_REGISTRY_UPSTREAM",
        value_name = "URL",
        conflicts_with = "no_upstream"
    )]
    pub upstream: Option<String>,

    /// Run without an upstream (serve only what is stored locally or on peers)
    #[arg(
        long,
        env = "OPEN_REGISTRY_NO_UPSTREAM",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_upstream: Option<bool>,

    /// Base URL that tarball links point at [default: http:// and the Host header of each request]
    #[arg(long, env = "OPEN_REGISTRY_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// How long a cached packument is served before it is revalidated [default: 5m]
    #[arg(long, env = "OPEN_REGISTRY_MAX_AGE", value_name = "DURATION")]
    pub max_age: Option<String>,

    /// Deadline for one upstream request, including its body [default: 60s]
    #[arg(long, env = "OPEN_REGISTRY_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<String>,

    /// Deadline for connecting to the upstream [default: 5s]
    #[arg(long, env = "OPEN_REGISTRY_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,

    /// Retries after a failed upstream request (with backoff) [default: 2]
    #[arg(long, env = "OPEN_REGISTRY_RETRIES", value_name = "N")]
    pub retries: Option<u32>,

    /// Largest tarball accepted [default: 1GiB]
    #[arg(long, env = "OPEN_REGISTRY_MAX_TARBALL_SIZE", value_name = "SIZE")]
    pub max_tarball_size: Option<String>,

    /// Largest packument accepted [default: 256MiB]
    #[arg(long, env = "OPEN_REGISTRY_MAX_PACKUMENT_SIZE", value_name = "SIZE")]
    pub max_packument_size: Option<String>,

    /// Memory for hot packuments and small tarballs, kept in their served forms [default: 24MiB]
    #[arg(long, env = "OPEN_REGISTRY_MEMORY_CACHE_SIZE", value_name = "SIZE")]
    pub memory_cache_size: Option<String>,

    /// Trust records signed by this operator (a PeerId; repeatable, or comma-separated)
    #[arg(
        long = "trust",
        env = "OPEN_REGISTRY_TRUST",
        value_name = "PEER_ID",
        value_delimiter = ','
    )]
    pub trust: Option<Vec<String>>,

    /// How many trusted operators must agree before metadata from peers is accepted [default: 1]
    #[arg(long, env = "OPEN_REGISTRY_TRUST_THRESHOLD", value_name = "K")]
    pub trust_threshold: Option<usize>,

    /// How long a record this node signs stays valid [default: 7d]
    #[arg(long, env = "OPEN_REGISTRY_RECORD_TTL", value_name = "DURATION")]
    pub record_ttl: Option<String>,

    /// Disk budget for blobs; unpinned blobs are evicted least recently used above it; 0 means
    /// unbounded [default: 20GiB]
    #[arg(long, env = "OPEN_REGISTRY_MAX_CACHE_SIZE", value_name = "SIZE")]
    pub max_cache_size: Option<String>,

    /// How many of the newest versions `pin add NAME` pins, besides every dist-tag [default: 3]
    #[arg(long, env = "OPEN_REGISTRY_PIN_LATEST", value_name = "N")]
    pub pin_latest: Option<usize>,

    /// Peer-to-peer listen address (repeatable) [default: /ip4/0.0.0.0/tcp/7374 and
    /// /ip4/0.0.0.0/udp/7374/quic-v1]
    #[arg(
        long,
        env = "OPEN_REGISTRY_P2P_LISTEN",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub p2p_listen: Option<Vec<String>>,

    /// A peer to join the network through (repeatable; with or without a /p2p/ suffix)
    #[arg(
        long,
        env = "OPEN_REGISTRY_BOOTSTRAP",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub bootstrap: Option<Vec<String>>,

    /// An address peers can reach this node at from outside (repeatable)
    #[arg(
        long,
        env = "OPEN_REGISTRY_EXTERNAL_ADDR",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub external_addr: Option<Vec<String>>,

    /// Run Kademlia in server mode [default: when an address is loopback, or once reachable]
    #[arg(
        long,
        env = "OPEN_REGISTRY_KAD_SERVER",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub kad_server: Option<bool>,

    /// Do not join the peer-to-peer network
    #[arg(
        long,
        env = "OPEN_REGISTRY_NO_P2P",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub no_p2p: Option<bool>,

    /// Budget for fetching one blob from peers, all providers included [default: 60s]
    #[arg(long, env = "OPEN_REGISTRY_PEER_TIMEOUT", value_name = "DURATION")]
    pub peer_timeout: Option<String>,

    /// A peer transfer that moves no byte this long is abandoned [default: 10s]
    #[arg(
        long,
        env = "OPEN_REGISTRY_PEER_STALL_TIMEOUT",
        value_name = "DURATION"
    )]
    pub peer_stall_timeout: Option<String>,

    /// A CouchDB-style changes feed of the upstream to follow (e.g. the upstream URL + /_changes)
    #[arg(long, env = "OPEN_REGISTRY_CHANGES_FEED", value_name = "URL")]
    pub changes_feed: Option<String>,

    /// How often the changes feed is polled when it had nothing new [default: 5s]
    #[arg(long, env = "OPEN_REGISTRY_CHANGES_POLL", value_name = "DURATION")]
    pub changes_poll: Option<String>,

    /// Without a changes feed, how often pinned packuments are revalidated [default: 10m]
    #[arg(long, env = "OPEN_REGISTRY_PIN_REFRESH", value_name = "DURATION")]
    pub pin_refresh: Option<String>,

    /// How often this node publishes its signed popularity summary [default: 5m]
    #[arg(
        long,
        env = "OPEN_REGISTRY_POPULARITY_INTERVAL",
        value_name = "DURATION"
    )]
    pub popularity_interval: Option<String>,
}

impl Settings {
    /// Fills every unset field of `self` from `other`.
    pub fn or(self, other: Settings) -> Settings {
        // `upstream` and `no_upstream` are one choice: whichever source makes it, wins whole.
        let (upstream, no_upstream) = if self.upstream.is_some() || self.no_upstream.is_some() {
            (self.upstream, self.no_upstream)
        } else {
            (other.upstream, other.no_upstream)
        };
        Settings {
            listen: self.listen.or(other.listen),
            upstream,
            no_upstream,
            public_url: self.public_url.or(other.public_url),
            max_age: self.max_age.or(other.max_age),
            upstream_timeout: self.upstream_timeout.or(other.upstream_timeout),
            connect_timeout: self.connect_timeout.or(other.connect_timeout),
            retries: self.retries.or(other.retries),
            max_tarball_size: self.max_tarball_size.or(other.max_tarball_size),
            max_packument_size: self.max_packument_size.or(other.max_packument_size),
            memory_cache_size: self.memory_cache_size.or(other.memory_cache_size),
            trust: self.trust.or(other.trust),
            trust_threshold: self.trust_threshold.or(other.trust_threshold),
            record_ttl: self.record_ttl.or(other.record_ttl),
            max_cache_size: self.max_cache_size.or(other.max_cache_size),
            pin_latest: self.pin_latest.or(other.pin_latest),
            p2p_listen: self.p2p_listen.or(other.p2p_listen),
            bootstrap: self.bootstrap.or(other.bootstrap),
            external_addr: self.external_addr.or(other.external_addr),
            kad_server: self.kad_server.or(other.kad_server),
            no_p2p: self.no_p2p.or(other.no_p2p),
            peer_timeout: self.peer_timeout.or(other.peer_timeout),
            peer_stall_timeout: self.peer_stall_timeout.or(other.peer_stall_timeout),
            changes_feed: self.changes_feed.or(other.changes_feed),
            changes_poll: self.changes_poll.or(other.changes_poll),
            pin_refresh: self.pin_refresh.or(other.pin_refresh),
            popularity_interval: self.popularity_interval.or(other.popularity_interval),
        }
    }

    /// Reads `config.toml`; a missing file is an empty one.
    pub fn load(path: &Path) -> anyhow::Result<Settings> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("in {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

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
    /// Largest tarball accepted.
    pub max_tarball_size: u64,
    /// Largest packument accepted.
    pub max_packument_size: u64,
    /// Memory for hot packuments.
    pub memory_cache_size: u64,
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
            max_tarball_size: 1 << 30,
            max_packument_size: 256 << 20,
            memory_cache_size: 24 << 20,
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
            clock: Clock::system(),
        }
    }

    /// The trust policy for records from peers.
    pub fn policy(&self) -> Policy {
        Policy::new(self.trust.iter().copied(), self.trust_threshold)
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
        c.max_tarball_size = size(&s.max_tarball_size, c.max_tarball_size)?;
        c.max_packument_size = size(&s.max_packument_size, c.max_packument_size)?;
        c.memory_cache_size = size(&s.memory_cache_size, c.memory_cache_size)?;
        c.record_ttl = dur(&s.record_ttl, c.record_ttl)?;
        c.max_cache_size = size(&s.max_cache_size, c.max_cache_size)?;
        c.pin_latest = s.pin_latest.unwrap_or(c.pin_latest);
        c.peer_timeout = dur(&s.peer_timeout, c.peer_timeout)?;
        c.changes_poll = dur(&s.changes_poll, c.changes_poll)?;
        c.pin_refresh = dur(&s.pin_refresh, c.pin_refresh)?;
        c.popularity_interval = dur(&s.popularity_interval, c.popularity_interval)?;
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
            if let Some(st) = &s.peer_stall_timeout {
                n.limits.stall_timeout = parse_duration(st)?;
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

fn quoted<T: std::fmt::Display>(v: Vec<T>) -> String {
    v.iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The commented config.toml that `init` writes.
pub fn render_toml(c: &Config) -> String {
    use crate::config::units::{format_duration, format_size_exact};
    let upstream = match &c.upstream {
        Some(u) => format!("upstream = \"{u}\""),
        None => "no_upstream = true".to_owned(),
    };
    let public = match &c.public_url {
        Some(p) => format!("public_url = \"{p}\""),
        None => "# public_url = \"https://registry.example.org\"".to_owned(),
    };
    format!(
        r#"# Open-Registry node configuration.
# Every setting can also be given as a flag (--listen ...) or an environment variable
# (OPEN_REGISTRY_LISTEN=...); flags win over the environment, which wins over this file.

# Where the gateway listens. Point npm at it: npm config set registry {gateway}/
listen = "{listen}"

# The registry this node mirrors from. Remove it and set `no_upstream = true` to serve only
# what is stored here (and, with peers, what the network has).
{upstream}

# The base URL written into tarball links. Unset: the Host header the client used.
{public}

# How long a cached packument is served before it is revalidated with the upstream
# (a conditional request; an unchanged packument costs one round trip).
max_age = "{max_age}"

# Deadlines and retries for upstream requests. When the upstream fails, cached copies are
# served (stale-if-error); uncached requests fail with 502/504 within these bounds.
upstream_timeout = "{timeout}"
connect_timeout = "{connect}"
retries = {retries}

# Size caps: bigger documents and tarballs are refused.
max_tarball_size = "{tarball}"
max_packument_size = "{packument}"

# Memory for hot packuments, kept in their final encoded and compressed forms.
memory_cache_size = "{mem}"

# Operators (PeerIds, as `open-registry id` prints them) whose signed records this node accepts
# for metadata that does not come from the upstream, and how many of them must agree.
trust = [{trust}]
trust_threshold = {threshold}

# How long the records this node signs stay valid (peers refuse older ones as frozen).
record_ttl = "{ttl}"

# Disk budget for stored blobs. Above it, unpinned blobs are evicted least recently used
# first; pinned packages are never evicted. "0" means unbounded.
max_cache_size = "{cache}"

# `open-registry pin add NAME` pins this many of the newest versions, plus every dist-tag.
pin_latest = {pin_latest}

# The peer-to-peer network: where this node listens for peers (TCP and QUIC), whom it joins
# through, and addresses others can reach it at. `no_p2p = true` keeps the node to itself.
{no_p2p}p2p_listen = [{p2p_listen}]
bootstrap = [{bootstrap}]
# external_addr = ["/dns4/registry.example.org/tcp/7374"]
# kad_server = true
peer_timeout = "{peer_timeout}"

# Staying in sync: follow the upstream's changes feed (refreshing every pinned or cached
# package that changes), or, without one, revalidate pinned packuments on an interval.
{changes_feed}
changes_poll = "{changes_poll}"
pin_refresh = "{pin_refresh}"

# How often this node publishes its signed popularity summary (top packages it served).
popularity_interval = "{popularity_interval}"
"#,
        gateway = c.gateway_url(),
        listen = c.listen,
        max_age = format_duration(c.max_age),
        timeout = format_duration(c.upstream_timeout),
        connect = format_duration(c.connect_timeout),
        retries = c.retries,
        tarball = format_size_exact(c.max_tarball_size),
        packument = format_size_exact(c.max_packument_size),
        mem = format_size_exact(c.memory_cache_size),
        trust = c
            .trust
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", "),
        threshold = c.trust_threshold,
        ttl = format_duration(c.record_ttl),
        cache = format_size_exact(c.max_cache_size),
        pin_latest = c.pin_latest,
        no_p2p = if c.p2p.is_none() {
            "no_p2p = true\n"
        } else {
            ""
        },
        p2p_listen = quoted(c.p2p.as_ref().map(|n| n.listen.clone()).unwrap_or_default()),
        bootstrap = quoted(
            c.p2p
                .as_ref()
                .map(|n| n.bootstrap.clone())
                .unwrap_or_default()
        ),
        peer_timeout = format_duration(c.peer_timeout),
        changes_feed = match &c.changes_feed {
            Some(f) => format!("changes_feed = \"{f}\""),
            None =>
                "# changes_feed = \"https://replicate.example.org/registry/_changes\"".to_owned(),
        },
        changes_poll = format_duration(c.changes_poll),
        pin_refresh = format_duration(c.pin_refresh),
        popularity_interval = format_duration(c.popularity_interval),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(s: Settings, npm: Option<&str>) -> anyhow::Result<Config> {
        Config::resolve("/tmp/x".into(), s, || npm.map(str::to_owned))
    }

    #[test]
    fn defaults_take_npm_registry() {
        let c = resolve(Settings::default(), Some("http://10.0.0.1:4873")).unwrap();
        assert_eq!(c.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(c.upstream.unwrap().as_str(), "http://10.0.0.1:4873/");
        assert_eq!(c.max_age, Duration::from_secs(300));
        let c = resolve(Settings::default(), None).unwrap();
        assert!(c.upstream.is_none());
    }

    #[test]
    fn no_upstream_wins_and_skips_npm() {
        let s = Settings {
            no_upstream: Some(true),
            ..Default::default()
        };
        let c = Config::resolve("/x".into(), s, || panic!("npm must not be asked")).unwrap();
        assert!(c.upstream.is_none());
    }

    #[test]
    fn refuses_itself_as_upstream() {
        for up in [
            "http://127.0.0.1:7373",
            "http://localhost:7373/",
            "http://0.0.0.0:7373",
            "http://[::1]:7373",
        ] {
            let s = Settings {
                upstream: Some(up.into()),
                ..Default::default()
            };
            let e = resolve(s, None).unwrap_err().to_string();
            assert!(e.contains("own gateway"), "{up}: {e}");
        }
        let s = Settings {
            upstream: Some("http://127.0.0.1:4873".into()),
            ..Default::default()
        };
        assert!(resolve(s, None).is_ok());
        let s = Settings {
            listen: Some("0.0.0.0:4873".into()),
            upstream: Some("http://localhost:4873".into()),
            ..Default::default()
        };
        assert!(resolve(s, None).is_err());
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let s = Settings {
            listen: Some("nowhere".into()),
            ..Default::default()
        };
        assert!(
            resolve(s, None)
                .unwrap_err()
                .to_string()
                .contains("HOST:PORT")
        );
        let s = Settings {
            upstream: Some("ftp://x".into()),
            ..Default::default()
        };
        assert!(resolve(s, None).is_err());
        let s = Settings {
            max_age: Some("soon".into()),
            ..Default::default()
        };
        assert!(resolve(s, None).is_err());
    }

    #[test]
    fn rendered_toml_round_trips() {
        let mut c = Config::new("/d", Some(Url::parse("http://127.0.0.1:4873/").unwrap()));
        c.max_age = Duration::from_secs(60);
        let text = render_toml(&c);
        let s: Settings = toml::from_str(&text).unwrap();
        let back = Config::resolve("/d".into(), s, || None).unwrap();
        assert_eq!(back.upstream, c.upstream);
        assert_eq!(back.max_age, c.max_age);
        assert_eq!(back.listen, c.listen);
        assert_eq!(back.max_tarball_size, c.max_tarball_size);
        assert_eq!(back.memory_cache_size, c.memory_cache_size);
        let none = render_toml(&Config::new("/d", None));
        let s: Settings = toml::from_str(&none).unwrap();
        assert_eq!(s.no_upstream, Some(true));
    }

    #[test]
    fn flags_win_over_the_file_for_the_upstream_choice() {
        let file = Settings {
            no_upstream: Some(true),
            listen: Some("127.0.0.1:9".into()),
            ..Default::default()
        };
        let flags = Settings {
            upstream: Some("http://10.1.1.1/".into()),
            ..Default::default()
        };
        let c = resolve(flags.or(file.clone()), None).unwrap();
        assert_eq!(c.upstream.unwrap().as_str(), "http://10.1.1.1/");
        assert_eq!(c.listen.port(), 9);
        let c = resolve(Settings::default().or(file), Some("http://10.2.2.2")).unwrap();
        assert!(c.upstream.is_none());
    }

    #[test]
    fn trust_settings() {
        let a = crate::records::identity::Identity::from_seed([1; 32]).peer_id();
        let b = crate::records::identity::Identity::from_seed([2; 32]).peer_id();
        let s = Settings {
            trust: Some(vec![a.to_string(), b.to_string(), a.to_string()]),
            trust_threshold: Some(2),
            ..Default::default()
        };
        let c = resolve(s.clone(), None).unwrap();
        assert_eq!(c.trust, vec![a, b]);
        assert!(c.policy().trusts(&b));
        assert_eq!(c.policy().threshold(), 2);
        let text = render_toml(&c);
        let back = resolve(toml::from_str(&text).unwrap(), None).unwrap();
        assert_eq!(back.trust, c.trust);
        let too_many = Settings {
            trust_threshold: Some(3),
            ..s.clone()
        };
        assert!(resolve(too_many, None).is_err());
        let bad = Settings {
            trust: Some(vec!["QmNotAnEd25519Key".into()]),
            ..Default::default()
        };
        assert!(
            resolve(bad, None)
                .unwrap_err()
                .to_string()
                .contains("PeerId")
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Settings>("lisen = \"x\"").is_err());
    }
}

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
        let s = Settings {
            header_read_timeout: Some("0s".into()),
            ..Default::default()
        };
        assert!(resolve(s, None).is_err());
        let s = Settings {
            max_connections_per_address: Some(0),
            ..Default::default()
        };
        assert!(resolve(s, None).is_err());
        let s = Settings {
            no_upstream: Some(true),
            changes_feed: Some("http://127.0.0.1:1/_changes".into()),
            ..Default::default()
        };
        let e = resolve(s, None).unwrap_err().to_string();
        assert!(
            e.contains("changes_feed") && e.contains("no upstream"),
            "{e}"
        );
    }

    #[test]
    fn rendered_toml_round_trips() {
        let mut c = Config::new("/d", Some(Url::parse("http://127.0.0.1:4873/").unwrap()));
        c.max_age = Duration::from_secs(60);
        c.connections = gateway::Limits {
            header_read_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(30),
            max_connections: 100,
            max_connections_per_address: 7,
            access_log: false,
        };
        let text = render_toml(&c);
        let s: Settings = toml::from_str(&text).unwrap();
        let back = Config::resolve("/d".into(), s, || None).unwrap();
        assert_eq!(back.upstream, c.upstream);
        assert_eq!(back.max_age, c.max_age);
        assert_eq!(back.listen, c.listen);
        assert_eq!(back.max_tarball_size, c.max_tarball_size);
        assert_eq!(back.memory_cache_size, c.memory_cache_size);
        assert_eq!(back.connections, c.connections);
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
    fn cooldown_settings() {
        let c = resolve(Settings::default(), None).unwrap();
        assert_eq!(c.min_release_age, None);
        assert!(render_toml(&c).contains("# min_release_age = \"2d\""));
        let s = Settings {
            min_release_age: Some("2d".into()),
            cooldown_exempt: Some(vec!["typescript".into(), " @my-org/*".into()]),
            ..Default::default()
        };
        let c = resolve(s, None).unwrap();
        assert_eq!(c.min_release_age, Some(Duration::from_secs(2 * 86400)));
        assert_eq!(c.cooldown_exempt, vec!["typescript", "@my-org/*"]);
        let text = render_toml(&c);
        let back = resolve(toml::from_str(&text).unwrap(), None).unwrap();
        assert_eq!(back.min_release_age, c.min_release_age);
        assert_eq!(back.cooldown_exempt, c.cooldown_exempt);
        let off = Settings {
            min_release_age: Some("0s".into()),
            ..Default::default()
        };
        assert_eq!(resolve(off, None).unwrap().min_release_age, None);
        for bad in ["Bad Name", "@/*", "@scope/x/*", "*"] {
            let s = Settings {
                cooldown_exempt: Some(vec![bad.into()]),
                ..Default::default()
            };
            let e = resolve(s, None).unwrap_err().to_string();
            assert!(e.contains("cooldown_exempt"), "{bad}: {e}");
        }
        let s = Settings {
            min_release_age: Some("soon".into()),
            ..Default::default()
        };
        assert!(resolve(s, None).is_err());
    }

    #[test]
    fn advisory_threshold_defaults_to_the_trust_threshold() {
        let ids: Vec<String> = [1u8, 2, 3]
            .map(|i| {
                crate::records::identity::Identity::from_seed([i; 32])
                    .peer_id()
                    .to_string()
            })
            .into();
        let s = Settings {
            trust: Some(ids),
            trust_threshold: Some(2),
            ..Default::default()
        };
        let c = resolve(s.clone(), None).unwrap();
        assert_eq!(c.advisory_threshold(), 2);
        let text = render_toml(&c);
        assert!(text.contains("# advisory_threshold = 2"), "{text}");
        let back = resolve(toml::from_str(&text).unwrap(), None).unwrap();
        assert_eq!(back.advisory_threshold, None);
        let set = Settings {
            advisory_threshold: Some(4),
            ..s.clone()
        };
        let c = resolve(set, None).unwrap();
        assert_eq!(c.advisory_threshold(), 4, "three trusted and this one");
        let back = resolve(toml::from_str(&render_toml(&c)).unwrap(), None).unwrap();
        assert_eq!(back.advisory_threshold, Some(4));
        for k in [0, 5] {
            let bad = Settings {
                advisory_threshold: Some(k),
                ..s.clone()
            };
            assert!(resolve(bad, None).is_err(), "{k}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Settings>("lisen = \"x\"").is_err());
    }
}

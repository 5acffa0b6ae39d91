//! [`Settings`]: every setting, each optional, as one source states it (flags and environment
//! variables through clap, or `config.toml` through serde).

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

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

    /// Upstream outages in a row (failures, or requests not answered in time) that open its
    /// circuit breaker; 0 turns the breaker off [default: 3]
    #[arg(long, env = "OPEN_REGISTRY_BREAKER_OUTAGES", value_name = "N")]
    pub breaker_outages: Option<u32>,

    /// Largest tarball accepted [default: 1GiB]
    #[arg(long, env = "OPEN_REGISTRY_MAX_TARBALL_SIZE", value_name = "SIZE")]
    pub max_tarball_size: Option<String>,

    /// Largest packument accepted [default: 256MiB]
    #[arg(long, env = "OPEN_REGISTRY_MAX_PACKUMENT_SIZE", value_name = "SIZE")]
    pub max_packument_size: Option<String>,

    /// Memory for hot packuments and small tarballs, kept in their served forms [default: 24MiB]
    #[arg(long, env = "OPEN_REGISTRY_MEMORY_CACHE_SIZE", value_name = "SIZE")]
    pub memory_cache_size: Option<String>,

    /// Memory for packuments being downloaded, checked and derived, all requests together; a
    /// request waits for its share, and a packument bigger than it is read through the disk
    /// [default: 32MiB]
    #[arg(long, env = "OPEN_REGISTRY_PACKUMENT_MEMORY", value_name = "SIZE")]
    pub packument_memory: Option<String>,

    /// Time a client has to send a request's headers before the gateway closes the connection
    /// [default: 10s]
    #[arg(
        long,
        env = "OPEN_REGISTRY_HEADER_READ_TIMEOUT",
        value_name = "DURATION"
    )]
    pub header_read_timeout: Option<String>,

    /// A gateway connection with no request in flight and no byte moving this long is closed
    /// [default: 60s]
    #[arg(long, env = "OPEN_REGISTRY_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// Gateway connections open at once; more are closed on arrival (lowered to fit the file
    /// descriptor limit) [default: 4096]
    #[arg(long, env = "OPEN_REGISTRY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Gateway connections open at once from one IP address [default: 256]
    #[arg(
        long,
        env = "OPEN_REGISTRY_MAX_CONNECTIONS_PER_ADDRESS",
        value_name = "N"
    )]
    pub max_connections_per_address: Option<usize>,

    /// Log one line per request (method, path, status, bytes, source, ms, client) under the
    /// `open_registry::access` target [default: true]
    #[arg(
        long,
        env = "OPEN_REGISTRY_ACCESS_LOG",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub access_log: Option<bool>,

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

    /// Find peers on the local network with mDNS [default: when listening on a private address or every interface]
    #[arg(
        long,
        env = "OPEN_REGISTRY_MDNS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub mdns: Option<bool>,

    /// Offer a circuit relay to peers behind NATs, while this node is reachable from outside [default: unless every listen address is loopback]
    #[arg(
        long,
        env = "OPEN_REGISTRY_RELAY",
        num_args = 0..=1,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    pub relay: Option<bool>,

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

    /// DHT messages per second this node's announcements may send, averaged; the re-announcement cycle stretches to fit [default: 8]
    #[arg(long, env = "OPEN_REGISTRY_ANNOUNCE_RATE", value_name = "N")]
    pub announce_rate: Option<u32>,

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

    /// How often this node signs and gossips its report (what it served, errors, lag) and its
    /// statement [default: 5m]
    #[arg(long, env = "OPEN_REGISTRY_REPORT_INTERVAL", value_name = "DURATION")]
    pub report_interval: Option<String>,

    /// Release cooldown: a version published less than this long ago (by the packument's
    /// `time`) is not served yet; its tarball answers 451 [default: off]
    #[arg(long, env = "OPEN_REGISTRY_MIN_RELEASE_AGE", value_name = "DURATION")]
    pub min_release_age: Option<String>,

    /// Packages the release cooldown never holds: names, or scopes as @scope/* (repeatable, or
    /// comma-separated)
    #[arg(
        long,
        env = "OPEN_REGISTRY_COOLDOWN_EXEMPT",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub cooldown_exempt: Option<Vec<String>>,
    /// How many trusted operators (this one included) must sign an advisory before its
    /// versions are withheld [default: trust_threshold]
    #[arg(long, env = "OPEN_REGISTRY_ADVISORY_THRESHOLD", value_name = "K")]
    pub advisory_threshold: Option<usize>,
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
            breaker_outages: self.breaker_outages.or(other.breaker_outages),
            max_tarball_size: self.max_tarball_size.or(other.max_tarball_size),
            max_packument_size: self.max_packument_size.or(other.max_packument_size),
            memory_cache_size: self.memory_cache_size.or(other.memory_cache_size),
            packument_memory: self.packument_memory.or(other.packument_memory),
            header_read_timeout: self.header_read_timeout.or(other.header_read_timeout),
            idle_timeout: self.idle_timeout.or(other.idle_timeout),
            max_connections: self.max_connections.or(other.max_connections),
            max_connections_per_address: self
                .max_connections_per_address
                .or(other.max_connections_per_address),
            access_log: self.access_log.or(other.access_log),
            trust: self.trust.or(other.trust),
            trust_threshold: self.trust_threshold.or(other.trust_threshold),
            record_ttl: self.record_ttl.or(other.record_ttl),
            max_cache_size: self.max_cache_size.or(other.max_cache_size),
            pin_latest: self.pin_latest.or(other.pin_latest),
            p2p_listen: self.p2p_listen.or(other.p2p_listen),
            bootstrap: self.bootstrap.or(other.bootstrap),
            external_addr: self.external_addr.or(other.external_addr),
            kad_server: self.kad_server.or(other.kad_server),
            mdns: self.mdns.or(other.mdns),
            relay: self.relay.or(other.relay),
            no_p2p: self.no_p2p.or(other.no_p2p),
            peer_timeout: self.peer_timeout.or(other.peer_timeout),
            peer_stall_timeout: self.peer_stall_timeout.or(other.peer_stall_timeout),
            announce_rate: self.announce_rate.or(other.announce_rate),
            changes_feed: self.changes_feed.or(other.changes_feed),
            changes_poll: self.changes_poll.or(other.changes_poll),
            pin_refresh: self.pin_refresh.or(other.pin_refresh),
            popularity_interval: self.popularity_interval.or(other.popularity_interval),
            report_interval: self.report_interval.or(other.report_interval),
            min_release_age: self.min_release_age.or(other.min_release_age),
            cooldown_exempt: self.cooldown_exempt.or(other.cooldown_exempt),
            advisory_threshold: self.advisory_threshold.or(other.advisory_threshold),
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

//! The commented `config.toml` that `init` writes: every setting with its current value, the
//! optional ones commented out with an example.

use super::Config;

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
# Outages in a row (failures, or no answer in 8x the upstream's usual time) that open its
# circuit breaker: then stored copies are served at once and the rest fails fast, with one
# probe every 10 s. 0 turns it off.
breaker_outages = {breaker_outages}

# Hostile and idle clients: the time a client has to send a request's headers, how long a
# connection may sit with nothing moving, and how many connections may be open at once (in all,
# and from one IP address; over a cap, new connections are closed on arrival). The node raises
# its file descriptor limit to the hard limit at start and lowers max_connections to fit it.
header_read_timeout = "{header_read_timeout}"
idle_timeout = "{idle_timeout}"
max_connections = {max_connections}
max_connections_per_address = {max_connections_per_address}

# The access log: one line per request (method, path, status, bytes, source, ms, client) at
# info level under the `open_registry::access` target. `false` turns it off.
access_log = {access_log}

# Size caps: bigger documents and tarballs are refused.
max_tarball_size = "{tarball}"
max_packument_size = "{packument}"

# Memory for hot packuments, kept in their final encoded and compressed forms.
memory_cache_size = "{mem}"

# Memory for packuments being downloaded, checked and derived, all requests together. A request
# waits for its share when others hold it; a packument bigger than this is read through the
# disk. With memory_cache_size, this bounds what packuments hold in memory.
packument_memory = "{packument_memory}"

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
# mdns = false   # finding peers on the LAN (on by default unless every address is loopback or public)
# relay = false  # relaying for peers behind NATs while reachable (on by default unless loopback)
peer_timeout = "{peer_timeout}"
# DHT messages per second this node's announcements (one provider record per package held, one
# signed pointer per package mirrored) may send, averaged. The re-announcement cycle stretches
# to fit; `open-registry peers` shows it and warns when it passes 7 days (the DHT keeps an entry
# 14 days): raise this then.
announce_rate = {announce_rate}

# Staying in sync: follow the upstream's changes feed (refreshing every pinned or cached
# package that changes), or, without one, revalidate pinned packuments on an interval.
{changes_feed}
changes_poll = "{changes_poll}"
pin_refresh = "{pin_refresh}"

# How often this node publishes its signed popularity summary (top packages it served).
popularity_interval = "{popularity_interval}"

# How often this node signs and gossips its report (requests, errors, lag, what it holds) and
# its statement.toml (what it costs, what it receives); every node shows the network from them.
report_interval = "{report_interval}"

# Release cooldown: a version published less than min_release_age ago (by the packument's
# `time`; without one, by when this node first saw it) is treated as not yet released: it is
# left out of the packuments served, dist-tags pointing at it move to the newest older version,
# and its tarball answers 451 "in its release cooldown until ...". Off unless set. Packages in
# cooldown_exempt (names, or scopes as "@scope/*") are never held.
{min_release_age}
{cooldown_exempt}

# Advisories (`open-registry advisory add`): how many trusted operators, this one included,
# must sign one before the versions it covers are withheld from every client (hidden from
# packuments, 451 for their documents and tarballs). Unset: trust_threshold.
{advisory_threshold}
"#,
        gateway = c.gateway_url(),
        listen = c.listen,
        max_age = format_duration(c.max_age),
        timeout = format_duration(c.upstream_timeout),
        connect = format_duration(c.connect_timeout),
        retries = c.retries,
        breaker_outages = c.breaker_outages,
        header_read_timeout = format_duration(c.connections.header_read_timeout),
        idle_timeout = format_duration(c.connections.idle_timeout),
        max_connections = c.connections.max_connections,
        max_connections_per_address = c.connections.max_connections_per_address,
        access_log = c.connections.access_log,
        tarball = format_size_exact(c.max_tarball_size),
        packument = format_size_exact(c.max_packument_size),
        mem = format_size_exact(c.memory_cache_size),
        packument_memory = format_size_exact(c.packument_memory),
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
        announce_rate = c
            .p2p
            .as_ref()
            .map_or(crate::net::Limits::default().announce_rate, |n| n
                .limits
                .announce_rate),
        changes_feed = match &c.changes_feed {
            Some(f) => format!("changes_feed = \"{f}\""),
            None =>
                "# changes_feed = \"https://replicate.example.org/registry/_changes\"".to_owned(),
        },
        changes_poll = format_duration(c.changes_poll),
        pin_refresh = format_duration(c.pin_refresh),
        popularity_interval = format_duration(c.popularity_interval),
        report_interval = format_duration(c.report_interval),
        min_release_age = match c.min_release_age {
            Some(d) => format!("min_release_age = \"{}\"", format_duration(d)),
            None => "# min_release_age = \"2d\"".to_owned(),
        },
        cooldown_exempt = if c.cooldown_exempt.is_empty() {
            "# cooldown_exempt = [\"@my-org/*\", \"typescript\"]".to_owned()
        } else {
            format!("cooldown_exempt = [{}]", quoted(c.cooldown_exempt.clone()))
        },
        advisory_threshold = match c.advisory_threshold {
            Some(k) => format!("advisory_threshold = {k}"),
            None => format!("# advisory_threshold = {}", c.trust_threshold),
        },
    )
}

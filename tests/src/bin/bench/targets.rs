//! What is measured: the node (the release binary, on a fresh data dir), nginx serving the
//! same bytes from disk (precompressed, `gzip_static`), and a warm Verdaccio 6.0.x proxying the
//! in-process FakeUpstream as its uplink. Each runs in its own process group in a temporary
//! directory, on 127.0.0.1, and is killed on drop.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use open_registry_tests::{NodeProcess, http, process, tools};
use tempfile::TempDir;

use crate::{Ctx, report::Report, sys};

/// Starts the node on a fresh data dir with `upstream`; packuments stay fresh for the whole run
/// (no revalidation in the middle of a measurement).
pub(crate) fn start_node(ctx: &Ctx, upstream: &str, extra: &[&str]) -> Result<NodeProcess> {
    let mut b = NodeProcess::builder()
        .binary(&ctx.node_bin)
        .args(["--upstream", upstream, "--max-age", "1h"])
        .env("RUST_LOG", "warn");
    for a in extra {
        b = b.arg(*a);
    }
    let node = b.start()?;
    sys::register_pid(node.pid());
    Ok(node)
}

/// A node on the peer-to-peer network (TCP on 127.0.0.1, the OS's port): the process, its
/// operator id (= libp2p PeerId) and its dialable `/ip4/127.0.0.1/tcp/PORT/p2p/ID` address.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) node: NodeProcess,
    pub(crate) id: String,
    pub(crate) addr: String,
    /// The data dir, removed after the node (fields drop in order).
    _dir: TempDir,
}

/// Starts a node on a fresh data dir that joins the network: with `upstream`, or
/// `--no-upstream` (everything then comes from peers); dialing `bootstrap` (`…/p2p/ID`
/// addresses); trusting the records of the operators `trust`.
pub(crate) fn start_peer(
    ctx: &Ctx,
    upstream: Option<&str>,
    bootstrap: &[&str],
    trust: &[&str],
) -> Result<Peer> {
    start_peer_as(ctx, None, upstream, bootstrap, trust)
}

/// [`start_peer`] with a given operator key (the bytes of another node's `operator.key`,
/// [`Peer::key`]): a fresh, empty node under an identity the network already knows. A new
/// node per run with a new identity each time would leave every earlier one, dead, in the
/// other nodes' routing tables, and later runs would pay for asking them.
pub(crate) fn start_peer_as(
    ctx: &Ctx,
    key: Option<&[u8]>,
    upstream: Option<&str>,
    bootstrap: &[&str],
    trust: &[&str],
) -> Result<Peer> {
    let dir = tempfile::Builder::new().prefix("bench-peer-").tempdir()?;
    if let Some(key) = key {
        let path = dir.path().join(open_registry_node::KEY_FILE);
        fs::write(&path, key)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
    }
    let mut b = NodeProcess::builder()
        .binary(&ctx.node_bin)
        .data_dir(dir.path())
        .args(["--max-age", "1h"])
        .env("RUST_LOG", "warn");
    b = match upstream {
        Some(u) => b.args(["--upstream", u]),
        None => b.arg("--no-upstream"),
    };
    if !bootstrap.is_empty() {
        b = b.arg("--bootstrap").arg(bootstrap.join(","));
    }
    if !trust.is_empty() {
        b = b.arg("--trust").arg(trust.join(","));
    }
    let node = b.start()?;
    sys::register_pid(node.pid());
    let (id, addr) = open_registry_tests::sync::p2p_addr(&node)?;
    Ok(Peer {
        node,
        id,
        addr,
        _dir: dir,
    })
}

impl Peer {
    pub(crate) fn gateway(&self) -> &str {
        self.node.gateway()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// Its operator key (`operator.key`), for [`start_peer_as`].
    pub(crate) fn key(&self) -> Result<Vec<u8>> {
        let path = self.node.data_dir.join(open_registry_node::KEY_FILE);
        fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// `GET /-/open-registry/peers`, parsed.
    pub(crate) fn peers(&self) -> Result<serde_json::Value> {
        open_registry_tests::p2p::peers(&self.node)
    }

    /// Peers in the Kademlia routing table.
    pub(crate) fn routing_table(&self) -> Result<u64> {
        self.peers()?["routing_table_size"]
            .as_u64()
            .context("no routing_table_size in the peers document")
    }

    /// The peer ids it has a connection to.
    pub(crate) fn connected(&self) -> Result<Vec<String>> {
        Ok(self.peers()?["connected"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["peer_id"].as_str().map(str::to_owned))
            .collect())
    }

    /// Waits until the routing table holds at least `n` peers.
    pub(crate) fn wait_routing_table(&self, n: u64, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let size = self.routing_table()?;
            if size >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}'s routing table holds {size} peers after {within:?}, not {n}",
                    self.id
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's counters and gauges from `/-/metrics` (Prometheus text), by their short
    /// name: `open_registry_peer_bytes_total` is `peer_bytes`, `open_registry_store_blobs` is
    /// `store_blobs`.
    pub(crate) fn metrics(&self) -> Result<BTreeMap<String, u64>> {
        let r = self.node.get("/-/metrics", &[])?;
        if r.status != 200 {
            bail!("{}/-/metrics answered {}", self.gateway(), r.status);
        }
        Ok(parse_metrics(&r.text()))
    }
}

/// Prometheus text → short name → value (comments and non-integer values skipped).
pub(crate) fn parse_metrics(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(name, v)| {
            let name = name.strip_prefix("open_registry_")?;
            let name = name.strip_suffix("_total").unwrap_or(name);
            Some((name.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `after[k] - before[k]` (0 when missing).
pub(crate) fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, k: &str) -> u64 {
    after
        .get(k)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(k).copied().unwrap_or(0))
}

/// nginx on a docroot of given files, `gzip_static on`, no access log.
#[derive(Debug)]
pub(crate) struct Nginx {
    url: String,
    child: Option<Child>,
    dir: TempDir,
}

impl Nginx {
    /// Whether nginx can be started here.
    pub(crate) fn available() -> bool {
        sys::which("nginx").is_some()
    }

    /// Starts nginx serving `files` (URL path → bytes; add `<path>.gz` for gzip_static).
    pub(crate) fn start(files: &[(String, Vec<u8>)]) -> Result<Nginx> {
        let bin = sys::which("nginx").context("nginx is not installed")?;
        let dir = tempfile::Builder::new().prefix("bench-nginx-").tempdir()?;
        // Workers run as an unprivileged user when started as root: let them read the files.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let www = dir.path().join("www");
        for (path, bytes) in files {
            let p = www.join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().context("file path without parent")?)?;
            fs::write(&p, bytes)?;
        }
        chmod_tree(&www)?;
        let port = tools::free_port()?;
        let d = dir.path().display();
        let tmp = dir.path().join("tmp");
        fs::create_dir_all(&tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o777))?;
        let conf = format!(
            r#"worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    gzip off;
    gzip_static on;
    etag on;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    types {{ application/octet-stream tgz; }}
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location / {{ }}
    }}
}}
"#
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let log = fs::File::create(dir.path().join("stderr.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = process::own_group(&mut cmd)
            .spawn()
            .context("spawning nginx")?;
        sys::register_pid(Some(child.id()));
        let mut n = Nginx {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            dir,
        };
        let probe = format!("{}{}", n.url, files.first().map_or("/", |f| f.0.as_str()));
        if let Err(e) = wait_http(&probe, Duration::from_secs(10), || n.running()) {
            let log = fs::read_to_string(n.dir.path().join("error.log")).unwrap_or_default()
                + &fs::read_to_string(n.dir.path().join("stderr.log")).unwrap_or_default();
            bail!("nginx did not start: {e:#}\n{log}");
        }
        Ok(n)
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = process::stop_group(&mut c, Duration::from_secs(5));
        }
    }
}

fn chmod_tree(p: &Path) -> Result<()> {
    let meta = fs::metadata(p)?;
    if meta.is_dir() {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755))?;
        for e in fs::read_dir(p)? {
            chmod_tree(&e?.path())?;
        }
    } else {
        fs::set_permissions(p, fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

/// Waits until `url` answers (any status), while `alive` says the process runs.
fn wait_http(url: &str, within: Duration, mut alive: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if !alive() {
            bail!("the process exited");
        }
        if http::get(url, Duration::from_secs(2)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{url} did not answer within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Verdaccio 6.0.x (pinned in tests/e2e) proxying one uplink, storage in a temporary directory.
///
/// Packages are not published into it: it fetches them from the uplink (the FakeUpstream) on
/// first request and keeps them (`cache: true`; uplink `maxage` 1h, so a warm Verdaccio does
/// not go back to the uplink during a run). Warm = every measured resource requested once.
#[derive(Debug)]
pub(crate) struct Verdaccio {
    url: String,
    child: Option<Child>,
    dir: TempDir,
}

impl Verdaccio {
    /// The pinned Verdaccio, if `tests/e2e/node_modules` holds it (smoke runs never install).
    pub(crate) fn installed() -> Option<PathBuf> {
        let p = tools::e2e_dir().join("node_modules/.bin/verdaccio");
        p.exists().then_some(p)
    }

    /// Whether to run Verdaccio in this benchmark; says why not in the report.
    pub(crate) fn wanted(ctx: &Ctx, report: &mut Report) -> bool {
        if !ctx.verdaccio {
            report.note("skipped: Verdaccio (--no-verdaccio)");
            return false;
        }
        if Self::installed().is_none() && ctx.smoke {
            report.note(
                "skipped: Verdaccio not installed (run `npm ci` in tests/e2e, or a full run)",
            );
            return false;
        }
        true
    }

    /// Starts Verdaccio with `uplink` as its only upstream.
    pub(crate) fn start(uplink: &str) -> Result<Verdaccio> {
        let bin = match Self::installed() {
            Some(b) => b,
            None => tools::e2e_tools()?.verdaccio,
        };
        let dir = tempfile::Builder::new()
            .prefix("bench-verdaccio-")
            .tempdir()?;
        let port = tools::free_port()?;
        let d = dir.path().display();
        let config = format!(
            r#"# Written by open-registry-bench: a caching proxy of the benchmark's fake upstream.
storage: {d}/storage
auth:
  htpasswd:
    file: {d}/htpasswd
    max_users: -1
uplinks:
  fake:
    url: {uplink}/
    maxage: 60m
    timeout: 60s
    max_fails: 100
    cache: true
packages:
  '@*/*':
    access: $all
    publish: $authenticated
    proxy: fake
  '**':
    access: $all
    publish: $authenticated
    proxy: fake
max_body_size: 200mb
server:
  keepAliveTimeout: 60
web:
  enable: false
log:
  type: stdout
  format: pretty
  level: error
"#
        );
        let child = open_registry_tests::verdaccio::spawn(&bin, dir.path(), &config, port)?;
        sys::register_pid(Some(child.id()));
        let mut v = Verdaccio {
            url: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            dir,
        };
        let ping = format!("{}/-/ping", v.url);
        if let Err(e) = wait_http(&ping, Duration::from_secs(60), || v.running()) {
            bail!("Verdaccio did not start: {e:#}\n{}", v.log_tail());
        }
        Ok(v)
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Waits (bounded) until Verdaccio answers a ping quickly again, after an overload.
    pub(crate) fn recover(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let ping = format!("{}/-/ping", self.url);
        while Instant::now() < deadline {
            let t0 = Instant::now();
            if http::get(&ping, Duration::from_secs(5)).is_ok()
                && t0.elapsed() < Duration::from_millis(100)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    pub(crate) fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("verdaccio.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Verdaccio {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = process::stop_group(&mut c, Duration::from_secs(5));
        }
    }
}

/// GET with npm's headers, for warming and checking: the response, or an error.
pub(crate) fn get(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<http::Response> {
    http::request("GET", url, headers, &[], timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_short_name() {
        let text = "# HELP open_registry_peer_bytes_total Blob bytes.\n\
                    # TYPE open_registry_peer_bytes_total counter\n\
                    open_registry_peer_bytes_total 42\n\
                    open_registry_store_blobs 7\n\
                    something_else 1\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("peer_bytes"), Some(&42));
        assert_eq!(m.get("store_blobs"), Some(&7));
        assert_eq!(m.len(), 2);
        let before = BTreeMap::from([("peer_bytes".to_owned(), 40)]);
        assert_eq!(delta(&before, &m, "peer_bytes"), 2);
        assert_eq!(delta(&before, &m, "missing"), 0);
    }
}

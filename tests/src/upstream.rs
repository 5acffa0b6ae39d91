//! [`FakeUpstream`]: an npm registry in memory, on 127.0.0.1, that can misbehave on demand.
//!
//! It serves what tests publish into it the way npm's registry does — full packuments whose
//! `dist.tarball` points back at itself, with `integrity`, `shasum`, `time`, and optionally
//! npm-style `dist.signatures` and `/-/npm/v1/keys` — plus search, audit endpoints (canned
//! answers) and a CouchDB-style `/_changes` feed. Packuments carry an ETag and answer
//! `If-None-Match` with 304, unless [`Options::no_validators`] is set. Like some real upstreams
//! it sends the full document even when asked for the abbreviated one, unless
//! [`Options::abbreviated`] is set. A packument can also be given as ready bytes
//! ([`FakeUpstream::put_packument`]), which is how benchmarks serve multi-megabyte documents
//! without building them as JSON trees.
//!
//! Tests observe it through per-path request counts ([`FakeUpstream::hits`]) and a request log,
//! and break it with [`Fault`]s per path or globally, including going [`down`] (the port
//! refuses connections and open connections are cut) and coming [`up`] again on the same port.
//!
//! It runs on a tokio runtime of its own, on its own thread, so it works the same from sync
//! tests, from async tests of either flavour, and while a test thread blocks on a child process.
//! All methods are synchronous and quick.
//!
//! Paths are compared after decoding `%2f`/`%2F` to `/` and dropping the query string:
//! `hits("/@scope/pkg")` counts `GET /@scope%2fpkg` too.
//!
//! [`down`]: FakeUpstream::down
//! [`up`]: FakeUpstream::up

mod serve;
mod state;

use state::{FaultRule, State};

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, mpsc},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::runtime::Handle;

use crate::{
    fixtures::{PackageSpec, Tarball},
    npmsig::{self, RegistryKey},
};

/// How a request (to one path, or to any path) is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer with this status and a JSON error body.
    Status(u16),
    /// Answer 200 with an empty body (`Content-Length: 0`).
    EmptyBody,
    /// Announce the full `Content-Length`, send half the body, then close the connection.
    Truncate,
    /// Answer normally but with one byte of the body flipped (same length).
    FlipByte,
    /// Never answer (the connection stays open until the client gives up or the server stops).
    Hang,
    /// Answer gzip-encoded (`Content-Encoding: gzip`), whatever the request accepted, after
    /// appending this many spaces to the body: a JSON document that expands far beyond its
    /// compressed size (a decompression bomb) when the padding is large.
    Gzip {
        /// Spaces appended before compressing.
        pad: usize,
    },
    /// Answer the body unchanged but labelled `Content-Encoding: gzip` (what some servers do
    /// for `.tgz` files, which are gzip already).
    LabelGzip,
    /// Answer normally but with `,"versions":{}` added at the end of the JSON object: a
    /// duplicate key that JSON.parse would read as an empty versions object.
    DuplicateVersions,
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every request, unless a fault for its own path applies.
    All,
    /// Requests for this path (normalised like [`FakeUpstream::hits`]).
    Path(String),
}

impl From<&str> for Target {
    fn from(p: &str) -> Self {
        Target::Path(normalize_path(p))
    }
}

impl From<String> for Target {
    fn from(p: String) -> Self {
        Target::Path(normalize_path(&p))
    }
}

/// Behaviour fixed at start.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Sign every version with an npm-style P-256 registry key and serve `/-/npm/v1/keys`.
    /// Without it, `/-/npm/v1/keys` is 404 (some upstreams have no keys).
    pub sign: bool,
    /// Serve the abbreviated packument for `Accept: application/vnd.npm.install-v1+json`
    /// (otherwise the full document is always sent).
    pub abbreviated: bool,
    /// Send no validators with packuments (no `ETag`, so never a 304), like upstreams that
    /// send neither `ETag` nor `Last-Modified`.
    pub no_validators: bool,
    /// Have no search and no audit endpoints: `/-/v1/search` and both audit routes answer 404,
    /// as a plain registry without them does.
    pub no_search_or_audit: bool,
    /// The address to listen on instead of `127.0.0.1` (a laboratory host's, say; started on
    /// a thread inside its namespace).
    pub bind: Option<std::net::IpAddr>,
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// The normalised path.
    pub path: String,
    /// The raw path and query as sent.
    pub raw: String,
    /// `Accept`, if sent.
    pub accept: Option<String>,
    /// `If-None-Match`, if sent.
    pub if_none_match: Option<String>,
    /// `Accept-Encoding`, if sent.
    pub accept_encoding: Option<String>,
}

/// What [`FakeUpstream::publish`] stored.
#[derive(Debug, Clone)]
pub struct Published {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Absolute `dist.tarball` URL.
    pub tarball_url: String,
    /// The packument's normalised path (`/name` or `/@scope/name`).
    pub packument_path: String,
    /// The tarball's path (`/name/-/name-1.0.0.tgz`).
    pub tarball_path: String,
    /// `dist.integrity`.
    pub integrity: String,
    /// `dist.shasum`.
    pub shasum: String,
    /// The tarball's size in bytes.
    pub size: usize,
}

/// An in-memory npm registry on 127.0.0.1 (or [`Options::bind`]) with fault injection.
#[derive(Debug)]
pub struct FakeUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    rt: Handle,
    server: Mutex<Option<serve::Server>>,
    stop_rt: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// State shared with the request handlers. std Mutex: never held across an await.
#[derive(Debug)]
struct Shared {
    base_url: String,
    options: Options,
    key: Option<RegistryKey>,
    state: Mutex<State>,
}

impl FakeUpstream {
    /// Starts with default [`Options`] (unsigned, always full documents).
    pub fn start() -> Result<FakeUpstream> {
        Self::start_with(Options::default())
    }

    /// Starts on `127.0.0.1:<ephemeral port>` (or [`Options::bind`]) with `options`.
    pub fn start_with(options: Options) -> Result<FakeUpstream> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("fake-upstream".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("building a runtime: {e}")));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(rt.handle().clone()));
                rt.block_on(async {
                    let _ = stop_rx.await;
                });
                // Hanging handlers would otherwise keep the runtime alive forever.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
            .context("spawning the fake upstream's thread")?;
        let rt = ready_rx
            .recv()
            .map_err(|_| anyhow!("the fake upstream's thread died"))??;
        let ip = options
            .bind
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let listener =
            std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"))?;
        let addr = listener.local_addr()?;
        let key = if options.sign {
            Some(RegistryKey::from_seed(&format!("fake-upstream {addr}"))?)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            base_url: format!("http://{addr}"),
            options,
            key,
            state: Mutex::new(State::default()),
        });
        let server = serve::Server::start(&rt, listener, shared.clone())?;
        tracing::debug!(%addr, "fake upstream up");
        Ok(FakeUpstream {
            shared,
            addr,
            rt,
            server: Mutex::new(Some(server)),
            stop_rt: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.shared.base_url
    }

    /// The socket address it listens on (kept across [`down`](Self::down)/[`up`](Self::up)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The signing key, when started with [`Options::sign`].
    pub fn key(&self) -> Option<&RegistryKey> {
        self.shared.key.as_ref()
    }

    /// The `/-/npm/v1/keys` document it serves (`{"keys":[]}` when unsigned).
    pub fn keys_document(&self) -> Value {
        npmsig::keys_document(self.shared.key.as_slice())
    }

    /// Publishes `spec` under the `latest` tag (as `npm publish` does).
    pub fn publish(&self, spec: &PackageSpec) -> Result<Published> {
        self.publish_tagged(spec, "latest")
    }

    /// Publishes `spec` under `tag`.
    pub fn publish_tagged(&self, spec: &PackageSpec, tag: &str) -> Result<Published> {
        let tarball = spec.tarball()?;
        self.add_version(spec.manifest(), tarball, &spec.tarball_file(), Some(tag))
    }

    /// Adds a version from a manifest (`package.json` contents) and tarball; `dist` is filled
    /// in (tarball URL, integrity, shasum, signatures when signing). Replaces an existing
    /// version of the same number, unlike a real registry, so tests can build odd histories.
    pub fn add_version(
        &self,
        manifest: Value,
        tarball: Tarball,
        file: &str,
        tag: Option<&str>,
    ) -> Result<Published> {
        let name = manifest["name"]
            .as_str()
            .ok_or_else(|| anyhow!("manifest without name"))?
            .to_owned();
        let version = manifest["version"]
            .as_str()
            .ok_or_else(|| anyhow!("manifest without version"))?
            .to_owned();
        let packument_path = format!("/{name}");
        let tarball_path = format!("/{name}/-/{file}");
        let tarball_url = format!("{}{tarball_path}", self.shared.base_url);
        let mut m = manifest;
        m["_id"] = json!(format!("{name}@{version}"));
        let mut dist = json!({
            "tarball": tarball_url,
            "integrity": tarball.integrity,
            "shasum": tarball.shasum,
            "fileCount": 0,
            "unpackedSize": 0,
        });
        if let Some(key) = &self.shared.key {
            dist["signatures"] = json!([key.signature_entry(&name, &version, &tarball.integrity)]);
        }
        m["dist"] = dist;
        let published = Published {
            name: name.clone(),
            version: version.clone(),
            tarball_url,
            packument_path,
            tarball_path,
            integrity: tarball.integrity.clone(),
            shasum: tarball.shasum.clone(),
            size: tarball.bytes.len(),
        };
        let now = iso_now();
        let mut st = self.state();
        let pkg = st.packages.entry(name.clone()).or_default();
        if pkg.created.is_empty() {
            pkg.created = now.clone();
        }
        pkg.modified = now.clone();
        pkg.times.insert(version.clone(), now);
        pkg.versions.insert(version.clone(), m);
        pkg.tarballs
            .insert(file.to_owned(), Bytes::from(tarball.bytes));
        if let Some(tag) = tag {
            pkg.dist_tags.insert(tag.to_owned(), version);
        }
        pkg.rev += 1;
        st.record_change(&name);
        Ok(published)
    }

    /// Serves `packument` (a full packument's JSON, byte for byte) for `name`, and `tarballs`
    /// (file name → bytes) under `/<name>/-/<file>`, replacing whatever was published for
    /// `name`. Nothing is checked or derived: the document's `dist.tarball` URLs, integrities
    /// and `time` are the caller's. Such a package is not listed by search.
    pub fn put_packument(&self, name: &str, packument: Bytes, tarballs: Vec<(String, Bytes)>) {
        let now = iso_now();
        let mut st = self.state();
        let pkg = st.packages.entry(name.to_owned()).or_default();
        *pkg = state::Package {
            raw: Some(packument),
            tarballs: tarballs.into_iter().collect(),
            created: now.clone(),
            modified: now,
            rev: pkg.rev + 1,
            ..state::Package::default()
        };
        st.record_change(name);
    }

    /// Points `tag` of `name` at `version`.
    pub fn set_dist_tag(&self, name: &str, tag: &str, version: &str) -> Result<()> {
        let mut st = self.state();
        let pkg = st
            .packages
            .get_mut(name)
            .ok_or_else(|| anyhow!("no package {name}"))?;
        if !pkg.versions.contains_key(version) {
            bail!("{name} has no version {version}");
        }
        pkg.dist_tags.insert(tag.to_owned(), version.to_owned());
        pkg.modified = iso_now();
        pkg.rev += 1;
        st.record_change(name);
        Ok(())
    }

    /// Sets when `version` of `name` was published (its `time` entry, an ISO 8601 time as npm
    /// writes it, e.g. from [`iso_time`]), or removes the entry (`None`): a packument without a
    /// publish time for that version.
    pub fn set_time(&self, name: &str, version: &str, time: Option<&str>) -> Result<()> {
        let mut st = self.state();
        let pkg = st
            .packages
            .get_mut(name)
            .ok_or_else(|| anyhow!("no package {name}"))?;
        if !pkg.versions.contains_key(version) {
            bail!("{name} has no version {version}");
        }
        match time {
            Some(t) => pkg.times.insert(version.to_owned(), t.to_owned()),
            None => pkg.times.remove(version),
        };
        pkg.modified = iso_now();
        pkg.rev += 1;
        st.record_change(name);
        Ok(())
    }

    /// Edits one version's manifest in place (e.g. point `dist.tarball` at another host, or
    /// change `dist.integrity` without re-signing). Nothing is recomputed.
    pub fn edit_version(
        &self,
        name: &str,
        version: &str,
        edit: impl FnOnce(&mut Value),
    ) -> Result<()> {
        let mut st = self.state();
        let pkg = st
            .packages
            .get_mut(name)
            .ok_or_else(|| anyhow!("no package {name}"))?;
        let m = pkg
            .versions
            .get_mut(version)
            .ok_or_else(|| anyhow!("{name} has no version {version}"))?;
        edit(m);
        pkg.modified = iso_now();
        pkg.rev += 1;
        st.record_change(name);
        Ok(())
    }

    /// Replaces the bytes served for a tarball file (metadata unchanged).
    pub fn replace_tarball(&self, name: &str, file: &str, bytes: Vec<u8>) -> Result<()> {
        let mut st = self.state();
        let pkg = st
            .packages
            .get_mut(name)
            .ok_or_else(|| anyhow!("no package {name}"))?;
        pkg.tarballs.insert(file.to_owned(), Bytes::from(bytes));
        Ok(())
    }

    /// The full packument as it would be served now.
    pub fn packument(&self, name: &str) -> Option<Value> {
        let st = self.state();
        st.packages.get(name).map(|p| p.document(name))
    }

    /// The tarball bytes served for `name`'s file `file`.
    pub fn tarball(&self, name: &str, file: &str) -> Option<Bytes> {
        self.state().packages.get(name)?.tarballs.get(file).cloned()
    }

    /// Requests seen for `path` (normalised; query ignored), whatever their outcome.
    pub fn hits(&self, path: &str) -> usize {
        let path = normalize_path(path);
        self.state().hits.get(&path).copied().unwrap_or(0)
    }

    /// Requests seen in total.
    pub fn total_hits(&self) -> usize {
        self.state().hits.values().sum()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state().log.clone()
    }

    /// Forgets all counts and the request log.
    pub fn reset_hits(&self) {
        let mut st = self.state();
        st.hits.clear();
        st.log.clear();
    }

    /// Applies `fault` to `target` until cleared.
    pub fn set_fault(&self, target: impl Into<Target>, fault: Fault) {
        self.state().faults.insert(
            target.into(),
            FaultRule {
                fault,
                remaining: None,
            },
        );
    }

    /// Applies `fault` to the next `times` requests for `target`, then answers normally.
    pub fn set_fault_times(&self, target: impl Into<Target>, fault: Fault, times: usize) {
        self.state().faults.insert(
            target.into(),
            FaultRule {
                fault,
                remaining: Some(times),
            },
        );
    }

    /// Removes the fault on `target`.
    pub fn clear_fault(&self, target: impl Into<Target>) {
        self.state().faults.remove(&target.into());
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Sets the body of `POST /-/npm/v1/security/advisories/bulk` (default `{}`).
    pub fn set_advisories(&self, body: Value) {
        self.state().advisories = Some(body);
    }

    /// Sets the body of `POST /-/npm/v1/security/audits/quick` (default: no vulnerabilities).
    pub fn set_audit(&self, body: Value) {
        self.state().audit = Some(body);
    }

    /// Takes the registry off the network: the port stops listening (connections are refused)
    /// and every open connection, including hanging ones, is cut. Idempotent.
    pub fn down(&self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(server) = server {
            server.stop();
            tracing::debug!(addr = %self.addr, "fake upstream down");
        }
    }

    /// Listens again on the same port after [`down`](Self::down). Idempotent.
    pub fn up(&self) -> Result<()> {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if server.is_none() {
            let listener = std::net::TcpListener::bind(self.addr)
                .with_context(|| format!("re-binding {}", self.addr))?;
            *server = Some(serve::Server::start(
                &self.rt,
                listener,
                self.shared.clone(),
            )?);
            tracing::debug!(addr = %self.addr, "fake upstream up again");
        }
        Ok(())
    }

    /// True unless [`down`](Self::down).
    pub fn is_up(&self) -> bool {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Stops the server and its runtime thread. Also done on drop.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.down();
        if let Some(stop) = self.stop_rt.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop_all();
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not make every later request fail.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Decodes `%2f`/`%2F` to `/` and drops the query: the form paths are counted and matched in.
pub fn normalize_path(raw: &str) -> String {
    let path = raw.split('?').next().unwrap_or(raw);
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.len() >= 3 && tail[1..3].eq_ignore_ascii_case("2f") {
            out.push('/');
            rest = &tail[3..];
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    if !out.starts_with('/') {
        out.insert(0, '/');
    }
    out
}

/// The current UTC time as npm writes it: `2024-01-02T03:04:05.678Z`.
pub fn iso_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    iso_time(d.as_secs(), d.subsec_millis())
}

/// Formats seconds since the epoch as an ISO 8601 UTC time with milliseconds.
pub fn iso_time(secs: u64, millis: u32) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise() {
        assert_eq!(normalize_path("/@s%2fp"), "/@s/p");
        assert_eq!(normalize_path("/@s%2Fp?write=true"), "/@s/p");
        assert_eq!(normalize_path("a"), "/a");
        assert_eq!(normalize_path("/a%20b"), "/a%20b");
    }

    #[test]
    fn times_format() {
        assert_eq!(iso_time(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(499_162_500, 0), "1985-10-26T08:15:00.000Z");
        assert_eq!(iso_time(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
    }
}
